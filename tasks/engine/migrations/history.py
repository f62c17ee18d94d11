"""History: the ONLY code that reads or writes the tool's tables and yoyo's (through a `Ledger`).

yoyo's tables are kept true (`_yoyo_migration`, `_yoyo_log`, `_yoyo_version`, `yoyo_lock`), so `yoyo list`
still tells the truth, and two of our own sit beside them:
- `_rds_migrations_history`: the content checksum of every applied migration, with the git SHA, the flow run
  and the duration; an applied file that was edited, renamed or deleted is refused before anything runs;
- `_rds_migrations_dirty`: a mark written before a non-transactional migration's first statement and
  replaced by its record, in one transaction, after its last. A run that finds a mark refuses and says how
  to resolve it.

Every statement names the tables with their schema (found once per session: where yoyo's table already is,
else the session's current schema), so a migration that changes `search_path` or the role cannot make
history be written elsewhere or not at all. A transactional migration is recorded inside its own
transaction (see execute.py), so it is never applied but unrecorded, nor recorded but not applied.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import ClientCursor, sql
from yoyo.migrations import get_migration_hash

from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.session import ADVISORY_LOCK_KEY

TABLES = {"migration": "_yoyo_migration", "log": "_yoyo_log", "version": "_yoyo_version", "lock": "yoyo_lock",
          "history": "_rds_migrations_history", "dirty": "_rds_migrations_dirty"}
HISTORY_TABLE, DIRTY_TABLE = TABLES["history"], TABLES["dirty"]

HOSTNAME = socket.gethostname()[:255]  # for yoyo's log rows: read once, not once per migration

HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS {migration} (
    migration_hash VARCHAR(64), migration_id VARCHAR(255), applied_at_utc TIMESTAMP,
    PRIMARY KEY (migration_hash));
CREATE TABLE IF NOT EXISTS {log} (
    id VARCHAR(36), migration_hash VARCHAR(64), migration_id VARCHAR(255), operation VARCHAR(10),
    username VARCHAR(255), hostname VARCHAR(255), comment VARCHAR(255), created_at_utc TIMESTAMP,
    PRIMARY KEY (id));
CREATE TABLE IF NOT EXISTS {version} (version INT NOT NULL PRIMARY KEY, installed_at_utc TIMESTAMP);
INSERT INTO {version} (version, installed_at_utc)
    VALUES (2, now() AT TIME ZONE 'utc') ON CONFLICT (version) DO NOTHING;
CREATE TABLE IF NOT EXISTS {lock} (
    locked INT DEFAULT 1, ctime TIMESTAMP, pid INT NOT NULL, PRIMARY KEY (locked));
CREATE TABLE IF NOT EXISTS {history} (
    migration_id VARCHAR(255) PRIMARY KEY,
    checksum CHAR(64) NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    git_sha TEXT,
    flow_run_id TEXT,
    duration_ms INTEGER,
    transactional BOOLEAN NOT NULL DEFAULT true);
CREATE TABLE IF NOT EXISTS {dirty} (
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
-- statements 1..applied_through are applied (a failure inside the migration's own transaction undoes more)
ALTER TABLE {dirty} ADD COLUMN IF NOT EXISTS applied_through INTEGER;
"""

# The yoyo rows and our checksum row, in one statement (one round trip, inside the migration's transaction).
RECORD_SQL = """
WITH migration AS (
    INSERT INTO {migration} (migration_hash, migration_id, applied_at_utc)
    VALUES (%(hash)s, %(id)s, now() AT TIME ZONE 'utc') RETURNING 1
), log AS (
    INSERT INTO {log} (id, migration_hash, migration_id, operation, username, hostname, comment,
                           created_at_utc)
    VALUES (%(log_id)s, %(hash)s, %(id)s, %(operation)s, current_user, %(hostname)s, %(comment)s,
            now() AT TIME ZONE 'utc') RETURNING 1
)
INSERT INTO {history} (migration_id, checksum, git_sha, flow_run_id, duration_ms, transactional)
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

MARK_DIRTY_SQL = """
INSERT INTO {dirty} (migration_id, state, statement_count, checksum, git_sha, flow_run_id)
VALUES (%(id)s, 'running', %(count)s, %(checksum)s, %(git_sha)s, %(run_id)s)
"""

PROGRESS_SQL = """
UPDATE {dirty} SET state = %s, statement_number = %s, sqlstate = %s, message = %s,
    applied_through = %s, updated_at = now()
