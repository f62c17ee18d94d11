"""The pipeline both flows share: validate → fetch-secret → rehearse-and-plan → snapshot → migrate → notify.

Each step is a Prefect task; typed values flow one way. Notify always runs, with what happened, and the
flow run ends Failed when any step failed (the exception is re-raised after the notification).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks.environments import ConfigError, Environment, SecretsManagerCredentials
from tasks.migrate import ApplyReport, InvalidIndexFound, MigrationError, migrate
from tasks.notify import RunSummary, notify_task, render_console
from tasks.secrets import Connection, DatabaseUnreachable, SecretError, fetch_secret
from tasks.snapshot import Snapshot, snapshot_task
from tasks.validate import ValidationFailed, ValidationReport, rehearse_and_plan, validate

GIT_SHA = re.compile(r"^([0-9a-f]{7,40}|unknown|local)$")
TRIGGER = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


# A URL carrying a password, or a libpq keyword string with one: never a flow parameter.
CREDENTIAL = re.compile(r"://[^/\s@]*:[^/\s@]*@|\b(password|passwd|pwd)\s*=", re.IGNORECASE)
T = TypeVar("T")


def check_parameters(git_sha: str, trigger: str, target: str | None, migrations_dir: str) -> None:
    """Parameters reach SQL, AWS identifiers and messages: allow-lists, not escaping."""
    given = {"git_sha": git_sha, "trigger": trigger, "target": target, "migrations_dir": migrations_dir}
    for name, value in given.items():
        if value is not None and CREDENTIAL.search(value):
            raise ConfigError(
                f"parameter {name} looks like a credential (a URL or keyword string with a password): it was not "
                "used and is not repeated here. The Prefect API stores flow parameters in plain text: rotate "
                "that secret; the environment says where credentials come from"
            )
    # A refused value is never repeated: it may be a secret pasted into the wrong field.
    if not GIT_SHA.match(git_sha):
        raise ConfigError(f"git_sha ({len(git_sha)} characters) is not a hex commit SHA (7-40 lowercase hex) "
                          "or 'unknown'")
    if not TRIGGER.match(trigger):
        raise ConfigError(f"trigger ({len(trigger)} characters) must be lowercase letters, digits and hyphens")
    if target is not None and not TARGET.match(target):
        raise ConfigError(f"target ({len(target)} characters) is not a migration id or version number")
    if Path(migrations_dir).is_absolute() or ".." in Path(migrations_dir).parts:
        raise ConfigError("migrations_dir must be a relative path inside the project (no '..')")


def refuse_password_in_parameters(connection: Connection, parameters: dict[str, str | None]) -> None:
    """A parameter holding the database password has leaked it into the Prefect API: stop, and say so."""
    password = connection.password.get_secret_value()
    if len(password) < 8:  # too short to tell apart from ordinary values (and the embedded server has none)
        return
    for name, value in parameters.items():
        if value and password in value:
            raise SecretError(
                f"parameter {name} contains the database password read from {connection.source}: nothing was run. "
                "The Prefect API stores flow parameters in plain text: rotate the password now"
            )


class Credentials:
    """The run's database credentials, read at run time. When the database refuses the password (28P01)
    after it was read from Secrets Manager, it may have been rotated since: read AWSCURRENT again, once per
    run, and retry the step once."""

    def __init__(self, environment: Environment, parameters: dict[str, str | None]) -> None:
        self.environment = environment
        self.parameters = parameters
        self.reread = False
        self.connection = self._fetch()

    def _fetch(self) -> Connection:
        connection = fetch_secret(self.environment)
        refuse_password_in_parameters(connection, self.parameters)
        return connection

    def run(self, step: Callable[[Connection], T]) -> T:
        try:
            return step(self.connection)
        except DatabaseUnreachable as exc:
            rotatable = isinstance(self.environment.credentials, SecretsManagerCredentials)
            if not (exc.auth_failed and rotatable and not self.reread):
                raise
            self.reread = True
            get_run_logger().warning(
                "The database refused the password read from %s (SQLSTATE %s): it may have been rotated since; "
                "reading the secret again, once", self.connection.source, exc.sqlstate,
            )
            self.connection = self._fetch()
        try:
            return step(self.connection)
        except DatabaseUnreachable as exc:
            if not exc.auth_failed:
                raise
            raise SecretError(
                f"{exc}; again after reading {self.connection.source} a second time: its AWSCURRENT password is "
                "not the database user's. Check the secret's rotation (AWSPENDING vs AWSCURRENT) and run again"
            ) from None


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
        credentials = Credentials(environment, {"environment": environment.name, "git_sha": git_sha,
                                                "trigger": trigger, "target": target,
                                                "migrations_dir": migrations_dir})
        step = "validate"
        static = report
        report = credentials.run(lambda c: rehearse_and_plan(environment, catalog, static, c, target))
        if report.plan and report.plan.invalid_indexes and environment.policy.invalid_index == "refuse":
            raise InvalidIndexFound(report.plan.invalid_indexes)
        if report.pending and not dry_run and approve is not None:
            step = "approval"
            _publish_plan(environment, report)
            log.info("Approved by %s", approve(report))
        if report.pending and not dry_run:
            if environment.snapshot.kind != "none":
                step = "snapshot"
                snapshot = snapshot_task(environment, credentials.connection, git_sha=git_sha, trigger=trigger)
            step = "migrate"
            applied = credentials.run(lambda c: migrate(
                c, catalog, environment.policy, target=target, git_sha=git_sha, run_id=_run_id(),
                environment=environment.name,
            ))
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
