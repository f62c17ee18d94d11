"""What a fleet run did: one `TargetResult` per target and the `FleetReport` over them, rendered as a table
(Prefect artifact), console text, one JSON document (`targets`: target, outcome, applied, pending, error) and
ONE notification for the whole fleet (the `Summary` shape of messages.py). Texts hold names, ids and
secret-free error texts only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

from tasks.engine.errors import RdsMigrationsError
from tasks.engine.messages import format_duration, mrkdwn
from tasks.engine.migrations.hints import where_flag

TargetOutcome = Literal["succeeded", "nothing-to-do", "dry-run", "failed", "skipped", "interrupted"]
# "interrupted": the run stopped (killed, cancelled) while the target was being migrated (fleet/crash.py)
MAX_NAMED = 20  # failed targets named in a notification before "… and N more"
ERROR_CHARACTERS = 20000  # of a run's error in its notification (a stopped run's lists 50 targets: crash.py)


@dataclass(frozen=True)
class TargetResult:
    target: str
    outcome: TargetOutcome
    applied: tuple[str, ...] | None = ()  # None: not known (its history could not be read after a failure)
    # None: not read (the target stopped before its plan, did not start, or was stopped): not known, never "none"
    pending: tuple[str, ...] | None = None
    snapshot: str | None = None
    duration_seconds: float = 0.0
    error: str | None = None  # secret-free; for a skipped target, why it did not start
    failed_step: str | None = None
    failed_migration: str | None = None
    run_url: str | None = None  # the target's own flow run (distributed mode)

    @property
    def pending_known(self) -> bool:
        """Whether `pending` was read from the target (its plan): one that failed before it (fetch-secret, an
        unreachable database), did not start or was stopped holds None, which means "not known", not 0."""
        return self.pending is not None

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "outcome": self.outcome,
            "applied": None if self.applied is None else list(self.applied),
            "pending": None if self.pending is None else list(self.pending),
            "snapshot": self.snapshot,
            "duration_seconds": round(self.duration_seconds, 3),
            "error": self.error,
            "failed_step": self.failed_step,
            "failed_migration": self.failed_migration,
        }

    def row(self) -> dict[str, object]:
        """A row of the per-target table artifact."""
        return {
            "target": self.target,
            "outcome": self.outcome,
            "applied": "not known" if self.applied is None else len(self.applied),
            "pending": "not known" if self.pending is None else len(self.pending),
            "snapshot": self.snapshot or "",
            "duration (s)": round(self.duration_seconds, 2),
            "error": (self.error or "")[:300],
        }


def one_line(text: str | None, limit: int) -> str:
    """An error's words on one line, cut at `limit`: "validation failed:" alone says nothing, what follows it
    does."""
    return " ".join((text or "").split())[:limit]


def skipped(target: str, reason: str) -> TargetResult:
    return TargetResult(target=target, outcome="skipped", error=reason)


@dataclass(frozen=True)
class FleetReport:
    """The fleet run, for people and machines. `outcome` is failed when a target failed or did not start."""

    environment: str
    tier: str
    git_sha: str
    trigger: str
    results: tuple[TargetResult, ...] = ()
    stopped: str | None = None  # why targets were left unstarted (canary failed, stop_after_failures)
    error: str | None = None  # a failure before any target ran (validation, rehearsal, discovery)
    failed_step: str | None = None
    duration_seconds: float = 0.0
    run_url: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    table_published: bool = True  # a stopped run's report (crash.py) lists its targets in its error instead
    named_as: dict[str, str] = field(default_factory=dict)  # target → its environment name (Target.named_as)

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", dict(Counter(r.outcome for r in self.results)))

    @property
    def failed(self) -> tuple[TargetResult, ...]:
        return tuple(r for r in self.results if r.outcome == "failed")

    @property
    def outcome(self) -> str:
        if self.error is not None or self.failed or self.counts.get("skipped") or self.counts.get("interrupted"):
            return "failed"
        if self.counts.get("succeeded"):
            return "succeeded"
        return "dry-run" if self.counts.get("dry-run") else "nothing-to-do"

    def called(self, target: str) -> str:
        """A target as messages name it: its name, and the `--env` a command on it alone takes when that differs
        (`tenant_03 (--env local-fleet-tenant-03)`); a URL's or one found by tag is named by its URL instead."""
        flag = where_flag(self.named_as[target]) if target in self.named_as else ""
        return f"{target} ({flag})" if flag.startswith("--env ") and flag != f"--env {target}" else target

    def with_(self, **changes: object) -> FleetReport:
        return replace(self, **changes)  # type: ignore[arg-type]

    def count_line(self) -> str:
        order = ("succeeded", "nothing-to-do", "dry-run", "failed", "interrupted", "skipped")
        parts = [f"{self.counts[o]} {o}" for o in order if self.counts.get(o)]
        return f"{len(self.results)} targets: " + (", ".join(parts) or "none ran")

    def to_json(self) -> dict[str, object]:
        return {
            "environment": self.environment,
            "outcome": self.outcome,
            "git_sha": self.git_sha,
            "counts": self.counts,
            "stopped": self.stopped,
            "error": self.error,
            "failed_step": self.failed_step,
            "duration_seconds": round(self.duration_seconds, 3),
            "targets": [r.to_json() for r in self.results],
        }

    def rows(self) -> list[dict[str, object]]:
        return [r.row() for r in self.results]

    def slack_message(self) -> tuple[str, str]:
        return render_fleet(self, slack=True)

    def console_text(self) -> str:
        subject, body = render_fleet(self)
        return f"{subject}\n{body}"


