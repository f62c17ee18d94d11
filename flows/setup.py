"""`rds-migrations setup-prefect`: the work pool and one global concurrency limit per environment."""

from __future__ import annotations

import copy
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists

from flows.exclusive import limit_name

# The command a process worker starts each flow run with. Left unset, Prefect 3.9's process worker starts a
# workspace supervisor process that runs the pull steps and then starts this same engine command: two Python
# processes, each importing Prefect (about 2.5 s each on 2 cores), where the engine alone runs the pull steps
# too. `python` is the worker's: start it with `uv run prefect worker start …` (or with the venv on PATH).
FLOW_RUN_COMMAND = "python -m prefect.engine"


def process_pool_template(command: str | None = FLOW_RUN_COMMAND) -> dict[str, Any]:
    """Prefect's own process job template, with `command` as the flow-run command's default."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["command"]["default"] = command
    return template


def setup_prefect(environments: list[str], work_pool: str = "rds-migrations", pool_type: str = "process",
                  flow_run_command: str = FLOW_RUN_COMMAND) -> list[str]:
    """Create what the deployments need on the Prefect server; existing objects are left as they are, except
    that a process pool without a flow-run command gets `flow_run_command` ("" leaves Prefect's default)."""
    done: list[str] = []
    template = process_pool_template(flow_run_command) if pool_type == "process" and flow_run_command else {}
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=work_pool, type=pool_type, base_job_template=template))
            done.append(f"work pool {work_pool} ({pool_type}) created"
                        + (f"; flow runs start with `{flow_run_command}`" if template else ""))
        except ObjectAlreadyExists:
            done.append(f"work pool {work_pool} exists")
            pool = client.read_work_pool(work_pool)
            # An empty template is filled with Prefect's default (no command) by the first worker.
            existing = copy.deepcopy(pool.base_job_template) or process_pool_template(None)
            command = existing.get("variables", {}).get("properties", {}).get("command")
            if template and pool.type == "process" and command is not None and command.get("default") is None:
                command["default"] = flow_run_command  # only this: the operator's other defaults stay
                client.update_work_pool(work_pool, WorkPoolUpdate(base_job_template=existing))
                done.append(f"work pool {work_pool}: flow runs start with `{flow_run_command}`")
        for environment in environments:
            name = limit_name(environment)
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                done.append(f"concurrency limit {name} (1) created")
            except ObjectAlreadyExists:
                done.append(f"concurrency limit {name} exists")
    if template:
        done.append(f"(`{flow_run_command.split()[0]}` is the one first on the worker's PATH: start workers with "
                    "`uv run prefect worker start …` or with the venv's bin directory first on PATH)")
    return done


if __name__ == "__main__":  # python -m flows.setup ENV [ENV ...]
    import sys

    print("\n".join(setup_prefect(sys.argv[1:])))
