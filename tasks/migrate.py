"""migrate: apply pending migrations safely, keeping yoyo's history tables true.

What this engine does that yoyo 9 does not:
- one connection for the whole run, with `lock_timeout` and `statement_timeout` set from policy;
- a session-level advisory lock, polled with `pg_try_advisory_lock` outside any transaction, so a killed
  process never leaves a stale lock (the server releases it with the session);
- each transactional migration commits in ONE transaction with its yoyo history rows and its checksum row,
  sent as one message (BEGIN, its statements, the history rows, COMMIT); the server's answer to each
  statement still names the one that failed (`statement_timeout` applies per statement: PostgreSQL 13+);
- the content checksum of every applied migration is kept (`_rds_migrations_history`): an applied file that
  was edited, renamed or deleted is refused before anything runs;
- a lock timeout (SQLSTATE 55P03) rolls a transactional migration back and retries it, with backoff and
  jitter; a non-transactional migration is never retried;
- a non-transactional migration is marked dirty (`_rds_migrations_dirty`) before its first statement, and
  its record replaces the mark in one transaction after its last. A run that finds a mark refuses, explains
  what the migration left behind, and names the command that resolves it (`rds-migrations resolve`);
- an INVALID index left by a failed `CREATE INDEX CONCURRENTLY` of a pending migration is dropped and built
  again, or refused with the command that drops it, as the policy says (`invalid_index`).
"""

from __future__ import annotations

import logging
import random
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

import psycopg
from psycopg import generators, pq, sql
from yoyo.migrations import get_migration_hash

from tasks.catalog import Catalog, Migration, after_comments
from tasks.environments import Policy
from tasks.secrets import Connection, redact

logger = logging.getLogger(__name__)
Log = logging.Logger | logging.LoggerAdapter

# One key for every run of this tool on a database (advisory locks are scoped to the current database).
ADVISORY_LOCK_KEY = 0x52_44_53_4D_49_47_52_01  # "RDSMIGR\x01"
LOCK_POLL_SECONDS = 0.25
HISTORY_TABLE = "_rds_migrations_history"
DIRTY_TABLE = "_rds_migrations_dirty"

HISTORY_DDL = f"""
CREATE TABLE IF NOT EXISTS _yoyo_migration (
    migration_hash VARCHAR(64), migration_id VARCHAR(255), applied_at_utc TIMESTAMP,
    PRIMARY KEY (migration_hash));
CREATE TABLE IF NOT EXISTS _yoyo_log (
    id VARCHAR(36), migration_hash VARCHAR(64), migration_id VARCHAR(255), operation VARCHAR(10),
    username VARCHAR(255), hostname VARCHAR(255), comment VARCHAR(255), created_at_utc TIMESTAMP,
    PRIMARY KEY (id));
CREATE TABLE IF NOT EXISTS _yoyo_version (version INT NOT NULL PRIMARY KEY, installed_at_utc TIMESTAMP);
INSERT INTO _yoyo_version (version, installed_at_utc)
    VALUES (2, now() AT TIME ZONE 'utc') ON CONFLICT (version) DO NOTHING;
CREATE TABLE IF NOT EXISTS yoyo_lock (
    locked INT DEFAULT 1, ctime TIMESTAMP, pid INT NOT NULL, PRIMARY KEY (locked));
CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
    migration_id VARCHAR(255) PRIMARY KEY,
    checksum CHAR(64) NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    git_sha TEXT,
    flow_run_id TEXT,
    duration_ms INTEGER,
    transactional BOOLEAN NOT NULL DEFAULT true);
CREATE TABLE IF NOT EXISTS {DIRTY_TABLE} (
    migration_id VARCHAR(255) PRIMARY KEY,
    state TEXT NOT NULL,                         -- running | failed | recording
    statement_number INTEGER NOT NULL DEFAULT 0, -- the statement being run, 1-based
    statement_count INTEGER NOT NULL,
    checksum CHAR(64) NOT NULL,
    sqlstate TEXT,
    message TEXT,
    git_sha TEXT,
    flow_run_id TEXT,
    backend_pid INTEGER NOT NULL DEFAULT pg_backend_pid(),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
"""

# The yoyo rows and our checksum row, in one statement (one round trip, inside the migration's transaction).
RECORD_SQL = f"""
WITH migration AS (
    INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc)
    VALUES (%(hash)s, %(id)s, now() AT TIME ZONE 'utc') RETURNING 1
), log AS (
    INSERT INTO _yoyo_log (id, migration_hash, migration_id, operation, username, hostname, comment,
                           created_at_utc)
    VALUES (%(log_id)s, %(hash)s, %(id)s, %(operation)s, current_user, %(hostname)s, %(comment)s,
            now() AT TIME ZONE 'utc') RETURNING 1
)
INSERT INTO {HISTORY_TABLE} (migration_id, checksum, git_sha, flow_run_id, duration_ms, transactional)
VALUES (%(id)s, %(checksum)s, %(git_sha)s, %(run_id)s,
        COALESCE(%(duration_ms)s, (1000 * extract(epoch FROM clock_timestamp() - statement_timestamp()))::int),
        %(transactional)s)
ON CONFLICT (migration_id) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now(),
    git_sha = EXCLUDED.git_sha, flow_run_id = EXCLUDED.flow_run_id, duration_ms = EXCLUDED.duration_ms
"""

RECORD_PARAMETERS = ("hash", "id", "log_id", "operation", "hostname", "comment", "checksum", "git_sha", "run_id",
                     "duration_ms", "transactional")
