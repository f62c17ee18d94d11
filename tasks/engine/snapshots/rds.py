"""RDS DB instances and Aurora DB clusters: the same calls under different names, in ONE table.

Everything that talks to RDS (taking a snapshot, finding one, restoring, renaming, deleting) reads its
method, parameter and key names from `INSTANCE` or `CLUSTER`, so the two kinds can never drift apart.
The boto3 client is always handed in: this module never builds credentials.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from tasks.engine.aws import error_code
from tasks.engine.errors import SnapshotError
from tasks.engine.snapshots.naming import Snapshot, SnapshotKind, utc


@dataclass(frozen=True)
class RdsApi:
    """The names of one kind's calls, parameters and answer keys."""

    kind: SnapshotKind
    noun: str  # for messages
    cli: str  # the aws CLI's name for it: `aws rds modify-<cli> --<cli>-identifier ...`
    # the instance or cluster
    describe: str
    param: str
    key: str
    resource_arn_key: str  # the instance's or cluster's own ARN, to tag it
    status_key: str
    not_found: tuple[str, ...]
    modify: str
    new_param: str
    available_waiter: str
    # its snapshots
    describe_snapshots: str
    snapshot_param: str
    snapshots_key: str
    snapshot_not_found: str
    arn_key: str
    create_snapshot: str
    snapshot_waiter: str
    quota_name: str
    delete_snapshot_command: str

    def find(self, rds: Any, name: str) -> dict | None:
        """The instance or cluster called `name`, or None when there is none."""
        try:
            return getattr(rds, self.describe)(**{self.param: name})[self.key][0]
        except ClientError as exc:
            if error_code(exc) in self.not_found:
                return None
            raise

    def source(self, rds: Any, source_id: str) -> dict:
        """The instance or cluster to snapshot; a `SnapshotError` naming it when it does not exist."""
        found = self.find(rds, source_id)
        if found is None:
            raise SnapshotError(
                f"{self.noun} {source_id} not found in {rds.meta.region_name}: check the environment's "
                "snapshot settings and its region"
            )
        return found

    def manual_snapshots(self, rds: Any, source_id: str) -> Iterator[dict]:
        pages = rds.get_paginator(self.describe_snapshots).paginate(
            **{self.param: source_id, "SnapshotType": "manual"}
        )
        for page in pages:
            yield from page[self.snapshots_key]

    def snapshot(self, rds: Any, snapshot_id: str) -> dict:
        try:
            found = getattr(rds, self.describe_snapshots)(**{self.snapshot_param: snapshot_id})
            return found[self.snapshots_key][0]
        except ClientError as exc:
            if error_code(exc) == self.snapshot_not_found:
                raise SnapshotError(f"snapshot {snapshot_id} disappeared while waiting (deleted?)") from None
            raise

    def available_snapshots(self, rds: Any, *, snapshot_id: str | None = None,
                            source_id: str | None = None) -> list[Snapshot]:
        """Available manual and automated snapshots, by id or by the instance or cluster they were taken of."""
        filters = {self.snapshot_param: snapshot_id} if snapshot_id else {self.param: source_id}
        found = []
        try:
            for page in rds.get_paginator(self.describe_snapshots).paginate(**filters):
                for s in page[self.snapshots_key]:
                    if s.get("Status") == "available" and s.get("SnapshotType") in ("manual", "automated"):
                        found.append(Snapshot(kind=self.kind, identifier=s[self.snapshot_param],
                                              source=s.get(self.param, ""), reused=True,
                                              location=s.get(self.arn_key, ""),
                                              created_at=utc(s["SnapshotCreateTime"])))
        except ClientError as exc:
            if "NotFound" not in error_code(exc):
                raise
        return found


INSTANCE = RdsApi(
    kind="rds_instance",
    noun="DB instance",
    cli="db-instance",
    describe="describe_db_instances",
    param="DBInstanceIdentifier",
    key="DBInstances",
    resource_arn_key="DBInstanceArn",
    status_key="DBInstanceStatus",
    not_found=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
    modify="modify_db_instance",
    new_param="NewDBInstanceIdentifier",
    available_waiter="db_instance_available",
    describe_snapshots="describe_db_snapshots",
    snapshot_param="DBSnapshotIdentifier",
    snapshots_key="DBSnapshots",
    snapshot_not_found="DBSnapshotNotFound",
    arn_key="DBSnapshotArn",
    create_snapshot="create_db_snapshot",
    snapshot_waiter="db_snapshot_available",
    quota_name="ManualSnapshots",
    delete_snapshot_command="aws rds delete-db-snapshot --db-snapshot-identifier",
)
CLUSTER = RdsApi(
    kind="aurora_cluster",
    noun="DB cluster",
    cli="db-cluster",
    describe="describe_db_clusters",
    param="DBClusterIdentifier",
    key="DBClusters",
    resource_arn_key="DBClusterArn",
    status_key="Status",
    not_found=("DBClusterNotFoundFault", "DBClusterNotFound"),
    modify="modify_db_cluster",
    new_param="NewDBClusterIdentifier",
    available_waiter="db_cluster_available",
    describe_snapshots="describe_db_cluster_snapshots",
    snapshot_param="DBClusterSnapshotIdentifier",
    snapshots_key="DBClusterSnapshots",
    snapshot_not_found="DBClusterSnapshotNotFoundFault",
    arn_key="DBClusterSnapshotArn",
    create_snapshot="create_db_cluster_snapshot",
    snapshot_waiter="db_cluster_snapshot_available",
    quota_name="ManualClusterSnapshots",
    delete_snapshot_command="aws rds delete-db-cluster-snapshot --db-cluster-snapshot-identifier",
)


# On the copy a restore-and-swap replaced (backends.py): fleet discovery leaves it out, as it still carries the
# live copy's tags, a fleet's included.
REPLACED_TAG = "rds-migrations:replaced-by"


def api_for(kind: str) -> RdsApi:
    return CLUSTER if kind == "aurora_cluster" else INSTANCE


def waiter_config(max_wait_seconds: int) -> dict[str, int]:
    """botocore `WaiterConfig` for a wait of at most `max_wait_seconds`: polls every 15-30 s."""
    delay = max(15, min(30, max_wait_seconds // 60))
    return {"Delay": delay, "MaxAttempts": math.ceil(max_wait_seconds / delay)}

