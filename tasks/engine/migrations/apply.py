"""The apply loop: under the migration lock, each pending migration applied and recorded, in order.

Planned again under the lock (another run may have applied migrations meanwhile); refused before anything
runs when the history does not match the files, a migration is dirty, or an INVALID index is in the way.
A lock timeout (SQLSTATE 55P03) rolls a transactional migration back and retries it, with backoff and
jitter, a bounded number of times; a non-transactional migration is never retried.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.errors import DirtyDatabase, HistoryMismatch, InvalidMigrations
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.execute import redacted, run_transactional
from tasks.engine.migrations.history import Ledger, resolve_hint
from tasks.engine.migrations.indexes import handle_invalid_indexes
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
) -> ApplyReport:
    """Apply what is pending, one migration at a time. Raises `MigrationError` with the report on failure,
    `HistoryMismatch` (or `DirtyDatabase`, `InvalidIndexFound`) before applying anything when it is unsafe.
    `observe` is told about each migration as it is applied, or fails."""
    started = time.monotonic()
    application = f"rds-migrations run {run_id}" if run_id else "rds-migrations"
    password = connection.password.get_secret_value()
    if catalog.problems:  # e.g. a file that would end its own transaction: refused whatever the lint policy
        raise InvalidMigrations("the migrations cannot be applied as they are; nothing was applied:\n"
                                + "\n".join(f"  - {problem}" for problem in catalog.problems))
    with session(connection, policy=policy, application_name=application) as conn:
        start = StartingState.of(conn, policy)
        with migration_lock(conn, policy.migration_lock_wait_seconds):
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
            applied: list[AppliedMigration] = []
            by_id = {m.id: m for m in catalog.migrations}
            count = len(current.pending)
            for position, migration_id in enumerate(current.pending):
                migration = by_id[migration_id]
                # A run-logger line costs ~1.5 ms in a flow (API + console): one per migration in an ordinary
                # run, a progress line per PROGRESS_EVERY in a large one (1,000 pending: 11 lines, not 1,000).
                if count <= PROGRESS_EVERY or position % PROGRESS_EVERY == 0 or position == count - 1:
                    log.info("Applying %s (%d of %d)", migration.id, position + 1, count)
                outcome = apply_one(conn, ledger, migration, policy, start, git_sha=git_sha, run_id=run_id, log=log)
                if isinstance(outcome, MigrationFailure):
                    resolution = resolve_hint(migration.id, environment) if outcome.dirty else ""
                    outcome = redacted(replace(outcome, resolution=resolution), password)
                    if observe is not None:
                        observe.failed(outcome, position + 1, count)
                    report = ApplyReport(
                        applied=tuple(applied),
                        failed=outcome,
                        pending=current.pending[position:] + current.beyond_target,
                        duration_seconds=time.monotonic() - started,
                    )
                    raise MigrationError(str(outcome), report)
                applied.append(outcome)
                if observe is not None:
                    observe.applied(outcome, position + 1, count)
            start.restore(conn)  # the last migration's settings do not follow the lock's release
    return ApplyReport(
        applied=tuple(applied),
        pending=current.beyond_target,
        duration_seconds=time.monotonic() - started,
    )


def apply_one(conn: psycopg.Connection, ledger: Ledger, migration: Migration, policy: Policy,
               start: StartingState, *, git_sha: str, run_id: str | None,
               log: Log) -> AppliedMigration | MigrationFailure:
    """One migration, retried after a lock timeout with the policy's backoff and jitter when it is
    transactional (rolled back, so known to have changed nothing); never anything else. The rollback path uses
    it too, with a ledger whose history step removes what a migration's records."""
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        failure = (run_transactional if migration.transactional else run_alone)(
            conn, ledger, migration, start, git_sha=git_sha, run_id=run_id, started=started
        )
        if failure is None:
            return AppliedMigration(migration.id, time.monotonic() - started, attempts)
        # Only a transaction that was rolled back is known to have changed nothing: never retry anything else.
        retryable = migration.transactional and failure.sqlstate == LOCK_NOT_AVAILABLE
        if not retryable or attempts > policy.lock_timeout_retries:
            return replace(failure, attempts=attempts)
        delay = min(policy.lock_retry_max_delay_seconds, policy.lock_retry_base_delay_seconds * 2 ** (attempts - 1))
        delay *= random.uniform(0.5, 1.5)  # jitter: concurrent retries do not line up behind the same lock
        log.warning(
            "%s: lock_timeout (%d ms) hit waiting for a lock; rolled back, retry %d of %d in %.1fs",
            migration.id, policy.lock_timeout_ms, attempts, policy.lock_timeout_retries, delay,
        )
        time.sleep(delay)
