"""`rds-migrations setup-prefect`: the work pool and one global concurrency limit per environment."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from flows.exclusive import limit_name


def setup_prefect(environments: list[str], work_pool: str = "rds-migrations", pool_type: str = "process") -> list[str]:
    """Create what the deployments need on the Prefect server; existing objects are left as they are."""
    done: list[str] = []
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=work_pool, type=pool_type))
            done.append(f"work pool {work_pool} ({pool_type}) created")
        except ObjectAlreadyExists:
            done.append(f"work pool {work_pool} exists")
        for environment in environments:
            name = limit_name(environment)
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                done.append(f"concurrency limit {name} (1) created")
            except ObjectAlreadyExists:
                done.append(f"concurrency limit {name} exists")
    return done


if __name__ == "__main__":  # python -m flows.setup ENV [ENV ...]
    import sys

    print("\n".join(setup_prefect(sys.argv[1:])))
