"""What a run shows in Prefect, read back through the Prefect API: its name and its task runs' names, the
table and progress artifacts, the events; the crash hook's report of a run whose process was killed; the
automations `setup-prefect` creates. Real PostgreSQL, the AWS emulator over HTTP, the Slack sink, one
Prefect test server (tests/test_e2e.py does the same through a real worker)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import pytest
from botocore.stub import ANY
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed

from flows import automations, events, observe
from flows.hooks import report_crash
from flows.setup import setup_prefect
from tasks.engine.connection import connected
from tasks.engine.migrations.drift import Difference, DriftReport
from tasks.engine.snapshots.naming import TAG_PREFIX
from tests import test_flows, test_snapshot
from tests.conftest import CANARY_PASSWORD
from tests.helpers import write_migrations
from tests.test_flows import Project, run_production, with_duplicate_users
from tests.test_snapshot import (
    INSTANCE,
    SNAPSHOT_ID,
    db_snapshot,
    make_environment,
    snap,
    stub_describe,
    stub_up_to_create,
)

PROJECT = Path(__file__).parents[1]
# The fixtures these tests share with the flow and snapshot tests: a project with its database, secrets, RDS
# instance and Slack block (test_flows); a stubbed RDS client (test_snapshot).
project = test_flows.project
stubbed = test_snapshot.stubbed


# ---- reading a flow run back through the API ----------------------------------------------------------------


def artifacts_of(flow_run_id) -> dict[str, list]:
    """The flow run's artifacts by key, oldest first."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    by_key: dict[str, list] = {}
    for artifact in sorted(found, key=lambda a: a.created):
        by_key.setdefault(artifact.key, []).append(artifact)
    return by_key


def table(artifact) -> list[dict]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def events_of(flow_run_id, expected: set[str], timeout: float = 30) -> list:
    """The flow run's rds-migrations events, once every name in `expected` has arrived (events are async)."""
    event_filter = EventFilter(event=EventNameFilter(prefix=["rds-migrations."]),
                               related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]))
    resource_filter = EventFilter(event=EventNameFilter(prefix=["rds-migrations."]),
                                  any_resource={"id": [f"prefect.flow-run.{flow_run_id}"]})
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            found = {e.id: e for f in (event_filter, resource_filter) for e in client.read_events(f, limit=50).events}
        if expected <= {e.event for e in found.values()} or time.monotonic() > deadline:
            return sorted(found.values(), key=lambda e: e.occurred)
        time.sleep(0.5)


# ---- a run's name, tables, progress and events ------------------------------------------------------------------


def test_a_run_is_named_and_publishes_tables_progress_and_events_without_the_password(project: Project) -> None:
    with_duplicate_users(project)  # 0001 applied; 0003's backfill will fail on the data: 0002 applied, then 0003

    state = run_production(git_sha="abc1234def")

    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert run.name == "prod-test-abc1234"
    assert {t.name for t in task_runs} >= {"validate", "fetch-secret-prod-test", "rehearse-and-plan-prod-test",
                                           "snapshot-prod-test", "migrate-prod-test", "notify-prod-test"}

    artifacts = artifacts_of(flow_run_id)
    plan = table(artifacts["migration-plan-table-prod-test"][-1])
    assert [(row["order"], row["migration"], row["status"]) for row in plan] == [
        (1, "0002.create-accounts", "pending"), (2, "0003.backfill-accounts", "pending"),
        (3, "0004.create-devices", "pending")]
    assert all(row["transactional"] is True and row["statements"] == 1 for row in plan)
    assert isinstance(table(artifacts["lint-findings-prod-test"][-1]), list)
    applied = table(artifacts["applied-migrations-prod-test"][-1])
    assert [(row["migration"], row["outcome"], row["attempts"], row["lock retries"], row["sqlstate"])
            for row in applied] == [("0002.create-accounts", "applied", 1, 0, None),
                                    ("0003.backfill-accounts", "failed", 1, 0, "23502")]
    assert applied[0]["duration (s)"] >= 0
    migration_progress = artifacts["migration-progress-prod-test"][-1]
    assert migration_progress.type == "progress" and float(migration_progress.data) == pytest.approx(100 / 3)
    assert "1 of 3 migrations applied" in migration_progress.description
    assert "0003.backfill-accounts failed" in migration_progress.description
    snapshot_progress = artifacts["snapshot-progress-prod-test"][-1]
    assert float(snapshot_progress.data) == 100 and "rdsm-prod-test-abc1234" in snapshot_progress.description
    assert {"migration-plan-prod-test", "migration-result-prod-test"} <= set(artifacts)  # the narrative stays

    found = events_of(flow_run_id, {"rds-migrations.migration.applied", "rds-migrations.migration.failed",
                                    "rds-migrations.run.completed"})
    by_name = {e.event: e for e in found}
    applied_event = by_name["rds-migrations.migration.applied"]
    assert applied_event.resource.id == "rds-migrations.migration.prod-test.0002.create-accounts"
    assert applied_event.resource["rds-migrations.environment"] == "prod-test"
    assert applied_event.resource["rds-migrations.git-sha"] == "abc1234def"
    assert applied_event.resource["rds-migrations.migration-id"] == "0002.create-accounts"
    assert {r.id for r in applied_event.related} >= {"rds-migrations.environment.prod-test",
                                                     "rds-migrations.git-sha.abc1234def",
                                                     f"prefect.flow-run.{flow_run_id}"}
    assert applied_event.payload["position"] == 1 and applied_event.payload["count"] == 3
    failed_event = by_name["rds-migrations.migration.failed"]
    assert failed_event.resource["rds-migrations.migration-id"] == "0003.backfill-accounts"
    assert failed_event.payload["sqlstate"] == "23502" and failed_event.payload["transactional"] is True
    completed = by_name["rds-migrations.run.completed"]
    assert completed.resource.id == "rds-migrations.environment.prod-test"
    assert completed.resource["rds-migrations.outcome"] == "failed"
    assert completed.payload["applied"] == ["0002.create-accounts"]
    assert completed.payload["failed_migration"] == "0003.backfill-accounts"
    assert completed.payload["snapshot_id"].startswith("rdsm-prod-test-abc1234")

    published = [a.model_dump_json() for found in artifacts.values() for a in found]
    published += [e.model_dump_json() for e in found]
    assert len(published) > 8 and [text for text in published if CANARY_PASSWORD in text] == []


