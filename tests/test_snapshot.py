"""The snapshot step: RDS/Aurora snapshots over real HTTP to the AWS emulator (moto server), botocore's
Stubber for what the emulator cannot do (progress, failed snapshots, quotas), pg_dump against a real
PostgreSQL, and restore steps that are actually run (aws CLI against the emulator, psql against
PostgreSQL)."""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from botocore.stub import ANY, Stubber

from tasks.engine.aws import aws_client
from tasks.engine.clients import client_binary
from tasks.engine.connection import Connection
from tasks.engine.environments import RDS_IDENTIFIER, AwsSettings, Environment
from tasks.engine.errors import ConfigError, SnapshotError
from tasks.engine.messages import restore_commands
from tasks.engine.runs.steps import DirectSteps
from tasks.engine.snapshots.naming import Snapshot, history_mark, snapshot_identifier, snapshot_tags
from tasks.engine.snapshots.rds import waiter_config
from tasks.engine.snapshots.take import take_snapshot
from tasks.engine.transient import is_transient
from tasks.retries import retry_on_transient
from tests.conftest import CANARY_PASSWORD

NOW = datetime(2026, 11, 24, 21, 30, 0, tzinfo=UTC)
SHA = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"
SNAPSHOT_ID = "rdsm-production-1a2b3c4-20261124t213000"
ACCOUNT_ARN = "arn:aws:rds:eu-west-1:123456789012"
RDS_CONNECTION = Connection(host="db.example", port=5432, dbname="app", user="app",
                            password=CANARY_PASSWORD, source="test")  # type: ignore[arg-type]
TEST_LOG = logging.getLogger("test_snapshot")


def make_environment(snapshot: dict, *, endpoint: str | None = None, name: str = "production") -> Environment:
    return Environment.model_validate({
        "name": name,
        "tier": "production",
        "aws": {"region": "eu-west-1", "endpoint_url": endpoint},
        "credentials": {"kind": "secrets_manager", "secret_id": "app/db"},
        "snapshot": snapshot,
        "notify": {"kind": "console"},
    })


INSTANCE = {"kind": "rds_instance", "instance_id": "app-db"}
CLUSTER = {"kind": "aurora_cluster", "cluster_id": "app-cluster"}


HISTORY = ("0001.create-users",)  # what the database has applied when the snapshot is taken
HISTORY_MARK = history_mark(HISTORY)


def no_sleep(seconds: float) -> None:
    pass


def snap(
    environment: Environment, client=None, connection: Connection = RDS_CONNECTION, **overrides: object
) -> Snapshot:
    """`take_snapshot` with this file's defaults (SHA, NOW, no flow run, no sleeping)."""
    arguments = {"git_sha": SHA, "flow_run_id": None, "trigger": "push", "now": NOW, "rds_client": client,
                 "log": TEST_LOG, "sleep": no_sleep, "applied": HISTORY}
    return take_snapshot(environment, connection, **(arguments | overrides))


# ---- against the AWS emulator ------------------------------------------------------------------------------


@pytest.fixture
def rds(aws_endpoint: str):
    return aws_client("rds", AwsSettings(region="eu-west-1", endpoint_url=aws_endpoint))


def create_instance(rds, **settings: object) -> None:
    rds.create_db_instance(DBInstanceIdentifier="app-db", DBInstanceClass="db.t3.micro", Engine="postgres",
                           MasterUsername="app", MasterUserPassword="not-the-canary-1", AllocatedStorage=20,
                           **settings)


@pytest.fixture
def instance(rds) -> str:
    create_instance(rds)
    return "app-db"


@pytest.fixture
def cluster(rds) -> str:
    rds.create_db_cluster(DBClusterIdentifier="app-cluster", Engine="aurora-postgresql", MasterUsername="app",
                          MasterUserPassword="not-the-canary-1")
    return "app-cluster"


def manual_snapshots(rds, instance_id: str = "app-db") -> list[dict]:
    return rds.describe_db_snapshots(DBInstanceIdentifier=instance_id, SnapshotType="manual")["DBSnapshots"]


def tags_of(snapshot: dict) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in snapshot.get("TagList", [])}


