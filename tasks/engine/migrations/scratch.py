"""Scratch databases: the throwaway databases rehearsals and drift checks build schemas in, and where.

A scratch database is named after the session that keeps it, `rdsm_rehearsal_<keeper pid>_<random>`, and
that keeper session stays open for as long as the database is used. Every new scratch database first drops
the ones whose keeper is gone and that nobody is connected to: a run killed with `kill -9` leaves nothing
behind once the next run on that server starts.

A scratch database commits without waiting for its WAL to reach the disk (`synchronous_commit = off` set
on the database): what is in it is thrown away, a crash loses only whole transactions at its end (the
history in it stays true, and the rehearsal cache checks it before reuse), and on RDS, where every commit
waits for storage in two zones, a rehearsal of hundreds of migrations no longer waits for each one.

Where: the target's own server (same version, same extensions, the same roles), unless that would change
the target's server: in a dry run, or when a migration to be rehearsed reaches beyond one database (roles,
tablespaces, ALTER DATABASE, ALTER SYSTEM). Then the embedded server, with the target's roles created there
first (names only, no login), so that a GRANT to an existing role works as it would on the target.

Who: the role sessions start as. When that is not the login itself (`ALTER ROLE <login> SET role = <owner>`,
as RDS teams give objects to a role nobody logs in as) and only the login may create databases, the login
makes, renames and drops scratch databases (`admin_session`), and gives the role it starts as the rights of
an owner in each one (`create_scratch`): migrations run there as that role, as they will on the target.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from tasks.engine.connection import Connection, connected
from tasks.engine.embedded import embedded_server
from tasks.engine.environments import EmbeddedCredentials, Environment
from tasks.engine.errors import RehearsalUnavailable
from tasks.engine.logs import Log
from tasks.engine.migrations.beyond import Beyond
from tasks.engine.migrations.catalog import Migration
from tasks.engine.migrations.statements import named_schemas

logger = logging.getLogger(__name__)
SCRATCH = re.compile(r"^rdsm_rehearsal_(?:(?P<pid>\d+)_)?[0-9a-f]{8,12}$")

# Ours (by name) and owned by this role, and the session that kept it is gone: what a dead run's statements
# may still be doing in it is ended with it (FORCE). A name without a keeper's pid comes from an older
# version of this tool, which kept no session: it goes only when nobody is connected to it.
ABANDONED_SQL = """
SELECT d.datname, substring(d.datname FROM '^rdsm_rehearsal_([0-9]+)_') IS NOT NULL FROM pg_database d
WHERE d.datname ~ '^rdsm_rehearsal_'
  AND d.datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                  WHERE a.pid::text = substring(d.datname FROM '^rdsm_rehearsal_([0-9]+)_'))
  AND (substring(d.datname FROM '^rdsm_rehearsal_([0-9]+)_') IS NOT NULL
       OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname))
