"""The pipeline both flows share: validate → fetch-secret → rehearse-and-plan → snapshot → migrate → notify.

Each step is a Prefect task; typed values flow one way. Notify always runs, with what happened, and the
flow run ends Failed when any step failed (the exception is re-raised after the notification).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks.environments import ConfigError, Environment
from tasks.migrate import ApplyReport, MigrationError, migrate
from tasks.notify import RunSummary, notify_task, render_console
from tasks.secrets import fetch_secret
from tasks.snapshot import Snapshot, snapshot_task
from tasks.validate import ValidationFailed, ValidationReport, rehearse_and_plan, validate

GIT_SHA = re.compile(r"^([0-9a-f]{7,40}|unknown|local)$")
TRIGGER = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def check_parameters(git_sha: str, trigger: str, target: str | None, migrations_dir: str) -> None:
    """Parameters reach SQL, AWS identifiers and messages: allow-lists, not escaping."""
    if not GIT_SHA.match(git_sha):
        raise ConfigError(f"git_sha {git_sha!r} is not a hex commit SHA (7-40 lowercase hex) or 'unknown'")
    if not TRIGGER.match(trigger):
        raise ConfigError(f"trigger {trigger!r} must be lowercase letters, digits and hyphens")
    if target is not None and not TARGET.match(target):
        raise ConfigError(f"target {target!r} is not a migration id or version number")
    if Path(migrations_dir).is_absolute() or ".." in Path(migrations_dir).parts:
        raise ConfigError(f"migrations_dir {migrations_dir!r} must be a relative path inside the project")


def run_pipeline(
    environment: Environment,
    *,
    git_sha: str,
    dry_run: bool,
    target: str | None,
    migrations_dir: str,
    trigger: str,
    project_root: Path | None = None,
    approve: Callable[[ValidationReport], str] | None = None,
) -> RunSummary:
    """Run the steps in order; `approve` (production's gate) is asked after the plan, before any write."""
    log = get_run_logger()
    check_parameters(git_sha, trigger, target, migrations_dir)
    project_root = project_root or Path.cwd()
    started = time.monotonic()
    report: ValidationReport | None = None
    snapshot: Snapshot | None = None
    applied: ApplyReport | None = None
    step = "validate"
    error: Exception | None = None
    try:
        catalog, report = validate(Path(migrations_dir), project_root, environment.policy)
        step = "fetch-secret"
        connection = fetch_secret(environment)
        step = "validate"
        report = rehearse_and_plan(environment, catalog, report, connection, target)
        if report.pending and not dry_run and approve is not None:
            step = "approval"
            _publish_plan(environment, report)
            log.info("Approved by %s", approve(report))
        if report.pending and not dry_run:
            if environment.snapshot.kind != "none":
                step = "snapshot"
                snapshot = snapshot_task(environment, connection, git_sha=git_sha, trigger=trigger)
            step = "migrate"
            applied = migrate(
                connection, catalog, environment.policy, target=target, git_sha=git_sha, run_id=_run_id()
            )
    except Exception as exc:  # noqa: BLE001 - reported to the team, then re-raised below
        error = exc
        if isinstance(exc, ValidationFailed):
            report = exc.report
        if isinstance(exc, MigrationError):
            applied = exc.report

    if report is not None:
        _publish_plan(environment, report)
    summary = _summary(environment, git_sha, trigger, dry_run, step if error else None, error, report, snapshot,
                       applied, time.monotonic() - started)
    delivered = notify_task(environment.notify, summary)
    log.info("Notification %s", "sent" if delivered else "not sent")
    create_markdown_artifact(
        markdown=f"## Result: {summary.outcome}\n\n```\n{render_console(summary)}\n```\n",
        key=f"migration-result-{environment.name}",
        description=f"Migration result for {environment.name}",
    )
    if error is not None:
        raise error
    return summary


def _publish_plan(environment: Environment, report: ValidationReport) -> None:
    create_markdown_artifact(
        markdown=report.to_markdown(),
        key=f"migration-plan-{environment.name}",
        description=f"Validation and plan for {environment.name}",
    )


def _run_id() -> str | None:
    return flow_run.id


def _summary(environment: Environment, git_sha: str, trigger: str, dry_run: bool, failed_step: str | None,
             error: Exception | None, report: ValidationReport | None, snapshot: Snapshot | None,
             applied: ApplyReport | None, duration: float) -> RunSummary:
    pending = report.pending if report else ()
    if applied is not None:
        pending = applied.pending
    if error is not None:
        outcome = "failed"
    elif dry_run:
        outcome = "dry-run"
    elif applied is None:
        outcome = "nothing-to-do"
    else:
        outcome = "succeeded"
    return RunSummary(
        environment=environment.name,
        tier=environment.tier,
        git_sha=git_sha,
        trigger=trigger,
        outcome=outcome,  # type: ignore[arg-type]
        failed_step=failed_step,
        error=str(error) if error is not None else None,
        applied=applied.applied_ids if applied else (),
        failed_migration=applied.failed.migration_id if applied and applied.failed else None,
        pending=tuple(pending),
        snapshot_id=snapshot.identifier if snapshot else None,
        snapshot_location=snapshot.location if snapshot else None,
        restore_steps=tuple(snapshot.restore_steps()) if snapshot else (),
        duration_seconds=duration,
        run_url=_run_url(),
    )


def _run_url() -> str | None:
    url = flow_run.ui_url  # None-prefixed when no UI is configured (the ephemeral API)
    return url if url and url.startswith("http") else None
