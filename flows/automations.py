"""The Prefect automations `setup-prefect` creates: what the server itself watches, for what a run cannot say.

- **rds-migrations: crashed and not reported** — a migration flow run went Crashed and its crash hook
  (flows/hooks.py) did not report it within `crash_report_seconds`: the worker died with it (a spot instance,
  a lost host), or the hook could not run. Notifies the alerts block.
- **rds-migrations: pending too long** — a migration flow run stayed Pending (a worker took it and its
  process never started: an image pull, no capacity) for `pending_seconds`. Notifies the alerts block.
- **rds-migrations: heartbeats stopped** — a running migration flow run sent no heartbeat for
  `heartbeat_seconds`: its process and its worker are gone. Marks it Crashed, which the first one then
  reports. A flow run beats every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (Prefect's default: 180), so
  the window is several beats long.

A failure inside a run is notified by the run itself (the notify step), so no automation repeats it; the
events (flows/events.py) are there for teams that want more (e.g. `rds-migrations.migration.failed` in
`production` → a pager). Definitions are data; `ensure` creates each once and updates it on later runs.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from flows.events import RUN_ENDED
from tasks.engine.runs.kinds import FLOW_KINDS

MIGRATION_FLOWS = list(FLOW_KINDS)  # every flow of ours
# Flow run state events name the flow as a related resource; so do the hooks' reports.
OUR_FLOW_RUNS = {"match": {"prefect.resource.id": "prefect.flow-run.*"},
                 "match_related": {"prefect.resource.role": "flow", "prefect.resource.name": MIGRATION_FLOWS}}
# Every name Prefect 3 gives a flow run's final state (a state event is `prefect.flow-run.<name>`): a run stopped at
# its time budget ends `TimedOut` (type FAILED); `Cached` and `RolledBack` are COMPLETED-type names.
TERMINAL = {f"prefect.flow-run.{state}" for state in ("Completed", "Cached", "RolledBack", "Failed", "TimedOut",
                                                      "Cancelled", "Crashed")}
# Only the run's name (`<environment>-<sha7>`, each part checked: flows/observe.py) and its link: a parameter may
# hold a pasted secret or a Slack mention, and "pending too long" fires before the flow has checked any.
RUN = "{{ flow.name }} run {{ flow_run.name }}"
LINK = "\nRun: {{ flow_run|ui_url }}"


def _not_followed(event: str, by: set[str], seconds: int) -> EventTrigger:
    """Fires when, for one of our migration flow runs, `event` is not followed by one of `by` within `seconds`."""
    return EventTrigger(after={event}, expect=by, for_each={"prefect.resource.id"}, posture=Posture.Proactive,
                        threshold=1, within=timedelta(seconds=seconds), **OUR_FLOW_RUNS)


def definitions(alerts_block_id: UUID | None, *, crash_report_seconds: int = 300, pending_seconds: int = 900,
                heartbeat_seconds: int = 600) -> list[AutomationCore]:
    """Every automation; those that notify only when there is an alerts block to notify."""
    found: list[AutomationCore] = []
    if alerts_block_id is not None:
        found.append(AutomationCore(
            name="rds-migrations: crashed and not reported",
            description="A migration flow run crashed and its crash hook did not report it: its worker died too?",
            trigger=_not_followed("prefect.flow-run.Crashed", {RUN_ENDED["crashed"]}, crash_report_seconds),
            actions=[SendNotification(
                block_document_id=alerts_block_id,
                subject="Schema migrations CRASHED and not reported",
                body=f"{RUN} crashed and no report followed within {crash_report_seconds} s: its worker may have "
                     "died with it. What the database says: `rds-migrations plan --env ENV`; a dirty database: "
                     "`rds-migrations resolve --env ENV`." + LINK)],
        ))
        found.append(AutomationCore(
            name="rds-migrations: pending too long",
            description="A migration flow run was taken by a worker and its process never started.",
            trigger=_not_followed("prefect.flow-run.Pending", {"prefect.flow-run.Running", *TERMINAL},
                                  pending_seconds),
            actions=[SendNotification(
                block_document_id=alerts_block_id,
                subject="Schema migrations PENDING too long",
                body=f"{RUN} has been Pending for {pending_seconds} s: a worker took it and its process never "
                     "started (image pull, capacity, the pool's command). Nothing was applied by it." + LINK)],
        ))
    found.append(AutomationCore(
        name="rds-migrations: heartbeats stopped",
        description="A running migration flow run stopped sending heartbeats: mark it Crashed.",
        trigger=_not_followed("prefect.flow-run.heartbeat", {"prefect.flow-run.heartbeat", *TERMINAL},
                              heartbeat_seconds),
        actions=[ChangeFlowRunState(state="CRASHED", message=f"No heartbeat for {heartbeat_seconds} s: the flow "
                                    "run's process (and its worker) stopped")],
    ))
    return found


def ensure(client: SyncPrefectClient, automations: list[AutomationCore]) -> list[str]:
    """Create each automation once, by name; one that exists is updated to this definition."""
    done = []
    for automation in automations:
        existing = client.read_automations_by_name(automation.name)
        if existing:
            client.update_automation(existing[0].id, automation)
            done.append(f"automation {automation.name!r} exists (updated)")
        else:
            client.create_automation(automation)
            done.append(f"automation {automation.name!r} created")
    return done
