"""The migration session: one connection with the policy's timeouts, and the migration lock on it.

The lock is a session-level advisory lock, polled with `pg_try_advisory_lock` outside any transaction (so a
`CREATE INDEX CONCURRENTLY` never deadlocks against it), and freed by the server when the session ends, so
a killed process never leaves a stale lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import generators, sql
from psycopg.pq import ExecStatus, TransactionStatus

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.errors import LockTimeout

# One key for every run of this tool on a database (advisory locks are scoped to the current database).
ADVISORY_LOCK_KEY = 0x52_44_53_4D_49_47_52_01  # "RDSMIGR\x01"
LOCK_POLL_SECONDS = 0.25

# How often the server checks, during a long statement, that the run is still connected: a run killed (or
# stopped at its budget) mid-statement then has its transaction rolled back and its locks freed within this,
# not when the statement would have ended.
CLIENT_CHECK_INTERVAL = "5s"


# What a read-only session waits for at most: a lock (a migration's or a DDL's on a table it reads), a statement.
READ_TIMEOUTS = "SELECT set_config('lock_timeout', '2s', false), set_config('statement_timeout', '60s', false)"


@contextmanager
def session(connection: Connection, *, read_only: bool = False, policy: Policy | None = None,
            application_name: str = "rds-migrations") -> Iterator[psycopg.Connection]:
    """One connection in autocommit, with the policy's timeouts. psycopg's own automatic prepared statements
    are off: psycopg answers a DROP, ALTER or ROLLBACK by sending `DEALLOCATE ALL` once it has prepared
    any, which would also drop the tool's prepared history insert in the middle of a run."""
    conn = connection.connect(autocommit=True, application_name=application_name[:63], prepare_threshold=None)
    try:
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
            if policy is None:  # a read never waits long behind a lock: it says who holds it instead
                conn.execute(READ_TIMEOUTS)
        if policy is not None:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{policy.lock_timeout_ms}ms")))
            conn.execute(
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{policy.statement_timeout_ms}ms"))
            )
            if conn.info.server_version >= 140000:  # a run that dies mid-statement frees its locks in seconds
                conn.execute(f"SET client_connection_check_interval = '{CLIENT_CHECK_INTERVAL}'")
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
        _unlock(conn)


def _unlock(conn: psycopg.Connection) -> None:
    """Free the lock; never raises, so it never replaces the error that ended the run (a session in an
    aborted transaction is rolled back first; a session that is gone freed the lock with it)."""
    try:
        if conn.closed:
            return
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    except psycopg.Error:
        pass


@dataclass(frozen=True)
class StartingState:
    """What every migration starts with, whatever the one before it did to the session: every setting as the
    session began (`RESET ALL`: a `SET session_replication_role`, `TIME ZONE` or `DateStyle` of one migration
    never reaches the next, so what a migration does never depends on which ones run with it), the run's own user
    with the role the session began with (`none`, or the one `ALTER ROLE <user> SET role` gives every session of
    it; RESET ALL leaves both), the policy's timeouts and the search_path the session began with. A migration
    may set any of them for its own statements; the next one starts from this again."""

    user: str
    search_path: str
    lock_timeout_ms: int
    statement_timeout_ms: int
    role: str = "none"
    connection_check: bool = False  # PostgreSQL 14+: client_connection_check_interval set again after RESET ALL
    encoding: str = "UTF8"  # the session's client encoding as it began (the server's name for it)

    @classmethod
    def of(cls, conn: psycopg.Connection, policy: Policy) -> StartingState:
        user, search_path, role = conn.execute(  # type: ignore[misc]
            "SELECT session_user, current_setting('search_path'), current_setting('role')").fetchone()
        return cls(user, search_path, policy.lock_timeout_ms, policy.statement_timeout_ms, role,
                   conn.info.server_version >= 140000, _client_encoding(conn))

    def settle_encoding(self, conn: psycopg.Connection) -> None:
        """Before a migration's message: the client encoding the session began with, when the one before changed
        it (`SET client_encoding`, as pg_dump's output starts). In a round trip of its own: the server reads a
        message in the encoding in force when it arrives, so the RESET ALL inside the message comes too late, and
        the message is written in the session's own encoding. Compared by the server's name: psycopg has no
        codec for some encodings a migration may set (EUC_TW, MULE_INTERNAL), so it cannot name them, nor encode
        a statement for them: the RESET is sent as bytes (ASCII in every encoding), under the connection's lock
        and through psycopg's wait, which Ctrl-C interrupts."""
        if not conn.closed and _client_encoding(conn) != self.encoding:
            with conn.lock:
                conn.pgconn.send_query(b"RESET client_encoding")
                result = conn.wait(generators.execute(conn.pgconn))[-1]
            if result.status != ExecStatus.COMMAND_OK:
                raise psycopg.errors.error_from_result(result, encoding="utf-8")

    def statements(self) -> tuple[str, ...]:
        """Plain SQL text (sent inside a migration's message, where no parameter can go): two statements, so a
        migration costs the server two more answers, not six. set_config, not SET: `SET search_path = '<list>'`
        would read the whole list as one name."""
        check = ([f"set_config('client_connection_check_interval', '{CLIENT_CHECK_INTERVAL}', false)"]
                 if self.connection_check else [])
        return ("RESET ALL", "SELECT (" + ", ".join([
            self._as_the_run(),
            f"set_config('lock_timeout', '{self.lock_timeout_ms}ms', false)",
            f"set_config('statement_timeout', '{self.statement_timeout_ms}ms', false)",
            f"set_config('search_path', {_literal(self.search_path)}, false)", *check,
            # when the migration began, for its history row (several migrations share one message's time)
            "set_config('rdsm.started', extract(epoch FROM clock_timestamp())::text, true)"]) + ")")

    def as_the_run(self) -> tuple[str, ...]:
        """Back to the run's own user (before the history rows are written)."""
        return (f"SELECT {self._as_the_run()}",)

    def _as_the_run(self) -> str:
        # Only when a migration changed who the session is: setting session_authorization and role costs the
        # server about 0.4 ms each time (a fifth of what a small migration costs), and the same session_user and
        # current_user is the same starting point (CASE evaluates only the branch it takes).
        user = _literal(self.user)
        current = user if self.role == "none" else _literal(self.role)
        return (f"CASE WHEN session_user = {user} AND current_user = {current} THEN NULL "
                f"ELSE set_config('session_authorization', {user}, false) "
                f"|| set_config('role', {_literal(self.role)}, false) END")

    def restore(self, conn: psycopg.Connection, *then: str) -> None:
        """Back to the starting state, outside a migration (before bookkeeping, at the end of a run); `then`:
        statements sent in the same message after it."""
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        conn.execute("; ".join((*self.statements(), *then)), prepare=False)


def _client_encoding(conn: psycopg.Connection) -> str:
    """The session's client encoding as the server names it (reported to libpq whenever it changes)."""
    return (conn.pgconn.parameter_status(b"client_encoding") or b"").decode("ascii")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
