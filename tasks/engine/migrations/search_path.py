"""Names as a migration's own statements found them: under the search_path its `SET search_path` statements set
before each one. The one lookup that leftovers.py and indexes.py both use, so that they stay in step: the
names the server would try, in order, and the first of them that exists."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg
from pglast import ast
from pglast.enums import VariableSetKind

from tasks.engine.migrations.sqltext import after_comments, quote_identifier
from tasks.engine.migrations.statements import parsed

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


# `found(key, relation)`: for each key, the first of its candidates that exists. A query puts it first in its WITH
# and takes lookup_arguments' two arrays first in its parameters.
FOUND = """found AS (
    SELECT DISTINCT ON (w.key) w.key, to_regclass(w.name)::oid AS relation
    FROM unnest(%s::int[], %s::text[]) WITH ORDINALITY AS w(key, name, rank)
    WHERE to_regclass(w.name) IS NOT NULL ORDER BY w.key, w.rank)"""


def lookup_arguments(wanted: Iterable[tuple[int, str | None, str, SearchPath]]) -> tuple[list[int], list[str]]:
    """FOUND's parameters for each (key, schema or None, name, search_path) wanted."""
    rows = [(key, each) for key, schema, name, path in wanted for each in candidates(schema, name, path)]
    return [key for key, _ in rows], [each for _, each in rows]


def first_found(conn: psycopg.Connection, schema: str | None, name: str, path: SearchPath) -> int | None:
    """The OID of the relation `name` names, found as the migration's statement found it; None when none is."""
    row = conn.execute(f"WITH {FOUND} SELECT relation FROM found", lookup_arguments([(0, schema, name, path)]))
    found = row.fetchone()
    return None if found is None else found[0]
