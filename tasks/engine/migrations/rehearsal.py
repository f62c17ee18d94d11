"""The rehearsal: what the run will do, done first on a throwaway database (scratch.py says where).

Two ways, chosen by the environment (`rehearsal.start`):
- from nothing (`empty`): every migration of the directory applied on an empty database, the tail that has
  rollback files rolled back and applied again (the directory must build a database on its own: pull
  requests); the last rehearsed database may be kept for the next one (rehearsal_cache.py);
- on the target's own schema (`target_schema`): the target's schema copied (pg_dump --schema-only, read-only
  on the target) with its history, then only the pending migrations applied on top, and those with
  rollback files at the end rolled back and applied again: what will really happen, tables that no
  migration made included.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import psycopg

from tasks.engine.connection import Connection, connection_from_url
from tasks.engine.credentials import with_environment_tls
from tasks.engine.embedded import embedded_server
from tasks.engine.environments import Environment, Policy
from tasks.engine.errors import ConfigError, DatabaseUnreachable
from tasks.engine.logs import Log, Named
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.rehearsal_cache import put_cached, rehearsal_keys, take_cached
from tasks.engine.migrations.report import RehearsalResult
from tasks.engine.migrations.results import ApplyReport, MigrationError
from tasks.engine.migrations.rollback import roll_back
from tasks.engine.migrations.schema_copy import dump_schema, restore_schema
from tasks.engine.migrations.scratch import Place, StartingPoint, choose_place, create_scratch, scratch_database
from tasks.engine.migrations.session import session

logger = logging.getLogger(__name__)

UNDEFINED_TABLE = "42P01"
HOLDS_SQL = """
SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relname = %(relation)s AND CASE WHEN %(schema)s::text IS NULL THEN pg_table_is_visible(c.oid)
                                                      ELSE n.nspname = %(schema)s END)"""


def rehearsal_server(environment: Environment, target: Connection | None) -> Connection | None:
    """The server the environment asks rehearsals to run on (scratch.choose_place may stand another in)."""
    kind = environment.rehearsal.kind
    if kind == "none":
        return None
    if kind == "url_env":
        url = os.environ.get(environment.rehearsal.variable)
        if not url:
            raise ConfigError(f"rehearsal.kind is url_env but {environment.rehearsal.variable} is not set")
        # The environment's TLS minimum holds for every connection of its runs, the rehearsal server's too.
        return with_environment_tls(connection_from_url(url, f"env:{environment.rehearsal.variable}"), environment)
    if kind == "embedded" or target is None:
        server = embedded_server()
        server.start()
        return server.connection()
    return target


def rehearsal_place(environment: Environment, target: Connection, migrations: Sequence[Migration], *,
                    dry_run: bool, log: Log = logger) -> Place:
    """Where `migrations` are replayed for `target` outside a rehearsal proper (drift's reference, a baseline's
    check): the environment's rehearsal server, the target's own when it names none, or a stand-in where that
    would change the target's server (scratch.choose_place)."""
    asked = rehearsal_server(environment, target) or target
    return choose_place(asked, target, migrations, dry_run=dry_run, log=log)


def _policy(policy: Policy) -> Policy:
    # The rehearsal must not wait on anything for long: no other session uses its database.
    return policy.model_copy(update={"migration_lock_wait_seconds": 0, "lock_timeout_retries": 0})


def _tail(migrations: list[Migration]) -> list[Migration]:
    """The migrations at the end that have rollback files, last first: rolled back, then applied again."""
    tail = []
    for migration in reversed(migrations):
        if not migration.has_rollback:
            break
        tail.append(migration)
    return tail