def test_a_hostile_parameter_never_reaches_the_run_name(project: Project) -> None:
    write_migrations(project.root, {"0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n"})
    state = run_production(git_sha="abc'; DROP TABLE users; --")
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).name == "prod-test-invalid-sha"
    assert observe.short_sha("1a2b3c4d5e6f") == "1a2b3c4" and observe.short_sha("unknown") == "unknown"


def test_a_deployment_run_given_no_sha_is_named_after_the_commit_it_applies(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    write_migrations(project.root, {"0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n"})
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "A"]):
        subprocess.run(["git", "-C", str(project.root), *args], check=True, capture_output=True)
    head = subprocess.run(["git", "-C", str(project.root), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", "production")  # as a deployment's run sees itself

    state = run_production()  # no git_sha: the run applies (and records) the clone's checked-out commit

    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).name == f"prod-test-{head[:7]}"
    assert state.result().git_sha == head


def test_a_progress_artifact_is_written_at_most_once_a_second_and_always_at_the_end(prefect_api) -> None:
    now = [0.0]
    shown: list[float] = []

    @flow
    def progressing() -> None:
        artifact = observe.ProgressArtifact("test-progress-throttle", clock=lambda: now[0])
        for at, percent, final in ((0.0, 10, False), (0.5, 20, False), (1.2, 30, False), (1.3, 40, True)):
            now[0] = at
            artifact.update(percent, f"{percent}%", final=final)
            with get_client(sync_client=True) as client:
                found = client.read_artifacts(artifact_filter=ArtifactFilter(id={"any_": [artifact.artifact_id]}))
            shown.append(float(found[0].data))

    progressing()
    assert shown == [10, 10, 30, 40]  # 20 came too soon after 10; 40 was the last word


def test_the_snapshot_step_is_told_the_percent_progress_until_available(stubbed) -> None:
    client, stubber = stubbed
    stub_up_to_create(stubber)
    stubber.add_response("create_db_snapshot", {"DBSnapshot": db_snapshot("creating", 0)},
                         {"DBSnapshotIdentifier": SNAPSHOT_ID, "DBInstanceIdentifier": "app-db", "Tags": ANY})
    stub_describe(stubber, db_snapshot("creating", 40), db_snapshot("creating", 85), db_snapshot("available", 100))
    told: list[tuple[str, int]] = []

    snap(make_environment(INSTANCE), client, progress=lambda snapshot_id, percent: told.append((snapshot_id, percent)))

    assert told == [(SNAPSHOT_ID, 40), (SNAPSHOT_ID, 85), (SNAPSHOT_ID, 100)]


# ---- the crash hook ---------------------------------------------------------------------------------------------

# Sleeps only on the target database (not on the rehearsal's).
SLEEP_ON_TARGET = "DO $$ BEGIN IF current_database() = '{database}' THEN PERFORM pg_sleep(60); END IF; END $$;\n"
CRASHING = {
    "0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
    "0002.nt.sql": ("-- transactional: false\nCREATE TABLE IF NOT EXISTS nt_a (id bigint PRIMARY KEY);\n"
                    + SLEEP_ON_TARGET + "CREATE TABLE IF NOT EXISTS nt_b (id bigint PRIMARY KEY);\n"),
    "0003.last.sql": "CREATE TABLE last (id bigint PRIMARY KEY);\n",
}
RUN_FLOW = "from flows.production import production; production(environment='prod-test', git_sha='abc1234def')"
ORPHANS = "FROM pg_stat_activity WHERE application_name LIKE 'rds-migrations run %%' AND datname = current_database()"


def run_killed_mid_migration(project: Project) -> str:
    """The production flow in a process of its own, against this Prefect server, `kill -9`ed while it is inside
    the non-transactional 0002; its flow run's id."""
    write_migrations(project.root, {name: text.format(database=project.database.dbname) if "$$" in text else text
                                    for name, text in CRASHING.items()})
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(PROJECT)}
    output = project.root / "run.log"
    with output.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", RUN_FLOW], cwd=project.root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    with connected(project.database, application_name="test-watcher") as watcher:
        deadline = time.monotonic() + 120
        while not (row := watcher.execute(f"SELECT application_name {ORPHANS} AND wait_event = 'PgSleep'")
                   .fetchone()):
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    return row[0].removeprefix("rds-migrations run ")


