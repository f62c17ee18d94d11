"""INVALID indexes: what a failed `CREATE INDEX CONCURRENTLY` leaves behind, found before a run and dropped
or refused by policy (`invalid_index`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from tasks.engine.environments import Policy
from tasks.engine.errors import InvalidIndexFound
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.sqltext import after_comments, quote_identifier

# `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON [ONLY] [schema.]table`: the index is created in
# the table's schema. An unnamed index cannot be found again by name and is not handled.
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
CONCURRENT_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>{_IDENT})\s+"
    rf"ON\s+(?:ONLY\s+)?(?P<table>{_IDENT}(?:\s*\.\s*{_IDENT})?)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class InvalidIndex:
    """An INVALID index named by a pending migration's `CREATE INDEX CONCURRENTLY`: a failed build's leftover."""

    migration_id: str
    schema: str
    name: str
    table: str

    @property
    def drop_command(self) -> str:
        return f"DROP INDEX CONCURRENTLY IF EXISTS {quote_identifier(self.schema)}.{quote_identifier(self.name)};"

    def __str__(self) -> str:
        return (f"INVALID index {quote_identifier(self.schema)}.{quote_identifier(self.name)} on {self.table}, "
                f"left by a failed CREATE INDEX CONCURRENTLY of {self.migration_id}")


def concurrent_index(statement: str) -> tuple[str, str] | None:
    """(index name, table as written) for a named `CREATE INDEX CONCURRENTLY`, else None."""
    match = CONCURRENT_INDEX.match(after_comments(statement))
    if match is None:
        return None
    name = match["name"]
    name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    return name, re.sub(r"\s*\.\s*", ".", match["table"])


def index_state(conn: psycopg.Connection, statement: str) -> tuple[str, str, bool | None] | None:
    """(schema, name, valid) of the index a `CREATE INDEX CONCURRENTLY` statement names; valid is None when
    there is no such index. None for any other statement."""
    named = concurrent_index(statement)
    if named is None:
        return None
    name, table = named
    row = conn.execute(
        """
        SELECT n.nspname, i.indisvalid OR EXISTS (
                   SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.indrelid = to_regclass(%s) AND c.relname = %s
        """,
        (table, name),
    ).fetchone()
    return (row[0], name, row[1]) if row else ("", name, None)


def find_invalid_indexes(conn: psycopg.Connection, catalog: Catalog,
                         pending: Iterable[str]) -> tuple[InvalidIndex, ...]:
    """INVALID indexes that a pending migration's `CREATE INDEX CONCURRENTLY` names (builds in progress are
    valid for this purpose: another session is still building them)."""
    found: list[InvalidIndex] = []
    for migration_id in pending:
        migration = catalog.get(migration_id)
        for statement in migration.statements if migration and not migration.transactional else ():
            state = index_state(conn, statement)
            if state is not None and state[2] is False:
                found.append(InvalidIndex(migration_id, state[0], state[1], concurrent_index(statement)[1]))  # type: ignore[index]
    return tuple(found)


def handle_invalid_indexes(conn: psycopg.Connection, catalog: Catalog, pending: tuple[str, ...], policy: Policy,
                            log: Log) -> None:
    invalid = find_invalid_indexes(conn, catalog, pending)
    if not invalid:
        return
    if policy.invalid_index == "refuse":
        raise InvalidIndexFound(invalid)
    for index in invalid:
        log.warning("%s; dropping it to build it again (policy.invalid_index = drop_and_retry): %s",
                    index, index.drop_command)
        try:
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index.schema,
                                                                                              index.name)))
        except psycopg.Error as exc:
            raise InvalidIndexFound([index], f"dropping it failed with SQLSTATE {exc.sqlstate}") from None