def test_instance_snapshot_is_named_tagged_and_available(rds, instance, aws_endpoint) -> None:
    snapshot = snap(make_environment(INSTANCE, endpoint=aws_endpoint), rds, flow_run_id="0b5c-run",
                    trigger="github-push")

    assert snapshot.kind == "rds_instance"
    assert snapshot.identifier == SNAPSHOT_ID
    assert snapshot.source == "app-db"
    assert not snapshot.reused
    assert snapshot.location == f"{ACCOUNT_ARN}:snapshot:{SNAPSHOT_ID}"
    assert snapshot.created_at.tzinfo is not None
    [stored] = manual_snapshots(rds)
    assert stored["DBSnapshotIdentifier"] == SNAPSHOT_ID and stored["Status"] == "available"
    assert tags_of(stored) == {
        "rds-migrations:environment": "production",
        "rds-migrations:git-sha": SHA,
        "rds-migrations:flow-run-id": "0b5c-run",
        "rds-migrations:trigger": "github-push",
        "rds-migrations:managed-by": "rds-migrations",
        "rds-migrations:history": HISTORY_MARK,
    }


def test_without_prefect_the_client_comes_from_the_environment(instance, aws_endpoint, rds) -> None:
    snapshot = DirectSteps().snapshot(make_environment(INSTANCE, endpoint=aws_endpoint), RDS_CONNECTION, SHA, "manual")
    assert [s["DBSnapshotIdentifier"] for s in manual_snapshots(rds)] == [snapshot.identifier]
    assert tags_of(manual_snapshots(rds)[0])["rds-migrations:flow-run-id"] == "none"


def test_a_rerun_with_the_same_sha_reuses_the_snapshot(rds, instance, aws_endpoint) -> None:
    environment = make_environment(INSTANCE, endpoint=aws_endpoint)
    first = snap(environment, rds, flow_run_id="run-1")
    again = snap(environment, rds, flow_run_id="run-2", now=NOW + timedelta(hours=1))

    assert again.reused and not first.reused
    assert (again.identifier, again.location) == (first.identifier, first.location)
    assert len(manual_snapshots(rds)) == 1


def test_a_rerun_long_after_takes_a_new_snapshot_so_a_restore_loses_no_more_writes_than_it_must(
        rds, instance, aws_endpoint, database, tmp_path) -> None:
    """Reused days later, the first attempt's snapshot would be what the failure message says to restore: every
    write since it was taken lost. Reuse is for a re-run soon after (`policy.snapshot_reuse_minutes`, 60)."""
    environment = make_environment(INSTANCE, endpoint=aws_endpoint)
    now = datetime.now(UTC)  # the emulator stamps a snapshot with the time it is taken
    first = snap(environment, rds, flow_run_id="run-1", now=now)
    assert snap(environment, rds, flow_run_id="run-2", now=now + timedelta(minutes=50)).reused
    later = snap(environment, rds, flow_run_id="run-3", now=now + timedelta(days=3))
    assert not later.reused and later.identifier != first.identifier
    never = environment.model_copy(update={"policy": environment.policy.model_copy(
        update={"snapshot_reuse_minutes": 0})})
    assert not snap(never, rds, flow_run_id="run-4", now=now + timedelta(days=3, minutes=1)).reused

    dumped = make_environment({"kind": "pg_dump", "directory": str(tmp_path)})  # the local kind: the same rule
    first = snap(dumped, connection=database, now=now)
    assert snap(dumped, connection=database, now=now + timedelta(minutes=50)).identifier == first.identifier
    assert not snap(dumped, connection=database, now=now + timedelta(days=3)).reused


def test_a_crash_report_names_only_a_snapshot_its_run_could_have_reused(rds, instance, aws_endpoint) -> None:
    """A run killed before it tagged a snapshot of its own is reported with the one taken for its commit that it
    reused; one days old, which it could not have reused, is not named in the restore instructions."""
    from tasks.engine.runs.crash import run_snapshot

    environment = make_environment(INSTANCE, endpoint=aws_endpoint)
    now = datetime.now(UTC)
    taken = snap(environment, rds, flow_run_id="run-1", now=now)
    assert run_snapshot(environment, "run-2", SHA, rds, now=now + timedelta(minutes=30)).identifier == \
        taken.identifier
    assert run_snapshot(environment, "run-2", SHA, rds, now=now + timedelta(days=3)) is None
    assert run_snapshot(environment, "run-1", SHA, rds, now=now + timedelta(days=3)).identifier == \
        taken.identifier  # its own, however old


