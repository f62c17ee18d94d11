"""The production flow: triggered through the Prefect API (GitHub Actions on a push to main).

Stricter than staging: the environment must be tier "production", its policy must require a snapshot and
let lint findings block; with `approval_required` a person approves the plan before anything is written.
"""

from __future__ import annotations

from prefect import flow

from flows.budget import within_budget
from flows.hooks import report_cancellation, report_crash
from flows.observe import run_name
from flows.steps import PrefectSteps
from tasks.engine.messages import RunSummary
from tasks.engine.runs.migration import migrate_environment


@flow(name="migrate-production", flow_run_name=run_name, on_crashed=[report_crash],
      on_cancellation=[report_cancellation])
def production(
    git_sha: str = "unknown",
    dry_run: bool = False,
    target: str | None = None,
    environment: str = "production",
    migrations_dir: str = "migrations",
    trigger: str = "github",
) -> RunSummary:
    """Validate, snapshot (always, when something is pending), migrate and notify production.

    Args:
        git_sha: the commit whose migrations/ directory is being applied.
        dry_run: validate and plan only; nothing is snapshotted or applied.
        target: apply up to and including this migration id or version number.
        environment: an environment of tier "production" in deployments/environments.toml.
        migrations_dir: the migrations directory, relative to the project.
        trigger: who asked for this run ("github", "manual", "cli").
    """
    with within_budget(environment):
        return migrate_environment(environment, "production", PrefectSteps(), git_sha=git_sha, dry_run=dry_run,
                                   target=target, migrations_dir=migrations_dir, trigger=trigger)