WHERE migration_id = %s
"""

CLEAR_DIRTY_SQL = "DELETE FROM {dirty} WHERE migration_id = %s"

# A mark whose session still holds the migration lock belongs to a run in progress, not to a dead one.
DIRTY_SQL = """
SELECT d.migration_id, d.state, d.statement_number, d.statement_count, d.checksum, d.sqlstate, d.message,
       d.flow_run_id, d.started_at, d.applied_through
FROM {dirty} d
WHERE NOT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.pid = d.backend_pid AND l.locktype = 'advisory' AND l.granted
      AND ((l.classid::bigint << 32) | l.objid::bigint) = %s)
ORDER BY d.started_at
"""
READ_APPLIED_SQL = "SELECT migration_id FROM {migration} ORDER BY applied_at_utc, migration_id"
READ_CHECKSUMS_SQL = "SELECT migration_id, checksum FROM {history}"
RECORD_UNVERIFIED_SQL = """
INSERT INTO {history} (migration_id, checksum, transactional, git_sha) VALUES (%s, %s, %s, 'adopted')
ON CONFLICT (migration_id) DO NOTHING
"""
# Our tables exist where yoyo's do: found by the name yoyo gives them, wherever the session looks first.
SCHEMA_SQL = """
SELECT coalesce(
    (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relname = '_yoyo_migration' AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)),
    (SELECT min(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relname = '_yoyo_migration' AND c.relkind IN ('r', 'p')
     HAVING count(*) = 1),
    current_schema(),
    'public')
"""

# A rollback: yoyo's row goes, a log row says so, and our checksum row goes.
UNRECORD_SQL = """
WITH migration AS (
    DELETE FROM {migration} WHERE migration_hash = %(hash)s RETURNING 1
), log AS (
    INSERT INTO {log} (id, migration_hash, migration_id, operation, username, hostname, comment,
                           created_at_utc)
    VALUES (%(log_id)s, %(hash)s, %(id)s, 'rollback', current_user, %(hostname)s, 'rds-migrations',
            now() AT TIME ZONE 'utc') RETURNING 1
)
DELETE FROM {history} WHERE migration_id = %(id)s
"""
UNMARK_LOG_SQL = """
INSERT INTO {log} (id, migration_hash, migration_id, operation, username, hostname, comment, created_at_utc)
VALUES (%s, %s, %s, 'unmark', current_user, %s, 'rds-migrations resolve --mark-not-applied', now() AT TIME ZONE 'utc')
"""


# ---- reading ---------------------------------------------------------------------------------------------


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
    applied_through: int | None = None  # when known: statements 1..applied_through are applied

    def describe(self) -> str:
        k, n = self.statement_number, self.statement_count
        applied = applied_before(k if self.applied_through is None else self.applied_through + 1)
        if self.state == "recording":
            what = f"all {n} statement(s) ran, but the run stopped before recording it"
        elif self.state == "failed":
            what = f"statement {k} of {n} failed (SQLSTATE {self.sqlstate}: {self.message}); {applied}"
        else:
            what = (f"the run stopped (process killed or connection lost) during statement {k} of {n}; "
                    f"{applied}, and statement {k} may or may not have completed")
        when = f"{self.started_at:%Y-%m-%d %H:%M:%S %Z}" if self.started_at else "an unknown time"
        return f"{self.migration_id} (non-transactional) is dirty: {what} (run {self.flow_run_id or '-'}, {when})"


def applied_before(number: int) -> str:
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


@dataclass(frozen=True)
class History:
    """What the database says was applied: yoyo's ids, our checksums where we recorded them, dirty marks."""

    applied: tuple[str, ...] = ()
    checksums: dict[str, str] = field(default_factory=dict)
    dirty: tuple[DirtyMigration, ...] = ()


# ---- the ledger: every read and write, schema-qualified --------------------------------------------------

_STATEMENTS = {"ddl": HISTORY_DDL, "record": RECORD_SQL, "prepare": PREPARE_RECORD_SQL, "mark": MARK_DIRTY_SQL,
               "progress": PROGRESS_SQL, "clear": CLEAR_DIRTY_SQL, "dirty": DIRTY_SQL, "unrecord": UNRECORD_SQL,
               "unmark": UNMARK_LOG_SQL, "applied": READ_APPLIED_SQL, "checksums": READ_CHECKSUMS_SQL,
               "unverified": RECORD_UNVERIFIED_SQL}


