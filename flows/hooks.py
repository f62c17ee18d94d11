"""The crash and cancel hooks: a run whose process was killed (OOM, `kill -9`, a spot instance) or that was
cancelled still tells its team, with the notification it would have sent: the environment, the SHA, what the
database says this run applied, its dirty state, the snapshot and how to restore it.

They run where Prefect runs them: in the worker, after the flow run's process died (the worker loads the
flow from the deployment to find them), or in the run's own process when it caught the crash itself. So
they read everything again (the run's parameters, the environment, the database, the snapshots) and never
raise: what they cannot read, the message says it does not know. The report ends with a
`rds-migrations.run.crashed` / `.run.cancelled` event, which the "crashed and not reported" automation
(flows/automations.py) waits for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.logging.loggers import flow_run_logger
from prefect.utilities.urls import url_for

from flows import events, observe
from tasks.aws import aws_client
from tasks.engine.aws import AwsClients
from tasks.engine.credentials import fetch_connection
from tasks.engine.environments import AuroraClusterSnapshot, Environment, RdsInstanceSnapshot
from tasks.engine.fleet.targets import environment_named
from tasks.engine.logs import Log
from tasks.engine.messages import Summary
from tasks.engine.notify import deliver
from tasks.engine.runs.crash import (
    ROLLBACK_FLOW,
    EndedRun,
    Ending,
    KnownState,
    could_have_reused,
    crash_summary,
    describe,
    known_state,
    undo_listed,
    undo_planned,
)
from tasks.engine.runs.rollback import undo_key
from tasks.notify import slack_post_for

# What a hook reads of a stopped run beyond what `announce` does: (the run, completed; its summary, once the
# environment is known).
ReadRun = Callable[[SyncPrefectClient, Any, EndedRun, Log], tuple[EndedRun, Callable[[Environment], Summary]]]
# The task names of every step (tasks/*.py): a task run is named `<step>-<environment>`.
STEPS = ("validate", "fetch-secret", "rehearse-and-plan", "snapshot", "migrate", "notify", "plan-refresh",
         "find-snapshot", "refresh-from-snapshot", "restore-from-snapshot", "rollback", "baseline", "drift-check",
         "rehearse-fleet")


def report_crash(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_crashed` of every flow: the run's process died, so the run could not notify anyone itself."""
    report_ending("crashed", flow, flow_run, state)