def test_a_rollback_never_reuses_the_snapshot_taken_before_the_migration(rds, instance, aws_endpoint) -> None:
    """The same commit's pre-migration snapshot is not the database before its rollback: a fresh one."""
    environment = make_environment(INSTANCE, endpoint=aws_endpoint)
    before_migration = snap(environment, rds, flow_run_id="run-1")
    before_rollback = snap(environment, rds, flow_run_id="run-2", now=NOW + timedelta(days=2), reuse=False)

    assert not before_rollback.reused and before_rollback.identifier != before_migration.identifier
    assert len(manual_snapshots(rds)) == 2


def _ours(sha: str = SHA, environment: str = "production") -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in snapshot_tags(environment, sha, "run-0", "push", HISTORY).items()]


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param([], id="untagged-with-our-name"),
        pytest.param(_ours(environment="staging"), id="other-environment"),
        pytest.param(_ours(sha="9f9f9f9f9f"), id="other-sha"),
        pytest.param([t for t in _ours() if t["Key"] != "rds-migrations:managed-by"], id="not-managed-by-us"),
    ],
)
def test_a_snapshot_that_is_not_ours_for_this_sha_is_never_reused(rds, instance, aws_endpoint, tags) -> None:
    earlier = "rdsm-production-1a2b3c4-20261124t200000"
    rds.create_db_snapshot(DBSnapshotIdentifier=earlier, DBInstanceIdentifier="app-db", Tags=tags)

    snapshot = snap(make_environment(INSTANCE, endpoint=aws_endpoint), rds)

    assert not snapshot.reused and snapshot.identifier == SNAPSHOT_ID
    assert sorted(s["DBSnapshotIdentifier"] for s in manual_snapshots(rds)) == [earlier, SNAPSHOT_ID]


def test_a_label_instead_of_a_sha_is_never_reused(rds, instance, aws_endpoint) -> None:
    environment = make_environment(INSTANCE, endpoint=aws_endpoint)
    for minute in (0, 1):
        snapshot = snap(environment, rds, git_sha="local", trigger="cli", now=NOW + timedelta(minutes=minute))
        assert not snapshot.reused
    assert len(manual_snapshots(rds)) == 2


def test_aurora_cluster_snapshot_is_created_then_reused(rds, cluster, aws_endpoint) -> None:
    environment = make_environment(CLUSTER, endpoint=aws_endpoint)
    first = snap(environment, rds, flow_run_id="run-1")
    again = snap(environment, rds, flow_run_id="run-2", now=NOW + timedelta(minutes=5))

    assert first.kind == "aurora_cluster" and first.source == "app-cluster" and not first.reused
    assert first.location == f"{ACCOUNT_ARN}:cluster-snapshot:{SNAPSHOT_ID}"
    assert again.reused and again.identifier == first.identifier
    stored = rds.describe_db_cluster_snapshots(DBClusterIdentifier="app-cluster", SnapshotType="manual")
    [only] = stored["DBClusterSnapshots"]
    assert tags_of(only)["rds-migrations:git-sha"] == SHA


@pytest.mark.parametrize("kind", ["instance", "cluster"])
def test_a_stopped_source_is_refused_without_a_snapshot(rds, aws_endpoint, request, kind) -> None:
    if kind == "instance":
        request.getfixturevalue("instance")
        rds.stop_db_instance(DBInstanceIdentifier="app-db")
        config, name = INSTANCE, "app-db"
    else:
        request.getfixturevalue("cluster")
        rds.stop_db_cluster(DBClusterIdentifier="app-cluster")
        config, name = CLUSTER, "app-cluster"

    with pytest.raises(SnapshotError) as raised:
        snap(make_environment(config, endpoint=aws_endpoint), rds)

    assert name in str(raised.value) and "'stopped'" in str(raised.value)
    assert CANARY_PASSWORD not in str(raised.value)
    assert rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"] == []
    assert rds.describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"] == []


def test_a_missing_instance_is_named(rds, aws_endpoint) -> None:
    with pytest.raises(SnapshotError, match="DB instance app-db not found in eu-west-1"):
        snap(make_environment(INSTANCE, endpoint=aws_endpoint), rds)


