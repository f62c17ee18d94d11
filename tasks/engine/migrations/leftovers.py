"""What a failed statement that commits in phases leaves behind (statements.commits_in_phases): the INVALID index
of a `DROP INDEX CONCURRENTLY` or a `REINDEX ... CONCURRENTLY`, the partition a `DETACH PARTITION ...
CONCURRENTLY` left pending detach, each named with the command that finishes or clears it. Names are found
as the migration's own statements found them (search_path.py).

A REINDEX copy of a TOAST index is made in `pg_toast`, a schema only a superuser may use: the RDS master user
is not one, so nobody the operator can be may drop it there (VACUUM FULL, a column's rewrite and TRUNCATE leave
it: measured on PostgreSQL 15). Such a copy is named with who can drop it and does not stand in the way of
marking the migration (`Leftover.blocks`): it holds nothing the table needs (the table's own TOAST index is
valid beside it), and PostgreSQL's REINDEX skips an INVALID TOAST index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from pglast import ast
from pglast.enums import AlterTableType, ReindexObjectType

from tasks.engine.migrations.search_path import SearchPath, first_found, search_paths
from tasks.engine.migrations.sqltext import quote_identifier
from tasks.engine.migrations.statements import commits_in_phases, commits_inside, parsed

_INDEX = """
SELECT n.nspname, c.relname, has_schema_privilege(n.oid, 'USAGE')
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
"""
_HALF_DROPPED = _INDEX + "WHERE i.indexrelid = %s AND NOT i.indisvalid"
# REINDEX CONCURRENTLY names its copy <index>_ccnew (then _ccnew1, ...), and the old index <index>_ccold after
# the swap; a failure leaves either INVALID. These are catalog names, matched as such. One that was there before
# the migration's dirty mark (`before`: "oid name", as the mark recorded it) is not its own.
_REINDEX_LEFT = _INDEX + """WHERE NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$'
AND NOT (i.indexrelid::text || ' ' || c.relname) = ANY(%s::text[])"""
# The tables it makes its copies on, each copy on its index's own table: for a table, the table, its partitions
# and their TOAST tables (a TOAST index's copy is in pg_toast); for an index, its partitions' tables too.
_MADE_ON = {
    ReindexObjectType.REINDEX_OBJECT_TABLE: """
        SELECT unnest(ARRAY[r.oid, r.reltoastrelid]) FROM pg_class r
        WHERE r.oid = %s OR r.oid IN (SELECT relid FROM pg_partition_tree(%s::oid::regclass))""",
    ReindexObjectType.REINDEX_OBJECT_INDEX: """
        SELECT x.indrelid FROM pg_index x
        WHERE x.indexrelid = %s OR x.indexrelid IN (SELECT relid FROM pg_partition_tree(%s::oid::regclass))""",
    ReindexObjectType.REINDEX_OBJECT_SCHEMA: """
        SELECT unnest(ARRAY[r.oid, r.reltoastrelid]) FROM pg_class r JOIN pg_namespace s ON s.oid = r.relnamespace
        WHERE s.nspname = %s""",
}
_PENDING_DETACH = """
SELECT pn.nspname, p.relname, cn.nspname, c.relname FROM pg_inherits h
JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = h.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE h.inhrelid = %s AND h.inhdetachpending
"""


@dataclass(frozen=True)
class Leftover:
    """Something a statement left half done, in words with the command that finishes or clears it; `blocks`:
    whether it stands in the way of marking its migration (False: only a superuser could clear it)."""

    said: str
    blocks: bool = True

    def __str__(self) -> str:
        return self.said


def leftovers(conn: psycopg.Connection, statement: str, path: SearchPath = None,
              before: Sequence[str] = ()) -> tuple[Leftover, ...] | None:
    """What `statement` (one that commits in phases) left half done in the database, each with the command that
    finishes or clears it; () when nothing is left (none of its phases committed). None for any other statement,
    or when the catalog could not be read: then nobody knows. `before`: the INVALID indexes there when its
    migration's dirty mark was written (DirtyMigration.invalid_before), not its own."""
    if not commits_in_phases(statement):
        return None
    try:
        with conn.transaction():  # a savepoint where a transaction is open: a failure here changes nothing
            return tuple(found for node in parsed(statement) or () for found in _left_by(conn, node, path, before))
    except psycopg.Error:
        return None


