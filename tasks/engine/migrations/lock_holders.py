"""Who held the lock a migration gave up on (lock_timeout, SQLSTATE 55P03), for the retry's warning.

Once the statement is cancelled, `pg_blocking_pids()` of our session is empty: the sessions that held a lock on
the table the statement works on are read instead, right after, on the same connection. Named by pid,
application_name, user, state and how long their transaction has been open; never by their query text, which
may hold data. When the table is not known (a statement other than ALTER TABLE / CREATE INDEX) or the catalogs
cannot be read, the warning says how to find the holder while the retry waits.
"""

from __future__ import annotations

import psycopg
from psycopg import pq

from tasks.engine.migrations.statements import touched_table

MAX_NAMED = 5  # sessions named in one warning

_HOLDERS = """
SELECT a.pid, a.application_name, a.usename, a.state, extract(epoch FROM now() - a.xact_start)::bigint,
       string_agg(DISTINCT l.mode, '/' ORDER BY l.mode)
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.relation = to_regclass(%s)
 GROUP BY 1, 2, 3, 4, 5 ORDER BY 5 DESC NULLS LAST, 1 LIMIT %s
"""


def lock_holders(conn: psycopg.Connection, statement: str) -> str:
    """One clause for the warning: the sessions holding a lock on the statement's table now, or how to find the
    one that blocks the next attempt. Never raises: the retry goes on whatever this finds."""
    table = touched_table(statement)
    if table is not None and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        schema, _, name = table.rpartition(".")
        # The parser's names are the catalog's (folded unless quoted): quoted back, to_regclass reads them as such.
        qualified = ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name) if part)
        try:
            rows = conn.execute(_HOLDERS, (qualified, MAX_NAMED)).fetchall()
        except psycopg.Error:
            rows = None
        if rows:
            return f"holding a lock on {table} right after: " + "; ".join(_session(*row) for row in rows)
    pid = conn.info.backend_pid if not conn.closed else "<pid>"
    return ("to see who blocks it while the retry waits: SELECT pid, application_name, usename, state, "
            f"now() - xact_start FROM pg_stat_activity WHERE pid = ANY(pg_blocking_pids({pid}))")


def _session(pid: int, application: str | None, user: str | None, state: str | None, seconds: int | None,
             modes: str) -> str:
    opened = f", transaction open {seconds}s" if seconds is not None else ""
    return (f"pid {pid} (application_name {application or ''!r}, user {user or '?'}, state {state or '?'}"
            f"{opened}, {modes})")
