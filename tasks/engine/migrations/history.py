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

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import ClientCursor, sql
from psycopg.types.json import Jsonb
from yoyo.migrations import get_migration_hash

from tasks.engine.errors import DatabaseRefused
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.dirty import DirtyMigration
from tasks.engine.migrations.history_sql import (
    BASELINE_SQL,
    CLEAR_DIRTY_SQL,
    DIRTY_SQL,
    FORGET_SQL,
    HAS_INVALID_BEFORE_SQL,
    HISTORY_DDL,
    HOSTNAME,
    INVALID_BEFORE_SQL,
    LATEST_LOG_SQL,
    MARK_DIRTY_PLAIN_SQL,
    MARK_DIRTY_SQL,
    PREPARE_RECORD_SQL,
    PROGRESS_SQL,
    READ_APPLIED_BY_RUN_SQL,
    READ_APPLIED_SQL,
    READ_BASELINE_SQL,
    READ_CHECKSUMS_SQL,
    READ_HISTORY_ROWS_SQL,
    READ_RECORDED_NO_LOG_SQL,
    READ_RECORDED_SQL,
    READ_SCHEMA_SQL,
    RECORD_MARKED_CHECKSUM_SQL,
    RECORD_PARAMETERS,
    RECORD_SQL,
    RECORD_UNVERIFIED_SQL,
    REMEMBER_SCHEMA_SQL,
    SCHEMA_SQL,
    UNMARK_LOG_SQL,
    UNRECORD_SQL,
)
from tasks.engine.migrations.session import ADVISORY_LOCK_KEY

TABLES = {"migration": "_yoyo_migration", "log": "_yoyo_log", "version": "_yoyo_version", "lock": "yoyo_lock",
          "history": "_rds_migrations_history", "dirty": "_rds_migrations_dirty",
          "baseline": "_rds_migrations_baseline", "schema": "_rds_migrations_schema"}
HISTORY_TABLE, DIRTY_TABLE = TABLES["history"], TABLES["dirty"]

# ---- reading ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What `baseline` adopted: the migrations it recorded without running them, and the schema as it was."""

    id: int
    migrations: tuple[str, ...]
    schema_dump: bytes


@dataclass(frozen=True)
class History:
    """What the database says was applied: yoyo's ids, our checksums where we recorded them, dirty marks."""

    applied: tuple[str, ...] = ()
    checksums: dict[str, str] = field(default_factory=dict)
    dirty: tuple[DirtyMigration, ...] = ()
    # The history tables edited by hand: applied by rds-migrations (yoyo's log says so) with its checksum row
    # gone; and a checksum row whose yoyo row is gone with no rollback in yoyo's log.
    checksum_lost: tuple[str, ...] = ()
    yoyo_row_lost: tuple[str, ...] = ()


@dataclass(frozen=True)
class AppliedRecord:
    """One applied migration as the tables hold it: yoyo's row, the log row that recorded it, and ours (None
    where a table or a row is missing: applied by plain yoyo, before checksums were kept)."""

    migration_id: str
    applied_at: datetime | None  # UTC, from yoyo's row (None: a row written by hand without one)
    operation: str | None  # "apply", "baseline", "mark" (resolve --mark-applied, or yoyo mark)
    username: str | None  # the database user of that log row
    hostname: str | None  # the machine that wrote it
    comment: str | None
    checksum: str | None = None
    git_sha: str | None = None
    flow_run_id: str | None = None
    duration_ms: int | None = None
    transactional: bool | None = None


# ---- the ledger: every read and write, schema-qualified --------------------------------------------------

