"""What a statement does, read with PostgreSQL's own parser (pglast), never with regular expressions.

Only the statements that can matter are parsed: their first keyword says whether they could end a
transaction, reach beyond the database, or break the session, so a 10 MB file of INSERTs costs nothing
here. A statement the parser cannot read is left to the server, which has the last word anyway.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pglast import ast, parse_sql
from pglast import parser as pg_parser
from pglast.enums import (
    AlterTableType,
    DiscardMode,
    ObjectType,
    ReindexObjectType,
    TransactionStmtKind,
    VariableSetKind,
)
from pglast.parser import ParseError

from tasks.engine.migrations.do_blocks import constants, statements_in_do
from tasks.engine.migrations.sqltext import after_comments, quote_identifier

# The first keywords of the statements each question is about.
_TRANSACTION_WORDS = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "PREPARE"}
_CLUSTER_WORDS = {"CREATE", "ALTER", "DROP", "GRANT", "REVOKE", "COMMENT", "SECURITY"}
# Every statement below names one of these keywords (PostgreSQL's lexer, not a text search), except role
# membership: `GRANT admin TO bob`. A statement that names none is not parsed (most DDL: CREATE TABLE, ...).
_CLUSTER_KEYWORDS = {"ROLE", "USER", "GROUP_P", "TABLESPACE", "DATABASE", "SYSTEM_P"}
_MEMBERSHIP_WORDS = {"GRANT", "REVOKE"}
# Each of those keywords as text (a keyword token is never made of other text): no match, no lexing.
_MAY_REACH_THE_SERVER = re.compile("|".join(sorted(word.removesuffix("_P") for word in _CLUSTER_KEYWORDS)),
                                   re.IGNORECASE)
_MAY_GRANT = re.compile("GRANT|REVOKE", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/\s:@']*:)[^/\s@']+@")  # scheme://user:password@host
_ANY_PASSWORD = re.compile(r"(password\s*=?\s*)('(?:[^']|'')*'?|\S+)", re.IGNORECASE)
_MAY_END = re.compile("COMMIT|ROLLBACK|CALL", re.IGNORECASE)  # every DO block that commits_inside names one
_SESSION_WORDS = {"DISCARD", "SELECT", "DO", "CALL", "PERFORM"}
# Statements PostgreSQL refuses inside a transaction block start with one of these words; those starting
# with CREATE, DROP or ALTER (most DDL) also name one of these keywords, and only those are parsed.
_NO_TRANSACTION_WORDS = {"CREATE", "DROP", "ALTER", "REINDEX", "VACUUM", "CLUSTER", "DISCARD"}
_NO_TRANSACTION_DDL_WORDS = {"CREATE", "DROP", "ALTER"}
_NO_TRANSACTION_KEYWORDS = {"CONCURRENTLY", "DATABASE", "SYSTEM_P", "TABLESPACE"}
_NO_TRANSACTION_STATEMENTS = {
    ast.CreatedbStmt: "CREATE DATABASE", ast.DropdbStmt: "DROP DATABASE", ast.AlterSystemStmt: "ALTER SYSTEM",
    ast.CreateTableSpaceStmt: "CREATE TABLESPACE", ast.DropTableSpaceStmt: "DROP TABLESPACE",
}
# Every statement refused_in_transaction finds holds one of these words (a text search, before a file is split).
_MAY_BE_REFUSED_IN_TRANSACTION = re.compile("|".join(sorted(
    {word.removesuffix("_P") for word in _NO_TRANSACTION_KEYWORDS} | (_NO_TRANSACTION_WORDS - _NO_TRANSACTION_DDL_WORDS)
)), re.IGNORECASE)
# REINDEX of more than one table at a time.
_REINDEX_MANY = (ReindexObjectType.REINDEX_OBJECT_SCHEMA, ReindexObjectType.REINDEX_OBJECT_DATABASE,
                 ReindexObjectType.REINDEX_OBJECT_SYSTEM)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
_ENDS_TRANSACTION = {
    TransactionStmtKind.TRANS_STMT_BEGIN: "BEGIN",
    TransactionStmtKind.TRANS_STMT_START: "START TRANSACTION",
    TransactionStmtKind.TRANS_STMT_COMMIT: "COMMIT",
    TransactionStmtKind.TRANS_STMT_ROLLBACK: "ROLLBACK",
    TransactionStmtKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
    TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
    TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
}
# Objects that belong to the whole server, not to one database.
_CLUSTER_OBJECTS = {ObjectType.OBJECT_DATABASE: "DATABASE", ObjectType.OBJECT_ROLE: "ROLE",
                    ObjectType.OBJECT_TABLESPACE: "TABLESPACE"}
_CLUSTER_STATEMENTS = {
    ast.CreateRoleStmt: "CREATE ROLE", ast.AlterRoleStmt: "ALTER ROLE", ast.AlterRoleSetStmt: "ALTER ROLE",
    ast.DropRoleStmt: "DROP ROLE", ast.GrantRoleStmt: "GRANT/REVOKE role membership",
    ast.CreateTableSpaceStmt: "CREATE TABLESPACE", ast.DropTableSpaceStmt: "DROP TABLESPACE",
    ast.AlterTableSpaceOptionsStmt: "ALTER TABLESPACE", ast.CreatedbStmt: "CREATE DATABASE",
    ast.DropdbStmt: "DROP DATABASE", ast.AlterDatabaseStmt: "ALTER DATABASE",
    ast.AlterDatabaseSetStmt: "ALTER DATABASE", ast.AlterSystemStmt: "ALTER SYSTEM",
}


def _first_word(statement: str) -> str:
    word = _FIRST_WORD.match(after_comments(statement))
    return word.group().upper() if word else ""


@lru_cache(maxsize=8192)
def parsed(statement: str) -> tuple[ast.Node, ...] | None:
    """The parse trees of `statement` (one per statement it holds), or None when pglast cannot read it."""
    try:
        return tuple(raw.stmt for raw in parse_sql(statement))
    except ParseError:
        return None


def ends_transaction(statement: str) -> str | None:
    """The transaction control in `statement` that would end or restart the migration's transaction
    (`COMMIT`, `END`, `ROLLBACK`, `ABORT`, with or without `AND CHAIN`, `PREPARE TRANSACTION`, `BEGIN`),
    as a word for messages; None otherwise. SAVEPOINT, RELEASE and ROLLBACK TO stay inside it."""
    if _first_word(statement) not in _TRANSACTION_WORDS:
        return None
    for node in parsed(statement) or ():
        if isinstance(node, ast.TransactionStmt) and node.kind in _ENDS_TRANSACTION:
            return _ENDS_TRANSACTION[node.kind]
    return None


# A migration holding a statement that starts with one of these is sent in a message of its own (together.py).
_ALONE_WORDS = _TRANSACTION_WORDS | {"DEALLOCATE", "DISCARD", "COPY", "RESET"}


def travels_alone(statement: str) -> bool:
    """Whether `statement` could change what the rest of a message of several migrations does: end or restart
    the transaction (validation refuses those it can read; these words are the guard behind it), drop the
    prepared history insert, talk COPY with the client, reset the settings the tool set for it (`RESET ALL`),
    or change the encoding the answers come back in. A false alarm costs only a round trip."""
    first = _first_word(statement)
    return first in _ALONE_WORDS or "client_encoding" in statement.lower() or (
        first == "SET" and _names_keyword(statement, {"NAMES"}))


def cluster_wide(statement: str) -> str | None:
    """What in `statement` changes the server rather than one database (roles, tablespaces, databases,
    server settings), as a few words for messages; None otherwise."""
    first = _first_word(statement)
    if first == "DO":
        return _cluster_wide_in_do(statement)
    # The lexer (a sixth of a parse's cost: 300 migrations' DDL is read before every rehearsal) looks for a
    # keyword every cluster-wide statement holds, but role membership; a text search first, which most DDL fails.
    if first not in _CLUSTER_WORDS or (first not in _MEMBERSHIP_WORDS and not (
            _MAY_REACH_THE_SERVER.search(statement) and _names_keyword(statement, _CLUSTER_KEYWORDS))):
        return None
    for node in parsed(statement) or ():
        for kind, words in _CLUSTER_STATEMENTS.items():
            if isinstance(node, kind):
                return words
        if isinstance(node, ast.RenameStmt) and node.renameType in _CLUSTER_OBJECTS:
            return f"ALTER {_CLUSTER_OBJECTS[node.renameType]} ... RENAME"
        if isinstance(node, ast.AlterOwnerStmt) and node.objectType in _CLUSTER_OBJECTS:
            return f"ALTER {_CLUSTER_OBJECTS[node.objectType]} ... OWNER"
        if isinstance(node, ast.CommentStmt | ast.SecLabelStmt) and node.objtype in _CLUSTER_OBJECTS:
            return f"COMMENT/SECURITY LABEL ON {_CLUSTER_OBJECTS[node.objtype]}"
    return None


def commits_inside(statement: str) -> bool:
    """Whether `statement`, run on its own, can commit part of its work before it fails: a CALL (a procedure may
    COMMIT), a DO block whose PL/pgSQL COMMITs or ROLLBACKs or CALLs, or one that cannot be read, or one that
    commits in phases (`commits_in_phases`). Any other single statement is atomic."""
    first = _first_word(statement)
    if first == "CALL" or commits_in_phases(statement):
        return True
    if first != "DO" or not _MAY_END.search(statement):
        return False
    inner = statements_in_do(statement)
    return inner is None or any(each.text in ("COMMIT", "ROLLBACK") or commits_inside(each.text) for each in inner)


def commits_in_phases(statement: str) -> bool:
    """Whether `statement` commits each phase of its work in a transaction of its own, so that a failure can
    leave the first phases done: `DROP INDEX CONCURRENTLY` (the index INVALID), `REINDEX ... CONCURRENTLY` (a
    `_ccnew` or `_ccold` index INVALID), `ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY` (the partition
    pending detach). `CREATE INDEX CONCURRENTLY` is not counted: its leftover is found by name (indexes.py)."""
    if _first_word(statement) not in _PHASED_WORDS or not _names_keyword(statement, {"CONCURRENTLY"}):
        return False
    refused = refused_in_transaction(statement) or ""
    return refused.endswith("CONCURRENTLY") and not refused.startswith("CREATE")


_PHASED_WORDS = {"DROP", "REINDEX", "ALTER"}


def _cluster_wide_in_do(statement: str) -> str | None:
    """cluster_wide of what a DO block runs: each statement it holds, and of an `EXECUTE`, the SQL its string
    constants spell (`format('CREATE ROLE %I', name)`), a role membership being a GRANT or REVOKE with no ON.
    A block that cannot be read is left to the server."""
    if not (_MAY_REACH_THE_SERVER.search(statement) or _MAY_GRANT.search(statement)):
        return None
    for inner in statements_in_do(statement) or ():
        if not inner.dynamic:
            words = cluster_wide(inner.text)
            if words:
                return f"{words} in a DO block"
            continue
        for value in constants(inner.text):
            first = _first_word(value)
            if first in _CLUSTER_WORDS and (_names_keyword(value, _CLUSTER_KEYWORDS) or (
                    first in _MEMBERSHIP_WORDS and not _names_keyword(value, {"ON"}))):
                return f"EXECUTE of {first} … in a DO block"
    return None


def refused_in_transaction(statement: str) -> str | None:
    """What in `statement` PostgreSQL refuses to run inside a transaction block (`CREATE INDEX CONCURRENTLY`,
    `DROP INDEX CONCURRENTLY`, `REINDEX ... CONCURRENTLY`, `REINDEX SCHEMA`/`DATABASE`/`SYSTEM`, `ALTER TABLE
    ... DETACH PARTITION ... CONCURRENTLY`, `VACUUM`, `CLUSTER` of every table, `DISCARD ALL`, `CREATE`/`DROP
    DATABASE`, `ALTER DATABASE ... SET TABLESPACE`, `CREATE`/`DROP TABLESPACE`, `ALTER SYSTEM`), as words for
    messages; None otherwise (`REFRESH MATERIALIZED VIEW CONCURRENTLY`, `ANALYZE` and `CLUSTER <table>` run in
    one). A statement the parser cannot read: None (the server refuses it anyway)."""
    first = _first_word(statement)
    if first not in _NO_TRANSACTION_WORDS or (
            first in _NO_TRANSACTION_DDL_WORDS and not _names_keyword(statement, _NO_TRANSACTION_KEYWORDS)):
        return None
    for node in parsed(statement) or ():
        for kind, words in _NO_TRANSACTION_STATEMENTS.items():
            if isinstance(node, kind):
                return words
        if isinstance(node, ast.IndexStmt) and node.concurrent:
            return "CREATE UNIQUE INDEX CONCURRENTLY" if node.unique else "CREATE INDEX CONCURRENTLY"
        if isinstance(node, ast.DropStmt) and node.concurrent:
            return "DROP INDEX CONCURRENTLY"
        if isinstance(node, ast.ReindexStmt):
            what = ReindexObjectType(node.kind).name.removeprefix("REINDEX_OBJECT_")
            options = [option.defname for option in node.params or () if isinstance(option, ast.DefElem)]
            if "concurrently" in options:
                return f"REINDEX {what} CONCURRENTLY"
            if node.kind in _REINDEX_MANY:
                return f"REINDEX {what}"
        if isinstance(node, ast.AlterDatabaseStmt) and any(
                isinstance(option, ast.DefElem) and option.defname == "tablespace" for option in node.options or ()):
            return "ALTER DATABASE ... SET TABLESPACE"
        if isinstance(node, ast.ClusterStmt) and node.relation is None:
            return "CLUSTER"
        if isinstance(node, ast.DiscardStmt) and node.target == DiscardMode.DISCARD_ALL:
            return "DISCARD ALL"
        if isinstance(node, ast.AlterTableStmt) and any(
                command.subtype == AlterTableType.AT_DetachPartition and getattr(command.def_, "concurrent", False)
                for command in node.cmds or ()):
            return "ALTER TABLE ... DETACH PARTITION CONCURRENTLY"
        if isinstance(node, ast.VacuumStmt) and node.is_vacuumcmd:
            return "VACUUM"
    return None


def may_be_refused_in_transaction(text: str) -> bool:
    """False when no statement of `text` (a whole file) can be one `refused_in_transaction` finds: a text
    search for the words they all hold, so that most files are never split."""
    return _MAY_BE_REFUSED_IN_TRANSACTION.search(text) is not None


def concurrent_index(statement: str) -> tuple[str, str] | None:
    """(index name, table) of a named `CREATE INDEX CONCURRENTLY`, else None. The name as the server stores it
    (unquoted names folded to lower case); the table quoted, schema-qualified when the statement qualifies it
    (the index is created in the table's schema). An unnamed index cannot be found again by name: None."""
    if _first_word(statement) != "CREATE" or not _names_keyword(statement, {"CONCURRENTLY"}):
        return None
    for node in parsed(statement) or ():
        if isinstance(node, ast.IndexStmt) and node.concurrent and node.idxname:
            relation = node.relation
            table = ".".join(quote_identifier(part) for part in (relation.schemaname, relation.relname) if part)
            return node.idxname, table
    return None


def _names_keyword(statement: str, keywords: set[str]) -> bool:
    """Whether PostgreSQL's lexer finds one of `keywords` (token names) in `statement`; unreadable: True (the
    parse decides)."""
    try:
        return any(token.name in keywords for token in pg_parser.scan(statement))
    except pg_parser.ParseError:
        return True


def without_passwords(statement: str) -> str:
    """`statement` as it may be shown: a password it spells (`CREATE ROLE … PASSWORD '…'`, a user mapping's
    `OPTIONS (password '…')`, a connection string's `password=…`) starred, read by PostgreSQL's lexer. Text the
    lexer cannot read (a quote left open) has every `password` followed by a value starred."""
    if "password" not in statement.lower() and not _URL_PASSWORD.search(statement):
        return statement
    try:
        tokens = [token for token in pg_parser.scan(statement) if token.name not in ("SQL_COMMENT", "C_COMMENT")]
    except pg_parser.ParseError:
        return _URL_PASSWORD.sub(r"\1**********@", _ANY_PASSWORD.sub(r"\1'**********'", statement))
    hidden, last = [], 0
    for before, token in zip([None, *tokens], tokens, strict=False):
        if token.name not in ("SCONST", "USCONST"):  # U&'…' too
            continue
        text = statement[token.start:token.end + 1]
        named = before is not None and (before.name == "PASSWORD" or (
            before.name == "IDENT" and statement[before.start:before.end + 1].lower().strip('"') == "password"))
        if named or "password" in text.lower() or _URL_PASSWORD.search(text):
            hidden += [statement[last:token.start], "'**********'"]
            last = token.end + 1
    return "".join([*hidden, statement[last:]])


def copies_with_the_client(statement: str) -> bool:
    """Whether `statement` is a COPY that talks to the client (`FROM STDIN`, `TO STDOUT`: psql's `\\copy`), which
    the tool can neither feed nor read. One the parser cannot read is judged by its keywords."""
    if _first_word(statement) != "COPY":
        return False
    nodes = parsed(statement)
    if nodes is None:
        return _names_keyword(statement, {"STDIN", "STDOUT"})
    return any(isinstance(node, ast.CopyStmt) and node.filename is None and not node.is_program for node in nodes)


def breaks_the_session(statement: str) -> str | None:
    """What in `statement` would undo the session the tool migrates in: `DISCARD ALL` and
    `pg_advisory_unlock_all()` release the migration lock. None otherwise (timeouts, role and search_path
    set by a migration are reset before the next one; the history insert is prepared again if dropped)."""
    if _first_word(statement) not in _SESSION_WORDS:
        return None
    for node in parsed(statement) or ():
        if isinstance(node, ast.DiscardStmt) and node.target == DiscardMode.DISCARD_ALL:
            return "DISCARD ALL releases the migration lock and resets the session"
        for inner in walk(node):
            unlocks = isinstance(inner, ast.FuncCall) and inner.funcname[-1].sval == "pg_advisory_unlock_all"
            # A DO block's body is text to this parser: look for the call in it.
            in_block = isinstance(inner, ast.DefElem) and inner.defname == "as" \
                and "pg_advisory_unlock_all" in str(getattr(inner.arg, "sval", "")).lower()
            if unlocks or (isinstance(node, ast.DoStmt) and in_block):
                return "pg_advisory_unlock_all() releases the migration lock"
    return None


def walk(node: object) -> list[object]:
    """Every node under `node`, itself included."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        if isinstance(current, tuple | list):
            stack.extend(current)
        elif isinstance(current, ast.Node):
            found.append(current)
            stack.extend(getattr(current, name) for name in current.__slots__)
    return found


def resets_all(statement: str) -> bool:
    """`RESET ALL`: every setting back to its default, the policy's timeouts included."""
    return any(isinstance(node, ast.VariableSetStmt) and node.kind == VariableSetKind.VAR_RESET_ALL
               for node in (parsed(statement) or ()) if _first_word(statement) == "RESET")


def created_tables(statement: str) -> set[str]:
    """The tables `statement` creates (`CREATE TABLE`, `CREATE TABLE ... AS`), as `schema.name` or `name`."""
    if _first_word(statement) != "CREATE":
        return set()
    found = set()
    for node in parsed(statement) or ():
        relation = node.relation if isinstance(node, ast.CreateStmt) else (
            node.into.rel if isinstance(node, ast.CreateTableAsStmt) else None)
        if relation is not None:
            found.add(_name(relation))
    return found


def named_schemas(statement: str) -> set[str]:
    """The schemas `statement` creates or drops (`CREATE SCHEMA`, `DROP SCHEMA`; `CREATE SCHEMA AUTHORIZATION
    joe` creates `joe`)."""
    if _first_word(statement) not in {"CREATE", "DROP"} or not _names_keyword(statement, {"SCHEMA"}):
        return set()
    found = set()
    for node in parsed(statement) or ():
        if isinstance(node, ast.CreateSchemaStmt):
            found.add(node.schemaname or (node.authrole.rolename if node.authrole else ""))
        elif isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_SCHEMA:
            found |= {name.sval for name in node.objects or () if isinstance(name, ast.String)}
    return found - {""}


def touched_table(statement: str) -> str | None:
    """The table an `ALTER TABLE`, `CREATE INDEX` or `VALIDATE`/`ADD CONSTRAINT` works on, as in
    `created_tables`; None for anything else."""
    if _first_word(statement) not in {"ALTER", "CREATE"}:
        return None
    for node in parsed(statement) or ():
        if isinstance(node, ast.AlterTableStmt | ast.IndexStmt) and node.relation is not None:
            return _name(node.relation)
    return None


def _name(relation: ast.RangeVar) -> str:
    return f"{relation.schemaname}.{relation.relname}" if relation.schemaname else relation.relname
