"""Whether a migration could tell that it shares a message, and so `now()`, with the migrations before it.

PostgreSQL stamps a transaction's start (`now()`, `current_timestamp`, `'now'::timestamptz`, a column's
`DEFAULT now()` filled in by an INSERT, a trigger's `now()`) with the arrival of the message that began it:
migrations sent in one message (together.py) all see the first one's time. A migration that reads the clock
only through what it runs may still go FIRST in a message (its time is then the time it would have had alone);
after another, only one that cannot read it at all: DDL whose expressions are stored, not evaluated.

Read with PostgreSQL's parser, and conservative: a statement of any kind not listed, one pglast cannot read, an
expression evaluated on existing rows (ALTER TABLE, an index, a partition bound) that calls any function or holds
a subquery, one that checks existing rows against constraints the table holds (VALIDATE CONSTRAINT, ALTER COLUMN
TYPE: a stored CHECK may call now()), or a date/time word the input functions turn into the current time ('now',
'today', ...: folded into a column default when the table is created), reads the clock. Data statements (INSERT,
UPDATE, DELETE, COPY, SELECT, DO, CALL) always do: a default or a trigger may call `now()` where the text shows
nothing.

Read from the parser's JSON (`parse_sql_json`), one pass a statement: building pglast's Python nodes for every
statement of a first run took longer than the walk itself (0.2 s of 300 migrations, in every new process).
A node the JSON names by its type wraps its fields (`{"FuncCall": {...}}`); a field typed as one kind of node
holds its fields bare (`"partbound": {...}`), and `_FIELD_TYPES`, read from pglast's own node definitions,
names those.
"""

from __future__ import annotations

import json
from functools import lru_cache

from pglast import ast
from pglast.parser import ParseError, parse_sql_json

from tasks.engine.migrations.catalog import Migration

# DDL that stores its expressions (a column default, a CHECK, a view, a function body, a policy) rather than
# evaluating them. ALTER TABLE and CREATE INDEX evaluate theirs on the rows already there: see _EVALUATED.
_STORES = frozenset({
    "CreateStmt", "IndexStmt", "AlterTableStmt", "CommentStmt", "CreateSeqStmt", "AlterSeqStmt", "ViewStmt",
    "CreateFunctionStmt", "AlterFunctionStmt", "CreateEnumStmt", "AlterEnumStmt", "CompositeTypeStmt",
    "CreateDomainStmt", "GrantStmt", "RenameStmt", "DropStmt", "CreateTrigStmt", "CreatePolicyStmt",
    "AlterPolicyStmt", "AlterOwnerStmt", "AlterObjectSchemaStmt", "CreateSchemaStmt",
    "AlterDefaultPrivilegesStmt"})
# Where an expression is evaluated when the statement runs: on the rows a table holds, or once (a bound).
_EVALUATED = frozenset({"AlterTableStmt", "IndexStmt", "PartitionBoundSpec"})
# What, inside an evaluated expression, may read the clock: any function (a user's may call now()), a time
# keyword (CURRENT_DATE, LOCALTIMESTAMP, ...: SQLValueFunction), a subquery.
_MAY_READ = frozenset({"FuncCall", "SQLValueFunction", "SubLink"})
# What checks the rows already there against constraints the table holds (a stored CHECK may call now()).
_CHECKS_STORED = frozenset({"AT_ValidateConstraint", "AT_AlterColumnType"})
# Date/time input words that mean the current time, read when the value is (a default's cast is folded at CREATE).
_NOW_WORDS = {"now", "today", "tomorrow", "yesterday"}


def _field_types() -> dict[tuple[str, str], str]:
    """(node type, field) -> the node type the field holds bare, for every field typed as one kind of node."""
    nodes = {name for name, kind in vars(ast).items() if isinstance(kind, type) and issubclass(kind, ast.Node)}
    found = {}
    for name in nodes:
        slots = vars(ast)[name].__slots__
        for field, info in (slots.items() if isinstance(slots, dict) else ()):  # Node's own slots: a tuple
            held = info.c_type.rstrip("*")
            if held in nodes and held not in ("Node", "Expr"):
                found[(name, field)] = held
    return found


_FIELD_TYPES = _field_types()


def reads_the_clock(migration: Migration) -> bool:
    """Whether `migration` could see, in what it does, that it shares its message's `now()` with those before it."""
    return any(statement_reads_the_clock(statement) for statement in migration.statements)


@lru_cache(maxsize=8192)
def statement_reads_the_clock(statement: str) -> bool:
    """`reads_the_clock` for one statement of a file (None of the parser: it cannot read it, so it may)."""
    try:
        statements = json.loads(parse_sql_json(statement)).get("stmts", [])
    except (ParseError, RecursionError):  # RecursionError: nested past json's 1,000 levels (`'a' || 'a' || ...`)
        return True
    for raw in statements:
        ((kind, fields),) = raw["stmt"].items()
        if kind not in _STORES or _reads(kind, fields):
            return True
    return False


def _reads(kind: str, fields: dict) -> bool:
    """Whether the statement `kind` holding `fields` evaluates something that may read the clock (one walk)."""
    stack: list[tuple[str | None, object, bool]] = [(kind, fields, False)]
    while stack:
        kind, value, evaluated = stack.pop()
        if isinstance(value, list):
            stack.extend((None, item, evaluated) for item in value)
        elif isinstance(value, dict):
            if kind is None:  # a node named by its type: {"FuncCall": {...}}
                stack.extend((name, inner, evaluated) for name, inner in value.items() if name[:1].isupper())
                continue
            if kind == "A_Const" and str(value.get("sval", {}).get("sval", "")).strip().lower() in _NOW_WORDS:
                return True
            if kind == "AlterTableCmd" and value.get("subtype") in _CHECKS_STORED:
                return True
            evaluated = evaluated or kind in _EVALUATED
            if evaluated and kind in _MAY_READ:
                return True
            stack.extend((_FIELD_TYPES.get((kind, name)), inner, evaluated) for name, inner in value.items())
    return False
