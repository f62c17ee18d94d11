"""The staging refresh: the local kind against a real PostgreSQL (pg_dump → pg_restore into a new database,
masking, rename swap), the flow under Prefect (refresh, then migrate staging to head, then Slack), and the
RDS instance / Aurora calls over real HTTP to the AWS emulator, with botocore's Stubber for a restore that
fails (the emulator cannot fail one)."""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest
from botocore.stub import ANY, Stubber
from pydantic import SecretStr

from tasks.engine.aws import aws_client
from tasks.engine.connection import Connection, connected
from tasks.engine.credentials import fetch_connection
from tasks.engine.embedded import LocalServer
from tasks.engine.environments import AwsSettings, Environment, Policy, load_environment, load_environments
from tasks.engine.errors import ConfigError, RefreshError
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.snapshots.dumps import stored_dumps
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.refresh import newest_snapshot, plan_refresh, refresh_from
from tasks.engine.snapshots.swap import SwapPlan, SwapResult
from tasks.engine.snapshots.take import take_snapshot
from tests.conftest import CANARY_PASSWORD, SlackSink

PROJECT = Path(__file__).resolve().parents[1]
POLICY = Policy(lock_timeout_ms=2000, statement_timeout_ms=60_000, migration_lock_wait_seconds=30)
T1 = datetime(2026, 11, 24, 2, 30, tzinfo=UTC)
STAMP1 = "20261124t023000"
LOG = logging.getLogger("test_refresh")
TABLES = ("users", "devices", "phone_otp_codes", "accounts", "categories", "transactions", "revoked_auth_tokens",
          "_yoyo_migration")


def no_sleep(seconds: float) -> None:
    pass


# ---- the local kind: two databases on the test server --------------------------------------------------------

ENVIRONMENTS = """
[environments.prod-local]
tier = "production"
credentials = {{ kind = "url_env", variable = "RDSM_TEST_PRODUCTION_URL" }}
snapshot = {{ kind = "pg_dump", directory = "{snapshots}" }}
notify = {{ kind = "console" }}
policy = {{ snapshot_required = true, lint_blocks_on = "warning" }}

[environments.stage-local]
tier = "staging"
credentials = {{ kind = "url_env", variable = "RDSM_TEST_STAGING_URL" }}
snapshot = {{ kind = "pg_dump", directory = "{snapshots}" }}
notify = {{ kind = "slack", webhook_block = "slack-refresh-test" }}
refresh = {{ source_environment = "prod-local" }}

[environments.stage-local-budget]
tier = "staging"
credentials = {{ kind = "url_env", variable = "RDSM_TEST_STAGING_URL" }}
snapshot = {{ kind = "pg_dump", directory = "{snapshots}" }}
notify = {{ kind = "slack", webhook_block = "slack-refresh-test" }}
refresh = {{ source_environment = "prod-local" }}
policy = {{ run_budget_seconds = 6 }}

[environments.stage-local-keep]
tier = "staging"
credentials = {{ kind = "url_env", variable = "RDSM_TEST_STAGING_URL" }}
snapshot = {{ kind = "pg_dump", directory = "{snapshots}" }}
notify = {{ kind = "console" }}
refresh = {{ source_environment = "prod-local", keep_old = true }}
"""

PRODUCTION_DATA = """
INSERT INTO users (phone_e164, display_name, email) VALUES
    ('+447700900001', 'Alice Real', 'alice@real.example'),
    ('+447700900002', 'Bob Real', 'bob@real.example'),
    ('+447700900003', NULL, NULL);
INSERT INTO devices (user_id, platform, name, push_token)
    SELECT id, 'ios', display_name || '''s iPhone', 'apns-token-' || id FROM users WHERE display_name IS NOT NULL;
INSERT INTO phone_otp_codes (phone_e164, user_id, purpose, code_hash, expires_at)
    SELECT phone_e164, id, 'sign_in', sha256('123456'::bytea), now() + interval '5 minutes' FROM users;
INSERT INTO accounts (user_id, name, kind, currency)
    SELECT id, display_name || ' joint with Sam', 'credit_card', 'GBP' FROM users WHERE display_name IS NOT NULL;
INSERT INTO categories (user_id, name, kind)
    SELECT id, 'Gifts for Sam', 'expense' FROM users WHERE display_name IS NOT NULL;
INSERT INTO transactions (account_id, category_id, amount_minor, occurred_at, description)
    SELECT a.id, c.id, -2500, now(), 'Dinner with Alice Real' FROM accounts a JOIN categories c USING (user_id);
INSERT INTO revoked_auth_tokens (token_id, user_id, reason, expires_at)
    SELECT gen_random_uuid(), id, 'sign_out', now() + interval '1 day' FROM users;
"""


def url(connection: Connection) -> str:
    password = quote(connection.password.get_secret_value(), safe="")
    return f"postgresql://{connection.user}:{password}@{connection.host}:{connection.port}/{connection.dbname}"


def rows(connection: Connection, query: str) -> list[tuple]:
    with connected(connection) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def fingerprint(connection: Connection) -> dict[str, str]:
    """Every row of every table, hashed: equal fingerprints mean nothing was changed."""
    return {table: rows(connection, f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                                    f"FROM {table} t")[0][0] for table in TABLES}


