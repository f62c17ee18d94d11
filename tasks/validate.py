"""validate and rehearse-and-plan (engine: tasks/engine/migrations/validation.py)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment, Policy
from tasks.engine.migrations import validation
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.report import ValidationReport
from tasks.retries import transient_retries


@task(name="validate", task_run_name="validate", persist_result=False, cache_policy=NO_CACHE)
def validate(migrations_dir: Path, project_root: Path, policy: Policy) -> tuple[Catalog, ValidationReport]:
    """Static checks and lint, before anything touches AWS or the database.

    Example:
        catalog, report = validate(Path("migrations"), Path.cwd(), environment.policy)
    """
    return validation.validate(migrations_dir, project_root, policy, log=get_run_logger())


@task(
    name="rehearse-and-plan",
    task_run_name="rehearse-and-plan-{environment.name}",
    **transient_retries(retries=2, backoff_factor=5),
    persist_result=False,
    cache_policy=NO_CACHE,
)
def rehearse_and_plan(environment: Environment, catalog: Catalog, report: ValidationReport,
                      connection: Connection, target: str | None = None, *,
                      dry_run: bool = False) -> ValidationReport:
    """Plan against the target (read-only) and, when something is pending, rehearse on a throwaway database.

    Example:
        report = rehearse_and_plan(environment, catalog, report, connection)
    """
    return validation.rehearse_and_plan(environment, catalog, report, connection, target, log=get_run_logger(),
                                        dry_run=dry_run)
