"""An error that is not ours (a bug, a library's or the machine's error) is named by its type in what a run
tells people (its notification, its artifacts, its run.completed event): its text can carry anything, so it is
left to the run's log. Ours (RdsMigrationsError) are written for people and said in full. Provoked for real: a
file where the pg_dump snapshot's directory is expected (FileExistsError at the snapshot step, its text the path);
the canary is in that path. (An unreadable migration file, which this test once used, is now a problem that
validation names: tests/test_validate.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.engine.connection import Connection
from tests.conftest import SlackSink
from tests.helpers import url_of, write_migrations
from tests.test_events_every_run import completed
from tests.test_observe import artifacts_of, table

CANARY = "canary-5e1f0a"
UNEXPECTED = "(an unexpected error: the run's log has its details)"
ENVIRONMENTS = f"""
[environments.unexpected]
tier = "staging"
credentials = {{ kind = "url_env", variable = "DATABASE_URL" }}
snapshot = {{ kind = "pg_dump", directory = "dumps-{CANARY}" }}
rehearsal = {{ kind = "none" }}
notify = {{ kind = "slack", webhook_block = "slack-unexpected" }}
policy = {{ snapshot_required = false, rehearsal_required = false }}
"""
FIRST = {"0001.create-notes.sql": "CREATE TABLE notes (id bigint PRIMARY KEY, body text);\n"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack_sink: SlackSink, prefect_api: None,
            database: Connection) -> Path:
    from prefect_slack import SlackWebhook

    (tmp_path / "environments.toml").write_text(ENVIRONMENTS)
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    monkeypatch.setenv("FLEET_URL", url_of(database))
    monkeypatch.chdir(tmp_path)
    write_migrations(tmp_path, FIRST)
    (tmp_path / f"dumps-{CANARY}").write_text("a file where the dump directory should be\n")
    SlackWebhook(url=slack_sink.url).save("slack-unexpected", overwrite=True, _sync=True)
    return tmp_path


def applied_with_its_rollback_file(project: Path, database: Connection) -> None:
    """0001 applied and given a rollback file: a rollback to 0 has something to undo, so it takes its snapshot."""
    from tasks.engine.migrations.apply import apply_pending
    from tasks.engine.migrations.catalog import read_catalog
    from tests.helpers import POLICY

    write_migrations(project, {"0001.create-notes.rollback.sql": "DROP TABLE notes;\n"})
    apply_pending(database, read_catalog(project / "migrations", project), POLICY)


def run(kind: str) -> object:
    from flows.fleet import migrate_fleet_flow
    from flows.rollback import rollback
    from flows.staging import staging

    if kind == "migration":
        return staging(environment="unexpected", git_sha="abc1234", return_state=True)
    if kind == "rollback":
        return rollback(environment="unexpected", to="0", git_sha="abc1234", return_state=True)
    return migrate_fleet_flow(environment="unexpected", url_variables=["FLEET_URL"], git_sha="abc1234",
                              return_state=True)


@pytest.mark.parametrize("kind", ["migration", "rollback"])  # a fleet target: the test below
def test_an_unexpected_error_is_named_by_its_type_in_the_message_and_the_event(
        project: Path, slack_sink: SlackSink, database: Connection, kind: str) -> None:
    if kind == "rollback":
        applied_with_its_rollback_file(project, database)

    state = run(kind)  # each fails at its snapshot step: the dump directory is a file

    assert state.is_failed(), kind
    [message] = slack_sink.texts()
    assert f"FileExistsError {UNEXPECTED}" in message and CANARY not in message, message
    event = completed(state)
    assert event.payload["kind"] == kind and event.payload["error"].endswith(f"FileExistsError {UNEXPECTED}")
    assert CANARY not in event.model_dump_json()
    if kind == "migration":
        [result] = artifacts_of(state.state_details.flow_run_id)["migration-result-unexpected"]
        assert f"FileExistsError {UNEXPECTED}" in result.data and CANARY not in result.data, result.data


def test_a_fleet_targets_unexpected_error_is_named_by_its_type_in_the_message_and_the_table(
        project: Path, slack_sink: SlackSink) -> None:
    state = run("fleet")  # the target fails at its snapshot: its dump directory is a file

    assert state.is_failed()
    [message] = slack_sink.texts()
    assert f"FileExistsError {UNEXPECTED}" in message and CANARY not in message, message
    flow_run_id = state.state_details.flow_run_id
    [rows] = [table(artifact) for artifact in artifacts_of(flow_run_id)["fleet-targets-unexpected"]]
    assert [(row["outcome"], row["error"]) for row in rows] == [("failed", f"FileExistsError {UNEXPECTED}")], rows
    assert CANARY not in json.dumps(rows)
    assert CANARY not in completed(state).model_dump_json()