# The same statement prepared once per apply session: a migration's message then carries only `EXECUTE` and
# the server skips parsing and planning the three inserts every time.
PREPARE_RECORD_SQL = "PREPARE rdsm_record AS " + RECORD_SQL % {
    name: f"${number}" for number, name in enumerate(RECORD_PARAMETERS, 1)}
EXECUTE_RECORD_SQL = "EXECUTE rdsm_record ({})".format(", ".join(f"%({name})s" for name in RECORD_PARAMETERS))

MARK_DIRTY_SQL = f"""
INSERT INTO {DIRTY_TABLE} (migration_id, state, statement_count, checksum, git_sha, flow_run_id)
VALUES (%(id)s, 'running', %(count)s, %(checksum)s, %(git_sha)s, %(run_id)s)
"""
PROGRESS_SQL = f"""
UPDATE {DIRTY_TABLE} SET state = %s, statement_number = %s, sqlstate = %s, message = %s, updated_at = now()
WHERE migration_id = %s
"""
CLEAR_DIRTY_SQL = f"DELETE FROM {DIRTY_TABLE} WHERE migration_id = %s"
# A mark whose session still holds the migration lock belongs to a run in progress, not to a dead one.
DIRTY_SQL = f"""
SELECT d.migration_id, d.state, d.statement_number, d.statement_count, d.checksum, d.sqlstate, d.message,
       d.flow_run_id, d.started_at
FROM {DIRTY_TABLE} d
WHERE NOT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.pid = d.backend_pid AND l.locktype = 'advisory' AND l.granted
      AND ((l.classid::bigint << 32) | l.objid::bigint) = %s)
ORDER BY d.started_at
"""

LOCK_NOT_AVAILABLE = "55P03"
FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
COPY_REFUSED = "a migration cannot COPY to or from the client (use INSERT, or COPY from a file on the server)"
PLAIN_ANSWERS = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY, FATAL_ERROR)
HOSTNAME = socket.gethostname()[:255]  # for yoyo's log rows: read once, not once per migration
PROGRESS_EVERY = 100  # runs with more pending migrations log a progress line every this many

# `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON [ONLY] [schema.]table`: the index is created in
# the table's schema. An unnamed index cannot be found again by name and is not handled.
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
CONCURRENT_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>{_IDENT})\s+"
    rf"ON\s+(?:ONLY\s+)?(?P<table>{_IDENT}(?:\s*\.\s*{_IDENT})?)",
    re.IGNORECASE,
)


# ---- typed values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirtyMigration:
    """A non-transactional migration that started and did not finish: its row in `_rds_migrations_dirty`."""

    migration_id: str
    state: str  # "running": the run died during it; "failed": a statement failed; "recording": ran, unrecorded
    statement_number: int  # the statement that was running or failed (1-based)
    statement_count: int
    checksum: str
    sqlstate: str | None = None
    message: str | None = None
    flow_run_id: str | None = None
    started_at: datetime | None = None

    def describe(self) -> str:
        k, n = self.statement_number, self.statement_count
        if self.state == "recording":
            what = f"all {n} statement(s) ran, but the run stopped before recording it"
        elif self.state == "failed":
            what = f"statement {k} of {n} failed (SQLSTATE {self.sqlstate}: {self.message}); {_applied_before(k)}"
        else:
            what = (f"the run stopped (process killed or connection lost) during statement {k} of {n}; "
                    f"{_applied_before(k)}, and statement {k} may or may not have completed")
        when = f"{self.started_at:%Y-%m-%d %H:%M:%S %Z}" if self.started_at else "an unknown time"
        return f"{self.migration_id} (non-transactional) is dirty: {what} (run {self.flow_run_id or '-'}, {when})"


def _applied_before(number: int) -> str:
    if number <= 1:
        return "no statement before it ran"
    return "statement 1 is applied" if number == 2 else f"statements 1-{number - 1} are applied"


def resolve_hint(migration_id: str, environment: str | None) -> str:
    """What an operator runs to get a dirty database going again (documented in RELIABILITY.md)."""
    where = f"--env {environment}" if environment else "--env NAME"
    return (
        f"see what it left with `rds-migrations resolve {where}`; then either finish it by hand and run "
        f"`rds-migrations resolve {where} {migration_id} --mark-applied`, or undo it by hand and run "
        f"`rds-migrations resolve {where} {migration_id} --mark-not-applied` (it then runs again)"
    )


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


