"""Rolling a migration back: its rollback file and the removal of its history rows, in one transaction
where it is transactional (used by the rehearsal, which rolls the tail back and applies it again)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.migrations.catalog import Migration
from tasks.engine.migrations.execute import failure_from
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.results import ApplyReport, MigrationError
from tasks.engine.migrations.session import migration_lock, session


def roll_back(connection: Connection, migration: Migration, policy: Policy) -> None:
    """Run a migration's rollback file and remove it from the history, in one transaction where it can."""
    if migration.rollback_statements is None:
        raise ValueError(f"{migration.id} has no rollback file")
    with session(connection, policy=policy) as conn, migration_lock(conn, policy.migration_lock_wait_seconds):
        ledger = Ledger.open(conn)
        statement, number = "", 0
        try:
            with conn.transaction() if migration.transactional else _no_transaction():
                for number, statement in enumerate(migration.rollback_statements, 1):  # noqa: B007
                    conn.execute(statement, prepare=False)
                if migration.transactional:
                    ledger.unrecord(migration)
        except psycopg.Error as exc:
            failure = failure_from(migration, statement, exc, number)
            raise MigrationError(f"rollback of {failure}", ApplyReport(failed=failure)) from None
        if not migration.transactional:
            with conn.transaction():
                ledger.unrecord(migration)


@contextmanager
def _no_transaction() -> Iterator[None]:
    yield