def rehearse(catalog: Catalog, place: Place | Connection, policy: Policy,
             log: Log = logger, *, cache: bool = True, target: Connection | None = None,
             environment: str | None = None) -> RehearsalResult:
    """Apply everything on a new database, roll back the tail that has rollback files, re-apply; drop it.

    With `cache` (the default), the database is not built from nothing when a database holding the first k
    migrations, exactly as they are now, is cached on the server: that database is taken (renamed, not copied)
    and only the rest is applied. The tail is rolled back and re-applied as without the cache, so the checks
    are the same; only the starting point differs. Afterwards the database is cached again under the state it
    ends in (see "the rehearsal cache" below).

    `target` (of the `environment` so named): when a migration fails on a relation that does not exist and the
    target holds it, the failure names the way out, a rehearsal on a copy of the target's schema.

    Example:
        result = rehearse(catalog, server, environment.policy)   # result.reused: came with a cached database
    """
    started = time.monotonic()
    place = place if isinstance(place, Place) else Place(place)
    server = place.server
    rehearsal_policy = _policy(policy)
    # A stand-in's roles and databases are made for this rehearsal alone; what the migrations make beyond their
    # database (a database, a server setting) is undone afterwards, so a cached database would not find it.
    cache = cache and not (place.stand_in or place.own_databases or place.own_settings)
    keys = rehearsal_keys(catalog, server.user) if cache else []
    reused = 0
    rolled_back: list[str] = []
    rehearsing = Named(log, "Rehearsal", sentence=True)  # its lines told from the run's own
    first: ApplyReport | None = None  # what the rehearsal applied itself (on top of a cached database's)
    failure: MigrationError | None = None
    with scratch_database(place, log) as name:
        reused = take_cached(server, catalog, keys, name, log) if keys else 0
        scratch = server.with_database(name) if reused else create_scratch(place, name, log)
        finished = False  # the rehearsal ran to its end or to a migration's failure (not to another exception)
        try:
            first = apply_pending(scratch, catalog, rehearsal_policy, git_sha="rehearsal", log=rehearsing)
            tail = _tail(list(catalog.migrations))
            _roll_back_tail(scratch, tail, rehearsal_policy, rolled_back, log)
            if tail:
                apply_pending(scratch, catalog, rehearsal_policy, git_sha="rehearsal", log=rehearsing)
            finished = True
        except MigrationError as exc:
            failure, finished = exc, True
        finally:
            # Worth keeping: the end of a rehearsal that passed, or the state before a transactional migration
            # that failed while applying (rolled back: the database holds exactly the migrations before it).
            keep = bool(keys) and finished and (
                failure is None
                or (not rolled_back and failure.report.failed is not None and failure.report.failed.transactional)
            )
            if keep:
                put_cached(server, catalog, keys, name, log)  # renamed away: the scratch drop finds nothing
    return RehearsalResult(
        where=f"{place.where} (temporary database {name})",
        applied=_applied(first, failure),
        rolled_back=tuple(rolled_back),
        failure=_rehearsal_failure(failure, _from_nothing_way_out(failure, target, environment)),
        duration_seconds=time.monotonic() - started,
        reused=reused,
        note=place.note,
    )


def rehearse_on_target_schema(catalog: Catalog, pending: tuple[str, ...], target: Connection,
                              place: Place | Connection, policy: Policy, log: Log = logger, *,
                              why: str | None = None) -> RehearsalResult:
    """Copy the target's schema and history to a scratch database (read-only on the target), apply only the
    `pending` migrations on top, roll back and apply again those at the end with rollback files. `why`: the
    reason it runs here when the environment did not ask for it, shown with the result."""
    started = time.monotonic()
    place = place if isinstance(place, Place) else Place(place)
    rehearsal_policy = _policy(policy)
    dump = dump_schema(target)
    with session(target, read_only=True) as conn:
        applied = Ledger.open(conn).read().applied
        start = StartingPoint.of(conn)
    by_id = {m.id: m for m in catalog.migrations}
    rolled_back: list[str] = []
    rehearsing = Named(log, "Rehearsal", sentence=True)  # its lines told from the run's own
    failure: MigrationError | None = None
    with scratch_database(place, log) as name:
        scratch = create_scratch(place, name, log)
        restore_schema(dump, scratch)
        start.prepare(scratch, (), log)  # the dump holds the schemas, not the database's search_path
        with session(scratch) as conn:
            ledger = Ledger.open(conn)
            ledger.create_tables()
            ledger.record_applied([by_id[i] for i in applied if i in by_id], "rehearsal", None,
                                  operation="mark", comment="rds-migrations rehearsal: the target's history")
        last = pending[-1] if pending else None
        first: ApplyReport | None = None
        try:
            first = apply_pending(scratch, catalog, rehearsal_policy, target=last, git_sha="rehearsal", log=rehearsing)
            tail = _tail([by_id[i] for i in pending])
            _roll_back_tail(scratch, tail, rehearsal_policy, rolled_back, log)
            if tail:
                apply_pending(scratch, catalog, rehearsal_policy, target=last, git_sha="rehearsal", log=rehearsing)
        except MigrationError as exc:
            failure = exc
    return RehearsalResult(
        where=f"{place.where} (temporary database {name}, a copy of the target's schema)",
        applied=_applied(first, failure),
        rolled_back=tuple(rolled_back),
        failure=_rehearsal_failure(failure),
        duration_seconds=time.monotonic() - started,
        note="; ".join(n for n in (why, place.note) if n) or None,
        on_target_schema=True,
    )


