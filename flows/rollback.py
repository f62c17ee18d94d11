"""The rollback flow (a manual deployment): the environment's migrations after a version undone, newest first,
through the same safe pipeline as a run (validate, plan, approval in production, snapshot, lock, timeouts and
lock-timeout retries, notify). The steps are in tasks/engine/runs/rollback.py."""

from __future__ import annotations

from prefect import flow

from flows.budget import within_budget
from flows.hooks import report_cancellation, report_crash
from flows.observe import run_name
from flows.steps import PrefectSteps
from tasks.engine.migrations.rollback import RollbackReport
from tasks.engine.runs.rollback import roll_back_environment


@flow(name="rollback", flow_run_name=run_name, on_crashed=[report_crash], on_cancellation=[report_cancellation])
def rollback(environment: str, to: str, git_sha: str = "unknown", dry_run: bool = False,
             migrations_dir: str = "migrations", trigger: str = "manual") -> RollbackReport | None:
    """Undo the environment's applied migrations after `to` ("0": all), newest first.

    Args:
        environment: the environment (deployments/environments.toml).
        to: the migration id or version number to go back to; "0" undoes every migration.
        git_sha: the commit whose migrations/ (with its rollback files) is used.
        dry_run: validate and plan only.
        migrations_dir: the migrations directory, relative to the project.
        trigger: who asked ("manual", "ui", "cli").
    """
    with within_budget(environment):
        return roll_back_environment(environment, PrefectSteps(), to=to, git_sha=git_sha, dry_run=dry_run,
                                     migrations_dir=migrations_dir, trigger=trigger)
