"""refresh and restore: a snapshot restored to a NEW name, made ready, then swapped in by renames
(engine: tasks/engine/snapshots/refresh.py, restore.py, swap.py, backends.py).

Not retried: a rerun starts over under new names, and botocore retries throttling itself.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment
from tasks.engine.snapshots import refresh, restore
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.refresh import Replacement
from tasks.engine.snapshots.swap import SwapResult


@task(name="plan-refresh", task_run_name="plan-refresh-{environment.name}", persist_result=False, cache_policy=NO_CACHE)
def plan_refresh_task(environment: Environment, source: Environment, connection: Connection,
                      rds: Any = None) -> Replacement:
    """Check everything a refresh can before it creates anything: names, the live copy, its master user.

    Example:
        ```python
        replacement = plan_refresh_task(staging, production, fetch_secret(staging), rds=rds)
        ```
    """
    return refresh.plan_refresh(environment, source, connection, rds_client=rds, log=get_run_logger())


@task(name="find-snapshot", task_run_name="find-snapshot-{source.name}", persist_result=False, cache_policy=NO_CACHE)
def newest_snapshot_task(source: Environment, rds: Any = None) -> Snapshot:
    """The newest available snapshot of the environment a refresh copies from."""
    return refresh.newest_snapshot(source, rds)


@task(name="refresh-from-snapshot", task_run_name="refresh-from-snapshot-{replacement.environment}",
      persist_result=False, cache_policy=NO_CACHE)
def refresh_task(replacement: Replacement, snapshot: Snapshot, connection: Connection) -> SwapResult:
    """Replace a staging environment's database with a masked copy of `snapshot`.

    Example:
        ```python
        result = refresh_task(replacement, snapshot, fetch_secret(staging))
        ```
    """
    return refresh.refresh_from(replacement, snapshot, connection, log=get_run_logger())


@task(name="restore-from-snapshot", task_run_name="restore-from-snapshot-{environment.name}",
      persist_result=False, cache_policy=NO_CACHE)
def restore_task(environment: Environment, snapshot_id: str, connection: Connection | None,
                 rds: Any = None) -> SwapResult:
    """Restore one of an environment's snapshots to a new name and swap it in; the replaced copy is kept.
    `connection` is the local kind's (its database's server); the RDS kinds need none.

    Example:
        ```python
        result = restore_task(production, "rdsm-production-1a2b3c4-20261124t213000", fetch_secret(production))
        ```
    """
    return restore.restore_environment(environment, snapshot_id, connection, rds_client=rds, log=get_run_logger())
