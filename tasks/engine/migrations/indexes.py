"""INVALID indexes: what a failed `CREATE INDEX CONCURRENTLY` leaves behind, found before a run and dropped
or refused by policy (`invalid_index`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from tasks.engine.environments import Policy
from tasks.engine.errors import InvalidIndexFound
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.sqltext import quote_identifier
from tasks.engine.migrations.statements import concurrent_index


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


_INDEX_STATES_SQL = """
SELECT t.position, n.nspname, i.indisvalid OR EXISTS (
           SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
FROM unnest(%s::int[], %s::text[], %s::text[]) AS t(position, tbl, name)
JOIN pg_index i ON i.indrelid = to_regclass(t.tbl)
JOIN pg_class c ON c.oid = i.indexrelid AND c.relname = t.name
JOIN pg_namespace n ON n.oid = c.relnamespace
"""


def index_states(conn: psycopg.Connection, statements: list[str]) -> list[tuple[str, str, bool | None] | None]:
    """For each statement, (schema, name, valid) of the index its `CREATE INDEX CONCURRENTLY` names (valid is
    None when there is no such index), or None for any other statement. One query, whatever the count."""
    named = [concurrent_index(statement) for statement in statements]
    wanted = [(position, pair) for position, pair in enumerate(named, 1) if pair is not None]
    rows = {}
    if wanted:
        # Each row carries its statement's position in `statements` (not among the indexes: a statement before
        # the index, a CREATE TABLE say, must not shift it onto another's).
        positions = [position for position, _ in wanted]
        tables, names = [pair[1] for _, pair in wanted], [pair[0] for _, pair in wanted]
        rows = {row[0]: row[1:] for row in conn.execute(_INDEX_STATES_SQL, (positions, tables, names)).fetchall()}
    states: list[tuple[str, str, bool | None] | None] = []
    for position, pair in enumerate(named, 1):
        found = rows.get(position) if pair is not None else None
        states.append(None if pair is None else (found[0], pair[0], found[1]) if found else ("", pair[0], None))
    return states


def index_state(conn: psycopg.Connection, statement: str) -> tuple[str, str, bool | None] | None:
    """(schema, name, valid) of the index a `CREATE INDEX CONCURRENTLY` statement names; valid is None when
    there is no such index. None for any other statement."""
    return index_states(conn, [statement])[0]


def find_invalid_indexes(conn: psycopg.Connection, catalog: Catalog,
                         pending: Iterable[str]) -> tuple[InvalidIndex, ...]:
    """INVALID indexes that a pending migration's `CREATE INDEX CONCURRENTLY` names (builds in progress are
    valid for this purpose: another session is still building them)."""
    candidates = [(migration.id, statement) for migration_id in pending
                  if (migration := catalog.get(migration_id)) and not migration.transactional
                  for statement in migration.statements]
    states = index_states(conn, [statement for _, statement in candidates])
    return tuple(InvalidIndex(migration_id, state[0], state[1], concurrent_index(statement)[1])  # type: ignore[index]
                 for (migration_id, statement), state in zip(candidates, states, strict=True)
                 if state is not None and state[2] is False)


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
