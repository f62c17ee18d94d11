"""migrate: apply the pending migrations under the migration lock (engine: tasks/engine/migrations/apply.py)."""

from __future__ import annotations

from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.results import ApplyObserver, ApplyReport
from tasks.retries import transient_retries


@task(
    name="migrate",
    task_run_name="migrate-{environment}",
    **transient_retries(retries=2, backoff_factor=5),
    persist_result=False,
    cache_policy=NO_CACHE,
)
def migrate(connection: Connection, catalog: Catalog, policy: Policy, *, target: str | None = None,
            git_sha: str = "unknown", environment: str | None = None,
            observe: ApplyObserver | None = None, on_locked: Callable[[], None] | None = None) -> ApplyReport:
    """Apply the pending migrations under the migration lock; the flow run's id goes into the history rows.
    `observe` is told about each migration as it is applied or fails (progress, events); `on_locked` once the
    migration lock is taken.

    Example:
        report = migrate(connection, catalog, environment.policy, git_sha="1a2b3c4", environment="production")
    """
    log = get_run_logger()
    report = apply_pending(connection, catalog, policy, target=target, git_sha=git_sha, run_id=current_flow_run.id,
                           environment=environment, log=log, observe=observe, on_locked=on_locked)
    log.info("Applied %d migration(s) in %.1fs", len(report.applied), report.duration_seconds)
    return report
