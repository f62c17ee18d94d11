"""Staging refresh and restore: a snapshot restored to a NEW name, made ready, then swapped in by renames.

One implementation serves both flows:
- refresh (`refresh_environment`): the newest available snapshot of the source environment (production), or
  a fresh one, restored next to staging with staging's settings; production's master password replaced by
  staging's; the masking SQL run in one transaction; then the names swapped (staging → `<id>-old-<time>`,
  new → staging) and the old copy deleted unless the policy keeps it.
- restore (`restore_environment`): a given snapshot of an environment restored next to it and swapped in;
  the replaced copy is always kept.

Three kinds, from the environment's `snapshot` setting: RDS DB instances, Aurora clusters, and the local
kind (pg_dump files restored with pg_restore into a new database, swapped with ALTER DATABASE ... RENAME).

Safety: every name is checked before any call that creates, renames or deletes it (`SwapPlan.check`), and a
failure before the swap deletes only what this run created, leaving the live copy untouched.

The engine is plain functions and three small backends; the Prefect tasks are at the bottom.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from botocore.exceptions import ClientError, WaiterError
from psycopg import sql
from pydantic import SecretStr

from tasks.environments import (
    DATABASE_NAME,
    RDS_IDENTIFIER,
    ConsoleNotify,
    EmbeddedCredentials,
    Environment,
    PgDumpSnapshot,
    SlackNotify,
    UrlFromEnvCredentials,
)
from tasks.secrets import Connection, DatabaseUnreachable, read_url_from_env, redact
from tasks.snapshot import (
    CLUSTER,
    INSTANCE,
    TIMESTAMP_FORMAT,
    Snapshot,
    SnapshotKind,
    derived_name,
    dump_directory,
    stored_dumps,
    take_snapshot,
    utc,
    waiter_config,
)

Logger = logging.Logger | logging.LoggerAdapter
logger = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 4 * 3600  # a restore of a large instance takes hours
APPEAR_POLLS, APPEAR_POLL_SECONDS = 40, 15  # a renamed instance is not found under its new name at once
CONNECT_ATTEMPTS, CONNECT_RETRY_SECONDS = 20, 15  # a restored instance may refuse connections for a while
# What a restore-flow snapshot id may be: ours (`rdsm-...`), any manual one, or an automated one (`rds:...`).
SNAPSHOT_ID = re.compile(r"^(rds:)?[A-Za-z](?!.*--)[A-Za-z0-9-]{0,254}(?<!-)$")


class RefreshError(Exception):
    """A refresh or restore was refused or failed. Says what state each copy is in and what to do next."""


# ---- names and guards --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwapPlan:
    """The names one restore-and-swap touches, checked when the plan is made and again before every call.

    `pattern` and `protected` are the refresh's rules (what a staging name looks like; production's name);
    a restore has neither and relies on the derived names and the never-onto-the-live-name rule.
    """

    kind: SnapshotKind
    live: str  # the copy being replaced: renamed to `old` at the swap
    new: str  # restored from the snapshot, renamed to `live` at the swap
    old: str
    stamp: str  # the UTC time in the names
    keep_old: bool
    pattern: str | None = None
    protected: str | None = None

    def __post_init__(self) -> None:
        self.check(self.new, "create")
        self.check(self.live, "rename")
        self.check(self.old, "rename")
        self.check(self.new, "delete")  # a half-created copy is discarded on failure
        if not self.keep_old:
            self.check(self.old, "delete")

    @property
    def noun(self) -> str:
        return {"rds_instance": "DB instance", "aurora_cluster": "DB cluster", "pg_dump": "database"}[self.kind]

    def member(self, role: str) -> str:
        """An instance created inside a new Aurora cluster, e.g. `<live>-writer-<time>`."""
        return derived_name(self.live, role, self.stamp)

    def check(self, name: str, action: str, *, noun: str | None = None) -> str:
        """`name` when `action` ("create", "rename", "modify", "delete") may touch it; else `RefreshError`.

        `noun` is given for an Aurora cluster's member instances (another namespace than the live name's)."""
        problems = []
        valid = DATABASE_NAME if self.kind == "pg_dump" else RDS_IDENTIFIER
        if not valid.match(name):
            problems.append("it is not a valid name here")
        if self.pattern is not None and not re.fullmatch(self.pattern, name):
            problems.append(f"it does not match the staging pattern {self.pattern!r}")
        if self.protected and (name == self.protected or name.startswith((f"{self.protected}-",
                                                                           f"{self.protected}_"))):
            problems.append(f"it is, or is named after, the source {self.protected!r} (production)")
        if noun is None and action in ("create", "modify", "delete") and name == self.live:
            problems.append("it is the live name: nothing is restored onto, changed on or deleted from it")
        if problems:
            raise RefreshError(f"refusing to {action} {noun or self.noun} {name!r}: {'; '.join(problems)}")
        return name


@dataclass(frozen=True)
class LiveCopy:
    """What the new copy takes over from the live one it replaces."""

    settings: dict[str, Any]  # restore parameters: instance class, subnet group, security groups, ...
    master_username: str | None = None


@dataclass(frozen=True)
class SwapResult:
    """What a refresh or restore did; no secret in it."""

    action: Literal["refresh", "restore"]
    environment: str
    kind: SnapshotKind
    snapshot: Snapshot
    live: str
    new: str  # the restored copy's name before the swap
    old: str  # the replaced copy's name after the swap
    old_deleted: bool
    masking_files: tuple[str, ...] = ()
    duration_seconds: float = 0.0


def describe_error(exc: BaseException) -> str:
    """An error for people. A PostgreSQL error's DETAIL is left out: it can quote production rows."""
    if isinstance(exc, psycopg.Error):
        primary = exc.diag.message_primary if exc.diag else None
        return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate}): {primary or 'no message'}"
    if isinstance(exc, WaiterError):
        response = exc.last_response or {}
        found = (response.get("DBInstances") or response.get("DBClusters") or [{}])[0]
        status = found.get("DBInstanceStatus") or found.get("Status") or "unknown"
        if "Max attempts exceeded" in str(exc):
            return f"still {status!r} at the end of the wait (refresh.max_wait_seconds)"
        return f"its status became {status!r}"
    return str(exc) or type(exc).__name__