def end_orphan_session(project: Project) -> None:
    with connected(project.database, application_name="test-watcher") as watcher:
        watcher.execute(f"SELECT pg_terminate_backend(pid) {ORPHANS}")


def test_a_killed_run_is_reported_with_what_the_database_says(project: Project, caplog) -> None:
    from flows.production import production

    caplog.set_level(logging.DEBUG)
    flow_run_id = run_killed_mid_migration(project)
    try:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
        # What the worker does once the process is gone: the run is Crashed, then the hook runs.
        report_crash(production, flow_run, Crashed(message="Process exited with status code: -9."))
    finally:
        end_orphan_session(project)

    message = project.sink.texts()[-1]
    snapshot = [s for s in project.manual_snapshots() if "abc1234" in s]
    assert len(snapshot) == 1
    tags = {t["Key"]: t["Value"] for t in project.rds().describe_db_snapshots(
        DBSnapshotIdentifier=snapshot[0])["DBSnapshots"][0]["TagList"]}
    assert tags[f"{TAG_PREFIX}flow-run-id"] == flow_run_id
    for expected in ("FAILED at step migrate (run crashed)", "`prod-test`", "`abc1234`", "*Trigger:* github",
                     "*Applied (1):* `0001.create-users`", "*Failed migration:* `0002.nt`",
                     "`0002.nt`, `0003.last`", f"*Snapshot:* `{snapshot[0]}`",
                     f"rds-migrations restore --env prod-test --snapshot-id {snapshot[0]}",
                     "status code: -9", "0002.nt (non-transactional) is dirty", "during statement 2 of 3",
                     "rds-migrations resolve --env prod-test 0002.nt --mark-not-applied"):
        assert expected in message, expected
    ended = [e for e in events_of(flow_run_id, {"rds-migrations.run.crashed"})
             if e.event == "rds-migrations.run.crashed"]
    assert len(ended) == 1 and ended[0].resource.id == f"prefect.flow-run.{flow_run_id}"
    assert ended[0].payload["notified"] is True and ended[0].payload["step"] == "migrate"
    seen = [json.dumps(m) for m in project.sink.messages] + [e.model_dump_json() for e in ended]
    seen += [r.getMessage() for r in caplog.records]
    with get_client(sync_client=True) as client:  # the run's own lines and the hook's, as the API keeps them
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    seen += [log.message for log in logs]
    assert any("Running hook" in text or "The crashed run was reported" in text for text in seen)
    assert [text for text in seen if CANARY_PASSWORD in text] == []


