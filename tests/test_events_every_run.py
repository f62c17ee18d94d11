"""Every kind of run reports itself: a drift check that could not compare notifies and fails, and every run
(rollback, baseline, drift check, fleet, as well as a migration or a refresh) ends with an
`rds-migrations.run.completed` event labelled with its outcome and kind, read back through the Prefect test
server. The database is a real PostgreSQL, or a closed port where the run must fail; Slack is the sink."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import quote

import pytest

from flows import events
from tests.conftest import CANARY_PASSWORD, SlackSink
from tests.helpers import url_of, write_migrations
from tests.test_observe import events_of

ENVIRONMENTS = """
[environments.database-url]
tier = "staging"
credentials = { kind = "url_env", variable = "DATABASE_URL" }
snapshot = { kind = "none" }
notify = { kind = "slack", webhook_block = "slack-every-run" }

[environments.reachable]
tier = "staging"
credentials = { kind = "url_env", variable = "REACHABLE_URL" }
snapshot = { kind = "none" }
notify = { kind = "slack", webhook_block = "slack-every-run" }
"""
FIRST = {"0001.create-notes.sql": "CREATE TABLE notes (id bigint PRIMARY KEY, body text);\n"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack_sink: SlackSink, prefect_api: None) -> Path:
    """DATABASE_URL at a port nobody listens on (with the canary password in it), migrations in the project."""
    from prefect_slack import SlackWebhook

    (tmp_path / "environments.toml").write_text(ENVIRONMENTS)
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    url = f"postgresql://app:{quote(CANARY_PASSWORD, safe='')}@127.0.0.1:{closed_port()}/app"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("FLEET_DOWN_URL", url)
    monkeypatch.chdir(tmp_path)
    write_migrations(tmp_path, FIRST)
    SlackWebhook(url=slack_sink.url).save("slack-every-run", overwrite=True, _sync=True)
    return tmp_path


def completed(state) -> object:
    """The run's one run.completed event."""
    flow_run_id = state.state_details.flow_run_id
    found = [e for e in events_of(flow_run_id, {events.RUN_COMPLETED}) if e.event == events.RUN_COMPLETED]
    assert len(found) == 1, [e.event for e in found]
    assert CANARY_PASSWORD not in found[0].model_dump_json()
    return found[0]


def test_a_drift_check_that_cannot_reach_its_database_notifies_and_fails(down: Path, slack_sink: SlackSink) -> None:
    from flows.adoption import drift_check

    state = drift_check(environment="database-url", return_state=True)

    assert state.is_failed()
    [message] = slack_sink.texts()
    assert "Drift check FAILED" in message and "`database-url`" in message
    assert "*failed step:* drift-check" in message
    assert "cannot connect to app@127.0.0.1" in message
    assert "run the drift check again" in message and "rds-migrations drift --env database-url" in message
    assert CANARY_PASSWORD not in json.dumps(slack_sink.messages)


def test_rollback_baseline_drift_check_and_fleet_runs_each_emit_run_completed(down: Path) -> None:
    from flows.adoption import baseline, drift_check
    from flows.fleet import migrate_fleet_flow
    from flows.rollback import rollback

    runs = {
        "rollback": rollback(environment="database-url", to="0", git_sha="abc1234", return_state=True),
        "baseline": baseline(environment="database-url", through="0", git_sha="abc1234", return_state=True),
        "drift-check": drift_check(environment="database-url", return_state=True),
        "fleet": migrate_fleet_flow(environment="database-url", url_variables=["FLEET_DOWN_URL"], git_sha="abc1234",
                                    return_state=True),
    }

    for kind, state in runs.items():
        assert state.is_failed(), kind
        event = completed(state)
        assert event.resource.id == "rds-migrations.environment.database-url", kind
        assert event.resource["rds-migrations.outcome"] == "failed", kind
        assert event.resource["rds-migrations.kind"] == kind
        assert event.payload["outcome"] == "failed" and event.payload["kind"] == kind
        assert event.payload["environment"] == "database-url" and event.payload["error"], kind
    assert completed(runs["rollback"]).resource["rds-migrations.git-sha"] == "abc1234"
    fleet = completed(runs["fleet"]).payload
    # It failed before any target ran (its rehearsal on the first target): no target counted, the step named.
    assert fleet["failed_step"] and fleet["counts"] == {} and fleet["target_count"] == 0


def test_a_clean_drift_check_notifies_nobody_and_still_emits_run_completed(
        down: Path, database, slack_sink: SlackSink, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.adoption import drift_check

    monkeypatch.setenv("REACHABLE_URL", url_of(database))

    state = drift_check(environment="reachable", return_state=True)

    assert state.is_completed(), state.message
    assert slack_sink.messages == []
    event = completed(state)
    assert event.resource["rds-migrations.outcome"] == "succeeded"
    assert event.payload["kind"] == "drift-check" and "no drift" in event.payload["facts"]["found"]
