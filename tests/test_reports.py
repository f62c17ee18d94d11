"""Crash, cancel, Ctrl-C and failure reports that tell the truth: a snapshot is named (with how to restore it)
only when the run took or reused it, a dirty mark is never said to be rolled back, what is pending is "not
known" rather than "none" when the run stopped before its plan, a snapshot still being created is named as
such. Real PostgreSQL, real pg_dump snapshots, the real command line; the RDS API answered by botocore's
Stubber where only the wait matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.environments import load_environments
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.report import ValidationFailed
from tasks.engine.migrations.results import MigrationError
from tasks.engine.migrations.rollback import RollbackError, roll_back_to
from tasks.engine.migrations.rollback_plan import RollbackPlan, plan_rollback
from tasks.engine.runs.crash import EndedRun, could_have_reused, crash_summary, known_state, undo_listed
from tasks.engine.runs.migration import migrate_environment
from tasks.engine.runs.steps import DirectSteps
from tasks.engine.snapshots.take import SnapshotNotReady, take_snapshot
from tests.helpers import (
    POLICY,
    PROJECT,
    applied_ids,
    cli,
    ctrl_c_once_sleeping,
    dirty_state,
    url_of,
    write_migrations,
)
from tests.test_snapshot import AVAILABLE_INSTANCE, TEST_LOG, stubbed  # noqa: F401 - a fixture

SHA = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"
ENVIRONMENTS = """
[environments.mine]
tier = "staging"
aws = {{ region = "eu-west-1", endpoint_url = "http://127.0.0.1:9" }}
credentials = {{ kind = "url_env", variable = "DATABASE_URL" }}
snapshot = {snapshot}
notify = {{ kind = "console" }}
rehearsal = {{ kind = "target_server" }}
policy = {{ snapshot_required = false, lint_blocks_on = "error", lock_timeout_ms = 2000 }}
"""


def environments_file(tmp_path: Path, snapshot: str) -> Path:
    path = tmp_path / "environments.toml"
    path.write_text(ENVIRONMENTS.format(snapshot=snapshot), encoding="utf-8")
    return path


def dumped(tmp_path: Path) -> Path:
    """An environment `mine` on DATABASE_URL, snapshotted by pg_dump into tmp_path/snapshots."""
    return environments_file(tmp_path, f'{{ kind = "pg_dump", directory = "{tmp_path / "snapshots"}" }}')


def crashed(step: str | None, reached_snapshot: bool | None, *, flow_name: str = "migrate-staging",
            planned: tuple[str, ...] | None = None) -> EndedRun:
    return EndedRun(ending="cancelled", reason="cancelled by jane", flow_name=flow_name, flow_run_id="run-2",
                    parameters={"environment": "mine", "git_sha": SHA}, step=step, reached_snapshot=reached_snapshot,
                    planned=planned)


def report(environment: Any, database: Connection, run: EndedRun) -> str:
    known = known_state(environment, database, run.flow_run_id, SHA, could_reuse=could_have_reused(run))
    return crash_summary(run, environment, known).console_text()


# ---- finding 1: a snapshot the run never took ------------------------------------------------------------------


def test_a_run_stopped_before_its_snapshot_step_names_no_snapshot_of_its_commit(tmp_path: Path,
                                                                                database: Connection) -> None:
    """A run of the same commit took a snapshot minutes ago; this one is cancelled while waiting for approval
    (after rehearse-and-plan). Restoring that snapshot would undo what was applied since: it is not named."""
    environment = load_environments(dumped(tmp_path))["mine"]
    taken = take_snapshot(environment, database, git_sha=SHA, flow_run_id="run-1", trigger="push",
                          now=datetime.now(UTC), log=TEST_LOG, applied=())

    before = report(environment, database, crashed("after rehearse-and-plan", reached_snapshot=False))
    assert taken.identifier not in before and "rds-migrations restore" not in before, before
    assert "No snapshot was taken and no migration was applied" in before

    reused = report(environment, database, crashed("migrate", reached_snapshot=True))
    assert f"snapshot:   {taken.identifier}" in reused
    assert f"rds-migrations restore --env mine --snapshot-id {taken.identifier}" in reused

    unknown = report(environment, database, crashed(None, reached_snapshot=None))
    assert "rds-migrations restore" not in unknown and "snapshot:   " not in unknown
    assert f"whether the run got as far as its snapshot step, so whether it reused {taken.identifier}" in unknown

    rollback = report(environment, database, crashed("snapshot", reached_snapshot=True, flow_name="rollback"))
    assert "rds-migrations restore" not in rollback  # a rollback never reuses the commit's snapshot


# ---- finding 2: a dirty mark is not "rolled back" ------------------------------------------------------------


def test_a_crash_report_of_a_dirty_non_transactional_migration_never_says_rolled_back(tmp_path: Path,
                                                                                      database: Connection) -> None:
    environment = load_environments(environments_file(tmp_path, '{ kind = "none" }'))["mine"]
    write_migrations(tmp_path, {"0012.idx.sql": ("-- transactional: false\nCREATE TABLE t (id bigint);\n"
                                                 "INSERT INTO no_such_table VALUES (1);\n")})
    with pytest.raises(MigrationError):
        apply_pending(database, read_catalog(tmp_path / "migrations", tmp_path), POLICY, run_id="run-2")
    assert dirty_state(database) == [("0012.idx", "failed", 2)]

    text = report(environment, database, crashed("migrate", reached_snapshot=True, planned=("0012.idx",)))

    assert "Dirty: 0012.idx (non-transactional) is dirty" in text
    assert "rolled back" not in text, text
    assert "0012.idx: non-transactional, stopped midway: the database is marked dirty" in text


# ---- finding 3: pending is not known before the plan -------------------------------------------------------------


def test_a_run_that_fails_validation_says_pending_is_not_known_never_none(tmp_path: Path,
                                                                          database: Connection) -> None:
    write_migrations(tmp_path, {"0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
                                "0002.broken.sql": "CREATE TABLE (;\n"})
    env = {"DATABASE_URL": url_of(database)}

    ran = cli("run", "--database-url", url_of(database), cwd=tmp_path, env=env)
    as_json = cli("run", "--database-url", url_of(database), "--json", cwd=tmp_path, env=env)

    assert ran.returncode == 1 and "FAILED at step validate" in ran.stdout + ran.stderr, ran.stderr[-3000:]
    assert "pending:    not known (the run stopped before its plan)" in ran.stdout + ran.stderr
    assert "pending:    none" not in ran.stdout + ran.stderr
    assert json.loads(as_json.stdout)["pending"] is None, as_json.stdout[-3000:]


# ---- finding 4: a snapshot still being created ------------------------------------------------------------------


class StubbedRds(DirectSteps):
    """Every step as the command line runs it; the RDS API is botocore's Stubber, and the wait does not sleep."""

    def __init__(self, rds: Any) -> None:
        super().__init__(make_client=lambda service, settings: rds)
        self.rds = rds

    def snapshot(self, environment, connection, git_sha, trigger, reuse=True, applied=None):  # noqa: ANN001, ANN201
        return take_snapshot(environment, connection, git_sha=git_sha, flow_run_id=None, trigger=trigger,
                             rds_client=self.rds, log=self.log, reuse=reuse, applied=applied, sleep=lambda s: None)