@pytest.mark.parametrize("git_sha", ["1a2b3c4; rm -rf /", "ABCDEF1234", "", "--help", "1a2b3c", "local$(id)",
                                     "a" * 41, "refs/heads/main"])
def test_a_git_sha_that_is_not_a_sha_or_label_is_refused(rds, instance, aws_endpoint, git_sha) -> None:
    with pytest.raises(ValueError, match="git_sha"):
        snap(make_environment(INSTANCE, endpoint=aws_endpoint), rds, git_sha=git_sha)
    assert manual_snapshots(rds) == []


def test_an_environment_without_snapshots_is_refused() -> None:
    environment = make_environment({"kind": "none"})
    with pytest.raises(ConfigError, match="takes no snapshots"):
        snap(environment)


# ---- what the emulator cannot do: botocore's Stubber on a real client --------------------------------------


@pytest.fixture
def stubbed():
    # A real client from the production factory; the Stubber answers before anything goes on the wire.
    client = aws_client("rds", AwsSettings(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def db_snapshot(status: str, progress: int | None = None, *, identifier: str = SNAPSHOT_ID,
                tags: list[dict] | None = None) -> dict:
    snapshot = {
        "DBSnapshotIdentifier": identifier,
        "DBInstanceIdentifier": "app-db",
        "Status": status,
        "SnapshotType": "manual",
        "DBSnapshotArn": f"{ACCOUNT_ARN}:snapshot:{identifier}",
        "SnapshotCreateTime": NOW,
        "TagList": tags or [],
    }
    if progress is not None:
        snapshot["PercentProgress"] = progress
    return snapshot


AVAILABLE_INSTANCE = {"DBInstances": [{"DBInstanceIdentifier": "app-db", "DBInstanceStatus": "available"}]}


def stub_up_to_create(stubber: Stubber, *, used: int = 3, maximum: int = 100) -> None:
    stubber.add_response("describe_db_snapshots", {"DBSnapshots": []},
                         {"DBInstanceIdentifier": "app-db", "SnapshotType": "manual"})
    stubber.add_response("describe_db_instances", AVAILABLE_INSTANCE, {"DBInstanceIdentifier": "app-db"})
    stubber.add_response("describe_account_attributes", {"AccountQuotas": [
        {"AccountQuotaName": "DBInstances", "Used": 1, "Max": 40},
        {"AccountQuotaName": "ManualSnapshots", "Used": used, "Max": maximum},
    ]})


def stub_describe(stubber: Stubber, *snapshots: dict) -> None:
    for snapshot in snapshots:
        stubber.add_response("describe_db_snapshots", {"DBSnapshots": [snapshot]},
                             {"DBSnapshotIdentifier": snapshot["DBSnapshotIdentifier"]})


def test_progress_is_logged_until_the_snapshot_is_available(stubbed, caplog) -> None:
    client, stubber = stubbed
    stub_up_to_create(stubber)
    stubber.add_response("create_db_snapshot", {"DBSnapshot": db_snapshot("creating", 0)},
                         {"DBSnapshotIdentifier": SNAPSHOT_ID, "DBInstanceIdentifier": "app-db", "Tags": ANY})
    stub_describe(stubber, db_snapshot("creating", 40), db_snapshot("creating", 85),
                  db_snapshot("available", 100))
    sleeps: list[float] = []
    caplog.set_level(logging.INFO, logger=TEST_LOG.name)

    snapshot = snap(make_environment(INSTANCE), client, sleep=sleeps.append)

    assert snapshot.identifier == SNAPSHOT_ID and not snapshot.reused
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("snapshot ")]
    assert progress == [f"snapshot {SNAPSHOT_ID}: 40%", f"snapshot {SNAPSHOT_ID}: 85%",
                        f"snapshot {SNAPSHOT_ID}: 100%"]
    assert sleeps == [30, 30]  # the configured 3600 s wait polls every 30 s


@pytest.mark.parametrize("state", ["failed", "incompatible-restore", "deleting"])
def test_a_snapshot_that_fails_is_an_error_naming_it(stubbed, state) -> None:
    client, stubber = stubbed
    stub_up_to_create(stubber)
    stubber.add_response("create_db_snapshot", {"DBSnapshot": db_snapshot("creating", 0)})
    stub_describe(stubber, db_snapshot("creating", 10), db_snapshot(state, 10))

    with pytest.raises(SnapshotError) as raised:
        snap(make_environment(INSTANCE), client)

    assert SNAPSHOT_ID in str(raised.value) and repr(state) in str(raised.value)
    assert "run again" in str(raised.value)


def test_a_snapshot_still_creating_after_max_wait_is_an_error(stubbed) -> None:
    client, stubber = stubbed
    stub_up_to_create(stubber)
    stubber.add_response("create_db_snapshot", {"DBSnapshot": db_snapshot("creating", 0)})
    stub_describe(stubber, db_snapshot("creating", 5), db_snapshot("creating", 9))  # 30 s = 2 polls of 15 s
    sleeps: list[float] = []

    with pytest.raises(SnapshotError, match=rf"{SNAPSHOT_ID} is still 'creating' after 30 s"):
        snap(make_environment({**INSTANCE, "max_wait_seconds": 30}), client, sleep=sleeps.append)
    assert sleeps == [15]


def test_our_snapshot_still_creating_is_waited_for_and_reused(stubbed) -> None:
    client, stubber = stubbed
    earlier = "rdsm-production-1a2b3c4-20261124t200000"
    stubber.add_response("describe_db_snapshots", {"DBSnapshots": [
        db_snapshot("creating", 30, identifier=earlier, tags=_ours()),
        db_snapshot("available", identifier="someone-elses", tags=[]),
    ]})
    stub_describe(stubber, db_snapshot("creating", 60, identifier=earlier),
                  db_snapshot("available", 100, identifier=earlier))

    snapshot = snap(make_environment(INSTANCE), client)

    assert snapshot.reused and snapshot.identifier == earlier  # and nothing was created: no stub for it


def test_our_failed_snapshot_is_not_reused(stubbed) -> None:
    client, stubber = stubbed
    earlier = "rdsm-production-1a2b3c4-20261124t200000"
    stubber.add_response("describe_db_snapshots", {"DBSnapshots": [
        db_snapshot("failed", identifier=earlier, tags=_ours())]})
    stubber.add_response("describe_db_instances", AVAILABLE_INSTANCE)
    stubber.add_response("describe_account_attributes", {"AccountQuotas": []})
    stubber.add_response("create_db_snapshot", {"DBSnapshot": db_snapshot("available", 100)})
    stub_describe(stubber, db_snapshot("available", 100))

    snapshot = snap(make_environment(INSTANCE), client)
    assert not snapshot.reused and snapshot.identifier == SNAPSHOT_ID


def test_a_full_manual_snapshot_quota_is_refused_before_creating(stubbed) -> None:
    client, stubber = stubbed
    stub_up_to_create(stubber, used=100, maximum=100)

    with pytest.raises(SnapshotError) as raised:
        snap(make_environment(INSTANCE), client)

    message = str(raised.value)
    assert "quota exceeded: 100 of 100 manual snapshots" in message
    assert "delete old ones with: aws rds delete-db-snapshot --db-snapshot-identifier" in message


def test_the_cluster_quota_is_the_cluster_snapshot_quota(stubbed) -> None:
    client, stubber = stubbed
    stubber.add_response("describe_db_cluster_snapshots", {"DBClusterSnapshots": []})
    stubber.add_response("describe_db_clusters",
                         {"DBClusters": [{"DBClusterIdentifier": "app-cluster", "Status": "available"}]})
    stubber.add_response("describe_account_attributes", {"AccountQuotas": [
        {"AccountQuotaName": "ManualSnapshots", "Used": 0, "Max": 100},
        {"AccountQuotaName": "ManualClusterSnapshots", "Used": 20, "Max": 20},
    ]})

    with pytest.raises(SnapshotError, match="20 of 20 .* aws rds delete-db-cluster-snapshot"):
        snap(make_environment(CLUSTER), client)


def test_snapshot_quota_exceeded_from_create_is_the_same_error(stubbed) -> None:
    client, stubber = stubbed
    stub_up_to_create(stubber)
    stubber.add_client_error("create_db_snapshot", service_error_code="SnapshotQuotaExceeded",
                             service_message="Cannot create more than 100 manual snapshots",
                             http_status_code=400)

    with pytest.raises(SnapshotError, match="quota exceeded.*aws rds delete-db-snapshot") as raised:
        snap(make_environment(INSTANCE), client)
    assert not is_transient(raised.value)


def test_an_unanswered_quota_check_does_not_block(stubbed, caplog) -> None:
    client, stubber = stubbed
    stubber.add_response("describe_db_snapshots", {"DBSnapshots": []})
    stubber.add_response("describe_db_instances", AVAILABLE_INSTANCE)
    stubber.add_client_error("describe_account_attributes", service_error_code="AccessDenied",
                             http_status_code=403)
    stubber.add_response("create_db_snapshot", {"DBSnapshot": db_snapshot("available", 100)})
    stub_describe(stubber, db_snapshot("available", 100))
    caplog.set_level(logging.WARNING, logger=TEST_LOG.name)

    snap(make_environment(INSTANCE), client)
    assert any("Could not check the ManualSnapshots quota" in r.getMessage() for r in caplog.records)


# ---- transient or not -------------------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    """A real ClientError as botocore raises it, from a stubbed call."""
    client = aws_client("rds", AwsSettings(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    with Stubber(client) as stubber:
        stubber.add_client_error("describe_db_instances", service_error_code=code, http_status_code=status)
        with pytest.raises(ClientError) as raised:
            client.describe_db_instances()
    return raised.value


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (lambda: client_error("Throttling", 400), True),
        (lambda: client_error("ThrottlingException", 400), True),
        (lambda: client_error("RequestLimitExceeded", 400), True),
        (lambda: client_error("TooManyRequestsException", 429), True),
        (lambda: client_error("ServiceUnavailable", 503), True),
        (lambda: client_error("InternalFailure", 500), True),
        (lambda: client_error("SomethingNew", 502), True),
        (lambda: EndpointConnectionError(endpoint_url="https://rds.eu-west-1.amazonaws.com"), True),
        (lambda: ReadTimeoutError(endpoint_url="https://rds.eu-west-1.amazonaws.com"), True),
        (lambda: client_error("AccessDenied", 403), False),
        (lambda: client_error("DBInstanceNotFound", 404), False),
        (lambda: client_error("SnapshotQuotaExceeded", 400), False),
        (lambda: SnapshotError("snapshot x is 'failed'"), False),
        (lambda: ValueError("bad sha"), False),
    ],
)
def test_transient_aws_errors(error, transient) -> None:
    assert is_transient(error()) is transient


def test_the_task_retries_transient_errors_only() -> None:
    from prefect.states import Completed, Failed

    assert retry_on_transient(None, None, Failed(data=client_error("Throttling", 400)))
    assert not retry_on_transient(None, None, Failed(data=SnapshotError("quota exceeded")))
    assert not retry_on_transient(None, None, Completed(data=None))


def test_the_prefect_task_reports_and_does_not_retry_a_snapshot_error(prefect_api, rds, aws_endpoint) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from tasks.snapshot import snapshot_task

    environment = make_environment(INSTANCE, endpoint=aws_endpoint)
    seen: dict = {}

    @flow
    def snapshot_flow() -> None:
        seen["flow_run_id"] = flow_run.id
        seen["state"] = snapshot_task(environment, RDS_CONNECTION, git_sha=SHA, trigger="push", rds=rds,
                                      return_state=True)

    snapshot_flow()  # no instance yet: a SnapshotError
    assert seen["state"].is_failed()
    with pytest.raises(SnapshotError, match="app-db not found"):
        seen["state"].result()
    with get_client(sync_client=True) as client:
        assert client.read_task_run(seen["state"].state_details.task_run_id).run_count == 1

    create_instance(rds)
    snapshot_flow()
    snapshot = seen["state"].result()
    assert isinstance(snapshot, Snapshot) and snapshot.identifier.startswith("rdsm-production-1a2b3c4-")
    assert tags_of(manual_snapshots(rds)[0])["rds-migrations:flow-run-id"] == str(seen["flow_run_id"])


# ---- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("environment_name", ["production", "a", "prod--eu-", "x" * 40, "a-" * 20,
                                              "Staging_EU.1", "q-" + "9" * 60, "9lives"])
