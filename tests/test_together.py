"""Several migrations in one message (together.py, opt-in by `policy.migrations_per_message`), on a real
PostgreSQL: each still in its own transaction with its history rows, the failing one named exactly, none after
it run, the history as if each had been sent alone; by default, one message a migration."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.results import MigrationError
from tasks.engine.migrations.statements import travels_alone
from tasks.engine.migrations.together import next_group
from tests.helpers import (
    POLICY,
    RETRYING,
    applied_ids,
    end_the_session_while_it_sleeps,
    lose_the_connection_mid_message,
    reader_holding,
    tables,
    write_migrations,
)

TOGETHER = POLICY.model_copy(update={"migrations_per_message": 20})

# Each migration notes the message it arrived in (statement_timestamp: the message's arrival) and its transaction.
SEEN = "INSERT INTO seen VALUES ('{id}', statement_timestamp(), txid_current());\n"
SEEN_TABLE = "CREATE TABLE seen (migration text, message timestamptz, xid bigint);\n"


def seen(database: Connection) -> list[tuple[str, object, int]]:
    with connected(database) as conn:
        return conn.execute("SELECT migration, message, xid FROM seen ORDER BY migration").fetchall()


def test_migrations_share_a_message_each_in_its_own_transaction(tmp_path: Path, database: Connection) -> None:
    files = {"0001.seen.sql": SEEN_TABLE + SEEN.format(id="0001")}
    files |= {f"000{n}.m{n}.sql": SEEN.format(id=f"000{n}") for n in range(2, 6)}
    files["0003.m3.sql"] = "SELECT pg_sleep(0.3);\n" + SEEN.format(id="0003")  # slow: the ones after it are not
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)

    report = apply_pending(database, catalog, TOGETHER)

    rows = seen(database)
    assert len({message for _, message, _ in rows}) == 1, "one message"
    assert len({xid for _, _, xid in rows}) == 5, "five transactions"
    durations = {applied.id: applied.duration_seconds for applied in report.applied}
    assert durations["0003.m3"] >= 0.3 and durations["0004.m4"] < 0.3 and durations["0005.m5"] < 0.3
    with connected(database) as conn:
        ledger = Ledger.open(conn)
        recorded = [record.migration_id for record in ledger.applied_records()]
        history = dict(conn.execute("SELECT migration_id, duration_ms FROM _rds_migrations_history").fetchall())
    assert recorded == list(catalog.ids), "the history's order is the order they were applied in"
    assert history["0003.m3"] >= 300 and history["0004.m4"] < 300, "each measured from its own BEGIN"


def test_a_failure_inside_a_message_leaves_those_before_it_applied_and_runs_none_after(
    tmp_path: Path, database: Connection
) -> None:
    files = {"0001.seen.sql": SEEN_TABLE + SEEN.format(id="0001"), "0002.two.sql": SEEN.format(id="0002"),
             "0003.bad.sql": SEEN.format(id="0003") + "CREATE TABLE three (id bigint);\n"
                             "INSERT INTO three VALUES ('x');\n",
             "0004.four.sql": SEEN.format(id="0004") + "CREATE TABLE four (id bigint);\n",
             "0005.five.sql": SEEN.format(id="0005")}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)

    with pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, TOGETHER)

    report = raised.value.report
    assert report.applied_ids == ("0001.seen", "0002.two")
    failed = report.failed
    assert failed is not None and (failed.migration_id, failed.statement_number, failed.sqlstate) == (
        "0003.bad", 3, "22P02")
    assert failed.statement == "INSERT INTO three VALUES ('x')" and not failed.outcome_unknown
    assert report.pending == ("0003.bad", "0004.four", "0005.five")
    assert applied_ids(database) == ["0001.seen", "0002.two"]
    rows = seen(database)
    assert [migration for migration, _, _ in rows] == ["0001", "0002"] and rows[0][1] == rows[1][1], "one message"
    assert not {"three", "four"} & tables(database)


def test_a_lock_timeout_inside_a_message_is_retried_and_the_rest_follow(tmp_path: Path, database: Connection) -> None:
    files = {"0001.a.sql": "CREATE TABLE a (id bigint);\n", "0002.alter-busy.sql": "ALTER TABLE busy ADD c int;\n",
             "0003.c.sql": "CREATE TABLE c (id bigint);\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with reader_holding(database, "busy"):
        report = apply_pending(database, catalog, RETRYING.model_copy(update={"migrations_per_message": 20}))
    attempts = {applied.id: applied.attempts for applied in report.applied}
    assert attempts["0001.a"] == 1 and attempts["0002.alter-busy"] > 1 and attempts["0003.c"] == 1
    assert applied_ids(database) == list(catalog.ids) and {"a", "busy", "c"} <= tables(database)


def test_a_message_the_server_cannot_read_whole_is_sent_a_migration_at_a_time(
    tmp_path: Path, database: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    # The server parses a whole message before it runs any of it: a syntax error in the third migration refuses
    # the message, the first two included. One by one, the two before it apply and it fails on its own statement.
    files = {"0001.a.sql": "CREATE TABLE a (id bigint);\n", "0002.b.sql": "CREATE TABLE b (id bigint);\n",
             "0003.typo.sql": "CREATE TABLE c (id bigint);\nCREATE TABEL d (id bigint);\n",
             "0004.e.sql": "CREATE TABLE e (id bigint);\n"}
    logged = logging.getLogger("test-together")
    with pytest.raises(MigrationError) as raised, caplog.at_level(logging.INFO, logger="test-together"):
        apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), TOGETHER, log=logged)
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "test-together"][:3] == [
        "Applying 0001.a to 0004.e", "Applying 0001.a", "Applying 0002.b"], "together, then one at a time"
    failed = raised.value.report.failed
    assert failed is not None and (failed.migration_id, failed.statement_number, failed.sqlstate) == (
        "0003.typo", 2, "42601")
    assert failed.statement.startswith("CREATE TABEL d")
    assert applied_ids(database) == ["0001.a", "0002.b"] and not {"c", "d", "e"} & tables(database)


def test_a_migration_that_drops_the_prepared_history_insert_inside_a_message(
    tmp_path: Path, database: Connection
) -> None:
    # DEALLOCATE ALL inside a DO block: no first word gives it away, so it travels with the others; its history
    # insert finds nothing to run, it is rolled back and sent again alone, and the rest follow.
    files = {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
             "0002.deallocate.sql": "CREATE TABLE b (id bigint);\nDO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$;\n",
             "0003.c.sql": "CREATE TABLE c (id bigint);\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    report = apply_pending(database, catalog, TOGETHER)
    assert report.applied_ids == catalog.ids and applied_ids(database) == list(catalog.ids)
    assert {"a", "b", "c"} <= tables(database)


def test_the_session_ended_inside_a_message_names_the_statement_and_keeps_what_committed(
    tmp_path: Path, database: Connection
) -> None:
    files = {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
             "0002.slow.sql": "CREATE TABLE slow (id bigint);\nSELECT pg_sleep(30);\n",
             "0003.c.sql": "CREATE TABLE c (id bigint);\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    error = end_the_session_while_it_sleeps(database, lambda: apply_pending(database, catalog, TOGETHER))
    assert isinstance(error, MigrationError), error
    report = error.report
    assert report.applied_ids == ("0001.a",)
    assert report.failed is not None and (report.failed.migration_id, report.failed.statement_number,
                                          report.failed.sqlstate) == ("0002.slow", 2, "57P01")
    assert report.pending == ("0002.slow", "0003.c")
    assert applied_ids(database) == ["0001.a"] and tables(database) & {"a", "slow", "c"} == {"a"}


@pytest.mark.parametrize(("statement", "alone"), [
    ("CREATE TABLE a (id bigint)", False),
    ("-- a comment\nCOMMIT", True),
    ("end", True),
    ("DEALLOCATE ALL", True),
    ("DISCARD PLANS", True),
    ("COPY a FROM STDIN", True),
    ("SET client_encoding = 'LATIN1'", True),
    ("SET NAMES 'LATIN1'", True),
    ("SELECT set_config('client_encoding', 'LATIN1', false)", True),
    ("RESET ALL", True),
    ("SET lock_timeout = '1s'", False),
    ("DO $$ BEGIN PERFORM 1; END $$", False),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", False),
])
def test_what_travels_alone(statement: str, alone: bool) -> None:
    assert travels_alone(statement) is alone


def test_groups_stop_at_a_migration_that_travels_alone_and_at_the_size_limits(tmp_path: Path) -> None:
    files = {f"{n:04d}.m.sql": f"CREATE TABLE t{n} (id bigint);\n" for n in range(1, 31)}
    files["0004.m.sql"] = "-- transactional: false\nCREATE INDEX CONCURRENTLY i ON t1 (id);\n"
    files["0008.m.sql"] = "INSERT INTO t1 VALUES (1);\n" * 20_000  # 540 kB: alone
    files["0030.m.sql"] = "INSERT INTO t1 VALUES ('abc);\n"  # a quote left open: it would pair with a later one
    migrations = read_catalog(write_migrations(tmp_path, files), tmp_path).migrations
    assert next_group(migrations, 150000, 20) == 3
    assert next_group(migrations[3:], 150000, 20) == 1  # non-transactional
    assert next_group(migrations[4:], 150000, 20) == 3
    assert next_group(migrations[7:], 150000, 20) == 1  # large
    assert next_group(migrations[8:], 150000, 20) == 20
    assert next_group(migrations[20:], 150000, 20) == 9 and not migrations[29].scanned
    assert next_group(migrations[8:], 150000, 5) == 5
    assert next_group(migrations, 150000, 1) == 1  # the default: one message a migration
    assert next_group(migrations, 120000, 20) == 1  # PostgreSQL 12: statement_timeout would cover the whole message


def test_by_default_each_migration_has_a_message_and_a_now_of_its_own(tmp_path: Path, database: Connection) -> None:
    # Migrations sent together would share now() (the message's arrival): a backfill of the rows an earlier
    # migration seeded `WHERE created < now()` would find none of them. One message a migration, it finds both.
    files = {"0001.seed.sql": "CREATE TABLE item (id int, created timestamptz DEFAULT now(), ok bool);\n"
                              "INSERT INTO item (id) VALUES (1), (2);\n",
             "0002.backfill.sql": "UPDATE item SET ok = true WHERE created < now();\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    apply_pending(database, catalog, POLICY)
    with connected(database) as conn:
        assert conn.execute("SELECT count(*) FROM item WHERE ok").fetchone()[0] == 2

    with connected(database) as conn:  # the same files, sent together: documented in README "Performance"
        conn.execute("DROP TABLE item; DELETE FROM _yoyo_migration; DELETE FROM _rds_migrations_history")
    apply_pending(database, catalog, TOGETHER)
    with connected(database) as conn:
        assert conn.execute("SELECT count(*) FROM item WHERE ok").fetchone()[0] == 0


def test_a_connection_lost_inside_a_message_is_reported_as_the_history_says(
    tmp_path: Path, database: Connection
) -> None:
    # The network drops while the second migration runs. The server does not notice and would go on with the
    # rest of the message: the session is ended, and the history read says what was applied.
    error = lose_the_connection_mid_message(tmp_path, database, database)
    assert isinstance(error, MigrationError), error
    report = error.report
    assert report.applied_ids == ("0001.a",) and applied_ids(database) == ["0001.a"]
    assert report.failed is not None and report.failed.migration_id == "0002.slow"
    assert not report.failed.outcome_unknown and "rolled back" in report.failed.outcome()
    assert report.pending == ("0002.slow", "0003.c") and not {"slow", "c"} & tables(database)
