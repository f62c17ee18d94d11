"""Prefect events a team can build automations and an audit trail on:

    rds-migrations.migration.applied   each migration applied         resource: the migration
    rds-migrations.migration.failed    the migration that stopped a run   resource: the migration
    rds-migrations.run.completed       every run, with its outcome    resource: the environment
                                       (label rds-migrations.kind: migration, refresh, restore, rollback,
                                       baseline, drift-check, fleet; a run stopped at its budget too)
    rds-migrations.run.crashed         the crash hook's report        resource: the flow run
    rds-migrations.run.cancelled       the cancel hook's report       resource: the flow run
    rds-migrations.drift.found         a drift check found differences    resource: the environment

A migration is `rds-migrations.migration.<env>.<id>`, an environment `rds-migrations.environment.<env>`, a
commit `rds-migrations.git-sha.<sha>`. Every resource carries the labels `rds-migrations.environment` and
`rds-migrations.git-sha` (and `rds-migrations.migration-id`, `rds-migrations.outcome` where they apply); the
environment and the commit are related resources too (roles `environment`, `git-sha`). Inside a flow run
Prefect adds the flow run, the task run, the flow, the deployment and the tags. Payloads hold ids, counts,
durations and secret-free texts only. Emitting never fails a run.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event
from prefect.logging import get_logger

from tasks.engine.fleet.report import FleetReport
from tasks.engine.messages import RefreshSummary, RunSummary, Summary
from tasks.engine.migrations.drift import DriftReport
from tasks.engine.migrations.results import AppliedMigration, MigrationFailure
from tasks.engine.notices import Notice
from tasks.engine.runs.kinds import FLOW_KINDS

PREFIX = "rds-migrations"
APPLIED = f"{PREFIX}.migration.applied"
FAILED = f"{PREFIX}.migration.failed"
RUN_COMPLETED = f"{PREFIX}.run.completed"
RUN_ENDED = {"crashed": f"{PREFIX}.run.crashed", "cancelled": f"{PREFIX}.run.cancelled",
             "timed-out": f"{PREFIX}.run.timed-out"}
DRIFT_FOUND = f"{PREFIX}.drift.found"
LISTED = 50  # ids or differences listed in a payload; the rest are counted

logger = get_logger("rds_migrations.events")


def labels(environment: str, git_sha: str, **more: str) -> dict[str, str]:
    extra = {f"{PREFIX}.{key.replace('_', '-')}": value for key, value in more.items()}
    return {f"{PREFIX}.environment": environment, f"{PREFIX}.git-sha": git_sha, **extra}


def related(environment: str, git_sha: str) -> list[dict[str, str]]:
    """The environment and the commit, as resources an automation can match on."""
    return [
        {"prefect.resource.id": f"{PREFIX}.environment.{environment}", "prefect.resource.role": "environment",
         "prefect.resource.name": environment},
        {"prefect.resource.id": f"{PREFIX}.git-sha.{git_sha}", "prefect.resource.role": "git-sha",
         "prefect.resource.name": git_sha[:7] if len(git_sha) > 7 else git_sha},
    ]


def emit(event: str, resource: dict[str, str], related_resources: list[dict[str, str]],
         payload: dict[str, Any]) -> None:
    try:
        emit_event(event, resource=resource, related=related_resources, payload=payload)
    except Exception as exc:  # noqa: BLE001 - an event never changes a run
        logger.warning("Event %s not emitted (%s)", event, type(exc).__name__)


def migration_resource(environment: str, git_sha: str, migration_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{PREFIX}.migration.{environment}.{migration_id}",
            "prefect.resource.name": migration_id, **labels(environment, git_sha, migration_id=migration_id)}


def migration_applied(environment: str, git_sha: str, migration: AppliedMigration, position: int,
                      count: int) -> None:
    emit(APPLIED, migration_resource(environment, git_sha, migration.id), related(environment, git_sha), {
        "position": position, "count": count, "duration_seconds": round(migration.duration_seconds, 3),
        "attempts": migration.attempts, "lock_retries": migration.attempts - 1,
    })


def migration_failed(environment: str, git_sha: str, failure: MigrationFailure, position: int, count: int) -> None:
    emit(FAILED, migration_resource(environment, git_sha, failure.migration_id), related(environment, git_sha), {
        "position": position, "count": count, "sqlstate": failure.sqlstate, "message": failure.message[:500],
        "statement_number": failure.statement_number, "statement_count": failure.statement_count,
        "attempts": failure.attempts, "lock_retries": failure.attempts - 1, "transactional": failure.transactional,
        "dirty": failure.dirty, "outcome": failure.outcome(),
    })


def run_completed(summary: Summary, git_sha: str = "unknown") -> None:
    """Every run's outcome (succeeded, failed, nothing-to-do, dry-run; drifted for a drift check), as its
    notification says it. `git_sha`: the run's commit, for the summaries that do not carry one (a Notice)."""
    details: dict[str, Any] = {}
    applied: tuple[str, ...] | None = ()  # None: not known (a run whose history could not be read)
    failed_step = getattr(summary, "failed_step", None)
    if isinstance(summary, RunSummary):
        git_sha, kind, applied = summary.git_sha, "migration", summary.applied
        pending = summary.pending  # None: the run stopped before its plan (not known, never 0)
        details = {"pending": None if pending is None else list(pending[:LISTED]),
                   "pending_count": None if pending is None else len(pending),
                   "failed_migration": summary.failed_migration, "snapshot_id": summary.snapshot_id,
                   "trigger": summary.trigger}
    elif isinstance(summary, RefreshSummary):
        git_sha, kind, applied = dict(summary.parameters).get("git_sha", "unknown"), summary.action, summary.applied
        details = {"snapshot_id": summary.result.snapshot.identifier if summary.result else None}
    elif isinstance(summary, FleetReport):
        git_sha, kind = summary.git_sha, "fleet"
        details = {"counts": summary.counts, "target_count": len(summary.results), "trigger": summary.trigger,
                   "failed_targets": [r.target for r in summary.failed[:LISTED]], "stopped": summary.stopped}
    elif isinstance(summary, Notice):  # a rollback, a baseline, a drift check: their labelled facts
        kind = summary.title.lower().replace(" ", "-")
        facts = dict(summary.facts)
        failed_step = facts.get("failed step")
        details = {"facts": facts, "details": list(summary.details[:LISTED]), "details_count": len(summary.details)}
    else:
        return
    error = getattr(summary, "error", None)
    emit_completed(summary.environment, git_sha, kind, {
        "outcome": summary.outcome, "kind": kind, "environment": summary.environment, "failed_step": failed_step,
        "error": (error or "")[:500] or None, "applied": None if applied is None else list(applied[:LISTED]),
        "applied_count": None if applied is None else len(applied),
        "duration_seconds": round(getattr(summary, "duration_seconds", 0.0), 3), **details,
    })