def refresh_environment(environment: Environment, source: Environment, credentials: Connection, *,
                        rds_client: object = None, project_root: Path | None = None, now: datetime | None = None,
                        mask: object = None, log: logging.Logger = LOG, sleep: object = time.sleep) -> SwapResult:
    """The refresh's engine steps in the order tasks/engine/runs/refresh.py runs them: plan, snapshot, refresh."""
    replacement = plan_refresh(environment, source, credentials, rds_client=rds_client, project_root=project_root,
                               now=now, log=log, sleep=sleep)  # type: ignore[arg-type]
    assert environment.refresh is not None
    if environment.refresh.use_fresh_snapshot:
        dump_from = fetch_connection(source) if source.snapshot.kind == "pg_dump" else credentials
        snapshot = take_snapshot(source, dump_from, git_sha="refresh", flow_run_id=None, trigger="schedule", now=now,
                                 rds_client=rds_client, log=log, sleep=sleep)  # type: ignore[arg-type]
    else:
        snapshot = newest_snapshot(source, rds_client)
    return refresh_from(replacement, snapshot, credentials, mask=mask, log=log, sleep=sleep)  # type: ignore[arg-type]


@dataclass
class Local:
    server: LocalServer
    tag: str
    production: Connection
    staging: Connection
    snapshots: Path

    def environment(self, name: str) -> Environment:
        return load_environment(name)

    def databases(self) -> list[str]:
        return [r[0] for r in rows(self.server.connection(), f"SELECT datname FROM pg_database WHERE datname LIKE "
                                                             f"'rdsm\\_{self.tag}\\_%' ORDER BY 1")]

    def dump_production(self, when: datetime) -> Snapshot:
        return take_snapshot(self.environment("prod-local"), self.production, git_sha="local", flow_run_id=None,
                             trigger="test", now=when, log=LOG)

    def refresh(self, environment: str = "stage-local", **overrides: object):
        arguments = {"project_root": PROJECT, "now": T1, "log": LOG} | overrides
        env = self.environment(environment)
        return refresh_environment(env, self.environment("prod-local"), fetch_connection(env),
                                   **arguments)  # type: ignore[arg-type]


@pytest.fixture
def local(pg_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Local]:
    """Production at 0007 with personal data and a dump of it; a stale staging database at 0007."""
    tag = uuid.uuid4().hex[:6]
    production = pg_server.ensure_database(f"rdsm_{tag}_production")
    staging = pg_server.ensure_database(f"rdsm_{tag}_staging")
    monkeypatch.setenv("RDSM_TEST_PRODUCTION_URL", url(production))
    monkeypatch.setenv("RDSM_TEST_STAGING_URL", url(staging))
    (tmp_path / "environments.toml").write_text(ENVIRONMENTS.format(snapshots=tmp_path / "snapshots"))
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    catalog = read_catalog(PROJECT / "migrations", PROJECT)
    for connection in (production, staging):
        apply_pending(connection, catalog, POLICY, target="0007")
    with connected(production) as conn:
        conn.execute(PRODUCTION_DATA)  # type: ignore[arg-type]
    with connected(staging) as conn:
        conn.execute("INSERT INTO users (phone_e164, display_name) VALUES ('+15550000000', 'Stale staging')")
    local = Local(pg_server, tag, production, staging, tmp_path / "snapshots")
    local.dump_production(T1 - timedelta(hours=1))
    yield local
    for name in local.databases():
        pg_server.drop_database(name)


def assert_masked_copy_of_production(staging: Connection) -> None:
    users = rows(staging, "SELECT id, phone_e164, email, display_name FROM users ORDER BY id")
    assert [u[1:] for u in users] == [
        (f"+1555{users[0][0]:011d}", f"user{users[0][0]}@example.invalid", f"User {users[0][0]}"),
        (f"+1555{users[1][0]:011d}", f"user{users[1][0]}@example.invalid", f"User {users[1][0]}"),
        (f"+1555{users[2][0]:011d}", None, None),
    ]
    text = json.dumps(rows(staging, "SELECT d.*, a.*, c.*, t.* FROM devices d JOIN accounts a USING (user_id) "
                                    "JOIN categories c USING (user_id) JOIN transactions t ON t.account_id = a.id"),
                      default=str)
    for personal in ("Alice", "Bob", "Sam", "apns-token", "real.example", "+4477"):
        assert personal not in text
    assert rows(staging, "SELECT count(*), count(push_token) FROM devices") == [(2, 0)]
    assert rows(staging, "SELECT count(*) FROM phone_otp_codes") == [(0,)]
    assert rows(staging, "SELECT count(*) FROM revoked_auth_tokens") == [(0,)]
    # Referential integrity and what staging tests with are kept: amounts, built-in categories.
    assert rows(staging, "SELECT count(*), sum(amount_minor) FROM transactions") == [(2, -5000)]
    assert rows(staging, "SELECT count(*) FROM categories WHERE user_id IS NULL") == [(7,)]


def test_local_refresh_replaces_staging_with_masked_production_and_never_touches_production(local: Local) -> None:
    before = fingerprint(local.production)

    result = local.refresh()

    staging = local.staging
    assert_masked_copy_of_production(staging)
    assert rows(staging, "SELECT count(*) FROM users WHERE display_name = 'Stale staging'") == [(0,)]
    assert rows(staging, "SELECT count(*) FROM _yoyo_migration") == [(7,)]  # production's history came along
    assert fingerprint(local.production) == before
    assert (result.live, result.new, result.old, result.old_deleted) == (
        staging.dbname, f"{staging.dbname}_new_{STAMP1}", f"{staging.dbname}_old_{STAMP1}", True)
    assert result.masking_files == ("0001.users.sql", "0002.devices-and-codes.sql", "0003.money.sql",
                                    "9999.check-masked.sql")
    assert result.snapshot.identifier.startswith("rdsm-prod-local-local-") and result.snapshot.reused
    assert local.databases() == sorted([local.production.dbname, staging.dbname])