_STATEMENTS = {"ddl": HISTORY_DDL, "record": RECORD_SQL, "prepare": PREPARE_RECORD_SQL, "mark": MARK_DIRTY_SQL,
               "progress": PROGRESS_SQL, "clear": CLEAR_DIRTY_SQL, "dirty": DIRTY_SQL,
               "invalid_before": INVALID_BEFORE_SQL, "has_invalid_before": HAS_INVALID_BEFORE_SQL,
               "mark_plain": MARK_DIRTY_PLAIN_SQL, "unrecord": UNRECORD_SQL,
               "unmark": UNMARK_LOG_SQL, "latest_log": LATEST_LOG_SQL, "forget": FORGET_SQL,
               "applied": READ_APPLIED_SQL, "checksums": READ_CHECKSUMS_SQL,
               "unverified": RECORD_UNVERIFIED_SQL, "marked_checksum": RECORD_MARKED_CHECKSUM_SQL,
               "baseline": BASELINE_SQL, "read_baseline": READ_BASELINE_SQL,
               "remember": REMEMBER_SCHEMA_SQL, "read_schema": READ_SCHEMA_SQL, "recorded": READ_RECORDED_SQL,
               "recorded_no_log": READ_RECORDED_NO_LOG_SQL, "history_rows": READ_HISTORY_ROWS_SQL,
               "applied_by_run": READ_APPLIED_BY_RUN_SQL}


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
        names["dirty_name"] = sql.Literal(names["dirty"]).as_string(conn)
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
        applied_set = set(applied)
        odd = [i for i in applied if i not in checksums]  # the whole table dropped too
        odd += [i for i in checksums if i not in applied_set]
        if not (odd and tables["log"]):  # the usual case: no query more
            return History(applied, checksums, dirty)
        latest = {i: (operation, ours) for i, operation, ours in self.conn.execute(self.statements["latest_log"],
                                                                                  (odd,))}
        ours_applied = {("apply", True), ("mark", True), ("baseline", True)}  # recorded by us, with a checksum
        lost = tuple(i for i in applied if i not in checksums and latest.get(i) in ours_applied)
        gone = tuple(i for i in checksums if i not in applied_set and latest.get(i, ("",))[0] not in (
            "rollback", "unmark"))
        return History(applied, checksums, dirty, lost, gone)

    def applied_records(self) -> tuple[AppliedRecord, ...]:
        """Every applied migration in the order it was applied, with who, where and how (read-only)."""
        tables = self.exists()
        if not tables["migration"]:
            return ()
        ours = {row[0]: row[1:] for row in self.conn.execute(self.statements["history_rows"])} \
            if tables["history"] else {}
        rows = self.conn.execute(self.statements["recorded" if tables["log"] else "recorded_no_log"]).fetchall()
        return tuple(AppliedRecord(migration_id, applied_at and applied_at.replace(tzinfo=UTC), *logged,
                                   *ours.get(migration_id, ()))
                     for migration_id, applied_at, *logged in rows)

    def applied_by(self, flow_run_id: str) -> tuple[str, ...]:
        """The migrations the flow run `flow_run_id` recorded as applied, in order (read-only; () without our
        history table)."""
        if not self.exists()["history"]:
            return ()
        return tuple(row[0] for row in self.conn.execute(self.statements["applied_by_run"], (flow_run_id,)))

    def create_tables(self) -> None:
        """yoyo's tables and ours, when missing (idempotent). Refused (a migrator that may not create in the
        schema): `DatabaseRefused`, saying which grant is missing; nothing has been applied yet."""
        try:
            # One message: the tables, then whether the dirty-mark table has the column (its last answer).
            # The newline then `;`: a last line of the DDL that is a comment cannot swallow the separator.
            cursor = self.conn.execute(f"{self.statements['ddl']}\n;\n{self.statements['has_invalid_before']}")
            while cursor.nextset():
                pass
            if not cursor.fetchone()[0]:  # type: ignore[index]
                self.statements["mark"] = self.statements["mark_plain"]  # an earlier version's table, not ours
        except psycopg.errors.InsufficientPrivilege as exc:
            user = self.conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
            where = f"in schema {self.schema!r} of database {self.conn.info.dbname!r} as {user}"
            grant = sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(sql.Identifier(self.schema),
                                                                     sql.Identifier(user)).as_string(self.conn)
            way = (f"Grant it ({grant}) and run again" if "schema" in (exc.diag.message_primary or "") else
                   "They belong to another role: run as that role, or as a member of it")
            raise DatabaseRefused(
                f"the history tables ({', '.join(TABLES.values())}) cannot be created or brought up to date {where}: "
                f"{exc.diag.message_primary}. Nothing was applied. {way}") from None

    def prepare_record(self) -> None:
        """Prepare the history insert once per session: a migration's message then carries only `EXECUTE`."""
        self.conn.execute(self.statements["prepare"])

    def record_statement(self, migration: Migration, git_sha: str, run_id: str | None, *,
                         prepared: bool = True, duration_ms: int | None = None) -> str:
        """The history insert as SQL text, for a migration's one message: `EXECUTE` of the prepared one, or
        (`prepared=False`) the whole statement. Without `duration_ms`, the server measures the message."""
        params = record_params(migration, git_sha, run_id, duration_ms=duration_ms)
        if not prepared:
            with ClientCursor(self.conn) as cursor:
                return cursor.mogrify(self.statements["record"], params)
        # Written out by hand: psycopg's mogrify cost a third of a millisecond per migration, a tenth of what
        # the server needs to apply a small one. E'' strings read the same whatever standard_conforming_strings
        # a migration left behind.
        return "EXECUTE rdsm_record ({})".format(", ".join(_literal(params[name]) for name in RECORD_PARAMETERS))

    def record(self, migration: Migration, git_sha: str, run_id: str | None, started: float, *,
               operation: str = "apply", comment: str | None = None) -> None:
        self.conn.execute(self.statements["record"], record_params(
            migration, git_sha, run_id, operation=operation, comment=comment,
            duration_ms=int((time.monotonic() - started) * 1000)))

    def forget(self, migration: Migration) -> None:
        """Its rows gone, yoyo's log saying 'unmark': an operator's word that it is not applied."""
        self.conn.execute(self.statements["forget"], _unrecord_params(migration))

    def record_checksum(self, migration: Migration) -> None:
        """Its checksum row again (an operator's word that the file is the one applied), recorded as resolve's mark:
        status shows `mark`, git SHA `resolved`."""
        self.conn.execute(self.statements["marked_checksum"], {
            **_unrecord_params(migration), "checksum": migration.checksum, "transactional": migration.transactional})

    def record_unverified(self, catalog: Catalog, ids: tuple[str, ...], log: Log) -> None:
        """Migrations applied before checksums were kept (plain yoyo): adopt the current file's checksum."""
        for migration_id in ids:
            migration = catalog.get(migration_id)
            assert migration is not None
            log.warning("%s: applied without a checksum (by plain yoyo?); recording the current file's",
                        migration_id)
            self.conn.execute(self.statements["unverified"],
                              (migration.id, migration.checksum, migration.transactional))

    def record_applied(self, migrations: list[Migration], git_sha: str, run_id: str | None, *,
                       operation: str, comment: str) -> None:
        """Record migrations as applied without running them (a baseline adopting what another tool or a person
        applied; a rehearsal's copy of the target's history), in one transaction."""
        with self.conn.transaction(), self.conn.cursor() as cursor:  # executemany: pipelined, one round trip
            cursor.executemany(self.statements["record"], [
                record_params(migration, git_sha, run_id, operation=operation, comment=comment, duration_ms=0)
                for migration in migrations])

    def mark_dirty(self, migration: Migration, git_sha: str, run_id: str | None) -> None:
        """Before a non-transactional migration's first statement: later runs refuse until it is recorded."""
        self.conn.execute(self.mark_statement(migration, git_sha, run_id), prepare=False)

    def mark_statement(self, migration: Migration, git_sha: str, run_id: str | None) -> str:
        """`mark_dirty`'s statement as SQL text, for a message that carries more."""
        return self.statements["mark"] % {
            "id": _literal(migration.id), "count": _literal(len(migration.statements)),
            "checksum": _literal(migration.checksum), "git_sha": _literal(git_sha), "run_id": _literal(run_id)}

    def mark_progress(self, migration_id: str, state: str, number: int, sqlstate: str | None = None,
                      message: str | None = None, applied_through: int | None = None) -> None:
        """Where a dirty migration stands ("running", "failed", "recording"), written in a transaction of its
        own as the run's own user, whatever role the migration's last statement left the session in. Called
        between statements, never inside a transaction a file opened itself (run_alone moves the mark only when
        none is open; validation refuses a non-transactional rollback file that opens one)."""
        self.conn.execute(self.progress_statements(migration_id, state, number, sqlstate, message, applied_through),
                          prepare=False)

    def progress_statements(self, migration_id: str, state: str, number: int, sqlstate: str | None = None,
                            message: str | None = None, applied_through: int | None = None) -> str:
        """`mark_progress` as SQL text: its transaction in one message (one round trip, where psycopg's
        transaction block and parameters took four; over a network each is a millisecond)."""
        update = self.statements["progress"] % tuple(
            _literal(value) for value in (state, number, sqlstate, message, applied_through, migration_id))
        return f"BEGIN; SET LOCAL SESSION AUTHORIZATION DEFAULT; {update}; COMMIT"

    def invalid_before(self, migration_id: str) -> tuple[str, ...]:
        """The INVALID indexes its dirty mark found when it was written ("oid name"): none of them its leftover. ()
        when not known (no mark, or it cannot be read): then every one counts."""
        try:
            row = self.conn.execute(self.statements["invalid_before"], (migration_id,)).fetchone()
        except psycopg.Error:
            return ()
        return tuple(row[0] or ()) if row else ()

    def clear_dirty(self, migration_id: str) -> None:
        self.conn.execute(self.statements["clear"], (migration_id,))

    def clear_statement(self, migration_id: str) -> str:
        """`clear_dirty`'s statement as SQL text."""
        return self.statements["clear"] % _literal(migration_id)

    def unrecord_statement(self, migration: Migration) -> str:
        """`unrecord`'s statement as SQL text, for a rollback's one message."""
        with ClientCursor(self.conn) as cursor:
            return cursor.mogrify(self.statements["unrecord"], _unrecord_params(migration))

    def unrecord(self, migration: Migration) -> None:
        """A rolled-back migration leaves yoyo's table and ours; yoyo's log says so."""
        self.conn.execute(self.statements["unrecord"], _unrecord_params(migration))

    def record_baseline(self, adopted: list[Migration], *, tool: str | None, through: str, git_sha: str,
                        run_id: str | None, schema_dump: bytes, comment: str) -> None:
        """A baseline in one transaction: the adopted migrations recorded as applied without running them,
        and the schema as it was when they were adopted."""
        with self.conn.transaction():
            self.record_applied(adopted, git_sha, run_id, operation="baseline", comment=comment)
            self.conn.execute(self.statements["baseline"], {
                "hostname": HOSTNAME, "tool": tool, "through": through, "git_sha": git_sha, "run_id": run_id,
                "migrations": Jsonb([m.id for m in adopted]), "dump": schema_dump})

    def baseline(self) -> Baseline | None:
        """The newest baseline, if the database was adopted."""
        if not self.exists()["baseline"]:
            return None
        row = self.conn.execute(self.statements["read_baseline"]).fetchone()
        return Baseline(row[0], tuple(row[1]), bytes(row[2])) if row else None

    def remember_schema(self, state_key: str, snapshot: dict) -> None:
        """The schema the applied migrations make, for this state of history (drift's reference)."""
        self.conn.execute(self.statements["remember"], (state_key, Jsonb(snapshot)))

    def remembered_schema(self, state_key: str) -> dict | None:
        if not self.exists()["schema"]:
            return None
        row = self.conn.execute(self.statements["read_schema"], (state_key,)).fetchone()
        return row[0] if row else None

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


def _unrecord_params(migration: Migration) -> dict[str, str]:
    return {"hash": get_migration_hash(migration.id), "id": migration.id, "log_id": str(uuid.uuid1()),
            "hostname": HOSTNAME}


def _literal(value: object) -> str:
    """A constant for a statement written out by hand: NULL, a boolean, an integer, or an E'' string."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if "\x00" in text:
        raise ValueError("a NUL character cannot be sent to PostgreSQL")
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