"""


@dataclass(frozen=True)
class Place:
    """Where scratch databases are made: `server` (its `dbname` is the database the admin session uses) and,
    when it is not the place the environment asked for, why, and what the stand-in server is given first."""

    server: Connection
    note: str | None = None
    roles_from: Connection | None = None  # the target, whose roles (by name) the stand-in is given first
    own_roles: frozenset[str] = frozenset()  # roles the migrations create: not copied, dropped afterwards
    databases: tuple[str, ...] = ()  # empty databases named as the target's (for ALTER DATABASE <name>)
    own_databases: frozenset[str] = frozenset()  # databases the migrations create: dropped afterwards when new
    own_settings: frozenset[str] = frozenset()  # what the migrations ALTER SYSTEM ("*": RESET ALL): put back

    @property
    def where(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    @property
    def stand_in(self) -> bool:
        return self.roles_from is not None


def choose_place(asked: Connection, target: Connection | None, migrations: Iterable[Migration], *,
                 dry_run: bool, log: Log = logger) -> Place:
    """`asked` is the server the environment names for rehearsals; when it is the target's own server and
    rehearsing there would change that server, the embedded server instead (see the module's docstring)."""
    beyond = Beyond.of(migrations)
    leaves = {"own_databases": beyond.databases, "own_settings": beyond.settings}
    if target is None or (asked.host, asked.port) != (target.host, target.port):
        return Place(asked, **leaves)
    reasons = []
    if dry_run:
        reasons.append("a dry run creates nothing on the target's server")
    if beyond.reaching:
        reasons.append(f"{', '.join(beyond.reaching)} would change the target's server itself")
    if not reasons:
        return Place(asked, **leaves)
    local = embedded_server()  # looked up only now: finding its binaries takes ~20 ms
    if local.port is not None and (target.host, target.port) == ("127.0.0.1", local.port):
        return Place(asked, **leaves)  # the target is on the tool's own throwaway server: there is no other
    note = f"rehearsed on the embedded server, not the target's: {'; '.join(reasons)}"
    log.info("%s", note)
    local.start()
    return Place(local.connection(), note, roles_from=target, own_roles=beyond.roles,
                 databases=(target.dbname,) if beyond.alters_databases else (), **leaves)


# The role sessions start as (when it is not the login), whether it may create databases, the login's too, and
# whether the login has the rights of the roles it belongs to (NOINHERIT: it does not).
WHO_SQL = """
SELECT CASE WHEN current_user <> session_user THEN current_user END, c.rolcreatedb OR c.rolsuper,
       s.rolcreatedb OR s.rolsuper, s.rolinherit OR s.rolsuper
FROM pg_roles c, pg_roles s WHERE c.rolname = current_user AND s.rolname = session_user
"""


@dataclass(frozen=True)
class AdminSession:
    """A session that makes, renames and drops scratch databases. `starts_as`: the role the login's sessions
    start as, when this session acts as the login instead (see the module's docstring); None otherwise.
    `given_public`: the role that needs the public schema granted in a new scratch database (the one migrations
    run as, when it lacks the database owner's rights there: it is not the owner, or owns it NOINHERIT)."""

    conn: psycopg.Connection
    starts_as: str | None = None
    given_public: str | None = None


@contextmanager
def admin_session(server: Connection, **kwargs: object) -> Iterator[AdminSession]:
    """A session on the scratch server as whichever of the starting role and the login may create databases
    (the starting role when both may): every scratch database is then made, found and dropped by the same."""
    with connected(server, **kwargs) as conn:
        role, role_may, login_may, inherits = conn.execute(WHO_SQL).fetchone() or (None, True, True, True)
        if role is not None and not role_may and login_may:
            conn.execute("SET ROLE NONE")
            yield AdminSession(conn, starts_as=role, given_public=role)
        else:
            yield AdminSession(conn, given_public=None if inherits or role is not None else server.user)


@contextmanager
def scratch_database(place: Place, log: Log = logger, *, name: str | None = None) -> Iterator[str]:
    """A new empty database on `place` (or `name`, when the caller renames a cached one into it), kept by a
    session of its own until the block ends; dropped afterwards unless the caller renamed it away."""
    with admin_session(place.server, application_name="rds-migrations scratch keeper") as admin:
        keeper = admin.conn
        drop_abandoned(keeper, log)
        made = _prepare_stand_in(place, keeper, log) if place.stand_in else []
        name = name or keeper_name(keeper)
        before = ServerState.of(keeper, place, log)
        try:
            yield name
        finally:
            before.put_back(keeper, place, log)
            _quietly(keeper, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)), log)
            for database in made:
                _quietly(keeper, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(database)), log)
            for role in sorted(place.own_roles):  # what the rehearsed migrations made on the stand-in goes
                _quietly(keeper, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)), log)


@contextmanager
def empty_if_missing(environment: Environment, connection: Connection, log: Log = logger, *,
                     created: bool = False) -> Iterator[Connection]:
    """`connection`; or, when it names an embedded database that does not exist yet, an empty scratch database
    on the same server in its place until the block ends. A run creates that database; a dry run and a
    read-only command do not (see credentials.read_embedded): they read what the run would start from.
    `created`: the connection was read with `create=True`, so its database exists (nothing to ask)."""
    if created or not isinstance(environment.credentials, EmbeddedCredentials):
        yield connection
        return
    server = connection.with_database("postgres")
    with connected(server) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (connection.dbname,)).fetchone()
    if exists:
        yield connection
        return
    log.info("The embedded database %s does not exist yet: read as the empty database a run creates (a dry run "
             "and a read-only command create nothing)", connection.dbname)
    place = Place(server)
    with scratch_database(place, log) as name:
        yield create_scratch(place, name, log).model_copy(update={"stands_for": connection.dbname})