def test_a_second_refresh_uses_the_newest_dump_and_keep_old_keeps_the_replaced_copy(local: Local) -> None:
    local.refresh()
    with connected(local.production) as conn:
        conn.execute("INSERT INTO users (phone_e164, email) VALUES ('+447700900004', 'dora@real.example')")
    newest = local.dump_production(T1 + timedelta(minutes=30))
    with connected(local.staging) as conn:  # someone testing on staging: a session stays open
        conn.execute("INSERT INTO users (phone_e164) VALUES ('+15559999999')")
        session = local.staging.connect()

    result = local.refresh("stage-local-keep", now=T1 + timedelta(hours=1))

    assert result.snapshot.identifier == newest.identifier and not result.old_deleted
    assert rows(local.staging, "SELECT count(*), count(*) FILTER (WHERE email LIKE '%@example.invalid') "
                               "FROM users") == [(4, 3)]
    old = local.staging.with_database(result.old)
    assert rows(old, "SELECT count(*) FROM users WHERE phone_e164 = '+15559999999'") == [(1,)]  # open again
    assert session.closed or session.broken or _ended(session)
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname, result.old])


def _ended(session) -> bool:
    try:
        session.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - the swap ended this session
        return True
    return False


@pytest.mark.parametrize("files,expected", [
    ({"0001.bad.sql": "UPDATE users SET no_such_column = 1;"}, "masking file 0001.bad.sql failed"),
    ({"0001.only-emails.sql": "UPDATE users SET email = 'user' || id || '@example.invalid';",
      "9999.check.sql": (PROJECT / "deployments/masking/9999.check-masked.sql").read_text()},
     "masking check failed: users holds unmasked phone numbers"),
])
def test_a_masking_failure_leaves_the_old_staging_untouched(local: Local, tmp_path: Path, files: dict,
                                                            expected: str) -> None:
    masking = tmp_path / "deployments" / "masking"
    masking.mkdir(parents=True)
    for name, text in files.items():
        (masking / name).write_text(text)
    before = fingerprint(local.staging)

    with pytest.raises(RefreshError) as raised:
        local.refresh(project_root=tmp_path)

    message = str(raised.value)
    assert expected in message
    assert f"{local.staging.dbname} is untouched" in message and "was deleted" in message
    assert "Alice" not in message and "+4477" not in message
    assert fingerprint(local.staging) == before
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname])


def test_a_failed_pg_restore_leaves_the_old_staging_untouched(local: Local) -> None:
    broken = local.dump_production(T1 - timedelta(minutes=1))
    Path(broken.location).write_bytes(b"PGDMP not really a dump")
    before = fingerprint(local.staging)

    with pytest.raises(RefreshError, match=r"pg_restore into .* failed .* is untouched"):
        local.refresh()

    assert fingerprint(local.staging) == before
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname])
    assert CANARY_PASSWORD not in str(broken)


def test_no_dump_or_no_masking_sql_is_refused_before_any_change(local: Local, tmp_path: Path) -> None:
    before = fingerprint(local.staging)
    with pytest.raises(RefreshError, match="no masking SQL"):
        local.refresh(project_root=tmp_path)
    for dump in local.snapshots.glob("*"):
        dump.unlink()
    with pytest.raises(RefreshError, match="no available dump of environment prod-local"):
        local.refresh()
    assert fingerprint(local.staging) == before
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname])


def test_a_fresh_dump_is_taken_when_configured(local: Local, monkeypatch: pytest.MonkeyPatch) -> None:
    for dump in local.snapshots.glob("*"):
        dump.unlink()
    env = local.environment("stage-local")
    env = env.model_copy(update={"refresh": env.refresh.model_copy(update={"use_fresh_snapshot": True})})

    result = refresh_environment(env, local.environment("prod-local"), fetch_connection(env), project_root=PROJECT,
                                 now=T1, log=LOG)

    assert not result.snapshot.reused and result.snapshot.identifier.startswith("rdsm-prod-local-refresh-")
    assert_masked_copy_of_production(local.staging)


def test_a_local_target_named_after_production_is_refused(local: Local, monkeypatch: pytest.MonkeyPatch) -> None:
    named_after = local.server.ensure_database(f"{local.production.dbname}_staging")
    monkeypatch.setenv("RDSM_TEST_STAGING_URL", url(named_after))
    try:
        with pytest.raises(RefreshError, match="is, or is named after, the source"):
            local.refresh()
        assert rows(named_after, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    finally:
        local.server.drop_database(named_after.dbname)


# ---- the flow under Prefect: refresh, migrate staging to head, notify ----------------------------------------


@pytest.fixture
def flow_project(local: Local, prefect_api: None, slack_sink: SlackSink, monkeypatch: pytest.MonkeyPatch) -> Local:
    from prefect_slack import SlackWebhook

    SlackWebhook(url=slack_sink.url).save("slack-refresh-test", overwrite=True, _sync=True)
    monkeypatch.chdir(PROJECT)  # migrations/ and deployments/masking/ as shipped
    return local


def test_refresh_flow_masks_then_migrates_staging_to_head_twice(flow_project: Local, slack_sink: SlackSink) -> None:
    from flows.refresh import refresh_staging

    local = flow_project
    before = fingerprint(local.production)
    head = len(read_catalog(PROJECT / "migrations", PROJECT).ids)

    for run in (1, 2):
        state = refresh_staging(environment="stage-local", git_sha="abc1234", trigger="manual", return_state=True)

        assert state.is_completed(), state.message
        summary = state.result()
        assert summary.outcome == "succeeded" and summary.result.old_deleted
        assert len(summary.applied) == head - 7  # the pending migrations, on the masked copy
        assert rows(local.staging, "SELECT count(*) FROM _yoyo_migration") == [(head,)]
        assert rows(local.staging, "SELECT count(*) FROM information_schema.columns "
                                   "WHERE table_name = 'users' AND column_name = 'locale'") == [(1,)]
        assert_masked_copy_of_production(local.staging)
        # ONE message per refresh, saying what was refreshed and what was migrated (not the migration's own too)
        assert len(slack_sink.messages) == run
        message = slack_sink.texts()[-1]
        assert "Staging refresh SUCCEEDED" in message and "0003.money.sql" in message
        assert "*Migrated:* " + ", ".join(f"`{i}`" for i in summary.applied) in message
    assert fingerprint(local.production) == before  # never migrated, never written
    assert rows(local.production, "SELECT count(*) FROM _yoyo_migration") == [(7,)]
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname])


