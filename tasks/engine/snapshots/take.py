"""snapshot's engine: a restorable copy of the database, taken right before migrating.

Three kinds, chosen by the environment: a manual RDS DB snapshot, an Aurora cluster snapshot, or (for the
embedded/local default) a `pg_dump -Fc` file with a JSON sidecar (dumps.py). A re-run of the same commit
reuses the snapshot it already took; the wait follows botocore's snapshot-available waiter, with progress.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from tasks.engine.aws import error_code
from tasks.engine.connection import Connection
from tasks.engine.environments import AuroraClusterSnapshot, Environment, PgDumpSnapshot, RdsInstanceSnapshot
from tasks.engine.errors import ConfigError, SnapshotError
from tasks.engine.git import GIT_SHA
from tasks.engine.logs import Log
from tasks.engine.snapshots.dumps import take_dump
from tasks.engine.snapshots.naming import (
    HISTORY_TAG,
    TAG_PREFIX,
    UNKNOWN_HISTORY,
    Snapshot,
    check_git_sha,
    minutes_old,
    snapshot_identifier,
    snapshot_tags,
    utc,
)
from tasks.engine.snapshots.rds import CLUSTER, INSTANCE, RdsApi, waiter_config

logger = logging.getLogger(__name__)
# Told (snapshot id, percent done) while waiting, and 100 when the snapshot is usable; must not raise.
SnapshotProgress = Callable[[str, int], None]
# How an operator follows a snapshot still being created, by the kind of its API.
DESCRIBE_COMMANDS = {"rds_instance": "aws rds describe-db-snapshots --db-snapshot-identifier",
                     "aurora_cluster": "aws rds describe-db-cluster-snapshots --db-cluster-snapshot-identifier"}


class SnapshotNotReady(SnapshotError):
    """The wait ran out while the snapshot was still being created: it exists (`snapshot_id`), not usable yet."""

    def __init__(self, message: str, snapshot_id: str) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id


def take_snapshot(
    environment: Environment,
    connection: Connection,
    *,
    git_sha: str,
    flow_run_id: str | None,
    trigger: str,
    now: datetime | None = None,
    rds_client: Any = None,
    log: Log = logger,
    sleep: Callable[[float], None] = time.sleep,
    progress: SnapshotProgress | None = None,
    reuse: bool = True,
    applied: Sequence[str] | None = None,
) -> Snapshot:
    """Take the environment's pre-migration snapshot, or (with `reuse`: a re-run of the same commit's migration)
    reuse the one already taken for `git_sha` when the database's history is still the one it was taken at,
    `applied` (not known: never reused). A rollback never reuses: the snapshot before a migration is not the
    database before its rollback.

    Waits until the snapshot is usable, telling `progress` how far it is. Raises `SnapshotError` when it cannot
    be taken or fails, and `ValueError` for a bad `git_sha` or an environment without snapshots (`kind = "none"`).
    """
    check_git_sha(git_sha)
    when = utc(now or datetime.now(UTC))
    identifier = snapshot_identifier(environment.name, git_sha, when)
    tags = snapshot_tags(environment.name, git_sha, flow_run_id, trigger, applied)
    window = environment.policy.snapshot_reuse_minutes
    reuse = reuse and applied is not None and window > 0
    taken_after = when - timedelta(minutes=window)  # an older one would be restored with more writes lost
    config = environment.snapshot
    if isinstance(config, PgDumpSnapshot):
        dump = take_dump(config, connection, identifier, tags, when, log, reuse, taken_after)
        if progress is not None:
            progress(dump.identifier, 100)
        return dump
    if not isinstance(config, RdsInstanceSnapshot | AuroraClusterSnapshot):
        raise ConfigError(f"environment {environment.name!r} takes no snapshots (snapshot.kind = 'none')")
    if rds_client is None:
        raise ValueError(f"environment {environment.name!r}: an RDS client is needed to snapshot it")
    if isinstance(config, RdsInstanceSnapshot):
        api, source = INSTANCE, config.instance_id
    else:
        api, source = CLUSTER, config.cluster_id
    return _take_rds_snapshot(
        api, rds_client, source, identifier, tags, when, config.max_wait_seconds, log, sleep, progress,
        taken_after if reuse else None,
    )


def _take_rds_snapshot(
    api: RdsApi,
    rds: Any,
    source_id: str,
    identifier: str,
    tags: dict[str, str],
    when: datetime,
    max_wait_seconds: int,
    log: Log,
    sleep: Callable[[float], None],
    progress: SnapshotProgress | None,
    reuse_after: datetime | None = None,
) -> Snapshot:
    """`reuse_after`: one of ours for the same commit and history taken after this time is reused (None:
    never)."""
    # Reuse first: while our earlier snapshot is still being created, the instance itself is `backing-up`.
    ours = [s for s in api.manual_snapshots(rds, source_id) if _is_ours(s, tags)]
    reusable = _pick_reusable(ours, tags, reuse_after) if reuse_after else None
    if reusable is not None:
        reused_id = reusable[api.snapshot_param]
        log.info("Reusing snapshot %s (%s, %s) of %s %s, taken for the same git SHA at the same history",
                 reused_id, reusable["Status"], _age(reusable, when), api.noun, source_id)
        final = _wait_until_available(api, rds, reused_id, max_wait_seconds, log, sleep, progress)
        return _rds_result(api, final, source_id, reused=True, fallback_time=when)

    status = api.source(rds, source_id)[api.status_key]
    if status != "available":
        raise SnapshotError(
            f"{api.noun} {source_id} is {status!r}, not 'available': no snapshot taken; wait until it is "
            "available (or start it) and run again"
        )
    _check_quota(api, rds, ours, log)
    log.info("Creating snapshot %s of %s %s", identifier, api.noun, source_id)
    try:
        getattr(rds, api.create_snapshot)(
            **{api.snapshot_param: identifier, api.param: source_id},
            Tags=[{"Key": key, "Value": value} for key, value in tags.items()],
        )
    except ClientError as exc:
        raise _create_error(api, exc, identifier, source_id, ours, rds.meta.region_name) from None
    final = _wait_until_available(api, rds, identifier, max_wait_seconds, log, sleep, progress)
    return _rds_result(api, final, source_id, reused=False, fallback_time=when)


def _tags_of(snapshot: dict) -> dict[str, str]:
    return {tag["Key"]: tag.get("Value", "") for tag in snapshot.get("TagList", [])}


def _is_ours(snapshot: dict, tags: dict[str, str]) -> bool:
    """Taken by this tool for this environment (an untagged or foreign snapshot is never touched)."""
    have = _tags_of(snapshot)
    return all(have.get(key) == tags[key] for key in (f"{TAG_PREFIX}managed-by", f"{TAG_PREFIX}environment"))


def _pick_reusable(ours: list[dict], tags: dict[str, str], taken_after: datetime) -> dict | None:
    """One of ours taken for the same commit at the same history (one taken before other migrations were
    applied would undo them too if restored; one with no history tag, by an earlier version, is not reused),
    after `taken_after` (an older one would lose more writes if restored; one still being created is the newest
    there can be: the instance is `backing-up` until it is done)."""
    if not GIT_SHA.match(tags[f"{TAG_PREFIX}git-sha"]) or tags[HISTORY_TAG] == UNKNOWN_HISTORY:
        return None
    candidates = [s for s in ours if all(_tags_of(s).get(key) == tags[key]
                                         for key in (f"{TAG_PREFIX}git-sha", HISTORY_TAG))
                  and (s.get("Status") == "creating" or _created(s) >= taken_after)]
    # An available one first, else one still being created (wait for it); failed ones are never reused.
    for wanted in ("available", "creating"):
        matching = [s for s in candidates if s.get("Status") == wanted]
        if matching:
            return max(matching, key=_created)
    return None


def _created(snapshot: dict) -> datetime:
    return snapshot.get("SnapshotCreateTime") or datetime.min.replace(tzinfo=UTC)


def _age(snapshot: dict, now: datetime) -> str:
    if snapshot.get("SnapshotCreateTime") is None:
        return "being taken"
    return f"taken {minutes_old(_created(snapshot), now)} min ago"


def _check_quota(api: RdsApi, rds: Any, ours: list[dict], log: Log) -> None:
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
        f"delete old ones with: {api.delete_snapshot_command} {example}"
    )


def _create_error(api: RdsApi, exc: ClientError, identifier: str, source_id: str, ours: list[dict],
                  region: str) -> Exception:
    code = error_code(exc)
    if code in {"SnapshotQuotaExceeded", "SnapshotQuotaExceededFault"}:
        usage = f"no room for another manual snapshot ({code})"
        return SnapshotError(_quota_message(api, usage, ours, region))
    if code in {"InvalidDBInstanceState", "InvalidDBInstanceStateFault", "InvalidDBClusterStateFault"}:
        return SnapshotError(f"{api.noun} {source_id} cannot be snapshotted now ({code}); no snapshot taken; "
                             "wait until it is available and run again")
    if code in {"DBSnapshotAlreadyExists", "DBClusterSnapshotAlreadyExistsFault"}:
        return SnapshotError(f"snapshot {identifier} already exists and is not ours to reuse; run again "
                             "(the next identifier has a new time) or delete it")
    if code in api.not_found:
        return SnapshotError(f"{api.noun} {source_id} not found in {region}")
    return exc


def _wait_until_available(api: RdsApi, rds: Any, snapshot_id: str, max_wait_seconds: int, log: Log,
                          sleep: Callable[[float], None], progress: SnapshotProgress | None = None) -> dict:
    """Poll like botocore's snapshot-available waiter (same config, same failure states), logging progress."""
    config = waiter_config(max_wait_seconds)
    failure_states = {a.expected for a in rds.get_waiter(api.snapshot_waiter).config.acceptors if a.state == "failure"}
    status = "unknown"
    for attempt in range(1, config["MaxAttempts"] + 1):
        snapshot = api.snapshot(rds, snapshot_id)
        status = snapshot.get("Status", "unknown")
        percent = 100 if status == "available" else int(snapshot.get("PercentProgress", 0))
        if progress is not None and status not in failure_states:
            progress(snapshot_id, percent)
        if status == "available":
            log.info("snapshot %s: %s%%", snapshot_id, percent)
            return snapshot
        if status in failure_states:
            raise SnapshotError(
                f"snapshot {snapshot_id} is {status!r}: it cannot be used to restore; nothing was migrated; "
                "check the RDS events of the source for the cause, delete the snapshot and run again"
            )
        log.info("snapshot %s: %s%%", snapshot_id, percent)
        if attempt < config["MaxAttempts"]:
            sleep(config["Delay"])
    raise SnapshotNotReady(
        f"snapshot {snapshot_id} is still {status!r} after {max_wait_seconds} s (snapshot.max_wait_seconds); "
        f"nothing was migrated; `{DESCRIBE_COMMANDS[api.kind]} {snapshot_id}` "
        "shows it; run again later (the same git SHA reuses it once available) or raise the limit", snapshot_id)


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
