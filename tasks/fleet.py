"""The fleet's tasks: one task run per target (its steps nested inside as their own task runs), and the
fleet's one rehearsal (engine: tasks/engine/runs/fleet.py)."""

from __future__ import annotations

from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment
from tasks.engine.fleet.report import TargetResult
from tasks.engine.fleet.targets import Target
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.report import ValidationReport
from tasks.engine.runs.fleet import rehearse_once
from tasks.retries import transient_retries


@task(name="fleet-target", task_run_name="target-{target.name}", persist_result=False, cache_policy=NO_CACHE)
def fleet_target(target: Target, run: Callable[[Target], TargetResult]) -> TargetResult | State:
    """One target of a fleet run: its pipeline in this process, or its own flow run on the work pool,
    as `run` does it. A target's failure is its result (the fleet goes on and ends Failed at its end), carried
    by a Failed state, so that the UI shows that target's task run as failed.

    Example:
        results = [f.result(raise_on_failure=False)
                   for f in runner.map(fleet_target, {"target": targets, "run": unmapped(run)})]
    """
    result = run(target)
    if result.outcome == "failed":
        return Failed(message=f"target {target.name} failed at {result.failed_step}: {result.error}"[:1000],
                      data=result)
    return result


@task(
    name="rehearse-fleet",
    task_run_name="rehearse-fleet-{environment.name}",
    **transient_retries(retries=2, backoff_factor=5),
    persist_result=False,
    cache_policy=NO_CACHE,
)
def rehearse_fleet(
    environment: Environment, catalog: Catalog, report: ValidationReport, connection: Connection, dry_run: bool = False
) -> ValidationReport:
    """Every migration applied once on a throwaway database where the environment rehearses, for the whole fleet.

    Example:
        report = rehearse_fleet(first.environment, catalog, report, connection)
    """
    return rehearse_once(environment, catalog, report, connection, dry_run=dry_run, log=get_run_logger())
