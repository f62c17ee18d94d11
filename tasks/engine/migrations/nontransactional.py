"""A non-transactional migration (`-- transactional: false`: `CREATE INDEX CONCURRENTLY`, `ALTER TYPE ... ADD
VALUE` before PostgreSQL 12, ...) runs alone, statement by statement, under a dirty mark in the history
tables: written before its first statement, moved as each one starts, replaced by its record in one
transaction after its last. A run that stops halfway leaves the mark, and every later run refuses, explains
what ran, and names the command that resolves it (resolve.py).
"""

from __future__ import annotations

import time
from dataclasses import replace

import psycopg
from psycopg import pq

from tasks.engine.errors import redact
from tasks.engine.migrations.catalog import Migration
from tasks.engine.migrations.execute import RECORDING, failure_from, quietly
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.leftovers import partly_done
from tasks.engine.migrations.results import MigrationFailure
from tasks.engine.migrations.session import StartingState


def run_alone(conn: psycopg.Connection, ledger: Ledger, migration: Migration, start: StartingState, *,
              git_sha: str, run_id: str | None, started: float) -> MigrationFailure | None:
    """Statement by statement outside the tool's transaction, under a dirty mark that the record replaces.

    The file may open transactions of its own (`BEGIN; ...; COMMIT;`): while one is open, the mark is not
    moved (it would be undone with it), and a failure inside one rolls it back, so what is applied is what ran
    before its BEGIN. The error that stopped the migration is the one reported, never a later one.

    Round trips: one message sets the starting state and writes the mark, one moves it before each later
    statement, one sets the starting state again, and one writes "recording", then the record in its own
    transaction (each transaction committed before the next begins, as when they were sent one by one).

    A statement may set the client encoding (`SET client_encoding`, as pg_dump's output starts): it is put back
    before each statement and before the record, as before each message of a transactional migration, so every
    statement reaches the server as written (UTF-8, as the file was read), also in an encoding psycopg has no
    codec for (EUC_TW)."""
    password = conn.info.password or ""
    start.restore(conn, ledger.mark_statement(migration, git_sha, run_id),
                  ledger.progress_statements(migration.id, "running", 1, applied_through=0))
    statement, number, applied_through = "", 0, 0
    try:
        for number, statement in enumerate(migration.statements, 1):
            start.settle_encoding(conn)
            if _idle(conn):
                applied_through = number - 1
                if number > 1:
                    ledger.mark_progress(migration.id, "running", number, applied_through=applied_through)
            conn.execute(statement, prepare=False)
        if not _idle(conn):
            raise _OpenTransaction(number)
    except (psycopg.Error, _OpenTransaction) as exc:
        if isinstance(exc, _OpenTransaction):
            failure = MigrationFailure(migration.id, statement, None, exc.message, False, statement_number=number,
                                       statement_count=len(migration.statements))
        else:
            failure = failure_from(migration, statement, exc, number)
        if conn.broken:
            return replace(failure, dirty=True)  # the mark says "running": the next run explains it
        quietly(start.settle_encoding, conn)  # psycopg writes even its ROLLBACK in the session's encoding
        if not _idle(conn):
            quietly(conn.execute, "ROLLBACK")  # its own transaction: undone, so the mark can be written
        quietly(start.settle_encoding, conn)
        partly, left = partly_done(conn, migration.statements, number, ledger.invalid_before(migration.id))
        if applied_through == 0 and not partly:
            # Nothing before it ran (one statement is atomic, a statement that commits in phases left nothing, a
            # transaction of its own rolled back): the mark goes (an INVALID index that a CREATE INDEX
            # CONCURRENTLY leaves is found by name on the next run).
            quietly(ledger.clear_dirty, migration.id)
            return failure
        failure = replace(failure, message=failure.message + left, dirty=True, statement_number=number,
                          applied_through=applied_through, commits_inside=partly)
        message = redact(failure.message + (" (it can COMMIT inside: part of it may be applied)" if partly else ""),
                         password)[:2000]  # the mark is read by later runs
        quietly(ledger.mark_progress, migration.id, "failed", number, failure.sqlstate, message, applied_through)
        return failure
    count = len(migration.statements)
    duration_ms = int((time.monotonic() - started) * 1000)
    try:
        # The session as it began first, in a message of its own: the migration may have made the next
        # transaction read-only (`SET default_transaction_read_only`), and a message's transaction is as it begins.
        start.settle_encoding(conn)  # before the record is written out: psycopg writes it in the session's encoding
        record = ledger.record_statement(migration, git_sha, run_id, prepared=False, duration_ms=duration_ms)
        start.restore(conn)
        conn.execute("; ".join((
            ledger.progress_statements(migration.id, "recording", count, applied_through=count),
            "BEGIN", record, ledger.clear_statement(migration.id), "COMMIT")), prepare=False)
    except psycopg.Error as exc:
        if not conn.closed and not _idle(conn):
            quietly(conn.execute, "ROLLBACK")
        return replace(failure_from(migration, RECORDING, exc, 0), dirty=True)
    return None


def _idle(conn: psycopg.Connection) -> bool:
    return conn.info.transaction_status == pq.TransactionStatus.IDLE


class _OpenTransaction(Exception):
    def __init__(self, number: int) -> None:
        self.message = (f"the migration left a transaction of its own open after its last statement ({number}); "
                        "it was rolled back: end it with COMMIT in the file")
        super().__init__(self.message)
