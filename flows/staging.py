"""The staging flow: run from the Prefect UI (or the CLI) against a staging-tier environment."""

from __future__ import annotations

from prefect import flow

from flows.budget import within_budget
from flows.hooks import report_cancellation, report_crash
from flows.observe import run_name
from flows.steps import PrefectSteps
from tasks.engine.messages import RunSummary
from tasks.engine.runs.migration import migrate_environment


@flow(name="migrate-staging", flow_run_name=run_name, on_crashed=[report_crash],
      on_cancellation=[report_cancellation])
def staging(
    git_sha: str = "unknown",
    dry_run: bool = False,
    target: str | None = None,
    environment: str = "staging",
    migrations_dir: str = "migrations",
    trigger: str = "manual",
) -> RunSummary:
    """Validate, snapshot (by policy), migrate and notify a staging database.

    Args:
        git_sha: the commit whose migrations/ directory is being applied.
        dry_run: validate and plan only; nothing is snapshotted or applied.
        target: apply up to and including this migration id or version number.
        environment: an environment of tier "staging" in deployments/environments.toml.
        migrations_dir: the migrations directory, relative to the project.
        trigger: who asked for this run ("ui", "manual", "cli").
    """
    with within_budget(environment):
        return migrate_environment(environment, "staging", PrefectSteps(), git_sha=git_sha, dry_run=dry_run,
                                   target=target, migrations_dir=migrations_dir, trigger=trigger)
