"""baseline and drift-check: adopting a database another tool migrated, and comparing its live schema with
what its migrations make (engine: tasks/engine/migrations/baseline.py, reference.py). Retried only when the
database is unreachable."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment
from tasks.engine.migrations.baseline import BaselineReport
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.drift import DriftReport
from tasks.engine.runs.steps import environment_baseline, environment_drift
from tasks.retries import transient_retries


@task(name="baseline", task_run_name="baseline-{environment.name}", **transient_retries(retries=2, backoff_factor=5),
      persist_result=False, cache_policy=NO_CACHE)
def baseline_task(environment: Environment, connection: Connection, catalog: Catalog, *, through: str | None,
                  tool: str | None, git_sha: str, dry_run: bool, schema: str | None = None) -> BaselineReport:
    """Record what the database already holds as applied without running it, in one transaction, and keep its
    schema as drift's reference, once the migrations recorded, replayed on a scratch database where the
    environment rehearses, are found to build that schema (as `policy.drift` says); with `dry_run`, only the
    mapping and that comparison.

    Example:
        report = baseline_task(environment, connection, catalog, through=None, tool="knex", git_sha=sha,
                               dry_run=True)
    """
    return environment_baseline(environment, connection, catalog, get_run_logger(), through=through, tool=tool,
                                git_sha=git_sha, dry_run=dry_run, schema=schema)


@task(name="drift-check", task_run_name="drift-check-{environment.name}",
      **transient_retries(retries=2, backoff_factor=5), persist_result=False, cache_policy=NO_CACHE)
def drift_task(environment: Environment, connection: Connection, catalog: Catalog, *,
               dry_run: bool = False) -> tuple[DriftReport, str]:
    """The live schema against what the applied migrations make (read-only on the target), and where that
    reference came from.

    Example:
        report, expected_from = drift_task(environment, connection, catalog)
    """
    return environment_drift(environment, connection, catalog, get_run_logger(), dry_run=dry_run)