@dataclass(frozen=True)
class History:
    """What the database says was applied: yoyo's ids, our checksums where we recorded them, dirty marks."""

    applied: tuple[str, ...] = ()
    checksums: dict[str, str] = field(default_factory=dict)
    dirty: tuple[DirtyMigration, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What would run, read-only. `problems` block any apply."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    problems: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()  # applied before checksums were kept (e.g. by plain yoyo)
    beyond_target: tuple[str, ...] = ()  # pending, but after the requested target
    invalid_indexes: tuple[InvalidIndex, ...] = ()  # dropped or refused by policy.invalid_index


@dataclass(frozen=True)
class AppliedMigration:
    id: str
    duration_seconds: float
    attempts: int = 1


@dataclass(frozen=True)
class MigrationFailure:
    migration_id: str
    statement: str
    sqlstate: str | None
    message: str
    transactional: bool
    attempts: int = 1
    statement_number: int = 0  # 1-based; 0 when not known (recording failed)
    statement_count: int = 0
    dirty: bool = False  # non-transactional and left partly applied: later runs refuse until resolved
    resolution: str = ""
    outcome_unknown: bool = False  # the session ended before the server said whether it committed

    def outcome(self) -> str:
        if self.outcome_unknown:
            return ("whether it committed is not known (the session ended first); the history tables, written in "
                    "the migration's own transaction, know: the next run's plan shows it applied or pending")
        if self.transactional and self.sqlstate == LOCK_NOT_AVAILABLE:
            return (f"rolled back: database unchanged, {self.attempts} attempts, each stopped by lock_timeout "
                    "behind another session's lock; find it with pg_blocking_pids() and run again")
        if self.transactional:
            return "rolled back: the database is as it was before this migration"
        if self.dirty and self.statement_number == 0:
            return "non-transactional: all its statements ran but it could not be recorded; the database is dirty"
        if self.dirty:
            return (f"non-transactional: {_applied_before(self.statement_number)}; the database is marked dirty "
                    "and later runs refuse until it is resolved")
        leftover = ""
        if concurrent_index(self.statement):
            leftover = ("; a failed CREATE INDEX CONCURRENTLY leaves an INVALID index, which the next run drops or "
                        "refuses (policy.invalid_index)")
        return f"non-transactional, so not retried: its first statement failed and nothing else ran{leftover}"

    def __str__(self) -> str:
        state = f"SQLSTATE {self.sqlstate}" if self.sqlstate else "no SQLSTATE"
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        which = f"statement {self.statement_number} of {self.statement_count}" if self.statement_number else "statement"
        text = (f"migration {self.migration_id} failed{tries} ({state}): {self.message}\n"
                f"  {which}: {_shorten(self.statement)}\n  {self.outcome()}")
        return text + (f"\n  to resolve: {self.resolution}" if self.resolution else "")


@dataclass(frozen=True)
class ApplyReport:
    applied: tuple[AppliedMigration, ...] = ()
    failed: MigrationFailure | None = None
    pending: tuple[str, ...] = ()
    duration_seconds: float = 0.0
    dry_run: bool = False

    @property
    def applied_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.applied)


class MigrationError(Exception):
    """The run stopped. Carries the report of what was applied, what failed and what is pending."""

    def __init__(self, message: str, report: ApplyReport) -> None:
        super().__init__(message)
        self.report = report


class HistoryMismatch(Exception):
    """The database's history does not match the files: nothing was applied."""


class DirtyDatabase(HistoryMismatch):
    """A non-transactional migration did not finish: nothing runs until an operator resolves it."""


class InvalidIndexFound(HistoryMismatch):
    """An INVALID index is in the way of a pending migration and the policy says refuse: nothing was applied."""

    def __init__(self, indexes: Iterable[InvalidIndex], reason: str = "policy.invalid_index is 'refuse'") -> None:
        self.indexes = tuple(indexes)
        lines = [f"{index}; drop it, then run again: {index.drop_command}" for index in self.indexes]
        super().__init__(
            "; ".join(lines) + f" ({reason}; with the index in place the migration would fail, or with IF NOT "
            "EXISTS be recorded while the index stays unusable; nothing was applied)"
        )


class LockTimeout(Exception):
    """Another run holds the migration lock."""


class ResolveError(Exception):
    """`rds-migrations resolve` was asked for something that is not so (not dirty, file changed or missing)."""


# ---- read-only: history and plan -------------------------------------------------------------------------


def read_history(conn: psycopg.Connection) -> History:
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(%s) AND pg_table_is_visible(c.oid)",
            (["_yoyo_migration", HISTORY_TABLE, DIRTY_TABLE],),
        )
    }
    if "_yoyo_migration" not in tables:
        return History()
    applied = tuple(
        row[0] for row in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc, migration_id")
    )
    checksums: dict[str, str] = {}
    if HISTORY_TABLE in tables:
        checksums = dict(conn.execute(f"SELECT migration_id, checksum FROM {HISTORY_TABLE}").fetchall())
    dirty: tuple[DirtyMigration, ...] = ()
    if DIRTY_TABLE in tables:
        dirty = tuple(DirtyMigration(*row) for row in conn.execute(DIRTY_SQL, (ADVISORY_LOCK_KEY,)))
    return History(applied, checksums, dirty)


def make_plan(catalog: Catalog, history: History, *, target: str | None = None,
              allow_out_of_order: bool = False, environment: str | None = None) -> Plan:
    """Compare files and history: what is pending, and what makes applying unsafe."""
    problems: list[str] = [
        f"{dirty.describe()}; nothing runs until it is resolved: {resolve_hint(dirty.migration_id, environment)}"
        for dirty in history.dirty
    ]
    unverified: list[str] = []
    applied = set(history.applied)
    # Lookup tables: Catalog.get and Catalog.ids.index scan the catalog, which is O(N^2) here at 1,000 applied.
    by_id = {m.id: m for m in catalog.migrations}
    position = {m.id: index for index, m in enumerate(catalog.migrations)}
    for migration_id in history.applied:
        migration = by_id.get(migration_id)
        if migration is None:
            problems.append(
                f"{migration_id}: applied to the database but missing from {catalog.directory.name}/ "
                "(deleted or renamed); restore the file under its original name"
            )
        elif migration_id not in history.checksums:
            unverified.append(migration_id)
        elif history.checksums[migration_id] != migration.checksum:
            problems.append(
                f"{migration.path.name}: edited after it was applied (checksum "
                f"{history.checksums[migration_id][:12]} applied, {migration.checksum[:12]} now); restore the "
                "applied version and put the change in a new migration"
            )
    pending = [m for m in catalog.migrations if m.id not in applied]
    known_applied = [position[i] for i in applied if i in position]
    if pending and known_applied and not allow_out_of_order:
        newest_applied = max(known_applied)
        for migration in pending:
            if position[migration.id] < newest_applied:
                problems.append(
                    f"{migration.path.name}: out of order: it sorts before migrations already applied; "
                    "renumber it after the newest applied migration (or set policy.allow_out_of_order)"
                )
    beyond: list[str] = []
    if target is not None:
        index = _target_index(catalog, target)
        if index is None:
            problems.append(f"target {target!r} names no migration (use a migration id or its version number)")
        else:
            beyond = [m.id for m in pending if position[m.id] > index]
            pending = [m for m in pending if position[m.id] <= index]
    return Plan(
        applied=history.applied,
        pending=tuple(m.id for m in pending),
        problems=tuple(problems),
        unverified=tuple(unverified),
        beyond_target=tuple(beyond),
    )