def test_a_snapshot_wait_that_runs_out_names_the_snapshot_being_created(tmp_path: Path, database: Connection,
                                                                        stubbed, monkeypatch) -> None:  # noqa: F811
    client, stubber = stubbed
    stubber.add_response("describe_db_snapshots", {"DBSnapshots": []},
                         {"DBInstanceIdentifier": "app-db", "SnapshotType": "manual"})
    stubber.add_response("describe_db_instances", AVAILABLE_INSTANCE, {"DBInstanceIdentifier": "app-db"})
    stubber.add_response("describe_account_attributes", {"AccountQuotas": []})
    creating = {"DBSnapshotIdentifier": "rdsm-mine-1a2b3c4-20261124t213000", "DBInstanceIdentifier": "app-db",
                "Status": "creating", "SnapshotType": "manual", "PercentProgress": 5}
    stubber.add_response("create_db_snapshot", {"DBSnapshot": creating})
    for _ in range(2):  # 30 s: 2 polls
        stubber.add_response("describe_db_snapshots", {"DBSnapshots": [creating]})
    write_migrations(tmp_path, {"0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n"})
    path = environments_file(tmp_path, '{ kind = "rds_instance", instance_id = "app-db", max_wait_seconds = 30 }')
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(path))
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SnapshotNotReady) as raised:
        migrate_environment("mine", "staging", StubbedRds(client), git_sha=SHA, project_root=tmp_path)

    taking = raised.value.snapshot_id
    assert taking.startswith("rdsm-mine-1a2b3c4-")
    text = raised.value.result.console_text()  # type: ignore[attr-defined]
    assert f"snapshot:   {taking} (still being created when the run stopped" in text, text
    assert f"aws rds describe-db-snapshots --db-snapshot-identifier {taking}" in text
    assert "No snapshot was taken" not in text and "rds-migrations restore" not in text
    assert "No migration was applied in this run: the database was not changed" in text


