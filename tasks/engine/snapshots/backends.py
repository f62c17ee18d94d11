"""The three kinds a restore-and-swap works on (the `Backend` contract is in swap.py): RDS DB instances,
Aurora DB clusters, and local databases restored from pg_dump files."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from tasks.engine.clients import client_binary, dumped_by
from tasks.engine.connection import Connection
from tasks.engine.errors import RefreshError, redact
from tasks.engine.logs import Log
from tasks.engine.processes import child_environment
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.rds import CLUSTER, INSTANCE, RdsApi, waiter_config
from tasks.engine.snapshots.swap import Backend, LiveCopy, SwapPlan, describe_error, ended_in

APPEAR_POLLS, APPEAR_POLL_SECONDS = 40, 15  # a renamed instance is not found under its new name at once


@contextmanager
def _botocore_quiet() -> Iterator[None]:
    """botocore logs request parameters at DEBUG; a call carrying a password must not reach a log."""
    botocore_logger = logging.getLogger("botocore")
    level = botocore_logger.level
    botocore_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        botocore_logger.setLevel(level)


class RdsInstances:
    """RDS DB instances: restored from a DB snapshot with the live instance's settings, renamed to swap."""

    names = INSTANCE

    def __init__(self, rds: Any, plan: SwapPlan, *, wait_seconds: int, tags: dict[str, str], log: Log,
                 sleep: Callable[[float], None]) -> None:
        self.plan, self.log = plan, log
        self.rds, self.wait_seconds, self.sleep = rds, wait_seconds, sleep
        self.tags = [{"Key": key, "Value": value} for key, value in tags.items()]

    def describe(self, name: str, names: RdsApi | None = None) -> dict | None:
        return (names or self.names).find(self.rds, name)

    def _require_free(self) -> dict:
        found = self.describe(self.plan.live)
        if found is None:
            raise RefreshError(f"{self.names.noun} {self.plan.live} not found in {self.rds.meta.region_name}: "
                               "nothing was changed; check the environment's snapshot settings")
        for name in (self.plan.new, self.plan.old):
            if self.describe(name) is not None:
                raise RefreshError(f"{self.names.noun} {name} already exists: nothing was changed; run again "
                                   "in a second (the names hold the time) or delete it")
        return found

    def inspect(self) -> LiveCopy:
        live = self._require_free()
        settings = {
            "DBInstanceClass": live.get("DBInstanceClass"),
            "DBSubnetGroupName": (live.get("DBSubnetGroup") or {}).get("DBSubnetGroupName"),
            "VpcSecurityGroupIds": [g["VpcSecurityGroupId"] for g in live.get("VpcSecurityGroups", [])],
            "DBParameterGroupName": (live.get("DBParameterGroups") or [{}])[0].get("DBParameterGroupName"),
        }
        return LiveCopy({k: v for k, v in settings.items() if v}, live.get("MasterUsername"))

    def create(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        self.rds.restore_db_instance_from_db_snapshot(
            DBInstanceIdentifier=self.plan.check(name, "create"), DBSnapshotIdentifier=snapshot.identifier,
            Tags=self.tags, **live.settings,
        )

    def finish_restore(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        self.wait_available(name)

    def wait_available(self, name: str, names: RdsApi | None = None) -> None:
        """Until `name` exists (a rename takes a moment to show), then botocore's available waiter."""
        names = names or self.names
        for attempt in range(APPEAR_POLLS):
            if self.describe(name, names) is not None:
                break
            if attempt == APPEAR_POLLS - 1:
                raise RefreshError(f"{names.noun} {name} did not appear after "
                                   f"{APPEAR_POLLS * APPEAR_POLL_SECONDS} s")
            self.sleep(APPEAR_POLL_SECONDS)
        self.log.info("Waiting until %s %s is available", names.noun, name)
        self.rds.get_waiter(names.available_waiter).wait(**{names.param: name},
                                                         WaiterConfig=waiter_config(self.wait_seconds))

    def reset_master_password(self, name: str, password: SecretStr) -> None:
        self.plan.check(name, "modify")
        self.log.info("Setting the master password of %s %s to the environment's own", self.names.noun, name)
        with _botocore_quiet():
            getattr(self.rds, self.names.modify)(**{self.names.param: name},
                                                 MasterUserPassword=password.get_secret_value(),
                                                 ApplyImmediately=True)
        self.wait_available(name)

    def endpoint(self, name: str) -> tuple[str, int]:
        found = self.describe(name) or {}
        endpoint = found.get("Endpoint") or {}
        return endpoint.get("Address", ""), int(endpoint.get("Port") or 5432)

    def connection_to(self, name: str, credentials: Connection) -> Connection:
        host, port = self.endpoint(name)
        return credentials.model_copy(update={"host": host, "port": port})

    def rename(self, name: str, to: str, asked: list[str] | None = None) -> None:
        """`name` renamed `to`, waited for; `asked` gets `to` once RDS has taken the request."""
        self.plan.check(name, "rename")
        self.plan.check(to, "rename")
        self.log.info("Renaming %s %s to %s", self.names.noun, name, to)
        getattr(self.rds, self.names.modify)(**{self.names.param: name, self.names.new_param: to},
                                             ApplyImmediately=True)
        if asked is not None:
            asked.append(to)
        self.wait_available(to)

    def rename_command(self, name: str, to: str) -> str:
        cli = self.names.cli
        return (f"aws rds modify-{cli} --{cli}-identifier {shlex.quote(name)} --new-{cli}-identifier "
                f"{shlex.quote(to)} --apply-immediately")

    def swap(self, plan: SwapPlan) -> None:
        """Two renames, each asked for then waited for (minutes). Whatever stops it, failure or Ctrl-C or a
        cancellation, the error says where each copy is and the command that puts the live name back; after a
        failure (not an interrupt: someone wants it to stop) the live name is put back here when it can be."""
        back, finish = self.rename_command(plan.old, plan.live), self.rename_command(plan.new, plan.live)
        kept = f"the ready copy {plan.new} was kept"
        asked: list[str] = []
        try:
            self.rename(plan.live, plan.old, asked)
        except BaseException as exc:  # noqa: BLE001 - turned into an error that says where things are
            state = (f"{plan.live} is being renamed {plan.old} (check it): once it is available, rename it back "
                     f"with {back}" if asked else f"{plan.live} is unchanged")
            raise ended_in(exc, f"renaming {plan.live} to {plan.old}", f"{state}; {kept}", self.log) from None
        try:
            self.rename(plan.new, plan.live, asked)
        except BaseException as exc:  # noqa: BLE001
            if len(asked) == 2:  # the swap was asked for: only its wait did not end
                state = (f"{plan.new} is being renamed {plan.live} (check it): once it is available the swap is "
                         f"done, and the replaced copy is {plan.old}")
            elif isinstance(exc, Exception):
                try:
                    self.rename(plan.old, plan.live)
                    state = f"{plan.old} was renamed back to {plan.live}; {kept}"
                except Exception:  # noqa: BLE001
                    state = f"{plan.live} is now named {plan.old}: rename it back with {back}; {kept}"
            else:
                state = (f"{plan.live} is now named {plan.old}: rename it back with {back}, or finish the swap "
                         f"with {finish}; {kept}")
            raise ended_in(exc, f"renaming {plan.new} to {plan.live}", state, self.log) from None

    def delete(self, name: str) -> None:
        self.rds.delete_db_instance(DBInstanceIdentifier=self.plan.check(name, "delete"), SkipFinalSnapshot=True,
                                    DeleteAutomatedBackups=True)


class AuroraClusters(RdsInstances):
    """An Aurora cluster is restored without instances: a writer is added, with the live writer's class."""

    names = CLUSTER

    def inspect(self) -> LiveCopy:
        live = self._require_free()
        writers = [m["DBInstanceIdentifier"] for m in live.get("DBClusterMembers", []) if m.get("IsClusterWriter")]
        writer = self.describe(writers[0], INSTANCE) if writers else None
        if writer is None:
            raise RefreshError(f"DB cluster {self.plan.live} has no writer instance to copy the class from: "
                               "nothing was changed")
        settings = {
            "Engine": live.get("Engine"),
            "EngineVersion": live.get("EngineVersion"),
            "DBSubnetGroupName": live.get("DBSubnetGroup"),
            "VpcSecurityGroupIds": [g["VpcSecurityGroupId"] for g in live.get("VpcSecurityGroups", [])],
            "DBClusterParameterGroupName": live.get("DBClusterParameterGroup"),
        }
        settings = {k: v for k, v in settings.items() if v}
        settings["writer"] = {"DBInstanceClass": writer["DBInstanceClass"], "Engine": live.get("Engine")}
        return LiveCopy(settings, live.get("MasterUsername"))

    def create(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        settings = {k: v for k, v in live.settings.items() if k != "writer"}
        self.rds.restore_db_cluster_from_snapshot(
            DBClusterIdentifier=self.plan.check(name, "create"), SnapshotIdentifier=snapshot.identifier,
            Tags=self.tags, **settings,
        )

    def finish_restore(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        self.wait_available(name)
        writer = self.plan.check(self.plan.member("writer"), "create", noun="DB instance")
        self.log.info("Adding writer instance %s to DB cluster %s", writer, name)
        self.rds.create_db_instance(DBInstanceIdentifier=writer, DBClusterIdentifier=name, Tags=self.tags,
                                    **live.settings["writer"])
        self.wait_available(writer, INSTANCE)

    def connection_to(self, name: str, credentials: Connection) -> Connection:
        found = self.describe(name) or {}
        return credentials.model_copy(update={"host": found.get("Endpoint", ""),
                                              "port": int(found.get("Port") or 5432)})

    def delete(self, name: str) -> None:
        """The cluster's instances first (each checked), then the cluster."""
        self.plan.check(name, "delete")
        members = [m["DBInstanceIdentifier"] for m in (self.describe(name) or {}).get("DBClusterMembers", [])]
        for member in members:
            self.plan.check(member, "delete", noun="DB instance")
        for member in members:
            self.rds.delete_db_instance(DBInstanceIdentifier=member)
        for member in members:
            self.rds.get_waiter("db_instance_deleted").wait(DBInstanceIdentifier=member,
                                                            WaiterConfig=waiter_config(self.wait_seconds))
        self.rds.delete_db_cluster(DBClusterIdentifier=name, SkipFinalSnapshot=True)


# Settings whose value is a list of names, each quoted on its own (pg_dump's variable_is_guc_list_quote).
_NAME_LISTS = {"search_path", "temp_tablespaces", "local_preload_libraries", "session_preload_libraries"}


class LocalDatabases:
    """The local kind: pg_dump files restored with pg_restore into a new database on the same server, swapped
    with ALTER DATABASE ... RENAME."""

    def __init__(self, credentials: Connection, plan: SwapPlan, log: Log) -> None:
        self.plan, self.log = plan, log
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
        # Owners and grants are the source's; the environment's own user owns the restored objects.
        restore = client_binary("pg_restore", target.tls(), at_least=dumped_by(Path(snapshot.location)))
        command = [str(restore), "--no-owner", "--no-privileges", "--exit-on-error",
                   "--no-password", f"--dbname={name}", "--", snapshot.location]
        self.log.info("pg_restore into database %s", name)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RefreshError(redact(f"pg_restore into {name} failed (exit {result.returncode}): "
                                      f"{result.stderr.strip()[-1500:]}", target.password.get_secret_value()))
        with self.admin.connect() as conn:  # after the restore: a setting may be default_transaction_read_only
            self._like_the_live_one(conn, name)

    def reset_master_password(self, name: str, password: SecretStr) -> None:
        """Nothing to do: roles and their passwords belong to the server, and a dump carries none."""

    def connection_to(self, name: str, credentials: Connection) -> Connection:
        return credentials.with_database(name)

    def swap(self, plan: SwapPlan) -> None:
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
        with self.admin.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self.plan.check(name, "delete"))))


def make_backend(plan: SwapPlan, credentials: Connection | None, rds: Any, wait_seconds: int,
                 tags: dict[str, str], log: Log, sleep: Callable[[float], None]) -> Backend:
    """The backend for the plan's kind; `rds` is a boto3 RDS client (not needed for the local kind), and
    `credentials` reach the local kind's server (not needed for the RDS kinds)."""
    if plan.kind == "pg_dump":
        if credentials is None:
            raise ValueError("the local kind restores into its database's server: credentials are needed")
        return LocalDatabases(credentials, plan, log)
    if rds is None:
        raise ValueError(f"an RDS client is needed to restore a {plan.noun}")
    kind = RdsInstances if plan.kind == "rds_instance" else AuroraClusters
    return kind(rds, plan, wait_seconds=wait_seconds, tags=tags, log=log, sleep=sleep)
