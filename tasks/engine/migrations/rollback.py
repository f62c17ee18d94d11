"""Rolling back: to a version (`rds-migrations rollback --to VERSION`), or one migration (the rehearsal's).

The plan is read-only: what will be undone, newest first, and what refuses it (a version that names nothing, a
migration above it with no rollback file, history that does not match the files, a dirty mark). The run plans
again under the migration lock and undoes one migration at a time, each from the session's `StartingState`:
- a transactional migration: its rollback file and the removal of its history rows as ONE transaction, sent
  the way execute.py sends a migration, a lock timeout rolled back and retried with backoff as apply.py does;
- a non-transactional one: alone, never retried, its history rows removed with a dirty mark written before its
  first statement, the mark gone after its last; stopped halfway, it stays unrecorded and dirty (resolve.py).
It stops at the first failure: what was undone stays undone and unrecorded, the rest stays applied.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.errors import DirtyDatabase, InvalidMigrations, RdsMigrationsError, redact
from tasks.engine.logs import Log
from tasks.engine.migrations.apply import PROGRESS_EVERY, apply_one
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.dirty import applied_before
from tasks.engine.migrations.execute import RECORDING, failure_from, redacted
from tasks.engine.migrations.hints import resolve_hint
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.leftovers import partly_done
from tasks.engine.migrations.resolve import explain_dirty
from tasks.engine.migrations.results import (
    LOCK_NOT_AVAILABLE,
    AppliedMigration,
    ApplyReport,
    MigrationError,
    MigrationFailure,
)
from tasks.engine.migrations.rollback_plan import RollbackPlan, make_rollback_plan, rolling_back
from tasks.engine.migrations.session import StartingState, migration_lock, session
from tasks.engine.migrations.sqltext import shorten

logger = logging.getLogger(__name__)


# ---- the run ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackReport:
    """What a rollback run did: each migration undone (newest first), the one that failed, what stays applied."""

    to: str
    rolled_back: tuple[AppliedMigration, ...] = ()
    failed: MigrationFailure | None = None
    not_undone: tuple[str, ...] = ()  # planned but not undone, the failed one first
    applied: tuple[str, ...] = ()  # applied after the run, in apply order (a dirty failed one is not)
    duration_seconds: float = 0.0
    planned: tuple[str, ...] = ()  # what the plan said would be undone, newest first (all a dry run shows)

    @property
    def rolled_back_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.rolled_back)

    def still_applied(self) -> str:
        """How many migrations stay applied, and the newest of them."""
        return f"{len(self.applied)} (the newest {self.applied[-1]})" if self.applied else "none"

    def to_json(self) -> dict[str, object]:
        """Every field (the failure with its statement, SQLSTATE and outcome flags); JSON-ready."""
        return {**asdict(self), "outcome": None if self.failed is None else _outcome(self.failed)}

    def to_text(self) -> str:
        lines = [f"Rolled back {len(self.rolled_back)} migration(s) in {self.duration_seconds:.1f}s"]
        lines += [f"  {m.id} ({m.duration_seconds:.2f}s" + (f", {m.attempts} attempts)" if m.attempts > 1 else ")")
                  for m in self.rolled_back]
        if self.failed is not None:
            lines += [describe(self.failed), f"not undone: {', '.join(self.not_undone)}"]
        return "\n".join([*lines, f"still applied: {self.still_applied()}"])


class RollbackRefused(RdsMigrationsError):
    """The rollback plan has problems (named in it): nothing was undone."""

    def __init__(self, plan: RollbackPlan) -> None:
        super().__init__("the rollback is refused; nothing was undone:\n"
                         + "\n".join(f"  - {problem}" for problem in plan.problems))
        self.plan = plan


class RollbackError(RdsMigrationsError):
    """A rollback failed. Carries the report: what was undone, what failed, what stays applied."""

    def __init__(self, message: str, report: RollbackReport) -> None:
        super().__init__(message)
        self.report = report


class RollbackObserver(Protocol):
    """Told about each migration as it is rolled back (`position` 1-based, of `count`), or fails, as
    `ApplyObserver` is. It must not raise: what it does never changes the run."""

    def rolled_back(self, migration: AppliedMigration, position: int, count: int) -> None: ...

    def failed(self, failure: MigrationFailure, position: int, count: int) -> None: ...


def roll_back_to(connection: Connection, catalog: Catalog, policy: Policy, to: str, *, git_sha: str = "unknown",
                 run_id: str | None = None, environment: str | None = None, log: Log = logger,
                 observe: RollbackObserver | None = None, planned: tuple[str, ...] | None = None) -> RollbackReport:
    """Undo every applied migration after `to`, newest first, under the migration lock. Raises `RollbackRefused`
    (or `DirtyDatabase`, `InvalidMigrations`) before undoing anything when the plan has problems, or when it is
    not `planned` (what the plan that was shown, snapshotted and approved said would be undone), and
    `RollbackError` with the report at the first failure."""
    started = time.monotonic()
    password = connection.password.get_secret_value()
    if catalog.problems:
        raise InvalidMigrations("the migrations cannot be rolled back as they are; nothing was undone:\n"
                                + "\n".join(f"  - {problem}" for problem in catalog.problems))
    application = f"rds-migrations rollback {run_id}" if run_id else "rds-migrations"
    with session(connection, policy=policy, application_name=application) as conn:
        start = StartingState.of(conn, policy)
        with migration_lock(conn, policy.migration_lock_wait_seconds):
            ledger = Ledger.open(conn)
            history = ledger.read()  # planned again under the lock: another run may have changed it
            if history.dirty:
                raise DirtyDatabase("\n".join(explain_dirty(conn, catalog, dirty, environment)
                                              for dirty in history.dirty) + "\nnothing was undone")
            current = make_rollback_plan(catalog, history, to, environment=environment)
            if current.problems:
                raise RollbackRefused(current)
            # This run's own retry (a connection lost midway) finds what it undid gone: the rest of its plan.
            if planned is not None and current.undo != planned[max(0, len(planned) - len(current.undo)):]:
                raise RollbackRefused(replace(current, problems=(_changed(planned, current.undo),)))
            if current.undo:
                ledger.create_tables()  # a database migrated by plain yoyo has no checksum or dirty table yet
            by_id = {m.id: m for m in catalog.migrations}
            done: list[AppliedMigration] = []
            count = len(current.undo)
            for position, migration_id in enumerate(current.undo):
                if count <= PROGRESS_EVERY or position % PROGRESS_EVERY == 0 or position == count - 1:
                    log.info("Rolling back %s (%d of %d)", migration_id, position + 1, count)
                outcome = _undo_one(conn, ledger, by_id[migration_id], policy, start, git_sha=git_sha, run_id=run_id,
                                    log=log)
                if isinstance(outcome, MigrationFailure):
                    hint = rollback_hint(migration_id, environment, catalog.directory) if outcome.dirty else ""
                    outcome = redacted(replace(outcome, resolution=hint), password)
                    if observe is not None:
                        observe.failed(outcome, position + 1, count)
                    left = current.undo[position + 1 if outcome.dirty else position:]
                    report = RollbackReport(to, tuple(done), outcome, current.undo[position:],
                                            current.keep + tuple(reversed(left)), time.monotonic() - started)
                    raise RollbackError(describe(outcome), report)
                done.append(outcome)
                if observe is not None:
                    observe.rolled_back(outcome, position + 1, count)
            start.restore(conn)  # the last rollback's settings do not follow the lock's release
    return RollbackReport(to, tuple(done), applied=current.keep, duration_seconds=time.monotonic() - started)


def _changed(planned: tuple[str, ...], undo: tuple[str, ...]) -> str:
    """The plan read under the lock is not the one shown: another run applied or undid migrations in between."""
    added, gone = [i for i in undo if i not in planned], [i for i in planned if i not in undo]
    what = "; ".join([*([f"applied since: {', '.join(added)}"] if added else []),
                      *([f"no longer applied: {', '.join(gone)}"] if gone else [])]) or "the order changed"
    return (f"the history changed after the plan was shown ({what}): the plan said to undo "
            f"{', '.join(planned) or 'nothing'}, it would now undo {', '.join(undo) or 'nothing'}; run the rollback "
            "again to see and approve the new plan")


def roll_back(connection: Connection, migration: Migration, policy: Policy) -> None:
    """Undo one migration (the rehearsal's tail, last first), as `roll_back_to` undoes each; `MigrationError`."""
    if migration.rollback_statements is None:
        raise ValueError(f"{migration.id} has no rollback file")
    with session(connection, policy=policy) as conn:
        start = StartingState.of(conn, policy)
        with migration_lock(conn, policy.migration_lock_wait_seconds):
            outcome = _undo_one(conn, Ledger.open(conn), migration, policy, start, git_sha="unknown", run_id=None,
                                log=logger)
            if isinstance(outcome, MigrationFailure):
                outcome = redacted(outcome, connection.password.get_secret_value())
                raise MigrationError(describe(outcome), ApplyReport(failed=outcome))
            start.restore(conn)


def _undo_one(conn: psycopg.Connection, ledger: Ledger, migration: Migration, policy: Policy, start: StartingState,
              *, git_sha: str, run_id: str | None, log: Log) -> AppliedMigration | MigrationFailure:
    """The rollback file as the statements of a migration whose history step removes it: what is sent, how a
    failure is named and how a lock timeout is retried are the apply path's own."""
    assert migration.rollback_statements is not None
    undo = replace(migration, statements=migration.rollback_statements)
    if migration.transactional:
        return apply_one(conn, _Unrecording(ledger.conn, ledger.schema, ledger.statements), undo, policy, start,
                          git_sha=git_sha, run_id=run_id, log=log)
    started = time.monotonic()
    failure = _undo_alone(conn, ledger, undo, start, git_sha=git_sha, run_id=run_id)
    return failure or AppliedMigration(migration.id, time.monotonic() - started)


@dataclass
class _Unrecording(Ledger):
    """The ledger as a rollback's one message sees it: where a migration's message records it, a rollback's
    removes it (yoyo's row and our checksum row go, yoyo's log gets a 'rollback' row), in the same transaction."""

    def record_statement(self, migration: Migration, git_sha: str, run_id: str | None, *,
                         prepared: bool = True) -> str:
        return self.unrecord_statement(migration)

    def record(self, migration: Migration, git_sha: str, run_id: str | None, started: float, *,
               operation: str = "apply", comment: str | None = None) -> None:
        self.unrecord(migration)  # statement by statement (PostgreSQL < 13): still in the rollback's transaction

    def prepare_record(self) -> None:
        """Nothing is prepared: the removal is written out in the message."""


def _undo_alone(conn: psycopg.Connection, ledger: Ledger, undo: Migration, start: StartingState, *, git_sha: str,
                run_id: str | None) -> MigrationFailure | None:
    """A non-transactional rollback, statement by statement. Its history rows go with a dirty mark written before
    its first statement, so a run that dies halfway leaves what `resolve` reads: unrecorded and dirty."""
    start.restore(conn)
    with conn.transaction():
        ledger.unrecord(undo)
        ledger.mark_dirty(undo, git_sha, run_id)
    statement, number = "", 0
    try:
        for number, statement in enumerate(undo.statements, 1):
            start.settle_encoding(conn)  # a statement may have set one psycopg cannot write in (nontransactional.py)
            ledger.mark_progress(undo.id, "running", number, None, rolling_back(undo), number - 1)
            conn.execute(statement, prepare=False)
    except psycopg.Error as exc:
        failure = failure_from(undo, statement, exc, number)
        try:
            start.settle_encoding(conn)
            start.restore(conn)
            partly, left = partly_done(conn, undo.statements, number, ledger.invalid_before(undo.id))
            if number > 1 or partly:  # what ran before it stays undone: unrecorded, and dirty until resolved
                failure = replace(failure, message=failure.message + left)
                message = redact(failure.message + (" (it can COMMIT inside: part of it may be undone)"
                                                    if partly else ""), conn.info.password or "")
                ledger.mark_progress(undo.id, "failed", number, failure.sqlstate,
                                     f"{rolling_back(undo)}: {message}"[:2000], number - 1)
                return replace(failure, dirty=True, applied_through=number - 1, commits_inside=partly)
            # Nothing was undone (one statement is atomic; one that commits in phases left nothing): recorded
            # again, as it was.
            with conn.transaction():
                ledger.record(undo, git_sha, run_id, time.monotonic(), operation="mark",
                              comment=f"rds-migrations rollback failed at its first statement: {undo.id} stays applied")
                ledger.clear_dirty(undo.id)
            return failure
        except psycopg.Error:
            return replace(failure, dirty=True)  # the connection is gone: the mark says "running"
    try:
        start.settle_encoding(conn)
        start.restore(conn)
        ledger.clear_dirty(undo.id)
    except psycopg.Error as exc:
        return replace(failure_from(undo, RECORDING, exc, 0), dirty=True)
    return None


# ---- what a failure means -----------------------------------------------------------------------------------


def describe(failure: MigrationFailure) -> str:
    """A failed rollback in words: the migration, the rollback file's statement, the SQLSTATE, the outcome."""
    state = f"SQLSTATE {failure.sqlstate}" if failure.sqlstate else "no SQLSTATE"
    tries = f" after {failure.attempts} attempts" if failure.attempts > 1 else ""
    which = f"statement {failure.statement_number} of {failure.statement_count}" if failure.statement_number \
        else "statement"
    text = (f"rollback of {failure.migration_id} failed{tries} ({state}): {failure.message}\n"
            f"  {which} of {failure.migration_id}.rollback.sql: {shorten(failure.statement)}\n  {_outcome(failure)}")
    return text + (f"\n  to resolve: {failure.resolution}" if failure.resolution else "")


def _outcome(failure: MigrationFailure) -> str:
    stays = f"{failure.migration_id} stays applied"
    if failure.outcome_unknown:
        return ("whether it committed is not known (the session ended first); the history tables, changed in the "
                "rollback's own transaction, know: the next plan shows it applied or not")
    # Only this migration's rollback was undone: migrations undone before it in the same run stay undone.
    undone = f"its rollback file's transaction was rolled back: {stays}, as it was"
    if failure.transactional and failure.sqlstate == LOCK_NOT_AVAILABLE:
        return (f"{undone}; {failure.attempts} attempts, each stopped by lock_timeout behind another session's lock; "
                "find it with pg_blocking_pids()")
    if failure.transactional:
        return undone
    if failure.dirty and failure.statement_number == 0:
        return (f"non-transactional: every statement of the rollback file ran, but {failure.migration_id}'s dirty "
                "mark could not be cleared: later runs refuse until it is resolved")
    if failure.dirty:
        partly = (f", and statement {failure.statement_number} (a CALL, a DO block that can COMMIT, or a statement "
                  "that commits in phases) may have committed part of its work" if failure.commits_inside else "")
        return (f"non-transactional: of the rollback file, {applied_before(failure.statement_number)}{partly}; "
                f"{failure.migration_id} is no longer recorded as applied, and the database is marked dirty: later "
                "runs refuse until it is resolved")
    return f"non-transactional, so not retried: its first statement failed and nothing was undone; {stays}"


def rollback_hint(migration_id: str, environment: str | None, migrations: Path | None = None) -> str:
    """What an operator runs when a non-transactional rollback stopped halfway."""
    return resolve_hint(migration_id, environment, rolling_back=True, migrations=migrations)