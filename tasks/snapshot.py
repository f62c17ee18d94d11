"""snapshot: a restorable copy of the database, taken right before migrating.

Three kinds, chosen by the environment: a manual RDS DB snapshot, an Aurora cluster snapshot, or (for the
embedded/local default) a `pg_dump -Fc` file with a JSON sidecar. Every snapshot is named
`rdsm-<environment>-<short sha>-<utc time>` and tagged with the environment, the full git SHA, the flow run
and the trigger, so a re-run of the same commit reuses the snapshot it already took instead of taking another.

`Snapshot.restore_steps()` gives shell commands that restore it safely: into a NEW instance, cluster or
database, then a rename swap. Nothing ever restores onto the live name.

The engine (`take_snapshot`) is plain functions; `snapshot_task` at the bottom wraps it for Prefect.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import (
    ClientError,
)
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from tasks.environments import (
    RDS_IDENTIFIER,
    AuroraClusterSnapshot,
    Environment,
    PgDumpSnapshot,
    RdsInstanceSnapshot,
)
from tasks.secrets import Connection, redact
from tasks.transient import transient_retries

Logger = logging.Logger | logging.LoggerAdapter
logger = logging.getLogger(__name__)
SnapshotKind = Literal["rds_instance", "aurora_cluster", "pg_dump"]

NAME_PREFIX = "rdsm"
TAG_PREFIX = "rds-migrations:"
MANAGED_BY = "rds-migrations"
GIT_SHA = re.compile(r"^[0-9a-f]{7,40}$")
# A label instead of a commit ("unknown", "local"): it pins nothing, so its snapshots are never reused.
GIT_LABEL = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
TIMESTAMP_FORMAT = "%Y%m%dt%H%M%S"
SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
MAX_IDENTIFIER = 63


class SnapshotError(Exception):
    """The snapshot could not be taken or did not complete. Names the snapshot, its state and what to do.

    Not transient: retrying the same call will not help (quota, failed snapshot, instance not available).
    """


@dataclass(frozen=True)
class Snapshot:
    """A snapshot taken (or reused) before migrating; the next steps report it and say how to restore it."""

    kind: SnapshotKind
    identifier: str  # DB snapshot id / cluster snapshot id / dump file name without `.dump`
    source: str  # instance id / cluster id / database name
    reused: bool  # True when an earlier snapshot for the same git SHA was reused
    location: str  # snapshot ARN or the dump file's absolute path
    created_at: datetime

    def restore_steps(self, *, new_name_suffix: str | None = None) -> list[str]:
        """Shell commands (and `#` comment lines) that restore this snapshot next to the live database and
        then swap names. `new_name_suffix` names the restored and the retired copies (default: the
        snapshot's UTC time). No command holds a password."""
        suffix = new_name_suffix or self.created_at.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
        if not SUFFIX.match(suffix):
            raise ValueError(f"new_name_suffix {suffix!r}: use lowercase letters, digits and hyphens (<= 30)")
        if self.kind == "rds_instance":
            return _restore_instance_steps(self, suffix)
        if self.kind == "aurora_cluster":
            return _restore_cluster_steps(self, suffix)
        return _restore_dump_steps(self, suffix)


# ---- names and tags ----------------------------------------------------------------------------------------


def check_git_sha(git_sha: str) -> str:
    """The SHA as given when it is a hex commit id or a plain label; anything else is refused (it ends up in
    names, tags and file names)."""
    if GIT_SHA.match(git_sha) or GIT_LABEL.match(git_sha):
        return git_sha
    raise ValueError(
        f"git_sha {git_sha[:80]!r} is neither a commit id (7-40 lowercase hex digits) nor a label such as "
        "'local' (lowercase letters, digits and hyphens)"
    )


def _hyphenated(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def snapshot_identifier(environment_name: str, git_sha: str, when: datetime) -> str:
    """`rdsm-<environment>-<sha7>-<yyyymmddthhmmss>`, valid for DB and cluster snapshots (<= 63 characters,
    a letter first, single hyphens). The environment part is shortened when it does not fit."""
    sha = _hyphenated(check_git_sha(git_sha)[:7])
    stamp = utc(when).strftime(TIMESTAMP_FORMAT)
    room = MAX_IDENTIFIER - len(f"{NAME_PREFIX}--{sha}-{stamp}")
    environment = _hyphenated(environment_name)[:room].strip("-")
    identifier = "-".join(part for part in (NAME_PREFIX, environment, sha, stamp) if part)
    if not RDS_IDENTIFIER.match(identifier):  # a guard: the parts above cannot produce this
        raise ValueError(f"cannot build a valid snapshot identifier from {environment_name!r}")
    return identifier


def _tag_value(value: str | None) -> str:
    # RDS tag values: 1-256 of letters, digits, spaces and _.:/=+-@, not starting with aws: or rds:.
    cleaned = re.sub(r"[^\w .:/=+@-]", "_", value or "")[:256] or "none"
    return "_" + cleaned[1:] if cleaned.lower().startswith(("aws:", "rds:")) else cleaned


def snapshot_tags(
    environment_name: str, git_sha: str, flow_run_id: str | None, trigger: str
) -> dict[str, str]:
    return {
        f"{TAG_PREFIX}environment": environment_name,
        f"{TAG_PREFIX}git-sha": git_sha,
        f"{TAG_PREFIX}flow-run-id": _tag_value(flow_run_id),
        f"{TAG_PREFIX}trigger": _tag_value(trigger),
        f"{TAG_PREFIX}managed-by": MANAGED_BY,
    }


def utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# ---- the entry point ---------------------------------------------------------------------------------------


def take_snapshot(
    environment: Environment,
    connection: Connection,
    *,
    git_sha: str,
    flow_run_id: str | None,
    trigger: str,
    now: datetime | None = None,
    rds_client: Any = None,
    log: Logger = logger,
    sleep: Callable[[float], None] = time.sleep,
) -> Snapshot:
    """Take the environment's pre-migration snapshot, or reuse the one already taken for `git_sha`.

    Waits until the snapshot is usable. Raises `SnapshotError` when it cannot be taken or fails, and
    `ValueError` for a bad `git_sha` or an environment without snapshots (`kind = "none"`).
    """
    check_git_sha(git_sha)
    when = utc(now or datetime.now(UTC))
    identifier = snapshot_identifier(environment.name, git_sha, when)
    tags = snapshot_tags(environment.name, git_sha, flow_run_id, trigger)
    config = environment.snapshot
    if isinstance(config, PgDumpSnapshot):
        return _take_pg_dump(config, connection, identifier, tags, when, log)
    if not isinstance(config, RdsInstanceSnapshot | AuroraClusterSnapshot):
        raise ValueError(f"environment {environment.name!r} takes no snapshots (snapshot.kind = 'none')")
    if rds_client is None:
        from tasks.aws import aws_client

        assert environment.aws is not None  # checked when the environment was loaded
        rds_client = aws_client("rds", environment.aws)
    if isinstance(config, RdsInstanceSnapshot):
        api, source = INSTANCE, config.instance_id
    else:
        api, source = CLUSTER, config.cluster_id
    return _take_rds_snapshot(
        api, rds_client, source, identifier, tags, when, config.max_wait_seconds, log, sleep
    )


# ---- RDS instance and Aurora cluster snapshots ------------------------------------------------------------


@dataclass(frozen=True)
class RdsApi:
    """The DB-instance and DB-cluster snapshot APIs are the same calls under different names."""

    kind: SnapshotKind
    noun: str  # for messages
    describe_source: str
    source_param: str
    sources_key: str
    source_status_key: str
    source_not_found: str
    describe_snapshots: str
    snapshot_param: str
    snapshots_key: str
    snapshot_not_found: str
    arn_key: str
    create: str
    waiter: str
    quota_name: str
    delete_command: str

    def source(self, rds: Any, source_id: str) -> dict:
        try:
            return getattr(rds, self.describe_source)(**{self.source_param: source_id})[self.sources_key][0]
        except ClientError as exc:
            if _error_code(exc) == self.source_not_found:
                raise SnapshotError(
                    f"{self.noun} {source_id} not found in {rds.meta.region_name}: check the environment's "
                    "snapshot settings and its region"
                ) from None
            raise

    def manual_snapshots(self, rds: Any, source_id: str) -> Iterator[dict]:
        pages = rds.get_paginator(self.describe_snapshots).paginate(
            **{self.source_param: source_id, "SnapshotType": "manual"}
        )
        for page in pages:
            yield from page[self.snapshots_key]

    def snapshot(self, rds: Any, snapshot_id: str) -> dict:
        try:
            found = getattr(rds, self.describe_snapshots)(**{self.snapshot_param: snapshot_id})
            return found[self.snapshots_key][0]
        except ClientError as exc:
            if _error_code(exc) == self.snapshot_not_found:
                raise SnapshotError(f"snapshot {snapshot_id} disappeared while waiting (deleted?)") from None
            raise


INSTANCE = RdsApi(
    kind="rds_instance",
    noun="DB instance",
    describe_source="describe_db_instances",
    source_param="DBInstanceIdentifier",
    sources_key="DBInstances",
    source_status_key="DBInstanceStatus",
    source_not_found="DBInstanceNotFound",
    describe_snapshots="describe_db_snapshots",
    snapshot_param="DBSnapshotIdentifier",
    snapshots_key="DBSnapshots",
    snapshot_not_found="DBSnapshotNotFound",
    arn_key="DBSnapshotArn",
    create="create_db_snapshot",
    waiter="db_snapshot_available",
    quota_name="ManualSnapshots",
    delete_command="aws rds delete-db-snapshot --db-snapshot-identifier",
)
CLUSTER = RdsApi(
    kind="aurora_cluster",
    noun="DB cluster",
    describe_source="describe_db_clusters",
    source_param="DBClusterIdentifier",
    sources_key="DBClusters",
    source_status_key="Status",
    source_not_found="DBClusterNotFoundFault",
    describe_snapshots="describe_db_cluster_snapshots",
    snapshot_param="DBClusterSnapshotIdentifier",
    snapshots_key="DBClusterSnapshots",
    snapshot_not_found="DBClusterSnapshotNotFoundFault",
    arn_key="DBClusterSnapshotArn",
    create="create_db_cluster_snapshot",
    waiter="db_cluster_snapshot_available",
    quota_name="ManualClusterSnapshots",
    delete_command="aws rds delete-db-cluster-snapshot --db-cluster-snapshot-identifier",
)


def waiter_config(max_wait_seconds: int) -> dict[str, int]:
    """botocore `WaiterConfig` for a wait of at most `max_wait_seconds`: polls every 15-30 s."""
    delay = max(15, min(30, max_wait_seconds // 60))
    return {"Delay": delay, "MaxAttempts": math.ceil(max_wait_seconds / delay)}


def _take_rds_snapshot(
    api: RdsApi,
    rds: Any,
    source_id: str,
    identifier: str,
    tags: dict[str, str],
    when: datetime,
    max_wait_seconds: int,
    log: Logger,
    sleep: Callable[[float], None],
) -> Snapshot:
    # Reuse first: while our earlier snapshot is still being created, the instance itself is `backing-up`.
    ours = [s for s in api.manual_snapshots(rds, source_id) if _is_ours(s, tags)]
    reusable = _pick_reusable(ours, tags[f"{TAG_PREFIX}git-sha"])
    if reusable is not None:
        reused_id = reusable[api.snapshot_param]
        log.info("Reusing snapshot %s (%s) of %s %s, taken for the same git SHA",
                 reused_id, reusable["Status"], api.noun, source_id)
        final = _wait_until_available(api, rds, reused_id, max_wait_seconds, log, sleep)
        return _rds_result(api, final, source_id, reused=True, fallback_time=when)

    status = api.source(rds, source_id)[api.source_status_key]
    if status != "available":
        raise SnapshotError(
            f"{api.noun} {source_id} is {status!r}, not 'available': no snapshot taken; wait until it is "
            "available (or start it) and run again"
        )
    _check_quota(api, rds, ours, log)
    log.info("Creating snapshot %s of %s %s", identifier, api.noun, source_id)
    try:
        getattr(rds, api.create)(
            **{api.snapshot_param: identifier, api.source_param: source_id},
            Tags=[{"Key": key, "Value": value} for key, value in tags.items()],
        )
    except ClientError as exc:
        raise _create_error(api, exc, identifier, source_id, ours, rds.meta.region_name) from None
    final = _wait_until_available(api, rds, identifier, max_wait_seconds, log, sleep)
    return _rds_result(api, final, source_id, reused=False, fallback_time=when)


def _tags_of(snapshot: dict) -> dict[str, str]:
    return {tag["Key"]: tag.get("Value", "") for tag in snapshot.get("TagList", [])}


def _is_ours(snapshot: dict, tags: dict[str, str]) -> bool:
    """Taken by this tool for this environment (an untagged or foreign snapshot is never touched)."""
    have = _tags_of(snapshot)
    return all(have.get(key) == tags[key] for key in (f"{TAG_PREFIX}managed-by", f"{TAG_PREFIX}environment"))


def _pick_reusable(ours: list[dict], git_sha: str) -> dict | None:
    if not GIT_SHA.match(git_sha):
        return None
    candidates = [s for s in ours if _tags_of(s).get(f"{TAG_PREFIX}git-sha") == git_sha]
    # An available one first, else one still being created (wait for it); failed ones are never reused.
    for wanted in ("available", "creating"):
        matching = [s for s in candidates if s.get("Status") == wanted]
        if matching:
            return max(matching, key=_created)
    return None


def _created(snapshot: dict) -> datetime:
    return snapshot.get("SnapshotCreateTime") or datetime.min.replace(tzinfo=UTC)


def _check_quota(api: RdsApi, rds: Any, ours: list[dict], log: Logger) -> None:
    """Refuse early when the account has no room for another manual snapshot. Best effort: the create call
    is the authority (its SnapshotQuotaExceeded is mapped too), so an unanswered pre-check only warns."""
    try:
        quotas = rds.describe_account_attributes()["AccountQuotas"]
    except Exception as exc:  # e.g. rds:DescribeAccountAttributes not granted, or not implemented
        log.warning("Could not check the %s quota (%s); creating the snapshot anyway", api.quota_name,
                    type(exc).__name__)
        return
    for quota in quotas:
        if quota.get("AccountQuotaName") != api.quota_name:
            continue
        if quota.get("Used", 0) >= quota.get("Max", math.inf):
            usage = f"{quota['Used']} of {quota['Max']} manual snapshots"
            raise SnapshotError(_quota_message(api, usage, ours, rds.meta.region_name))


def _quota_message(api: RdsApi, usage: str, ours: list[dict], region: str) -> str:
    oldest = sorted((s for s in ours if s.get("Status") == "available"), key=_created)
    example = oldest[0][api.snapshot_param] if oldest else "<snapshot-id>"
    return (
        f"quota exceeded: {usage} in {region}; no snapshot taken; "
        f"delete old ones with: {api.delete_command} {example}"
    )


def _create_error(api: RdsApi, exc: ClientError, identifier: str, source_id: str, ours: list[dict],
                  region: str) -> Exception:
    code = _error_code(exc)
    if code in {"SnapshotQuotaExceeded", "SnapshotQuotaExceededFault"}:
        usage = f"no room for another manual snapshot ({code})"
        return SnapshotError(_quota_message(api, usage, ours, region))
    if code in {"InvalidDBInstanceState", "InvalidDBInstanceStateFault", "InvalidDBClusterStateFault"}:
        return SnapshotError(f"{api.noun} {source_id} cannot be snapshotted now ({code}); no snapshot taken; "
                             "wait until it is available and run again")
    if code in {"DBSnapshotAlreadyExists", "DBClusterSnapshotAlreadyExistsFault"}:
        return SnapshotError(f"snapshot {identifier} already exists and is not ours to reuse; run again "
                             "(the next identifier has a new time) or delete it")
    if code == api.source_not_found:
        return SnapshotError(f"{api.noun} {source_id} not found in {region}")
    return exc


def _wait_until_available(api: RdsApi, rds: Any, snapshot_id: str, max_wait_seconds: int, log: Logger,
                          sleep: Callable[[float], None]) -> dict:
    """Poll like botocore's snapshot-available waiter (same config, same failure states), logging progress."""
    config = waiter_config(max_wait_seconds)
    failure_states = {a.expected for a in rds.get_waiter(api.waiter).config.acceptors if a.state == "failure"}
    status = "unknown"
    for attempt in range(1, config["MaxAttempts"] + 1):
        snapshot = api.snapshot(rds, snapshot_id)
        status = snapshot.get("Status", "unknown")
        if status == "available":
            log.info("snapshot %s: %s%%", snapshot_id, 100)
            return snapshot
        if status in failure_states:
            raise SnapshotError(
                f"snapshot {snapshot_id} is {status!r}: it cannot be used to restore; nothing was migrated; "
                "check the RDS events of the source for the cause, delete the snapshot and run again"
            )
        log.info("snapshot %s: %s%%", snapshot_id, snapshot.get("PercentProgress", 0))
        if attempt < config["MaxAttempts"]:
            sleep(config["Delay"])
    raise SnapshotError(
        f"snapshot {snapshot_id} is still {status!r} after {max_wait_seconds} s (snapshot.max_wait_seconds); "
        "nothing was migrated; run again later (the same git SHA reuses it once available) or raise the limit"
    )


def _rds_result(
    api: RdsApi, snapshot: dict, source_id: str, *, reused: bool, fallback_time: datetime
) -> Snapshot:
    created = snapshot.get("SnapshotCreateTime")
    return Snapshot(
        kind=api.kind,
        identifier=snapshot[api.snapshot_param],
        source=source_id,
        reused=reused,
        location=snapshot.get(api.arn_key, ""),
        created_at=utc(created) if isinstance(created, datetime) else fallback_time,
    )


# ---- pg_dump (the embedded / local default) ---------------------------------------------------------------


def dump_directory(config: PgDumpSnapshot) -> Path:
    """Where an environment's pg_dump snapshots live: its `directory` (relative to the working directory),
    or `<RDS_MIGRATIONS_HOME>/snapshots` beside the embedded server."""
    from tasks.embedded import embedded_home

    return (Path(config.directory) if config.directory else embedded_home() / "snapshots").resolve()


def _take_pg_dump(config: PgDumpSnapshot, connection: Connection, identifier: str, tags: dict[str, str],
                  when: datetime, log: Logger) -> Snapshot:
    from tasks.embedded import client_binary

    directory = dump_directory(config)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {
        "identifier": identifier,
        "environment": tags[f"{TAG_PREFIX}environment"],
        "git_sha": tags[f"{TAG_PREFIX}git-sha"],
        "database": connection.dbname,
        "created_at": when.isoformat(),
        "flow_run_id": tags[f"{TAG_PREFIX}flow-run-id"],
        "trigger": tags[f"{TAG_PREFIX}trigger"],
    }
    reusable = _find_reusable_dump(directory, record)
    if reusable is not None:
        log.info("Reusing dump %s of database %s, taken for the same git SHA",
                 reusable.location, connection.dbname)
        return reusable

    dump, partial = directory / f"{identifier}.dump", directory / f"{identifier}.dump.partial"
    log.info("Dumping database %s to %s", connection.dbname, dump)
    env = {**os.environ, **connection.libpq_env(), "PGCONNECT_TIMEOUT": "10"}
    # The password is only in PGPASSWORD; a table lock held elsewhere fails the dump instead of hanging it.
    command = [str(client_binary("pg_dump")), "--format=custom", "--no-password", "--lock-wait-timeout=60s",
               f"--file={partial}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        password = connection.password.get_secret_value()
        raise SnapshotError(redact(
            f"pg_dump of {connection.describe()} failed (exit {result.returncode}): no snapshot taken; "
            f"{result.stderr.strip()[-2000:]}",
            password,
        ))
    partial.chmod(0o600)
    partial.rename(dump)
    # The sidecar is written last: a dump without one is incomplete and never reused.
    (directory / f"{identifier}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Snapshot(kind="pg_dump", identifier=identifier, source=connection.dbname, reused=False,
                    location=str(dump), created_at=when)


def stored_dumps(directory: Path) -> Iterator[tuple[Snapshot, dict]]:
    """Complete dumps (the JSON sidecar is written last) with their sidecar records; damaged ones skipped."""
    for sidecar in directory.glob(f"{NAME_PREFIX}-*.json"):
        dump = sidecar.with_suffix(".dump")
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            created = datetime.fromisoformat(record["created_at"])
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not one of ours, or damaged: never used
        if dump.is_file():
            yield Snapshot(kind="pg_dump", identifier=sidecar.stem, source=str(record.get("database", "")),
                           reused=True, location=str(dump), created_at=utc(created)), record


def _find_reusable_dump(directory: Path, wanted: dict[str, str]) -> Snapshot | None:
    if not GIT_SHA.match(wanted["git_sha"]):
        return None
    found = [snapshot for snapshot, record in stored_dumps(directory)
             if all(record.get(key) == wanted[key] for key in ("environment", "git_sha", "database"))]
    return max(found, key=lambda s: s.created_at) if found else None


# ---- restore steps -----------------------------------------------------------------------------------------


def derived_name(base: str, middle: str, suffix: str, *, limit: int = MAX_IDENTIFIER, sep: str = "-") -> str:
    """`<base><sep><middle><sep><suffix>` within `limit` characters, shortening the base."""
    tail = f"{sep}{middle}{sep}{suffix}"
    return base[: limit - len(tail)].rstrip("-_") + tail


# Print one status word instead of the whole description.
QUIET_INSTANCE = "--output text --query DBInstance.DBInstanceStatus"
QUIET_CLUSTER = "--output text --query DBCluster.Status"


def _wait_renamed(what: str, name: str) -> str:
    # A rename is applied asynchronously: the new name is unknown for a moment, so poll before waiting.
    wait = f"aws rds wait {what}-available --{what}-identifier {shlex.quote(name)}"
    return f"for attempt in $(seq 40); do {wait} && break; sleep 15; done"


def _restore_instance_steps(snapshot: Snapshot, suffix: str) -> list[str]:
    live = shlex.quote(snapshot.source)
    new = shlex.quote(derived_name(snapshot.source, "restored", suffix))
    old = shlex.quote(derived_name(snapshot.source, "old", suffix))
    describe = f"aws rds describe-db-instances --db-instance-identifier {live} --output text --query"
    return [
        f"# Restore snapshot {snapshot.identifier} into a NEW instance {new};",
        f"# {live} stays untouched until the swap at the end.",
        "# Copy the live instance's class, subnet group, security groups and parameter group",
        "# (check Multi-AZ, option group and monitoring settings by hand):",
        f"CLASS=$({describe} 'DBInstances[0].DBInstanceClass')",
        f"SUBNET_GROUP=$({describe} 'DBInstances[0].DBSubnetGroup.DBSubnetGroupName')",
        f"SECURITY_GROUPS=$({describe} 'DBInstances[0].VpcSecurityGroups[].VpcSecurityGroupId')",
        f"PARAMETER_GROUP=$({describe} 'DBInstances[0].DBParameterGroups[0].DBParameterGroupName')",
        f"aws rds restore-db-instance-from-db-snapshot --db-instance-identifier {new} "
        f"--db-snapshot-identifier {shlex.quote(snapshot.identifier)} --db-instance-class \"$CLASS\" "
        "--db-subnet-group-name \"$SUBNET_GROUP\" --vpc-security-group-ids $SECURITY_GROUPS "
        f"--db-parameter-group-name \"$PARAMETER_GROUP\" {QUIET_INSTANCE}",
        f"aws rds wait db-instance-available --db-instance-identifier {new}",
        f"# Check {new}, stop the application's writes, then swap names (the endpoint follows the name):",
        f"aws rds modify-db-instance --db-instance-identifier {live} --new-db-instance-identifier {old} "
        f"--apply-immediately {QUIET_INSTANCE}",
        _wait_renamed("db-instance", old),
        f"aws rds modify-db-instance --db-instance-identifier {new} --new-db-instance-identifier {live} "
        f"--apply-immediately {QUIET_INSTANCE}",
        _wait_renamed("db-instance", snapshot.source),
        f"aws rds describe-db-instances --db-instance-identifier {live} --output text "
        "--query 'DBInstances[0].[DBInstanceIdentifier,DBInstanceStatus,Endpoint.Address]'",
        f"# Keep {old} until the restored database is verified, then delete it.",
    ]


def _restore_cluster_steps(snapshot: Snapshot, suffix: str) -> list[str]:
    live = shlex.quote(snapshot.source)
    new_name = derived_name(snapshot.source, "restored", suffix)
    new, writer = shlex.quote(new_name), shlex.quote(derived_name(new_name, "writer", "1", sep="-"))
    old = shlex.quote(derived_name(snapshot.source, "old", suffix))
    describe = f"aws rds describe-db-clusters --db-cluster-identifier {live} --output text --query"
    writer_query = "'DBClusters[0].DBClusterMembers[?IsClusterWriter].DBInstanceIdentifier | [0]'"
    writer_of_live = f"$({describe} {writer_query})"
    return [
        f"# Restore snapshot {snapshot.identifier} into a NEW cluster {new};",
        f"# {live} stays untouched until the swap at the end.",
        "# Copy the live cluster's engine, subnet group, security groups, parameter group and writer class",
        "# (check Serverless v2 scaling, IAM roles and monitoring settings by hand):",
        f"ENGINE=$({describe} 'DBClusters[0].Engine')",
        f"ENGINE_VERSION=$({describe} 'DBClusters[0].EngineVersion')",
        f"SUBNET_GROUP=$({describe} 'DBClusters[0].DBSubnetGroup')",
        f"SECURITY_GROUPS=$({describe} 'DBClusters[0].VpcSecurityGroups[].VpcSecurityGroupId')",
        f"PARAMETER_GROUP=$({describe} 'DBClusters[0].DBClusterParameterGroup')",
        f"CLASS=$(aws rds describe-db-instances --db-instance-identifier \"{writer_of_live}\" --output text "
        "--query 'DBInstances[0].DBInstanceClass')",
        f"aws rds restore-db-cluster-from-snapshot --db-cluster-identifier {new} "
        f"--snapshot-identifier {shlex.quote(snapshot.identifier)} --engine \"$ENGINE\" "
        "--engine-version \"$ENGINE_VERSION\" --db-subnet-group-name \"$SUBNET_GROUP\" "
        "--vpc-security-group-ids $SECURITY_GROUPS --db-cluster-parameter-group-name \"$PARAMETER_GROUP\" "
        f"{QUIET_CLUSTER}",
        f"aws rds wait db-cluster-available --db-cluster-identifier {new}",
        f"aws rds create-db-instance --db-instance-identifier {writer} --db-cluster-identifier {new} "
        f"--engine \"$ENGINE\" --db-instance-class \"$CLASS\" {QUIET_INSTANCE}",
        f"aws rds wait db-instance-available --db-instance-identifier {writer}",
        f"# Check {new}, stop the application's writes, then swap names (the endpoints follow the name):",
        f"aws rds modify-db-cluster --db-cluster-identifier {live} --new-db-cluster-identifier {old} "
        f"--apply-immediately {QUIET_CLUSTER}",
        _wait_renamed("db-cluster", old),
        f"aws rds modify-db-cluster --db-cluster-identifier {new} --new-db-cluster-identifier {live} "
        f"--apply-immediately {QUIET_CLUSTER}",
        _wait_renamed("db-cluster", snapshot.source),
        f"aws rds describe-db-clusters --db-cluster-identifier {live} --output text "
        "--query 'DBClusters[0].[DBClusterIdentifier,Status,Endpoint]'",
        f"# Keep {old} (and its instances) until the restored database is verified, then delete it.",
    ]


def _sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _restore_dump_steps(snapshot: Snapshot, suffix: str) -> list[str]:
    live = snapshot.source
    new = derived_name(live, "restored", suffix.replace("-", "_"), sep="_")
    old = derived_name(live, "old", suffix.replace("-", "_"), sep="_")

    def rename(a: str, b: str) -> str:
        statement = f"ALTER DATABASE {_sql_identifier(a)} RENAME TO {_sql_identifier(b)}"
        return f"psql -d postgres -v ON_ERROR_STOP=1 -c {shlex.quote(statement)}"

    return [
        "# Set PGHOST, PGPORT and PGUSER; the password comes from PGPASSWORD or ~/.pgpass.",
        f"# Restore {snapshot.location} into a NEW database {new}; {live} stays untouched until the swap.",
        f"createdb {shlex.quote(new)}",
        f"pg_restore --no-owner --exit-on-error -d {shlex.quote(new)} {shlex.quote(snapshot.location)}",
        f"# Check {new}, stop the application (a database cannot be renamed while in use), then swap names:",
        rename(live, old),
        rename(new, live),
        f"# Keep {old} until the restored database is verified, then drop it.",
    ]


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# ---- the Prefect task ------------------------------------------------------------------------------------

@task(
    name="snapshot",
    **transient_retries(retries=2, backoff_factor=5),
    persist_result=False,
    cache_policy=NO_CACHE,
)
def snapshot_task(environment: Environment, connection: Connection, git_sha: str, trigger: str) -> Snapshot:
    """Take (or reuse) the pre-migration snapshot of an environment and wait until it is usable.

    Example:
        ```python
        snapshot = snapshot_task(environment, connection, git_sha="1a2b3c4d", trigger="github-push")
        print(snapshot.identifier, snapshot.restore_steps())
        ```
    """
    return take_snapshot(
        environment,
        connection,
        git_sha=git_sha,
        flow_run_id=current_flow_run.id,
        trigger=trigger,
        log=get_run_logger(),
    )
