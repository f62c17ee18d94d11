"""validate: everything that can be known before touching the target, and a read-only plan against it.

1. static: file names, duplicate versions, `-- depends:`, orphan rollbacks, the directory itself (catalog);
2. lint: squawk, with the environment's policy deciding which findings block;
3. rehearsal: every migration applied from scratch on a throwaway database, the tail with rollback files
   rolled back and re-applied;
4. plan: what is pending on the target, and whether its history matches the files (read-only).
The result is one `ValidationReport`, rendered as markdown (Prefect artifact, GitHub step summary) and text.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from psycopg import sql

from tasks.catalog import Catalog, read_catalog
from tasks.environments import Environment, Policy
from tasks.lint import LintFinding, blocking, lint_files
from tasks.migrate import MigrationError, Plan, apply_pending, roll_back
from tasks.secrets import Connection, connected, connection_from_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RehearsalResult:
    where: str
    applied: int
    rolled_back: tuple[str, ...] = ()
    failure: str | None = None
    duration_seconds: float = 0.0


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


class ValidationFailed(Exception):
    def __init__(self, report: ValidationReport) -> None:
        super().__init__("validation failed:\n" + "\n".join(f"  - {e}" for e in report.errors))
        self.report = report


# ---- 1 + 2: static checks and lint (no database) --------------------------------------------------------


def check_migrations(migrations_dir: Path, project_root: Path, policy: Policy) -> tuple[Catalog, ValidationReport]:
    started = time.monotonic()
    catalog = read_catalog(migrations_dir, project_root)
    static_done = time.monotonic()
    findings: list[LintFinding] = []
    if catalog.migrations:
        findings = lint_files(
            [m.path for m in catalog.migrations],
            transactional={m.path: m.transactional for m in catalog.migrations},
        )
    report = ValidationReport(
        migrations_dir=str(migrations_dir),
        migrations=catalog.ids,
        problems=tuple(str(p) for p in catalog.problems),
        findings=tuple(findings),
        lint_blocks_on=policy.lint_blocks_on,
        timings={"static": static_done - started, "lint": time.monotonic() - static_done},
    )
    return catalog, report


# ---- 3: rehearsal ---------------------------------------------------------------------------------------


def rehearsal_server(environment: Environment, target: Connection | None) -> Connection | None:
    """The server on which a throwaway rehearsal database is created, per the environment's setting."""
    kind = environment.rehearsal.kind
    if kind == "none":
        return None
    if kind == "url_env":
        url = os.environ.get(environment.rehearsal.variable)
        if not url:
            raise ValueError(f"rehearsal.kind is url_env but {environment.rehearsal.variable} is not set")
        return connection_from_url(url, f"env:{environment.rehearsal.variable}")
    if kind == "embedded" or target is None:
        from tasks.embedded import embedded_server

        server = embedded_server()
        server.start()
        return server.connection()
    return target


def rehearse(catalog: Catalog, server: Connection, policy: Policy,
             log: logging.Logger | logging.LoggerAdapter = logger) -> RehearsalResult:
    """Apply everything on a new database, roll back the tail that has rollback files, re-apply; drop it."""
    started = time.monotonic()
    name = f"rdsm_rehearsal_{uuid.uuid4().hex[:12]}"
    where = f"{server.host}:{server.port} (temporary database {name})"
    # The rehearsal must not wait on anything for long: no other session uses this database.
    rehearsal_policy = policy.model_copy(update={"migration_lock_wait_seconds": 0, "lock_timeout_retries": 0})
    with connected(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    scratch = server.with_database(name)
    rolled_back: list[str] = []
    try:
        apply_pending(scratch, catalog, rehearsal_policy, git_sha="rehearsal", log=log)
        tail = []
        for migration in reversed(catalog.migrations):
            if not migration.has_rollback:
                break
            tail.append(migration)
        for migration in tail:
            roll_back(scratch, migration, rehearsal_policy)
            rolled_back.append(migration.id)
        if tail:
            apply_pending(scratch, catalog, rehearsal_policy, git_sha="rehearsal", log=log)
        failure = None
    except MigrationError as exc:
        failure = str(exc)
    finally:
        with connected(server) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return RehearsalResult(
        where=where,
        applied=len(catalog.migrations),
        rolled_back=tuple(rolled_back),
        failure=failure,
        duration_seconds=time.monotonic() - started,
    )


def with_rehearsal(report: ValidationReport, rehearsal: RehearsalResult | None) -> ValidationReport:
    return replace(report, rehearsal=rehearsal)


def with_plan(report: ValidationReport, plan: Plan) -> ValidationReport:
    return replace(report, plan=plan)


# ---- the Prefect tasks -----------------------------------------------------------------------------------

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from tasks.migrate import plan as read_plan  # noqa: E402
from tasks.transient import retry_on_transient  # noqa: E402


@task(name="validate", persist_result=False, cache_policy=NO_CACHE)
def validate(migrations_dir: Path, project_root: Path, policy: Policy) -> tuple[Catalog, ValidationReport]:
    """Static checks and lint, before anything touches AWS or the database.

    Example:
        catalog, report = validate(Path("migrations"), Path.cwd(), environment.policy)
    """
    catalog, report = check_migrations(migrations_dir, project_root, policy)
    get_run_logger().info("Static checks and lint:\n%s", report.to_text())
    if not report.ok:
        raise ValidationFailed(report)
    return catalog, report


@task(
    name="rehearse-and-plan",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_on_transient,
    persist_result=False,
    cache_policy=NO_CACHE,
)
def rehearse_and_plan(environment: Environment, catalog: Catalog, report: ValidationReport,
                      connection: Connection, target: str | None = None) -> ValidationReport:
    """Plan against the target (read-only) and, when something is pending, rehearse on a throwaway database."""
    log = get_run_logger()
    current = read_plan(connection, catalog, target=target, allow_out_of_order=environment.policy.allow_out_of_order)
    report = with_plan(report, current)
    if current.pending and not current.problems:
        server = rehearsal_server(environment, connection)
        if server is not None:
            report = with_rehearsal(report, rehearse(catalog, server, environment.policy))
    log.info("Plan:\n%s", report.to_text())
    if not report.ok:
        raise ValidationFailed(report)
    return report