# ---- the one restore-and-swap --------------------------------------------------------------------------------


def replace_from_snapshot(backend: Backend, plan: SwapPlan, snapshot: Snapshot, live: LiveCopy, *,
                          prepare: Callable[[str], None] | None, log: Logger = logger) -> bool:
    """Restore `snapshot` into `plan.new`, `prepare` it, swap names, delete `plan.old` unless kept.

    A failure before the swap deletes the new copy (only when this run created it) and leaves `plan.live`
    untouched. Returns whether the old copy was deleted.
    """
    noun, created = plan.noun, False
    try:
        log.info("Restoring snapshot %s into a new %s %s; %s stays untouched until the swap",
                 snapshot.identifier, noun, plan.new, plan.live)
        backend.create(snapshot, plan.new, live)
        created = True
        backend.finish_restore(snapshot, plan.new, live)
        if prepare is not None:
            prepare(plan.new)
    except Exception as exc:  # noqa: BLE001 - the new copy is cleaned up, then the failure is raised
        left = _discard(backend, plan, log) if created else f"no {noun} was created"
        raise RefreshError(
            f"restoring snapshot {snapshot.identifier} into {noun} {plan.new} failed before the swap: "
            f"{describe_error(exc)}; {plan.live} is untouched; {left}"
        ) from None

    log.info("Swapping names: %s → %s, %s → %s", plan.live, plan.old, plan.new, plan.live)
    backend.swap(plan)
    if plan.keep_old:
        log.info("Kept the replaced %s as %s", noun, plan.old)
        return False
    try:
        backend.delete(plan.old)
    except Exception as exc:  # noqa: BLE001 - the swap is done; a leftover copy is reported, not fatal
        log.warning("%s %s was replaced, but the old copy %s could not be deleted (%s): delete it by hand",
                    noun, plan.live, plan.old, describe_error(exc))
        return False
    log.info("Deleted the replaced %s %s", noun, plan.old)
    return True


def _discard(backend: Backend, plan: SwapPlan, log: Logger) -> str:
    try:
        backend.delete(plan.new)
    except Exception as exc:  # noqa: BLE001 - reported in the error being raised
        log.error("Could not delete the half-created %s %s: %s", plan.noun, plan.new, describe_error(exc))
        return f"the half-created {plan.noun} {plan.new} could NOT be deleted ({describe_error(exc)}): delete it"
    return f"the half-created {plan.noun} {plan.new} was deleted"


