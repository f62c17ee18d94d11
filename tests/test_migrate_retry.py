"""What a run whose migrate step Prefect retried claims: only what it did. Its first attempt took the migration
lock and failed, transiently, before applying anything; another run then took the lock and applied a migration;
the retry waited for the lock past its wait. And what it did is still claimed: the history rows that carry its
flow run's id. Real PostgreSQL, a real second session, the real flow and its task retries (only their delay set
to none)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import psycopg
import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.history import DIRTY_TABLE, Ledger
from tasks.engine.migrations.session import ADVISORY_LOCK_KEY
from tests.helpers import a_bug_when_applying, applied_ids, url_of, write_migrations
from tests.test_observe import artifacts_of

if TYPE_CHECKING:
    from prefect.states import State

ENVIRONMENTS = """
[environments.retried]
tier = "staging"
credentials = { kind = "url_env", variable = "DATABASE_URL" }
snapshot = { kind = "none" }
rehearsal = { kind = "none" }
notify = { kind = "console" }

[environments.retried.policy]
snapshot_required = false
rehearsal_required = false
lock_timeout_ms = 200
migration_lock_wait_seconds = 5
"""
# A session of this flow run holding the migration lock; and one polling for it.
LOCK_HELD = ("SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' "
             "AND l.granted AND a.application_name LIKE 'rds-migrations run %'")
POLLING_FOR_THE_LOCK = ("SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'rds-migrations run %' "
                        "AND datname = current_database() AND query LIKE 'SELECT pg\\_try\\_advisory\\_lock(%'")


def seen(watcher, query: str, ended: threading.Event) -> bool:
    """Whether `query` returned a row before the flow run ended."""
    while not watcher.execute(query).fetchone():
        if ended.is_set():
            return False
        time.sleep(0.05)
    return True


def retried_run(database: Connection, locked_table: str,
                after_attempt_1: Callable[[psycopg.Connection, psycopg.Connection, threading.Event], None]) -> State:
    """The `retried` staging run, its first attempt made to fail transiently: a session holds `locked_table` in
    EXCLUSIVE mode, so attempt 1's write to it times out (55P03: Prefect retries the task). Once attempt 1 holds
    the migration lock, another session takes it as attempt 1 frees it, lets go of the table, and calls
    `after_attempt_1(other, watcher, ended)` holding the lock: what happens between the attempts."""
    from flows.staging import staging

    ended = threading.Event()

    def between(holder: psycopg.Connection, other: psycopg.Connection) -> None:
        with connected(database) as watcher:
            if not seen(watcher, LOCK_HELD, ended):
                return
            other.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))  # granted as attempt 1 frees it
            holder.rollback()  # attempt 1's write could go through now: the retry's will
            after_attempt_1(other, watcher, ended)

    with connected(database, autocommit=False) as holder, connected(database) as other:
        Ledger.open(other).create_tables()
        holder.execute(f"LOCK TABLE {locked_table} IN EXCLUSIVE MODE")  # reads go on; the write waits
        thread = threading.Thread(target=between, args=(holder, other))
        thread.start()
        try:
            return staging(environment="retried", git_sha="abc1234", return_state=True)
        finally:
            ended.set()
            thread.join(timeout=120)
            other.execute("SELECT pg_advisory_unlock_all()")


def migrate_run_counts(flow_run_id: UUID) -> list[int]:
    """How many times each migrate task of the flow run ran (2: retried once)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [t.run_count for t in task_runs if t.name.startswith("migrate-")]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: Connection, prefect_api: None) -> Path:
    """A project whose environment `retried` names the test's database, run from its directory."""
    (tmp_path / "environments.toml").write_text(ENVIRONMENTS)
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_retried_migrate_step_claims_nothing_another_run_applied_between_its_attempts(
        project: Path, monkeypatch: pytest.MonkeyPatch, database: Connection) -> None:
    """Attempt 1 takes the lock, then waits past lock_timeout behind a session holding yoyo's version table
    (the history tables' set-up: 55P03, transient, so Prefect retries the task); it applied nothing. Another run
    takes the lock as it is freed and applies 0001.a; the retry waits for the lock past its wait and fails. The
    run applied nothing: it claimed 0001.a as its own, from the history, because attempt 1 had taken the lock."""
    from tasks.migrate import migrate

    monkeypatch.setattr(migrate, "retry_delay_seconds", 0)  # the retries still run, without the wait
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint);\n"})
    first = read_catalog(project / "migrations", project).get("0001.a")
    done: list[str] = []

    def other_run(other: psycopg.Connection, watcher: psycopg.Connection, ended: threading.Event) -> None:
        other.execute("CREATE TABLE a (id bigint)")
        Ledger.open(other).record(first, "0ther00", "run-a", time.monotonic())  # the other run applies 0001.a
        done.append("applied")
        if seen(watcher, POLLING_FOR_THE_LOCK, ended):
            done.append("the retry waited after it")

    state = retried_run(database, "_yoyo_version", other_run)

    assert done == ["applied", "the retry waited after it"], done
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    assert migrate_run_counts(flow_run_id) == [2]  # retried once
    [result] = artifacts_of(flow_run_id)["migration-result-retried"]
    assert "another migration run holds the lock" in result.data, result.data
    assert "applied:    none" in result.data and "applied in this run" not in result.data, result.data
    assert applied_ids(database) == ["0001.a"]  # the other run's, as the history says


