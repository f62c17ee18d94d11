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
"""

from __future__ import annotations

from functools import lru_cache

from pglast import ast
from pglast.enums import AlterTableType

from tasks.engine.migrations.catalog import Migration
from tasks.engine.migrations.statements import parsed, walk

# DDL that stores its expressions (a column default, a CHECK, a view, a function body, a policy) rather than
# evaluating them. ALTER TABLE and CREATE INDEX evaluate theirs on the rows already there: see _EVALUATED.
_STORES = (ast.CreateStmt, ast.IndexStmt, ast.AlterTableStmt, ast.CommentStmt, ast.CreateSeqStmt, ast.AlterSeqStmt,
           ast.ViewStmt, ast.CreateFunctionStmt, ast.AlterFunctionStmt, ast.CreateEnumStmt, ast.AlterEnumStmt,
           ast.CompositeTypeStmt, ast.CreateDomainStmt, ast.GrantStmt, ast.RenameStmt, ast.DropStmt,
           ast.CreateTrigStmt, ast.CreatePolicyStmt, ast.AlterPolicyStmt, ast.AlterOwnerStmt,
           ast.AlterObjectSchemaStmt, ast.CreateSchemaStmt, ast.AlterDefaultPrivilegesStmt)
# Where an expression is evaluated when the statement runs: on the rows a table holds, or once (a bound).
_EVALUATED = (ast.AlterTableStmt, ast.IndexStmt, ast.PartitionBoundSpec)
# What, inside an evaluated expression, may read the clock: any function (a user's may call now()), a time
# keyword (CURRENT_DATE, LOCALTIMESTAMP, ...: SQLValueFunction), a subquery.
_MAY_READ = (ast.FuncCall, ast.SQLValueFunction, ast.SubLink)
# What checks the rows already there against constraints the table holds (a stored CHECK may call now()).
_CHECKS_STORED = {AlterTableType.AT_ValidateConstraint, AlterTableType.AT_AlterColumnType}
# Date/time input words that mean the current time, read when the value is (a default's cast is folded at CREATE).
_NOW_WORDS = {"now", "today", "tomorrow", "yesterday"}


def reads_the_clock(migration: Migration) -> bool:
    """Whether `migration` could see, in what it does, that it shares its message's `now()` with those before it."""
    return any(statement_reads_the_clock(statement) for statement in migration.statements)


@lru_cache(maxsize=8192)
def statement_reads_the_clock(statement: str) -> bool:
    """`reads_the_clock` for one statement of a file."""
    nodes = parsed(statement)
    if not nodes:
        return nodes is None  # None: pglast cannot read it; (): only comments
    for node in nodes:
        if not isinstance(node, _STORES):
            return True
        for found in walk(node):
            if isinstance(found, ast.A_Const) and isinstance(found.val, ast.String) \
                    and found.val.sval.strip().lower() in _NOW_WORDS:
                return True
            if isinstance(found, _EVALUATED) and any(isinstance(inner, _MAY_READ) for inner in walk(found)):
                return True
            if isinstance(found, ast.AlterTableCmd) and found.subtype in _CHECKS_STORED:
                return True
    return False
