"""The baseline flow (run by hand, from the UI: adopt a database another tool migrated) and the drift-check
flow (scheduled nightly: notifies only when the live schema drifted, and then ends Failed). The steps are in
tasks/engine/runs/adoption.py; each is a task run of these flows."""

from __future__ import annotations

from prefect import flow

from flows.budget import within_budget
from flows.hooks import report_cancellation, report_crash
from flows.observe import run_name
from flows.steps import PrefectSteps
from tasks.engine.migrations.baseline import BaselineReport
from tasks.engine.runs.adoption import adopt_environment, check_environment_drift


@flow(name="baseline", flow_run_name=run_name, on_crashed=[report_crash], on_cancellation=[report_cancellation])
def baseline(environment: str, through: str | None = None, tool: str | None = None,
             migrations_dir: str = "migrations", git_sha: str = "unknown", dry_run: bool = False,
             history_schema: str | None = None, accept_differences: bool = False) -> BaselineReport:
    """Record what the environment's database already holds as applied, without running it; keep its schema.

    Args:
        environment: the environment whose database is adopted.
        through: every migration up to and including this version is already applied ("0": none).
        tool: or read this tool's history instead: "knex", "flyway" or "golang-migrate".
        migrations_dir: the migrations directory, relative to the project.
        git_sha: the commit recorded with the adopted migrations.
        dry_run: show the mapping; write nothing.
        history_schema: with tool: the schema holding that tool's history, when it is in several.
        accept_differences: adopt even where the migrations recorded, replayed on a scratch database, do not
            build the database's schema (`policy.drift = "block"` would refuse): the differences become a warning.
    """
    with within_budget(environment):
        return adopt_environment(environment, PrefectSteps(), through=through, tool=tool, migrations_dir=migrations_dir,
                                 git_sha=git_sha, dry_run=dry_run, history_schema=history_schema,
                                 accept_differences=accept_differences)


@flow(name="drift-check", flow_run_name=run_name)
def drift_check(environment: str, migrations_dir: str = "migrations") -> dict:
    """Compare the environment's live schema with what its applied migrations make; notify when they differ.

    Args:
        environment: the environment to check.
        migrations_dir: the migrations directory, relative to the project.
    """
    with within_budget(environment):
        return check_environment_drift(environment, PrefectSteps(), migrations_dir=migrations_dir).to_json()