@pytest.mark.parametrize("git_sha", [SHA, "abcdef0", "unknown", "local", "feature-x-y", "a-bcdef-g"])
def test_identifiers_are_valid_rds_snapshot_identifiers(environment_name, git_sha) -> None:
    identifier = snapshot_identifier(environment_name, git_sha, NOW)

    assert len(identifier) <= 63
    assert RDS_IDENTIFIER.match(identifier) and identifier == identifier.lower()
    assert identifier.startswith("rdsm-") and identifier.endswith("-20261124t213000")
    assert _short(git_sha) in identifier


def _short(git_sha: str) -> str:
    return git_sha[:7].strip("-")


def test_identifier_time_is_utc() -> None:
    eastern = datetime(2026, 11, 24, 16, 30, tzinfo=ZoneInfo("America/New_York"))
    assert snapshot_identifier("production", SHA, eastern) == SNAPSHOT_ID
    assert snapshot_identifier("production", SHA, NOW.replace(tzinfo=None)) == SNAPSHOT_ID


def test_tag_values_are_cleaned() -> None:
    tags = snapshot_tags("production", SHA, None, "rds:push <by> bot\n")
    assert tags["rds-migrations:flow-run-id"] == "none"
    assert re.fullmatch(r"[\w .:/=+@-]{1,256}", tags["rds-migrations:trigger"])
    assert not tags["rds-migrations:trigger"].startswith(("rds:", "aws:"))


