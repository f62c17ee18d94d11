"""The migrate-fleet flow's crash and cancel hooks: a fleet run whose process was killed or that was cancelled
still sends its ONE notification, naming each target and how far it got (flows/hooks.py does this for one
database; the engine's half is tasks/engine/fleet/crash.py).

Like the one-database hooks they read everything again and never raise: the run's parameters and its task
runs from Prefect (each target's `target-<name>` task run, and in distributed mode the target's own flow run,
which goes on without the fleet run), then each target's database, by the flow run id that migrated it. The
report ends with the same `rds-migrations.run.crashed` / `.run.cancelled` event, which the "crashed and not
reported" automation waits for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.utilities.urls import url_for

from flows.hooks import report_ending, running_step
from tasks.aws import aws_client
from tasks.engine.aws import AwsClients
from tasks.engine.environments import Environment
from tasks.engine.fleet.crash import TargetSeen, fleet_crash_report, read_target, target_after
from tasks.engine.fleet.report import FleetReport
from tasks.engine.fleet.targets import Target, fleet_targets, fleet_to_run, target_connection
from tasks.engine.logs import Log
from tasks.engine.messages import Summary
from tasks.engine.runs.crash import EndedRun, KnownState, describe

TARGET_TASK = "target-"  # a target's task run is named target-<name> (tasks/fleet.py)
PAGE = 200  # Prefect's default page: read in pages of it


def report_fleet_crash(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_crashed` of migrate-fleet: the run's process died, so the run could not notify anyone itself."""
    report_ending("crashed", flow, flow_run, state, read_fleet)


def report_fleet_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_cancellation` of migrate-fleet: the run was cancelled (its process is stopped)."""
    report_ending("cancelled", flow, flow_run, state, read_fleet)


def read_fleet(client: SyncPrefectClient, run: Any, ended: EndedRun,
               log: Log) -> tuple[EndedRun, Callable[[Environment], Summary]]:
    """A fleet run (flows/hooks.py's `announce` does the rest): each target's task run (and own flow run) from
    Prefect; then, for the summary, the fleet's targets found again and what each started one's database says."""
    seen = targets_seen(client, run.id)
    ended = replace(ended, step="targets" if seen else running_step(client, run.id))

    def summarize(environment: Environment) -> FleetReport:
        clients = AwsClients(aws_client)
        targets, unknown = fleet_of(ended, clients, log)
        dry_run = ended.parameters.get("dry_run") is True
        results = []
        for target in targets:
            found = seen.get(target.name)
            if found is None:  # never started: its database has nothing of this run (and is not read)
                results.append(target_after(target, TargetSeen(), KnownState(), ended.flow_run_id))
                continue
            run_id = found.flow_run_id or ended.flow_run_id  # who migrated it: the target's own run, else this one
            known = read_target(target, lambda t: target_connection(t, clients.get("secretsmanager", t.environment),
                                                                    create=False), run_id)
            results.append(target_after(target, found, known, run_id, dry_run=dry_run))
        return fleet_crash_report(ended, environment.tier, tuple(results), unknown,
                                  named_as={t.name: t.named_as for t in targets})

    return ended, summarize


def fleet_of(ended: EndedRun, clients: AwsClients, log: Log) -> tuple[list[Target], tuple[str, ...]]:
    """The run's targets, as it found them (its parameters' overrides and URL variables); ([], why) when they
    cannot be found again."""
    parameters = ended.parameters
    variables = parameters.get("url_variables")
    try:
        environment: Environment = fleet_to_run(
            ended.parameter("environment"),
            [str(v) for v in variables] if isinstance(variables, list) else None,
            parameters.get("concurrency") if isinstance(parameters.get("concurrency"), int) else None,
            parameters.get("mode") if parameters.get("mode") in ("in_process", "distributed") else None,
        )
        return fleet_targets(environment, clients.get("rds", environment), log), ()
    except Exception as exc:  # noqa: BLE001 - said in the report as not known
        return [], (f"the fleet's targets ({describe(exc)})",)


def targets_seen(client: SyncPrefectClient, flow_run_id: UUID) -> dict[str, TargetSeen]:
    """Each target's task run in the fleet run (and, in distributed mode, its own flow run), by target name:
    every page of them (a fleet of hundreds has more than one)."""
    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    task_runs = _every(lambda offset: client.read_task_runs(
        flow_run_filter=this_run, task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=TARGET_TASK)),
        limit=PAGE, offset=offset))
    children = {
        str(child.parameters.get("target_name")): child
        for child in _every(lambda offset: client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])), limit=PAGE, offset=offset))
    }
    seen: dict[str, TargetSeen] = {}
    for task_run in task_runs:
        if not task_run.name.startswith(TARGET_TASK) or task_run.start_time is None:
            continue
        name = task_run.name[len(TARGET_TASK):]
        child = children.get(name)
        seen[name] = TargetSeen(
            task_state=task_run.state.type.value if task_run.state else None,
            message=(task_run.state.message or "") if task_run.state else "",
            flow_run_id=str(child.id) if child else None,
            flow_run_state=child.state.type.value if child and child.state else None,
            flow_run_message=_error_of(child.state.message) if child and child.state else "",
            flow_run_url=url_for("flow-run", obj_id=child.id) if child else None,
        )
    return seen


def _every(read: Callable[[int], list[Any]]) -> list[Any]:
    """Every page of a Prefect read (`read(offset)` returns at most PAGE items)."""
    found: list[Any] = []
    while True:
        page = read(len(found))
        found += page
        if len(page) < PAGE:
            return found


def _error_of(message: str | None) -> str:
    """A target flow run's final message is its result as JSON (flows/fleet_target.py): its error, if any."""
    try:
        result = json.loads(message or "")
    except ValueError:
        return message or ""
    return str(result.get("error") or "") if isinstance(result, dict) else message or ""
