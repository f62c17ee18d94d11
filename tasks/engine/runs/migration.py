"""The migration run, as the diagram draws it:

    validate → fetch-secret → rehearse-and-plan → [approve] → snapshot → migrate → notify

Typed values flow one way. Notify always runs, with what happened, and the run ends in the error when any
step failed (it is raised again after the notification). Nothing pending: no snapshot and no write lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment, SecretsManagerCredentials
from tasks.engine.errors import (
    ConfigError,
    DatabaseRefused,
    DatabaseUnreachable,
    Interrupted,
    InvalidIndexFound,
    SecretError,
)
from tasks.engine.fleet.targets import one_database_environment
from tasks.engine.messages import RunSummary, restore_commands
from tasks.engine.migrations.dirty import DirtyMigration
from tasks.engine.migrations.hints import where_flag
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.reference import remember_live_schema
from tasks.engine.migrations.report import ValidationFailed, ValidationReport
from tasks.engine.migrations.results import AppliedMigration, ApplyReport, MigrationError, MigrationFailure
from tasks.engine.migrations.session import session
from tasks.engine.runs.commit import commit_of_run
from tasks.engine.runs.ended import Ended, said
from tasks.engine.runs.parameters import check_parameters, refuse_password_in_parameters
from tasks.engine.runs.steps import Steps
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.take import SnapshotNotReady

T = TypeVar("T")
DIRTY_LEFT = "stopped midway: the database is marked dirty and later runs refuse until it is resolved (see the error)"


def migrate_environment(name: str, tier: str, steps: Steps, *, git_sha: str = "unknown", dry_run: bool = False,
                        target: str | None = None, migrations_dir: str = "migrations", trigger: str = "manual",
                        project_root: Path | None = None) -> RunSummary:
    """A staging or production run of the named environment, one at a time per environment."""
    environment = one_database_environment(name)
    check_tier(environment, tier)
    approval = tier == "production" and environment.policy.approval_required
    with steps.exclusive(environment.name):
        return run_migration(environment, steps, git_sha=git_sha, dry_run=dry_run, target=target,
                             migrations_dir=migrations_dir, trigger=trigger, project_root=project_root,
                             approval=approval)


def check_tier(environment: Environment, tier: str) -> None:
    """Staging runs take staging environments; production runs take production ones, under stricter rules."""
    if environment.tier != tier:
        other = "production" if environment.tier == "production" else "staging"
        raise ConfigError(f"environment {environment.name!r} is tier {environment.tier!r}: run it with the "
                          f"{other} flow")
    if tier == "production":
        if not environment.policy.snapshot_required:
            raise ConfigError(f"environment {environment.name!r}: production requires policy.snapshot_required = true")
        if environment.policy.lint_blocks_on == "never":
            raise ConfigError(f"environment {environment.name!r}: production requires lint findings to block")


class Credentials:
    """The run's database credentials, read at run time. When the database refuses the password (28P01)
    after it was read from Secrets Manager, it may have been rotated since: read AWSCURRENT again, once per
    run, and retry the step once."""

    def __init__(self, environment: Environment, parameters: dict[str, str | None], steps: Steps, *,
                 create: bool = True) -> None:
        self.environment = environment
        self.parameters = parameters
        self.steps = steps
        self.create = create  # an embedded database that does not exist yet is created (not in a dry run)
        self.reread = False
        self.connection = self._fetch()

    def _fetch(self) -> Connection:
        connection = self.steps.fetch_secret(self.environment, create=self.create)
        refuse_password_in_parameters(connection, self.parameters)
        return connection

    def run(self, step: Callable[[Connection], T]) -> T:
        """`step` on the database; a refusal no step explained (a privilege, say) becomes `DatabaseRefused`."""
        try:
            return self._run(step)
        except psycopg.Error as exc:
            raise DatabaseRefused.of(exc, self.connection.password.get_secret_value()) from None

    def _run(self, step: Callable[[Connection], T]) -> T:
        try:
            return step(self.connection)
        except DatabaseUnreachable as exc:
            rotatable = isinstance(self.environment.credentials, SecretsManagerCredentials)
            if not (exc.auth_failed and rotatable and not self.reread):
                raise
            self.reread = True
            self.steps.log.warning(
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


@dataclass
class Progress:
    """What a run has got to so far: the step it is in and the values each step returned."""

    step: str = "validate"
    git_sha: str = "unknown"  # the commit really applied, once the run knows it
    report: ValidationReport | None = None
    snapshot: Snapshot | None = None
    applied: ApplyReport | None = None
    connection: Connection | None = None  # the target's, once read: what an interrupted run applied is read there
    migrations: Path | None = None  # the catalog's directory, for the commands a message suggests
    dirty: tuple[DirtyMigration, ...] = ()  # the marks an interrupted run found in the history
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # a mark older than this is not its own
    # An attempt of the migrate step took the migration lock: before that, the history's changes are others'.
    locked: bool = False
    # How many attempts took it: above one, an earlier attempt of a retried step may have applied and recorded
    # migrations that the last attempt's report does not hold.
    times_locked: int = 0
    # The Prefect run's id, which its history rows and dirty marks carry: a retried step's earlier attempt may have
    # held the lock and another run applied migrations before the last one, so only what names this run is its own.
    run_id: str | None = None

    def took_the_lock(self) -> None:
        self.locked = True
        self.times_locked += 1


def run_migration(
    environment: Environment,
    steps: Steps,
    *,
    git_sha: str,
    dry_run: bool,
    target: str | None,
    migrations_dir: str,
    trigger: str,
    project_root: Path | None = None,
    approval: bool = False,
    no_snapshot: str | None = None,
) -> RunSummary:
    """Run the steps in order; with `approval` (production's gate) a person approves after the plan,
    before any write. `no_snapshot`: why this run takes no pre-migration snapshot (a refresh's migrate step,
    whose way back is the refresh itself); None: the environment's snapshot settings decide."""
    check_parameters(git_sha, trigger, target, migrations_dir)
    project_root = project_root or Path.cwd()
    started = time.monotonic()
    progress = Progress(step="checkout", git_sha=git_sha, run_id=steps.run_info().run_id)
    # Ctrl-C is told like any failure, with what the history says was applied.
    with Ended(on_interrupt=lambda: interrupted(progress, environment.name)) as ended:
        _steps(environment, steps, progress, git_sha=git_sha, dry_run=dry_run, target=target,
               migrations_dir=migrations_dir, trigger=trigger, project_root=project_root, approval=approval,
               no_snapshot=no_snapshot)
    error = ended.error
    if isinstance(error, ValidationFailed):
        progress.report = error.report
        if progress.step == "rehearse-and-plan" and error.report.refused_by_files:
            progress.step = "validate"  # the files or their lint, which the plan only scopes: still validation
    if isinstance(error, MigrationError):
        progress.applied = with_earlier_attempts(progress, error.report, steps)
    elif error is not None and progress.step == "migrate" and not progress.locked and progress.report is not None:
        # It never took the migration lock (another run held it past the wait, or the connection failed first):
        # it applied nothing; what the history shows is another run's.
        progress.applied = ApplyReport(applied=(), pending=progress.report.pending)
    elif error is not None and progress.step == "migrate" and progress.applied is None \
            and not isinstance(error, Interrupted):  # an interrupted run read it already (or could not)
        # Not a migration's failure (a bug, an encoding): what was applied before it is read from the history.
        progress.applied = applied_per_history(progress)

    if progress.report is not None:
        _publish_plan(steps, environment, progress.report)
    summary = summarize(environment, steps, progress, git_sha=progress.git_sha, trigger=trigger, dry_run=dry_run,
                        error=error, duration=time.monotonic() - started, target=target)
    delivered = steps.notify(environment.notify, summary)
    steps.log.info("Notification %s", "sent" if delivered else "not sent")
    steps.publish(f"migration-result-{environment.name}",
                  f"## Result: {summary.outcome}\n\n```\n{summary.console_text()}\n```\n",
                  f"Migration result for {environment.name}")
    ended.raise_if_failed(summary)  # for --json: what was applied, what failed, what is pending
    return summary


def _steps(environment: Environment, steps: Steps, progress: Progress, *, git_sha: str, dry_run: bool,
           target: str | None, migrations_dir: str, trigger: str, project_root: Path, approval: bool,
           no_snapshot: str | None) -> None:
    git_sha = progress.git_sha = commit_of_run(steps, git_sha, project_root, migrations_dir)
    progress.step = "validate"
    catalog, progress.report = steps.validate(Path(migrations_dir), project_root, environment.policy)
    progress.migrations = catalog.directory
    progress.step = "fetch-secret"
    credentials = Credentials(environment, {"environment": environment.name, "git_sha": git_sha,
                                            "trigger": trigger, "target": target,
                                            "migrations_dir": migrations_dir}, steps, create=not dry_run)
    progress.connection = credentials.connection
    progress.step = "validate"
    if target is not None:  # after the credentials: a password pasted here is named as such first
        catalog.named(target, "--target")
    progress.step = "rehearse-and-plan"
    static = progress.report
    report = progress.report = credentials.run(
        lambda c: steps.rehearse_and_plan(environment, catalog, static, c, target, dry_run=dry_run))
    if report.plan and report.plan.invalid_indexes and environment.policy.invalid_index == "refuse":
        raise InvalidIndexFound(report.plan.invalid_indexes)
    if not report.pending or dry_run:
        return
    if approval:
        progress.step = "approval"
        _publish_plan(steps, environment, report)
        steps.log.info("Approved by %s", steps.approve(environment, report))
    if no_snapshot is not None:
        steps.log.info("No snapshot of %s before migrating: %s", environment.name, no_snapshot)
    elif environment.snapshot.kind != "none":
        progress.step = "snapshot"
        progress.snapshot = steps.snapshot(environment, credentials.connection, git_sha, trigger,
                                           applied=report.plan.applied if report.plan else None)
    progress.step = "migrate"
    progress.applied = with_earlier_attempts(progress, credentials.run(lambda c: steps.migrate(
        c, catalog, environment.policy, target=target, git_sha=git_sha, environment=environment.name,
        on_locked=progress.took_the_lock)), steps)
    if report.drift is not None and not report.drift.drifted:
        # No drift before, so the live schema now is what the migrations make: the next check reads it back.
        remember_live_schema(credentials.connection, catalog)


def interrupted(progress: Progress, environment: str) -> Interrupted:
    """The error an interrupted run ends with. While migrating, what it applied and the dirty mark it left are
    read from the history (the apply loop's own report went with the interrupt); when that cannot be read, the
    text says where to look, with the flags that name this run's database."""
    said = f"interrupted (Ctrl-C) at step {progress.step}"
    if progress.step != "migrate" or progress.report is None or progress.connection is None:
        return Interrupted(f"{said}: nothing was applied")
    if not progress.locked:  # what the history shows now is another run's doing (run_migration says so)
        return Interrupted(f"{said}, before it got the migration lock: nothing was applied")
    try:
        progress.applied = applied_per_history(progress)
    except KeyboardInterrupt:  # Ctrl-C again: not read
        progress.applied = None
    if progress.applied is None:
        return Interrupted(f"{said}: what it applied is not known here; `rds-migrations status "
                           f"{where_flag(environment, progress.migrations)}` reads it from the history (a "
                           "transactional migration stopped midway was rolled back by the server; a non-transactional "
                           "one is marked dirty)")
    done, left = progress.applied.applied_ids, progress.applied.pending
    if progress.dirty:
        stopped = "".join(f"; {mark.describe()}; to resolve: {mark.hint(environment, progress.migrations)}"
                          for mark in progress.dirty)
    else:
        stopped = ("; the one that was running, if any, was rolled back by the server" if left
                   else "; every pending migration had been applied")
    applied = f"{len(done)} migration(s) applied and recorded before it" if done else "nothing was applied before it"
    return Interrupted(f"{said}: {applied}{stopped}")


def applied_per_history(progress: Progress) -> ApplyReport | None:
    """Which of the pending migrations the target's history holds now as this run's, its dirty marks kept in
    `progress` (None: it cannot be read). With a run id, the rows and marks that name it; without one (no
    Prefect, so no retried attempt), what the history holds since the run started."""
    if progress.report is None or progress.connection is None:
        return None
    pending = progress.report.pending
    try:
        with session(progress.connection, read_only=True) as conn:
            ledger = Ledger.open(conn)
            history = ledger.read()
            ours = set(history.applied if progress.run_id is None else ledger.applied_by(progress.run_id))
    except (psycopg.Error, DatabaseUnreachable):  # out of reach, or the password refused: not read
        return None
    # Marks of runs before this one (another run's, still running perhaps) are not this run's doing.
    progress.dirty = tuple(mark for mark in history.dirty
                           if (mark.started_at is None or mark.started_at >= progress.started_at)
                           and (progress.run_id is None or mark.flow_run_id == progress.run_id))
    return ApplyReport(applied=tuple(AppliedMigration(i, 0.0) for i in pending if i in ours),
                       pending=tuple(i for i in pending if i not in history.applied))


def with_earlier_attempts(progress: Progress, last: ApplyReport, steps: Steps) -> ApplyReport:
    """`last`, the report of the migrate step's last attempt, with what its earlier attempts applied and recorded
    under the lock before failing transiently (Prefect retried the step): the pending migrations whose history
    rows carry this run's id. Another run's rows are not this run's doing. When the history cannot be read, the
    last attempt's report, said to be incomplete in the log."""
    if progress.times_locked < 2 or progress.run_id is None or progress.connection is None \
            or progress.report is None:
        return last
    try:
        with session(progress.connection, read_only=True) as conn:
            ours = Ledger.open(conn).applied_by(progress.run_id)
    except (psycopg.Error, DatabaseUnreachable):
        steps.log.warning("The migrate step was retried and the history could not be read again: what its earlier "
                          "attempts applied is not in this report (`rds-migrations status` reads it)")
        return last
    latest = set(last.applied_ids)
    earlier = tuple(AppliedMigration(i, 0.0) for i in ours if i in progress.report.pending and i not in latest)
    return replace(last, applied=earlier + last.applied)


def _publish_plan(steps: Steps, environment: Environment, report: ValidationReport) -> None:
    steps.publish(f"migration-plan-{environment.name}", report.to_markdown(),
                  f"Validation and plan for {environment.name}")


def summarize(environment: Environment, steps: Steps, progress: Progress, *, git_sha: str, trigger: str,
              dry_run: bool, error: Exception | None, duration: float, target: str | None = None) -> RunSummary:
    report, applied, snapshot = progress.report, progress.applied, progress.snapshot
    # What it applied is not known (a failure while migrating whose history could not be read): nor what is left.
    unknown = applied is None and progress.step == "migrate"
    pending = None if unknown else applied.pending if applied else report.pending if report and report.plan else None
    # What the target holds back is pending too, as `status` says: on the run that applied up to it and after.
    held_back = report.plan.beyond_target if report and report.plan else ()
    if pending is not None and held_back:
        already = set(pending)
        pending = (*pending, *(i for i in held_back if i not in already))
    beyond = set(held_back)
    # Restoring undoes every write since the snapshot: offered only when the run changed something, or when what
    # it applied is not known.
    restorable = snapshot is not None and (changed_database(applied) or bool(progress.dirty) or unknown)
    creating = error.snapshot_id if isinstance(error, SnapshotNotReady) else None
    failed = applied.failed if applied else None
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
        failed_step=progress.step if error is not None else None,
        error=said(error) if error is not None else None,
        applied=None if unknown else applied.applied_ids if applied else (),
        failed_migration=failed.migration_id if failed else progress.dirty[0].migration_id if progress.dirty else None,
        failed_outcome=_left(failed) if failed else DIRTY_LEFT if progress.dirty else None,
        pending=None if pending is None else tuple(pending),
        target=target,
        beyond_target=tuple(i for i in pending or () if i in beyond),
        snapshot_id=snapshot.identifier if snapshot else creating,
        snapshot_location=snapshot.location if snapshot else None,
        snapshot_state="creating" if creating else None,
        restore_steps=restore_commands(environment.name, snapshot.identifier) if snapshot and restorable else (),
        duration_seconds=duration,
        run_url=steps.run_info().run_url,
    )


def changed_database(applied: ApplyReport | None) -> bool:
    """Whether the run left a change: a migration applied, one whose commit is not known, or a non-transactional
    one partly applied (dirty). A transactional migration that failed was rolled back by the server."""
    if applied is None:
        return False
    failed = applied.failed
    return bool(applied.applied_ids) or bool(failed and (failed.dirty or failed.outcome_unknown))


def _left(failure: MigrationFailure) -> str:
    """What the failed migration left, and what to do when that is a dirty database."""
    return failure.outcome() + (f": {failure.resolution}" if failure.resolution else "")