@pytest.mark.parametrize("max_wait", [30, 31, 100, 600, 1799, 3600, 6 * 3600])
def test_waiter_config_polls_every_15_to_30_seconds_for_at_least_max_wait(max_wait) -> None:
    config = waiter_config(max_wait)
    assert 15 <= config["Delay"] <= 30
    assert config["MaxAttempts"] * config["Delay"] >= max_wait > (config["MaxAttempts"] - 1) * config["Delay"]


# ---- how to restore ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("environment,snapshot_id",
                         [("production", SNAPSHOT_ID), ("local", "rds:app-db-2026-11-24-03-05")])
def test_the_restore_commands_name_the_environment_and_the_snapshot_and_no_secret(environment, snapshot_id) -> None:
    """A failure notification points at the restore flow (restore to a NEW name, then swap), from the command
    line or through Prefect; tests/test_restore.py runs the command it names."""
    cli, prefect = restore_commands(environment, snapshot_id)
    assert shlex.split(cli) == ["rds-migrations", "restore", "--env", environment, "--snapshot-id", snapshot_id]
    words = shlex.split(prefect.removeprefix("# or through Prefect, where the environment has its own restore "
                                             "deployment: "))
    # The environment's own restore deployment: it has that environment's role (tests/test_deploy_config.py).
    assert words[:4] == ["prefect", "deployment", "run", f"restore-snapshot/restore-{environment}"]
    assert words[4:] == ["--param", f"environment={environment}", "--param", f"snapshot_id={snapshot_id}"]
    assert CANARY_PASSWORD not in cli + prefect and "password" not in (cli + prefect).lower()


