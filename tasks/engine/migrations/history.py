"""History: the ONLY code that reads or writes the tool's tables and yoyo's.

yoyo's tables are kept true (`_yoyo_migration`, `_yoyo_log`, `_yoyo_version`, `yoyo_lock`), so `yoyo list`
still tells the truth, and two of our own sit beside them:
- `_rds_migrations_history`: the content checksum of every applied migration, with the git SHA, the flow run
  and the duration; an applied file that was edited, renamed or deleted is refused before anything runs;
- `_rds_migrations_dirty`: a mark written before a non-transactional migration's first statement and
  replaced by its record, in one transaction, after its last. A run that finds a mark refuses and says how
  to resolve it.

A transactional migration is recorded inside its own transaction (see execute.py), so it is never applied
but unrecorded, nor recorded but not applied.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import ClientCursor
from yoyo.migrations import get_migration_hash

from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.session import ADVISORY_LOCK_KEY

HISTORY_TABLE = "_rds_migrations_history"
DIRTY_TABLE = "_rds_migrations_dirty"
HOSTNAME = socket.gethostname()[:255]  # for yoyo's log rows: read once, not once per migration

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

# A rollback: yoyo's row goes, a log row says so, and our checksum row goes.
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
UNMARK_LOG_SQL = """
INSERT INTO _yoyo_log (id, migration_hash, migration_id, operation, username, hostname, comment, created_at_utc)
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

    def describe(self) -> str:
        k, n = self.statement_number, self.statement_count
        if self.state == "recording":
            what = f"all {n} statement(s) ran, but the run stopped before recording it"
        elif self.state == "failed":
            what = f"statement {k} of {n} failed (SQLSTATE {self.sqlstate}: {self.message}); {applied_before(k)}"
        else:
            what = (f"the run stopped (process killed or connection lost) during statement {k} of {n}; "
                    f"{applied_before(k)}, and statement {k} may or may not have completed")
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


# ---- writing ---------------------------------------------------------------------------------------------


def create_tables(conn: psycopg.Connection) -> None:
    """yoyo's tables and ours, when missing (idempotent)."""
    conn.execute(HISTORY_DDL)


def prepare_record(conn: psycopg.Connection) -> None:
    """Prepare the history insert once per session: a migration's message then carries only `EXECUTE`."""
    conn.execute(PREPARE_RECORD_SQL)


def record_statement(conn: psycopg.Connection, migration: Migration, git_sha: str, run_id: str | None) -> str:
    """The prepared history insert as SQL text, for a migration's one message; the duration is measured by
    the server, from the message's arrival."""
    with ClientCursor(conn) as cursor:
        return cursor.mogrify(EXECUTE_RECORD_SQL, record_params(migration, git_sha, run_id, duration_ms=None))


def record(conn: psycopg.Connection, migration: Migration, git_sha: str, run_id: str | None,
            started: float, *, operation: str = "apply", comment: str | None = None) -> None:
    conn.execute(RECORD_SQL, record_params(migration, git_sha, run_id, operation=operation, comment=comment,
                                            duration_ms=int((time.monotonic() - started) * 1000)))


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


def record_unverified(conn: psycopg.Connection, catalog: Catalog, ids: tuple[str, ...], log: Log) -> None:
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



def mark_dirty(conn: psycopg.Connection, migration: Migration, git_sha: str, run_id: str | None) -> None:
    """Before a non-transactional migration's first statement: later runs refuse until it is recorded."""
    conn.execute(MARK_DIRTY_SQL, {"id": migration.id, "count": len(migration.statements),
                                  "checksum": migration.checksum, "git_sha": git_sha, "run_id": run_id})


def mark_progress(conn: psycopg.Connection, migration_id: str, state: str, number: int,
                  sqlstate: str | None = None, message: str | None = None) -> None:
    """The statement a dirty migration is at, and how it stands ("running", "failed", "recording")."""
    conn.execute(PROGRESS_SQL, (state, number, sqlstate, message, migration_id))


def clear_dirty(conn: psycopg.Connection, migration_id: str) -> None:
    conn.execute(CLEAR_DIRTY_SQL, (migration_id,))


def unrecord(conn: psycopg.Connection, migration: Migration) -> None:
    """A rolled-back migration leaves yoyo's table and ours; yoyo's log says so."""
    conn.execute(UNRECORD_SQL, {"hash": get_migration_hash(migration.id), "id": migration.id,
                                "log_id": str(uuid.uuid1()), "hostname": HOSTNAME})


def record_unmarked(conn: psycopg.Connection, migration_id: str) -> None:
    """An operator undid a dirty migration by hand: yoyo's log says so (it is pending again)."""
    conn.execute(UNMARK_LOG_SQL, (str(uuid.uuid1()), get_migration_hash(migration_id), migration_id, HOSTNAME))