def _roll_back_tail(scratch: Connection, tail: list[Migration], policy: Policy, rolled_back: list[str],
                    log: Log) -> None:
    """Roll back `tail` (last first), each id added to `rolled_back` once undone; the apply that follows
    applies them again."""
    if tail:
        log.info("Rehearsal: rolling back %s (last first; each has a rollback file), then applying again",
                 ", ".join(m.id for m in tail))
    for migration in tail:
        roll_back(scratch, migration, policy)
        rolled_back.append(migration.id)


def _applied(first: ApplyReport | None, failure: MigrationError | None) -> int:
    """How many migrations the rehearsal applied itself before any rollback: all it was to apply, or those before
    the one that failed."""
    report = first if first is not None else failure.report if failure is not None else None
    return len(report.applied) if report is not None else 0


def _rehearsal_failure(failure: MigrationError | None, way_out: str = "") -> str | None:
    """What failed in the rehearsal, without what it left in the scratch database (dropped with it) or how to
    resolve that: the target was not touched. `way_out`: a line more, when the failure has one of its own."""
    if failure is None:
        return None
    lines = str(failure).split("\n")  # the migration's (or its rollback file's) failure, then what it left
    ends = next((n for n, line in enumerate(lines) if line.startswith("  statement")), len(lines) - 1)
    return "\n".join(lines[: ends + 1] + ([way_out] if way_out else []))


def _from_nothing_way_out(failure: MigrationError | None, target: Connection | None, environment: str | None) -> str:
    """When a migration rehearsed from nothing failed on a relation that does not exist and the target holds
    it (adopted, or made by hand), no migration makes it: rehearsing on a copy of the target's schema is the way
    out. Read-only on the target, and only after such a failure."""
    failed = failure.report.failed if failure is not None else None
    if failed is None or failed.sqlstate != UNDEFINED_TABLE or target is None:
        return ""
    name = _missing_relation(failed.message)
    if name is None or not _holds(target, name):
        return ""
    where = f"[environments.{environment}]" if environment else "the environment"
    return (f"  {name} is on the target, but no migration makes it and this rehearsal started from an empty "
            f"database: set `rehearsal = {{ start = \"target_schema\" }}` in {where} (deployments/environments.toml) "
            "to rehearse the pending migrations on a copy of the target's schema")


def _missing_relation(message: str) -> str | None:
    """The name in the server's `relation "NAME" does not exist` (its words, not SQL), as the migration wrote
    it; None for any other wording."""
    _, quote, rest = message.partition('"')
    name, said, _ = rest.partition('" does not exist')
    return name if quote and said and name else None


def _holds(target: Connection, name: str) -> bool:
    """Whether the target holds relation `name` (schema-qualified, or found on its own search_path)."""
    schema, _, relation = name.rpartition(".")
    try:
        with session(target, read_only=True) as conn:
            row = conn.execute(HOLDS_SQL, {"schema": schema or None, "relation": relation}).fetchone()
    except (psycopg.Error, DatabaseUnreachable):  # out of reach now: the failure is told without the way out
        return False
    return bool(row and row[0])
