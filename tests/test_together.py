"""Several migrations in one message (together.py, `policy.migrations_per_message`), on a real PostgreSQL: each
still in its own transaction with its history rows, the failing one named exactly, none after it run, the history
as if each had been sent alone; by default, after the first of a message only migrations that cannot read the
clock (clock.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.clock import statement_reads_the_clock
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

TOGETHER = POLICY.model_copy(update={"migrations_per_message": 20, "shared_now": "accepted"})

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
    assert next_group(migrations, 150000, 1) == 1  # migrations_per_message = 1: one message a migration
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


@pytest.mark.parametrize(("statement", "reads"), [
    ("CREATE TABLE a (id bigint, at timestamptz DEFAULT now() CHECK (at > '2020-01-01'))", False),  # stored
    ("CREATE INDEX a_id ON a (id) WHERE id > 0", False),
    ("ALTER TABLE a ADD COLUMN n int NOT NULL DEFAULT 0, ADD CONSTRAINT n_ok CHECK (n >= 0)", False),
    ("CREATE VIEW recent AS SELECT * FROM a WHERE at > now() - interval '1 day'", False),  # stored
    ("CREATE FUNCTION f() RETURNS timestamptz LANGUAGE sql AS 'SELECT now()'", False),
    ("COMMENT ON TABLE a IS 'made today'", False),
    ("-- only a comment", False),
    ("ALTER TABLE a ADD COLUMN seen timestamptz DEFAULT now()", True),  # filled in on the rows already there
    ("ALTER TABLE a ADD COLUMN d date NOT NULL DEFAULT CURRENT_DATE", True),
    ("ALTER TABLE a ADD COLUMN k text DEFAULT my_default()", True),  # any function: it may call now()
    ("CREATE TABLE b (at timestamptz DEFAULT 'now'::timestamptz)", True),  # folded in when the table is made
    ("CREATE TABLE b (d date DEFAULT 'Today')", True),
    ("CREATE INDEX a_lower ON a (lower(name))", True),
    ("ALTER TABLE a VALIDATE CONSTRAINT at_past", True),  # a stored CHECK (at <= now()) is evaluated on the rows
    ("ALTER TABLE a ALTER COLUMN n TYPE bigint", True),  # so are the table's CHECKs, after the rewrite
    ("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (CURRENT_DATE) TO (MAXVALUE)", True),
    ("INSERT INTO a (id) VALUES (1)", True),  # a default or a trigger may call now()
    ("UPDATE a SET n = 1", True),
    ("SELECT 1", True),
    ("DO $$ BEGIN PERFORM 1; END $$", True),
    ("SET lock_timeout = '1s'", True),
    ("CREATE MATERIALIZED VIEW m AS SELECT now()", True),  # evaluated
    ("CREATE TABLE broken (", True),  # not read: assumed to
])
def test_what_reads_the_clock(statement: str, reads: bool) -> None:
    assert statement_reads_the_clock(statement) is reads


NOTE_DDL = """
CREATE TABLE ddl_seen (object text, at timestamptz);
CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ddl_seen SELECT object_identity, now() FROM pg_event_trigger_ddl_commands()
    WHERE command_tag = 'CREATE TABLE' AND object_identity NOT LIKE '%\\_yoyo%' ESCAPE '\\'
      AND object_identity NOT LIKE '%\\_rds\\_migrations%' ESCAPE '\\';
END $$;
CREATE EVENT TRIGGER note_ddl ON ddl_command_end EXECUTE FUNCTION note_ddl();
"""


def test_by_default_a_migration_that_may_read_the_clock_only_leads_a_message(tmp_path: Path,
                                                                             database: Connection) -> None:
    """By default (20 a message, shared_now "never"), DDL that stores its expressions follows the migration before
    it in one message, and a migration that may read the clock (a seed) starts a message of its own: its now() is
    the one it would have had alone. An event trigger noting now() at each CREATE TABLE shows the messages (the
    one thing that can tell: README "Performance")."""
    with connected(database) as conn:
        conn.execute(NOTE_DDL)
    files = {"0001.a.sql": "CREATE TABLE a (id bigint, at timestamptz DEFAULT now());\n",
             "0002.b.sql": "CREATE TABLE b (id bigint);\n",
             "0003.seed.sql": "INSERT INTO a (id) VALUES (1);\nSELECT pg_sleep(0.05);\n",
             "0004.c.sql": "CREATE TABLE c (id bigint);\n"}
    apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    with connected(database) as conn:
        at = dict(conn.execute("SELECT object, at FROM ddl_seen").fetchall())
        seeded = conn.execute("SELECT at FROM a").fetchone()[0]
    assert at["public.a"] == at["public.b"], "0001 and 0002: one message"
    assert at["public.c"] == seeded > at["public.a"], "0003 leads a message of its own; 0004 follows it"
    assert POLICY.migrations_per_message == 20 and POLICY.shared_now == "never"  # the defaults this test is about


# An expression nested 700 deep (`'a' || 'a' || ...` parses left-deep): PostgreSQL reads it, and so did the walk
# over pglast's nodes; Python's json module stops at 1,000 levels of nesting, and clock.py raised its RecursionError.
DEEP = " || ".join(["'a'"] * 700)


@pytest.mark.parametrize(("statement", "reads"), [
    (f"CREATE VIEW v AS SELECT {DEEP} AS s", True),  # not read to the end: assumed to, as one pglast cannot read
    (f"INSERT INTO t VALUES ({DEEP})", True),
])
def test_a_deeply_nested_expression_is_read_not_a_crash(statement: str, reads: bool) -> None:
    assert statement_reads_the_clock(statement) is reads


def test_a_migration_with_a_deeply_nested_expression_after_another_is_applied(
    tmp_path: Path, database: Connection
) -> None:
    """Its clock is asked about because it follows another migration in a message: the run ended in a
    RecursionError traceback with nothing after 0001 applied."""
    files = {"0001.t.sql": "CREATE TABLE t (s text);\n", "0002.v.sql": f"CREATE VIEW v AS SELECT {DEEP} AS s;\n",
             "0003.u.sql": f"INSERT INTO t VALUES ({DEEP});\n"}
    apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    assert applied_ids(database) == ["0001.t", "0002.v", "0003.u"]
