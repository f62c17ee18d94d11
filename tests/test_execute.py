"""A transactional migration goes to the server as one message: the failing statement is still named,
and what the server could read differently goes statement by statement."""

from __future__ import annotations

import _thread
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.execute import command_tag_fits
from tasks.engine.migrations.results import MigrationError
from tests.helpers import (
    POLICY,
    SLEEP_WHILE_FLAGGED,
    SLEEPING,
    a_bug_when_applying,
    applied_ids,
    cli,
    dirty_state,
    end_the_session_while_it_sleeps,
    raise_sleep_flag,
    tables,
    url_of,
    write_migrations,
)

# ---- a transactional migration goes to the server as one message: the failing statement is still named ----


def failed_statement(tmp_path: Path, database: Connection, sql_text: str) -> tuple[int, str, str]:
    """Apply 0001.ok then 0002.bad (`sql_text`): (statement number, statement, SQLSTATE) of the failure,
    after checking that 0002 left nothing behind."""
    files = {"0001.ok.sql": "CREATE TABLE ok (id bigint);\n", "0002.bad.sql": sql_text}
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    failed = raised.value.report.failed
    assert failed is not None and failed.migration_id == "0002.bad"
    assert applied_ids(database) == ["0001.ok"] and tables(database) == {"ok"} | HISTORY_TABLES
    return failed.statement_number, failed.statement, failed.sqlstate


HISTORY_TABLES = {"_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock", "_rds_migrations_history",
                  "_rds_migrations_baseline", "_rds_migrations_schema",
                  "_rds_migrations_dirty"}


def test_the_failing_statement_is_named_past_comment_only_statements(tmp_path: Path, database: Connection) -> None:
    # A comment-only piece is no statement (PostgreSQL's scanner splits the file, as the server reads it); a
    # comment before a statement, or after it before its semicolon, stays with it.
    sql_text = (
        "CREATE TABLE a (id bigint);\n"
        "/* a comment /* nested */ on its own */\n-- and another\n;\n"
        "CREATE TABLE b (id bigint) -- a line comment, no semicolon after it\n;\n"
        "INSERT INTO a VALUES ('not a number');\n"
        "CREATE TABLE c (id bigint);\n"
    )
    number, statement, sqlstate = failed_statement(tmp_path, database, sql_text)
    assert (number, sqlstate) == (3, "22P02") and statement.startswith("INSERT INTO a VALUES ('not a number')")


def test_a_syntax_error_in_a_later_statement_is_named_and_nothing_runs(tmp_path: Path, database: Connection) -> None:
    number, statement, sqlstate = failed_statement(
        tmp_path, database, "CREATE TABLE a (id bigint);\nCREATE TABLE b (id bigint);\nCREATE TABEL c (id bigint);\n")
    assert (number, sqlstate) == (3, "42601") and statement.startswith("CREATE TABEL c")


def test_a_failing_commit_is_named_as_the_commit(tmp_path: Path, database: Connection) -> None:
    sql_text = (
        "CREATE TABLE parent (id bigint PRIMARY KEY);\n"
        "CREATE TABLE child (parent_id bigint REFERENCES parent DEFERRABLE INITIALLY DEFERRED);\n"
        "INSERT INTO child VALUES (1);\n"
    )
    assert failed_statement(tmp_path, database, sql_text) == (0, "COMMIT", "23503")