def test_a_failed_refresh_notifies_naming_the_deployment_and_parameters(
    flow_project: Local, slack_sink: SlackSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.refresh import refresh_staging

    local = flow_project
    for dump in local.snapshots.glob("*"):
        dump.unlink()
    before = fingerprint(local.staging)
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", "staging-refresh")

    state = refresh_staging(environment="stage-local", git_sha="abc1234", trigger="schedule", return_state=True)

    assert state.is_failed()
    assert fingerprint(local.staging) == before
    [message] = [t for t in slack_sink.texts() if "Staging refresh" in t]
    assert "Staging refresh FAILED at step snapshot" in message
    assert "refresh-staging/staging-refresh" in message
    assert "environment=`stage-local`" in message and "git_sha=`abc1234`" in message
    assert "trigger=`schedule`" in message
    assert ("prefect deployment run refresh-staging/staging-refresh --param environment=stage-local "
            "--param git_sha=abc1234 --param trigger=schedule") in message
    assert "no available dump of environment prod-local" in message
    assert CANARY_PASSWORD not in json.dumps(slack_sink.messages)


def test_a_migration_failing_after_the_refresh_is_one_message_with_a_refresh_s_way_out(
    flow_project: Local, slack_sink: SlackSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped migrations and a new one that passes its rehearsal (no rows there) and fails on the masked
    staging's rows: one message names the refresh, what it migrated and the failure; no restore is offered
    (the way back is the refresh, named as a command; its migrate step took no dump of the copy just made;
    production was never touched)."""
    from flows.refresh import refresh_staging

    local = flow_project
    project = tmp_path / "project"
    shutil.copytree(PROJECT / "migrations", project / "migrations")
    shutil.copytree(PROJECT / "deployments" / "masking", project / "deployments" / "masking")
    (project / "migrations" / "0011.divide-by-rows.sql").write_text(
        "UPDATE users SET display_name = (1 / (id - id))::text;\n")
    monkeypatch.chdir(project)
    before = fingerprint(local.production)

    state = refresh_staging(environment="stage-local", git_sha="abc1234", trigger="manual", return_state=True)

    assert state.is_failed()
    [message] = slack_sink.texts()
    assert "Staging refresh FAILED at step migrate" in message and "0003.money.sql" in message
    assert "0011.divide-by-rows" in message and "22012" in message
    assert "*Migrated:* `0008.index-transactions-category`, `0009.add-users-locale`, " \
           "`0010.validate-users-locale`" in message
    assert "not migrated to head" in message and "nothing needs restoring" in message
    assert "rds-migrations restore" not in message
    assert "or the refresh again: rds-migrations trigger refresh-staging/staging-refresh --env stage-local" in message
    assert [s for s, record in stored_dumps(local.snapshots) if record.get("environment") == "stage-local"] == []
    assert fingerprint(local.production) == before
    assert CANARY_PASSWORD not in json.dumps(slack_sink.messages)


def test_a_refresh_over_its_budget_stops_itself_and_fails_naming_the_budget(
    flow_project: Local, slack_sink: SlackSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh had no budget: a migration that never ends kept the refresh (and the GitHub check following it)
    going until the worker died. It stops itself at its budget, the waits of its restore and swap (none for a
    dump) plus the migration's (`policy.run_budget_seconds` here), and the team is told."""
    from flows.refresh import refresh_staging

    project = tmp_path / "project"
    shutil.copytree(PROJECT / "migrations", project / "migrations")
    shutil.copytree(PROJECT / "deployments" / "masking", project / "deployments" / "masking")
    (project / "migrations" / "0011.slow.sql").write_text("SELECT pg_sleep(20);\n")
    monkeypatch.chdir(project)

    state = refresh_staging(environment="stage-local-budget", git_sha="abc1234", trigger="manual", return_state=True)

    assert state.is_failed() and "longer than its budget of 6 s" in (state.message or ""), state.message
    assert any("was stopped at its time budget" in text for text in slack_sink.texts()), slack_sink.texts()
    assert CANARY_PASSWORD not in json.dumps(slack_sink.messages)


# ---- configuration -------------------------------------------------------------------------------------------


def test_the_shipped_environments_refresh_staging_and_local() -> None:
    environments = load_environments(PROJECT / "deployments" / "environments.toml")
    assert environments["staging"].refresh.source_environment == "production"
    assert environments["local"].refresh.source_environment == "local-production"
    assert environments["production"].refresh is None


BASE = {"name": "stage", "tier": "staging", "credentials": {"kind": "embedded", "database": "app_staging"},
        "snapshot": {"kind": "pg_dump"}, "notify": {"kind": "console"}}


@pytest.mark.parametrize("changes,error", [
    ({"tier": "production"}, "only a tier 'staging' environment can be refreshed"),
    ({"refresh": {"source_environment": "stage"}}, "cannot be refreshed from itself"),
    ({"refresh": {"source_environment": "prod", "identifier_pattern": "(unclosed"}}, "not a valid regular"),
    ({"refresh": {"source_environment": "prod", "masking_dir": "/etc"}}, "relative path inside the project"),
    ({"refresh": {"source_environment": "prod", "masking_dir": "../x"}}, "relative path inside the project"),
    ({"credentials": {"kind": "embedded", "database": "app_production"}}, "does not match it"),
    ({"snapshot": {"kind": "none"}}, "says nothing to refresh"),
    ({"refresh": {"source_environment": "prod", "keep_olds": True}},
     r"keep_olds: not a setting here \(did you mean keep_old\?\)"),
])
def test_bad_refresh_settings_are_refused(tmp_path: Path, changes: dict, error: str) -> None:
    settings = {**BASE, "refresh": {"source_environment": "prod"}, **changes}
    path = tmp_path / "environments.toml"
    lines = []
    for key, value in settings.items():
        if key != "name":
            lines.append(f"{key} = {_toml(value)}")
    path.write_text(f"[environments.{settings['name']}]\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=error):
        load_environments(path)


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


@pytest.mark.parametrize("name,action,problem", [
    ("app-staging", "create", "it is the live name"),
    ("app-staging", "delete", "it is the live name"),
    ("app-production", "rename", "named after, the source"),
    ("app-production-staging", "delete", "named after, the source"),
    ("app-prod-old", "delete", "does not match the staging pattern"),
    ("app--staging", "create", "not a valid name"),
    ("app-staging-", "create", "not a valid name"),
    ("a" * 60 + "staging", "create", "not a valid name"),
])
def test_the_guard_refuses_names_it_must_never_touch(name: str, action: str, problem: str) -> None:
    plan = SwapPlan(kind="rds_instance", live="app-staging", new="app-staging-new-1", old="app-staging-old-1",
                    stamp="1", keep_old=False, pattern=r"^[a-z0-9_-]*staging[a-z0-9_-]*$",
                    protected="app-production")
    with pytest.raises(RefreshError, match=problem):
        plan.check(name, action)
    assert plan.check("app-staging-old-1", "delete") == "app-staging-old-1"


# ---- RDS against the AWS emulator ----------------------------------------------------------------------------

STAGING_PASSWORD = "staging-master-PW-7c1e"
STAGING_CREDENTIALS = Connection(host="app-staging.example", port=5432, dbname="app", user="app",
                                 password=SecretStr(STAGING_PASSWORD), source="test")
NEW, OLD = f"app-staging-new-{STAMP1}", f"app-staging-old-{STAMP1}"


@dataclass
class Aws:
    endpoint: str
    rds: object
    security_group: str
    calls: list[tuple[str, dict]]

    def writes(self) -> list[tuple[str, dict]]:
        return [(op, params) for op, params in self.calls if not op.startswith("Describe")]

    def instances(self) -> list[str]:
        return sorted(i["DBInstanceIdentifier"] for i in self.rds.describe_db_instances()["DBInstances"])


def recording(client, calls: list) -> None:
    """Every API call the code makes on the real client, with its parameters, in order."""
    def record(params: dict, model, **kwargs: object) -> None:
        calls.append((model.name, dict(params)))

    client.meta.events.register("before-parameter-build.rds.*", record)


@pytest.fixture
def aws(aws_endpoint: str) -> Aws:
    ec2 = boto3.client("ec2", region_name="eu-west-1", endpoint_url=aws_endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24", AvailabilityZone=f"eu-west-1{z}")
               ["Subnet"]["SubnetId"] for n, z in ((1, "a"), (2, "b"))]
    group = ec2.create_security_group(GroupName="staging-db", Description="staging", VpcId=vpc)["GroupId"]
    rds = aws_client("rds", AwsSettings(region="eu-west-1", endpoint_url=aws_endpoint))
    rds.create_db_subnet_group(DBSubnetGroupName="staging-subnets", DBSubnetGroupDescription="s", SubnetIds=subnets)
    rds.create_db_parameter_group(DBParameterGroupName="staging-pg15", DBParameterGroupFamily="postgres15",
                                  Description="staging")
    rds.create_db_instance(DBInstanceIdentifier="app-production", DBInstanceClass="db.r6g.large", Engine="postgres",
                           MasterUsername="app", MasterUserPassword="production-PW-1", AllocatedStorage=100)
    rds.create_db_instance(DBInstanceIdentifier="app-staging", DBInstanceClass="db.t3.micro", Engine="postgres",
                           MasterUsername="app", MasterUserPassword="old-staging-PW", AllocatedStorage=20,
                           DBSubnetGroupName="staging-subnets", VpcSecurityGroupIds=[group],
                           DBParameterGroupName="staging-pg15")
    for snapshot in ("rdsm-production-aaaaaaa-20261123t010000", "rdsm-production-bbbbbbb-20261124t010000"):
        rds.create_db_snapshot(DBSnapshotIdentifier=snapshot, DBInstanceIdentifier="app-production")
    calls: list[tuple[str, dict]] = []
    recording(rds, calls)
    return Aws(aws_endpoint, rds, group, calls)


def rds_environments(endpoint: str | None, *, staging: dict | None = None, refresh: dict | None = None,
                     production: dict | None = None) -> tuple[Environment, Environment]:
    aws = {"region": "eu-west-1", "endpoint_url": endpoint}
    source = Environment.model_validate({
        "name": "production", "tier": "production", "aws": aws, "notify": {"kind": "console"},
        "credentials": {"kind": "secrets_manager", "secret_id": "rds/app-production"},
        "snapshot": production or {"kind": "rds_instance", "instance_id": "app-production"}})
    target = Environment.model_validate({
        "name": "staging", "tier": "staging", "aws": aws, "notify": {"kind": "console"},
        "credentials": {"kind": "secrets_manager", "secret_id": "rds/app-staging"},
        "snapshot": staging or {"kind": "rds_instance", "instance_id": "app-staging"},
        "refresh": {"source_environment": "production", **(refresh or {})}})
    return target, source


def recording_mask(calls: list):
    def mask(connection: Connection, files: list[Path]) -> None:
        calls.append(("mask", {"host": connection.host, "user": connection.user, "files": len(files),
                               "password": connection.password.get_secret_value()}))
    return mask


def rds_refresh(aws: Aws, target: Environment, source: Environment, **overrides: object):
    arguments = {"project_root": PROJECT, "now": T1, "rds_client": aws.rds, "mask": recording_mask(aws.calls),
                 "log": LOG, "sleep": no_sleep} | overrides
    return refresh_environment(target, source, STAGING_CREDENTIALS, **arguments)  # type: ignore[arg-type]


def test_rds_refresh_makes_its_calls_in_order_with_staging_settings(aws: Aws, caplog) -> None:
    """The new copy takes staging's settings and tags, not production's nor RDS's defaults (a copy came back
    single-AZ, without IAM authentication and without the team's tags); the replaced copy is marked."""
    [live] = aws.rds.describe_db_instances(DBInstanceIdentifier="app-staging")["DBInstances"]
    aws.rds.modify_db_instance(DBInstanceIdentifier="app-staging", MultiAZ=True, EnableIAMDatabaseAuthentication=True,
                               CopyTagsToSnapshot=True, ApplyImmediately=True)
    aws.rds.add_tags_to_resource(ResourceName=live["DBInstanceArn"], Tags=[{"Key": "team", "Value": "payments"}])
    aws.calls.clear()
    caplog.set_level(logging.DEBUG)
    result = rds_refresh(aws, *rds_environments(aws.endpoint))

    assert aws.writes() == [
        ("RestoreDBInstanceFromDBSnapshot", {
            "DBInstanceIdentifier": NEW, "DBSnapshotIdentifier": "rdsm-production-bbbbbbb-20261124t010000",
            "DBInstanceClass": "db.t3.micro", "DBSubnetGroupName": "staging-subnets",
            "VpcSecurityGroupIds": [aws.security_group], "DBParameterGroupName": "staging-pg15", "Port": 5432,
            "MultiAZ": True, "EnableIAMDatabaseAuthentication": True,
            "CopyTagsToSnapshot": True, "Tags": [
                {"Key": "team", "Value": "payments"},
                {"Key": "rds-migrations:managed-by", "Value": "rds-migrations"},
                {"Key": "rds-migrations:refreshed-from", "Value": "production"}]}),
        ("ModifyDBInstance", {"DBInstanceIdentifier": NEW, "MasterUserPassword": STAGING_PASSWORD,
                              "ApplyImmediately": True}),
        ("mask", {"host": f"{NEW}.aaaaaaaaaa.eu-west-1.rds.amazonaws.com", "user": "app", "files": 4,
                  "password": STAGING_PASSWORD}),
        ("ModifyDBInstance", {"DBInstanceIdentifier": "app-staging", "NewDBInstanceIdentifier": OLD,
                              "ApplyImmediately": True}),
        ("ModifyDBInstance", {"DBInstanceIdentifier": NEW, "NewDBInstanceIdentifier": "app-staging",
                              "ApplyImmediately": True}),
        ("AddTagsToResource", {"ResourceName": live["DBInstanceArn"].replace("app-staging", OLD),
                               "Tags": [{"Key": "rds-migrations:replaced-by", "Value": "app-staging"}]}),
        ("DeleteDBInstance", {"DBInstanceIdentifier": OLD, "SkipFinalSnapshot": True,
                              "DeleteAutomatedBackups": True}),
    ]
    assert aws.instances() == ["app-production", "app-staging"]
    [staging] = aws.rds.describe_db_instances(DBInstanceIdentifier="app-staging")["DBInstances"]
    assert {"Key": "rds-migrations:refreshed-from", "Value": "production"} in staging["TagList"]
    assert result.snapshot.identifier == "rdsm-production-bbbbbbb-20261124t010000" and result.old_deleted
    ours = [r for r in caplog.records if not r.name.startswith(("moto", "werkzeug"))]
    assert any(r.name.startswith("botocore") for r in ours)  # botocore did log at DEBUG ...
    assert [r.getMessage() for r in ours if STAGING_PASSWORD in r.getMessage()] == []  # ... but not the password


def test_a_deletion_protected_staging_stays_protected_and_its_replaced_copy_is_still_deleted(aws: Aws) -> None:
    """The new copy takes the protection with the live name; the replaced copy keeps it through its rename, so
    it is lifted there before the delete (AWS refuses to delete a protected instance: a whole staging instance
    would have been left running every night)."""
    aws.rds.modify_db_instance(DBInstanceIdentifier="app-staging", DeletionProtection=True, ApplyImmediately=True)

    result = rds_refresh(aws, *rds_environments(aws.endpoint))

    assert result.old_deleted and aws.instances() == ["app-production", "app-staging"]
    [staging] = aws.rds.describe_db_instances(DBInstanceIdentifier="app-staging")["DBInstances"]
    assert staging["DeletionProtection"]
    assert ("ModifyDBInstance", {"DBInstanceIdentifier": OLD, "DeletionProtection": False,
                                 "ApplyImmediately": True}) in aws.writes()


def test_the_newest_snapshot_may_be_an_automated_one(aws: Aws) -> None:
    for snapshot in aws.rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]:
        aws.rds.delete_db_snapshot(DBSnapshotIdentifier=snapshot["DBSnapshotIdentifier"])
    result = rds_refresh(aws, *rds_environments(aws.endpoint))
    assert result.snapshot.identifier.startswith("rds:app-production-")


def test_keep_old_and_a_fresh_snapshot(aws: Aws) -> None:
    target, source = rds_environments(aws.endpoint, refresh={"keep_old": True, "use_fresh_snapshot": True})
    result = rds_refresh(aws, target, source)

    writes = [op for op, _ in aws.writes()]
    assert writes[0] == "CreateDBSnapshot" and "DeleteDBInstance" not in writes
    assert result.snapshot.identifier == f"rdsm-production-refresh-{STAMP1}" and not result.snapshot.reused
    assert aws.instances() == ["app-production", "app-staging", OLD]


@pytest.mark.parametrize("staging,refresh", [
    pytest.param({"kind": "rds_instance", "instance_id": "app-production-staging"}, {}, id="named-after-production"),
    pytest.param({"kind": "rds_instance", "instance_id": "app-production"}, {"identifier_pattern": ".*"},
                 id="production-itself-with-a-catch-all-pattern"),
])
def test_a_target_matching_production_is_refused_before_any_call(aws: Aws, staging: dict, refresh: dict) -> None:
    aws.rds.create_db_instance(DBInstanceIdentifier="app-production-staging", DBInstanceClass="db.t3.micro",
                               Engine="postgres", MasterUsername="app", MasterUserPassword="x" * 12,
                               AllocatedStorage=20)
    aws.calls.clear()

    with pytest.raises(RefreshError, match="is, or is named after, the source 'app-production'"):
        rds_refresh(aws, *rds_environments(aws.endpoint, staging=staging, refresh=refresh))

    assert aws.calls == []
    assert aws.instances() == ["app-production", "app-production-staging", "app-staging"]


def test_a_target_that_does_not_look_like_staging_is_refused_when_loaded() -> None:
    with pytest.raises(ValueError, match="does not match it"):
        rds_environments(None, staging={"kind": "rds_instance", "instance_id": "app-production"})


def test_a_master_user_mismatch_is_refused_before_any_write(aws: Aws) -> None:
    credentials = STAGING_CREDENTIALS.model_copy(update={"user": "migrator"})
    with pytest.raises(RefreshError, match="'migrator', but the master user of app-staging is 'app'"):
        refresh_environment(*rds_environments(aws.endpoint), credentials, project_root=PROJECT, now=T1,
                            rds_client=aws.rds, log=LOG, sleep=no_sleep)
    assert aws.writes() == []


def test_a_masking_failure_deletes_only_the_new_instance(aws: Aws) -> None:
    def failing_mask(connection: Connection, files: list[Path]) -> None:
        raise RefreshError("masking file 0001.users.sql failed: UndefinedColumn (SQLSTATE 42703)")

    with pytest.raises(RefreshError, match="app-staging is untouched; the half-created DB instance .* deleted"):
        rds_refresh(aws, *rds_environments(aws.endpoint), mask=failing_mask)

    assert [(op, params["DBInstanceIdentifier"]) for op, params in aws.writes()] == [
        ("RestoreDBInstanceFromDBSnapshot", NEW), ("ModifyDBInstance", NEW), ("DeleteDBInstance", NEW)]
    assert aws.instances() == ["app-production", "app-staging"]


def staging_description(status: str = "available") -> dict:
    return {"DBInstanceIdentifier": "app-staging", "DBInstanceStatus": status, "DBInstanceClass": "db.t3.micro",
            "MasterUsername": "app", "DBSubnetGroup": {"DBSubnetGroupName": "staging-subnets"},
            "VpcSecurityGroups": [{"VpcSecurityGroupId": "sg-1"}],
            "DBParameterGroups": [{"DBParameterGroupName": "staging-pg15"}]}


@pytest.mark.parametrize("failed_state", ["incompatible-restore", "failed"])
def test_a_failed_restore_deletes_only_the_half_created_instance(failed_state: str) -> None:
    client = aws_client("rds", AwsSettings(region="eu-west-1", endpoint_url="http://127.0.0.1:9"))
    snapshot = {"DBSnapshotIdentifier": "rdsm-production-bbbbbbb-20261124t010000", "Status": "available",
                "SnapshotType": "manual", "DBInstanceIdentifier": "app-production", "SnapshotCreateTime": T1}
    with Stubber(client) as stub:
        stub.add_response("describe_db_instances", {"DBInstances": [staging_description()]},
                          {"DBInstanceIdentifier": "app-staging"})
        for name in (NEW, OLD):
            stub.add_client_error("describe_db_instances", "DBInstanceNotFound", http_status_code=404,
                                  expected_params={"DBInstanceIdentifier": name})
        stub.add_response("describe_db_snapshots", {"DBSnapshots": [snapshot]},
                          {"DBInstanceIdentifier": "app-production"})
        stub.add_response("restore_db_instance_from_db_snapshot", {"DBInstance": {"DBInstanceIdentifier": NEW}}, {
            "DBInstanceIdentifier": NEW, "DBSnapshotIdentifier": snapshot["DBSnapshotIdentifier"],
            "DBInstanceClass": "db.t3.micro", "DBSubnetGroupName": "staging-subnets",
            "VpcSecurityGroupIds": ["sg-1"], "DBParameterGroupName": "staging-pg15", "Tags": ANY})
        for status in ("creating", failed_state):  # it appears, then the waiter sees it fail
            stub.add_response("describe_db_instances", {"DBInstances": [
                {"DBInstanceIdentifier": NEW, "DBInstanceStatus": status}]}, {"DBInstanceIdentifier": NEW})
        stub.add_response("describe_db_instances", {"DBInstances": [  # not deletion-protected: deleted as it is
            {"DBInstanceIdentifier": NEW, "DBInstanceStatus": failed_state}]}, {"DBInstanceIdentifier": NEW})
        stub.add_response("delete_db_instance", {"DBInstance": {"DBInstanceIdentifier": NEW}},
                          {"DBInstanceIdentifier": NEW, "SkipFinalSnapshot": True, "DeleteAutomatedBackups": True})
        masked: list = []

        with pytest.raises(RefreshError) as raised:
            refresh_environment(*rds_environments(None), STAGING_CREDENTIALS, project_root=PROJECT, now=T1,
                                rds_client=client, mask=recording_mask(masked), log=LOG, sleep=no_sleep)

        stub.assert_no_pending_responses()  # and no other call was made: the Stubber refuses unplanned ones
    message = str(raised.value)
    assert f"its status became {failed_state!r}; app-staging is untouched" in message
    assert f"the half-created DB instance {NEW} was deleted" in message
    assert masked == []


# ---- Aurora against the AWS emulator -------------------------------------------------------------------------


def test_aurora_refresh_restores_a_cluster_adds_a_writer_and_swaps_cluster_names(aws: Aws) -> None:
    rds = aws.rds
    rds.create_db_cluster_parameter_group(DBClusterParameterGroupName="staging-apg15", Description="s",
                                          DBParameterGroupFamily="aurora-postgresql15")
    rds.create_db_cluster(DBClusterIdentifier="app-production", Engine="aurora-postgresql", MasterUsername="app",
                          MasterUserPassword="production-PW-1")
    rds.create_db_cluster(DBClusterIdentifier="app-staging", Engine="aurora-postgresql", EngineVersion="15.4",
                          MasterUsername="app", MasterUserPassword="old-staging-PW",
                          DBSubnetGroupName="staging-subnets", VpcSecurityGroupIds=[aws.security_group],
                          DBClusterParameterGroupName="staging-apg15")
    rds.create_db_instance(DBInstanceIdentifier="app-staging-writer", DBClusterIdentifier="app-staging",
                           Engine="aurora-postgresql", DBInstanceClass="db.r6g.large")
    rds.create_db_cluster_snapshot(DBClusterSnapshotIdentifier="rdsm-production-ccccccc-20261124t010000",
                                   DBClusterIdentifier="app-production")
    aws.calls.clear()
    cluster = {"kind": "aurora_cluster", "cluster_id": "app-staging"}

    rds_refresh(aws, *rds_environments(aws.endpoint, staging=cluster,
                                       production={"kind": "aurora_cluster", "cluster_id": "app-production"}))

    writes = [(op, params) for op, params in aws.writes() if op != "DeleteDBInstance"]
    assert writes == [
        ("RestoreDBClusterFromSnapshot", {
            "DBClusterIdentifier": NEW, "SnapshotIdentifier": "rdsm-production-ccccccc-20261124t010000",
            "Engine": "aurora-postgresql", "EngineVersion": "15.4", "DBSubnetGroupName": "staging-subnets",
            "VpcSecurityGroupIds": [aws.security_group], "DBClusterParameterGroupName": "staging-apg15",
            "Port": 5432, "EnableIAMDatabaseAuthentication": False, "CopyTagsToSnapshot": False, "Tags": ANY}),
        ("CreateDBInstance", {"DBInstanceIdentifier": f"app-staging-writer-{STAMP1}", "DBClusterIdentifier": NEW,
                              "DBInstanceClass": "db.r6g.large", "Engine": "aurora-postgresql", "Tags": ANY}),
        ("ModifyDBCluster", {"DBClusterIdentifier": NEW, "MasterUserPassword": STAGING_PASSWORD,
                             "ApplyImmediately": True}),
        ("mask", {"host": ANY, "user": "app", "files": 4, "password": STAGING_PASSWORD}),
        ("ModifyDBCluster", {"DBClusterIdentifier": "app-staging", "NewDBClusterIdentifier": OLD,
                             "ApplyImmediately": True}),
        ("ModifyDBCluster", {"DBClusterIdentifier": NEW, "NewDBClusterIdentifier": "app-staging",
                             "ApplyImmediately": True}),
        ("AddTagsToResource", {"ResourceName": ANY, "Tags": [{"Key": "rds-migrations:replaced-by",
                                                              "Value": "app-staging"}]}),
        ("DeleteDBCluster", {"DBClusterIdentifier": OLD, "SkipFinalSnapshot": True}),
    ]
    # Only staging's instances are ever deleted (the emulator loses track of members across a rename).
    deleted = [params["DBInstanceIdentifier"] for op, params in aws.writes() if op == "DeleteDBInstance"]
    assert all(name.startswith("app-staging") for name in deleted)
    clusters = sorted(c["DBClusterIdentifier"] for c in rds.describe_db_clusters()["DBClusters"])
    assert clusters == ["app-production", "app-staging"]


def test_a_refused_parameter_is_never_repeated_in_a_message() -> None:
    from tasks.engine.environments import ENVIRONMENT_NAME
    from tasks.engine.git import GIT_SHA_PARAMETER as GIT_SHA
    from tasks.engine.messages import shown_parameters

    shown = shown_parameters({"git_sha": "postgresql://app:hunter2@db/app", "environment": "staging"},
                             {"git_sha": GIT_SHA, "environment": ENVIRONMENT_NAME})
    assert shown == (("git_sha", "<refused: 31 characters, not repeated>"), ("environment", "staging"))
