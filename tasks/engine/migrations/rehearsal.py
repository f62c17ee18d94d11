"""The rehearsal: every migration applied on a throwaway database, the tail that has rollback files rolled
back and applied again, then the database dropped (or cached, see rehearsal_cache.py). Where: the target's
own server, the embedded server, or a scratch server named by an environment variable (a CI container)."""

from __future__ import annotations

import logging
import os
import time
import uuid

from psycopg import sql

from tasks.engine.connection import Connection, connected, connection_from_url
from tasks.engine.embedded import embedded_server
from tasks.engine.environments import Environment, Policy
from tasks.engine.errors import ConfigError
from tasks.engine.logs import Log
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.rehearsal_cache import put_cached, rehearsal_keys, take_cached
from tasks.engine.migrations.report import RehearsalResult
from tasks.engine.migrations.results import MigrationError
from tasks.engine.migrations.rollback import roll_back

logger = logging.getLogger(__name__)


def rehearsal_server(environment: Environment, target: Connection | None) -> Connection | None:
    """The server on which a throwaway rehearsal database is created, per the environment's setting."""
    kind = environment.rehearsal.kind
    if kind == "none":
        return None
    if kind == "url_env":
        url = os.environ.get(environment.rehearsal.variable)
        if not url:
            raise ConfigError(f"rehearsal.kind is url_env but {environment.rehearsal.variable} is not set")
        return connection_from_url(url, f"env:{environment.rehearsal.variable}")
    if kind == "embedded" or target is None:
        server = embedded_server()
        server.start()
        return server.connection()
    return target


def rehearse(catalog: Catalog, server: Connection, policy: Policy,
             log: Log = logger, *, cache: bool = True) -> RehearsalResult:
    """Apply everything on a new database, roll back the tail that has rollback files, re-apply; drop it.

    With `cache` (the default), the database is not built from nothing when a database holding the first k
    migrations, exactly as they are now, is cached on the server: that database is taken (renamed, not copied)
    and only the rest is applied. The tail is rolled back and re-applied as without the cache, so the checks
    are the same; only the starting point differs. Afterwards the database is cached again under the state it
    ends in (see "the rehearsal cache" below).

    Example:
        result = rehearse(catalog, server, environment.policy)   # result.reused: migrations not re-applied
    """
    started = time.monotonic()
    name = f"rdsm_rehearsal_{uuid.uuid4().hex[:12]}"
    # The rehearsal must not wait on anything for long: no other session uses this database.
    rehearsal_policy = policy.model_copy(update={"migration_lock_wait_seconds": 0, "lock_timeout_retries": 0})
    keys = rehearsal_keys(catalog, server.user) if cache else []
    reused = take_cached(server, catalog, keys, name, log) if keys else 0
    if not reused:
        with connected(server) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    where = f"{server.host}:{server.port} (temporary database {name}"
    where += f", from a cached database holding the first {reused} migrations)" if reused else ")"
    scratch = server.with_database(name)
    rolled_back: list[str] = []
    failure: MigrationError | None = None
    finished = False  # the rehearsal ran to its end or to a migration's failure (not to another exception)
    try:
        apply_pending(scratch, catalog, rehearsal_policy, git_sha="rehearsal", log=log)
        tail = []
        for migration in reversed(catalog.migrations):
            if not migration.has_rollback:
                break
            tail.append(migration)
        for migration in tail:
            roll_back(scratch, migration, rehearsal_policy)
            rolled_back.append(migration.id)
        if tail:
            apply_pending(scratch, catalog, rehearsal_policy, git_sha="rehearsal", log=log)
        finished = True
    except MigrationError as exc:
        failure, finished = exc, True
    finally:
        # Worth keeping: the end of a rehearsal that passed, or the state before a transactional migration that
        # failed while applying (rolled back, so the database holds exactly the migrations before it).
        keep = bool(keys) and finished and (
            failure is None
            or (not rolled_back and failure.report.failed is not None and failure.report.failed.transactional)
        )
        if not (keep and put_cached(server, catalog, keys, name, log)):
            with connected(server) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return RehearsalResult(
        where=where,
        applied=len(catalog.migrations),
        rolled_back=tuple(rolled_back),
        failure=str(failure) if failure else None,
        duration_seconds=time.monotonic() - started,
        reused=reused,
    )
