"""A rollback as a run (tasks/engine/runs/rollback.py) on a real PostgreSQL: the drift check it makes before
undoing is not announced as a drift check's run, and a rollback refused under its lock (another run applied a
migration after the plan was shown) offers no restore, having changed nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tasks.engine.connection import Connection
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.rollback import RollbackRefused
from tasks.engine.runs.rollback import roll_back_environment
from tasks.engine.runs.steps import DirectSteps
from tests.helpers import POLICY, applied_ids, url_of, write_migrations
from tests.test_rollback import WITH_ROLLBACKS

ENVIRONMENTS = """
[environments.rolled]
tier = "staging"
credentials = { kind = "url_env", variable = "DATABASE_URL" }
snapshot = { kind = "pg_dump", directory = "dumps" }
notify = { kind = "console" }
policy = { snapshot_required = false, drift = "warn" }
"""


@pytest.fixture
def project(tmp_path: Path, database: Connection, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every migration of WITH_ROLLBACKS in the project; 0001 and 0002 applied."""
    (tmp_path / "environments.toml").write_text(ENVIRONMENTS)
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    monkeypatch.chdir(tmp_path)
    write_migrations(tmp_path, WITH_ROLLBACKS)
    apply_pending(database, read_catalog(tmp_path / "migrations", tmp_path), POLICY, target="0002.accounts")
    return tmp_path


def test_a_rollbacks_drift_check_emits_only_the_rollbacks_run_completed(
        project: Path, database: Connection, prefect_api: None) -> None:
    """policy.drift = warn: the rollback checks drift before it undoes; a clean check is no drift-check run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows import events
    from flows.rollback import rollback
    from tests.test_observe import events_of

    state = rollback(environment="rolled", to="1", git_sha="abc1234", return_state=True)

    assert state.is_completed(), state.message
    assert applied_ids(database) == ["0001.users"]
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert "drift-check-rolled" in {t.name for t in tasks}  # the check ran, and found nothing
    completions = [e for e in events_of(flow_run_id, {events.RUN_COMPLETED}) if e.event == events.RUN_COMPLETED]
    assert [e.payload["kind"] for e in completions] == ["rollback"], [e.payload for e in completions]


class AnotherRunDuringTheSnapshot(DirectSteps):
    """The rollback's steps as the command line runs them; while its snapshot is taken (after its plan was shown,
    before it takes the migration lock), another run applies what is pending."""

    def __init__(self, database: Connection, project: Path) -> None:
        super().__init__()
        self.database, self.project = database, project

    def snapshot(self, *args: Any, **kwargs: Any) -> Any:
        apply_pending(self.database, read_catalog(self.project / "migrations", self.project), POLICY)
        return super().snapshot(*args, **kwargs)


def test_a_rollback_refused_under_its_lock_offers_no_restore(
        project: Path, database: Connection, caplog: pytest.LogCaptureFixture) -> None:
    """The plan said to undo 0002; 0003 was applied before the lock: refused, nothing undone, so restoring the
    snapshot it took would only undo the other run's 0003."""
    caplog.set_level(logging.INFO, logger="rds_migrations")

    with pytest.raises(RollbackRefused, match="the history changed after the plan was shown"):
        roll_back_environment("rolled", AnotherRunDuringTheSnapshot(database, project), to="1", git_sha="abc1234",
                              project_root=project)

    assert applied_ids(database) == ["0001.users", "0002.accounts", "0003.devices"]
    said = caplog.text
    assert "Rollback FAILED" in said and "snapshot:" in said, said[-3000:]
    assert "rds-migrations restore" not in said and "restore-snapshot" not in said, said[-3000:]


def test_the_crash_hook_reads_what_a_rollback_will_undo_from_its_table_not_from_its_text(
        project: Path, database: Connection, prefect_api: None) -> None:
    """The rollback flow (a dry run: nothing undone) publishes what it will undo as a table beside its plan's text;
    the crash hook reads the ids from the table, so no wording of the text (here: no text left at all) changes
    them. It parsed the text's numbered lines: without them, it did not know what the rollback was to undo."""
    from prefect.client.orchestration import get_client

    from flows.hooks import planned_undo
    from flows.rollback import rollback
    from tests.test_observe import artifacts_of, table

    state = rollback(environment="rolled", to="0", git_sha="abc1234", dry_run=True, return_state=True)

    assert state.is_completed(), state.message
    assert applied_ids(database) == ["0001.users", "0002.accounts"]
    flow_run_id = state.state_details.flow_run_id
    artifacts = artifacts_of(flow_run_id)
    with get_client(sync_client=True) as client:
        for text in artifacts["rollback-plan-rolled"]:  # the plan as people read it: whatever it says, not read
            client.delete_artifact(text.id)
        assert planned_undo(client, flow_run_id, "rolled") == ("0002.accounts", "0001.users")
    [undo] = artifacts["rollback-undo-rolled"]
    assert [(row["order"], row["migration"], row["transactional"]) for row in table(undo)] == [
        (1, "0002.accounts", True), (2, "0001.users", True)]
