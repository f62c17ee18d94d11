"""Snapshot retention: manual RDS snapshots never expire and a region holds at most 100 of them (the
`ManualSnapshots` quota; `ManualClusterSnapshots` for Aurora), so a fleet keeps the newest N pre-migration
snapshots of each target and deletes older ones, after that target was migrated.

Only snapshots this tool took for that very target are ever deleted: tagged `rds-migrations:managed-by` and
`rds-migrations:environment` = the target's environment name (naming.snapshot_tags), available, and manual.
The local kind applies the same rule to its pg_dump files (the sidecar's environment, which names the target).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.engine.environments import AuroraClusterSnapshot, Environment, PgDumpSnapshot, RdsInstanceSnapshot
from tasks.engine.errors import SnapshotError
from tasks.engine.logs import Log
from tasks.engine.snapshots.dumps import dump_directory, stored_dumps
from tasks.engine.snapshots.naming import MANAGED_BY, TAG_PREFIX
from tasks.engine.snapshots.rds import CLUSTER, INSTANCE, RdsApi

logger = logging.getLogger(__name__)
DELETE = {"rds_instance": "delete_db_snapshot", "aurora_cluster": "delete_db_cluster_snapshot"}


@dataclass(frozen=True)
class Retention:
    """What retention did for one target: the snapshots kept (newest first) and those deleted."""

    target: str
    kept: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


def _rds(environment: Environment) -> tuple[RdsApi, str] | None:
    config = environment.snapshot
    if isinstance(config, RdsInstanceSnapshot):
        return INSTANCE, config.instance_id
    if isinstance(config, AuroraClusterSnapshot):
        return CLUSTER, config.cluster_id
    return None


def is_ours(snapshot: dict, environment_name: str) -> bool:
    tags = {tag["Key"]: tag.get("Value", "") for tag in snapshot.get("TagList", [])}
    return (
        tags.get(f"{TAG_PREFIX}managed-by") == MANAGED_BY and tags.get(f"{TAG_PREFIX}environment") == environment_name
    )


def prune_snapshots(environment: Environment, keep: int, rds: Any = None, log: Log = logger) -> Retention:
    """Keep the newest `keep` of our snapshots of this (single-target) environment; delete the older ones."""
    if keep < 1:
        raise ValueError("keep must be at least 1: the snapshot just taken is never deleted")
    config = environment.snapshot
    if isinstance(config, PgDumpSnapshot):
        return _prune_dumps(environment, config, keep, log)
    found = _rds(environment)
    if found is None:
        return Retention(environment.name)
    api, source = found
    ours = [
        s for s in api.manual_snapshots(rds, source) if is_ours(s, environment.name) and s.get("Status") == "available"
    ]
    ours.sort(key=lambda s: s["SnapshotCreateTime"], reverse=True)
    deleted = []
    for snapshot in ours[keep:]:
        identifier = snapshot[api.snapshot_param]
        log.info(
            "Retention: deleting snapshot %s of %s %s (older than the newest %d)", identifier, api.noun, source, keep
        )
        getattr(rds, DELETE[api.kind])(**{api.snapshot_param: identifier})
        deleted.append(identifier)
    return Retention(environment.name, tuple(s[api.snapshot_param] for s in ours[:keep]), tuple(deleted))


def _prune_dumps(environment: Environment, config: PgDumpSnapshot, keep: int, log: Log) -> Retention:
    dumps = []
    for snapshot, record in stored_dumps(dump_directory(config)):
        if record.get("environment") == environment.name:
            dumps.append(snapshot)
    dumps.sort(key=lambda s: s.created_at, reverse=True)
    deleted = []
    for snapshot in dumps[keep:]:
        log.info("Retention: deleting dump %s (older than the newest %d)", snapshot.location, keep)
        sidecar = snapshot.location.removesuffix(".dump") + ".json"
        # The sidecar first: a dump without one is never used, so a crash in between leaves nothing half-kept.
        Path(sidecar).unlink(missing_ok=True)
        Path(snapshot.location).unlink(missing_ok=True)
        deleted.append(snapshot.identifier)
    return Retention(environment.name, tuple(s.identifier for s in dumps[:keep]), tuple(deleted))


def check_fleet_quota(targets: Sequence[Environment], rds: Any, log: Log = logger) -> None:
    """Before a fleet run: room for one new manual snapshot per target that snapshots on RDS (the most the run
    takes; a target at head takes none). Best effort, like the single-target check: unanswered, it warns."""
    needed = {INSTANCE.quota_name: 0, CLUSTER.quota_name: 0}
    for environment in targets:
        found = _rds(environment)
        if found is not None:
            needed[found[0].quota_name] += 1
    if not any(needed.values()) or rds is None:
        return
    try:
        quotas = rds.describe_account_attributes()["AccountQuotas"]
    except Exception as exc:  # noqa: BLE001 - e.g. rds:DescribeAccountAttributes not granted
        log.warning("Could not check the manual snapshot quota (%s); running the fleet anyway", type(exc).__name__)
        return
    for quota in quotas:
        name = quota.get("AccountQuotaName")
        want = needed.get(name, 0)
        used, most = quota.get("Used", 0), quota.get("Max", math.inf)
        if want and used + want > most:
            raise SnapshotError(
                f"quota: this fleet run may take {want} new manual snapshot(s) ({name}), and {used} of {most} are "
                f"used in {rds.meta.region_name}: nothing was run; delete old snapshots (or set the fleet's "
                "keep_snapshots so each run deletes its own old ones) and run again"
            )
