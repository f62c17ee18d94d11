"""The rehearsal cache: the last rehearsed database kept, so the next rehearsal applies only what is new.

A rehearsal of 1 new migration on top of 1,000 should not re-apply the 1,000. Copying a cached template
(`CREATE DATABASE ... TEMPLATE`) is O(tables) too: 1.5-2.6 s for 1,000 small tables here, against 4-5 s to
apply them (BENCHMARKS.md). So the rehearsal database itself is cached: renamed away when a rehearsal ends,
renamed back when the next one starts (a rename is a catalog update). Its name holds the key of the state
it is in, `rdsm_rc_<saved at, epoch ms>_<key>`; it refuses connections while cached; the newest
REHEARSAL_CACHE_KEPT per server and role are kept. A state is consumed when it is used: after 1,000 + 1
is rehearsed, editing that one new migration rebuilds from nothing.
"""

from __future__ import annotations

import hashlib
import re
import time

import psycopg
from psycopg import sql

from tasks.engine.connection import Connection, connected
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.history import read_history
from tasks.engine.migrations.scratch import admin_session

REHEARSAL_CACHE_KEPT = 2
_CACHED = re.compile(r"^rdsm_rc_(?P<saved>\d{13})_(?P<key>[0-9a-f]{32})$")


def rehearsal_keys(catalog: Catalog, role: str) -> list[str]:
    """`keys[k - 1]` names the database state after the catalog's first k migrations, applied by `role`.

    A hash chain over each migration's id and content checksum: an edit, a rename, a reordering or a removal
    changes the key of that migration and of every one after it, so those states are rebuilt.
    """
    digest = hashlib.sha256(f"rds-migrations rehearsal v1\0{role}".encode())
    keys = []
    for migration in catalog.migrations:
        digest.update(f"\0{migration.id}\0{migration.checksum}".encode())
        keys.append(digest.hexdigest()[:32])
    return keys


def _cached_databases(conn: psycopg.Connection) -> list[tuple[str, int, str]]:
    """(name, saved at, key) of the cached rehearsal databases this role owns, newest first."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'rdsm\\_rc\\_%' "
        "AND datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user) ORDER BY oid DESC"
    ).fetchall()
    found = [(row[0], _CACHED.match(row[0])) for row in rows]
    # Newest first by the time in the name; sorted() is stable, so the newer database wins a tie.
    return sorted(((name, int(m["saved"]), m["key"]) for name, m in found if m), key=lambda c: -c[1])


def _held_state(connection: Connection, catalog: Catalog) -> int | None:
    """How many of the catalog's first migrations the database holds, if it holds exactly those, unchanged."""
    with connected(connection) as conn:
        history = read_history(conn)
    count = len(history.applied)
    expected = catalog.migrations[:count]
    if history.dirty or set(history.applied) != {m.id for m in expected}:
        return None
    if any(history.checksums.get(m.id) != m.checksum for m in expected):
        return None
    return count


def take_cached(server: Connection, catalog: Catalog, keys: list[str], name: str,
                log: Log) -> int:
    """Rename the cached database holding the longest prefix of the catalog to `name`; how many it holds (0: none)."""
    position = {key: index + 1 for index, key in enumerate(keys)}
    try:
        with admin_session(server) as admin:
            conn = admin.conn
            cached = [(position[key], database) for database, _, key in _cached_databases(conn) if key in position]
            if not cached:
                return 0
            count, database = max(cached)
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(database),
                                                                          sql.Identifier(name)))
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        if _held_state(server.with_database(name), catalog) == count:
            log.info("Rehearsal starts from a cached database holding the first %d migrations", count)
            return count
        log.warning("Cached rehearsal database %s does not hold what its name says; rebuilding", database)
    except psycopg.Error as exc:  # taken by a concurrent rehearsal, or not ours to alter: build from nothing
        log.warning("Rehearsal cache not used (%s)", (exc.diag.message_primary or type(exc).__name__))
    with admin_session(server) as admin:
        admin.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return 0


def put_cached(server: Connection, catalog: Catalog, keys: list[str], name: str,
               log: Log) -> bool:
    """Cache the rehearsal database under the state it holds; drop the oldest beyond the kept number."""
    try:
        count = _held_state(server.with_database(name), catalog)
        if not count:
            return False
        cached = f"rdsm_rc_{time.time_ns() // 1_000_000:013d}_{keys[count - 1]}"
        comment = f"rds-migrations rehearsal cache: the first {count} migrations, to {catalog.migrations[count - 1].id}"
        with admin_session(server) as admin:
            admin.conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name),
                                                                                sql.Identifier(cached)))
    except psycopg.Error as exc:
        log.warning("Rehearsal database not cached (%s)", exc.diag.message_primary or type(exc).__name__)
        return False
    try:
        with admin_session(server) as admin:
            conn = admin.conn
            # While cached, nobody connects to it: it cannot change, and nothing holds up the next rename.
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(cached)))
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(cached), sql.Literal(comment)))
            for database, _, _ in _cached_databases(conn)[REHEARSAL_CACHE_KEPT:]:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:  # a concurrent rehearsal took or dropped one; the cache stays usable
        log.warning("Rehearsal cache not tidied (%s)", exc.diag.message_primary or type(exc).__name__)
    return True
