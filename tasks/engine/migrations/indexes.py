"""INVALID indexes: what a failed `CREATE INDEX CONCURRENTLY` leaves behind, found before a run and dropped
or refused by policy (`invalid_index`). Its table is found as the migration found it: under the search_path
its own `SET search_path` statements set before it (search_path.search_paths)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from pglast import ast
from psycopg import sql

from tasks.engine.environments import Policy
from tasks.engine.errors import InvalidIndexFound
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.search_path import FOUND, SearchPath, lookup_arguments, search_paths
from tasks.engine.migrations.sqltext import quote_identifier
from tasks.engine.migrations.statements import concurrent_index, parsed


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


# Each statement's table is found as its file found it (search_path.FOUND), keyed by the statement's position.
_INDEX_STATES_SQL = f"""
WITH {FOUND}
SELECT f.key, n.nspname, i.indisvalid OR EXISTS (
           SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
FROM found f
JOIN unnest(%s::int[], %s::text[]) AS named(key, name) ON named.key = f.key
JOIN pg_index i ON i.indrelid = f.relation
JOIN pg_class c ON c.oid = i.indexrelid AND c.relname = named.name
JOIN pg_namespace n ON n.oid = c.relnamespace
"""


def index_states(conn: psycopg.Connection, statements: list[str],
                 paths: Sequence[SearchPath] | None = None) -> list[tuple[str, str, bool | None] | None]:
    """For each statement, (schema, name, valid) of the index its `CREATE INDEX CONCURRENTLY` names (valid is
    None when there is no such index), or None for any other statement. `paths`: each statement's search_path
    as its file set it (search_path.search_paths); without it, the session's. One query, whatever the count."""
    named = [concurrent_index(statement) for statement in statements]
    paths = paths or [None] * len(statements)
    # Each statement is keyed by its position in `statements` (not among the indexes: a statement before the
    # index, a CREATE TABLE say, must not shift it onto another's).
    wanted: list[tuple[int, str | None, str, SearchPath]] = []
    for position, (pair, path) in enumerate(zip(named, paths, strict=True), 1):
        if pair is not None:
            relation = next(node.relation for node in parsed(statements[position - 1]) or ()
                            if isinstance(node, ast.IndexStmt))
            wanted.append((position, relation.schemaname, relation.relname, path))
    found = {}
    if wanted:
        keys = [key for key, *_ in wanted]
        names = [named[key - 1][0] for key in keys]  # type: ignore[index]
        found = {row[0]: row[1:] for row in conn.execute(_INDEX_STATES_SQL, (*lookup_arguments(wanted), keys, names))}
    states: list[tuple[str, str, bool | None] | None] = []
    for position, pair in enumerate(named, 1):
        state = found.get(position) if pair is not None else None
        states.append(None if pair is None else (state[0], pair[0], state[1]) if state else ("", pair[0], None))
    return states


def index_state(conn: psycopg.Connection, statement: str,
                path: SearchPath = None) -> tuple[str, str, bool | None] | None:
    """(schema, name, valid) of the index a `CREATE INDEX CONCURRENTLY` statement names; valid is None when
    there is no such index. None for any other statement."""
    return index_states(conn, [statement], [path])[0]


def find_invalid_indexes(conn: psycopg.Connection, catalog: Catalog,
                         pending: Iterable[str]) -> tuple[InvalidIndex, ...]:
    """INVALID indexes that a pending migration's `CREATE INDEX CONCURRENTLY` names (builds in progress are
    valid for this purpose: another session is still building them)."""
    found = [(migration.id, statement, path) for migration_id in pending
             if (migration := catalog.get(migration_id)) and not migration.transactional
             for statement, path in zip(migration.statements, search_paths(migration.statements), strict=True)]
    states = index_states(conn, [statement for _, statement, _ in found], [path for _, _, path in found])
    return tuple(InvalidIndex(migration_id, state[0], state[1], concurrent_index(statement)[1])  # type: ignore[index]
                 for (migration_id, statement, _), state in zip(found, states, strict=True)
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