# ---- pg_dump against a real PostgreSQL --------------------------------------------------------------------


def local_environment(directory: Path | str) -> Environment:
    return Environment.model_validate({
        "name": "local",
        "tier": "staging",
        "credentials": {"kind": "embedded", "database": "app"},
        "snapshot": {"kind": "pg_dump", "directory": str(directory)},
        "notify": {"kind": "console"},
    })


@pytest.fixture
def filled(database: Connection) -> Connection:
    with database.connect() as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO accounts VALUES (1, 'ada'), (2, 'grace')")
    return database


def test_pg_dump_snapshot_is_a_readable_dump_with_a_sidecar(filled, tmp_path) -> None:
    snapshot = snap(local_environment(tmp_path / "snaps"), connection=filled, flow_run_id="run-7",
                    trigger="cli")

    dump = Path(snapshot.location)
    assert snapshot.kind == "pg_dump" and snapshot.source == filled.dbname and not snapshot.reused
    assert snapshot.identifier == "rdsm-local-1a2b3c4-20261124t213000"
    assert dump == tmp_path / "snaps" / f"{snapshot.identifier}.dump" and dump.is_absolute()
    assert dump.stat().st_mode & 0o077 == 0
    listing = subprocess.run([str(client_binary("pg_restore")), "--list", str(dump)],
                             capture_output=True, text=True, check=True).stdout
    assert "TABLE public accounts" in listing and "TABLE DATA public accounts" in listing
    sidecar_text = dump.with_suffix(".json").read_text()
    assert json.loads(sidecar_text) == {
        "identifier": snapshot.identifier,
        "environment": "local",
        "git_sha": SHA,
        "database": filled.dbname,
        "created_at": "2026-11-24T21:30:00+00:00",
        "flow_run_id": "run-7",
        "trigger": "cli",
        "history": HISTORY_MARK,
    }
    assert CANARY_PASSWORD not in sidecar_text
    assert CANARY_PASSWORD.encode() not in dump.read_bytes()
    assert sorted(p.name for p in dump.parent.iterdir()) == [dump.name, dump.with_suffix(".json").name]


