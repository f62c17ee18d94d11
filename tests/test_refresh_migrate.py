"""The staging refresh's migrate step, through `refresh_staging` as a terminal runs it (DirectSteps): the RDS
calls over real HTTP to the AWS emulator, staging's secret there naming a real PostgreSQL database, where the
masking and the migrations run (the emulator's instances have no server behind them). The step takes no
snapshot of the copy it has just made; a failed migration's way back is the refresh, never a restore."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import RdsMigrationsError
from tasks.engine.messages import REFRESH_DEPLOYMENT, RunSummary
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.runs.kinds import flow_of
from tasks.engine.runs.migration import migrate_environment
from tasks.engine.runs.refresh import refresh_staging
from tasks.engine.runs.steps import DirectSteps
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.refresh import Replacement, refresh_from, run_masking
from tasks.engine.snapshots.swap import SwapResult
from tests.conftest import CANARY_PASSWORD
from tests.helpers import POLICY, PROJECT, write_migrations

LOG = logging.getLogger("test_refresh_migrate")
SOURCE_SNAPSHOT = "rdsm-production-aaaaaaa-20261123t010000"

ENVIRONMENTS = """
[environments.production]
tier = "production"
aws = {{ region = "eu-west-1", endpoint_url = "{endpoint}" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/app-production" }}
snapshot = {{ kind = "rds_instance", instance_id = "app-production", max_wait_seconds = 60 }}
notify = {{ kind = "console" }}
policy = {{ snapshot_required = true, lint_blocks_on = "warning" }}

[environments.staging]
tier = "staging"
aws = {{ region = "eu-west-1", endpoint_url = "{endpoint}" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/app-staging" }}
snapshot = {{ kind = "rds_instance", instance_id = "app-staging", max_wait_seconds = 60 }}
notify = {{ kind = "console" }}
refresh = {{ source_environment = "production", max_wait_seconds = 60 }}
"""


class EmulatedAccount(DirectSteps):
    """The engine's steps as a terminal runs them; the restored copy is masked where staging's rows really are
    (its secret's database), as the emulator's copy has no server to connect to."""

    def refresh(self, replacement: Replacement, snapshot: Snapshot, connection: Connection) -> SwapResult:
        return refresh_from(replacement, snapshot, connection, log=self.log,
                            mask=lambda _copy, files: run_masking(connection, files, log=self.log))


@dataclass
class Account:
    root: Path  # the project: shipped migrations and masking SQL
    endpoint: str
    staging: Connection

    def snapshots(self) -> list[str]:
        rds = boto3.client("rds", region_name="eu-west-1", endpoint_url=self.endpoint)
        return sorted(s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(SnapshotType="manual")
                      ["DBSnapshots"])

    def steps(self) -> EmulatedAccount:
        return EmulatedAccount(log=LOG, project_root=self.root)

    def refresh(self):
        return refresh_staging("staging", self.steps(), git_sha="abc1234", trigger="manual", project_root=self.root)


@pytest.fixture
def account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_endpoint: str, database: Connection) -> Account:
    """Production and staging instances on the emulator, one snapshot of production; staging's secret names the
    test database, at 0007 with rows (what the restored copy holds)."""
    root = tmp_path / "project"
    shutil.copytree(PROJECT / "migrations", root / "migrations")
    shutil.copytree(PROJECT / "deployments" / "masking", root / "deployments" / "masking")
    (tmp_path / "environments.toml").write_text(ENVIRONMENTS.format(endpoint=aws_endpoint))
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    monkeypatch.chdir(root)
    rds = boto3.client("rds", region_name="eu-west-1", endpoint_url=aws_endpoint)
    for instance in ("app-production", "app-staging"):
        rds.create_db_instance(DBInstanceIdentifier=instance, DBInstanceClass="db.t3.micro", Engine="postgres",
                               MasterUsername=database.user, MasterUserPassword="not-the-canary-1",
                               AllocatedStorage=20)
    rds.create_db_snapshot(DBSnapshotIdentifier=SOURCE_SNAPSHOT, DBInstanceIdentifier="app-production")
    secret = {"username": database.user, "password": CANARY_PASSWORD, "host": database.host,
              "port": str(database.port), "dbname": database.dbname}
    boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=aws_endpoint).create_secret(
        Name="rds/app-staging", SecretString=json.dumps(secret))
    apply_pending(database, read_catalog(root / "migrations", root), POLICY, target="0007")
    with connected(database) as conn:
        conn.execute("INSERT INTO users (phone_e164, display_name) VALUES ('+447700900001', 'Alice Real')")
    return Account(root, aws_endpoint, database)


def test_a_refresh_s_migrate_step_takes_no_snapshot_and_a_staging_run_still_does(
    account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    """The migrate step snapshotted the copy the refresh had just restored and masked: minutes on RDS and a
    stored snapshot every night, for nothing (the way back to it is the refresh itself)."""
    caplog.set_level(logging.INFO, logger=LOG.name)
    before = account.snapshots()

    summary = account.refresh()

    assert summary.outcome == "succeeded" and summary.result.live == "app-staging"
    assert summary.applied and summary.applied[-1] == "0010.validate-users-locale"
    assert account.snapshots() == before == [SOURCE_SNAPSHOT]  # none of staging
    assert "No snapshot of staging before migrating: it was just restored from its source's snapshot and masked " \
           "by this refresh: the way back is to run the refresh again" in caplog.text

    # An ordinary staging run of the same environment still takes its own.
    write_migrations(account.root, {"0011.add-users-note.sql": "ALTER TABLE users ADD COLUMN note text;\n"})
    run = migrate_environment("staging", "staging", account.steps(), git_sha="abc1234", trigger="manual",
                              project_root=account.root)

    assert run.applied == ("0011.add-users-note",) and run.snapshot_id is not None
    assert run.snapshot_id.startswith("rdsm-staging-")
    assert account.snapshots() == sorted([SOURCE_SNAPSHOT, run.snapshot_id])


def test_a_refresh_whose_migration_fails_names_the_refresh_as_the_way_back_and_no_restore(
    account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    """Its message said to run the refresh again without the command, and the error it ended in carried the
    migration's own summary, with `rds-migrations restore` commands for a snapshot of the copy just made. The
    source's snapshot is never offered for a restore: restored onto staging as is, it would skip the masking."""
    caplog.set_level(logging.INFO, logger=LOG.name)
    # It passes its rehearsal (no rows there) and fails on staging's.
    write_migrations(account.root, {"0011.divide-by-rows.sql": "UPDATE users SET display_name = (1/(id-id))::text;"})

    with pytest.raises(RdsMigrationsError) as failed:
        account.refresh()

    [message] = [r.getMessage() for r in caplog.records if "Staging refresh FAILED" in r.getMessage()]
    assert "Staging refresh FAILED at step migrate" in message and "22012" in message
    assert f"or the refresh again: rds-migrations trigger {REFRESH_DEPLOYMENT} --env staging" in message
    assert "rds-migrations restore" not in message and "--snapshot-id" not in message
    assert "snapshot_id" not in message
    # The source's snapshot is named once: where the refreshed copy came from, not something to restore.
    assert [line.split(":")[0].strip() for line in message.splitlines() if SOURCE_SNAPSHOT in line] == ["Snapshot"]
    carried = failed.value.result
    assert isinstance(carried, RunSummary) and carried.restore_steps == () and carried.snapshot_id is None
    assert account.snapshots() == [SOURCE_SNAPSHOT]
    assert CANARY_PASSWORD not in caplog.text


def test_the_refresh_command_names_the_shipped_refresh_deployment() -> None:
    for config in ("prefect.yaml", "deployments/prefect.ecs.yaml"):
        deployments = yaml.safe_load((PROJECT / config).read_text())["deployments"]
        [name] = [d["name"] for d in deployments if d["entrypoint"] == "flows/refresh.py:refresh_staging"]
        assert REFRESH_DEPLOYMENT == f"{flow_of('refresh')}/{name}", config