def _left_by(conn: psycopg.Connection, node: ast.Node, path: SearchPath, before: Sequence[str]) -> list[Leftover]:
    if isinstance(node, ast.DropStmt) and node.concurrent:
        found = []
        for parts in node.objects or ():
            names = [part.sval for part in parts if isinstance(part, ast.String)]
            oid = first_found(conn, names[-2] if len(names) > 1 else None, names[-1], path)
            found += [Leftover(f"INVALID index {name}, half dropped: finish it with DROP INDEX CONCURRENTLY IF "
                               f"EXISTS {name};") for name, _ in _names(conn.execute(_HALF_DROPPED, (oid,)).fetchall())
                      ] if oid else []
        return found
    if isinstance(node, ast.ReindexStmt):
        kind, relation, args = ReindexObjectType(node.kind), node.relation, [list(before)]
        if relation is not None:
            oid = first_found(conn, relation.schemaname, relation.relname, path)
            if oid is None:
                return []
            args += [oid, oid]
        elif kind == ReindexObjectType.REINDEX_OBJECT_SCHEMA:
            args.append(node.name)
        scope = f" AND i.indrelid IN ({_MADE_ON[kind]})" if kind in _MADE_ON else ""  # DATABASE, SYSTEM: all
        rows = conn.execute(_REINDEX_LEFT + scope, args).fetchall()
        return [_reindex_copy(name, usable) for name, usable in _names(rows)]
    if isinstance(node, ast.AlterTableStmt):
        found = []
        for command in node.cmds or ():
            if command.subtype == AlterTableType.AT_DetachPartition and getattr(command.def_, "concurrent", False):
                part = command.def_.name
                oid = first_found(conn, part.schemaname, part.relname, path)
                for row in conn.execute(_PENDING_DETACH, (oid,)).fetchall() if oid else ():
                    (parent, _), (child, _) = _names([(*row[:2], True), (*row[2:], True)])
                    found.append(Leftover(f"partition {child} is pending detach from {parent}: finish it with ALTER "
                                          f"TABLE {parent} DETACH PARTITION {child} FINALIZE;"))
        return found
    return []


def _reindex_copy(name: str, usable: bool) -> Leftover:
    drop = f"DROP INDEX CONCURRENTLY IF EXISTS {name};"
    if usable:
        return Leftover(f"INVALID index {name}, left by REINDEX CONCURRENTLY: drop it with {drop}")
    return Leftover(f"INVALID index {name}, left by REINDEX CONCURRENTLY in a schema this login may not use, so it "
                    f"cannot drop it: only a superuser may ({drop}; RDS has none, and nothing short of dropping the "
                    "table removes it); it holds nothing the table needs and does not stop the migration being "
                    "marked", blocks=False)


def _names(rows: Sequence[Sequence[object]]) -> list[tuple[str, bool]]:
    """(schema.name quoted, whether this session may use the schema) of each (schema, name, usable) row."""
    return [(f"{quote_identifier(str(schema))}.{quote_identifier(str(name))}", bool(usable))
            for schema, name, usable in rows]


def partly_done(conn: psycopg.Connection, statements: Sequence[str], number: int,
                before: Sequence[str] = ()) -> tuple[bool, str]:
    """After statement `number` of `statements` (a file, 1-based) failed: whether it may have committed part of
    its work, and what it left, in words for the failure's message ("" when nothing is named). A statement that
    commits in phases and left nothing committed none of them: it was atomic after all. `before`: as for
    `leftovers`."""
    statement = statements[number - 1]
    if not commits_inside(statement):
        return False, ""
    left = leftovers(conn, statement, search_paths(statements)[number - 1], before)
    if left == ():
        return False, ""
    return True, "; it left " + "; ".join(map(str, left)) if left else ""
