"""Reliability scenarios end to end (RELIABILITY.md): faults from AWS, a password rotated mid-run, a dirty
database resolved from the command line, hostile parameters, a failing Slack, and the canary password that
must appear nowhere.

AWS is the emulator (moto server) over real HTTP. What the emulator cannot do (throttling, 5xx, access
denied, a full snapshot quota) is injected by `FaultyAws`, an HTTP proxy in front of it that answers chosen
operations itself and forwards everything else: the code under test is the production code with an endpoint
URL, exactly as with the emulator alone.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import pytest
from psycopg import sql

from tasks.engine.aws import aws_client
from tasks.engine.connection import Connection, connected, connection_from_url
from tasks.engine.credentials import fetch_connection
from tasks.engine.environments import AwsSettings, load_environment
from tasks.engine.errors import SecretError, SnapshotError
from tasks.engine.server_binaries import free_port
from tasks.engine.snapshots.take import take_snapshot
from tests.conftest import CANARY_PASSWORD, SlackSink
from tests.helpers import write_migrations

PROJECT = Path(__file__).parents[1]

# ---- AWS faults over HTTP ---------------------------------------------------------------------------------

RDS_NAMESPACE = "http://rds.amazonaws.com/doc/2014-10-31/"


@dataclass
class FaultyAws:
    """A proxy in front of the AWS emulator: `fail()` and `answer()` queue responses per operation
    (`GetSecretValue`, `DescribeAccountAttributes`, ...); everything else is forwarded."""

    upstream: str
    url: str = ""
    seen: list[str] = field(default_factory=list)
    queued: dict[str, list[tuple[int, str, bool]]] = field(default_factory=dict)  # op -> (status, body, json)
    always: dict[str, tuple[int, str, bool]] = field(default_factory=dict)

    def fail(self, operation: str, code: str, status: int = 400, times: int = 1, *, json_protocol: bool) -> None:
        if json_protocol:
            body = json.dumps({"__type": code, "message": f"injected {code}"})
        else:
            body = (f'<ErrorResponse xmlns="{RDS_NAMESPACE}"><Error><Type>Sender</Type><Code>{code}</Code>'
                    f"<Message>injected {code}</Message></Error><RequestId>injected</RequestId></ErrorResponse>")
        self.queued.setdefault(operation, []).extend([(status, body, json_protocol)] * times)

    def answer(self, operation: str, body: str) -> None:
        self.always[operation] = (200, body, False)

    def count(self, operation: str) -> int:
        return self.seen.count(operation)


@pytest.fixture
def faulty_aws(aws_endpoint: str) -> Iterator[FaultyAws]:
    proxy = FaultyAws(upstream=aws_endpoint)
    # The emulator does not implement the quota call (a 500 that botocore retries for seconds): a roomy quota.
    proxy.answer("DescribeAccountAttributes", quota_answer(3, 100))
    upstream = urlsplit(aws_endpoint)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            target = self.headers.get("X-Amz-Target")
            operation = target.rsplit(".", 1)[-1] if target else parse_qs(body.decode()).get("Action", ["?"])[0]
            proxy.seen.append(operation)
            canned = proxy.queued.get(operation, [None]).pop(0) if proxy.queued.get(operation) else None
            canned = canned or proxy.always.get(operation)
            if canned is not None:
                status, text, is_json = canned
                self._reply(status, text.encode(), "application/x-amz-json-1.1" if is_json else "text/xml")
                return
            forward = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            forward.request("POST", self.path, body, headers)
            answer = forward.getresponse()
            self._reply(answer.status, answer.read(), answer.getheader("Content-Type", "text/xml"))
            forward.close()

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield proxy
    server.shutdown()


def quota_answer(used: int, maximum: int) -> str:
    return (f'<DescribeAccountAttributesResponse xmlns="{RDS_NAMESPACE}"><DescribeAccountAttributesResult>'
            "<AccountQuotas><AccountQuota><AccountQuotaName>ManualSnapshots</AccountQuotaName>"
            f"<Used>{used}</Used><Max>{maximum}</Max></AccountQuota></AccountQuotas>"
            "</DescribeAccountAttributesResult><ResponseMetadata><RequestId>injected</RequestId>"
            "</ResponseMetadata></DescribeAccountAttributesResponse>")


# ---- a project with environments, secrets, an RDS instance and a Slack webhook ----------------------------

ENVIRONMENTS = """
[environments.prod-rel]
tier = "production"
aws = {{ region = "eu-west-1", endpoint_url = "{endpoint}" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/prod-rel" }}
snapshot = {{ kind = "rds_instance", instance_id = "app-rel", max_wait_seconds = 60 }}
notify = {{ kind = "slack", webhook_block = "slack-rel", on_noop = true }}
policy = {{ snapshot_required = true, lint_blocks_on = "warning", migration_lock_wait_seconds = 10 }}

[environments.database-url]
tier = "staging"
credentials = {{ kind = "url_env", variable = "DATABASE_URL" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "console" }}
"""
STAGING = """
[environments.{name}]
tier = "staging"
aws = {{ region = "eu-west-1", endpoint_url = "{endpoint}" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/{name}" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "slack", webhook_block = "slack-rel" }}
rehearsal = {{ kind = "none" }}
policy = {{ rehearsal_required = false, migration_lock_wait_seconds = 10 }}
"""
# stage-wrong: the canary as password, refused; stage-unreachable: nobody listens; stage-plain: a password
# shaped like a migration id; stage-rotating: its own role, whose password the test rotates.
STAGINGS = ("stage-wrong", "stage-unreachable", "stage-plain", "stage-rotating", "stage-rel")
PLAIN_PASSWORD = "PlainPassw0rd-4242"

USERS = {"0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n"}
UNIQUE_EMAIL = {
    "0002.users-email.sql": (
        "-- Unique emails, built without blocking writes.\n"
        "-- transactional: false\n"
        "CREATE TABLE IF NOT EXISTS email_audit (id bigint PRIMARY KEY);\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key ON users (email);\n"
        "CREATE TABLE IF NOT EXISTS email_checked (id bigint PRIMARY KEY);\n"
    ),
    "0003.create-devices.sql": "CREATE TABLE devices (id bigint PRIMARY KEY);\n",
}


@dataclass
class Project:
    root: Path
    aws: FaultyAws
    database: Connection
    sink: SlackSink

    def secrets(self):
        return boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=self.aws.upstream)

    def rds(self):
        return boto3.client("rds", region_name="eu-west-1", endpoint_url=self.aws.upstream)

    def manual_snapshots(self) -> list[str]:
        found = self.rds().describe_db_snapshots(DBInstanceIdentifier="app-rel", SnapshotType="manual")
        return [s["DBSnapshotIdentifier"] for s in found["DBSnapshots"]]

    def applied(self) -> list[str]:
        with connected(self.database) as conn:
            if conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone()[0] is None:
                return []
            return [r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY 1")]

    def sql(self, statement: str, *params: object) -> None:
        with connected(self.database) as conn:
            conn.execute(statement, params or None)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(PROJECT),
               "RDS_MIGRATIONS_ENVIRONMENTS": str(self.root / "environments.toml")}
        env.pop("DATABASE_URL", None)
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faulty_aws: FaultyAws, database: Connection,
            slack_sink: SlackSink, prefect_api: None) -> Project:
    from prefect_slack import SlackWebhook

    text = ENVIRONMENTS.format(endpoint=faulty_aws.url)
    text += "".join(STAGING.format(name=name, endpoint=faulty_aws.url) for name in STAGINGS)
    (tmp_path / "environments.toml").write_text(text)
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    monkeypatch.chdir(tmp_path)
    secret = {"username": database.user, "password": CANARY_PASSWORD, "host": database.host,
              "port": database.port, "dbname": database.dbname}
    values = {
        "prod-rel": secret,
        "stage-rel": secret,
        "stage-wrong": {**secret, "password": CANARY_PASSWORD + "-wrong"},
        "stage-unreachable": {**secret, "port": free_port()},
        "stage-plain": {**secret, "password": PLAIN_PASSWORD},
    }
    sm = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=faulty_aws.upstream)
    for name, value in values.items():
        sm.create_secret(Name=f"rds/{name}", SecretString=json.dumps(value))
    boto3.client("rds", region_name="eu-west-1", endpoint_url=faulty_aws.upstream).create_db_instance(
        DBInstanceIdentifier="app-rel", DBInstanceClass="db.t3.micro", Engine="postgres",
        MasterUsername="postgres", MasterUserPassword="not-the-canary-1", AllocatedStorage=20,
    )
    SlackWebhook(url=slack_sink.url).save("slack-rel", overwrite=True, _sync=True)
    return Project(tmp_path, faulty_aws, database, slack_sink)


def run_flow(environment: str = "prod-rel", **parameters: object):
    from flows.production import production
    from flows.staging import staging

    flow = production if environment.startswith("prod") else staging
    return flow(environment=environment, return_state=True, **parameters)


def error_of(state) -> str:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the text is what is checked
        return str(exc)
    raise AssertionError("the run did not fail")


# ---- a password rotated mid-run -------------------------------------------------------------------------


@pytest.fixture
def rotating_role(project: Project) -> Iterator[str]:
    """A role of its own (its password is rotated by the test), owning the test database."""
    role = f"rot_{uuid.uuid4().hex[:8]}"
    with connected(project.database) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'first-password-1'").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(project.database.dbname),
                                                                     sql.Identifier(role)))
    secret = {"username": role, "password": "first-password-1", "host": project.database.host,
              "port": project.database.port, "dbname": project.database.dbname}
    project.secrets().create_secret(Name="rds/stage-rotating", SecretString=json.dumps(secret))
    yield role
    with connected(project.database) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(project.database.dbname),
                                                                     sql.Identifier(project.database.user)))
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


class RotateAfterPlan(logging.Handler):
    """Rotates the password (database first, then the secret's AWSCURRENT) right after the plan was read:
    the run already holds the old password when it reaches the migrate step."""

    def __init__(self, project: Project, role: str, *, update_secret: bool) -> None:
        super().__init__()
        self.project, self.role, self.update_secret, self.rotated = project, role, update_secret, False

    def emit(self, record: logging.LogRecord) -> None:
        if self.rotated or not record.getMessage().startswith("Plan:"):
            return
        self.rotated = True
        self.project.sql(sql.SQL("ALTER ROLE {} PASSWORD 'second-password-2'").format(sql.Identifier(self.role)))
        if self.update_secret:
            current = json.loads(self.project.secrets().get_secret_value(SecretId="rds/stage-rotating")
                                 ["SecretString"])
            self.project.secrets().put_secret_value(  # a new AWSCURRENT version
                SecretId="rds/stage-rotating", SecretString=json.dumps({**current, "password": "second-password-2"}))


@pytest.fixture
def rotation(project: Project, rotating_role: str) -> Iterator[Callable[..., RotateAfterPlan]]:
    handlers: list[RotateAfterPlan] = []

    def install(*, update_secret: bool) -> RotateAfterPlan:
        handler = RotateAfterPlan(project, rotating_role, update_secret=update_secret)
        logging.getLogger("prefect.task_runs").addHandler(handler)
        handlers.append(handler)
        return handler

    yield install
    for handler in handlers:
        logging.getLogger("prefect.task_runs").removeHandler(handler)


def test_a_password_rotated_mid_run_is_read_again_once_and_the_run_succeeds(
    project: Project, rotation, caplog: pytest.LogCaptureFixture
) -> None:
    write_migrations(project.root, USERS)
    handler = rotation(update_secret=True)

    state = run_flow("stage-rotating", git_sha="abcdef1")

    assert handler.rotated and state.is_completed(), error_of(state) if state.is_failed() else ""
    assert project.applied() == ["0001.create-users"]
    assert project.aws.count("GetSecretValue") == 2
    rereads = [r for r in caplog.records if "reading the secret again, once" in r.getMessage()]
    assert len(rereads) == 1 and "28P01" in rereads[0].getMessage()


def test_a_password_still_refused_after_one_reread_fails_the_run_before_anything_is_applied(
    project: Project, rotation
) -> None:
    write_migrations(project.root, USERS)
    rotation(update_secret=False)  # the database moved on; the secret did not

    state = run_flow("stage-rotating", git_sha="abcdef1")

    assert state.is_failed() and project.applied() == []
    assert project.aws.count("GetSecretValue") == 2  # read once more, not again and again
    message = error_of(state)
    assert "password authentication failed" in message and "again after reading secretsmanager:rds/stage-rotating" \
        in message
    assert "FAILED at step migrate" in project.sink.texts()[-1] and "AWSCURRENT" in project.sink.texts()[-1]


# ---- AWS faults -------------------------------------------------------------------------------------------


def test_a_full_snapshot_quota_stops_the_run_before_migrating_and_slack_says_why(project: Project) -> None:
    write_migrations(project.root, USERS)
    project.aws.answer("DescribeAccountAttributes", quota_answer(100, 100))

    state = run_flow(git_sha="abcdef1")

    assert state.is_failed() and project.applied() == [] and project.manual_snapshots() == []
    assert project.aws.count("DescribeAccountAttributes") == 1 and project.aws.count("CreateDBSnapshot") == 0
    message = project.sink.texts()[-1]
    assert "FAILED at step snapshot" in message and "quota exceeded: 100 of 100 manual snapshots" in message
    assert "aws rds delete-db-snapshot" in message and "no migration was applied" in message


def test_an_instance_that_cannot_be_snapshotted_stops_the_run_before_migrating(project: Project) -> None:
    write_migrations(project.root, USERS)
    project.rds().stop_db_instance(DBInstanceIdentifier="app-rel")

    state = run_flow(git_sha="abcdef1")

    assert state.is_failed() and project.applied() == [] and project.manual_snapshots() == []
    message = project.sink.texts()[-1]
    assert "FAILED at step snapshot" in message and "is 'stopped', not 'available'" in message


def test_invalid_instance_state_from_create_snapshot_is_a_snapshot_error() -> None:
    from botocore.stub import Stubber

    from tests.test_snapshot import AVAILABLE_INSTANCE, make_environment

    client = aws_client("rds", AwsSettings(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    with Stubber(client) as stubber:
        stubber.add_response("describe_db_snapshots", {"DBSnapshots": []})
        stubber.add_response("describe_db_instances", AVAILABLE_INSTANCE)
        stubber.add_response("describe_account_attributes", {"AccountQuotas": []})
        stubber.add_client_error("create_db_snapshot", service_error_code="InvalidDBInstanceState",
                                 http_status_code=400)
        with pytest.raises(SnapshotError, match="app-db cannot be snapshotted now .InvalidDBInstanceState.; no "
                                                "snapshot taken"):
            take_snapshot(make_environment({"kind": "rds_instance", "instance_id": "app-db"}),
                          Connection(host="h", port=5432, dbname="d", user="u"), git_sha="abcdef1",
                          flow_run_id=None, trigger="push", rds_client=client)


def test_access_denied_to_the_secret_fails_the_run_at_once_and_slack_says_why(project: Project) -> None:
    write_migrations(project.root, USERS)
    project.aws.fail("GetSecretValue", "AccessDeniedException", json_protocol=True)

    state = run_flow(git_sha="abcdef1")

    assert state.is_failed() and project.applied() == [] and project.manual_snapshots() == []
    assert project.aws.count("GetSecretValue") == 1  # neither botocore nor the task retried it
    message = project.sink.texts()[-1]
    assert "FAILED at step fetch-secret" in message
    assert "secretsmanager:rds/prod-rel in eu-west-1: access denied: the role needs " \
           "secretsmanager:GetSecretValue" in message


@pytest.mark.parametrize(
    ("code", "expected"),
    [("DecryptionFailure", "Secrets Manager cannot decrypt it: the role needs kms:Decrypt"),
     ("ResourceNotFoundException", None)],
)
def test_decryption_failure_and_a_missing_secret_fail_at_once_with_a_clear_message(
    project: Project, code: str, expected: str | None
) -> None:
    environment = load_environment("prod-rel")
    if code == "ResourceNotFoundException":  # the emulator does this one itself
        project.secrets().delete_secret(SecretId="rds/prod-rel", ForceDeleteWithoutRecovery=True)
        expected = "no such secret (check credentials.secret_id and aws.region)"
    else:
        project.aws.fail("GetSecretValue", code, json_protocol=True)
    with pytest.raises(SecretError) as raised:
        fetch_connection(environment, aws_client("secretsmanager", environment.aws))
    assert f"secretsmanager:rds/prod-rel in eu-west-1: {expected}" in str(raised.value)
    assert f"({code})" in str(raised.value) and project.aws.count("GetSecretValue") == 1


def test_throttling_and_5xx_from_secrets_manager_and_rds_are_retried_by_botocore(project: Project) -> None:
    project.aws.fail("GetSecretValue", "ThrottlingException", json_protocol=True)
    project.aws.fail("GetSecretValue", "ServiceUnavailable", status=503, json_protocol=True)
    environment = load_environment("prod-rel")
    secrets, rds = aws_client("secretsmanager", environment.aws), aws_client("rds", environment.aws)
    assert fetch_connection(environment, secrets).password.get_secret_value() == CANARY_PASSWORD
    assert project.aws.count("GetSecretValue") == 3

    project.aws.fail("DescribeDBInstances", "Throttling", json_protocol=False)
    project.aws.fail("DescribeDBInstances", "InternalFailure", status=500, json_protocol=False)
    snapshot = take_snapshot(environment, project.database, git_sha="abcdef1", flow_run_id=None,
                             trigger="test", rds_client=rds)
    assert snapshot.identifier in project.manual_snapshots() and project.aws.count("DescribeDBInstances") == 3


# ---- a dirty database, resolved from the command line -----------------------------------------------------


def test_a_dirty_database_stops_every_run_until_resolved_from_the_command_line(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    write_migrations(project.root, USERS)
    assert run_flow(git_sha="1111111").is_completed()
    project.sql("INSERT INTO users VALUES (1, 'a@example.com'), (2, 'a@example.com')")
    write_migrations(project.root, UNIQUE_EMAIL)

    first = run_flow(git_sha="2222222")  # the unique index fails on the data, after its first statement ran
    assert first.is_failed() and project.applied() == ["0001.create-users"]
    message = project.sink.texts()[-1]
    assert "FAILED at step migrate" in message and "statement 2 of 3" in message and "marked dirty" in message
    assert "rds-migrations resolve --env prod-rel 0002.users-email --mark-not-applied" in message
    snapshots = project.manual_snapshots()

    second = run_flow(git_sha="3333333")  # refused at the plan: no snapshot, no lock, nothing applied
    assert second.is_failed() and project.manual_snapshots() == snapshots
    message = project.sink.texts()[-1]
    assert "FAILED at step rehearse-and-plan" in message and "0002.users-email (non-transactional) is dirty" in message

    from flows.cli import main
    from tasks.engine.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE

    assert main(["resolve", "--env", "prod-rel", "0002.users-email"]) == EXIT_USAGE  # resolved how?
    assert main(["resolve", "--env", "prod-rel"]) == EXIT_FAILED
    explained = capsys.readouterr().out
    assert "2. FAILED: CREATE UNIQUE INDEX CONCURRENTLY" in explained
    assert '[index "users_email_key": INVALID]' in explained

    project.sql("DELETE FROM users WHERE id = 2")  # the operator fixes the data and undoes what ran
    project.sql("DROP INDEX CONCURRENTLY users_email_key")
    project.sql("DROP TABLE email_audit")
    assert main(["resolve", "--env", "prod-rel", "0002.users-email", "--mark-not-applied"]) == EXIT_OK
    assert "pending again" in capsys.readouterr().out

    third = run_flow(git_sha="4444444")
    assert third.is_completed(), error_of(third) if third.is_failed() else ""
    assert project.applied() == ["0001.create-users", "0002.users-email", "0003.create-devices"]


def test_an_invalid_index_in_the_way_is_refused_before_the_snapshot(project: Project) -> None:
    write_migrations(project.root, USERS)
    assert run_flow(git_sha="1111111").is_completed()
    snapshots = project.manual_snapshots()
    project.sql("INSERT INTO users VALUES (1, 'a@example.com'), (2, 'a@example.com')")
    with pytest.raises(Exception, match="could not create unique index"):  # a build that failed by hand
        project.sql("CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email)")
    project.sql("DELETE FROM users WHERE id = 2")
    write_migrations(project.root, {"0002.users-email.sql": (
        "-- transactional: false\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key ON users (email);\n"
    )})

    state = run_flow(git_sha="2222222")

    assert state.is_failed() and project.manual_snapshots() == snapshots
    assert project.applied() == ["0001.create-users"]
    message = project.sink.texts()[-1]
    assert "FAILED at step rehearse-and-plan" in message
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "public"."users_email_key";' in message


# ---- hostile and broken input -----------------------------------------------------------------------------


def test_a_secret_passed_as_a_flow_parameter_is_refused_without_repeating_it(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.exceptions import ParameterBindError

    write_migrations(project.root, USERS)
    with pytest.raises(ParameterBindError) as unknown:  # no parameter may carry a secret: none is accepted
        run_flow("stage-rel", password=CANARY_PASSWORD)
    assert CANARY_PASSWORD not in str(unknown.value)

    url = f"postgresql://app:{CANARY_PASSWORD}@db.internal/app"
    shaped = run_flow("stage-rel", target=url)
    assert "parameter target looks like a credential" in error_of(shaped)

    plain = run_flow("stage-plain", target=PLAIN_PASSWORD)  # passes every allow-list; it is the password
    assert "parameter target contains the database password read from secretsmanager:rds/stage-plain" in \
        error_of(plain)
    assert "rotate the password now" in project.sink.texts()[-1]
    assert project.applied() == []
    texts = [r.getMessage() for r in caplog.records] + project.sink.texts() + [error_of(shaped), error_of(plain)]
    assert not [t for t in texts if CANARY_PASSWORD in t or PLAIN_PASSWORD in t]


@pytest.mark.parametrize("query", ["schema=public;DROP TABLE users", "options=-csearch_path%3Devil",
                                   "application_name=x'%3BDROP"])
def test_a_database_url_with_injected_parameters_is_refused(query: str) -> None:
    with pytest.raises(SecretError) as raised:
        connection_from_url(f"postgresql://app:{quote(CANARY_PASSWORD, safe='')}@db/app?{query}", "env:X")
    assert CANARY_PASSWORD not in str(raised.value) and quote(CANARY_PASSWORD, safe="") not in str(raised.value)


def test_slack_failing_leaves_a_successful_run_succeeded_and_logs_no_url(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    write_migrations(project.root, USERS)
    project.sink.status = 500
    caplog.set_level(logging.DEBUG)

    state = run_flow(git_sha="abcdef1")

    assert state.is_completed() and state.result().outcome == "succeeded"
    assert project.applied() == ["0001.create-users"] and len(project.sink.messages) == 1
    assert "Slack notification failed" in caplog.text and "the outcome is unchanged" in caplog.text
    assert project.sink.url not in caplog.text and "secret-webhook-token" not in caplog.text


# ---- the canary -------------------------------------------------------------------------------------------


def test_the_canary_password_appears_nowhere_on_any_failure_path(
    project: Project, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canary (with @ : / ? # and quotes in it) is the password on every path: a failing migration with
    Slack answering 404, a dirty database, a wrong password, an unreachable host (retried), and the command
    line (its failing-run path is in tests/test_cli.py, whose every call checks the same)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId

    from tasks.validate import rehearse_and_plan

    monkeypatch.setattr(rehearse_and_plan, "retry_delay_seconds", 0)  # the retries still run, without the wait
    caplog.set_level(logging.DEBUG)
    write_migrations(project.root, USERS)
    succeeded = run_flow(git_sha="1111111")  # the canary, with its @, authenticates
    assert succeeded.is_completed()
    project.sql("INSERT INTO users VALUES (1, 'a@example.com'), (2, 'a@example.com')")
    write_migrations(project.root, UNIQUE_EMAIL)
    project.sink.status = 404
    states = [
        run_flow(git_sha="2222222"),  # a failing migration (and a dirty database), Slack 404
        run_flow(git_sha="3333333"),  # refused: dirty
        run_flow("stage-wrong", git_sha="4444444"),  # wrong password, read again once
        run_flow("stage-unreachable", git_sha="5555555"),  # nobody listening, retried
    ]
    assert all(s.is_failed() for s in states)

    def url(password: str, port: int = project.database.port) -> str:
        c = project.database
        return f"postgresql://{c.user}:{quote(password, safe='')}@{c.host}:{port}/{c.dbname}"

    cli = [
        project.cli("resolve", "--env", "prod-rel"),  # the dirty state explained, through Secrets Manager
        project.cli("plan", "--database-url", url(CANARY_PASSWORD + "x")),  # wrong password, in a URL
        project.cli("plan", "--database-url", url(CANARY_PASSWORD, free_port())),  # nobody listening
    ]
    assert [c.returncode for c in cli] == [1] * len(cli), [c.stderr for c in cli]

    seen: list[str] = [r.getMessage() for r in caplog.records]
    seen += [logging.Formatter().formatException(r.exc_info) for r in caplog.records if r.exc_info]
    seen += [json.dumps(m) for m in project.sink.messages]
    seen += [c.stdout + c.stderr for c in cli]
    for state in states:
        seen += [state.message or "", error_of(state)]
        try:
            state.result()
        except Exception as exc:  # noqa: BLE001 - the text is what is checked
            seen.append(repr(exc))
    with get_client(sync_client=True) as client:
        ids = [s.state_details.flow_run_id for s in [succeeded, *states]]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        seen += [log.message for log in logs]
        seen += [client.read_flow_run(i).model_dump_json() for i in ids]
        flows = FlowRunFilter(id={"any_": ids})
        seen += [a.model_dump_json() for a in client.read_artifacts(flow_run_filter=flows)]
        seen += [t.model_dump_json() for t in client.read_task_runs(flow_run_filter=flows)]
    assert len(seen) > 50
    leaks = [text for text in seen if CANARY_PASSWORD in text or quote(CANARY_PASSWORD, safe="") in text]
    assert leaks == []
    joined = "\n".join(seen)
    for path in ("password authentication failed", "reading the secret again, once", "23505", "is dirty",
                 "Connection refused", "Slack notification failed"):
        assert path in joined, f"the {path!r} path did not run"