@dataclass
class Ledger:
    """The history tables of the database `conn` is connected to, in `schema`."""

    conn: psycopg.Connection
    schema: str
    statements: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, conn: psycopg.Connection) -> Ledger:
        schema = conn.execute(SCHEMA_SQL).fetchone()[0]  # type: ignore[index]
        names = {key: sql.Identifier(schema, table).as_string(conn) for key, table in TABLES.items()}
        return cls(conn, schema, {key: text.format(**names) for key, text in _STATEMENTS.items()})

    def exists(self) -> dict[str, bool]:
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = ANY(%s)", (self.schema, list(TABLES.values()))).fetchall()
        found = {row[0] for row in rows}
        return {key: table in found for key, table in TABLES.items()}

    def read(self) -> History:
        """What the database says was applied (read-only)."""
        tables = self.exists()
        if not tables["migration"]:
            return History()
        applied = tuple(row[0] for row in self.conn.execute(self.statements["applied"]))
        checksums = dict(self.conn.execute(self.statements["checksums"]).fetchall()) if tables["history"] else {}
        dirty: tuple[DirtyMigration, ...] = ()
        if tables["dirty"]:
            dirty = tuple(DirtyMigration(*row) for row in self.conn.execute(self.statements["dirty"],
                                                                            (ADVISORY_LOCK_KEY,)))
        return History(applied, checksums, dirty)

    def create_tables(self) -> None:
        """yoyo's tables and ours, when missing (idempotent)."""
        self.conn.execute(self.statements["ddl"])

    def prepare_record(self) -> None:
        """Prepare the history insert once per session: a migration's message then carries only `EXECUTE`."""
        self.conn.execute(self.statements["prepare"])

    def record_statement(self, migration: Migration, git_sha: str, run_id: str | None, *,
                         prepared: bool = True) -> str:
        """The history insert as SQL text, for a migration's one message: `EXECUTE` of the prepared one, or
        (`prepared=False`) the whole statement. The duration is measured by the server."""
        params = record_params(migration, git_sha, run_id, duration_ms=None)
        with ClientCursor(self.conn) as cursor:
            return cursor.mogrify(EXECUTE_RECORD_SQL if prepared else self.statements["record"], params)

    def record(self, migration: Migration, git_sha: str, run_id: str | None, started: float, *,
               operation: str = "apply", comment: str | None = None) -> None:
        self.conn.execute(self.statements["record"], record_params(
            migration, git_sha, run_id, operation=operation, comment=comment,
            duration_ms=int((time.monotonic() - started) * 1000)))

    def record_unverified(self, catalog: Catalog, ids: tuple[str, ...], log: Log) -> None:
        """Migrations applied before checksums were kept (plain yoyo): adopt the current file's checksum."""
        for migration_id in ids:
            migration = catalog.get(migration_id)
            assert migration is not None
            log.warning("%s: applied without a checksum (by plain yoyo?); recording the current file's",
                        migration_id)
            self.conn.execute(self.statements["unverified"],
                              (migration.id, migration.checksum, migration.transactional))

    def mark_dirty(self, migration: Migration, git_sha: str, run_id: str | None) -> None:
        """Before a non-transactional migration's first statement: later runs refuse until it is recorded."""
        self.conn.execute(self.statements["mark"], {"id": migration.id, "count": len(migration.statements),
                                                    "checksum": migration.checksum, "git_sha": git_sha,
                                                    "run_id": run_id})

    def mark_progress(self, migration_id: str, state: str, number: int, sqlstate: str | None = None,
                      message: str | None = None, applied_through: int | None = None) -> None:
        """Where a dirty migration stands ("running", "failed", "recording"), written in a transaction of its
        own as the run's own user, whatever role the migration's last statement left the session in."""
        with self.conn.transaction():
            self.conn.execute("SET LOCAL SESSION AUTHORIZATION DEFAULT")
            self.conn.execute(self.statements["progress"],
                              (state, number, sqlstate, message, applied_through, migration_id))

    def clear_dirty(self, migration_id: str) -> None:
        self.conn.execute(self.statements["clear"], (migration_id,))

    def unrecord(self, migration: Migration) -> None:
        """A rolled-back migration leaves yoyo's table and ours; yoyo's log says so."""
        self.conn.execute(self.statements["unrecord"], {"hash": get_migration_hash(migration.id), "id": migration.id,
                                                        "log_id": str(uuid.uuid1()), "hostname": HOSTNAME})

    def record_unmarked(self, migration_id: str) -> None:
        """An operator undid a dirty migration by hand: yoyo's log says so (it is pending again)."""
        self.conn.execute(self.statements["unmark"], (str(uuid.uuid1()), get_migration_hash(migration_id),
                                                      migration_id, HOSTNAME))


def read_history(conn: psycopg.Connection) -> History:
    return Ledger.open(conn).read()


def record_params(migration: Migration, git_sha: str, run_id: str | None, *, duration_ms: int | None,
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