def report_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_cancellation` of every flow: the run was cancelled (its process is stopped)."""
    report_ending("cancelled", flow, flow_run, state)


def report_over_budget(flow: Any, flow_run: Any, message: str) -> None:
    """From the flow itself (flows/budget.py): the run was stopped at its time budget."""
    report_ending("timed-out", flow, flow_run, SimpleNamespace(message=message))


def report_ending(ending: Ending, flow: Any, flow_run: Any, state: Any, read: ReadRun | None = None) -> None:
    """Report the run's ending (what `read` finds: `read_one_database`, or the fleet's), logging what it says;
    never raises."""
    log = flow_run_logger(flow_run, flow)
    try:
        delivered = announce(ending, flow, flow_run, state, log, read or read_one_database)
        log.info("The %s run was %s", ending, "reported" if delivered else "not reported (see above)")
    except Exception as exc:  # noqa: BLE001 - a hook never raises; the automations are the backstop
        log.warning("The %s run could not be reported (%s)", ending, describe(exc))


def announce(ending: Ending, flow: Any, flow_run: Any, state: Any, log: Log, read: ReadRun) -> bool:
    """Read what is known (the orchestrator's part here, the rest by `read`), notify the environment's target,
    emit the report event. Whether it was delivered."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)  # fresh: the hook's copy may predate the run's start
        ended, summarize = read(client, run, EndedRun(
            ending=ending, reason=(state.message or "") if state else "", flow_name=flow.name,
            flow_run_id=str(run.id), parameters=dict(run.parameters),
            deployment=deployment_name(client, flow.name, run),
            duration_seconds=(datetime.now(UTC) - run.start_time).total_seconds() if run.start_time else 0.0,
            run_url=url_for("flow-run", obj_id=run.id),
        ), log)
    environment: Environment | None = None
    delivered = False
    try:
        environment = environment_named(ended.parameter("environment"))
    except Exception as exc:  # noqa: BLE001 - nowhere to notify; the event and the automations still say it
        log.warning("Environment of the %s run unknown (%s): nobody notified", ending, describe(exc))
    if environment is not None:
        delivered = deliver(environment.notify, summarize(environment),
                            post=slack_post_for(environment.notify, log), log=log)
    events.run_ended(ending, ended.flow_run_id, run.name, str(run.flow_id), flow.name, ended.parameter("environment"),
                     ended.parameter("git_sha"), {"step": ended.step, "notified": delivered,
                                                  "reason": ended.reason[:500]})
    return delivered


def read_one_database(client: SyncPrefectClient, run: Any, ended: EndedRun,
                      log: Log) -> tuple[EndedRun, Callable[[Environment], Summary]]:
    """A one-database run: the step that was running and its plan from Prefect; then, for the summary, what its
    database and its snapshots say."""
    plan = planned_undo if ended.flow_name == ROLLBACK_FLOW else planned
    ended = replace(ended, step=running_step(client, run.id), reached_snapshot=reached_snapshot(client, run.id),
                    planned=plan(client, run.id, str(run.parameters.get("environment"))))
    return ended, lambda environment: crash_summary(ended, environment, read_known(environment, ended))


def read_known(environment: Environment, ended: EndedRun) -> KnownState:
    """What the database and the snapshots say, with AWS clients from the environment's blocks."""
    clients = AwsClients(aws_client)
    connection: Any
    try:
        # Only read: an embedded database a dry run never made is not made now (it reads as not known).
        connection = fetch_connection(environment, clients.get("secretsmanager", environment), create=False)
    except Exception as exc:  # noqa: BLE001 - said in the message as not known
        connection = exc
    rds = None
    if isinstance(environment.snapshot, RdsInstanceSnapshot | AuroraClusterSnapshot):
        rds = clients.get("rds", environment)
    return known_state(environment, connection, ended.flow_run_id, ended.parameter("git_sha"), rds,
                       could_reuse=could_have_reused(ended))


def step_of(task_run_name: str) -> str | None:
    for step in sorted(STEPS, key=len, reverse=True):
        if task_run_name == step or task_run_name.startswith(f"{step}-"):
            return step
    return None


def started_task_runs(client: SyncPrefectClient, flow_run_id: UUID) -> list[Any]:
    return [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if t.start_time is not None]


def reached_snapshot(client: SyncPrefectClient, flow_run_id: UUID) -> bool:
    """Whether the run's snapshot step started (only from there could it have reused its commit's snapshot)."""
    return any(step_of(t.name) == "snapshot" for t in started_task_runs(client, flow_run_id))


def running_step(client: SyncPrefectClient, flow_run_id: UUID) -> str | None:
    """The step that was running when the run stopped: the last task run that started and did not complete
    (killed, it stays Running: nobody ends it); else "after" the last one that completed."""
    task_runs = started_task_runs(client, flow_run_id)
    stopped = [t for t in task_runs if t.state is None or not t.state.is_completed()]
    if stopped:
        return step_of(max(stopped, key=lambda t: t.start_time).name)  # type: ignore[arg-type, return-value]
    if not task_runs:
        return None
    last = step_of(max(task_runs, key=lambda t: t.start_time).name)  # type: ignore[arg-type, return-value]
    return f"after {last}" if last else None


def planned(client: SyncPrefectClient, flow_run_id: UUID, environment: str) -> tuple[str, ...] | None:
    """What the run's plan table artifact said was pending; None when it never got that far."""
    data = published(client, flow_run_id, observe.plan_key(environment))
    if data is None:
        return None
    rows = json.loads(data) if isinstance(data, str) else data
    return tuple(str(row["migration"]) for row in rows or () if row.get("status") == "pending")


def planned_undo(client: SyncPrefectClient, flow_run_id: UUID, environment: str) -> tuple[str, ...] | None:
    """What a rollback's undo table (runs/rollback.py) said it would undo, newest first; None when it never got
    that far. A run started before that table was published: the numbered lines of its plan's text."""
    rows = published(client, flow_run_id, undo_key(environment))
    if rows is not None:
        return undo_planned(json.loads(rows) if isinstance(rows, str) else rows)
    data = published(client, flow_run_id, f"rollback-plan-{environment}")
    return None if data is None else undo_listed(str(data))


def published(client: SyncPrefectClient, flow_run_id: UUID, key: str) -> Any:
    """The data of the run's newest artifact under `key`; None when it published none."""
    found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                  flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    if not found:
        return None
    return max(found, key=lambda artifact: artifact.created or datetime.min.replace(tzinfo=UTC)).data


def deployment_name(client: SyncPrefectClient, flow_name: str, run: Any) -> str | None:
    if run.deployment_id is None:
        return None
    return f"{flow_name}/{client.read_deployment(run.deployment_id).name}"