def emit_completed(environment: str, git_sha: str, kind: str, payload: dict[str, Any]) -> None:
    """`run.completed` on the environment, labelled with the outcome and the kind of run."""
    resource = {"prefect.resource.id": f"{PREFIX}.environment.{environment}", "prefect.resource.name": environment,
                **labels(environment, git_sha, outcome=payload["outcome"], kind=kind)}
    emit(RUN_COMPLETED, resource, related(environment, git_sha)[1:], payload)


def run_ended(ending: str, flow_run_id: str, run_name: str, flow_id: str, flow_name: str, environment: str,
              git_sha: str, payload: dict[str, Any]) -> None:
    """The crash or cancel hook's report. Its resource is the flow run, as in Prefect's own state events, so an
    automation can expect it after a `prefect.flow-run.Crashed` of the same run. A run stopped at its time
    budget stopped itself and ends Failed: its report is also its `run.completed` (outcome failed)."""
    resource = {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.name": run_name,
                **labels(environment, git_sha, outcome=ending)}
    flow = {"prefect.resource.id": f"prefect.flow.{flow_id}", "prefect.resource.role": "flow",
            "prefect.resource.name": flow_name}
    emit(RUN_ENDED[ending], resource, [flow, *related(environment, git_sha)], payload)
    if ending == "timed-out":
        kind = FLOW_KINDS.get(flow_name, flow_name)  # said by a hook rather than by the run's notify step
        emit_completed(environment, git_sha, kind, {
            "outcome": "failed", "kind": kind, "environment": environment, "failed_step": payload.get("step"),
            "error": payload.get("reason") or None, "ending": ending, "notified": payload.get("notified")})


def drift_found(environment: str, git_sha: str, report: DriftReport) -> None:
    """A drift check's differences, when there are any (call it wherever drift is measured)."""
    if not report.drifted:
        return
    resource = {"prefect.resource.id": f"{PREFIX}.environment.{environment}",
                "prefect.resource.name": environment, **labels(environment, git_sha)}
    emit(DRIFT_FOUND, resource, related(environment, git_sha)[1:], {
        "summary": report.summary(), "counts": report.counts(), "compared": report.compared,
        "differences": [d.text for d in report.differences[:LISTED]],
    })