def create_scratch(place: Place, name: str, log: Log = logger) -> Connection:
    """Create the scratch database `name` (empty, from the server's template) on `place`, set to commit without
    waiting for the disk; the connection to it. Made by the login for the role its sessions start as, that
    role gets an owner's rights in it (the database's and its public schema's)."""
    database = sql.Identifier(name)
    with admin_session(place.server) as admin:
        try:
            admin.conn.execute(sql.SQL("CREATE DATABASE {}").format(database))
        except psycopg.errors.InsufficientPrivilege as exc:
            alter = sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(place.server.user)).as_string(admin.conn)
            raise RehearsalUnavailable(
                f"the rehearsal cannot create its temporary database on {place.where}: "
                f"{exc.diag.message_primary or exc} (as {place.server.user}). Nothing was applied. Give the role "
                f"CREATEDB ({alter}), or rehearse elsewhere: set the environment's "
                f'rehearsal = {{ kind = "embedded" }} (or "url_env") in the environments file') from None
        _quietly(admin.conn, sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(database), log)
        if admin.starts_as is not None:
            admin.conn.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(
                database, sql.Identifier(admin.starts_as)))
        newer = admin.conn.info.server_version >= 150000
    scratch = place.server.with_database(name)
    if admin.given_public is not None and newer:
        # The public schema belongs to pg_database_owner (PostgreSQL 15+; before, everybody may create in it),
        # whose rights a NOINHERIT login has only as that role (measured on 15 and 16).
        with connected(scratch) as conn:
            _quietly(conn, sql.SQL("SET ROLE pg_database_owner; GRANT ALL ON SCHEMA public TO {}").format(
                sql.Identifier(admin.given_public)), log)
    return scratch


def _quietly(conn: psycopg.Connection, statement: sql.Composable, log: Log) -> None:
    try:
        conn.execute(statement)
    except psycopg.Error as exc:  # a drop: the next run's drop_abandoned finds what is left
        log.warning("Not done on the rehearsal's server (%s): %s", exc.diag.message_primary or exc,
                    statement.as_string(conn))


def _prepare_stand_in(place: Place, conn: psycopg.Connection, log: Log) -> list[str]:
    """The target's roles and the databases the migrations name, on the stand-in server; the databases made."""
    assert place.roles_from is not None
    for role in sorted(place.own_roles):  # a stopped earlier rehearsal may have left them
        _quietly(conn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)), log)
    _copy_roles(place.roles_from, conn, log, skip=place.own_roles)
    made = []
    for database in place.databases:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            made.append(database)
    return made


def keeper_name(conn: psycopg.Connection) -> str:
    """A scratch name for the session `conn` (when it keeps a database the caller creates itself)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    return f"rdsm_rehearsal_{pid}_{uuid.uuid4().hex[:8]}"


def drop_abandoned(conn: psycopg.Connection, log: Log = logger) -> list[str]:
    """Drop the scratch databases dead runs left on this server; the ones dropped."""
    dropped = []
    for name, kept in conn.execute(ABANDONED_SQL).fetchall():
        if not SCRATCH.match(name):
            continue
        try:
            drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)" if kept else "DROP DATABASE IF EXISTS {}"
            conn.execute(sql.SQL(drop).format(sql.Identifier(name)))  # type: ignore[arg-type]
            dropped.append(name)
        except psycopg.Error as exc:  # someone connected meanwhile, or it is not ours to drop
            log.info("Left scratch database %s (%s)", name, exc.diag.message_primary or exc)
    if dropped:
        log.info("Dropped %d scratch database(s) a stopped run left: %s", len(dropped), ", ".join(dropped))
    return dropped


def _copy_roles(target: Connection, conn: psycopg.Connection, log: Log, *, skip: frozenset[str]) -> None:
    """The target server's roles, by name only (no login, no password, no attribute), on this server."""
    with connected(target) as source:
        names = [r[0] for r in source.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'")]
    existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
    for name in sorted(set(names) - existing - skip):
        try:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            log.info("Role %s not made on the rehearsal server (%s)", name, exc.diag.message_primary or exc)


# The server's settings written by ALTER SYSTEM (the same query: the file as it is on disk, read after a change).
AUTO_CONF_SQL = "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'"


@dataclass(frozen=True)
class ServerState:
    """What of the scratch server a rehearsal's migrations may change beyond their database, before they ran: its
    databases and its ALTER SYSTEM settings (only when the migrations touch them). `put_back`: the databases they
    made are dropped and the settings written back, so the next rehearsal there finds the server as this one did."""

    databases: frozenset[str] = frozenset()
    settings: dict[str, str] | None = None

    @classmethod
    def of(cls, conn: psycopg.Connection, place: Place, log: Log) -> ServerState:
        databases = frozenset(r[0] for r in conn.execute("SELECT datname FROM pg_database")) \
            if place.own_databases else frozenset()
        return cls(databases, _auto_conf(conn, log) if place.own_settings else None)

    def put_back(self, conn: psycopg.Connection, place: Place, log: Log) -> None:
        for database in sorted(place.own_databases - self.databases):
            _quietly(conn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)), log)
        now = _auto_conf(conn, log) if self.settings is not None else None
        if now is None or now == self.settings:
            return
        names = set(self.settings) | set(now) if "*" in place.own_settings else place.own_settings
        for name in sorted(n for n in names if now.get(n) != self.settings.get(n)):
            _quietly(conn, sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), _file_value(
                name, self.settings[name])) if name in self.settings else sql.SQL("ALTER SYSTEM RESET {}").format(
                sql.Identifier(name)), log)
        _quietly(conn, sql.SQL("SELECT pg_reload_conf()"), log)


