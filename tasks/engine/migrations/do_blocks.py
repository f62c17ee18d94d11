"""What a `DO` block runs, read with PL/pgSQL's own parser (pglast), so the questions asked of a migration's
statements (does it reach beyond the database?) are asked of the statements inside it too: the idiomatic
`DO $$ BEGIN IF NOT EXISTS (…) THEN CREATE ROLE app; END IF; END $$` creates a role as surely as a bare
`CREATE ROLE` does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import ast, parse_plpgsql, parse_sql
from pglast.parser import ParseError, scan


@dataclass(frozen=True)
class Inner:
    """A statement a DO block runs: `text` as written (`dynamic`: the text of an `EXECUTE`'s expression, whose
    SQL is known only when it runs; its string constants are what can be read of it)."""

    text: str
    dynamic: bool = False


@lru_cache(maxsize=1024)
def statements_in_do(statement: str) -> tuple[Inner, ...] | None:
    """The statements a PL/pgSQL `DO` block runs, in the order written; () when `statement` is no DO block, or
    one in another language; None when it cannot be read."""
    try:
        nodes = [raw.stmt for raw in parse_sql(statement)]
    except ParseError:
        return None
    found: list[Inner] = []
    for node in nodes:
        if not isinstance(node, ast.DoStmt):
            continue
        options = {option.defname: option.arg.sval for option in node.args or ()}
        if options.get("language", "plpgsql").lower() != "plpgsql" or "as" not in options:
            continue
        inner = _read(options["as"])
        if inner is None:
            return None
        found += inner
    return tuple(found)


def constants(expression: str) -> list[str]:
    """The string constants in an expression (`format('CREATE ROLE %I', name)`: "CREATE ROLE %I"), unquoted."""
    try:
        tokens = [expression[t.start:t.end + 1] for t in scan(expression) if t.name == "SCONST"]
    except ParseError:
        return [expression]
    values = []
    for literal in tokens:
        literal = literal.removeprefix("E").removeprefix("e")
        if literal.startswith("'"):
            values.append(literal[1:-1].replace("''", "'"))
        elif literal.startswith("$"):
            tag = literal[: literal.index("$", 1) + 1]
            values.append(literal[len(tag):-len(tag)])
    return values


def _read(body: str) -> list[Inner] | None:
    tag = "$rdsm$"
    while tag in body:
        tag = tag[:-1] + "_$"
    try:
        tree = parse_plpgsql(f"CREATE FUNCTION rdsm_do() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}")
    except ParseError:
        return None
    return list(_walk(tree))


def _walk(node: Any) -> Iterator[Inner]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "PLpgSQL_stmt_execsql":
                yield Inner(value["sqlstmt"]["PLpgSQL_expr"]["query"])
            elif key == "PLpgSQL_stmt_call":  # CALL, and a DO inside the DO
                yield Inner(value["expr"]["PLpgSQL_expr"]["query"])
            elif key in ("PLpgSQL_stmt_commit", "PLpgSQL_stmt_rollback"):  # allowed in a DO run on its own
                yield Inner(key.removeprefix("PLpgSQL_stmt_").upper())
            elif key == "PLpgSQL_stmt_dynexecute":
                yield Inner(value["query"]["PLpgSQL_expr"]["query"], dynamic=True)
            yield from _walk(value)
