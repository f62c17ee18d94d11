"""validate's engine: everything that can be known before touching the target, and a read-only plan.

1. static: file names, duplicate versions, `-- depends:`, orphan rollbacks, the directory itself (catalog);
2. lint: squawk, with the environment's policy deciding which findings block;
3. plan: what is pending on the target, and whether its history matches the files (read-only);
4. rehearsal, when something is pending: see rehearsal.py.
The result is one `ValidationReport` (report.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment, Policy
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog, read_catalog
from tasks.engine.migrations.lint import LintFinding, lint_files
from tasks.engine.migrations.plan import Plan, plan
from tasks.engine.migrations.reference import check_drift
from tasks.engine.migrations.rehearsal import rehearsal_server, rehearse, rehearse_on_target_schema
from tasks.engine.migrations.report import ValidationFailed, ValidationReport, with_drift, with_plan, with_rehearsal
from tasks.engine.migrations.scratch import choose_place, empty_if_missing

logger = logging.getLogger(__name__)

ADOPTED = ("rehearsed on a copy of the target's schema: it was adopted with a baseline, so the migrations alone do "
           "not build it")


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



def validate(migrations_dir: Path, project_root: Path, policy: Policy,
             log: Log = logger) -> tuple[Catalog, ValidationReport]:
    """Static checks and lint, before anything touches AWS or the database; `ValidationFailed` on a problem
    with the files. Which lint findings block is decided with the plan, when it is known what is pending."""
    catalog, report = check_migrations(migrations_dir, project_root, policy)
    log.info("Static checks and lint:\n%s", report.to_text())
    if not report.static_ok:
        raise ValidationFailed(report)
    return catalog, report


def rehearse_and_plan(environment: Environment, catalog: Catalog, report: ValidationReport,
                      connection: Connection, target: str | None = None, log: Log = logger, *,
                      dry_run: bool = False) -> ValidationReport:
    """Plan against the target (read-only); when something is pending and the lint findings of what is about
    to run allow it, rehearse (never changing the target's server in a dry run, see scratch.py)."""
    # The credentials were read with create=not dry_run: only a dry run's embedded database may be missing.
    with empty_if_missing(environment, connection, log, created=not dry_run) as connection:
        report = _rehearse_and_plan(environment, catalog, report, connection, target, log, dry_run=dry_run)
    log.info("Plan:\n%s", report.to_text())
    if not report.ok:
        raise ValidationFailed(report)
    return report


def _rehearse_and_plan(environment: Environment, catalog: Catalog, report: ValidationReport,
                       connection: Connection, target: str | None, log: Log, *, dry_run: bool) -> ValidationReport:
    current = plan(connection, catalog, target=target, allow_out_of_order=environment.policy.allow_out_of_order,
                   environment=environment.name)
    report = with_plan(report, current, catalog)
    if environment.policy.drift != "ignore" and report.ok:
        asked = rehearsal_server(environment, connection) or connection
        applied_ids, pending_ids = set(current.applied), set(current.pending)  # once: not once per migration
        applied = [m for m in catalog.migrations if m.id in applied_ids]
        everything = [m for m in catalog.migrations if m.id in applied_ids or m.id in pending_ids]
        # A change by hand may be written as a pending migration: the drift is held against those too.
        drift, source = check_drift(
            connection, catalog, choose_place(asked, connection, applied, dry_run=dry_run, log=log),
            environment.policy, log, pending=current.pending,
            pending_place=lambda: choose_place(asked, connection, everything, dry_run=dry_run, log=log))
        report = with_drift(report, drift, source, environment.policy.drift)
    server = rehearsal_server(environment, connection) if current.pending and report.ok else None
    if server is not None:
        start, why = rehearsal_start(environment, current, log)
        pending_ids = set(current.pending)
        pending = [m for m in catalog.migrations if m.id in pending_ids]
        if start in ("target_schema", "both"):
            place = choose_place(server, connection, pending, dry_run=dry_run, log=log)
            report = with_rehearsal(report, rehearse_on_target_schema(
                catalog, current.pending, connection, place, environment.policy, log, why=why))
        if start in ("empty", "both"):
            place = choose_place(server, connection, catalog.migrations, dry_run=dry_run, log=log)
            report = with_rehearsal(report, rehearse(catalog, place, environment.policy, log,
                                                     cache=environment.rehearsal.cache, target=connection,
                                                     environment=environment.name))
    return report


def rehearsal_start(environment: Environment, current: Plan, log: Log = logger) -> tuple[str, str | None]:
    """Where the rehearsal starts (`rehearsal.start`), and why when that is not what the environment says.

    Left unset, `start` is "empty", unless the target was adopted with a baseline: the directory alone does not
    build it (tables no migration made), so the pending migrations are rehearsed on a copy of its schema. A
    `start` written in the environment file is obeyed: a rehearsal from nothing proves the directory builds a
    database on its own, and a team that asked for that is told, when it fails on a table the target holds, how
    to ask for the other."""
    rehearsal = environment.rehearsal
    if rehearsal.start == "empty" and "start" not in rehearsal.model_fields_set and current.adopted:
        log.info("Rehearsing on a copy of the target's schema, not from an empty database: it was adopted with a "
                 "baseline, so the migrations alone do not build it (rehearsal.start is not set for %s)",
                 environment.name)
        return "target_schema", ADOPTED
    return rehearsal.start, None