class Backend:
    """The calls a restore-and-swap makes; one subclass per kind. Every write checks its names first."""

    def __init__(self, plan: SwapPlan, log: Logger) -> None:
        self.plan, self.log = plan, log

    def inspect(self) -> LiveCopy:
        """Read-only: the live copy's settings; refuses when it is missing or the new/old names are taken."""
        raise NotImplementedError

    def create(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        raise NotImplementedError

    def finish_restore(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        """Until the new copy is usable (waited for, or filled from the dump)."""
        raise NotImplementedError

    def reset_master_password(self, name: str, password: SecretStr) -> None:
        raise NotImplementedError

    def connection_to(self, name: str, credentials: Connection) -> Connection:
        raise NotImplementedError

    def swap(self, plan: SwapPlan) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError


# ---- RDS DB instances and Aurora clusters ------------------------------------------------------------------


@dataclass(frozen=True)
class RdsNames:
    """The DB-instance and DB-cluster APIs are the same calls under different names."""

    noun: str
    describe: str
    param: str
    key: str
    not_found: tuple[str, ...]
    modify: str
    new_param: str
    waiter: str
    cli: str  # the aws CLI's name for it: `aws rds modify-<cli> --<cli>-identifier ...`


INSTANCES = RdsNames("DB instance", "describe_db_instances", "DBInstanceIdentifier", "DBInstances",
                     ("DBInstanceNotFound", "DBInstanceNotFoundFault"), "modify_db_instance",
                     "NewDBInstanceIdentifier", "db_instance_available", "db-instance")
CLUSTERS = RdsNames("DB cluster", "describe_db_clusters", "DBClusterIdentifier", "DBClusters",
                    ("DBClusterNotFoundFault", "DBClusterNotFound"), "modify_db_cluster",
                    "NewDBClusterIdentifier", "db_cluster_available", "db-cluster")


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


class RdsInstances(Backend):
    names = INSTANCES

    def __init__(self, rds: Any, plan: SwapPlan, *, wait_seconds: int, tags: dict[str, str], log: Logger,
                 sleep: Callable[[float], None]) -> None:
        super().__init__(plan, log)
        self.rds, self.wait_seconds, self.sleep = rds, wait_seconds, sleep
        self.tags = [{"Key": key, "Value": value} for key, value in tags.items()]

    def describe(self, name: str, names: RdsNames | None = None) -> dict | None:
        names = names or self.names
        try:
            return getattr(self.rds, names.describe)(**{names.param: name})[names.key][0]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in names.not_found:
                return None
            raise

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

    def wait_available(self, name: str, names: RdsNames | None = None) -> None:
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
        self.rds.get_waiter(names.waiter).wait(**{names.param: name}, WaiterConfig=waiter_config(self.wait_seconds))

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

    def rename(self, name: str, to: str) -> None:
        self.plan.check(name, "rename")
        self.plan.check(to, "rename")
        self.log.info("Renaming %s %s to %s", self.names.noun, name, to)
        getattr(self.rds, self.names.modify)(**{self.names.param: name, self.names.new_param: to},
                                             ApplyImmediately=True)
        self.wait_available(to)

    def swap(self, plan: SwapPlan) -> None:
        cli = self.names.cli
        rename_back = (f"aws rds modify-{cli} --{cli}-identifier {shlex.quote(plan.old)} "
                       f"--new-{cli}-identifier {shlex.quote(plan.live)} --apply-immediately")
        try:
            self.rename(plan.live, plan.old)
        except Exception as exc:  # noqa: BLE001 - turned into an error that says where things are
            raise RefreshError(f"renaming {plan.live} to {plan.old} failed: {describe_error(exc)}; "
                               f"{plan.live} should be unchanged (check it); the ready copy {plan.new} was kept"
                               ) from None
        try:
            self.rename(plan.new, plan.live)
        except Exception as exc:  # noqa: BLE001
            try:
                self.rename(plan.old, plan.live)
                state = f"{plan.old} was renamed back to {plan.live}"
            except Exception:  # noqa: BLE001
                state = f"{plan.live} is now named {plan.old}: rename it back with {rename_back}"
            raise RefreshError(f"renaming {plan.new} to {plan.live} failed: {describe_error(exc)}; {state}; "
                               f"the ready copy {plan.new} was kept") from None

    def delete(self, name: str) -> None:
        self.rds.delete_db_instance(DBInstanceIdentifier=self.plan.check(name, "delete"), SkipFinalSnapshot=True,
                                    DeleteAutomatedBackups=True)


class AuroraClusters(RdsInstances):
    """An Aurora cluster is restored without instances: a writer is added, with the live writer's class."""

    names = CLUSTERS

    def inspect(self) -> LiveCopy:
        live = self._require_free()
        writers = [m["DBInstanceIdentifier"] for m in live.get("DBClusterMembers", []) if m.get("IsClusterWriter")]
        writer = self.describe(writers[0], INSTANCES) if writers else None
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
        self.wait_available(writer, INSTANCES)

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


# ---- the local kind: pg_dump files, databases on one server ------------------------------------------------


class LocalDatabases(Backend):
    def __init__(self, credentials: Connection, plan: SwapPlan, log: Logger) -> None:
        super().__init__(plan, log)
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

    def finish_restore(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        from tasks.embedded import client_binary

        target = self.credentials.with_database(name)
        env = {**os.environ, **target.libpq_env(), "PGCONNECT_TIMEOUT": "10"}
        # Owners and grants are the source's; the environment's own user owns the restored objects.
        command = [str(client_binary("pg_restore")), "--no-owner", "--no-privileges", "--exit-on-error",
                   "--no-password", f"--dbname={name}", "--", snapshot.location]
        self.log.info("pg_restore into database %s", name)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RefreshError(redact(f"pg_restore into {name} failed (exit {result.returncode}): "
                                      f"{result.stderr.strip()[-1500:]}", target.password.get_secret_value()))

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
            try:
                ended = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()", (live,)).fetchone()
                self.log.info("Ended %s session(s) on database %s", ended[0] if ended else 0, live)
                with conn.transaction():
                    conn.execute(rename.format(sql.Identifier(live), sql.Identifier(old)))
                    conn.execute(rename.format(sql.Identifier(new), sql.Identifier(live)))
            except psycopg.Error as exc:
                allow(conn, live, True)
                raise RefreshError(f"swapping database names failed: {describe_error(exc)}; {live} is unchanged "
                                   f"and open again; the ready copy {new} was kept") from None
            allow(conn, old, True)

    def delete(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(self.plan.check(name, "delete"))))


# ---- which snapshot ---------------------------------------------------------------------------------------


def _rds_snapshots(rds: Any, kind: SnapshotKind, **filters: str) -> list[Snapshot]:
    api = INSTANCE if kind == "rds_instance" else CLUSTER
    found = []
    try:
        for page in rds.get_paginator(api.describe_snapshots).paginate(
                **{(api.snapshot_param if k == "id" else api.source_param): v for k, v in filters.items()}):
            for s in page[api.snapshots_key]:
                if s.get("Status") == "available" and s.get("SnapshotType") in ("manual", "automated"):
                    found.append(Snapshot(kind=kind, identifier=s[api.snapshot_param],
                                          source=s.get(api.source_param, ""), reused=True,
                                          location=s.get(api.arn_key, ""), created_at=utc(s["SnapshotCreateTime"])))
    except ClientError as exc:
        if "NotFound" not in str(exc.response.get("Error", {}).get("Code", "")):
            raise
    return found


def newest_snapshot(source: Environment, rds: Any = None) -> Snapshot:
    """The newest available manual or automated snapshot of the source environment."""
    config = source.snapshot
    if isinstance(config, PgDumpSnapshot):
        directory = dump_directory(config)
        found = [s for s, record in stored_dumps(directory) if record.get("environment") == source.name]
        where = f"dump of environment {source.name} in {directory}"
    else:
        source_id = _live_name(source, None)
        found = _rds_snapshots(rds, config.kind, source_id=source_id)  # type: ignore[arg-type]
        where = f"snapshot of {source_id}"
    if not found:
        raise RefreshError(f"no available {where}: nothing was changed; take one (run the production flow, or "
                           "set refresh.use_fresh_snapshot = true)")
    return max(found, key=lambda s: s.created_at)


def named_snapshot(environment: Environment, snapshot_id: str, live: str, rds: Any = None) -> Snapshot:
    """The snapshot a restore was asked for; it must be available and taken of this environment."""
    config = environment.snapshot
    if isinstance(config, PgDumpSnapshot):
        for snapshot, record in stored_dumps(dump_directory(config)):
            if snapshot.identifier == snapshot_id:
                if record.get("environment") != environment.name:
                    raise RefreshError(f"dump {snapshot_id} was taken of environment {record.get('environment')!r}, "
                                       f"not {environment.name!r}: nothing was changed")
                return snapshot
        raise RefreshError(f"no complete dump {snapshot_id} in {dump_directory(config)}: nothing was changed")
    found = _rds_snapshots(rds, config.kind, id=snapshot_id)  # type: ignore[arg-type]
    if not found:
        raise RefreshError(f"no available snapshot {snapshot_id}: nothing was changed")
    if found[0].source != live:
        raise RefreshError(f"snapshot {snapshot_id} was taken of {found[0].source}, not {live}: nothing was "
                           "changed (restore it with the environment it belongs to)")
    return found[0]


def check_snapshot_id(snapshot_id: str) -> str:
    # A refused value is never repeated: it may be a secret pasted into the wrong field.
    if not SNAPSHOT_ID.match(snapshot_id):
        raise RefreshError(f"snapshot_id ({len(snapshot_id)} characters) is not a snapshot identifier (a letter "
                           "first, then letters, digits and single hyphens; `rds:` first for an automated one)")
    return snapshot_id


# ---- masking ------------------------------------------------------------------------------------------------


def masking_files(directory: Path, project_root: Path | None = None) -> list[Path]:
    path = (project_root or Path.cwd()) / directory
    files = sorted(p for p in path.glob("*.sql") if p.is_file()) if path.is_dir() else []
    if not files:
        raise RefreshError(f"no masking SQL (*.sql) in {path}: refusing to copy production data unmasked; "
                           "nothing was changed")
    return files


def run_masking(connection: Connection, files: list[Path], *, log: Logger = logger,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """Run the masking files in name order in ONE transaction: all of them apply, or none."""
    texts = [(path.name, path.read_text(encoding="utf-8")) for path in files]
    conn = _connect_when_ready(connection, log, sleep)
    try:
        with conn.transaction():
            for name, text in texts:
                log.info("Masking: %s", name)
                try:
                    conn.execute(text)  # type: ignore[arg-type]  # a file of statements, no parameters
                except psycopg.Error as exc:
                    raise RefreshError(f"masking file {name} failed: {describe_error(exc)}; the masking "
                                       "transaction was rolled back") from None
    finally:
        conn.close()


def _connect_when_ready(connection: Connection, log: Logger, sleep: Callable[[float], None]) -> psycopg.Connection:
    """A restored instance, or one whose password was just reset, may refuse connections for a while."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return connection.connect(application_name="rds-migrations refresh")
        except DatabaseUnreachable as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise
            log.info("%s is not accepting connections yet (%s); retrying in %s s", connection.describe(),
                     "authentication failed" if exc.auth_failed else exc.sqlstate, CONNECT_RETRY_SECONDS)
            sleep(CONNECT_RETRY_SECONDS)
    raise AssertionError("unreachable")


# ---- the two entry points ---------------------------------------------------------------------------------


def _live_name(environment: Environment, credentials: Connection | None) -> str:
    """What a refresh or restore replaces: the RDS instance or cluster, or (local kind) the database."""
    config = environment.snapshot
    if config.kind == "rds_instance":
        return config.instance_id
    if config.kind == "aurora_cluster":
        return config.cluster_id
    if config.kind == "pg_dump":
        if credentials is not None:
            return credentials.dbname
        if isinstance(environment.credentials, EmbeddedCredentials):
            return environment.credentials.database
        if isinstance(environment.credentials, UrlFromEnvCredentials):
            return read_url_from_env(environment.credentials).dbname
        raise RefreshError(f"environment {environment.name}: the local kind needs embedded or url_env credentials")
    raise RefreshError(f"environment {environment.name} has no snapshots (snapshot.kind = 'none'): nothing to "
                       "restore or refresh")


def _backend(environment: Environment, plan: SwapPlan, credentials: Connection, rds: Any, wait_seconds: int,
             tags: dict[str, str], log: Logger, sleep: Callable[[float], None]) -> Backend:
    if plan.kind == "pg_dump":
        return LocalDatabases(credentials, plan, log)
    if rds is None:
        from tasks.aws import aws_client

        assert environment.aws is not None  # checked when the environment was loaded
        rds = aws_client("rds", environment.aws)
    kind = RdsInstances if plan.kind == "rds_instance" else AuroraClusters
    return kind(rds, plan, wait_seconds=wait_seconds, tags=tags, log=log, sleep=sleep)


def _stamp(now: datetime | None) -> str:
    return utc(now or datetime.now(UTC)).strftime(TIMESTAMP_FORMAT)


def refresh_environment(
    environment: Environment,
    source: Environment,
    credentials: Connection,
    *,
    git_sha: str = "unknown",
    trigger: str = "schedule",
    flow_run_id: str | None = None,
    project_root: Path | None = None,
    now: datetime | None = None,
    rds_client: Any = None,
    mask: Callable[[Connection, list[Path]], None] | None = None,
    log: Logger = logger,
    sleep: Callable[[float], None] = time.sleep,
) -> SwapResult:
    """Replace a staging environment's database with a masked copy of the source's newest snapshot.

    `credentials` are the staging environment's own (its secret): the new copy gets its master password
    and is masked through them. `mask` runs the masking files (default: `run_masking`).
    """
    started = time.monotonic()
    config = environment.refresh
    if config is None:
        raise RefreshError(f"environment {environment.name} has no [refresh] section: it is never refreshed")
    if source.name != config.source_environment or source.snapshot.kind != environment.snapshot.kind:
        raise RefreshError(f"environment {environment.name} is refreshed from {config.source_environment!r} of "
                           f"its own kind ({environment.snapshot.kind}), not from {source.name!r} "
                           f"({source.snapshot.kind})")
    kind: SnapshotKind = environment.snapshot.kind  # type: ignore[assignment]
    live, stamp = _live_name(environment, credentials), _stamp(now)
    sep = "_" if kind == "pg_dump" else "-"
    plan = SwapPlan(kind=kind, live=live, new=derived_name(live, "new", stamp, sep=sep),
                    old=derived_name(live, "old", stamp, sep=sep), stamp=stamp, keep_old=config.keep_old,
                    pattern=config.identifier_pattern, protected=_live_name(source, None))
    files = masking_files(config.masking_dir, project_root)
    tags = {"rds-migrations:managed-by": "rds-migrations", "rds-migrations:refreshed-from": source.name}
    backend = _backend(environment, plan, credentials, rds_client, config.max_wait_seconds, tags, log, sleep)
    live_copy = backend.inspect()
    if kind != "pg_dump" and live_copy.master_username != credentials.user:
        raise RefreshError(f"the secret of {environment.name} is for user {credentials.user!r}, but the master user "
                           f"of {live} is {live_copy.master_username!r}: the refresh resets the master password to "
                           "the secret's, so it needs the master user's secret; nothing was changed")

    if config.use_fresh_snapshot:
        log.info("Taking a fresh snapshot of %s", source.name)
        # The RDS kinds never use the connection; the local kind dumps the source database.
        from tasks.secrets import fetch_connection

        dump_from = fetch_connection(source) if kind == "pg_dump" else credentials
        snapshot = take_snapshot(source, dump_from, git_sha="refresh", flow_run_id=flow_run_id, trigger=trigger,
                                 now=now, rds_client=getattr(backend, "rds", None), log=log, sleep=sleep)
    else:
        snapshot = newest_snapshot(source, getattr(backend, "rds", None))
    log.info("Refreshing %s from snapshot %s of %s (%s, git %s)", environment.name, snapshot.identifier,
             source.name, snapshot.created_at.isoformat(), git_sha)

    def prepare(name: str) -> None:
        backend.reset_master_password(name, credentials.password)
        (mask or _run_masking(log, sleep))(backend.connection_to(name, credentials), files)

    old_deleted = replace_from_snapshot(backend, plan, snapshot, live_copy, prepare=prepare, log=log)
    return SwapResult(action="refresh", environment=environment.name, kind=kind, snapshot=snapshot, live=live,
                      new=plan.new, old=plan.old, old_deleted=old_deleted,
                      masking_files=tuple(p.name for p in files), duration_seconds=time.monotonic() - started)


def _run_masking(log: Logger, sleep: Callable[[float], None]) -> Callable[[Connection, list[Path]], None]:
    return lambda connection, files: run_masking(connection, files, log=log, sleep=sleep)


def restore_environment(
    environment: Environment,
    snapshot_id: str,
    credentials: Connection,
    *,
    now: datetime | None = None,
    rds_client: Any = None,
    log: Logger = logger,
    sleep: Callable[[float], None] = time.sleep,
) -> SwapResult:
    """Restore one of an environment's own snapshots to `<live>-restored-<time>` and swap it in; the replaced
    copy is kept as `<live>-old-<time>`. Works for any tier: it is how production comes back after a bad
    migration."""
    started = time.monotonic()
    check_snapshot_id(snapshot_id)
    live, stamp = _live_name(environment, credentials), _stamp(now)
    kind: SnapshotKind = environment.snapshot.kind  # type: ignore[assignment]
    sep = "_" if kind == "pg_dump" else "-"
    plan = SwapPlan(kind=kind, live=live, new=derived_name(live, "restored", stamp, sep=sep),
                    old=derived_name(live, "old", stamp, sep=sep), stamp=stamp, keep_old=True)
    wait = environment.refresh.max_wait_seconds if environment.refresh else DEFAULT_WAIT_SECONDS
    tags = {"rds-migrations:managed-by": "rds-migrations", "rds-migrations:restored-from": snapshot_id}
    backend = _backend(environment, plan, credentials, rds_client, wait, tags, log, sleep)
    live_copy = backend.inspect()
    snapshot = named_snapshot(environment, snapshot_id, live, getattr(backend, "rds", None))
    replace_from_snapshot(backend, plan, snapshot, live_copy, prepare=None, log=log)
    return SwapResult(action="restore", environment=environment.name, kind=kind, snapshot=snapshot, live=live,
                      new=plan.new, old=plan.old, old_deleted=False, duration_seconds=time.monotonic() - started)


# ---- what happened, for people ------------------------------------------------------------------------------

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import deployment as current_deployment  # noqa: E402
from prefect.runtime import flow_run as current_flow_run  # noqa: E402

if TYPE_CHECKING:  # imported where a Slack target is used, as in tasks/notify.py
    from prefect_slack import SlackWebhook

from tasks.notify import failure_detail, format_duration, mrkdwn, slack_sdk_logs_redacted  # noqa: E402

TITLES = {"refresh": "Staging refresh", "restore": "Restore"}
REFUSED = "<refused"


def shown_parameters(parameters: dict[str, str], valid: dict[str, re.Pattern[str]]) -> tuple[tuple[str, str], ...]:
    """Flow parameters for a message: a value its pattern refuses is not repeated (it may be a pasted secret)."""
    return tuple((name, value if valid[name].match(value) else f"{REFUSED}: {len(value)} characters, not repeated>")
                 for name, value in parameters.items())


@dataclass(frozen=True)
class RefreshSummary:
    """One refresh or restore run, for the notification. Every text in it is already free of secrets."""

    action: Literal["refresh", "restore"]
    environment: str
    tier: str
    outcome: Literal["succeeded", "failed"]
    failed_step: str | None  # "parameters", "fetch-secret", "refresh", "restore", "migrate"
    error: str | None
    result: SwapResult | None
    applied: tuple[str, ...]  # migrations applied to staging after the refresh
    deployment: str | None  # "<flow>/<deployment>", or None when not run from a deployment
    flow_name: str
    parameters: tuple[tuple[str, str], ...]
    duration_seconds: float
    run_url: str | None

    def rerun_command(self) -> str | None:
        if not self.deployment or any(value.startswith(REFUSED) for _, value in self.parameters):
            return None
        params = " ".join(f"--param {shlex.quote(f'{k}={v}')}" for k, v in self.parameters)
        return f"prefect deployment run {shlex.quote(self.deployment)} {params}".strip()


def render_refresh(summary: RefreshSummary, *, slack: bool = False) -> tuple[str, str]:
    """(subject, body): Slack mrkdwn when `slack`, else plain text for the console and the run's logs."""
    esc: Callable[[str], str] = mrkdwn if slack else str

    def code(text: str) -> str:
        return f"`{esc(text)}`" if slack else text

    def label(text: str) -> str:
        return f"*{text}:*" if slack else f"  {text + ':':<12}"

    status = summary.outcome.upper() + (f" at step {summary.failed_step}" if summary.failed_step else "")
    title = f"{TITLES[summary.action]} {status}"
    subject = f"{'*' + title + '*' if slack else title} on {code(summary.environment)} ({esc(summary.tier)})"
    lines = [f"{label('Environment')} {code(summary.environment)} ({esc(summary.tier)})"]
    result = summary.result
    if result is not None:
        how = "newest available" if result.snapshot.reused else "taken now"
        lines.append(f"{label('Snapshot')} {code(result.snapshot.identifier)} of {code(result.snapshot.source)} "
                     f"({result.snapshot.created_at:%Y-%m-%d %H:%M} UTC, {how})")
        fate = "deleted" if result.old_deleted else "kept"
        lines.append(f"{label('Replaced')} {code(result.live)} by the restored copy; the previous one is "
                     f"{code(result.old)} ({fate})")
        if result.masking_files:
            lines.append(f"{label('Masked with')} {', '.join(code(f) for f in result.masking_files)}")
    if summary.action == "refresh" and result is not None:
        applied = ", ".join(code(i) for i in summary.applied) or "none"
        lines.append(f"{label('Migrated')} {applied}")
    where = code(summary.deployment) if summary.deployment else f"flow {code(summary.flow_name)} (no deployment)"
    lines.append(f"{label('Deployment')} {where}")
    lines.append(f"{label('Parameters')} " + ", ".join(f"{k}={code(v)}" for k, v in summary.parameters))
    lines.append(f"{label('Duration')} {format_duration(summary.duration_seconds)}")
    if summary.run_url:
        lines.append(f"{label('Run')} " + (f"<{summary.run_url}|Prefect flow run>" if slack else summary.run_url))
    if summary.outcome == "failed":
        if summary.error:
            error = summary.error.strip()[:2000]
            lines += [label("Error"), f"```{esc(error)}```" if slack else f"    {error}"]
        command = summary.rerun_command()
        if command:
            lines.append(f"{label('Run again')} {code(command)}")
    return subject, "\n".join(lines)


def summarize(action: Literal["refresh", "restore"], environment: str, tier: str,
              parameters: tuple[tuple[str, str], ...], *,
              result: SwapResult | None, applied: tuple[str, ...] = (), failed_step: str | None,
              error: BaseException | None, duration_seconds: float) -> RefreshSummary:
    """The summary of the current flow run (its deployment, parameters and link come from Prefect)."""
    flow_name = current_flow_run.flow_name or ("refresh-staging" if action == "refresh" else "restore-snapshot")
    url = current_flow_run.ui_url
    return RefreshSummary(
        action=action, environment=environment, tier=tier, outcome="failed" if error else "succeeded",
        failed_step=failed_step if error else None, error=describe_error(error) if error else None,
        result=result, applied=applied,
        deployment=f"{flow_name}/{current_deployment.name}" if current_deployment.name else None,
        flow_name=flow_name, parameters=parameters, duration_seconds=duration_seconds,
        run_url=url if url and url.startswith("http") else None,
    )


def send_refresh_summary(target: SlackNotify | ConsoleNotify, summary: RefreshSummary, *,
                         webhook: SlackWebhook | None = None, log: Logger = logger) -> bool:
    """Post to Slack or write to the log; never raises (a notification never changes the outcome). When Slack
    does not take it, the plain text goes to the log instead."""
    text = "\n".join(render_refresh(summary))
    if isinstance(target, ConsoleNotify) or webhook is None:
        if isinstance(target, SlackNotify):
            log.warning("No Slack webhook to post to; the summary follows")
        log.info("%s", text)
        return isinstance(target, ConsoleNotify)
    url = webhook.url.get_secret_value()
    try:
        subject, body = render_refresh(summary, slack=True)
        with slack_sdk_logs_redacted(url):
            webhook.notify(body, subject, _sync=True)  # type: ignore[call-arg]
    except Exception as exc:  # noqa: BLE001 - logged without its text: it can hold the webhook URL
        log.warning("Slack notification failed (%s); the summary follows:\n%s", failure_detail(exc), text)
        return False
    log.info("Slack notification sent for %s (%s %s)", summary.environment, summary.action, summary.outcome)
    return True


# ---- Prefect tasks ------------------------------------------------------------------------------------------


@task(name="refresh-from-snapshot", persist_result=False, cache_policy=NO_CACHE)
def refresh_task(environment: Environment, source: Environment, connection: Connection, git_sha: str,
                 trigger: str) -> SwapResult:
    """Replace a staging environment's database with a masked copy of production's newest snapshot.

    Not retried: a rerun starts over under new names, and botocore retries throttling itself.

    Example:
        ```python
        result = refresh_task(staging, production, fetch_secret(staging), git_sha="unknown", trigger="schedule")
        ```
    """
    return refresh_environment(environment, source, connection, git_sha=git_sha, trigger=trigger,
                               flow_run_id=current_flow_run.id, log=get_run_logger())


@task(name="restore-from-snapshot", persist_result=False, cache_policy=NO_CACHE)
def restore_task(environment: Environment, snapshot_id: str, connection: Connection) -> SwapResult:
    """Restore one of an environment's snapshots to a new name and swap it in; the replaced copy is kept.

    Example:
        ```python
        result = restore_task(production, "rdsm-production-1a2b3c4-20261124t213000", fetch_secret(production))
        ```
    """
    return restore_environment(environment, snapshot_id, connection, log=get_run_logger())


@task(name="notify", persist_result=False, cache_policy=NO_CACHE)
def notify_refresh_task(target: SlackNotify | ConsoleNotify, summary: RefreshSummary) -> bool:
    """Announce a refresh or restore, success or failure; never fails the run."""
    log = get_run_logger()
    webhook: SlackWebhook | None = None
    if isinstance(target, SlackNotify):
        from prefect_slack import SlackWebhook

        try:
            webhook = SlackWebhook.load(target.webhook_block, _sync=True)  # type: ignore[call-arg]
        except Exception as exc:  # noqa: BLE001 - the block's absence must not change the outcome
            log.warning("Slack webhook block %r could not be loaded (%s)", target.webhook_block, type(exc).__name__)
    return send_refresh_summary(target, summary, webhook=webhook, log=log)
