"""What a run shows in Prefect besides its logs: its name, table artifacts (the plan, the lint findings, the
migrations applied with durations and lock retries), progress artifacts (the snapshot's, and "N of M
migrations applied"), and events (flows/events.py) as each migration is applied or fails. The markdown
artifacts (the plan and the result, tasks/engine/runs/) stay for the narrative.

Nothing here changes a run: a failure to publish is logged and the run goes on.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.logging import get_logger
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run

from flows import events
from tasks.engine.environments import ENVIRONMENT_NAME
from tasks.engine.errors import RdsMigrationsError
from tasks.engine.git import GIT_SHA, GIT_SHA_PARAMETER, head_sha, is_checkout
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.report import ValidationReport
from tasks.engine.migrations.results import AppliedMigration, ApplyReport, MigrationFailure

logger = get_logger("rds_migrations.observe")
PROGRESS_INTERVAL_SECONDS = 1.0  # a progress artifact is written at most this often (and at the end)


class OrdinaryFailures(logging.Filter):
    """Prefect logs a failed flow or task run with its traceback. Our own errors (RdsMigrationsError) are
    explained in words, and those words are the log line: the traceback goes, on the console and in the UI.
    Anything else, a bug, keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RdsMigrationsError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_ordinary_failures() -> None:
    """Install `OrdinaryFailures` on Prefect's flow and task run loggers, once."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        found = logging.getLogger(name)
        if not any(isinstance(existing, OrdinaryFailures) for existing in found.filters):
            found.addFilter(OrdinaryFailures())


# ---- names ----------------------------------------------------------------------------------------------------


def short_sha(git_sha: object) -> str:
    """A commit id's first 7 characters, a label as it is; anything else (a hostile value) is not repeated."""
    if not isinstance(git_sha, str) or not GIT_SHA_PARAMETER.match(git_sha):
        return "invalid-sha"
    return git_sha[:7] if GIT_SHA.match(git_sha) else git_sha


def run_environment() -> str:
    """The flow run's `environment` parameter, when it is a valid environment name."""
    environment = current_flow_run.parameters.get("environment")
    return environment if isinstance(environment, str) and ENVIRONMENT_NAME.match(environment) else "invalid"


def run_sha() -> str:
    """The flow run's `git_sha` parameter, when it is a commit id or a label ("unknown" when there is none)."""
    git_sha = current_flow_run.parameters.get("git_sha", "unknown")
    return git_sha if isinstance(git_sha, str) and GIT_SHA_PARAMETER.match(git_sha) else "invalid-sha"


def run_name() -> str:
    """`<environment>-<sha7>` (`flow_run_name` of every flow): `production-1a2b3c4`, not `carrot-pegasus`. A
    deployment run given no git_sha applies its clone's checked-out commit (tasks/engine/runs/commit.py) and is
    named after it; Prefect names the run once the pull steps have made that clone its working directory."""
    git_sha = run_sha()
    if git_sha == "unknown" and current_deployment.name:
        try:
            git_sha = head_sha(Path.cwd()) if is_checkout(Path.cwd()) else git_sha
        except (OSError, subprocess.SubprocessError):  # no git here: the name says "unknown", as the run records
            pass
    return f"{run_environment()}-{short_sha(git_sha)}"


# ---- artifact keys: lowercase letters, digits and dashes; one per environment, a new version per run ----------


def plan_key(environment: str) -> str:
    return f"migration-plan-table-{environment}"


def lint_key(environment: str) -> str:
    return f"lint-findings-{environment}"


def applied_key(environment: str) -> str:
    return f"applied-migrations-{environment}"


def migration_progress_key(environment: str) -> str:
    return f"migration-progress-{environment}"


def snapshot_progress_key(environment: str) -> str:
    return f"snapshot-progress-{environment}"


# ---- tables -----------------------------------------------------------------------------------------------------


def _table(key: str, rows: list[dict[str, object]], description: str) -> None:
    try:
        create_table_artifact(rows, key=key, description=description)
    except Exception as exc:  # noqa: BLE001 - a report never changes a run
        logger.warning("Table artifact %s not published (%s)", key, type(exc).__name__)


