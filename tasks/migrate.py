"""migrate: apply pending migrations safely, keeping yoyo's history tables true.

What this engine does that yoyo 9 does not:
- one connection for the whole run, with `lock_timeout` and `statement_timeout` set from policy;
- a session-level advisory lock, polled with `pg_try_advisory_lock` outside any transaction, so a killed
  process never leaves a stale lock (the server releases it with the session);
- each transactional migration commits in ONE transaction with its yoyo history rows and its checksum
  row; a non-transactional migration runs alone and is recorded only after it succeeded;
- the content checksum of every applied migration is kept (`_rds_migrations_history`): an applied file that
  was edited, renamed or deleted is refused before anything runs;
- a lock timeout (SQLSTATE 55P03) rolls the migration back and retries it, with backoff and jitter.
"""

from __future__ import annotations

import logging
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from yoyo.migrations import get_migration_hash

from tasks.catalog import Catalog, Migration
from tasks.environments import Policy
from tasks.secrets import Connection, redact

logger = logging.getLogger(__name__)

# One key for every run of this tool on a database (advisory locks are scoped to the current database).
ADVISORY_LOCK_KEY = 0x52_44_53_4D_49_47_52_01  # "RDSMIGR\x01"
LOCK_POLL_SECONDS = 0.25
HISTORY_TABLE = "_rds_migrations_history"

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
"""

# The yoyo rows and our checksum row, in one statement (one round trip, inside the migration's transaction).
RECORD_SQL = f"""
WITH migration AS (
    INSERT INTO _yoyo_migration (migration_hash, migration_id, applied_at_utc)
    VALUES (%(hash)s, %(id)s, now() AT TIME ZONE 'utc') RETURNING 1
), log AS (
    INSERT INTO _yoyo_log (id, migration_hash, migration_id, operation, username, hostname, comment,
                           created_at_utc)
    VALUES (%(log_id)s, %(hash)s, %(id)s, 'apply', current_user, %(hostname)s, %(comment)s,
            now() AT TIME ZONE 'utc') RETURNING 1
)
INSERT INTO {HISTORY_TABLE} (migration_id, checksum, git_sha, flow_run_id, duration_ms, transactional)
VALUES (%(id)s, %(checksum)s, %(git_sha)s, %(run_id)s, %(duration_ms)s, %(transactional)s)
ON CONFLICT (migration_id) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now(),
    git_sha = EXCLUDED.git_sha, flow_run_id = EXCLUDED.flow_run_id, duration_ms = EXCLUDED.duration_ms
"""

LOCK_NOT_AVAILABLE = "55P03"


# ---- typed values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """What the database says was applied: yoyo's ids, and our checksums where we recorded them."""

    applied: tuple[str, ...] = ()
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What would run, read-only. `problems` block any apply."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    problems: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()  # applied before checksums were kept (e.g. by plain yoyo)
    beyond_target: tuple[str, ...] = ()  # pending, but after the requested target


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

    def __str__(self) -> str:
        state = f"SQLSTATE {self.sqlstate}" if self.sqlstate else "no SQLSTATE"
        outcome = (
            "rolled back: the database is as it was before this migration"
            if self.transactional
            else "non-transactional: statements before the failing one stay applied"
        )
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return (
            f"migration {self.migration_id} failed{tries} ({state}): {self.message}\n"
            f"  statement: {_shorten(self.statement)}\n  {outcome}"
        )


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


class LockTimeout(Exception):
    """Another run holds the migration lock."""


# ---- read-only: history and plan -------------------------------------------------------------------------


def read_history(conn: psycopg.Connection) -> History:
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(%s) AND pg_table_is_visible(c.oid)",
            (["_yoyo_migration", HISTORY_TABLE],),
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
    return History(applied, checksums)


def make_plan(catalog: Catalog, history: History, *, target: str | None = None,
              allow_out_of_order: bool = False) -> Plan:
    """Compare files and history: what is pending, and what makes applying unsafe."""
    problems: list[str] = []
    unverified: list[str] = []
    applied = set(history.applied)
    for migration_id in history.applied:
        migration = catalog.get(migration_id)
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
    if pending and applied and not allow_out_of_order:
        newest_applied = max(catalog.ids.index(i) for i in applied if i in catalog.ids) if any(
            i in catalog.ids for i in applied) else -1
        for migration in pending:
            if catalog.ids.index(migration.id) < newest_applied:
                problems.append(
                    f"{migration.path.name}: out of order: it sorts before migrations already applied; "
                    "renumber it after the newest applied migration"
                )
    beyond: list[str] = []
    if target is not None:
        index = _target_index(catalog, target)
        if index is None:
            problems.append(f"target {target!r} names no migration (use a migration id or its version number)")
        else:
            beyond = [m.id for m in pending if catalog.ids.index(m.id) > index]
            pending = [m for m in pending if catalog.ids.index(m.id) <= index]
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
         allow_out_of_order: bool = False) -> Plan:
    """Read-only: connect, read the history, compare with the files. Takes no lock, writes nothing."""
    with _session(connection, read_only=True) as conn:
        return make_plan(catalog, read_history(conn), target=target, allow_out_of_order=allow_out_of_order)


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
    log: logging.Logger | logging.LoggerAdapter = logger,
) -> ApplyReport:
    """Apply what is pending, one migration at a time. Raises `MigrationError` with the report on failure."""
    started = time.monotonic()
    application = f"rds-migrations run {run_id}" if run_id else "rds-migrations"
    password = connection.password.get_secret_value()
    with _session(connection, policy=policy, application_name=application) as conn:
        with migration_lock(conn, policy.migration_lock_wait_seconds):
            conn.execute(HISTORY_DDL)
            # Planned again under the lock: another run may have applied migrations meanwhile.
            current = make_plan(catalog, read_history(conn), target=target,
                                allow_out_of_order=policy.allow_out_of_order)
            if current.problems:
                raise HistoryMismatch("; ".join(current.problems))
            _record_unverified(conn, catalog, current.unverified, log)
            applied: list[AppliedMigration] = []
            for position, migration_id in enumerate(current.pending):
                migration = catalog.get(migration_id)
                assert migration is not None
                log.info("Applying %s (%d of %d)", migration.id, position + 1, len(current.pending))
                outcome = _apply_one(conn, migration, policy, git_sha=git_sha, run_id=run_id, log=log)
                if isinstance(outcome, MigrationFailure):
                    outcome = _redacted(outcome, password)
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
               run_id: str | None, log: logging.Logger | logging.LoggerAdapter) -> AppliedMigration | MigrationFailure:
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        failure = (_run_transactional if migration.transactional else _run_alone)(
            conn, migration, git_sha=git_sha, run_id=run_id, started=started
        )
        if failure is None:
            return AppliedMigration(migration.id, time.monotonic() - started, attempts)
        retryable = migration.transactional and failure.sqlstate == LOCK_NOT_AVAILABLE
        if not retryable or attempts > policy.lock_timeout_retries:
            return MigrationFailure(**{**failure.__dict__, "attempts": attempts})
        delay = min(policy.lock_retry_max_delay_seconds, policy.lock_retry_base_delay_seconds * 2 ** (attempts - 1))
        delay *= random.uniform(0.5, 1.5)  # jitter: concurrent retries do not line up behind the same lock
        log.warning(
            "%s: lock_timeout (%d ms) hit waiting for a lock; rolled back, retry %d of %d in %.1fs",
            migration.id, policy.lock_timeout_ms, attempts, policy.lock_timeout_retries, delay,
        )
        time.sleep(delay)


