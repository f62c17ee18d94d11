"""One run at a time per environment, across every deployment that touches it.

Deployments acquire the global concurrency limit `db-migrate-<env>` with `strict=True`, so a missing limit
is an error instead of a silent pass: a `ConfigError` naming the `rds-migrations setup-prefect ENV` that makes
it, before anything is done. Runs outside a deployment (the CLI, the demo, tests) rely on the database's
advisory lock alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import deployment

from tasks.engine.errors import ConfigError

# The slot's lease: renewed while the run lives; a run killed with its process (kill -9, OOM) frees it when the
# lease runs out, so the next run waits at most this long (Prefect's default, 300 s, kept it five minutes).
LEASE_SECONDS = 60


def slot(name: str) -> AbstractContextManager[None]:
    """One slot of the global concurrency limit `name`, held while the run lives. A renewal that fails (the
    Prefect server restarted: it keeps leases in memory; its API out for a minute) lets the run go on: with
    `strict=True` Prefect would otherwise cancel it midway, a migration included. The slot only keeps runs from
    queueing on each other; the database's advisory lock is what keeps two of them off one database."""
    return concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS,
                       raise_on_lease_renewal_failure=False)


def limit_name(environment: str) -> str:
    return f"db-migrate-{environment}"


@contextmanager
def one_run_per_environment(environment: str) -> Iterator[None]:
    if deployment.id is None:
        yield
        return
    name = limit_name(environment)
    with ExitStack() as held:
        try:
            held.enter_context(slot(name))
        except Exception:
            if limit_exists(name):
                raise
            raise ConfigError(f"Prefect has no concurrency limit {name}, which keeps the runs of {environment} one "
                              f"at a time: run `rds-migrations setup-prefect {environment}` once against this Prefect "
                              "server, then this run again (nothing was done)") from None
        yield


def limit_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return True


def ensure_limit(client: SyncPrefectClient, name: str, limit: int) -> bool:
    """The global concurrency limit `name` exists: made with `limit` slots when missing (True), else left as it is
    (False)."""
    try:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
    except ObjectAlreadyExists:
        return False
    return True
