"""The migrating process killed (kill -9) at every point that matters: the database stays consistent and
unlocked, and nothing is applied twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import (
    DirtyDatabase,
)
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.plan import plan
from tasks.engine.migrations.resolve import resolve_dirty
from tests.helpers import (
    POLICY,
    SLEEP_WHILE_FLAGGED,
    SLEEPING,
    applied_ids,
    dirty_state,
    raise_sleep_flag,
    tables,
    write_migrations,
)

KILL_SCRIPT = """
import sys
from pathlib import Path
from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from pydantic import SecretStr
c = Connection(host=sys.argv[1], port=int(sys.argv[2]), dbname=sys.argv[3], user=sys.argv[4],
               password=SecretStr(sys.stdin.read()))
project = Path(sys.argv[5])
lock_timeout_ms = int(sys.argv[6]) if len(sys.argv) > 6 else 2000
apply_pending(c, read_catalog(project / "migrations", project), Policy(lock_timeout_ms=lock_timeout_ms))
"""


# ---- the migrating process, killed -----------------------------------------------------------------------


def start_migrating(database: Connection, project: Path, lock_timeout_ms: int = 2000) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, database.host, str(database.port), database.dbname, database.user,
         str(project), str(lock_timeout_ms)],
        stdin=subprocess.PIPE, cwd=Path(__file__).parents[1],
    )
    process.stdin.write(database.password.get_secret_value().encode())  # type: ignore[union-attr]
    process.stdin.close()  # type: ignore[union-attr]
    return process


def wait_until(watcher, query: str, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while not watcher.execute(query).fetchone():
        assert time.monotonic() < deadline, f"never saw: {what}"
        assert process.poll() is None, f"the migrating process ended before: {what}"
        time.sleep(0.05)


def kill_9(process: subprocess.Popen, watcher) -> None:
    """SIGKILL the migrating process, then end its server session (the server notices a dead client only
    when it next talks to it) so that its advisory lock goes and its open transaction rolls back."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    sessions = ("FROM pg_stat_activity WHERE application_name = 'rds-migrations' "
                "AND datname = current_database() AND pid <> pg_backend_pid()")
    deadline = time.monotonic() + 30
    while watcher.execute(f"SELECT 1 {sessions}").fetchone():
        watcher.execute(f"SELECT pg_terminate_backend(pid) {sessions}")
        assert time.monotonic() < deadline
        time.sleep(0.05)


def record_waiting(database: Connection, watcher, process: subprocess.Popen):
    """Once the migration's last statement (`SELECT pg_sleep(0.5)`) runs, hold yoyo's table so that its record
    waits; returns the session holding it (closing it lets the record go on)."""
    wait_until(watcher, "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(0.5)%%' "
                        "AND datname = current_database()", process, "the last statement running")
    blocker = database.connect(autocommit=False, application_name="test-blocker")
    blocker.execute("LOCK TABLE _yoyo_migration IN ACCESS EXCLUSIVE MODE")
    wait_until(watcher, "SELECT 1 FROM _rds_migrations_dirty WHERE state = 'recording'", process,
               "the statements done and the record started")
    wait_until(watcher, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'rds-migrations' "
                        "AND wait_event_type = 'Lock'", process, "the record waiting")
    return blocker


def test_kill_9_mid_migration_leaves_the_database_consistent_and_unlocked(
    tmp_path: Path, database: Connection
) -> None:
    raise_sleep_flag(database)
    files = {
        "0001.first.sql": "CREATE TABLE first (id bigint);\n",
        "0002.slow.sql": (
            "CREATE TABLE slow (id bigint);\n"
            + SLEEP_WHILE_FLAGGED
        ),
    }
    write_migrations(tmp_path, files)
    process = start_migrating(database, tmp_path)
    with connected(database, application_name="test-watcher") as watcher:
        wait_until(watcher, SLEEPING, process, "the slow statement running")
        kill_9(process, watcher)
        watcher.execute("DELETE FROM sleep_flag")

    assert applied_ids(database) == ["0001.first"]
    assert "slow" not in tables(database)
    report = apply_pending(database, read_catalog(tmp_path / "migrations", tmp_path),
                           POLICY.model_copy(update={"migration_lock_wait_seconds": 5}))
    assert report.applied_ids == ("0002.slow",)


def test_kill_9_during_a_non_transactional_migration_reports_dirty_and_never_reapplies(
    tmp_path: Path, database: Connection
) -> None:
    raise_sleep_flag(database)
    files = {
        "0001.first.sql": "CREATE TABLE first (id bigint);\n",
        "0002.nt.sql": (
            "-- transactional: false\n"
            "CREATE TABLE nt_a (id bigint);\n"
            + SLEEP_WHILE_FLAGGED
            + "CREATE TABLE nt_b (id bigint);\n"
        ),
        "0003.last.sql": "CREATE TABLE last (id bigint);\n",
    }
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    process = start_migrating(database, tmp_path)
    with connected(database, application_name="test-watcher") as watcher:
        wait_until(watcher, "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'DO $$%%pg_sleep%%' "
                            "AND datname = current_database()", process, "the second statement running")
        kill_9(process, watcher)
        watcher.execute("DELETE FROM sleep_flag")

    assert dirty_state(database) == [("0002.nt", "running", 2)]
    assert applied_ids(database) == ["0001.first"]
    problems = " ".join(plan(database, catalog, environment="staging").problems)
    assert "0002.nt (non-transactional) is dirty: the run stopped (process killed or connection lost) " \
           "during statement 2 of 3; statement 1 is applied" in problems
    assert "rds-migrations resolve --env staging 0002.nt --mark-not-applied" in problems
    with pytest.raises(DirtyDatabase) as raised:  # no blind re-apply: 0002 is not run again, 0003 not at all
        apply_pending(database, catalog, POLICY, environment="staging")
    explained = str(raised.value)
    assert "1. ran: CREATE TABLE nt_a" in explained
    assert "2. was running when the run stopped: DO $$" in explained
    assert "3. not run: CREATE TABLE nt_b" in explained and "nothing was applied" in explained
    assert {"nt_a", "first"} <= tables(database) and not {"nt_b", "last"} & tables(database)

    # The operator undoes statement 1 and says so; the migration runs again, whole, and so does the rest.
    with connected(database) as conn:
        conn.execute("DROP TABLE nt_a")
    assert "pending again" in resolve_dirty(database, catalog, "0002.nt", mark_applied=False, policy=POLICY)
    assert apply_pending(database, catalog, POLICY).applied_ids == ("0002.nt", "0003.last")
    assert dirty_state(database) == []


