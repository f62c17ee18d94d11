"""What is known about a fleet run that could not say so itself: its process was killed, it was cancelled, or
it was stopped at its time budget. The one-database report is tasks/engine/runs/crash.py; a fleet's is the
same for each target, from two sources that outlive the run:

- the orchestrator: the target's task run (`target-<name>`: Completed, Failed with its error, still Running
  when the process died, or never started) and, in distributed mode, the target's own flow run, which does
  not stop with the fleet run that started it;
- the target's database: the history rows and dirty marks that carry the flow run id that migrated it (the
  fleet run's in process, the target's own flow run's in distributed mode).

The fleet hooks (flows/fleet_hooks.py) read both and send ONE notification, like the run would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tasks.engine.connection import Connection
from tasks.engine.fleet.report import FleetReport, TargetResult
from tasks.engine.fleet.targets import Target
from tasks.engine.runs.crash import EndedRun, KnownState, describe, read_database

UNFINISHED = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")  # Prefect state types that may go on
LISTED = 50  # targets listed one by one in a stopped run's message (each line at most about 300 characters)


@dataclass(frozen=True)
class TargetSeen:
    """What the orchestrator knows of one target of the stopped run."""

    task_state: str | None = None  # its task run's state type (COMPLETED, FAILED, RUNNING...); None: never started
    message: str = ""  # the task run's state message (a failed target's error)
    flow_run_id: str | None = None  # distributed mode: the target's own flow run
    flow_run_state: str | None = None  # its state type
    flow_run_message: str = ""  # its error, when it ended failed
    flow_run_url: str | None = None


def read_target(target: Target, connect: Callable[[Target], Connection], flow_run_id: str) -> KnownState:
    """The target's history rows and dirty marks of `flow_run_id`; what cannot be read is named, never raised."""
    try:
        connection = connect(target)
    except Exception as exc:  # noqa: BLE001 - said in the report as not known
        return KnownState(unknown=(f"what {target.name}'s database says (its credentials could not be read: "
                                   f"{describe(exc)})",))
    try:
        return read_database(connection, flow_run_id)
    except Exception as exc:  # noqa: BLE001 - said in the report as not known
        return KnownState(unknown=(f"what {target.name}'s database says (it could not be read: {describe(exc)})",))


def target_after(target: Target, seen: TargetSeen, known: KnownState, run_id: str, *,
                 dry_run: bool = False) -> TargetResult:
    """One target's row of the report: how far it got by what its task run and its database say. `run_id` is
    the flow run whose rows `known` holds. What it says to do names the target's own environment
    (`<fleet>-<target>`): the fleet's name would take a command to its template database."""
    name = target.name
    if seen.task_state not in ("COMPLETED", "FAILED") and seen.flow_run_state in ("COMPLETED", "FAILED", "CRASHED",
                                                                                    "CANCELLED"):
        # The fleet run stopped while it waited for the target's own flow run, which ended by itself since.
        ended = "COMPLETED" if seen.flow_run_state == "COMPLETED" else "FAILED"
        seen = replace(seen, task_state=ended, message=seen.flow_run_message or f"its flow run {seen.flow_run_id} "
                                                                                 f"ended {seen.flow_run_state.lower()}")
    ours = [mark for mark in known.dirty if mark.flow_run_id == run_id]
    notes = [f"Dirty: {mark.describe()}. To resolve: {mark.hint(target.named_as)}."
             for mark in known.dirty]
    notes += [f"Not known: {item}." for item in known.unknown]
    if seen.flow_run_id is not None and seen.flow_run_state in UNFINISHED:
        notes.insert(0, f"Its own flow run {seen.flow_run_id} is still {seen.flow_run_state.lower()}: it goes on "
                        "without the fleet run, and says how it ends in its own state.")
    failed_migration = ours[0].migration_id if ours else None
    if seen.task_state == "COMPLETED" and not ours:
        outcome = "dry-run" if dry_run else ("succeeded" if known.applied else "nothing-to-do")
        return TargetResult(name, outcome, applied=known.applied, run_url=seen.flow_run_url,  # type: ignore[arg-type]
                            error=" ".join(notes) or None)
    if seen.task_state == "FAILED" or ours:
        return TargetResult(name, "failed", applied=known.applied, failed_migration=failed_migration,
                            run_url=seen.flow_run_url, error=" ".join([seen.message.strip(), *notes]).strip() or None)
    if seen.task_state is None and seen.flow_run_id is None and not known.applied:
        return TargetResult(name, "skipped", error=" ".join(["It had not started when the run stopped.", *notes]))
    if seen.flow_run_id is None:
        notes.insert(0, "The run stopped while this target was being migrated: the migration that was running, if "
                        "any, ran in its own transaction, which the server rolled back when the session ended.")
    return TargetResult(name, "interrupted", applied=known.applied, run_url=seen.flow_run_url,
                        error=" ".join(notes))


def fleet_crash_report(ended: EndedRun, tier: str, results: tuple[TargetResult, ...],
                       unknown: tuple[str, ...] = (), *, named_as: dict[str, str]) -> FleetReport:
    """The one notification a stopped fleet run would have sent, from what is known of each target. `named_as`:
    each target's environment name (Target.named_as), so a failed or interrupted one is named as a command takes
    it, as the fleet's own summary does (FleetReport.called)."""
    report = FleetReport(
        environment=ended.parameter("environment"), tier=tier, git_sha=ended.parameter("git_sha"),
        trigger=ended.parameter("trigger"), results=results,
        failed_step=f"{ended.step or 'unknown'} (run {ended.ending})", duration_seconds=ended.duration_seconds,
        run_url=ended.run_url, table_published=False, named_as=named_as,
    )
    what = {"crashed": "crashed (its process died", "cancelled": "was cancelled (its process was stopped",
            "timed-out": "was stopped at its time budget (from the environment's policy"}[ended.ending]
    lines = [f"The fleet run {what}: {ended.reason.strip()[:300] or 'no reason given'}); it could not report "
             "itself, so this is what Prefect and the targets' databases say."]
    lines += [f"Not known: {item}." for item in unknown]
    for result in results[:LISTED]:
        applied = "not known" if result.applied is None else ", ".join(result.applied) or "nothing"
        name = report.called(result.target) if result.outcome in ("failed", "interrupted") else result.target
        lines.append(f"- {name}: {result.outcome}; applied by this run: {applied}"
                     + (f". {result.error.strip()[:200]}" if result.error else ""))
    if len(results) > LISTED:
        lines.append(f"… and {len(results) - LISTED} more targets, not listed here: `rds-migrations status` on "
                     "each says what its history holds")
    return report.with_(error="\n".join(lines))
