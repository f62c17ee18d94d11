"""rollback: undo the applied migrations after a version, newest first, under the migration lock
(engine: tasks/engine/migrations/rollback.py). Retried only when the database is unreachable."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.rollback import RollbackReport, roll_back_to
from tasks.retries import transient_retries


@task(name="rollback", task_run_name="rollback-{environment}", **transient_retries(retries=2, backoff_factor=5),
      persist_result=False, cache_policy=NO_CACHE)
def rollback_task(connection: Connection, catalog: Catalog, policy: Policy, *, to: str, git_sha: str = "unknown",
                  environment: str | None = None, planned: tuple[str, ...] | None = None) -> RollbackReport:
    """Undo the applied migrations after `to` ("0": all), each rollback file and the removal of its history
    rows in one transaction; the flow run's id goes into yoyo's log.

    Example:
        report = rollback_task(connection, catalog, environment.policy, to="0007", environment="staging")
    """
    log = get_run_logger()
    report = roll_back_to(connection, catalog, policy, to, git_sha=git_sha, run_id=current_flow_run.id,
                          environment=environment, log=log, planned=planned)
    log.info("Rolled back %d migration(s) in %.1fs", len(report.rolled_back), report.duration_seconds)
    return report