# ---- finding 5: Ctrl-C ------------------------------------------------------------------------------------------


def interrupt_run(tmp_path: Path, database: Connection) -> str:
    """`rds-migrations run --env mine`, Ctrl-C once its first migration sleeps on the target; its stderr."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "DATABASE_URL": url_of(database),
           "RDS_MIGRATIONS_ENVIRONMENTS": str(dumped(tmp_path))}
    running = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--env", "mine"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = ctrl_c_once_sleeping(running, database)
    return out + err


SLEEP_ON_TARGET = "DO $$ BEGIN IF current_database() NOT LIKE 'rdsm\\_%' THEN PERFORM pg_sleep(60); END IF; END $$;\n"


def test_ctrl_c_with_nothing_applied_offers_no_restore(tmp_path: Path, database: Connection) -> None:
    write_migrations(tmp_path, {"0001.slow.sql": "CREATE TABLE a (id bigint);\n" + SLEEP_ON_TARGET})

    said = interrupt_run(tmp_path, database)

    assert "interrupted (Ctrl-C) at step migrate: nothing was applied before it" in said, said[-3000:]
    assert "0 migration(s)" not in said and "rds-migrations restore" not in said, said[-3000:]
    assert "the database was not changed, so there is nothing to restore" in said


def test_ctrl_c_in_a_non_transactional_migration_names_it_and_how_to_resolve_it(tmp_path: Path,
                                                                              database: Connection) -> None:
    write_migrations(tmp_path, {"0001.nt.sql": ("-- transactional: false\nCREATE TABLE a (id bigint);\n"
                                                + SLEEP_ON_TARGET + "CREATE TABLE b (id bigint);\n")})

    said = interrupt_run(tmp_path, database)

    assert dirty_state(database) == [("0001.nt", "running", 2)]
    assert "0001.nt (non-transactional) is dirty" in said, said[-3000:]
    assert "`rds-migrations resolve --env mine 0001.nt --mark-not-applied`" in said
    assert "see `rds-migrations resolve`" not in said
    with connected(database) as conn:
        assert conn.execute("SELECT to_regclass('a') IS NOT NULL").fetchone() == (True,)


# ---- a rollback that crashed or was cancelled -------------------------------------------------------------------

ROLLBACKS = {
    "0001.t.sql": "CREATE TABLE t (id bigint, v text);\n",
    "0001.t.rollback.sql": "DROP TABLE t;\n",
    "0002.t-index.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY t_v ON t (v);\n",
    # Stops halfway: the index is gone, the migration unrecorded and dirty.
    "0002.t-index.rollback.sql": "DROP INDEX CONCURRENTLY t_v;\nDROP INDEX CONCURRENTLY no_such_index;\n",
    "0003.u.sql": "CREATE TABLE u (id bigint);\n",
    "0003.u.rollback.sql": "DROP TABLE u;\n",
}


def test_a_stopped_rollback_reports_what_it_undid_against_its_plan(tmp_path: Path, database: Connection) -> None:
    """A rollback to 0 (its plan published as the `rollback-plan-<env>` artifact) undid 0003.u and stopped
    halfway through 0002.t-index's rollback file; then its process died. The report is a rollback's, from what
    the history says now against that plan: never a migration run's "applied: none", "pending: …"."""
    environment = load_environments(dumped(tmp_path))["mine"]
    catalog = read_catalog(write_migrations(tmp_path, ROLLBACKS), tmp_path)
    apply_pending(database, catalog, POLICY, git_sha=SHA, run_id="run-1")
    commits = take_snapshot(environment, database, git_sha=SHA, flow_run_id="run-1", trigger="push",
                            now=datetime.now(UTC) - timedelta(minutes=5), log=TEST_LOG, applied=())
    plan = plan_rollback(database, catalog, "0", environment="mine")
    artifact = f"```\n{plan.to_text()}\n```\n"  # as runs/rollback.py publishes it
    own = take_snapshot(environment, database, git_sha=SHA, flow_run_id="run-2", trigger="manual",
                        now=datetime.now(UTC), log=TEST_LOG, applied=(), reuse=False)
    with pytest.raises(RollbackError):
        roll_back_to(database, catalog, POLICY, "0", git_sha=SHA, run_id="run-2", environment="mine",
                     planned=plan.undo)
    assert applied_ids(database) == ["0001.t"] and dirty_state(database) == [("0002.t-index", "failed", 2)]
    assert undo_listed(artifact) == ("0003.u", "0002.t-index", "0001.t") == plan.undo

    stopped = EndedRun(ending="crashed", reason="Process exited with status code: -9", flow_name="rollback",
                       flow_run_id="run-2", parameters={"environment": "mine", "git_sha": SHA, "to": "0"},
                       step="rollback", planned=undo_listed(artifact))
    text = report(environment, database, stopped)

    assert text.startswith("Rollback FAILED on mine (staging)"), text
    assert "at step rollback (run crashed): The flow run crashed" in text
    assert "Schema migrations" not in text and "pending:" not in text and "not known here" not in text, text
    assert "planned:     0003.u, 0002.t-index, 0001.t" in text
    assert "rolled back: 0003.u" in text
    assert "left dirty:  0002.t-index (partly undone" in text
    assert "still applied: 0001.t" in text
    assert "Undone, so pending again (the next run applies them): 0003.u." in text
    assert "finish the rollback by hand" in text
    assert "`rds-migrations resolve --env mine 0002.t-index --mark-not-applied`" in text
    assert f"snapshot:    {own.identifier}" in text
    assert f"rds-migrations restore --env mine --snapshot-id {own.identifier}" in text
    assert commits.identifier not in text  # a rollback takes its own snapshot, never reuses its commit's

    cancelled = report(environment, database, EndedRun(
        ending="cancelled", reason="cancelled by jane", flow_name="rollback", flow_run_id="run-3",
        parameters={"environment": "mine", "git_sha": SHA, "to": "0"}, step="after fetch-secret"))
    assert "at step after fetch-secret (run cancelled)" in cancelled, cancelled
    assert "planned:     not known (the run stopped before its plan)" in cancelled
    assert "`rds-migrations status --env mine` shows what is applied now" in cancelled
    assert "rds-migrations restore" not in cancelled