def _target_index(catalog: Catalog, target: str) -> int | None:
    for index, migration in enumerate(catalog.migrations):
        if target == migration.id or (target.isdigit() and int(target) == migration.version):
            return index
    return None


def plan(connection: Connection, catalog: Catalog, *, target: str | None = None,
         allow_out_of_order: bool = False, environment: str | None = None) -> Plan:
    """Read-only: connect, read the history, compare with the files. Takes no lock, writes nothing."""
    with _session(connection, read_only=True) as conn:
        current = make_plan(catalog, read_history(conn), target=target, allow_out_of_order=allow_out_of_order,
                            environment=environment)
        return replace(current, invalid_indexes=find_invalid_indexes(conn, catalog, current.pending))


# ---- non-transactional leftovers: INVALID indexes --------------------------------------------------------


def concurrent_index(statement: str) -> tuple[str, str] | None:
    """(index name, table as written) for a named `CREATE INDEX CONCURRENTLY`, else None."""
    match = CONCURRENT_INDEX.match(after_comments(statement))
    if match is None:
        return None
    name = match["name"]
    name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    return name, re.sub(r"\s*\.\s*", ".", match["table"])


def _index_state(conn: psycopg.Connection, statement: str) -> tuple[str, str, bool | None] | None:
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
            state = _index_state(conn, statement)
            if state is not None and state[2] is False:
                found.append(InvalidIndex(migration_id, state[0], state[1], concurrent_index(statement)[1]))  # type: ignore[index]
    return tuple(found)