def test_the_hook_never_raises_and_says_what_it_could_not_read(project: Project) -> None:
    from flows.production import production

    with get_client(sync_client=True) as client:
        unknown = client.create_flow_run(production, parameters={"environment": "no-such-env", "git_sha": "abc1234"})
        wrong_password = client.create_flow_run(production, parameters={"environment": "stage-test"})
    report_crash(production, unknown, Crashed(message="gone"))  # nowhere to notify: logged, no exception
    assert project.sink.messages == []
    report_crash(production, wrong_password, Crashed(message="Process exited with status code: 137."))

    message = project.sink.texts()[-1]
    assert "FAILED at step unknown (run crashed)" in message and "`stage-test`" in message
    assert "Not known: what the database says (it could not be read: " in message
    assert "What is still pending is not known here" in message
    assert CANARY_PASSWORD not in message and "wrong-password" not in message
    ended = events_of(unknown.id, {"rds-migrations.run.crashed"})
    assert [e.payload["notified"] for e in ended if e.event == "rds-migrations.run.crashed"] == [False]


# ---- the automations ----------------------------------------------------------------------------------------------


def test_setup_prefect_creates_each_automation_once_and_the_server_takes_them(prefect_api, slack_sink) -> None:
    from prefect_slack import SlackWebhook

    assert "Slack block 'alerts-missing' not found" in " ".join(setup_prefect([], alerts_block="alerts-missing"))
    SlackWebhook(url=slack_sink.url).save("alerts-test", overwrite=True, _sync=True)
    first = setup_prefect([], alerts_block="alerts-test", crash_report_seconds=60, pending_seconds=600)
    again = setup_prefect([], alerts_block="alerts-test", crash_report_seconds=60, pending_seconds=600)

    names = [a.name for a in automations.definitions(None)] + ["rds-migrations: crashed and not reported",
                                                                "rds-migrations: pending too long"]
    assert len(set(names)) == 3
    assert all(f"automation {name!r} exists (updated)" in again for name in names)
    assert not any("created" in line for line in again) and first != again
    with get_client(sync_client=True) as client:
        block_id = client.read_block_document_by_name("alerts-test", "slack-incoming-webhook").id
        found = {name: client.read_automations_by_name(name) for name in names}
    assert all(len(found[name]) == 1 and found[name][0].enabled for name in names)
    crashed = found["rds-migrations: crashed and not reported"][0]
    assert crashed.trigger.posture == "Proactive" and crashed.trigger.after == {"prefect.flow-run.Crashed"}
    assert crashed.trigger.expect == {"rds-migrations.run.crashed"} and crashed.trigger.within.total_seconds() == 60
    assert crashed.actions[0].block_document_id == block_id
    pending = found["rds-migrations: pending too long"][0]
    assert pending.trigger.after == {"prefect.flow-run.Pending"}
    assert "prefect.flow-run.Running" in pending.trigger.expect
    assert found["rds-migrations: heartbeats stopped"][0].actions[0].type == "change-flow-run-state"
    assert "prefect.flow-run.TimedOut" in found["rds-migrations: heartbeats stopped"][0].trigger.expect


def test_the_automations_wait_for_every_final_state_prefect_names() -> None:
    """A run stopped at its budget ends `TimedOut` (type FAILED), not `Failed`: "heartbeats stopped" must take it
    as the end, or ~600 s later it tries to mark a finished run Crashed (refused: a spurious "action failed")."""
    alerting = {a.name: a.trigger for a in automations.definitions(uuid4())}
    final = {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.TimedOut",
             "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"}
    assert final <= alerting["rds-migrations: heartbeats stopped"].expect
    assert final | {"prefect.flow-run.Running"} <= alerting["rds-migrations: pending too long"].expect


def test_an_automation_message_repeats_no_parameter_only_the_checked_run_name_and_link() -> None:
    """"Pending too long" fires before the flow checks its parameters: a secret pasted into git_sha, or a Slack
    `<!channel>`, must not reach Slack through the template."""
    from prefect.server.events.actions import SendNotification
    from prefect.server.schemas.core import Flow, FlowRun
    from prefect.server.utilities.user_templates import render_user_template_sync
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    SendNotification._register_filters_if_needed()  # what the server does before it renders an action
    run = FlowRun(id=uuid4(), flow_id=uuid4(), name="production-abc1234",
                  parameters={"environment": "production <!channel>", "git_sha": CANARY_PASSWORD})
    context = {"flow": Flow(name="migrate-production"), "flow_run": run}
    sent = [action for automation in automations.definitions(uuid4()) for action in automation.actions
            if action.type == "send-notification"]
    assert len(sent) == 2
    with temporary_settings({PREFECT_UI_URL: "https://prefect.example"}):
        shown = [render_user_template_sync(text, context) for action in sent for text in (action.subject, action.body)]
    bodies = shown[1::2]
    assert all("migrate-production run production-abc1234" in body for body in bodies)
    assert all(f"Run: https://prefect.example/runs/flow-run/{run.id}" in body for body in bodies)
    assert [text for text in shown if CANARY_PASSWORD in text or "<!channel>" in text] == []