def test_the_hooks_read_a_rollbacks_plan_from_the_artifact_it_publishes(prefect_api: None) -> None:
    """The crash hook finds what a rollback was to undo in its `rollback-plan-<env>` artifact (not the migration
    plan table a rollback never publishes); a run that published none has no plan (None, "not known")."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from flows.hooks import planned_undo

    plan = RollbackPlan("0", undo=("0003.u", "0002.t-index", "0001.t"), non_transactional=("0002.t-index",))

    @flow(name="rollback")
    def rolling_back() -> str:  # publishes its plan as runs/rollback.py does
        create_markdown_artifact(markdown=f"```\n{plan.to_text()}\n```\n", key="rollback-plan-mine",
                                 description="Rollback plan for mine")
        return str(flow_run.id)

    run_id = rolling_back()
    with get_client(sync_client=True) as client:
        assert planned_undo(client, UUID(run_id), "mine") == plan.undo
        assert planned_undo(client, uuid4(), "mine") is None


# ---- a first migration rolled back after the snapshot --------------------------------------------------------


def test_a_first_migration_rolled_back_after_the_snapshot_offers_no_restore(tmp_path: Path, database: Connection,
                                                                           monkeypatch) -> None:
    """Nothing this run did is in the database (its only migration was rolled back by the server): restoring
    the snapshot would lose every write since it for nothing. The snapshot is still named."""
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(dumped(tmp_path)))
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    monkeypatch.chdir(tmp_path)
    write_migrations(tmp_path, {"0001.create-users.sql": "CREATE TABLE users (id bigint, email text);\n"})
    migrate_environment("mine", "staging", DirectSteps(), git_sha=SHA, project_root=tmp_path)
    with connected(database) as conn:
        conn.execute("INSERT INTO users VALUES (1, NULL)")  # the rehearsal has no rows: it fails on the target only
    write_migrations(tmp_path, {"0002.email-required.sql": "UPDATE users SET email = 1 / (id - 1);\n"})

    with pytest.raises(MigrationError) as raised:
        migrate_environment("mine", "staging", DirectSteps(), git_sha=SHA, project_root=tmp_path)

    summary = raised.value.result  # type: ignore[attr-defined]
    text = summary.console_text()
    assert summary.snapshot_id and f"snapshot:   {summary.snapshot_id}" in text, text
    assert summary.restore_steps == () and "rds-migrations restore" not in text, text
    assert ("0002.email-required ran in its own transaction and was rolled back, so the database was not changed "
            "and there is nothing to restore") in text, text


# ---- the step that refused -----------------------------------------------------------------------------------


def test_a_refusal_of_the_plan_names_its_step_and_a_lint_finding_stays_at_validate(
        tmp_path: Path, database: Connection, monkeypatch) -> None:
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(environments_file(tmp_path, '{ kind = "none" }')))
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    monkeypatch.chdir(tmp_path)
    write_migrations(tmp_path, {"0001.create-users.sql": "CREATE TABLE users (id bigint, email text);\n"})
    migrate_environment("mine", "staging", DirectSteps(), git_sha=SHA, project_root=tmp_path)
    with connected(database) as conn:
        conn.execute("DELETE FROM _rds_migrations_history")  # the history edited by hand

    write_migrations(tmp_path, {"0002.create-devices.sql": "CREATE TABLE devices (id bigint);\n"})
    with pytest.raises(ValidationFailed) as refused:
        migrate_environment("mine", "staging", DirectSteps(), git_sha=SHA, project_root=tmp_path)
    text = refused.value.result.console_text()  # type: ignore[attr-defined]
    assert "FAILED at step rehearse-and-plan" in text and "checksum row is gone" in text, text

    (tmp_path / "migrations" / "0002.create-devices.sql").unlink()
    write_migrations(tmp_path, {"0002.email-required.sql": "ALTER TABLE users ALTER COLUMN email SET NOT NULL;\n"})
    with pytest.raises(ValidationFailed) as linted:
        migrate_environment("mine", "staging", DirectSteps(), git_sha=SHA, project_root=tmp_path)
    text = linted.value.result.console_text()  # type: ignore[attr-defined]
    assert "FAILED at step validate" in text and "adding-not-nullable-field" in text, text


def test_a_run_that_never_got_the_lock_claims_nothing_another_run_did(tmp_path: Path, database: Connection) -> None:
    """Another run holds the migration lock and applies 0001.a while this run waits for it. This run gives up
    waiting: it applied nothing, and there is nothing of its own to restore. It read the history and claimed 0001.a
    as its own, with the restore commands of its snapshot, which would undo the other run's work."""
    import time

    from tasks.engine.migrations.history import Ledger
    from tasks.engine.migrations.session import ADVISORY_LOCK_KEY

    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                                "0002.b.sql": "CREATE TABLE b (id bigint);\n"})
    path = dumped(tmp_path)
    path.write_text(path.read_text().replace('lock_timeout_ms = 2000', 'lock_timeout_ms = 2000, '
                                             'migration_lock_wait_seconds = 3'), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "DATABASE_URL": url_of(database),
           "RDS_MIGRATIONS_ENVIRONMENTS": str(path)}
    with connected(database, autocommit=True) as other:  # the other run: it holds the lock
        Ledger.open(other).create_tables()
        other.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        running = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--env", "mine"], cwd=tmp_path,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            snapshots = tmp_path / "snapshots"
            deadline = time.monotonic() + 60
            while not (snapshots.is_dir() and any(snapshots.glob("*.dump"))):  # this run is at its migrate step
                assert running.poll() is None and time.monotonic() < deadline, running.communicate()[1][-3000:]
                time.sleep(0.05)
            first = read_catalog(tmp_path / "migrations", tmp_path).get("0001.a")
            other.execute("CREATE TABLE a (id bigint)")
            Ledger.open(other).record(first, SHA, "run-a", time.monotonic())  # the other run applies 0001.a
            out, err = running.communicate(timeout=60)
        finally:
            if running.poll() is None:
                running.kill()
    said = out + err
    assert running.returncode == 1 and "another migration run holds the lock" in said, said[-3000:]
    assert "applied:    none" in said and "rds-migrations restore" not in said, said[-3000:]
    assert applied_ids(database) == ["0001.a"]  # the other run's, as the history says