def test_pg_dump_is_reused_for_the_same_sha_only(filled, tmp_path) -> None:
    environment = local_environment(tmp_path)
    first = snap(environment, connection=filled, trigger="cli")
    again = snap(environment, connection=filled, trigger="cli", now=NOW + timedelta(minutes=20))
    other = snap(environment, connection=filled, git_sha="abcdef0", trigger="cli",
                 now=NOW + timedelta(minutes=30))

    assert again.reused and (again.identifier, again.location, again.created_at) == (
        first.identifier, first.location, first.created_at)
    assert not other.reused and other.location != first.location
    assert len(list(tmp_path.glob("*.dump"))) == 2


def test_a_snapshot_taken_at_another_history_is_never_reused(filled, tmp_path, rds, instance, aws_endpoint) -> None:
    """A re-run of the same commit after it applied migrations (and data was written) takes a new snapshot:
    the one before the first attempt, restored, would undo those migrations too. It used to be reused and named
    in the restore instructions. So is one taken when the history was not known, or by an earlier version."""
    moved = (*HISTORY, "0002.add-email")
    local = local_environment(tmp_path)
    first = snap(local, connection=filled, trigger="cli")
    after = snap(local, connection=filled, trigger="cli", now=NOW + timedelta(minutes=10), applied=moved)
    unknown = snap(local, connection=filled, trigger="cli", now=NOW + timedelta(minutes=20), applied=None)
    assert not after.reused and not unknown.reused and len({first.location, after.location, unknown.location}) == 3
    assert snap(local, connection=filled, trigger="cli", now=NOW + timedelta(minutes=30), applied=moved).reused

    environment = make_environment(INSTANCE, endpoint=aws_endpoint)
    taken = snap(environment, rds, flow_run_id="run-1")
    again = snap(environment, rds, flow_run_id="run-2", now=NOW + timedelta(hours=1), applied=moved)
    assert not again.reused and again.identifier != taken.identifier
    assert sorted(tags_of(s)["rds-migrations:history"] for s in manual_snapshots(rds)) == sorted(
        [HISTORY_MARK, history_mark(moved)])


@pytest.mark.parametrize("missing", [".json", ".dump"])
def test_a_dump_missing_its_sidecar_or_its_file_is_not_reused(filled, tmp_path, missing) -> None:
    environment = local_environment(tmp_path)
    first = snap(environment, connection=filled, trigger="cli")
    Path(first.location).with_suffix(missing).unlink()

    again = snap(environment, connection=filled, trigger="cli", now=NOW + timedelta(minutes=1))
    assert not again.reused and again.location != first.location


def test_a_relative_dump_directory_is_under_the_working_directory(filled, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    snapshot = snap(local_environment("out/snaps"), connection=filled, trigger="cli")
    assert Path(snapshot.location).parent == tmp_path / "out" / "snaps"
    assert Path(snapshot.location).is_file()


def test_a_failing_pg_dump_reports_its_error_without_the_password(database, tmp_path) -> None:
    # A database named like the password makes pg_dump print the password in its error.
    broken = database.with_database(CANARY_PASSWORD)

    with pytest.raises(SnapshotError) as raised:
        snap(local_environment(tmp_path), connection=broken, trigger="cli")

    message = str(raised.value)
    assert "pg_dump of" in message and "does not exist" in message and "**********" in message
    assert CANARY_PASSWORD not in message and CANARY_PASSWORD not in repr(raised.value)
    assert list(tmp_path.iterdir()) == []  # no partial dump, no sidecar: nothing to reuse by mistake
