"""snapshot: the pre-migration snapshot, taken (or reused) and waited for (engine: tasks/engine/snapshots/)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.take import SnapshotProgress, take_snapshot
from tasks.retries import transient_retries


@task(
    name="snapshot",
    task_run_name="snapshot-{environment.name}",
    **transient_retries(retries=2, backoff_factor=5),
    persist_result=False,
    cache_policy=NO_CACHE,
)
def snapshot_task(environment: Environment, connection: Connection, git_sha: str, trigger: str,
                  rds: Any = None, progress: SnapshotProgress | None = None, reuse: bool = True,
                  applied: tuple[str, ...] | None = None) -> Snapshot:
    """Take (or reuse) the pre-migration snapshot of an environment and wait until it is usable.

    Args:
        rds: a boto3 RDS client, for the RDS instance and Aurora cluster kinds.
        progress: told (snapshot id, percent) while waiting, and 100 when the snapshot is usable.
        reuse: reuse the snapshot already taken for this commit (a re-run); a rollback takes a fresh one.
        applied: the migrations applied now: a snapshot is reused only when taken at this same history.

    Example:
        ```python
        snapshot = snapshot_task(environment, connection, git_sha="1a2b3c4d", trigger="github-push", rds=rds)
        ```
    """
    return take_snapshot(environment, connection, git_sha=git_sha, flow_run_id=current_flow_run.id,
                         trigger=trigger, rds_client=rds, log=get_run_logger(), progress=progress,
                         reuse=reuse, applied=applied)