def _handle_invalid_indexes(conn: psycopg.Connection, catalog: Catalog, pending: tuple[str, ...], policy: Policy,
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


# ---- non-transactional leftovers: dirty marks, reconcile, resolve ----------------------------------------


def explain_dirty(conn: psycopg.Connection, catalog: Catalog, dirty: DirtyMigration, environment: str | None,
                  *, with_hint: bool = True) -> str:
    """Reconcile instead of re-applying: what the mark says, each statement's fate, the indexes it names."""
    lines = [dirty.describe()]
    migration = catalog.get(dirty.migration_id)
    if migration is None:
        lines.append(f"  its file is not in {catalog.directory.name}/ any more: restore it to resolve this")
    else:
        if migration.checksum != dirty.checksum:
            lines.append("  its file changed since it ran: restore the version that ran to resolve this")
        for number, statement in enumerate(migration.statements, 1):
            if dirty.state == "recording" or number < dirty.statement_number:
                fate = "ran"
            elif number == dirty.statement_number:
                fate = "FAILED" if dirty.state == "failed" else "was running when the run stopped"
            else:
                fate = "not run"
            index = _index_state(conn, statement)
            note = ""
            if index is not None:
                valid = {True: "valid", False: "INVALID", None: "missing"}[index[2]]
                note = f" [index {quote_identifier(index[1])}: {valid}]"
            lines.append(f"  {number}. {fate}: {_shorten(statement, 120)}{note}")
    if with_hint:
        lines.append(f"  to resolve: {resolve_hint(dirty.migration_id, environment)}")
    return "\n".join(lines)


def explain_state(connection: Connection, catalog: Catalog, *, environment: str | None = None) -> tuple[bool, str]:
    """Read-only, for operators: (clean, explanation) of dirty marks and INVALID indexes in the way."""
    with _session(connection, read_only=True) as conn:
        history = read_history(conn)
        texts = [explain_dirty(conn, catalog, dirty, environment) for dirty in history.dirty]
        pending = make_plan(catalog, history).pending
        texts += [f"{index}: dropped on the next run by policy drop_and_retry, else drop it: {index.drop_command}"
                  for index in find_invalid_indexes(conn, catalog, pending)]
    if not texts:
        return True, f"{connection.describe()}: clean (no dirty migration, no INVALID index in the way)"
    return not history.dirty, "\n".join(texts)


def resolve_dirty(connection: Connection, catalog: Catalog, migration_id: str, *, mark_applied: bool,
                  policy: Policy, log: Log = logger) -> str:
    """An operator finished (`mark_applied`) or undid a dirty migration by hand: record that, under the lock."""
    with _session(connection, policy=policy, application_name="rds-migrations resolve") as conn, \
            migration_lock(conn, policy.migration_lock_wait_seconds):
        conn.execute(HISTORY_DDL)
        dirty = {d.migration_id: d for d in read_history(conn).dirty}
        if migration_id not in dirty:
            others = f" (dirty: {', '.join(dirty)})" if dirty else " (nothing is dirty)"
            raise ResolveError(f"{migration_id} is not marked dirty on {connection.describe()}{others}")
        migration = catalog.get(migration_id)
        if mark_applied:
            if migration is None:
                raise ResolveError(f"{migration_id}: its file is not in {catalog.directory.name}/; restore it first "
                                   "(its checksum is recorded with it)")
            if migration.checksum != dirty[migration_id].checksum:
                raise ResolveError(f"{migration.path.name} changed since it ran; restore the version that ran first")
            with conn.transaction():
                _record(conn, migration, "resolved", None, time.monotonic(), operation="mark",
                        comment="rds-migrations resolve --mark-applied")
                conn.execute(CLEAR_DIRTY_SQL, (migration_id,))
            outcome = f"{migration_id} is recorded as applied and no longer dirty"
        else:
            with conn.transaction():
                conn.execute(CLEAR_DIRTY_SQL, (migration_id,))
                conn.execute(
                    "INSERT INTO _yoyo_log (id, migration_hash, migration_id, operation, username, hostname, "
                    "comment, created_at_utc) VALUES (%s, %s, %s, 'unmark', current_user, %s, "
                    "'rds-migrations resolve --mark-not-applied', now() AT TIME ZONE 'utc')",
                    (str(uuid.uuid1()), get_migration_hash(migration_id), migration_id, HOSTNAME),
                )
            outcome = f"{migration_id} is no longer dirty and is pending again: the next run applies it"
    log.warning("Resolved by an operator: %s", outcome)
    return outcome


# ---- the apply loop --------------------------------------------------------------------------------------


@contextmanager
def _session(connection: Connection, *, read_only: bool = False, policy: Policy | None = None,
             application_name: str = "rds-migrations") -> Iterator[psycopg.Connection]:
    conn = connection.connect(autocommit=True, application_name=application_name[:63])
    try:
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
        if policy is not None:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{policy.lock_timeout_ms}ms")))
            conn.execute(
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{policy.statement_timeout_ms}ms"))
            )
        yield conn
    finally:
        conn.close()


@contextmanager
def migration_lock(conn: psycopg.Connection, wait_seconds: float) -> Iterator[None]:
    """Session-level advisory lock, polled outside any transaction; the server frees it if we die."""
    deadline = time.monotonic() + wait_seconds
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()[0]:
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"another migration run holds the lock on this database ({lock_holder(conn)}); "
                f"waited {wait_seconds:g}s. It will be released when that run ends."
            )
        time.sleep(LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def lock_holder(conn: psycopg.Connection) -> str:
    row = conn.execute(
        """
        SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
            SELECT oid FROM pg_database WHERE datname = current_database())
          AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
        """,
        (ADVISORY_LOCK_KEY,),
    ).fetchone()
    if row is None:
        return "holder unknown"
    pid, application, client, started = row
    where = client or "local socket"
    return f"locked by {application or 'an unnamed session'} (pid {pid}, from {where}, since {started:%H:%M:%S})"


def apply_pending(
    connection: Connection,
    catalog: Catalog,
    policy: Policy,
    *,
    target: str | None = None,
    git_sha: str = "unknown",
    run_id: str | None = None,
    environment: str | None = None,
    log: Log = logger,
) -> ApplyReport:
    """Apply what is pending, one migration at a time. Raises `MigrationError` with the report on failure,
    `HistoryMismatch` (or `DirtyDatabase`, `InvalidIndexFound`) before applying anything when it is unsafe."""
    started = time.monotonic()
    application = f"rds-migrations run {run_id}" if run_id else "rds-migrations"
    password = connection.password.get_secret_value()
    with _session(connection, policy=policy, application_name=application) as conn:
        with migration_lock(conn, policy.migration_lock_wait_seconds):
            conn.execute(HISTORY_DDL)
            conn.execute(PREPARE_RECORD_SQL)
            # Planned again under the lock: another run may have applied migrations meanwhile.
            history = read_history(conn)
            if history.dirty:
                raise DirtyDatabase("\n".join(
                    explain_dirty(conn, catalog, dirty, environment) for dirty in history.dirty
                ) + "\nnothing was applied")
            current = make_plan(catalog, history, target=target, allow_out_of_order=policy.allow_out_of_order,
                                environment=environment)
            if current.problems:
                raise HistoryMismatch("; ".join(current.problems))
            _handle_invalid_indexes(conn, catalog, current.pending, policy, log)
            _record_unverified(conn, catalog, current.unverified, log)
            applied: list[AppliedMigration] = []
            by_id = {m.id: m for m in catalog.migrations}
            count = len(current.pending)
            for position, migration_id in enumerate(current.pending):
                migration = by_id[migration_id]
                # A run-logger line costs ~1.5 ms in a flow (API + console): one per migration in an ordinary
                # run, a progress line per PROGRESS_EVERY in a large one (1,000 pending: 11 lines, not 1,000).
                if count <= PROGRESS_EVERY or position % PROGRESS_EVERY == 0 or position == count - 1:
                    log.info("Applying %s (%d of %d)", migration.id, position + 1, count)
                outcome = _apply_one(conn, migration, policy, git_sha=git_sha, run_id=run_id, log=log)
                if isinstance(outcome, MigrationFailure):
                    resolution = resolve_hint(migration.id, environment) if outcome.dirty else ""
                    outcome = _redacted(replace(outcome, resolution=resolution), password)
                    report = ApplyReport(
                        applied=tuple(applied),
                        failed=outcome,
                        pending=current.pending[position:] + current.beyond_target,
                        duration_seconds=time.monotonic() - started,
                    )
                    raise MigrationError(str(outcome), report)
                applied.append(outcome)
    return ApplyReport(
        applied=tuple(applied),
        pending=current.beyond_target,
        duration_seconds=time.monotonic() - started,
    )


def _apply_one(conn: psycopg.Connection, migration: Migration, policy: Policy, *, git_sha: str,
               run_id: str | None, log: Log) -> AppliedMigration | MigrationFailure:
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        failure = (_run_transactional if migration.transactional else _run_alone)(
            conn, migration, git_sha=git_sha, run_id=run_id, started=started
        )
        if failure is None:
            return AppliedMigration(migration.id, time.monotonic() - started, attempts)
        # Only a transaction that was rolled back is known to have changed nothing: never retry anything else.
        retryable = migration.transactional and failure.sqlstate == LOCK_NOT_AVAILABLE
        if not retryable or attempts > policy.lock_timeout_retries:
            return replace(failure, attempts=attempts)
        delay = min(policy.lock_retry_max_delay_seconds, policy.lock_retry_base_delay_seconds * 2 ** (attempts - 1))
        delay *= random.uniform(0.5, 1.5)  # jitter: concurrent retries do not line up behind the same lock
        log.warning(
            "%s: lock_timeout (%d ms) hit waiting for a lock; rolled back, retry %d of %d in %.1fs",
            migration.id, policy.lock_timeout_ms, attempts, policy.lock_timeout_retries, delay,
        )
        time.sleep(delay)


def _run_transactional(conn: psycopg.Connection, migration: Migration, *, git_sha: str, run_id: str | None,
                       started: float) -> MigrationFailure | None:
    """BEGIN, the statements, the history rows and COMMIT in ONE simple-query message: one round trip and one
    call into psycopg (Python's cost per call, not the server, is what kept us above psql). The server answers
    each statement in turn and stops at the first error, so the answers say which statement failed."""
    if conn.info.server_version < 130000 or read_differently_as_one(migration):
        return _run_statement_by_statement(conn, migration, git_sha=git_sha, run_id=run_id, started=started)
    with psycopg.ClientCursor(conn) as cursor:
        record = cursor.mogrify(EXECUTE_RECORD_SQL, _record_params(migration, git_sha, run_id, duration_ms=None))
    script = Script.build(migration, record)
    answers: list[pq.PGresult] = []
    try:
        _exchange(conn, script.text, answers)
    except psycopg.Error as exc:
        # The connection is gone without a word from the server. Its answers are sent in batches, so those read
        # so far say only that at least that many statements had run: which one was running is not known.
        confirmed = min(max(len(answers) - 1, 0), len(script.answered))
        return replace(_failure(migration, f"(not known: the connection was lost after the server had confirmed "
                                           f"{confirmed} statement(s))", exc, 0), outcome_unknown=True)
    except BaseException:  # Ctrl-C, SystemExit: stop the statement and end the session, which rolls back
        _abandon(conn)     # the migration and frees the migration lock at once
        raise
    failed = next((i for i, answer in enumerate(answers) if answer.status == FATAL_ERROR), None)
    if failed == 0 and not conn.closed:
        # Refused before BEGIN ran, so nothing ran: the server could not read the message as a whole (a quote
        # or comment left open, a setting that changes how later text reads). Statement by statement, as
        # written, each one passes or fails on its own and the failing one is named exactly.
        return _run_statement_by_statement(conn, migration, git_sha=git_sha, run_id=run_id, started=started)
    if failed is not None and any(answer.command_status == b"COMMIT" for answer in answers[:failed]):
        return None  # committed, with its history rows, before the server ended the session
    if failed is not None:
        exc = psycopg.errors.error_from_result(answers[failed], encoding=conn.info.encoding)
        _roll_back_quietly(conn)
        number, statement = script.locate(failed, answers)
        return _failure(migration, statement, exc, number)
    if not answers or answers[-1].status != pq.ExecStatus.COMMAND_OK or answers[-1].command_status != b"COMMIT" \
            or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        # COPY to the client (refused by validation): the server goes on without us and may commit; the
        # session is mid-protocol, so end it.
        number, statement = script.locate(len(answers) - 1, answers)
        conn.close()
        return MigrationFailure(
            migration_id=migration.id, statement=statement, sqlstate=None, transactional=True,
            message=COPY_REFUSED, statement_number=number, statement_count=len(migration.statements),
            outcome_unknown=True,
        )
    return None


def _exchange(conn: psycopg.Connection, text: str, answers: list[pq.PGresult]) -> None:
    """Send `text` as one message and collect the server's answers into `answers` as they arrive, so that they
    are there when the connection drops halfway. Stops at an answer that needs more than reading (COPY)."""
    with conn.lock:
        conn.pgconn.send_query(text.encode(conn.info.encoding))
        conn.wait(generators.send(conn.pgconn))
        while True:
            try:
                answer = conn.wait(generators.fetch(conn.pgconn))
            except psycopg.Error:
                if any(a.status == FATAL_ERROR for a in answers):
                    return  # the server said why before it closed the connection (as psycopg's fetch_many does)
                raise
            if answer is None:
                return
            if answer.status == pq.ExecStatus.COPY_IN:  # no data to send: fail the COPY, which aborts the rest
                while conn.pgconn.put_copy_end(COPY_REFUSED.encode()) == 0:
                    conn.wait(generators.send(conn.pgconn))
                conn.wait(generators.send(conn.pgconn))
                continue
            answers.append(answer)
            if answer.status not in PLAIN_ANSWERS:
                return


def _abandon(conn: psycopg.Connection) -> None:
    try:
        conn.cancel_safe(timeout=5)  # else the server notices the closed session only when the statement ends
    except Exception:  # noqa: BLE001 - closing is what matters
        pass
    conn.close()


def _roll_back_quietly(conn: psycopg.Connection) -> None:
    if conn.info.transaction_status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
        _quietly(conn, "ROLLBACK", ())  # if the connection is gone, the server rolls back with the session


def _run_statement_by_statement(conn: psycopg.Connection, migration: Migration, *, git_sha: str,
                                run_id: str | None, started: float) -> MigrationFailure | None:
    """One call per statement, in one transaction with the history rows."""
    statement, number = "", 0
    try:
        with conn.transaction():
            for number, statement in enumerate(migration.statements, 1):  # noqa: B007 - reported on failure
                conn.execute(statement, prepare=False)
            _record(conn, migration, git_sha, run_id, started)
    except psycopg.Error as exc:
        return _failure(migration, statement, exc, number)
    return None


def read_differently_as_one(migration: Migration) -> bool:
    """Whether the server could read this migration differently as one message than statement by statement:
    `standard_conforming_strings` set inside it (the whole message is read before the SET runs), or a `\\'`
    (yoyo's splitter reads it as an escaped quote, PostgreSQL does not, so the two may split differently)."""
    return any("\\'" in statement or "standard_conforming_strings" in statement.lower()
               for statement in migration.statements)


@dataclass(frozen=True)
class Script:
    """A transactional migration as one message: BEGIN, the statements, the history rows, COMMIT."""

    text: str
    statements: tuple[str, ...]
    answered: tuple[int, ...]  # the numbers (1-based) of the statements the server answers: not comment-only

    @classmethod
    def build(cls, migration: Migration, record: str) -> Script:
        # The newline before each `;`: a statement ending in a -- comment must not swallow the separator.
        text = "".join(["BEGIN;\n", *(f"{statement}\n;\n" for statement in migration.statements), record, ";\nCOMMIT"])
        answered = tuple(n for n, statement in enumerate(migration.statements, 1) if not comment_only(statement))
        return cls(text, migration.statements, answered)

    def locate(self, index: int, answers: list[pq.PGresult]) -> tuple[int, str]:
        """(statement number, statement) of the `index`-th answer; (0, what it is) outside the statements.

        Trusted only when every answer before it has the command tag its statement implies: yoyo's splitter and
        the server can disagree on where a statement ends (sqlparse reads `\\'` as an escaped quote, PostgreSQL
        does not), and then counting would name the wrong statement."""
        expected = [self.statements[number - 1] for number in self.answered] + ["INSERT"]  # the history rows
        if index > len(expected) + 1 or not all(
                command_tag_fits(expected[i - 1], answers[i].command_status or b"") for i in range(1, index)):
            return 0, ("(not known exactly: the server split this file into statements differently from yoyo; "
                       "the error message says what failed)")
        if index <= 0:
            return 0, "(not started: the session ended before the migration began)"
        if index <= len(self.answered):
            number = self.answered[index - 1]
            return number, self.statements[number - 1]
        return 0, "(recording it in the history tables)" if index == len(self.answered) + 1 else "COMMIT"


# Statements whose first keyword is the first word of the command tag the server answers them with. Others
# (WITH, VALUES, TABLE, EXECUTE, ...) are not checked; CREATE … AS answers SELECT.
_TAGGED = {"ALTER", "ANALYZE", "CALL", "CLUSTER", "COMMENT", "CREATE", "DELETE", "DO", "DROP", "GRANT", "INSERT",
           "LOCK", "MERGE", "REFRESH", "REINDEX", "RESET", "REVOKE", "SECURITY", "SELECT", "SET", "TRUNCATE",
           "UPDATE"}
_KEYWORD = re.compile(r"[A-Za-z]+")


def command_tag_fits(statement: str, tag: bytes) -> bool:
    keyword = _KEYWORD.match(after_comments(statement))
    word = keyword.group().upper() if keyword else ""
    if word not in _TAGGED:
        return True
    answered = tag.split(b" ", 1)[0].decode("ascii", "replace")
    return answered == word or (word == "CREATE" and answered == "SELECT")


def _run_alone(conn: psycopg.Connection, migration: Migration, *, git_sha: str, run_id: str | None,
               started: float) -> MigrationFailure | None:
    """Statement by statement outside a transaction, under a dirty mark that the record replaces."""
    password = conn.info.password or ""
    conn.execute(MARK_DIRTY_SQL, {"id": migration.id, "count": len(migration.statements),
                                  "checksum": migration.checksum, "git_sha": git_sha, "run_id": run_id})
    statement, number = "", 0
    try:
        for number, statement in enumerate(migration.statements, 1):
            conn.execute(PROGRESS_SQL, ("running", number, None, None, migration.id))
            conn.execute(statement, prepare=False)
    except psycopg.Error as exc:
        failure = _failure(migration, statement, exc, number)
        if number == 1 and not conn.broken:
            # One statement is atomic and nothing ran before it: the mark goes (an INVALID index that a
            # CONCURRENTLY build leaves is found by name on the next run).
            _quietly(conn, CLEAR_DIRTY_SQL, (migration.id,))
            return failure
        # A lost connection leaves the mark "running": the next run says the run stopped during it.
        message = redact(failure.message, password)[:2000]  # the mark is read by later runs
        _quietly(conn, PROGRESS_SQL, ("failed", number, failure.sqlstate, message, migration.id))
        return replace(failure, dirty=True)
    try:
        conn.execute(PROGRESS_SQL, ("recording", len(migration.statements), None, None, migration.id))
        with conn.transaction():
            _record(conn, migration, git_sha, run_id, started)
            conn.execute(CLEAR_DIRTY_SQL, (migration.id,))
    except psycopg.Error as exc:
        return replace(_failure(migration, "(recording it in the history tables)", exc, 0), dirty=True)
    return None


def comment_only(statement: str) -> bool:
    """True when PostgreSQL finds no statement in `statement` (whitespace, comments, semicolons): the server
    sends no answer for it inside a message of several statements."""
    return not after_comments(statement)


def _quietly(conn: psycopg.Connection, query: str, params: tuple) -> None:
    try:
        conn.execute(query, params)
    except psycopg.Error:
        pass  # the connection is gone: a dirty mark stays (the next run explains it), a transaction rolls back


def _record(conn: psycopg.Connection, migration: Migration, git_sha: str, run_id: str | None,
            started: float, *, operation: str = "apply", comment: str | None = None) -> None:
    conn.execute(RECORD_SQL, _record_params(migration, git_sha, run_id, operation=operation, comment=comment,
                                            duration_ms=int((time.monotonic() - started) * 1000)))


def _record_params(migration: Migration, git_sha: str, run_id: str | None, *, duration_ms: int | None,
                   operation: str = "apply", comment: str | None = None) -> dict[str, object]:
    """RECORD_SQL's parameters. `duration_ms=None`: measured by the server, from the message's arrival."""
    return {
        "hash": get_migration_hash(migration.id),
        "id": migration.id,
        "log_id": str(uuid.uuid1()),
        "operation": operation,
        "hostname": HOSTNAME,
        "comment": (comment or f"rds-migrations git_sha={git_sha} run={run_id or '-'}")[:255],
        "checksum": migration.checksum,
        "git_sha": git_sha,
        "run_id": run_id,
        "duration_ms": duration_ms,
        "transactional": migration.transactional,
    }


def _record_unverified(conn: psycopg.Connection, catalog: Catalog, ids: tuple[str, ...], log: Log) -> None:
    """Migrations applied before checksums were kept (plain yoyo): adopt the current file's checksum."""
    for migration_id in ids:
        migration = catalog.get(migration_id)
        assert migration is not None
        log.warning("%s: applied without a checksum (by plain yoyo?); recording the current file's", migration_id)
        conn.execute(
            f"INSERT INTO {HISTORY_TABLE} (migration_id, checksum, transactional, git_sha) "
            "VALUES (%s, %s, %s, 'adopted') ON CONFLICT (migration_id) DO NOTHING",
            (migration.id, migration.checksum, migration.transactional),
        )


def _failure(migration: Migration, statement: str, exc: psycopg.Error, number: int) -> MigrationFailure:
    message = (exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc)).strip()
    if exc.diag and exc.diag.message_detail:
        message += f" ({exc.diag.message_detail.strip()})"
    return MigrationFailure(
        migration_id=migration.id,
        statement=statement,
        sqlstate=exc.sqlstate,
        message=message,
        transactional=migration.transactional,
        statement_number=number,
        statement_count=len(migration.statements),
    )


