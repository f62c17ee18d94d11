"""The three kinds a restore-and-swap works on (the `Backend` contract is in swap.py): RDS DB instances and
Aurora DB clusters here, local databases restored from pg_dump files in local_copies.py."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

from tasks.engine.connection import Connection
from tasks.engine.errors import RefreshError
from tasks.engine.logs import Log
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.rds import CLUSTER, INSTANCE, REPLACED_TAG, RdsApi, waiter_config
from tasks.engine.snapshots.swap import Backend, LiveCopy, SwapPlan, describe_error, ended_in

APPEAR_POLLS, APPEAR_POLL_SECONDS = 40, 15  # a renamed instance is not found under its new name at once


def _own_option_group(live: dict) -> str | None:
    """The live instance's option group, unless it is the engine's default (which a restore takes anyway)."""
    name = (live.get("OptionGroupMemberships") or [{}])[0].get("OptionGroupName")
    return None if not name or name.startswith("default:") else name


def carried_tags(live: dict) -> list[dict[str, str]]:
    """The live copy's own tags, for the copy replacing it (cost allocation, a fleet's tags): not AWS's, not
    ours (the new copy gets its own)."""
    return [tag for tag in live.get("TagList") or []
            if not tag.get("Key", "").startswith(("aws:", "rds-migrations:"))]


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
            "OptionGroupName": _own_option_group(live),
            "Port": (live.get("Endpoint") or {}).get("Port"),
            "EnableCloudwatchLogsExports": live.get("EnabledCloudwatchLogsExports"),
            "Tags": carried_tags(live),
        }
        # What RDS would otherwise take from its defaults, not from the live copy: a production instance came
        # back single-AZ, reachable from the internet where the subnets allow it, without IAM authentication.
        flags = {key: bool(live[field]) for key, field in (
            ("MultiAZ", "MultiAZ"), ("PubliclyAccessible", "PubliclyAccessible"),
            ("EnableIAMDatabaseAuthentication", "IAMDatabaseAuthenticationEnabled"),
            ("CopyTagsToSnapshot", "CopyTagsToSnapshot")) if field in live}
        return LiveCopy({k: v for k, v in settings.items() if v} | flags, live.get("MasterUsername"),
                        bool(live.get("DeletionProtection")), live.get(self.names.resource_arn_key))

    def create(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        settings = {k: v for k, v in live.settings.items() if k != "Tags"}
        self.rds.restore_db_instance_from_db_snapshot(
            DBInstanceIdentifier=self.plan.check(name, "create"), DBSnapshotIdentifier=snapshot.identifier,
            Tags=live.settings.get("Tags", []) + self.tags, **settings,
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

    def rename(self, name: str, to: str, asked: list[str] | None = None, **changes: object) -> None:
        """`name` renamed `to` (with `changes`, e.g. DeletionProtection), waited for; `asked` gets `to` once RDS
        has taken the request."""
        self.plan.check(name, "rename")
        self.plan.check(to, "rename")
        self.log.info("Renaming %s %s to %s", self.names.noun, name, to)
        getattr(self.rds, self.names.modify)(**{self.names.param: name, self.names.new_param: to},
                                             ApplyImmediately=True, **changes)
        if asked is not None:
            asked.append(to)
        self.wait_available(to)

    def rename_command(self, name: str, to: str) -> str:
        cli = self.names.cli
        return (f"aws rds modify-{cli} --{cli}-identifier {shlex.quote(name)} --new-{cli}-identifier "
                f"{shlex.quote(to)} --apply-immediately")

    def swap(self, plan: SwapPlan, live: LiveCopy) -> None:
        """Two renames, each asked for then waited for (minutes). Whatever stops it, failure or Ctrl-C or a
        cancellation, the error says where each copy is and the commands that put the live name back or finish
        the swap; after a failure (not an interrupt: someone wants it to stop) the live name is put back here when
        it can be."""
        protect = {"DeletionProtection": True} if live.deletion_protection else {}
        back = self.rename_command(plan.old, plan.live)
        finish = (self.rename_command(plan.new, plan.live) + (" --deletion-protection" if protect else "")
                  + f", then {self.mark_command(plan, live)}")
        kept = f"the ready copy {plan.new} was kept"
        asked: list[str] = []
        try:
            self.rename(plan.live, plan.old, asked)
        except BaseException as exc:  # noqa: BLE001 - turned into an error that says where things are
            state = (f"{plan.live} is being renamed {plan.old} (check it): once it is available, rename it back "
                     f"with {back}" if asked else f"{plan.live} should be unchanged (check it)")
            raise ended_in(exc, f"renaming {plan.live} to {plan.old}", f"{state}; {kept}", self.log) from None
        try:  # deletion protection comes with the live name: until now the copy could be discarded
            self.rename(plan.new, plan.live, asked, **protect)
        except BaseException as exc:  # noqa: BLE001
            if len(asked) == 2:  # the swap was asked for: only its wait did not end
                state = (f"{plan.new} is being renamed {plan.live} (check it): once it is available the swap is "
                         f"done; then {self.mark_command(plan, live)}")
            elif isinstance(exc, Exception):
                try:
                    self.rename(plan.old, plan.live)
                    state = f"{plan.old} was renamed back to {plan.live}; {kept}"
                except BaseException as again:  # noqa: BLE001 - a second Ctrl-C ends it as the first would have
                    state = f"{plan.live} is now named {plan.old}: rename it back with {back}; {kept}"
                    exc = exc if isinstance(again, Exception) else again
            else:
                state = (f"{plan.live} is now named {plan.old}: rename it back with {back}, or finish the swap "
                         f"with {finish}; {kept}")
            raise ended_in(exc, f"renaming {plan.new} to {plan.live}", state, self.log) from None
        try:
            self.mark_replaced(plan)
        except BaseException as exc:  # noqa: BLE001 - only an interrupt gets here: the swap is done, say so
            raise ended_in(exc, f"tagging the replaced copy {plan.old}", f"the swap is done: {plan.live} is the "
                           f"restored copy; {self.mark_command(plan, live)}", self.log) from None

    def mark_command(self, plan: SwapPlan, live: LiveCopy) -> str:
        """The command that marks the replaced copy by hand (what `mark_replaced` does)."""
        arn = f"{live.arn.rsplit(':', 1)[0]}:{plan.old}" if live.arn else f"<the ARN of {plan.old}>"
        return (f"mark the replaced copy with aws rds add-tags-to-resource --resource-name {shlex.quote(arn)} "
                f"--tags Key={REPLACED_TAG},Value={shlex.quote(plan.live)}")

    def mark_replaced(self, plan: SwapPlan) -> None:
        """Tag the replaced copy so a fleet found by tag leaves it out: it still carries the fleet's tags."""
        self.plan.check(plan.old, "modify")
        try:
            arn = (self.describe(plan.old) or {})[self.names.resource_arn_key]
            self.rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": REPLACED_TAG, "Value": plan.live}])
        except Exception as exc:  # noqa: BLE001 - the swap is done; a missing mark is said, not fatal
            self.log.warning("%s %s was replaced, but its old copy %s could not be tagged %s (%s): a fleet found "
                             "by tag would take it for a target; tag it by hand, or delete it",
                             self.names.noun, plan.live, plan.old, REPLACED_TAG, describe_error(exc))

    def unprotect(self, name: str, found: dict | None = None) -> None:
        """The replaced copy keeps the live one's deletion protection through its rename: lifted to delete it
        (never on the live name: `check` refuses to modify it). `found`: its description, when already read."""
        if (found or self.describe(name) or {}).get("DeletionProtection"):
            self.log.info("Lifting the deletion protection of the replaced %s %s", self.names.noun, name)
            getattr(self.rds, self.names.modify)(**{self.names.param: self.plan.check(name, "modify")},
                                                 DeletionProtection=False, ApplyImmediately=True)

    def delete(self, name: str) -> None:
        self.unprotect(name)
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
            "Port": live.get("Port"),
            "EnableCloudwatchLogsExports": live.get("EnabledCloudwatchLogsExports"),
            # A Serverless v2 cluster's writer (db.serverless) cannot be added to a cluster without its range.
            "ServerlessV2ScalingConfiguration": {k: v for k, v in (
                live.get("ServerlessV2ScalingConfiguration") or {}).items() if k in ("MinCapacity", "MaxCapacity")},
            "Tags": carried_tags(live),
        }
        flags = {key: bool(live[field]) for key, field in (
            ("EnableIAMDatabaseAuthentication", "IAMDatabaseAuthenticationEnabled"),
            ("CopyTagsToSnapshot", "CopyTagsToSnapshot")) if field in live}
        settings = {k: v for k, v in settings.items() if v} | flags
        settings["writer"] = {"DBInstanceClass": writer["DBInstanceClass"], "Engine": live.get("Engine"),
                              "Tags": carried_tags(writer)}  # an instance's own tags: cost allocation is per instance
        if "PubliclyAccessible" in writer:
            settings["writer"]["PubliclyAccessible"] = bool(writer["PubliclyAccessible"])
        return LiveCopy(settings, live.get("MasterUsername"), bool(live.get("DeletionProtection")),
                        live.get(self.names.resource_arn_key))

    def create(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        settings = {k: v for k, v in live.settings.items() if k not in ("writer", "Tags")}
        self.rds.restore_db_cluster_from_snapshot(
            DBClusterIdentifier=self.plan.check(name, "create"), SnapshotIdentifier=snapshot.identifier,
            Tags=live.settings.get("Tags", []) + self.tags, **settings,
        )

    def finish_restore(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        self.wait_available(name)
        writer = self.plan.check(self.plan.member("writer"), "create", noun="DB instance")
        self.log.info("Adding writer instance %s to DB cluster %s", writer, name)
        settings = {k: v for k, v in live.settings["writer"].items() if k != "Tags"}
        self.rds.create_db_instance(DBInstanceIdentifier=writer, DBClusterIdentifier=name,
                                    Tags=live.settings["writer"].get("Tags", []) + self.tags, **settings)
        self.wait_available(writer, INSTANCE)

    def connection_to(self, name: str, credentials: Connection) -> Connection:
        found = self.describe(name) or {}
        return credentials.model_copy(update={"host": found.get("Endpoint", ""),
                                              "port": int(found.get("Port") or 5432)})

    def delete(self, name: str) -> None:
        """The cluster's instances first (each checked), then the cluster."""
        self.plan.check(name, "delete")
        found = self.describe(name) or {}
        members = [m["DBInstanceIdentifier"] for m in found.get("DBClusterMembers", [])]
        for member in members:
            self.plan.check(member, "delete", noun="DB instance")
        self.unprotect(name, found)
        for member in members:
            self.rds.delete_db_instance(DBInstanceIdentifier=member)
        for member in members:
            self.rds.get_waiter("db_instance_deleted").wait(DBInstanceIdentifier=member,
                                                            WaiterConfig=waiter_config(self.wait_seconds))
        self.rds.delete_db_cluster(DBClusterIdentifier=name, SkipFinalSnapshot=True)


def make_backend(plan: SwapPlan, credentials: Connection | None, rds: Any, wait_seconds: int,
                 tags: dict[str, str], log: Log, sleep: Callable[[float], None], *,
                 own_snapshot: bool = False) -> Backend:
    """The backend for the plan's kind; `rds` is a boto3 RDS client (not needed for the local kind), and
    `credentials` reach the local kind's server (not needed for the RDS kinds). `own_snapshot`: the snapshot is
    of this very database (a restore), so its objects' owners and grants are the live ones'."""
    if plan.kind == "pg_dump":
        from tasks.engine.snapshots.local_copies import LocalDatabases

        if credentials is None:
            raise ValueError("the local kind restores into its database's server: credentials are needed")
        return LocalDatabases(credentials, plan, log, keep_roles=own_snapshot)
    if rds is None:
        raise ValueError(f"an RDS client is needed to restore a {plan.noun}")
    kind = RdsInstances if plan.kind == "rds_instance" else AuroraClusters
    return kind(rds, plan, wait_seconds=wait_seconds, tags=tags, log=log, sleep=sleep)