def render_fleet(report: FleetReport, *, slack: bool = False) -> tuple[str, str]:
    """(subject, body): Slack mrkdwn when `slack`, plain text otherwise; the same content."""
    esc = mrkdwn if slack else str

    def code(text: str) -> str:
        return f"`{esc(text)}`" if slack else text

    def label(text: str) -> str:
        return f"*{text}:*" if slack else f"  {text + ':':<10}"

    title = f"Fleet migration {report.outcome.upper()}" + (
        f" at step {report.failed_step}" if report.failed_step else ""
    )
    subject = f"{'*' + title + '*' if slack else title} on {code(report.environment)} ({esc(report.tier)})"
    lines = [
        f"{label('Targets')} {esc(report.count_line())}",
        f"{label('Git SHA')} {code(report.git_sha[:12])}",
        f"{label('Trigger')} {esc(report.trigger)}",
    ]
    failed = [report.called(r.target) for r in report.failed]
    if failed:
        more = f" … and {len(failed) - MAX_NAMED} more" if len(failed) > MAX_NAMED else ""
        lines.append(f"{label('Failed')} " + ", ".join(code(name) for name in failed[:MAX_NAMED]) + more)
        first = report.failed[0]
        detail = one_line(first.error, 300)
        lines.append(f"{label('First')} {code(report.called(first.target))}: {esc(detail)}")
    interrupted = [report.called(r.target) for r in report.results if r.outcome == "interrupted"]
    if interrupted:
        more = f" … and {len(interrupted) - MAX_NAMED} more" if len(interrupted) > MAX_NAMED else ""
        lines.append(f"{label('Interrupted')} " + ", ".join(code(name) for name in interrupted[:MAX_NAMED]) + more)
    if report.stopped:
        lines.append(f"{label('Stopped')} {esc(report.stopped)}")
    if report.error:
        lines.append(f"{label('Error')} {esc(report.error.strip()[:ERROR_CHARACTERS])}")
    lines.append(f"{label('Duration')} {format_duration(report.duration_seconds)}")
    where = ("the targets listed above" if not report.table_published else
             "the per-target table in the flow run's artifacts (fleet-targets-...)" if report.run_url else
             "the per-target table below")
    if report.run_url:
        lines.append(f"{label('Run')} " + (f"<{report.run_url}|Prefect flow run>" if slack else report.run_url))
    if report.outcome == "failed":
        lines.append(f"{label('Look at')} {esc(where)}, and each failed target's log lines")
    return subject, "\n".join(lines)


def console_table(report: FleetReport) -> str:
    """The per-target table as plain text, for the terminal."""
    header = f"{'target':<24} {'outcome':<14} {'applied':>7} {'pending':>7} {'seconds':>8}  error"
    lines = [header]
    for r in report.results:
        error = one_line(r.error, 80)
        pending = "unknown" if r.pending is None else len(r.pending)  # its plan never read
        lines.append(
            f"{r.target:<24} {r.outcome:<14} {'unknown' if r.applied is None else len(r.applied):>7} {pending:>7} "
            f"{r.duration_seconds:>8.2f}  {error}"
        )
    return "\n".join(lines)


class FleetFailed(RdsMigrationsError):
    """A fleet run in which a target failed or did not start (or nothing started): carries the report."""

    def __init__(self, report: FleetReport) -> None:
        failed = ", ".join(report.called(r.target) for r in report.failed[:MAX_NAMED]) or "none"
        reason = report.error or report.stopped or ""
        super().__init__(
            f"fleet {report.environment}: {report.count_line()}; failed: {failed}"
            + (f"; {reason.strip().splitlines()[0][:500]}" if reason else "")
        )
        self.report = report