def _redacted(failure: MigrationFailure, password: str) -> MigrationFailure:
    return replace(failure, statement=redact(failure.statement, password), message=redact(failure.message, password))


def _shorten(statement: str, limit: int = 300) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ---- rollback (rehearsals; operators) --------------------------------------------------------------------

UNRECORD_SQL = f"""
WITH migration AS (
    DELETE FROM _yoyo_migration WHERE migration_hash = %(hash)s RETURNING 1
), log AS (
    INSERT INTO _yoyo_log (id, migration_hash, migration_id, operation, username, hostname, comment,
                           created_at_utc)
    VALUES (%(log_id)s, %(hash)s, %(id)s, 'rollback', current_user, %(hostname)s, 'rds-migrations',
            now() AT TIME ZONE 'utc') RETURNING 1
)
DELETE FROM {HISTORY_TABLE} WHERE migration_id = %(id)s
"""


def roll_back(connection: Connection, migration: Migration, policy: Policy) -> None:
    """Run a migration's rollback file and remove it from the history, in one transaction where it can."""
    if migration.rollback_statements is None:
        raise ValueError(f"{migration.id} has no rollback file")
    params = {"hash": get_migration_hash(migration.id), "id": migration.id, "log_id": str(uuid.uuid1()),
              "hostname": HOSTNAME}
    with _session(connection, policy=policy) as conn, migration_lock(conn, policy.migration_lock_wait_seconds):
        statement, number = "", 0
        try:
            with conn.transaction() if migration.transactional else _no_transaction():
                for number, statement in enumerate(migration.rollback_statements, 1):  # noqa: B007
                    conn.execute(statement, prepare=False)
                if migration.transactional:
                    conn.execute(UNRECORD_SQL, params)
        except psycopg.Error as exc:
            failure = _failure(migration, statement, exc, number)
            raise MigrationError(f"rollback of {failure}", ApplyReport(failed=failure)) from None
        if not migration.transactional:
            with conn.transaction():
                conn.execute(UNRECORD_SQL, params)


@contextmanager
def _no_transaction() -> Iterator[None]:
    yield


# ---- the Prefect task ------------------------------------------------------------------------------------

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.transient import transient_retries  # noqa: E402


@task(
    name="migrate",
    **transient_retries(retries=2, backoff_factor=5),
    persist_result=False,
    cache_policy=NO_CACHE,
)
def migrate(connection: Connection, catalog: Catalog, policy: Policy, *, target: str | None = None,
            git_sha: str = "unknown", run_id: str | None = None, environment: str | None = None) -> ApplyReport:
    """Apply the pending migrations under the migration lock.

    Example:
        report = migrate(connection, catalog, environment.policy, git_sha="1a2b3c4", environment="production")
    """
    log = get_run_logger()
    report = apply_pending(connection, catalog, policy, target=target, git_sha=git_sha, run_id=run_id,
                           environment=environment, log=log)
    log.info("Applied %d migration(s) in %.1fs", len(report.applied), report.duration_seconds)
    return report
