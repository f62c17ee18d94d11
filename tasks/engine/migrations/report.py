"""The validation report: static problems, lint findings, the rehearsal and the plan, as one value rendered
as text (console, logs) and markdown (Prefect artifact, GitHub step summary)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tasks.engine.errors import RdsMigrationsError
from tasks.engine.migrations.lint import LintFinding, blocking
from tasks.engine.migrations.plan import Plan


@dataclass(frozen=True)
class RehearsalResult:
    where: str
    applied: int
    rolled_back: tuple[str, ...] = ()
    failure: str | None = None
    duration_seconds: float = 0.0
    reused: int = 0  # migrations not applied again: they came with a cached rehearsal database


@dataclass(frozen=True)
class ValidationReport:
    migrations_dir: str
    migrations: tuple[str, ...]
    problems: tuple[str, ...] = ()
    findings: tuple[LintFinding, ...] = ()
    lint_blocks_on: str = "error"
    rehearsal: RehearsalResult | None = None
    plan: Plan | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def blocking_findings(self) -> tuple[LintFinding, ...]:
        return tuple(blocking(list(self.findings), self.lint_blocks_on))  # type: ignore[arg-type]

    @property
    def errors(self) -> list[str]:
        errors = list(self.problems)
        errors += [f"{f.file}:{f.line}: {f.rule}: {f.message}" for f in self.blocking_findings]
        if self.rehearsal and self.rehearsal.failure:
            errors.append(f"rehearsal failed: {self.rehearsal.failure}")
        if self.plan:
            errors += list(self.plan.problems)
        return errors

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def pending(self) -> tuple[str, ...]:
        return self.plan.pending if self.plan else ()

    def to_text(self) -> str:
        lines = [f"{len(self.migrations)} migrations in {self.migrations_dir}"]
        lines += [f"  ERROR {p}" for p in self.problems]
        blocking_set = set(self.blocking_findings)
        for f in self.findings:
            level = "BLOCKS" if f in blocking_set else f.severity.upper()
            lines.append(f"  lint {level} {f.file}:{f.line} {f.rule}: {f.message}")
        if self.rehearsal:
            r = self.rehearsal
            status = f"FAILED: {r.failure}" if r.failure else "ok"
            lines.append(
                f"  rehearsal on {r.where}: applied {r.applied}, rolled back and re-applied "
                f"{len(r.rolled_back)} ({r.duration_seconds:.1f}s): {status}"
            )
        if self.plan:
            lines.append(f"  plan: {len(self.plan.applied)} applied, {len(self.plan.pending)} pending")
            lines += [f"    pending {m}" for m in self.plan.pending]
            lines += [f"  ERROR {p}" for p in self.plan.problems]
        lines.append("  result: " + ("ok" if self.ok else f"{len(self.errors)} error(s)"))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        status = "passed" if self.ok else "failed"
        out = [f"## Migration validation {status}", "",
               f"{len(self.migrations)} migrations in `{self.migrations_dir}`."]
        if self.errors:
            out += ["", "### Errors", ""] + [f"- {_md(e)}" for e in self.errors]
        if self.findings:
            out += ["", f"### Lint (squawk; blocking at `{self.lint_blocks_on}`)", "",
                    "| file | line | rule | severity | message |", "|---|---|---|---|---|"]
            out += [f"| {f.file} | {f.line} | {f.rule} | {f.severity} | {_md(f.message)} |" for f in self.findings]
        if self.rehearsal:
            r = self.rehearsal
            out += ["", "### Rehearsal", "",
                    f"On {r.where}: {r.applied} applied from scratch; rolled back and re-applied: "
                    f"{', '.join(r.rolled_back) or 'none (no rollback files at the tail)'}; "
                    f"{'**failed**: ' + _md(r.failure) if r.failure else 'ok'} ({r.duration_seconds:.1f}s)."]
        if self.plan:
            out += ["", "### Plan", "", f"{len(self.plan.applied)} applied; {len(self.plan.pending)} pending:"]
            out += [f"1. `{m}`" for m in self.plan.pending] or ["", "Nothing to apply."]
            if self.plan.beyond_target:
                out += ["", f"Held back by the target: {', '.join(self.plan.beyond_target)}"]
        return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def with_rehearsal(report: ValidationReport, rehearsal: RehearsalResult | None) -> ValidationReport:
    return replace(report, rehearsal=rehearsal)


def with_plan(report: ValidationReport, plan: Plan) -> ValidationReport:
    return replace(report, plan=plan)


class ValidationFailed(RdsMigrationsError):
    """Static checks, lint, the rehearsal or the plan found errors: nothing was applied."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__("validation failed:\n" + "\n".join(f"  - {e}" for e in report.errors))
        self.report = report
