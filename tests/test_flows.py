"""The staging and production flows end to end under Prefect: real PostgreSQL, Secrets Manager and RDS
over HTTP to the AWS API emulator, Slack over HTTP to the local sink."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tasks.engine.connection import Connection, connected
from tests.conftest import CANARY_PASSWORD, SlackSink
from tests.helpers import write_migrations

ENVIRONMENTS = """
[environments.prod-test]
tier = "production"
aws = {{ region = "eu-west-1", endpoint_url = "{endpoint}" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/prod-test" }}
snapshot = {{ kind = "rds_instance", instance_id = "app-test", max_wait_seconds = 60 }}
notify = {{ kind = "slack", webhook_block = "slack-test", on_noop = true }}
policy = {{ snapshot_required = true, lint_blocks_on = "warning", migration_lock_wait_seconds = 10 }}

[environments.stage-test]
tier = "staging"
aws = {{ region = "eu-west-1", endpoint_url = "{endpoint}" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/stage-test" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "slack", webhook_block = "slack-test" }}
"""

GOOD = {
    "0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n",
    "0002.create-accounts.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY);\n",
    "0003.create-devices.sql": "CREATE TABLE devices (id bigint PRIMARY KEY);\n",
}
# Three pending on top of 0001, the 2nd failing on the target's data (the rehearsal, on an empty database,
# cannot see that): a user without an email makes the backfill violate NOT NULL.
THREE_PENDING = {
    "0001.create-users.sql": GOOD["0001.create-users.sql"],
    "0002.create-accounts.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY, owner_email text NOT NULL);\n",
    "0003.backfill-accounts.sql": "INSERT INTO accounts (id, owner_email) SELECT id, email FROM users;\n",
    "0004.create-devices.sql": GOOD["0003.create-devices.sql"],
}


@dataclass
class Project:
    root: Path
    endpoint: str
    database: Connection
    sink: SlackSink

    def rds(self):
        return boto3.client("rds", region_name="eu-west-1", endpoint_url=self.endpoint)

    def manual_snapshots(self) -> list[str]:
        found = self.rds().describe_db_snapshots(DBInstanceIdentifier="app-test", SnapshotType="manual")
        return [s["DBSnapshotIdentifier"] for s in found["DBSnapshots"]]

    def applied(self) -> list[str]:
        with connected(self.database) as conn:
            if conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone()[0] is None:
                return []
            return [r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY 1")]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_endpoint: str, database: Connection,
            slack_sink: SlackSink, prefect_api: None) -> Project:
    from prefect_slack import SlackWebhook

    (tmp_path / "environments.toml").write_text(ENVIRONMENTS.format(endpoint=aws_endpoint))
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    monkeypatch.chdir(tmp_path)
    secret = {"username": database.user, "password": CANARY_PASSWORD, "host": database.host,
              "port": str(database.port), "dbname": database.dbname}
    sm = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=aws_endpoint)
    sm.create_secret(Name="rds/prod-test", SecretString=json.dumps(secret))
    sm.create_secret(Name="rds/stage-test", SecretString=json.dumps({**secret, "password": "wrong-password"}))
    boto3.client("rds", region_name="eu-west-1", endpoint_url=aws_endpoint).create_db_instance(
        DBInstanceIdentifier="app-test", DBInstanceClass="db.t3.micro", Engine="postgres",
        MasterUsername="postgres", MasterUserPassword="not-the-canary-1", AllocatedStorage=20,
    )
    SlackWebhook(url=slack_sink.url).save("slack-test", overwrite=True, _sync=True)
    return Project(tmp_path, aws_endpoint, database, slack_sink)


def run_production(**parameters: object):
    from flows.production import production

    return production(environment="prod-test", return_state=True, **parameters)


def with_duplicate_users(project: Project) -> None:
    """0001 applied, then application data the 0003 backfill will trip over."""
    write_migrations(project.root, {"0001.create-users.sql": GOOD["0001.create-users.sql"]})
    assert run_production(git_sha="0000001").is_completed()
    with connected(project.database) as conn:
        conn.execute("INSERT INTO users VALUES (1, 'a@example.com'), (2, NULL)")
    write_migrations(project.root, THREE_PENDING)


def test_second_of_three_fails_flow_is_failed_and_slack_gets_snapshot_and_restore(project: Project) -> None:
    with_duplicate_users(project)

    state = run_production(git_sha="abc1234def")

    assert state.is_failed()
    assert project.applied() == ["0001.create-users", "0002.create-accounts"]
    with connected(project.database) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('devices')").fetchone()[0] is None
    snapshot = [s for s in project.manual_snapshots() if "abc1234" in s]
    assert len(snapshot) == 1 and snapshot[0].startswith("rdsm-prod-test-abc1234")
    message = project.sink.texts()[-1]
    assert "FAILED" in message and "0003.backfill-accounts" in message and "23502" in message
    assert snapshot[0] in message
    assert f"rds-migrations restore --env prod-test --snapshot-id {snapshot[0]}" in message
    assert "0004.create-devices" in message
    assert "never onto the live name" in message


def test_rerun_same_sha_reuses_the_snapshot_only_at_the_same_history_and_a_noop_takes_none(
        project: Project) -> None:
    """The first attempt applied 0002, then failed: its snapshot, restored, would undo 0002 and every row since,
    so the second attempt of the same commit takes one of its own (tagged with the history it was taken at). The
    third, at the second's history, reuses the second's; a run with nothing pending takes none."""
    from tasks.engine.snapshots.naming import history_mark

    with_duplicate_users(project)
    assert run_production(git_sha="abc1234def").is_failed()
    first = project.manual_snapshots()
    assert len(first) == 2 and project.applied() == ["0001.create-users", "0002.create-accounts"]
    assert run_production(git_sha="abc1234def").is_failed()  # 0002 applied since the first: a snapshot of its own
    second = project.manual_snapshots()
    assert len(second) == 3 and set(first) < set(second)

    with connected(project.database) as conn:  # the data is fixed; the same commit is run again
        conn.execute("DELETE FROM users WHERE id = 2")
    state = run_production(git_sha="abc1234def")
    assert state.is_completed()
    assert project.manual_snapshots() == second  # at the second attempt's history: its snapshot, reused
    assert state.result().snapshot_id in set(second) - set(first) and "abc1234" in state.result().snapshot_id
    tags = project.rds().list_tags_for_resource(ResourceName=state.result().snapshot_location)["TagList"]
    assert {"Key": "rds-migrations:history", "Value": history_mark(("0001.create-users", "0002.create-accounts"))} \
        in tags
    assert project.applied() == sorted(name[:-4] for name in THREE_PENDING)

    state = run_production(git_sha="abc1234def")
    assert state.is_completed() and state.result().outcome == "nothing-to-do"
    assert state.result().snapshot_id is None and project.manual_snapshots() == second


def test_an_edited_applied_migration_is_refused_before_anything_runs(project: Project,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    write_migrations(project.root, {"0001.create-users.sql": GOOD["0001.create-users.sql"]})
    assert run_production(git_sha="1111111").is_completed()
    write_migrations(project.root, {"0001.create-users.sql": "CREATE TABLE users (id bigint, name text);\n",
                                    "0002.create-accounts.sql": GOOD["0002.create-accounts.sql"]})
    state = run_production(git_sha="2222222")
    assert state.is_failed()
    assert project.applied() == ["0001.create-users"]
    assert len(project.manual_snapshots()) == 1  # only the first run's
    assert "edited after it was applied" in project.sink.texts()[-1]
    # An ordinary failure: its words in the run's log lines (console and UI), without a traceback.
    failed = [r for r in caplog.records if r.name.startswith("prefect.") and r.levelno >= logging.ERROR]
    assert any("Encountered exception during execution: ValidationFailed" in r.getMessage() for r in failed)
    assert [r.getMessage() for r in failed if r.exc_info or r.exc_text] == []


def test_dry_run_and_target(project: Project) -> None:
    write_migrations(project.root, GOOD)
    state = run_production(git_sha="abcdef1", dry_run=True)
    assert state.is_completed() and state.result().outcome == "dry-run"
    assert project.applied() == [] and project.manual_snapshots() == []
    state = run_production(git_sha="abcdef1", target="0002")
    assert state.result().applied == ("0001.create-users", "0002.create-accounts")
    assert state.result().pending == ("0003.create-devices",)


def test_staging_flow_refuses_a_production_environment(project: Project) -> None:
    from flows.staging import staging

    write_migrations(project.root, GOOD)
    state = staging(environment="prod-test", return_state=True)
    assert state.is_failed()
    assert project.applied() == []


def test_hostile_parameters_are_refused(project: Project) -> None:
    write_migrations(project.root, GOOD)
    for bad in ({"git_sha": "abc'; DROP TABLE users; --"}, {"target": "0001; DROP"},
                {"migrations_dir": "../../etc"}, {"trigger": "Robert'); --"}):
        assert run_production(**bad).is_failed()
    assert project.applied() == [] and project.manual_snapshots() == []


def test_canary_password_never_leaks(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    """Failure paths with a canary password: wrong password, failing migration, Slack 404."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId

    from flows.staging import staging

    caplog.set_level(logging.DEBUG)
    with_duplicate_users(project)
    states = [run_production(git_sha="abc1234")]
    project.sink.status = 404
    states.append(run_production(git_sha="abc1234"))
    states.append(staging(environment="stage-test", git_sha="abc1234", return_state=True))  # wrong password
    assert all(s.is_failed() for s in states)

    seen: list[str] = [r.getMessage() for r in caplog.records]
    seen += [str(r.exc_info) for r in caplog.records if r.exc_info]
    seen += [json.dumps(m) for m in project.sink.messages]
    seen += [s.message or "" for s in states]
    for state in states:
        try:
            state.result()
        except Exception as exc:  # noqa: BLE001 - the text is what we check
            seen.append(str(exc))
            seen.append(repr(exc))
    with get_client(sync_client=True) as client:
        ids = [s.state_details.flow_run_id for s in states]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        seen += [log.message for log in logs]
        for flow_run_id in ids:
            run = client.read_flow_run(flow_run_id)
            seen.append(json.dumps(run.parameters, default=str))
            seen.append(run.model_dump_json())
        seen += [a.model_dump_json() for a in client.read_artifacts(
            flow_run_filter=FlowRunFilter(id={"any_": ids}))]
        seen += [t.model_dump_json() for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": ids}))]
    assert len(seen) > 20
    assert [text for text in seen if CANARY_PASSWORD in text] == []
    assert any("password authentication failed" in text for text in seen)  # the wrong-password path ran
