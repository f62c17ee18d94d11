"""`rds-migrations setup-prefect`: the work pool, one global concurrency limit per environment and one for
fleets, and the automations that alert on what a run cannot say itself (flows/automations.py)."""

from __future__ import annotations

import copy
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from flows import automations
from flows.exclusive import ensure_limit, limit_name
from flows.fleet_target import FLEET_LIMIT
from tasks.engine.environments import SlackNotify
from tasks.engine.errors import ConfigError
from tasks.engine.fleet.targets import environment_named

SLACK_BLOCK_TYPE = "slack-incoming-webhook"  # prefect-slack's SlackWebhook

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
                  flow_run_command: str = FLOW_RUN_COMMAND, alerts_block: str | None = None,
                  crash_report_seconds: int = 300, pending_seconds: int = 900,
                  heartbeat_seconds: int = 600, fleet_limit: int = 8) -> list[str]:
    """Create what the deployments need on the Prefect server; existing objects are left as they are, except
    that a process pool without a flow-run command gets `flow_run_command` ("" leaves Prefect's default), and
    the automations are brought to their current definitions. Alerts go to `alerts_block` (a prefect-slack
    SlackWebhook block), by default the one the environments notify. The fleet's limit (`rds-migrations-fleet`,
    targets migrated at once across every fleet run) is made with `fleet_limit` slots when missing."""
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
        limits = [(limit_name(environment), 1) for environment in environments] + [(FLEET_LIMIT, fleet_limit)]
        for name, slots in limits:
            made = ensure_limit(client, name, slots)
            done.append(f"concurrency limit {name} ({slots}) created" if made else f"concurrency limit {name} exists")
        alerts: list[str] = []
        block_id = alerts_block_id(client, alerts_block or slack_block(environments), alerts)
        alerts += automations.ensure(client, automations.definitions(
            block_id, crash_report_seconds=crash_report_seconds, pending_seconds=pending_seconds,
            heartbeat_seconds=heartbeat_seconds))
    if template:
        done.append(f"(`{flow_run_command.split()[0]}` is the one first on the worker's PATH: start workers with "
                    "`uv run prefect worker start …` or with the venv's bin directory first on PATH)")
    return done + alerts


def slack_block(environments: list[str]) -> str | None:
    """The Slack block the environments notify (the first one named, when they name several)."""
    for name in environments:
        try:
            notify = environment_named(name).notify
        except ConfigError:
            continue  # a limit can be made for a name the environments file does not know (yet)
        if isinstance(notify, SlackNotify):
            return notify.webhook_block
    return None


def alerts_block_id(client: SyncPrefectClient, name: str | None, done: list[str]) -> UUID | None:
    if name is None:
        done.append("no Slack block to alert: the automations that notify were not created (--alerts-block NAME)")
        return None
    try:
        return client.read_block_document_by_name(name, SLACK_BLOCK_TYPE, include_secrets=False).id
    except ObjectNotFound:
        done.append(f"Slack block {name!r} not found: the automations that notify were not created; save the block "
                    "(README, step 2) and run setup-prefect again")
        return None

