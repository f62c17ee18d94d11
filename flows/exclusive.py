"""One run at a time per environment, across every deployment that touches it.

Deployments acquire the global concurrency limit `db-migrate-<env>` with `strict=True`, so a missing limit
is an error instead of a silent pass (`rds-migrations setup-prefect` creates the limits). Runs outside a
deployment (the CLI, the demo, tests) rely on the database's advisory lock alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment

# The slot's lease: renewed while the run lives; a run killed with its process (kill -9, OOM) frees it when the
# lease runs out, so the next run waits at most this long (Prefect's default, 300 s, kept it five minutes).
LEASE_SECONDS = 60


def limit_name(environment: str) -> str:
    return f"db-migrate-{environment}"


@contextmanager
def one_run_per_environment(environment: str) -> Iterator[None]:
    if deployment.id is None:
        yield
        return
    with concurrency(limit_name(environment), occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield
