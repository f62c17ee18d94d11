"""The local kind of restore-and-swap (the `Backend` contract is in swap.py): a pg_dump file restored with
pg_restore into a new database on the live one's server, made like the live one, then swapped in with
`ALTER DATABASE … RENAME`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
from psycopg import sql
from pydantic import SecretStr

from tasks.engine.clients import client_binary, dumped_by
from tasks.engine.connection import Connection
from tasks.engine.errors import RefreshError, redact
from tasks.engine.logs import Log
from tasks.engine.processes import child_environment
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.swap import LiveCopy, SwapPlan, describe_error, ended_in

# Settings whose value is a list of names, each quoted on its own (pg_dump's variable_is_guc_list_quote).
_NAME_LISTS = {"search_path", "temp_tablespaces", "local_preload_libraries", "session_preload_libraries"}


class LocalDatabases:
    """The local kind: pg_dump files restored with pg_restore into a new database on the same server, swapped
    with ALTER DATABASE ... RENAME."""

    def __init__(self, credentials: Connection, plan: SwapPlan, log: Log, *, keep_roles: bool = False) -> None:
        """`keep_roles`: restore the objects' owners and grants (a restore of the database's own dump); else (a
        refresh: the source's roles) the environment's user owns everything and no grant is restored."""
        self.plan, self.log = plan, log
        self.keep_roles = keep_roles
        self.credentials = credentials
        self.admin = credentials.with_database("postgres")  # a database is renamed from another one

    def _exists(self, conn: psycopg.Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def inspect(self) -> LiveCopy:
        with self.admin.connect() as conn:
            if not self._exists(conn, self.plan.live):
                raise RefreshError(f"database {self.plan.live} not found on {self.admin.describe()}: "
                                   "nothing was changed")
            for name in (self.plan.new, self.plan.old):
                if self._exists(conn, name):
                    raise RefreshError(f"database {name} already exists: nothing was changed; drop it or run "
                                       "again in a second (the names hold the time)")
        return LiveCopy({})

    def create(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        with self.admin.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.plan.check(name, "create"))))

    def _like_the_live_one(self, conn: psycopg.Connection, name: str) -> None:
        """The new database gets what a dump does not carry (it holds the objects in one database, not the
        database itself): the live one's owner, who may connect (its access privileges: a database closed to
        PUBLIC stays closed) and its settings (`ALTER DATABASE … SET`, `ALTER ROLE … IN DATABASE … SET`). What
        cannot be copied is logged, and the restore goes on."""
        live, new = sql.Identifier(self.plan.live), sql.Identifier(name)
        owner, acl = conn.execute("SELECT pg_get_userbyid(datdba), datacl IS NOT NULL FROM pg_database "
                                  "WHERE datname = %s", (self.plan.live,)).fetchone()  # type: ignore[misc]
        steps = [sql.SQL("ALTER DATABASE {} OWNER TO {}").format(new, sql.Identifier(owner))]
        if acl:
            steps.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(new))
            for grantee, privilege, grantable in conn.execute(
                    "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
                    "a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s "
                    "AND a.grantee <> d.datdba", (self.plan.live,)):
                steps.append(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege), new, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                    sql.SQL(" WITH GRANT OPTION" if grantable else "")))
        # A list of names (search_path) is set as the live value, then taken FROM CURRENT, so it keeps its form
        # (pg_dump quotes its elements one by one); any other is set to its text (`role` FROM CURRENT would run
        # the ALTER as that role).
        for role, settings in conn.execute(
                "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setconfig "
                "FROM pg_db_role_setting s JOIN pg_database d "
                "ON d.oid = s.setdatabase WHERE d.datname = %s", (self.plan.live,)):
            where = sql.SQL("ALTER DATABASE {}").format(new) if role is None else sql.SQL(
                "ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), new)
            for setting in settings:
                key, _, value = setting.partition("=")
                steps.append(sql.SQL("SELECT set_config({}, {}, true); {} SET {} FROM CURRENT").format(
                    sql.Literal(key), sql.Literal(value), where, sql.Identifier(key)) if key.lower() in _NAME_LISTS
                    else sql.SQL("{} SET {} TO {}").format(where, sql.Identifier(key), sql.Literal(value)))
        for step in steps:
            try:
                with conn.transaction():
                    conn.execute(step)
            except psycopg.Error as exc:
                self.log.warning("The restored database %s is not quite like %s: %s (%s)", name, live.as_string(conn),
                                 step.as_string(conn), describe_error(exc))

    def finish_restore(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        target = self.credentials.with_database(name)
        env = child_environment(**target.libpq_env(), PGCONNECT_TIMEOUT="10")
        restore = client_binary("pg_restore", target.tls(), at_least=dumped_by(Path(snapshot.location)))
        options = self._roles_options()

        def pg_restore(options: list[str]) -> subprocess.CompletedProcess[str]:
            command = [str(restore), *options, "--exit-on-error", "--no-password", f"--dbname={name}", "--",
                       snapshot.location]
            self.log.info("pg_restore into database %s", name)
            return subprocess.run(command, env=env, capture_output=True, text=True)

        result = pg_restore(options)
        if result.returncode != 0 and options == ["--no-owner"]:
            # A grant this user may not give (default privileges for an owner role it is not a member of): the
            # restore goes on without the grants, said, rather than not at all.
            self.log.warning("pg_restore with the objects' grants failed (%s): restoring %s without them; grant "
                             "them again by hand", redact(result.stderr.strip()[-300:],
                                                          target.password.get_secret_value()), name)
            self.delete(name)
            self.create(snapshot, name, live)
            result = pg_restore(["--no-owner", "--no-privileges"])
        if result.returncode != 0:
            raise RefreshError(redact(f"pg_restore into {name} failed (exit {result.returncode}): "
                                      f"{result.stderr.strip()[-1500:]}", target.password.get_secret_value()))
        with self.admin.connect() as conn:  # after the restore: a setting may be default_transaction_read_only
            self._like_the_live_one(conn, name)

    def _roles_options(self) -> list[str]:
        """A refresh's owners and grants are the source's: the environment's own user owns the restored objects.
        A restore keeps the grants (the application's role would be refused every table) and, when the user may
        give objects to other roles (a superuser), the owners."""
        if not self.keep_roles:
            return ["--no-owner", "--no-privileges"]
        with self.admin.connect() as conn:
            row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if row and row[0]:
            return []
        self.log.warning("Restoring without the objects' owners: %s is not a superuser, so it owns them all; their "
                         "grants are restored", self.credentials.user)
        return ["--no-owner"]

    def reset_master_password(self, name: str, password: SecretStr) -> None:
        """Nothing to do: roles and their passwords belong to the server, and a dump carries none."""

    def connection_to(self, name: str, credentials: Connection) -> Connection:
        return credentials.with_database(name)

    def swap(self, plan: SwapPlan, live_copy: LiveCopy) -> None:
        """Both renames in one transaction, after closing the live database to new sessions and ending its
        current ones (a database cannot be renamed while in use)."""
        live, old, new = (plan.check(n, "rename") for n in (plan.live, plan.old, plan.new))

        def allow(conn: psycopg.Connection, name: str, allowed: bool) -> None:
            statement = "ALTER DATABASE {} WITH ALLOW_CONNECTIONS " + ("true" if allowed else "false")
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))  # type: ignore[arg-type]

        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        with self.admin.connect() as conn:
            allow(conn, live, False)
            try:  # one transaction: an interrupt rolls both renames back, and the live database is opened again
                ended = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (live,)).fetchone()
                self.log.info("Ended %s session(s) on database %s", ended[0] if ended else 0, live)
                with conn.transaction():
                    conn.execute(rename.format(sql.Identifier(live), sql.Identifier(old)))
                    conn.execute(rename.format(sql.Identifier(new), sql.Identifier(live)))
            except BaseException as exc:  # noqa: BLE001 - turned into an error that says where things are
                try:
                    allow(conn, live, True)
                    state = f"{live} is unchanged and open again"
                except (psycopg.Error, KeyboardInterrupt):
                    state = (f"{live} is unchanged but closed to new sessions: open it with ALTER DATABASE {live} "
                             "WITH ALLOW_CONNECTIONS true")
                raise ended_in(exc, "swapping database names", f"{state}; the ready copy {new} was kept",
                               self.log) from None
            allow(conn, old, True)

    def delete(self, name: str) -> None:
        """Raises InvalidCatalogName when there is no such database (a `CREATE DATABASE` that failed)."""
        with self.admin.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                sql.Identifier(self.plan.check(name, "delete"))))
