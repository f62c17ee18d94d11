"""The apply loop on a real PostgreSQL: in order, all or nothing per migration, history kept true,
lock-timeout retries, one run at a time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import HistoryMismatch, LockTimeout
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.plan import plan
from tasks.engine.migrations.results import MigrationError
from tests.helpers import (
    POLICY,
    RETRYING,
    THREE,
    applied_ids,
    reader_holding,
    tables,
    write_migrations,
)


def test_second_of_three_fails_first_stays_second_leaves_no_trace(tmp_path: Path, database: Connection) -> None:
    catalog = read_catalog(write_migrations(tmp_path, THREE), tmp_path)
    assert not catalog.problems

    with pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, POLICY, git_sha="abc1234")

    report = raised.value.report
    assert report.applied_ids == ("0001.create-users",)
    assert report.failed is not None and report.failed.migration_id == "0002.create-accounts"
    assert report.failed.sqlstate == "42P01"
    assert "no_such_table" in report.failed.statement
    assert report.pending == ("0002.create-accounts", "0003.create-devices")
    message = str(raised.value)
    assert "0002.create-accounts" in message and "42P01" in message and "rolled back" in message
    assert applied_ids(database) == ["0001.create-users"]
    assert "accounts" not in tables(database) and "users" in tables(database)
    with connected(database) as conn:
        checksums = conn.execute("SELECT migration_id, git_sha FROM _rds_migrations_history").fetchall()
    assert checksums == [("0001.create-users", "abc1234")]


def test_applies_everything_and_yoyo_agrees(tmp_path: Path, database: Connection) -> None:
    files = dict(THREE)
    files["0002.create-accounts.sql"] = "CREATE TABLE accounts (id bigint PRIMARY KEY);\n"
    directory = write_migrations(tmp_path, files)
    catalog = read_catalog(directory, tmp_path)

    report = apply_pending(database, catalog, POLICY)
    assert report.applied_ids == catalog.ids
    assert apply_pending(database, catalog, POLICY).applied == ()

    # yoyo's own view of the history: nothing left to apply.
    from urllib.parse import quote

    from yoyo import get_backend, read_migrations

    password = quote(database.password.get_secret_value(), safe="")
    backend = get_backend(
        f"postgresql+psycopg://{database.user}:{password}@{database.host}:{database.port}/{database.dbname}"
    )
    assert len(backend.to_apply(read_migrations(str(directory)))) == 0


def test_edited_applied_migration_is_refused_before_anything_runs(tmp_path: Path, database: Connection) -> None:
    directory = write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n"})
    apply_pending(database, read_catalog(directory, tmp_path), POLICY)
    write_migrations(
        tmp_path,
        {"0001.a.sql": "CREATE TABLE a (id bigint, x int);\n", "0002.b.sql": "CREATE TABLE b (id bigint);\n"},
    )
    catalog = read_catalog(directory, tmp_path)

    assert "edited after it was applied" in " ".join(plan(database, catalog).problems)
    with pytest.raises(HistoryMismatch, match="0001.a.sql: edited after it was applied"):
        apply_pending(database, catalog, POLICY)
    assert "b" not in tables(database)


def test_deleted_applied_migration_is_refused(tmp_path: Path, database: Connection) -> None:
    directory = write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                                            "0002.b.sql": "CREATE TABLE b (id bigint);\n"})
    apply_pending(database, read_catalog(directory, tmp_path), POLICY)
    (directory / "0001.a.sql").rename(directory / "0001.renamed.sql")
    problems = plan(database, read_catalog(directory, tmp_path)).problems
    assert any("0001.a: applied to the database but missing" in p for p in problems)


def test_out_of_order_migration_is_refused_unless_allowed(tmp_path: Path, database: Connection) -> None:
    directory = write_migrations(tmp_path, {"0002.b.sql": "CREATE TABLE b (id bigint);\n"})
    apply_pending(database, read_catalog(directory, tmp_path), POLICY)
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n"})
    catalog = read_catalog(directory, tmp_path)
    assert any("out of order" in p for p in plan(database, catalog).problems)
    report = apply_pending(database, catalog, POLICY.model_copy(update={"allow_out_of_order": True}))
    assert report.applied_ids == ("0001.a",)


def test_target_stops_at_the_named_version(tmp_path: Path, database: Connection) -> None:
    files = {f"000{i}.t{i}.sql": f"CREATE TABLE t{i} (id bigint);\n" for i in range(1, 5)}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    report = apply_pending(database, catalog, POLICY, target="2")
    assert report.applied_ids == ("0001.t1", "0002.t2")
    assert report.pending == ("0003.t3", "0004.t4")
    assert plan(database, catalog, target="0009").problems  # an unknown target is a problem, not a no-op


def test_non_transactional_migration_runs_outside_a_transaction(tmp_path: Path, database: Connection) -> None:
    files = {
        "0001.t.sql": "CREATE TABLE t (id bigint, v text);\n",
        "0002.t-index.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY IF NOT EXISTS t_v ON t (v);\n",
    }
    report = apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    assert report.applied_ids == ("0001.t", "0002.t-index")
    with connected(database) as conn:
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_v'::regclass").fetchone()[0]
        assert conn.execute(
            "SELECT transactional FROM _rds_migrations_history WHERE migration_id = '0002.t-index'"
        ).fetchone()[0] is False


def test_percent_signs_and_dollar_quotes_pass_through(tmp_path: Path, database: Connection) -> None:
    files = {
        "0001.fn.sql": (
            "CREATE TABLE notes (body text);\n"
            "INSERT INTO notes VALUES ('100% sure; %s %(x)s');\n"
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;\n"
        )
    }
    apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    with connected(database) as conn:
        assert conn.execute("SELECT body FROM notes").fetchone()[0] == "100% sure; %s %(x)s"


def test_the_recorded_duration_is_the_migrations_own(tmp_path: Path, database: Connection) -> None:
    files = {"0001.quick.sql": "CREATE TABLE q (id bigint);\n", "0002.sleepy.sql": "SELECT pg_sleep(0.3);\n",
             "0003.sleepy-alone.sql": "-- transactional: false\nSELECT pg_sleep(0.3);\n"}
    apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    with connected(database) as conn:
        durations = dict(conn.execute("SELECT migration_id, duration_ms FROM _rds_migrations_history").fetchall())
    assert 300 <= durations["0002.sleepy"] < 30_000 and 0 <= durations["0001.quick"] < 300
    assert 300 <= durations["0003.sleepy-alone"] < 30_000  # its statements, not the message that records it


def test_lock_timeout_rolls_back_and_retries_until_the_reader_ends(tmp_path: Path, database: Connection) -> None:
    files = {"0001.alter-busy.sql": "ALTER TABLE busy ADD COLUMN note text;\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with reader_holding(database, "busy"):
        report = apply_pending(database, catalog, RETRYING)
    assert report.applied[0].attempts > 1


def test_lock_timeout_gives_up_after_the_retries_with_database_unchanged(
    tmp_path: Path, database: Connection
) -> None:
    with connected(database) as setup:
        setup.execute("CREATE TABLE busy (id bigint)")
    catalog = read_catalog(write_migrations(tmp_path, {"0001.alter.sql": "ALTER TABLE busy ADD c int;\n"}), tmp_path)
    policy = POLICY.model_copy(
        update={"lock_timeout_ms": 50, "lock_timeout_retries": 2, "lock_retry_base_delay_seconds": 0.01}
    )
    reader = database.connect(autocommit=False)
    reader.execute("SELECT * FROM busy")
    try:
        with pytest.raises(MigrationError) as raised:
            apply_pending(database, catalog, policy)
    finally:
        reader.close()
    assert raised.value.report.failed.sqlstate == "55P03"
    assert raised.value.report.failed.attempts == 3
    assert "after 3 attempts" in str(raised.value) and "rolled back: database unchanged, 3 attempts" in str(
        raised.value)
    with connected(database) as conn:
        columns = conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name='busy'")
        assert columns.fetchone()[0] == 1


def test_a_lock_timeout_retry_names_who_holds_a_lock_on_the_table_never_their_query(
    tmp_path: Path, database: Connection
) -> None:
    with connected(database) as setup:
        setup.execute('CREATE TABLE "Busy" (id bigint)')
    alter = read_catalog(write_migrations(tmp_path / "a", {"0001.alter.sql": 'ALTER TABLE "Busy" ADD c int;\n'}),
                         tmp_path / "a")
    drop = read_catalog(write_migrations(tmp_path / "b", {"0001.drop.sql": 'DROP TABLE "Busy";\n'}), tmp_path / "b")
    policy = POLICY.model_copy(
        update={"lock_timeout_ms": 50, "lock_timeout_retries": 1, "lock_retry_base_delay_seconds": 0.01}
    )
    reader = database.connect(autocommit=False, application_name="billing-report")
    reader.execute("SELECT * FROM \"Busy\" WHERE id <> 4242 -- card 4111-1111")
    pid = reader.info.backend_pid
    log = logging.getLogger("test_lock_holders")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        with pytest.raises(MigrationError):
            apply_pending(database, alter, policy, log=log)
        with pytest.raises(MigrationError):  # DROP TABLE: not a statement whose table is read, so how to find it
            apply_pending(database, drop, policy, log=log)
    finally:
        log.removeHandler(handler)
        reader.close()
    retried = [line for line in said if "lock_timeout (50 ms)" in line]
    assert len(retried) == 2, said
    assert (f"holding a lock on Busy right after: pid {pid} (application_name 'billing-report', "
            f"user {database.user}, state idle in transaction, transaction open ") in retried[0], retried[0]
    assert "AccessShareLock)" in retried[0] and "4111" not in retried[0] and "4242" not in retried[0]
    assert "WHERE pid = ANY(pg_blocking_pids(" in retried[1], retried[1]


def test_a_second_run_waits_for_the_lock_then_names_the_holder(tmp_path: Path, database: Connection) -> None:
    catalog = read_catalog(write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n"}), tmp_path)
    holder = database.connect(application_name="rds-migrations run other-run-42")
    from tasks.engine.migrations.history import ADVISORY_LOCK_KEY

    holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        with pytest.raises(LockTimeout, match="other-run-42"):
            apply_pending(database, catalog, POLICY.model_copy(update={"migration_lock_wait_seconds": 0.5}))
    finally:
        holder.close()
    assert apply_pending(database, catalog, POLICY).applied_ids == ("0001.a",)


def test_concurrent_runs_apply_each_migration_exactly_once(tmp_path: Path, database: Connection) -> None:
    files = {f"{i:04d}.m{i}.sql": f"CREATE TABLE m{i} (id bigint);\nINSERT INTO counter VALUES ({i});\n"
             for i in range(1, 6)}
    with connected(database) as setup:
        setup.execute("CREATE TABLE counter (n int)")
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    results: list[object] = []

    def run() -> None:
        try:
            results.append(apply_pending(database, catalog, POLICY))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [r for r in results if isinstance(r, Exception)]
    assert sum(len(r.applied) for r in results) == 5  # type: ignore[attr-defined]
    with connected(database) as conn:
        assert conn.execute("SELECT n, count(*) FROM counter GROUP BY n ORDER BY n").fetchall() == [
            (i, 1) for i in range(1, 6)
        ]
        assert conn.execute("SELECT count(*) FROM _yoyo_log").fetchone()[0] == 5