def test_a_flow_run_failing_under_the_lock_by_no_migration_claims_the_rows_that_name_it(
        project: Path, monkeypatch: pytest.MonkeyPatch, database: Connection) -> None:
    """The counterpart, through Prefect: a bug at 0002 (injected: a_bug_when_applying) after 0001.a was applied.
    What this run applied is read from the history rows that carry its flow run's id: 0001.a, never "none"."""
    from flows.staging import staging

    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                                "0002.b.sql": "-- transactional: false\nCREATE TABLE b (id bigint);\n"})
    a_bug_when_applying(monkeypatch, "0002.b")

    state = staging(environment="retried", git_sha="abc1234", return_state=True)

    assert state.is_failed()
    [result] = artifacts_of(state.state_details.flow_run_id)["migration-result-retried"]
    assert "applied:    0001.a\n" in result.data and "pending:    0002.b\n" in result.data, result.data
    assert applied_ids(database) == ["0001.a"]


@pytest.mark.parametrize("between", ["nothing", "another run applies 0002.b", "0002.b fails"])
def test_a_retried_migrate_step_reports_what_every_attempt_applied(
        project: Path, monkeypatch: pytest.MonkeyPatch, database: Connection, between: str) -> None:
    """Attempt 1 takes the lock, applies and records 0001.a, then its dirty mark for the non-transactional 0002.b
    waits past lock_timeout behind a session holding the mark table (55P03 from the tool's own statement:
    transient, so Prefect retries the task). Attempt 2 applies 0002.b. The success report (the result artifact,
    which is the notification's text) names both as applied in this run: the history rows carry its id. When
    another run took the lock between the attempts and applied 0002.b, the report names 0001.a only; when 0002.b
    fails in attempt 2, the failure report still names 0001.a as applied."""
    from tasks.migrate import migrate

    monkeypatch.setattr(migrate, "retry_delay_seconds", 0)  # the retries still run, without the wait
    second_sql = "CREATE TABLE a (id bigint)" if between == "0002.b fails" else "CREATE TABLE b (id bigint)"
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                                "0002.b.sql": f"-- transactional: false\n{second_sql};\n"})
    second = read_catalog(project / "migrations", project).get("0002.b")
    done: list[str] = []

    def between_attempts(other: psycopg.Connection, watcher: psycopg.Connection, ended: threading.Event) -> None:
        done.append("attempt 1 ended")
        if between == "another run applies 0002.b":
            other.execute("CREATE TABLE b (id bigint)")
            Ledger.open(other).record(second, "0ther00", "run-a", time.monotonic())
        other.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))

    state = retried_run(database, DIRTY_TABLE, between_attempts)  # attempt 1's dirty mark for 0002.b waits

    assert done == ["attempt 1 ended"], done
    assert state.is_failed() if between == "0002.b fails" else state.is_completed(), state
    flow_run_id = state.state_details.flow_run_id
    assert migrate_run_counts(flow_run_id) == [2]  # retried once
    [result] = artifacts_of(flow_run_id)["migration-result-retried"]
    ours = "0001.a, 0002.b" if between == "nothing" else "0001.a"
    outcome = "failed" if between == "0002.b fails" else "succeeded"
    assert f"## Result: {outcome}" in result.data and f"applied:    {ours}\n" in result.data, result.data
    assert applied_ids(database) == (["0001.a"] if between == "0002.b fails" else ["0001.a", "0002.b"])