# Settings whose value is a list of names the server quotes one by one (GUC_LIST_QUOTE, a flag it does not show:
# pg_dump keeps the same list). One literal would be written back as ONE quoted name: each is passed on its own.
LIST_QUOTE = frozenset({"local_preload_libraries", "search_path", "session_preload_libraries",
                        "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"})
_LIST_ITEM = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^",]*?))\s*(,|$)')


def _file_value(name: str, value: str) -> sql.Composable:
    """`value` as postgresql.auto.conf holds it, for ALTER SYSTEM SET to write it back the same."""
    if name not in LIST_QUOTE or not value.strip():
        return sql.Literal(value)
    items, at = [], 0
    while (item := _LIST_ITEM.match(value, at)) is not None:  # as the server splits it (SplitGUCList)
        quoted, plain, comma = item.groups()
        items.append(quoted.replace('""', '"') if quoted is not None else plain)
        if not comma:
            return sql.SQL(", ").join(sql.Literal(i) for i in items)
        at = item.end()
    return sql.Literal(value)  # not a list as the server writes one: as it is


def _auto_conf(conn: psycopg.Connection, log: Log) -> dict[str, str] | None:
    try:
        return dict(conn.execute(AUTO_CONF_SQL).fetchall())
    except psycopg.Error as exc:  # not a superuser there: what ALTER SYSTEM set stays (logged)
        log.warning("The rehearsal's server settings cannot be read (%s): what the migrations set with ALTER "
                    "SYSTEM stays there", exc.diag.message_primary or exc)
        return None


@dataclass(frozen=True)
class StartingPoint:
    """How the target's sessions find schemas: its search_path, the schemas on it that exist, and whether it has
    a `public` schema at all."""

    search_path: str
    schemas: tuple[str, ...]
    has_public: bool

    @classmethod
    def of(cls, conn: psycopg.Connection) -> StartingPoint:
        path, schemas, public = conn.execute(  # type: ignore[misc]
            "SELECT current_setting('search_path'), current_schemas(false), "
            "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')").fetchone()
        return cls(path, tuple(schemas), public)

    def prepare(self, scratch: Connection, migrations: Iterable[Migration], log: Log) -> None:
        """Make the scratch database start like the target (its schemas, its search_path, no `public` when it has
        none; a scratch database holding a copy of its schema gets its search_path, which no dump holds), as its owner
        (the login or the role it starts as, see scratch.py), the schemas given to the role migrations run as.
        What cannot be done is logged and left: drift then shows it, as before."""
        path = self.search_path if self.search_path != '"$user", public' else None
        if self.has_public and set(self.schemas) <= {"public"} and path is None:
            return  # the target starts as a new database does
        made = {name for migration in migrations for statement in migration.statements
                for name in named_schemas(statement)}
        schemas = [schema for schema in self.schemas if schema != "public" and schema not in made]
        drop_public = not self.has_public and "public" not in made
        if not (schemas or drop_public or path):
            return  # what differs, the migrations make themselves
        with connected(scratch) as conn:
            runs_as, owner = conn.execute(  # type: ignore[misc]
                "SELECT current_user, pg_get_userbyid(datdba) FROM pg_database "
                "WHERE datname = current_database()").fetchone()
            # Each step: the ways to do it, tried in order until one is taken.
            steps: list[tuple[sql.Composable, ...]] = [(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)),)]
            steps += [(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(runs_as)),) for schema in schemas]
            if drop_public:  # pg_database_owner's (15+): as that role if NOINHERIT
                steps.append((sql.SQL("DROP SCHEMA IF EXISTS public"), sql.SQL(
                    "SET ROLE pg_database_owner; DROP SCHEMA IF EXISTS public; SET ROLE {}").format(
                    sql.Identifier(owner))))
            if path is not None:
                steps.append((sql.SQL("SELECT set_config('search_path', {}, false); "
                                      "ALTER DATABASE {} SET search_path FROM CURRENT").format(
                    sql.Literal(path), sql.Identifier(scratch.dbname)),))
            for ways in steps:
                for way in ways:
                    try:
                        conn.execute(way)
                        break
                    except psycopg.Error as exc:
                        failed = exc
                else:
                    log.warning("The scratch database does not start like the target (%s): %s",
                                failed.diag.message_primary or failed, ways[-1].as_string(conn))
