"""The apply loop: under the migration lock, each pending migration applied and recorded, in order.

Planned again under the lock (another run may have applied migrations meanwhile); refused before anything
runs when the history does not match the files, a migration is dirty, or an INVALID index is in the way.
A lock timeout (SQLSTATE 55P03) rolls a transactional migration back and retries it, with backoff and
jitter, a bounded number of times; a non-transactional migration is never retried. With
`policy.migrations_per_message` above 1, consecutive migrations that may travel together go in one message,
each still in its own transaction (together.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.errors import DirtyDatabase, HistoryMismatch, InvalidMigrations
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.execute import redacted, run_transactional
from tasks.engine.migrations.hints import resolve_hint
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.indexes import handle_invalid_indexes
from tasks.engine.migrations.lock_holders import lock_holders
from tasks.engine.migrations.nontransactional import run_alone
from tasks.engine.migrations.plan import make_plan
from tasks.engine.migrations.resolve import explain_dirty
from tasks.engine.migrations.results import (
    LOCK_NOT_AVAILABLE,
    AppliedMigration,
    ApplyObserver,
    ApplyReport,
    MigrationError,
    MigrationFailure,
)
from tasks.engine.migrations.session import StartingState, migration_lock, session
from tasks.engine.migrations.together import next_group, run_together

logger = logging.getLogger(__name__)
PROGRESS_EVERY = 100  # runs with more pending migrations log a progress line every this many


def apply_pending(
    connection: Connection,
    catalog: Catalog,
    policy: Policy,
    *,
    target: str | None = None,
    git_sha: str = "unknown",
    run_id: str | None = None,
    environment: str | None = None,
    log: Log = logger,
    observe: ApplyObserver | None = None,
    on_locked: Callable[[], None] | None = None,
) -> ApplyReport:
    """Apply what is pending, each migration in its own transaction with its history rows, in order (several
    may share one message when the policy asks for it: together.py). Raises `MigrationError` with the report on failure,
    `HistoryMismatch` (or `DirtyDatabase`, `InvalidIndexFound`) before applying anything when it is unsafe.
    `observe` is told about each migration as it is applied, or fails; `on_locked` is called once the migration
    lock is taken (a run stopped before that applied nothing: what the history shows is another run's)."""
    started = time.monotonic()
    application = f"rds-migrations run {run_id}" if run_id else "rds-migrations"
    password = connection.password.get_secret_value()
    if catalog.problems:  # e.g. a file that would end its own transaction: refused whatever the lint policy
        raise InvalidMigrations("the migrations cannot be applied as they are; nothing was applied:\n"
                                + "\n".join(f"  - {problem}" for problem in catalog.problems))
    with session(connection, policy=policy, application_name=application) as conn:
        start = StartingState.of(conn, policy)
        with migration_lock(conn, policy.migration_lock_wait_seconds):
            if on_locked is not None:
                on_locked()
            ledger = Ledger.open(conn)
            ledger.create_tables()
            ledger.prepare_record()
            # Planned again under the lock: another run may have applied migrations meanwhile.
            history = ledger.read()
            if history.dirty:
                raise DirtyDatabase("\n".join(
                    explain_dirty(conn, catalog, dirty, environment) for dirty in history.dirty
                ) + "\nnothing was applied")
            current = make_plan(catalog, history, target=target, allow_out_of_order=policy.allow_out_of_order,
                                environment=environment)
            if current.problems:
                raise HistoryMismatch("; ".join(current.problems))
            handle_invalid_indexes(conn, catalog, current.pending, policy, log)
            ledger.record_unverified(catalog, current.unverified, log)
            by_id = {m.id: m for m in catalog.migrations}
            pending = [by_id[migration_id] for migration_id in current.pending]
            done = _apply_in_order(conn, connection, ledger, pending, policy, start, git_sha=git_sha, run_id=run_id,
                                   log=log, observe=observe)
            applied = done.applied
            if done.failure is not None:
                failure = done.failure
                resolution = resolve_hint(failure.migration_id, environment,
                                          migrations=catalog.directory) if failure.dirty else ""
                failure = redacted(replace(failure, resolution=resolution), password)
                if observe is not None:
                    observe.failed(failure, done.position + 1, len(pending))
                report = ApplyReport(
                    applied=tuple(applied),
                    failed=failure,
                    pending=current.pending[done.position:] + current.beyond_target,
                    duration_seconds=time.monotonic() - started,
                )
                raise MigrationError(str(failure), report)
            if not conn.closed:  # (a connection lost after a message's last COMMIT: all is recorded)
                start.restore(conn)  # the last migration's settings do not follow the lock's release
    return ApplyReport(
        applied=tuple(applied),
        pending=current.beyond_target,
        duration_seconds=time.monotonic() - started,
    )


@dataclass
class _Done:
    """How far the migrations got: those applied, in order; the one at `position` that failed, and why."""

    observe: ApplyObserver | None
    count: int
    applied: list[AppliedMigration] = field(default_factory=list)
    position: int = 0
    failure: MigrationFailure | None = None

    def add(self, outcome: AppliedMigration) -> None:
        self.applied.append(outcome)
        self.position += 1
        if self.observe is not None:
            self.observe.applied(outcome, self.position, self.count)


def _apply_in_order(conn: psycopg.Connection, connection: Connection, ledger: Ledger, pending: list[Migration],
                    policy: Policy, start: StartingState, *, git_sha: str, run_id: str | None, log: Log,
                    observe: ApplyObserver | None) -> _Done:
    """Each migration in its own transaction, in order, until one fails: one at a time (apply_one), or
    several in one message where the policy asks for it and they may travel together (together.py)."""
    done, alone_until = _Done(observe, len(pending)), 0
    while done.position < done.count:
        position = done.position
        size = 1 if position < alone_until else next_group(pending[position:], conn.info.server_version,
                                                           policy.migrations_per_message, policy.shared_now)
        _log_progress(log, pending, position, size)
        first: MigrationFailure | None = None
        if size > 1:
            start.settle_encoding(conn)
            sent = run_together(conn, connection, ledger, pending[position:position + size], start,
                                git_sha=git_sha, run_id=run_id, on_applied=done.add)
            alone_until = done.position + sent.again_alone
            if sent.failure is None:
                continue
            first = sent.failure  # retried alone after a lock timeout, as if it had been sent alone
        outcome = apply_one(conn, ledger, pending[done.position], policy, start, git_sha=git_sha, run_id=run_id,
                            log=log, first=first)
        if isinstance(outcome, MigrationFailure):
            done.failure = outcome
            return done
        done.add(outcome)
    return done


def apply_one(conn: psycopg.Connection, ledger: Ledger, migration: Migration, policy: Policy,
               start: StartingState, *, git_sha: str, run_id: str | None,
               log: Log, first: MigrationFailure | None = None) -> AppliedMigration | MigrationFailure:
    """One migration, retried after a lock timeout with the policy's backoff and jitter when it is
    transactional (rolled back, so known to have changed nothing); never anything else. The rollback path uses
    it too, with a ledger whose history step removes what a migration's records. `first`: how its first
    attempt failed, when it was made in a message with others (together.py)."""
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        start.settle_encoding(conn)
        failure = first if attempts == 1 and first is not None else (
            run_transactional if migration.transactional else run_alone)(
            conn, ledger, migration, start, git_sha=git_sha, run_id=run_id, started=started)
        if failure is None:
            return AppliedMigration(migration.id, time.monotonic() - started, attempts)
        # Only a transaction that was rolled back is known to have changed nothing: never retry anything else.
        retryable = migration.transactional and failure.sqlstate == LOCK_NOT_AVAILABLE
        if not retryable or attempts > policy.lock_timeout_retries:
            return replace(failure, attempts=attempts)
        delay = min(policy.lock_retry_max_delay_seconds, policy.lock_retry_base_delay_seconds * 2 ** (attempts - 1))
        delay *= random.uniform(0.5, 1.5)  # jitter: concurrent retries do not line up behind the same lock
        log.warning(
            "%s: lock_timeout (%d ms) hit waiting for a lock; rolled back, retry %d of %d in %.1fs; %s",
            migration.id, policy.lock_timeout_ms, attempts, policy.lock_timeout_retries, delay,
            lock_holders(conn, failure.statement),
        )
        time.sleep(delay)


def _log_progress(log: Log, pending: list[Migration], position: int, size: int) -> None:
    """A run-logger line costs ~1.5 ms in a flow (API + console): a line per message sent in an ordinary run,
    a progress line per PROGRESS_EVERY migrations in a large one (1,000 pending: 11 lines, not 1,000)."""
    count, last = len(pending), position + size - 1
    reaches_a_mark = position // PROGRESS_EVERY != last // PROGRESS_EVERY or position % PROGRESS_EVERY == 0
    if count > PROGRESS_EVERY and not reaches_a_mark and last != count - 1:
        return
    if size == 1:
        log.info("Applying %s (%d of %d)", pending[position].id, position + 1, count)
    else:
        log.info("Applying %s to %s (%d-%d of %d, each in its own transaction)", pending[position].id,
                 pending[last].id, position + 1, last + 1, count)
