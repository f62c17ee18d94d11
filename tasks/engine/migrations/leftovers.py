"""What a failed statement that commits in phases leaves behind (statements.commits_in_phases): the INVALID index
of a `DROP INDEX CONCURRENTLY` or a `REINDEX ... CONCURRENTLY`, the partition a `DETACH PARTITION ...
CONCURRENTLY` left pending detach, each named with the command that finishes or clears it. Names are found
as the migration's own statements found them: under the search_path its `SET search_path` statements set."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from pglast import ast
from pglast.enums import AlterTableType, ReindexObjectType, VariableSetKind

from tasks.engine.migrations.sqltext import after_comments, quote_identifier
from tasks.engine.migrations.statements import commits_in_phases, commits_inside, parsed

SearchPath = tuple[str, ...] | None  # schema names as the server stores them; None: the session's own


def search_paths(statements: Sequence[str]) -> list[SearchPath]:
    """For each statement of a file, the search_path the `SET search_path` statements before it set, or None
    where none did (or `RESET`/`SET ... TO DEFAULT` undid it). `SET LOCAL` ends with its transaction (a
    CONCURRENTLY statement runs in none), so it is not counted; nor is a `set_config` call."""
    paths: list[SearchPath] = []
    path: SearchPath = None
    for statement in statements:
        paths.append(path)
        if not after_comments(statement)[:5].upper().startswith(("SET", "RESET")):
            continue  # only a SET or RESET can change it: the parser reads those alone
        for node in parsed(statement) or ():
            if not isinstance(node, ast.VariableSetStmt) or node.is_local:
                continue
            if node.kind == VariableSetKind.VAR_RESET_ALL or (
                    node.name == "search_path" and node.kind != VariableSetKind.VAR_SET_VALUE):
                path = None
            elif node.name == "search_path":
                path = tuple(arg.val.sval for arg in node.args or ()
                             if isinstance(arg, ast.A_Const) and isinstance(arg.val, ast.String))
    return paths


def candidates(schema: str | None, name: str, path: SearchPath) -> list[str]:
    """Where the server looks for `name` (quoted, schema-qualified when it can be), in the order it looks."""
    if schema:
        return [f"{quote_identifier(schema)}.{quote_identifier(name)}"]
    if path is None:
        return [quote_identifier(name)]  # the session's search_path: the migration set none
    return [f"{quote_identifier(each)}.{quote_identifier(name)}" for each in path]


_FIRST_FOUND = """
SELECT to_regclass(u.name)::oid FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, n)
WHERE to_regclass(u.name) IS NOT NULL ORDER BY u.n LIMIT 1
"""
_INDEX = """
SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
"""
_HALF_DROPPED = _INDEX + "WHERE i.indexrelid = %s AND NOT i.indisvalid"
# REINDEX CONCURRENTLY names its copy <index>_ccnew (then _ccnew1, ...), and the old index <index>_ccold after
# the swap; a failure leaves either INVALID. These are catalog names, matched as such.
_REINDEX_LEFT = _INDEX + "WHERE NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$'"
_PENDING_DETACH = """
SELECT pn.nspname, p.relname, cn.nspname, c.relname FROM pg_inherits h
JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = h.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE h.inhrelid = %s AND h.inhdetachpending
"""


def leftovers(conn: psycopg.Connection, statement: str, path: SearchPath = None) -> tuple[str, ...] | None:
    """What `statement` (one that commits in phases) left half done in the database, each with the command that
    finishes or clears it; () when nothing is left (none of its phases committed). None for any other statement,
    or when the catalog could not be read: then nobody knows."""
    if not commits_in_phases(statement):
        return None
    try:
        with conn.transaction():  # a savepoint where a transaction is open: a failure here changes nothing
            return tuple(found for node in parsed(statement) or () for found in _left_by(conn, node, path))
    except psycopg.Error:
        return None


def _left_by(conn: psycopg.Connection, node: ast.Node, path: SearchPath) -> list[str]:
    if isinstance(node, ast.DropStmt) and node.concurrent:
        found = []
        for parts in node.objects or ():
            names = [part.sval for part in parts if isinstance(part, ast.String)]
            oid = _first_found(conn, candidates(names[-2] if len(names) > 1 else None, names[-1], path))
            found += [f"INVALID index {name}, half dropped: finish it with DROP INDEX CONCURRENTLY IF EXISTS {name};"
                      for name in _names(conn.execute(_HALF_DROPPED, (oid,)).fetchall())] if oid else []
        return found
    if isinstance(node, ast.ReindexStmt):
        kind, relation = ReindexObjectType(node.kind), node.relation
        where, args = "", ()
        if relation is not None:
            oid = _first_found(conn, candidates(relation.schemaname, relation.relname, path))
            if oid and kind == ReindexObjectType.REINDEX_OBJECT_INDEX:  # its copy is made on the same table
                row = conn.execute("SELECT indrelid FROM pg_index WHERE indexrelid = %s", (oid,)).fetchone()
                oid = row[0] if row else None
            where, args = " AND i.indrelid = %s", (oid or 0,)
        elif kind == ReindexObjectType.REINDEX_OBJECT_SCHEMA:
            where, args = " AND n.nspname = %s", (node.name,)
        return [f"INVALID index {name}, left by REINDEX CONCURRENTLY: drop it with DROP INDEX CONCURRENTLY IF "
                f"EXISTS {name};" for name in _names(conn.execute(_REINDEX_LEFT + where, args).fetchall())]
    if isinstance(node, ast.AlterTableStmt):
        found = []
        for command in node.cmds or ():
            if command.subtype == AlterTableType.AT_DetachPartition and getattr(command.def_, "concurrent", False):
                part = command.def_.name
                oid = _first_found(conn, candidates(part.schemaname, part.relname, path))
                for row in conn.execute(_PENDING_DETACH, (oid,)).fetchall() if oid else ():
                    parent, child = _names([row[:2], row[2:]])
                    found.append(f"partition {child} is pending detach from {parent}: finish it with ALTER TABLE "
                                 f"{parent} DETACH PARTITION {child} FINALIZE;")
        return found
    return []


def _first_found(conn: psycopg.Connection, names: list[str]) -> int | None:
    row = conn.execute(_FIRST_FOUND, (names,)).fetchone()
    return None if row is None else row[0]


def _names(rows: Sequence[Sequence[str]]) -> list[str]:
    return [f"{quote_identifier(schema)}.{quote_identifier(name)}" for schema, name in rows]


def partly_done(conn: psycopg.Connection, statements: Sequence[str], number: int) -> tuple[bool, str]:
    """After statement `number` of `statements` (a file, 1-based) failed: whether it may have committed part of
    its work, and what it left, in words for the failure's message ("" when nothing is named). A statement that
    commits in phases and left nothing committed none of them: it was atomic after all."""
    statement = statements[number - 1]
    if not commits_inside(statement):
        return False, ""
    left = leftovers(conn, statement, search_paths(statements)[number - 1])
    if left == ():
        return False, ""
    return True, "; it left " + "; ".join(left) if left else ""