def test_drift_found_is_an_event_on_the_environment_naming_each_difference(prefect_api) -> None:
    report = DriftReport(differences=(Difference("column", "public.users.nickname", "unexpected"),
                                      Difference("index", "public.users_email_idx", "missing")), compared=12)

    @flow
    def checking() -> str:
        events.drift_found("drift-env", "1a2b3c4d", report)
        events.drift_found("drift-env", "1a2b3c4d", DriftReport(differences=(), compared=12))  # no drift: no event
        return current_flow_run.id

    flow_run_id = checking()
    found = [e for e in events_of(flow_run_id, {events.DRIFT_FOUND}) if e.event == events.DRIFT_FOUND]
    assert len(found) == 1
    assert found[0].resource.id == "rds-migrations.environment.drift-env"
    assert found[0].resource["rds-migrations.git-sha"] == "1a2b3c4d"
    assert found[0].payload["counts"] == {"missing": 1, "unexpected": 1, "changed": 0}
    assert found[0].payload["differences"] == [
        "column public.users.nickname: not made by any migration (added by hand?)",
        "index public.users_email_idx: missing (dropped by hand?)"]


def test_the_drift_check_flow_emits_drift_found(project: Project) -> None:
    from flows.adoption import drift_check

    write_migrations(project.root, test_flows.GOOD)
    assert run_production(git_sha="abc1234").is_completed()
    with connected(project.database) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN nickname text")

    state = drift_check(environment="prod-test", return_state=True)

    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    found = [e for e in events_of(flow_run_id, {events.DRIFT_FOUND}) if e.event == events.DRIFT_FOUND]
    assert len(found) == 1 and found[0].resource.id == "rds-migrations.environment.prod-test"
    assert found[0].payload["differences"] == [
        "column public.users.nickname: not made by any migration (added by hand?)"]
    assert CANARY_PASSWORD not in found[0].model_dump_json()


# ---- the run budget ---------------------------------------------------------------------------------------------

BUDGET_ENVIRONMENT = """
[environments.budget-test]
tier = "staging"
aws = {{ region = "eu-west-1", endpoint_url = "{endpoint}" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/prod-test" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "slack", webhook_block = "slack-test" }}
rehearsal = {{ kind = "none" }}
policy = {{ rehearsal_required = false, run_budget_seconds = 4 }}
"""


def test_a_run_over_its_budget_stops_itself_reports_and_fails_naming_the_budget(project: Project) -> None:
    """The flow stops itself at `policy.run_budget_seconds` (the GitHub check's deadline is that plus a start
    margin): the migration that was running is rolled back by the server, the team is told what the database
    says, and the run ends Failed naming the budget."""
    from flows.staging import staging

    with (project.root / "environments.toml").open("a") as out:
        out.write(BUDGET_ENVIRONMENT.format(endpoint=project.endpoint))
    write_migrations(project.root, {
        "0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
        "0002.slow.sql": "CREATE TABLE slow (id bigint);\nSELECT pg_sleep(60);\n",
    })
    state = staging(environment="budget-test", git_sha="abc1234", return_state=True)

    assert state.is_failed() and "longer than its budget of 4 s" in (state.message or "")
    assert f"prefect.flow-run.{state.name}" in automations.TERMINAL  # TimedOut: the automations take it as the end
    assert project.applied() == ["0001.create-users"]  # 0002 was interrupted and rolled back
    with connected(project.database) as conn:
        assert conn.execute("SELECT to_regclass('slow')").fetchone()[0] is None
    message = project.sink.texts()[-1]
    assert "was stopped at its time budget" in message and "`budget-test`" in message
    assert "*Applied (1):* `0001.create-users`" in message and CANARY_PASSWORD not in message
    # It stopped itself, so it completed as every run does, failed, besides the timed-out report.
    flow_run_id = state.state_details.flow_run_id
    found = events_of(flow_run_id, {events.RUN_COMPLETED, events.RUN_ENDED["timed-out"]})
    [done] = [e for e in found if e.event == events.RUN_COMPLETED]
    assert done.resource.id == "rds-migrations.environment.budget-test"
    assert done.resource["rds-migrations.outcome"] == "failed" and done.payload["kind"] == "migration"
    assert "budget of 4 s" in done.payload["error"] and done.payload["failed_step"] == "migrate"