def test_the_server_ending_the_session_mid_migration_names_the_statement(
    tmp_path: Path, database: Connection
) -> None:
    files = {"0001.slow.sql": "CREATE TABLE slow (id bigint);\nSELECT pg_sleep(30);\nCREATE TABLE after (id bigint);\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    error = end_the_session_while_it_sleeps(database, lambda: apply_pending(database, catalog, POLICY))
    assert isinstance(error, MigrationError), error
    failed = error.report.failed
    assert failed is not None and (failed.statement_number, failed.sqlstate) == (2, "57P01")
    assert applied_ids(database) == [] and "slow" not in tables(database)


def test_an_unclosed_quote_is_named_as_statement_by_statement(tmp_path: Path, database: Connection) -> None:
    # As one message the quote swallows the rest (the history rows included); the server refuses it before
    # anything runs, and the statements then go one by one, so the error is the one the statement has alone.
    number, statement, sqlstate = failed_statement(
        tmp_path, database, "CREATE TABLE a (id bigint);\nINSERT INTO a VALUES ('abc);\n")
    assert (number, sqlstate) == (2, "42601") and statement.startswith("INSERT INTO a VALUES ('abc)")


def test_a_file_the_server_splits_differently_from_yoyo_is_not_misnamed(
    tmp_path: Path, database: Connection
) -> None:
    # yoyo's splitter (sqlparse) reads \' as an escaped quote and would join statements 2-4 into one; the server
    # runs them as three. Files are split by PostgreSQL's own scanner, so the numbers are the server's.
    sql_text = (
        "CREATE TABLE t (s text);\n"
        "INSERT INTO t VALUES ('C:\\');\n"
        "CREATE TABLE u (id int PRIMARY KEY);\n"
        "INSERT INTO t VALUES ('x');\n"
        "INSERT INTO u VALUES (1);\n"
        "INSERT INTO u VALUES (1);\n"
    )
    number, statement, sqlstate = failed_statement(tmp_path, database, sql_text)
    assert (number, sqlstate, statement) == (6, "23505", "INSERT INTO u VALUES (1)")


def test_standard_conforming_strings_set_inside_a_migration_reads_as_written(
    tmp_path: Path, database: Connection
) -> None:
    # As one message the server would read the INSERT before the SET runs, and store two backslashes.
    files = {"0001.legacy.sql": (
        "CREATE TABLE paths (p text);\n"
        "SET standard_conforming_strings = off;\n"
        "INSERT INTO paths VALUES ('C:\\\\x');\n"
        "SET standard_conforming_strings = on;\n"
    )}
    apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    with connected(database) as conn:
        assert conn.execute("SELECT p FROM paths").fetchone()[0] == "C:\\x"


def test_a_client_encoding_set_by_one_migration_does_not_reach_the_next(tmp_path: Path, database: Connection) -> None:
    """`SET client_encoding` (pg_dump's output starts with one): the next migration's message is still written and
    read in the session's own encoding, and both are applied and recorded, as the run says."""
    write_migrations(tmp_path, {
        "0001.latin.sql": "CREATE TABLE t (s text);\nSET client_encoding = 'LATIN1';\nINSERT INTO t VALUES ('café');\n",
        "0002.check.sql": "INSERT INTO t VALUES ('check ✓');\n",
    })
    result = cli("run", "--database-url", url_of(database), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["applied"] == ["0001.latin", "0002.check"]
    assert applied_ids(database) == ["0001.latin", "0002.check"]
    with connected(database) as conn:
        assert [r[0] for r in conn.execute("SELECT s FROM t ORDER BY s")] == ["café", "check ✓"]


def test_a_client_encoding_python_has_no_codec_for_is_reset_before_the_next_migration(
    tmp_path: Path, database: Connection
) -> None:
    """`SET client_encoding = 'EUC_TW'` (psycopg has no codec for it): the session is put back to its own
    encoding by the server's name for it, so the next migration is still sent as written; both are recorded."""
    files = {"0001.euc-tw.sql": "CREATE TABLE t (s text);\nSET client_encoding = 'EUC_TW';\n",
             "0002.check.sql": "INSERT INTO t SELECT 'check ✓ ' || current_setting('client_encoding');\n"}
    apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    assert applied_ids(database) == ["0001.euc-tw", "0002.check"]
    with connected(database) as conn:
        assert conn.execute("SELECT s FROM t").fetchone()[0] == "check ✓ UTF8"


def test_a_non_transactional_migration_that_sets_an_encoding_python_has_no_codec_for_is_recorded(
    tmp_path: Path, database: Connection
) -> None:
    """A non-transactional migration runs statement by statement: after its `SET client_encoding = 'EUC_TW'` psycopg
    could write neither its next statement nor its history row, so it stayed dirty with no failure of its own. The
    session's encoding is put back before each statement and before the record, as before each message: its
    statements reach the server as written, and it is recorded."""
    files = {"0001.euc-tw.sql": "-- transactional: false\nCREATE TABLE t (s text);\nSET client_encoding = 'EUC_TW';\n"
                                "INSERT INTO t VALUES ('between ✓');\nSET client_encoding = 'EUC_TW';\n",
             "0002.check.sql": "INSERT INTO t SELECT 'check ✓ ' || current_setting('client_encoding');\n"}
    apply_pending(database, read_catalog(write_migrations(tmp_path, files), tmp_path), POLICY)
    assert applied_ids(database) == ["0001.euc-tw", "0002.check"] and dirty_state(database) == []
    with connected(database) as conn:
        assert [r[0] for r in conn.execute("SELECT s FROM t ORDER BY s")] == ["between ✓", "check ✓ UTF8"]


def test_a_transaction_left_open_after_setting_an_encoding_python_has_no_codec_for_is_rolled_back(
    tmp_path: Path, database: Connection
) -> None:
    """A non-transactional file opens a transaction, sets EUC_TW and ends without COMMIT: the run says it was rolled
    back, but psycopg could not write that ROLLBACK in EUC_TW, so the transaction stayed open and the mark's
    removal was written inside it."""
    files = {"0001.open.sql": "-- transactional: false\nBEGIN;\nCREATE TABLE t (s text);\n"
                              "SET client_encoding = 'EUC_TW';\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, POLICY)
    assert "it was rolled back: end it with COMMIT" in str(raised.value), str(raised.value)
    assert "t" not in tables(database) and applied_ids(database) == [] and dirty_state(database) == []
    apply_pending(database, read_catalog(write_migrations(tmp_path, {
        "0001.open.sql": "-- transactional: false\nBEGIN;\nCREATE TABLE t (s text);\nSET client_encoding = 'EUC_TW';\n"
                         "COMMIT;\n"}), tmp_path), POLICY)
    assert applied_ids(database) == ["0001.open"] and "t" in tables(database)
    with connected(database) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0


def test_sessions_that_start_in_latin1_still_send_a_utf8_file_as_written(tmp_path: Path,
                                                                         database: Connection) -> None:
    """The database's settings start sessions in LATIN1; the file holds a character LATIN1 cannot carry. The
    tool's sessions speak UTF8 (the files are read as UTF-8), so it reaches the UTF8 database as written."""
    with connected(database) as conn:
        conn.execute(f"ALTER DATABASE {database.dbname} SET client_encoding = 'LATIN1'")
    write_migrations(tmp_path, {"0001.t.sql": "CREATE TABLE t (s text);\n",
                                "0002.check.sql": "INSERT INTO t VALUES ('check ✓');\n"})
    result = cli("run", "--database-url", url_of(database), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert applied_ids(database) == ["0001.t", "0002.check"]
    with connected(database) as conn:
        assert conn.execute("SELECT s FROM t").fetchone()[0] == "check ✓"


NO_REHEARSAL = """
[environments.mine]
tier = "staging"
aws = { region = "eu-west-1", endpoint_url = "http://127.0.0.1:9" }
credentials = { kind = "url_env", variable = "DATABASE_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
rehearsal = { kind = "none" }
policy = { snapshot_required = false, rehearsal_required = false }
"""


def test_an_unexpected_error_while_applying_keeps_what_was_applied_in_the_summary(
    tmp_path: Path, database: Connection, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine fails with an error that is not a migration's failure at 0003 (a bug, injected: see
    a_bug_when_applying). The summary still says what the history holds (0001 and 0002), not "none"."""
    from flows.cli import main

    (tmp_path / "environments.toml").write_text(NO_REHEARSAL, encoding="utf-8")
    write_migrations(tmp_path, {"0001.t.sql": "CREATE TABLE t (s text);\n",
                                "0002.u.sql": "CREATE TABLE u (s text);\n",
                                "0003.check.sql": "-- transactional: false\nCREATE TABLE w (s text);\n"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    a_bug_when_applying(monkeypatch, "0003.check")
    with pytest.raises(RuntimeError, match="a bug in the engine"):  # a bug is not caught: its traceback is wanted
        main(["run", "--env", "mine"])
    said = "".join(capsys.readouterr())
    assert applied_ids(database) == ["0001.t", "0002.u"], said[-3000:]
    assert "FAILED at step migrate" in said and "migration 0003.check failed" not in said, said[-3000:]
    assert re.search(r"applied: +0001\.t, 0002\.u\n", said) and "no migration was applied" not in said, said


@pytest.fixture
def latin1_database(database: Connection) -> Iterator[Connection]:
    """A database whose own encoding is LATIN1, on the test server."""
    name = f"{database.dbname}_latin1"
    with connected(database) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        yield database.with_database(name)
    finally:
        with connected(database) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_character_a_latin1_database_cannot_store_fails_as_that_migration(tmp_path: Path,
                                                                           latin1_database: Connection) -> None:
    """The server converts the UTF-8 text: a character its encoding cannot store is the migration's failure
    (SQLSTATE 22P05), named, rolled back, with what was applied before it; never a traceback."""
    write_migrations(tmp_path, {"0001.t.sql": "CREATE TABLE t (s text);\nINSERT INTO t VALUES ('café');\n",
                                "0002.check.sql": "INSERT INTO t VALUES ('check ✓');\n"})
    result = cli("run", "--database-url", url_of(latin1_database), cwd=tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 1 and applied_ids(latin1_database) == ["0001.t"], said[-3000:]
    assert "migration 0002.check failed (SQLSTATE 22P05)" in said and "Traceback" not in said, said[-3000:]
    assert re.search(r"applied: +0001\.t\n", said) and "no migration was applied" not in said, said
    with connected(latin1_database) as conn:
        assert conn.execute("SELECT s FROM t").fetchone()[0] == "café"


@pytest.mark.parametrize(("statement", "tag", "fits"), [
    ("CREATE TABLE a (id int)", b"CREATE TABLE", True),
    ("create table a as select 1", b"SELECT 1", True),
    ("/* first */ -- then\nUPDATE a SET id = 2", b"UPDATE 3", True),
    ("WITH x AS (SELECT 1) INSERT INTO a SELECT * FROM x", b"INSERT 0 1", True),
    ("INSERT INTO a VALUES (1)", b"CREATE TABLE", False),
    ("ALTER TABLE a ADD b int", b"INSERT 0 1", False),
])
def test_command_tags_show_where_the_servers_split_differs(statement: str, tag: bytes, fits: bool) -> None:
    assert command_tag_fits(statement, tag) is fits


def test_copy_from_the_client_is_failed_and_nothing_is_applied(tmp_path: Path, database: Connection) -> None:
    # Validation refuses such a file (tests/test_validate.py); the engine on its own must not hang or record it.
    clean = read_catalog(write_migrations(tmp_path, {"0001.copy.sql": "CREATE TABLE c (id int);\n"}), tmp_path)
    copying = replace(clean.migrations[0], statements=(
        "CREATE TABLE c (id int);", "COPY c FROM STDIN;", "CREATE TABLE d (id int);"))
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, replace(clean, migrations=(copying,)), POLICY)
    failed = raised.value.report.failed
    assert failed is not None and failed.statement_number == 2 and "cannot COPY to or from the client" in failed.message
    assert "rolled back" in str(raised.value)  # the COPY was failed, so the session rolled back and stayed usable
    assert applied_ids(database) == [] and not {"c", "d"} & tables(database)


def test_ctrl_c_during_a_migration_rolls_it_back_and_releases_the_lock(tmp_path: Path, database: Connection) -> None:
    raise_sleep_flag(database)
    files = {"0001.slow.sql": (
        "CREATE TABLE slow (id bigint);\n"
        + SLEEP_WHILE_FLAGGED
    )}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)

    def interrupt_when_sleeping() -> None:
        with connected(database, application_name="test-watcher") as watcher:
            deadline = time.monotonic() + 30
            while not watcher.execute(SLEEPING).fetchone() and time.monotonic() < deadline:
                time.sleep(0.05)
        _thread.interrupt_main()

    interrupter = threading.Thread(target=interrupt_when_sleeping)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):  # not an error from cleaning up after it
        apply_pending(database, catalog, POLICY)
    interrupter.join()
    assert applied_ids(database) == [] and "slow" not in tables(database)
    with connected(database) as conn:
        conn.execute("DELETE FROM sleep_flag")
    report = apply_pending(database, catalog, POLICY.model_copy(update={"migration_lock_wait_seconds": 5}))
    assert report.applied_ids == ("0001.slow",)