def _run_transactional(conn: psycopg.Connection, migration: Migration, *, git_sha: str, run_id: str | None,
                       started: float) -> MigrationFailure | None:
    statement = ""
    try:
        with conn.transaction():
            for statement in migration.statements:
                conn.execute(statement, prepare=False)
            _record(conn, migration, git_sha, run_id, started)
    except psycopg.Error as exc:
        return _failure(migration, statement, exc)
    return None


def _run_alone(conn: psycopg.Connection, migration: Migration, *, git_sha: str, run_id: str | None,
               started: float) -> MigrationFailure | None:
    statement = ""
    try:
        for statement in migration.statements:
            conn.execute(statement, prepare=False)
    except psycopg.Error as exc:
        return _failure(migration, statement, exc)
    with conn.transaction():
        _record(conn, migration, git_sha, run_id, started)
    return None


def _record(conn: psycopg.Connection, migration: Migration, git_sha: str, run_id: str | None,
            started: float) -> None:
    conn.execute(
        RECORD_SQL,
        {
            "hash": get_migration_hash(migration.id),
            "id": migration.id,
            "log_id": str(uuid.uuid1()),
            "hostname": socket.gethostname()[:255],
            "comment": f"rds-migrations git_sha={git_sha} run={run_id or '-'}"[:255],
            "checksum": migration.checksum,
            "git_sha": git_sha,
            "run_id": run_id,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "transactional": migration.transactional,
        },
    )


def _record_unverified(conn: psycopg.Connection, catalog: Catalog, ids: tuple[str, ...],
                       log: logging.Logger | logging.LoggerAdapter) -> None:
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


def _failure(migration: Migration, statement: str, exc: psycopg.Error) -> MigrationFailure:
    message = (exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc)).strip()
    if exc.diag and exc.diag.message_detail:
        message += f" ({exc.diag.message_detail.strip()})"
    return MigrationFailure(
        migration_id=migration.id,
        statement=statement,
        sqlstate=exc.sqlstate,
        message=message,
        transactional=migration.transactional,
    )


def _redacted(failure: MigrationFailure, password: str) -> MigrationFailure:
    return MigrationFailure(
        migration_id=failure.migration_id,
        statement=redact(failure.statement, password),
        sqlstate=failure.sqlstate,
        message=redact(failure.message, password),
        transactional=failure.transactional,
        attempts=failure.attempts,
    )


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
              "hostname": socket.gethostname()[:255]}
    with _session(connection, policy=policy) as conn, migration_lock(conn, policy.migration_lock_wait_seconds):
        statement = ""
        try:
            with conn.transaction() if migration.transactional else _no_transaction():
                for statement in migration.rollback_statements:
                    conn.execute(statement, prepare=False)
                if migration.transactional:
                    conn.execute(UNRECORD_SQL, params)
        except psycopg.Error as exc:
            failure = _failure(migration, statement, exc)
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
from prefect.tasks import exponential_backoff  # noqa: E402

from tasks.transient import retry_on_transient  # noqa: E402


@task(
    name="migrate",
    retries=2,  # only when the database was unreachable: a failing migration is never retried here
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_on_transient,
    persist_result=False,
    cache_policy=NO_CACHE,
)
def migrate(connection: Connection, catalog: Catalog, policy: Policy, *, target: str | None = None,
            git_sha: str = "unknown", run_id: str | None = None) -> ApplyReport:
    """Apply the pending migrations under the migration lock.

    Example:
        report = migrate(connection, catalog, environment.policy, git_sha="1a2b3c4")
    """
    log = get_run_logger()
    report = apply_pending(connection, catalog, policy, target=target, git_sha=git_sha, run_id=run_id, log=log)
    log.info("Applied %d migration(s) in %.1fs", len(report.applied), report.duration_seconds)
    return report
