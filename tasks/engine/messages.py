"""Every summary a run ends with, rendered for Slack (mrkdwn) and for the console and the run's logs.

A summary is a plain value whose texts are already free of secrets; each kind renders itself through
`slack_message()` and `console_text()`, so one notify step serves them all: `RunSummary` (a migration
run), `RefreshSummary` (a staging refresh or a restore).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from tasks.engine.migrations.hints import where_flag
from tasks.engine.snapshots.swap import SwapResult

MAX_LISTED = 10  # migration ids shown per list before "… and N more"
MAX_ERROR_CHARS = 2_000  # Slack accepts 40,000 characters; an error longer than this is noise
RESTORE_HEADING = "To restore (to a new instance, then swap names — never onto the live name)"
STATUS = {
    "succeeded": "SUCCEEDED",
    "failed": "FAILED",
    "nothing-to-do": "NOTHING TO DO",
    "dry-run": "DRY RUN",
}
TITLES = {"refresh": "Staging refresh", "restore": "Restore"}
REFUSED = "<refused"
RESTORE_DEPLOYMENT = "restore-snapshot/restore-{environment}"  # one per environment, each with its own role
REFRESH_DEPLOYMENT = "refresh-staging/staging-refresh"
STILL_CREATING = " (still being created when the run stopped: not usable yet)"


class Summary(Protocol):
    """What the notify step needs of a summary."""

    environment: str
    outcome: str

    def slack_message(self) -> tuple[str, str]:
        """(subject, body) in Slack mrkdwn."""

    def console_text(self) -> str:
        """Plain text with the same content."""


def restore_commands(environment: str, snapshot_id: str) -> tuple[str, ...]:
    """How to bring the database back from a pre-migration snapshot: the restore flow, which restores it to
    a NEW name and swaps names (never onto the live one), from the command line or through Prefect (the
    environment's own restore deployment: it runs with that environment's AWS role, and that environment only)."""
    parameters = f"--param environment={shlex.quote(environment)} --param snapshot_id={shlex.quote(snapshot_id)}"
    deployment = shlex.quote(RESTORE_DEPLOYMENT.format(environment=environment))
    return (
        f"rds-migrations restore --env {shlex.quote(environment)} --snapshot-id {shlex.quote(snapshot_id)}",
        f"# or through Prefect, where the environment has its own restore deployment: prefect deployment run "
        f"{deployment} {parameters}",
    )


def refresh_command(environment: str, deployment: str | None = None) -> str:
    """How to refresh a staging environment again (restore its source's snapshot, mask, migrate): the refresh
    deployment, from a terminal. Never a restore of the source's snapshot: that would skip the masking."""
    return f"rds-migrations trigger {shlex.quote(deployment or REFRESH_DEPLOYMENT)} --env {shlex.quote(environment)}"


# ---- shared pieces ------------------------------------------------------------------------------------------


def mrkdwn(text: str) -> str:
    """Slack reads &, < and > as control characters, even inside code spans."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _listed(ids: Sequence[str], quote: Callable[[str], str]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(quote(i) for i in ids[:MAX_LISTED])
    rest = len(ids) - MAX_LISTED
    return f"{shown} … and {rest} more" if rest > 0 else shown


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _short_sha(sha: str) -> str:
    return sha[:7] if re.fullmatch(r"[0-9a-f]{8,64}", sha) else sha


def _error_text(error: str) -> str:
    error = error.strip()
    if len(error) > MAX_ERROR_CHARS:
        return error[:MAX_ERROR_CHARS] + f" … ({len(error) - MAX_ERROR_CHARS} more characters)"
    return error



# ---- a migration run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """What one pipeline run did, for people. Every text in it is already free of secrets."""

    environment: str
    tier: str  # "staging" | "production"
    git_sha: str
    trigger: str  # "ui", "github", "schedule", "cli", ...
    outcome: Literal["succeeded", "failed", "nothing-to-do", "dry-run"]
    failed_step: str | None  # "validate" | "fetch-secret" | "rehearse-and-plan" | "snapshot" | "migrate" | None
    error: str | None  # already secret-free error text
    applied: tuple[str, ...] | None  # migration ids applied in this run; None: not known (history unreadable)
    failed_migration: str | None
    pending: tuple[str, ...] | None  # still pending after the run; None: not known (it stopped before its plan)
    snapshot_id: str | None
    snapshot_location: str | None  # ARN or dump path
    restore_steps: tuple[str, ...]  # shell commands (restore to a NEW name, then swap) when a snapshot exists
    duration_seconds: float
    run_url: str | None  # Prefect UI link to the flow run
    failed_outcome: str | None = None  # what the failed migration left (MigrationFailure.outcome), when known
    snapshot_state: str | None = None  # "creating": the run stopped while its snapshot was being taken
    target: str | None = None  # `run --target`: the migration the run was to stop at
    beyond_target: tuple[str, ...] = ()  # of `pending`, those after the target: held back by it

    def slack_message(self) -> tuple[str, str]:
        return render_message(self)

    def to_json(self) -> dict[str, object]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in self.__dict__.items()}

    def console_text(self) -> str:
        return render_console(self)


def _outcome_line(summary: RunSummary) -> str:
    status = STATUS.get(summary.outcome, summary.outcome.upper())
    if summary.outcome == "failed" and summary.failed_step:
        return f"{status} at step {summary.failed_step}"
    return status


def not_read(environment: str) -> str:
    """What a message says of a history that could not be read, with the command that reads it."""
    return f"not known: the history could not be read (`rds-migrations status {where_flag(environment)}` reads it)"


def _applied(summary: RunSummary, quote: Callable[[str], str]) -> tuple[str, str]:
    """(" (count)", the list) of what the run applied; not known when its history could not be read."""
    if summary.applied is None:
        return "", not_read(summary.environment)
    return f" ({len(summary.applied)})", _listed(summary.applied, quote)


def _pending(summary: RunSummary, quote: Callable[[str], str]) -> tuple[str, str]:
    """(" (count)", the list) of what is pending (in a dry run: what it would apply); not known when the run
    stopped before its plan, or when what it applied is not known. Those after `--target` are said apart, the
    same on the run that reached the target and on every run after it."""
    if summary.pending is None:
        return "", not_read(summary.environment) if summary.applied is None \
            else "not known (the run stopped before its plan)"
    beyond = set(summary.beyond_target)
    if not beyond:
        return f" ({len(summary.pending)})", _listed(summary.pending, quote)
    within = [i for i in summary.pending if i not in beyond]
    after = [i for i in summary.pending if i in beyond]
    held = f"{_listed(after, quote)} (after the target {quote(summary.target or '?')})"
    if summary.outcome == "dry-run":
        return f" ({len(within)})", f"{_listed(within, quote)}; still pending: {held}"
    return f" ({len(summary.pending)})", f"{_listed(within, quote)}; {held}" if within else held


def _no_snapshot_note(summary: RunSummary) -> str | None:
    """On a failure without a snapshot to restore, say what state the database is in, from the fields alone."""
    if summary.outcome != "failed" or (summary.snapshot_id and summary.restore_steps):
        return None
    if summary.applied is None:  # never "not changed": nobody knows here
        return ("No snapshot was taken, so there is nothing to restore from; what this run applied is "
                f"{not_read(summary.environment)}.")
    if summary.snapshot_id:  # being created, or nothing this run did needs it
        if summary.applied:
            return None
        if summary.failed_migration and (summary.failed_outcome or "").startswith("rolled back"):
            return (f"No migration was applied in this run: {summary.failed_migration} ran in its own transaction "
                    "and was rolled back, so the database was not changed and there is nothing to restore.")
        if summary.failed_migration:
            return None
        return "No migration was applied in this run: the database was not changed, so there is nothing to restore."
    if summary.applied:
        kept = f"the {len(summary.applied)} migration(s) applied in this run are in place"
    else:
        kept = "no migration was applied in this run"
    if summary.failed_migration and summary.failed_outcome and not summary.failed_outcome.startswith("rolled back"):
        return (f"No snapshot was taken, so there is nothing to restore from; {kept}. "
                f"{summary.failed_migration}: {summary.failed_outcome}.")
    if summary.failed_migration and summary.failed_outcome:
        return (f"No snapshot was taken, so there is nothing to restore from; {kept}. "
                f"{summary.failed_migration} ran in its own transaction and was rolled back, so the database is "
                f"as it was before {summary.failed_migration}.")
    if summary.failed_migration:
        return (
            f"No snapshot was taken, so there is nothing to restore from; {kept}. "
            f"{summary.failed_migration} ran in its own transaction and was rolled back, so the database is "
            f"as it was before {summary.failed_migration} (unless it is marked `-- transactional: false`: "
            "then check for partial changes, such as an INVALID index, before re-running)."
        )
    if summary.applied:
        return f"No snapshot was taken, so there is nothing to restore from; {kept}."
    return "No snapshot was taken and no migration was applied: the database was not changed."


def render_message(summary: RunSummary) -> tuple[str, str]:
    """(subject, body) for a Slack message in mrkdwn."""
    m = mrkdwn

    def code(text: str) -> str:
        return f"`{m(text)}`"

    subject = (
        f"*Schema migrations {_outcome_line(summary)}* on {code(summary.environment)} ({m(summary.tier)})"
    )
    short = _short_sha(summary.git_sha)
    sha = code(short) + (f" ({m(summary.git_sha)})" if short != summary.git_sha else "")
    applied_label = "Would apply" if summary.outcome == "dry-run" else "Pending"
    lines = [
        f"*Environment:* {code(summary.environment)} ({m(summary.tier)})",
        f"*Git SHA:* {sha}",
        f"*Trigger:* {m(summary.trigger)}",
        f"*Outcome:* {m(_outcome_line(summary))}",
        "*Applied{}:* {}".format(*_applied(summary, code)),
    ]
    if summary.failed_migration:
        lines.append(f"*Failed migration:* {code(summary.failed_migration)}")
    count, pending = _pending(summary, code)
    lines.append(f"*{applied_label}{count}:* {pending}")
    if summary.snapshot_id:
        where = f" at {code(summary.snapshot_location)}" if summary.snapshot_location else ""
        lines.append(f"*Snapshot:* {code(summary.snapshot_id)}{STILL_CREATING if summary.snapshot_state else where}")
    lines.append(f"*Duration:* {format_duration(summary.duration_seconds)}")
    if summary.run_url:
        url = summary.run_url.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
        lines.append(f"*Run:* <{url}|Prefect flow run>")
    if summary.outcome == "failed":
        if summary.error:
            lines += ["*Error:*", f"```{m(_error_text(summary.error))}```"]
        if summary.snapshot_id and summary.restore_steps:
            lines += [f"*{RESTORE_HEADING}:*", "```" + "\n".join(m(s) for s in summary.restore_steps) + "```"]
        note = _no_snapshot_note(summary)
        if note:
            lines.append(m(note))
    return subject, "\n".join(lines)


def render_console(summary: RunSummary) -> str:
    """Plain text for the terminal, with the same content as the Slack message."""
    sha = _short_sha(summary.git_sha)
    lines = [
        f"Schema migrations {_outcome_line(summary)} on {summary.environment} ({summary.tier})",
        f"  git SHA:    {sha}" + (f" ({summary.git_sha})" if sha != summary.git_sha else ""),
        f"  trigger:    {summary.trigger}",
        f"  applied:    {_applied(summary, str)[1]}",
    ]
    if summary.failed_migration:
        lines.append(f"  failed:     {summary.failed_migration}")
    label = "would apply" if summary.outcome == "dry-run" else "pending"
    lines.append(f"  {label + ':':<11} {_pending(summary, str)[1]}")
    if summary.snapshot_id:
        where = f" at {summary.snapshot_location}" if summary.snapshot_location else ""
        lines.append(f"  snapshot:   {summary.snapshot_id}{STILL_CREATING if summary.snapshot_state else where}")
    lines.append(f"  duration:   {format_duration(summary.duration_seconds)}")
    if summary.run_url:
        lines.append(f"  run:        {summary.run_url}")
    if summary.outcome == "failed":
        if summary.error:
            lines += ["  error:", *(f"    {line}" for line in _error_text(summary.error).splitlines())]
        if summary.snapshot_id and summary.restore_steps:
            lines += [f"  {RESTORE_HEADING}:", *(f"    {step}" for step in summary.restore_steps)]
        note = _no_snapshot_note(summary)
        if note:
            lines.append(f"  {note}")
    return "\n".join(lines)



# ---- a staging refresh or a restore -------------------------------------------------------------------------


def shown_parameters(parameters: dict[str, str], valid: dict[str, re.Pattern[str]]) -> tuple[tuple[str, str], ...]:
    """Flow parameters for a message: a value its pattern refuses is not repeated (it may be a pasted secret)."""
    return tuple((name, value if valid[name].match(value) else f"{REFUSED}: {len(value)} characters, not repeated>")
                 for name, value in parameters.items())


@dataclass(frozen=True)
class RefreshSummary:
    """One refresh or restore run, for the notification. Every text in it is already free of secrets."""

    action: Literal["refresh", "restore"]
    environment: str
    tier: str
    outcome: Literal["succeeded", "failed"]
    failed_step: str | None  # "parameters", "fetch-secret", "refresh", "restore", "migrate"
    error: str | None
    result: SwapResult | None
    applied: tuple[str, ...] | None  # migrations applied to staging after the refresh; None: not known
    deployment: str | None  # "<flow>/<deployment>", or None when not run from a deployment
    flow_name: str
    parameters: tuple[tuple[str, str], ...]
    duration_seconds: float
    run_url: str | None

    def slack_message(self) -> tuple[str, str]:
        return render_refresh(self, slack=True)

    def console_text(self) -> str:
        return "\n".join(render_refresh(self))

    def rerun_command(self) -> str | None:
        """The same run again; None when that cannot help: a parameter was refused (a value, or an environment its
        deployment does not run), so the same parameters would be refused again."""
        if not self.deployment or self.failed_step == "parameters" or any(
                value.startswith(REFUSED) for _, value in self.parameters):
            return None
        params = " ".join(f"--param {shlex.quote(f'{k}={v}')}" for k, v in self.parameters)
        return f"prefect deployment run {shlex.quote(self.deployment)} {params}".strip()


def render_refresh(summary: RefreshSummary, *, slack: bool = False) -> tuple[str, str]:
    """(subject, body): Slack mrkdwn when `slack`, else plain text for the console and the run's logs."""
    esc: Callable[[str], str] = mrkdwn if slack else str

    def code(text: str) -> str:
        return f"`{esc(text)}`" if slack else text

    def label(text: str) -> str:
        return f"*{text}:*" if slack else f"  {text + ':':<12}"

    status = summary.outcome.upper() + (f" at step {summary.failed_step}" if summary.failed_step else "")
    title = f"{TITLES[summary.action]} {status}"
    subject = f"{'*' + title + '*' if slack else title} on {code(summary.environment)} ({esc(summary.tier)})"
    lines = [f"{label('Environment')} {code(summary.environment)} ({esc(summary.tier)})"]
    result = summary.result
    if result is not None:
        how = ("taken now" if not result.snapshot.reused else "newest available" if summary.action == "refresh"
               else "as asked")
        lines.append(f"{label('Snapshot')} {code(result.snapshot.identifier)} of {code(result.snapshot.source)} "
                     f"({result.snapshot.created_at:%Y-%m-%d %H:%M} UTC, {how})")
        fate = "deleted" if result.old_deleted else "kept"
        lines.append(f"{label('Replaced')} {code(result.live)} by the restored copy; the previous one is "
                     f"{code(result.old)} ({fate})")
        if result.masking_files:
            lines.append(f"{label('Masked with')} {', '.join(code(f) for f in result.masking_files)}")
    if summary.action == "refresh" and result is not None:
        applied = not_read(summary.environment) if summary.applied is None \
            else ", ".join(code(i) for i in summary.applied) or "none"
        lines.append(f"{label('Migrated')} {applied}")
    where = code(summary.deployment) if summary.deployment else f"flow {code(summary.flow_name)} (no deployment)"
    lines.append(f"{label('Deployment')} {where}")
    lines.append(f"{label('Parameters')} " + ", ".join(f"{k}={code(v)}" for k, v in summary.parameters))
    lines.append(f"{label('Duration')} {format_duration(summary.duration_seconds)}")
    if summary.run_url:
        lines.append(f"{label('Run')} " + (f"<{summary.run_url}|Prefect flow run>" if slack else summary.run_url))
    if summary.outcome == "failed":
        if summary.error:
            error = summary.error.strip()[:2000]
            lines += [label("Error"), f"```{esc(error)}```" if slack else f"    {error}"]
        command = summary.rerun_command()
        if command:
            lines.append(f"{label('Run again')} {code(command)}")
    return subject, "\n".join(lines)