def test_a_run_killed_between_statements_and_record_is_reconciled_not_reapplied(
    tmp_path: Path, database: Connection
) -> None:
    files = {
        "0001.nt.sql": "-- transactional: false\nCREATE TABLE nt (id bigint);\nSELECT pg_sleep(0.5);\n",
        "0002.next.sql": "CREATE TABLE next (id bigint);\n",
    }
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    process = start_migrating(database, tmp_path, lock_timeout_ms=30_000)
    with connected(database, application_name="test-watcher") as watcher:
        blocker = record_waiting(database, watcher, process)
        # The crash: after the statements, before the record. The record and its COMMIT went in one message
        # with the "recording" mark, so the session must end while the record waits (with the client alone
        # gone, the server would finish the record: the history would still tell the truth).
        kill_9(process, watcher)
        blocker.close()

    assert "nt" in tables(database) and applied_ids(database) == []
    assert dirty_state(database) == [("0001.nt", "recording", 2)]
    with pytest.raises(DirtyDatabase) as raised:
        apply_pending(database, catalog, POLICY)
    explained = str(raised.value)
    assert "all 2 statement(s) ran, but the run stopped before recording it" in explained
    assert "1. ran: CREATE TABLE nt" in explained and "2. ran: SELECT pg_sleep" in explained
    assert "--mark-applied" in explained

    resolve_dirty(database, catalog, "0001.nt", mark_applied=True, policy=POLICY)
    # Re-applying would fail (the table exists): the record is what was missing, and now it is there.
    assert apply_pending(database, catalog, POLICY).applied_ids == ("0002.next",)
    with connected(database) as conn:
        assert conn.execute("SELECT operation FROM _yoyo_log WHERE migration_id = '0001.nt'").fetchall() == [
            ("mark",)]
        assert conn.execute("SELECT git_sha FROM _rds_migrations_history WHERE migration_id = '0001.nt'"
                            ).fetchone() == ("resolved",)


def test_a_client_killed_while_its_record_waits_leaves_the_server_to_finish_the_record(
    tmp_path: Path, database: Connection
) -> None:
    files = {"0001.nt.sql": "-- transactional: false\nCREATE TABLE nt (id bigint);\nSELECT pg_sleep(0.5);\n"}
    write_migrations(tmp_path, files)
    process = start_migrating(database, tmp_path, lock_timeout_ms=30_000)
    with connected(database, application_name="test-watcher") as watcher:
        blocker = record_waiting(database, watcher, process)
        os.kill(process.pid, signal.SIGKILL)  # the client alone: its session still holds the whole message
        process.wait()
        blocker.close()
        deadline = time.monotonic() + 30
        while watcher.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'rds-migrations' "
                              "AND datname = current_database()").fetchone():
            assert time.monotonic() < deadline, "the dead client's session never ended"
            time.sleep(0.05)

    # The record and its COMMIT had reached the server: applied and recorded, no mark left to resolve.
    assert "nt" in tables(database) and applied_ids(database) == ["0001.nt"] and dirty_state(database) == []


def test_ctrl_c_mid_run_is_one_line_a_notification_and_the_history_as_it_is(tmp_path: Path,
                                                                              database: Connection) -> None:
    """SIGINT while a migration runs on the target: the server rolls that one back, the run says in one line
    what was applied before it (read from the history), notifies as for any failure and exits 130. It used to
    end in a Python traceback, with no notification."""
    from tests.helpers import ctrl_c_once_sleeping, start_run

    write_migrations(tmp_path, {
        "0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n",
        "0002.slow-on-target.sql": ("CREATE TABLE b (id bigint);\nDO $$ BEGIN IF current_database() NOT LIKE "
                                    "'rdsm\\_%' THEN PERFORM pg_sleep(60); END IF; END $$;\n"),
    })
    running = start_run(tmp_path, database, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = ctrl_c_once_sleeping(running, database)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert ("rds-migrations: database-url: interrupted (Ctrl-C) at step migrate: 1 migration(s) applied and "
            "recorded before it") in err, err[-3000:]
    assert "FAILED" in err and "0001.a" in err  # the console notification, with what was applied
    assert applied_ids(database) == ["0001.a"] and "b" not in tables(database) and dirty_state(database) == []
    with connected(database) as conn:  # the lock went with the session
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone() == (0,)
