"""The validation report: static problems, lint findings, the rehearsal and the plan, as one value rendered
as text (console, logs) and markdown (Prefect artifact, GitHub step summary)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tasks.engine.errors import RdsMigrationsError
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.drift import WAY_OUT, DriftReport
from tasks.engine.migrations.lint import CANNOT_RUN_IN_TRANSACTION, SQUAWK_CONCURRENTLY_RULE, LintFinding, blocking
from tasks.engine.migrations.lint_scope import LintScope
from tasks.engine.migrations.plan import Plan


@dataclass(frozen=True)
class RehearsalResult:
    where: str
    applied: int  # migrations the rehearsal applied itself (on top of `reused`), before the one that failed if any
    rolled_back: tuple[str, ...] = ()
    failure: str | None = None
    duration_seconds: float = 0.0
    reused: int = 0  # migrations not applied again: they came with a cached rehearsal database
    note: str | None = None  # why it ran where it ran, when not where the environment asked
    on_target_schema: bool = False  # the pending migrations on a copy of the target's schema

    def counts(self) -> str:
        """Where it started and how many it applied, in the one sentence every rendering uses."""
        if self.reused:
            return (f"started from a cached database holding the first {self.reused} migrations, applied "
                    f"{self.applied} on top")
        if self.on_target_schema:
            return f"applied {self.applied} pending on top of it"  # `where` says: a copy of the target's schema
        return f"applied {self.applied} from scratch"


@dataclass(frozen=True)
class ValidationReport:
    migrations_dir: str
    migrations: tuple[str, ...]
    problems: tuple[str, ...] = ()
    findings: tuple[LintFinding, ...] = ()
    lint_blocks_on: str = "error"
    rehearsals: tuple[RehearsalResult, ...] = ()
    plan: Plan | None = None
    timings: dict[str, float] = field(default_factory=dict)
    scope: LintScope = LintScope()  # which findings can block: about to run, not on a table made in the batch
    drift: DriftReport | None = None  # the live schema against what the applied migrations make
    drift_source: str = ""  # where the expected schema came from
    drift_policy: str = "ignore"

    @property
    def blocking_findings(self) -> tuple[LintFinding, ...]:
        by_policy = blocking(list(self.findings), self.lint_blocks_on)  # type: ignore[arg-type]
        return tuple(f for f in by_policy if self.scope.why_not_blocking(f) is None)

    @property
    def errors(self) -> list[str]:
        errors = list(self.problems)
        errors += [f"{f.file}:{f.line}: {f.rule}: {f.message}" for f in self.blocking_findings]
        errors += [f"rehearsal failed: {r.failure}" for r in self.rehearsals if r.failure]
        if self.plan:
            errors += list(self.plan.problems)
        if self.drift is not None and self.drift.drifted and self.drift_policy == "block":
            errors.append(f"the live schema has drifted from what the applied migrations make: "
                          f"{self.drift.summary()}: " + "; ".join(d.text for d in self.drift.differences[:10]))
        return errors

    @property
    def refused_by_files(self) -> bool:
        """Errors in the files themselves or their lint (not the rehearsal, the plan or drift)."""
        return bool(self.problems or self.blocking_findings)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def rehearsal(self) -> RehearsalResult | None:
        """The first rehearsal (an environment may ask for two: from nothing, and on the target's schema)."""
        return self.rehearsals[0] if self.rehearsals else None

    @property
    def static_ok(self) -> bool:
        """No problem with the files themselves (lint aside: what blocks depends on what is pending)."""
        return not self.problems

    def how_to_proceed(self) -> str:
        """The ways forward, for the errors this report holds."""
        ways = []
        if self.problems:
            ways.append("fix the files named above (an applied migration is never edited: put the change in a new "
                        "one)")
        if self.plan and self.plan.problems:  # the database's state, or files against its history
            ways.append("do what each problem above says: each names its own way out (adopt the database with "
                        "`rds-migrations baseline`, resolve a dirty migration, restore an edited or deleted file, "
                        "renumber one, or roll back)")
        ours = [f for f in self.blocking_findings if f.rule in (CANNOT_RUN_IN_TRANSACTION, SQUAWK_CONCURRENTLY_RULE)]
        if ours:  # no comment suppresses it: the server itself refuses the statement in a transaction
            ways.append(f"run {', '.join(sorted({f.file for f in ours}))} outside a transaction: make "
                        "`-- transactional: false` its first line (`rds-migrations new --non-transactional SLUG` "
                        "writes such a file), or move the statement into a file of its own that is")
        if len(ours) < len(self.blocking_findings):
            ways.append("fix the statement, or suppress the finding in the migration where reviewers see it "
                        "(`-- squawk-ignore <rule>` on the line before it, or `-- squawk-ignore-file <rule>`), "
                        f"or change what blocks in this environment (policy.lint_blocks_on, now "
                        f"{self.lint_blocks_on!r}, in deployments/environments.toml)")
        if self.drift is not None and self.drift.drifted and self.drift_policy == "block":
            ways.append(f"{WAY_OUT}, then run again; `rds-migrations drift` lists every difference; policy.drift "
                        "decides whether drift blocks")
        if any(r.failure for r in self.rehearsals):
            ways.append("the rehearsal ran the migrations on a throwaway database and one failed: fix it (the "
                        "target was not touched)")
        return "to proceed: " + "; or ".join(ways) + "." if ways else ""

    @property
    def pending(self) -> tuple[str, ...]:
        return self.plan.pending if self.plan else ()

    def to_text(self) -> str:
        lines = [f"{len(self.migrations)} migrations in {self.migrations_dir}"]
        lines += [f"  ERROR {p}" for p in self.problems]
        blocking_set = set(self.blocking_findings)
        by_policy = set(blocking(list(self.findings), self.lint_blocks_on))  # type: ignore[arg-type]
        for f in self.findings:
            level = "BLOCKS" if f in blocking_set else f.severity.upper()
            exempt = self.scope.why_not_blocking(f) if f in by_policy else None
            note = f" (not blocking: {exempt})" if exempt else ""
            lines.append(f"  lint {level} {f.file}:{f.line} {f.rule}: {f.message}{note}")
        for r in self.rehearsals:
            status = f"FAILED: {r.failure}" if r.failure else "ok"
            lines.append(
                f"  rehearsal on {r.where}: {r.counts()}, rolled back and re-applied "
                f"{len(r.rolled_back)} ({r.duration_seconds:.1f}s): {status}"
            )
            if r.note:
                lines.append(f"    ({r.note})")
        if self.drift is not None:
            state = "drifted" if self.drift.drifted else "none"
            lines.append(f"  drift ({self.drift_source}): {state}" + (f", {self.drift.summary()}"
                                                                       if self.drift.drifted else ""))
            lines += [f"    {d.text}" for d in self.drift.differences]
            lines += [f"    note: {note}" for note in self.drift.notes]
        if self.plan:
            lines.append(f"  plan: {len(self.plan.applied)} applied, {len(self.plan.pending)} pending")
            lines += [f"    pending {m}" for m in self.plan.pending]
            lines += [f"  ERROR {p}" for p in self.plan.problems]
        lines.append("  result: " + ("ok" if self.ok else f"{len(self.errors)} error(s)"))
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        """A plain dict, for `--json`: what to_text says, field by field."""
        blocking_set = set(self.blocking_findings)
        return {
            "ok": self.ok, "migrations_dir": self.migrations_dir, "migrations": list(self.migrations),
            "errors": self.errors, "problems": list(self.problems),
            "findings": [{"file": f.file, "line": f.line, "rule": f.rule, "severity": f.severity,
                          "message": f.message, "blocks": f in blocking_set,
                          "not_blocking_because": self.scope.why_not_blocking(f)} for f in self.findings],
            "rehearsals": [{"where": r.where, "reused": r.reused, "applied": r.applied,
                            "rolled_back": list(r.rolled_back), "failure": r.failure, "note": r.note,
                            "on_target_schema": r.on_target_schema,
                            "seconds": round(r.duration_seconds, 3)} for r in self.rehearsals],
            "plan": self.plan.to_json() if self.plan else None,
            "drift": {**self.drift.to_json(), "expected_from": self.drift_source} if self.drift else None,
        }

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
        for r in self.rehearsals:
            again = ", ".join(r.rolled_back) or "none (no rollback files at the tail)"
            out += ["", "### Rehearsal", "",
                    f"On {r.where}: {r.counts()}; rolled back and re-applied: {again}; "
                    f"{'**failed**: ' + _md(r.failure) if r.failure else 'ok'} ({r.duration_seconds:.1f}s)."]
            out += ["", f"_{_md(r.note)}_"] if r.note else []
        if self.plan:
            out += ["", "### Plan", "", f"{len(self.plan.applied)} applied; {len(self.plan.pending)} pending:"]
            out += [f"1. `{m}`" for m in self.plan.pending] or ["", "Nothing to apply."]
            if self.plan.beyond_target:
                out += ["", f"Held back by the target: {', '.join(self.plan.beyond_target)}"]
        return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def with_drift(report: ValidationReport, drift: DriftReport, source: str, policy: str) -> ValidationReport:
    return replace(report, drift=drift, drift_source=source, drift_policy=policy)


def with_rehearsal(report: ValidationReport, rehearsal: RehearsalResult | None) -> ValidationReport:
    return report if rehearsal is None else replace(report, rehearsals=(*report.rehearsals, rehearsal))


def with_plan(report: ValidationReport, plan: Plan, catalog: Catalog) -> ValidationReport:
    """The report with the plan, and lint findings scoped to what the plan says is about to run."""
    return replace(report, plan=plan, scope=LintScope.of(catalog, plan.pending, report.findings, plan.beyond_target))


class ValidationFailed(RdsMigrationsError):
    """Static checks, lint, the rehearsal or the plan found errors: nothing was applied."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__("validation failed:\n" + "\n".join(f"  - {e}" for e in report.errors)
                         + "\n" + report.how_to_proceed())
        self.report = report