def publish_plan(environment: str, report: ValidationReport, catalog: Catalog) -> None:
    """One row per pending migration, in apply order (none: nothing to apply)."""
    if report.plan is None:
        return
    rows: list[dict[str, object]] = []
    for position, migration_id in enumerate(report.plan.pending, 1):
        migration = catalog.get(migration_id)
        rows.append({"order": position, "migration": migration_id,
                     "transactional": migration.transactional if migration else None,
                     "statements": len(migration.statements) if migration else None,
                     "rollback file": migration.has_rollback if migration else None, "status": "pending"})
    rows += [{"order": None, "migration": migration_id, "transactional": None, "statements": None,
              "rollback file": None, "status": "held back by the target"} for migration_id in report.plan.beyond_target]
    _table(plan_key(environment), rows, f"Plan for {environment}: {len(report.plan.pending)} pending, "
           f"{len(report.plan.applied)} applied before this run")


def publish_lint(environment: str, report: ValidationReport) -> None:
    """One row per squawk finding, with whether it blocks this run."""
    blocking = set(report.blocking_findings)
    rows = [{"file": f.file, "line": f.line, "rule": f.rule, "severity": f.severity, "blocks": f in blocking,
             "message": f.message} for f in report.findings]
    _table(lint_key(environment), rows, f"Lint findings for {environment} (blocking at {report.lint_blocks_on})")


def publish_applied(environment: str, report: ApplyReport) -> None:
    """One row per migration this run applied, and the one that stopped it."""
    rows: list[dict[str, object]] = [
        {"migration": m.id, "outcome": "applied", "duration (s)": round(m.duration_seconds, 3),
         "attempts": m.attempts, "lock retries": m.attempts - 1, "sqlstate": None} for m in report.applied]
    if report.failed is not None:
        f = report.failed
        rows.append({"migration": f.migration_id, "outcome": "failed (dirty)" if f.dirty else "failed",
                     "duration (s)": None, "attempts": f.attempts, "lock retries": f.attempts - 1,
                     "sqlstate": f.sqlstate})
    _table(applied_key(environment), rows, f"Migrations applied to {environment} in "
           f"{report.duration_seconds:.1f}s; {len(report.pending)} still pending")


# ---- progress -----------------------------------------------------------------------------------------------------


class ProgressArtifact:
    """A progress artifact, created at the first update and written at most every PROGRESS_INTERVAL_SECONDS
    (a run of 1,000 migrations writes it a few times, not 1,000 times), and always when `final`."""

    def __init__(self, key: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.clock = clock
        self.artifact_id: UUID | None = None
        self.written = float("-inf")

    def update(self, percent: float, description: str, *, final: bool = False) -> None:
        now = self.clock()
        if not final and now - self.written < PROGRESS_INTERVAL_SECONDS:
            return
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(percent, key=self.key, description=description)
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
            self.written = now
        except Exception as exc:  # noqa: BLE001 - a report never changes a run
            logger.warning("Progress artifact %s not written (%s)", self.key, type(exc).__name__)


def snapshot_progress(environment: str) -> Callable[[str, int], None]:
    """The snapshot step's `progress`: RDS's PercentProgress while it waits, 100 when usable."""
    artifact = ProgressArtifact(snapshot_progress_key(environment))

    def progress(snapshot_id: str, percent: int) -> None:
        artifact.update(percent, f"Snapshot {snapshot_id} of {environment}: {percent}%", final=percent >= 100)

    return progress


class MigrationProgress:
    """The `ApplyObserver` of a flow run's migrate step: "N of M migrations applied", and an event for each."""

    def __init__(self, environment: str, git_sha: str) -> None:
        self.environment = environment
        self.git_sha = git_sha
        self.artifact = ProgressArtifact(migration_progress_key(environment))

    def applied(self, migration: AppliedMigration, position: int, count: int) -> None:
        self.artifact.update(100 * position / count, f"{position} of {count} migrations applied to "
                             f"{self.environment} (last: {migration.id})", final=position == count)
        events.migration_applied(self.environment, self.git_sha, migration, position, count)

    def failed(self, failure: MigrationFailure, position: int, count: int) -> None:
        self.artifact.update(100 * (position - 1) / count, f"{position - 1} of {count} migrations applied to "
                             f"{self.environment}; {failure.migration_id} failed", final=True)
        events.migration_failed(self.environment, self.git_sha, failure, position, count)
