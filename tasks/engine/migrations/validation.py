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
from tasks.engine.migrations.plan import plan
from tasks.engine.migrations.rehearsal import rehearsal_server, rehearse
from tasks.engine.migrations.report import ValidationFailed, ValidationReport, with_plan, with_rehearsal

logger = logging.getLogger(__name__)


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
    """Static checks and lint, before anything touches AWS or the database; `ValidationFailed` on errors."""
    catalog, report = check_migrations(migrations_dir, project_root, policy)
    log.info("Static checks and lint:\n%s", report.to_text())
    if not report.ok:
        raise ValidationFailed(report)
    return catalog, report


def rehearse_and_plan(environment: Environment, catalog: Catalog, report: ValidationReport,
                      connection: Connection, target: str | None = None, log: Log = logger) -> ValidationReport:
    """Plan against the target (read-only) and, when something is pending, rehearse on a throwaway database."""
    current = plan(connection, catalog, target=target, allow_out_of_order=environment.policy.allow_out_of_order,
                   environment=environment.name)
    report = with_plan(report, current)
    if current.pending and not current.problems:
        server = rehearsal_server(environment, connection)
        if server is not None:
            rehearsal = rehearse(catalog, server, environment.policy, cache=environment.rehearsal.cache)
            report = with_rehearsal(report, rehearsal)
    log.info("Plan:\n%s", report.to_text())
    if not report.ok:
        raise ValidationFailed(report)
    return report
