"""Fleets on AWS, against the AWS API emulator over HTTP: discovery by tag (RDS instances, their secrets by
pattern or RDS's managed master secret), a fleet run reading each target's own secret, snapshots per target,
the quota pre-check, and retention that deletes only our own old snapshots."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from tasks.engine.environments import Environment
from tasks.engine.errors import SecretError, SnapshotError
from tasks.engine.fleet.targets import fleet_targets, read_master_secret
from tasks.engine.runs.fleet import DirectFleetSteps, migrate_fleet
from tasks.engine.runs.steps import DirectSteps
from tasks.engine.snapshots.retention import check_fleet_quota, prune_snapshots
from tests.conftest import CANARY_PASSWORD
from tests.helpers import applied_ids, write_migrations
from tests.test_fleet import FIRST

TENANTS = ("tenant-a", "tenant-b", "tenant-c")


def environment(endpoint: str, credentials: str = "secret_pattern", keep: int | None = 2) -> Environment:
    return Environment.model_validate(
        {
            "name": "tenants",
            "tier": "staging",
            "aws": {"region": "eu-west-1", "endpoint_url": endpoint},
            "credentials": {"kind": "secrets_manager", "secret_id": "rds/template"},
            "snapshot": {"kind": "rds_instance", "instance_id": "template", "max_wait_seconds": 60},
            "notify": {"kind": "console"},
            "fleet": {
                "discover": {
                    "kind": "rds_instances",
                    "tags": {"app": "tenants", "tier": "staging"},
                    "credentials": credentials,
                },
                "concurrency": 3,
                "keep_snapshots": keep,
            },
        }
    )


def rds(endpoint: str):
    return boto3.client("rds", region_name="eu-west-1", endpoint_url=endpoint)


def create_instance(endpoint: str, name: str, tags: dict[str, str], engine: str = "postgres", **more) -> None:
    rds(endpoint).create_db_instance(
        DBInstanceIdentifier=name,
        DBInstanceClass="db.t3.micro",
        Engine=engine,
        MasterUsername="postgres",
        AllocatedStorage=20,
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        **more,
    )


def manual_snapshots(endpoint: str, instance: str) -> list[str]:
    found = rds(endpoint).describe_db_snapshots(DBInstanceIdentifier=instance, SnapshotType="manual")["DBSnapshots"]
    return sorted(s["DBSnapshotIdentifier"] for s in found)


@pytest.fixture
def tenants(aws_endpoint: str, pg_server) -> dict:
    """Three tagged PostgreSQL instances, each with its own secret (the canary password) and database; an
    untagged one and a tagged MySQL one that discovery must leave out."""
    sm = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=aws_endpoint)
    databases = {}
    for name in TENANTS:
        create_instance(aws_endpoint, name, {"app": "tenants", "tier": "staging"})
        database = pg_server.ensure_database(f"aws_{uuid.uuid4().hex[:8]}")
        sm.create_secret(
            Name=f"rds/{name}/migrator",
            SecretString=json.dumps(
                {
                    "username": database.user,
                    "password": CANARY_PASSWORD,
                    "host": database.host,
                    "port": database.port,
                    "dbname": database.dbname,
                }
            ),
        )
        databases[name] = database
    create_instance(aws_endpoint, "other-app", {"app": "billing", "tier": "staging"})
    create_instance(aws_endpoint, "tenant-mysql", {"app": "tenants", "tier": "staging"}, engine="mysql")
    return databases


def run(env: Environment, project: Path, sha: str):
    return migrate_fleet(env, DirectFleetSteps(DirectSteps()), git_sha=sha, project_root=project)


def test_discovery_by_tag_finds_the_fleet_and_each_target_reads_its_own_secret(
    aws_endpoint: str, tenants: dict, tmp_path: Path
) -> None:
    env = environment(aws_endpoint)
    found = fleet_targets(env, rds(aws_endpoint))
    assert [t.name for t in found] == list(TENANTS)
    assert [t.environment.credentials.secret_id for t in found] == [f"rds/{n}/migrator" for n in TENANTS]
    write_migrations(tmp_path, FIRST)

    report = run(env, tmp_path, "abc1234")

    assert report.counts == {"succeeded": 3}
    for name, database in tenants.items():
        assert applied_ids(database) == ["0001.create-notes"]
        assert [s for s in manual_snapshots(aws_endpoint, name)] == [report.results[TENANTS.index(name)].snapshot]
        assert manual_snapshots(aws_endpoint, name)[0].startswith(f"rdsm-tenants-{name}-abc1234-")
    assert CANARY_PASSWORD not in json.dumps(report.to_json()) + report.console_text()


def test_a_master_secret_target_gets_its_endpoint_from_the_instance(aws_endpoint: str) -> None:
    create_instance(
        aws_endpoint, "managed", {"app": "tenants", "tier": "staging"}, ManageMasterUserPassword=True, DBName="app"
    )
    (target,) = fleet_targets(environment(aws_endpoint, credentials="master_secret"), rds(aws_endpoint))
    assert target.environment.credentials.secret_id.startswith("arn:aws:secretsmanager:")
    connection = read_master_secret(
        target, boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=aws_endpoint)
    )
    assert (connection.host, connection.port, connection.dbname) == (target.endpoint.host, 5432, "app")
    assert connection.user and connection.password.get_secret_value()



def test_a_master_secret_that_cannot_be_read_names_the_target_and_what_to_do(aws_endpoint: str) -> None:
    create_instance(
        aws_endpoint, "managed", {"app": "tenants", "tier": "staging"}, ManageMasterUserPassword=True, DBName="app"
    )
    (target,) = fleet_targets(environment(aws_endpoint, credentials="master_secret"), rds(aws_endpoint))
    sm = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=aws_endpoint)
    sm.delete_secret(SecretId=target.environment.credentials.secret_id, ForceDeleteWithoutRecovery=True)
    with pytest.raises(SecretError) as raised:
        read_master_secret(target, sm)
    assert "(managed's master secret): no such secret (check credentials.secret_id and aws.region)" \
           " (ResourceNotFoundException)" in str(raised.value)

def test_retention_keeps_our_newest_snapshots_per_target_and_never_touches_others(
    aws_endpoint: str, tenants: dict, tmp_path: Path
) -> None:
    client = rds(aws_endpoint)
    client.create_db_snapshot(DBSnapshotIdentifier="by-hand", DBInstanceIdentifier="tenant-a")
    client.create_db_snapshot(  # tagged as ours, but for another environment: not this target's to delete
        DBSnapshotIdentifier="rdsm-elsewhere",
        DBInstanceIdentifier="tenant-a",
        Tags=[
            {"Key": "rds-migrations:managed-by", "Value": "rds-migrations"},
            {"Key": "rds-migrations:environment", "Value": "elsewhere"},
        ],
    )
    env = environment(aws_endpoint, keep=2)
    migrations = dict(FIRST)
    shas = ("aaaaaaa", "bbbbbbb", "ccccccc")
    for step, sha in enumerate(shas):  # three runs, each with something new: three snapshots per target taken
        migrations[f"000{step + 2}.t{step}.sql"] = f"CREATE TABLE t{step} (id bigint);\n"
        write_migrations(tmp_path, migrations)
        assert run(env, tmp_path, sha).counts == {"succeeded": 3}

    for name in TENANTS:
        ours = [s for s in manual_snapshots(aws_endpoint, name) if s.startswith("rdsm-tenants-")]
        assert sorted(s.split("-")[-2] for s in ours) == ["bbbbbbb", "ccccccc"], ours  # the oldest deleted
    assert {"by-hand", "rdsm-elsewhere"} <= set(manual_snapshots(aws_endpoint, "tenant-a"))
    (first, *_) = fleet_targets(env, client)
    again = prune_snapshots(first.environment, 1, client)
    assert [s.split("-")[-2] for s in again.deleted] == ["bbbbbbb"] and [s.split("-")[-2] for s in again.kept] == [
        "ccccccc"
    ]
    assert {"by-hand", "rdsm-elsewhere"} <= set(manual_snapshots(aws_endpoint, "tenant-a"))


def test_the_quota_pre_check_counts_one_snapshot_per_target(aws_endpoint: str, tenants: dict) -> None:
    env = environment(aws_endpoint)
    targets = [t.environment for t in fleet_targets(env, rds(aws_endpoint))]
    client = rds(aws_endpoint)
    with Stubber(client) as stub:
        stub.add_response(
            "describe_account_attributes",
            {"AccountQuotas": [{"AccountQuotaName": "ManualSnapshots", "Used": 98, "Max": 100}]},
        )
        with pytest.raises(SnapshotError, match="may take 3 new manual snapshot"):
            check_fleet_quota(targets, client)
        stub.add_response(
            "describe_account_attributes",
            {"AccountQuotas": [{"AccountQuotaName": "ManualSnapshots", "Used": 97, "Max": 100}]},
        )
        check_fleet_quota(targets, client)
