"""Rolling back to a version on a real PostgreSQL: newest first, each rollback file and the removal of its
history rows in one transaction, refused before anything when a rollback file is missing, all or nothing per
migration, lock-timeout retries, non-transactional rollbacks alone; and `run --target` below the head."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from yoyo import get_backend, read_migrations

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import DirtyDatabase, HistoryMismatch
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog, read_catalog
from tasks.engine.migrations.history import History
from tasks.engine.migrations.plan import make_plan, plan
from tasks.engine.migrations.resolve import explain_state, resolve_dirty
from tasks.engine.migrations.rollback import RollbackError, RollbackRefused, roll_back_to
from tasks.engine.migrations.rollback_plan import make_rollback_plan, plan_rollback
from tasks.engine.migrations.schema import read_schema
from tests.helpers import POLICY, applied_ids, dirty_state, tables, write_migrations

WITH_ROLLBACKS = {
    "0001.users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
    "0001.users.rollback.sql": "DROP TABLE users;\n",
    "0002.accounts.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY);\nINSERT INTO accounts VALUES (1);\n",
    "0002.accounts.rollback.sql": "DROP TABLE accounts;\n",
    "0003.devices.sql": "CREATE TABLE devices (id bigint PRIMARY KEY);\n",
    "0003.devices.rollback.sql": "DROP TABLE devices;\n",
}


def applied(tmp_path: Path, database: Connection, files: dict[str, str]) -> Catalog:
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    assert not catalog.problems
    apply_pending(database, catalog, POLICY, git_sha="abc1234")
    return catalog


def fingerprint(database: Connection) -> dict[str, object]:
    """The whole schema (the tool's tables included) and every row of every table: equal means unchanged."""
    with connected(database) as conn:
        found: dict[str, object] = {"schema": read_schema(conn, ignore=()).to_json()}
        for (table,) in conn.execute("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                     "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchall():
            found[table] = conn.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                                        f"FROM {table} t").fetchone()[0]  # type: ignore[index]
    return found


def yoyo_pending(database: Connection, directory: Path) -> list[str]:
    """What yoyo itself would apply, read with its own backend."""
    password = quote(database.password.get_secret_value(), safe="")
    backend = get_backend(
        f"postgresql+psycopg://{database.user}:{password}@{database.host}:{database.port}/{database.dbname}")
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(directory)))]
    finally:
        backend.connection.close()


def log_rows(database: Connection) -> list[tuple[str, str]]:
    with connected(database) as conn:
        return conn.execute("SELECT migration_id, operation FROM _yoyo_log ORDER BY created_at_utc, id").fetchall()


def checksummed(database: Connection) -> list[str]:
    with connected(database) as conn:
        return [r[0] for r in conn.execute("SELECT migration_id FROM _rds_migrations_history ORDER BY 1")]


# ---- the acceptance tests of issue 12 item 2 -----------------------------------------------------------------


def test_to_one_below_the_head_undoes_exactly_one_migration_and_its_history_rows(
    tmp_path: Path, database: Connection
) -> None:
    catalog = applied(tmp_path, database, WITH_ROLLBACKS)
    planned = plan_rollback(database, catalog, "2")
    assert planned.undo == ("0003.devices",) and planned.keep == ("0001.users", "0002.accounts")
    assert not planned.problems and "1. 0003.devices" in planned.to_text()

    report = roll_back_to(database, catalog, POLICY, "2", git_sha="def5678")

    assert report.rolled_back_ids == ("0003.devices",) and report.rolled_back[0].attempts == 1
    assert report.failed is None and report.applied == ("0001.users", "0002.accounts")
    assert tables(database) >= {"users", "accounts"} and "devices" not in tables(database)
    assert applied_ids(database) == ["0001.users", "0002.accounts"]  # yoyo's table
    assert checksummed(database) == ["0001.users", "0002.accounts"]  # ours
    assert log_rows(database)[-1] == ("0003.devices", "rollback")
    assert yoyo_pending(database, catalog.directory) == ["0003.devices"]  # yoyo itself agrees
    with connected(database) as conn:
        assert conn.execute("SELECT * FROM accounts").fetchall() == [(1,)]  # what stays is untouched
    # and it applies again as any pending migration does
    assert apply_pending(database, catalog, POLICY).applied_ids == ("0003.devices",)


def test_to_zero_undoes_every_migration_newest_first(tmp_path: Path, database: Connection) -> None:
    catalog = applied(tmp_path, database, WITH_ROLLBACKS)
    seen: list[tuple[str, int, int]] = []

    class Observer:
        def rolled_back(self, migration: object, position: int, count: int) -> None:
            seen.append((migration.id, position, count))  # type: ignore[attr-defined]

        def failed(self, failure: object, position: int, count: int) -> None:
            raise AssertionError("nothing fails here")

    report = roll_back_to(database, catalog, POLICY, "0", observe=Observer())

    undone = ("0003.devices", "0002.accounts", "0001.users")
    assert report.rolled_back_ids == undone and report.applied == ()
    assert seen == [(undone[0], 1, 3), (undone[1], 2, 3), (undone[2], 3, 3)]
    assert [row for row in log_rows(database) if row[1] == "rollback"] == [(i, "rollback") for i in undone]
    assert applied_ids(database) == [] and checksummed(database) == []
    assert not {"users", "accounts", "devices"} & tables(database)
    assert yoyo_pending(database, catalog.directory) == list(reversed(undone))
    # Nothing left to undo: an empty plan, not an error.
    again = plan_rollback(database, catalog, "0")
    assert again.undo == () and not again.problems and "nothing to undo" in again.to_text()
    assert roll_back_to(database, catalog, POLICY, "0").rolled_back == ()


def test_a_missing_rollback_file_refuses_with_nothing_changed_naming_it(tmp_path: Path, database: Connection) -> None:
    files = {name: text for name, text in WITH_ROLLBACKS.items() if name != "0002.accounts.rollback.sql"}
    catalog = applied(tmp_path, database, files)
    before = fingerprint(database)

    planned = plan_rollback(database, catalog, "1")
    assert planned.undo == ("0003.devices", "0002.accounts")
    assert [p for p in planned.problems if "0002.accounts.sql" in p and "no rollback file" in p
            and "0002.accounts.rollback.sql" in p]
    with pytest.raises(RollbackRefused, match=r"0002\.accounts\.sql: .*no rollback file") as raised:
        roll_back_to(database, catalog, POLICY, "1")
    assert "nothing was undone" in str(raised.value)
    assert fingerprint(database) == before  # not even 0003, which has its rollback file, was undone
    # Above the migration without one, a rollback is fine.
    assert roll_back_to(database, catalog, POLICY, "0002.accounts").rolled_back_ids == ("0003.devices",)


def test_a_failing_rollback_file_leaves_the_database_exactly_as_it_was(tmp_path: Path, database: Connection) -> None:
    files = {
        "0001.users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
        "0002.teams.sql": "CREATE TABLE teams (id bigint PRIMARY KEY, name text);\nINSERT INTO teams VALUES (1, 'a');\n"
                          "ALTER TABLE users ADD COLUMN team_id bigint;\n",
        "0002.teams.rollback.sql": "ALTER TABLE users DROP COLUMN team_id;\nDROP TABLE teams;\n",
    }
    catalog = applied(tmp_path, database, files)
    with connected(database) as conn:  # the application's own object, depending on the table
        conn.execute("CREATE VIEW team_names AS SELECT name FROM teams")
    before = fingerprint(database)

    with pytest.raises(RollbackError) as raised:
        roll_back_to(database, catalog, POLICY, "1")

    failed = raised.value.report.failed
    assert failed is not None and failed.migration_id == "0002.teams" and failed.sqlstate == "2BP01"
    assert failed.statement.rstrip(";") == "DROP TABLE teams" and failed.statement_number == 2 and failed.transactional
    message = str(raised.value)
    assert "rollback of 0002.teams failed (SQLSTATE 2BP01)" in message and "DROP TABLE teams" in message
    assert "0002.teams.rollback.sql" in message and "0002.teams stays applied" in message
    assert raised.value.report.rolled_back == () and raised.value.report.not_undone == ("0002.teams",)
    assert raised.value.report.applied == ("0001.users", "0002.teams")
    assert fingerprint(database) == before  # the first statement's DROP COLUMN was undone with the rest


def test_a_failure_midway_keeps_what_was_undone_undone_and_the_rest_applied(
    tmp_path: Path, database: Connection
) -> None:
    files = dict(WITH_ROLLBACKS)
    files["0002.accounts.rollback.sql"] = "DO $$ BEGIN RAISE EXCEPTION 'accounts hold money'; END $$;\n"
    catalog = applied(tmp_path, database, files)

    with pytest.raises(RollbackError) as raised:
        roll_back_to(database, catalog, POLICY, "0")

    report = raised.value.report
    assert report.rolled_back_ids == ("0003.devices",)
    assert report.failed is not None and report.failed.sqlstate == "P0001"
    assert report.not_undone == ("0002.accounts", "0001.users")
    assert report.applied == ("0001.users", "0002.accounts") == tuple(applied_ids(database))
    assert "devices" not in tables(database) and "accounts" in tables(database)
    assert yoyo_pending(database, catalog.directory) == ["0003.devices"]
    shown = json.loads(json.dumps(report.to_json()))
    assert shown["failed"]["migration_id"] == "0002.accounts" and "0002.accounts stays applied" in shown["outcome"]
    assert "rollback of 0002.accounts failed (SQLSTATE P0001)" in report.to_text()
    # Not "the database is as it was before this rollback": 0003.devices, undone by it, stays undone.
    assert "as it was before this rollback" not in str(raised.value)
    assert "transaction was rolled back: 0002.accounts stays applied, as it was" in str(raised.value)


# ---- the session, the lock, the retries ---------------------------------------------------------------------


def test_each_rollback_starts_from_the_starting_state(tmp_path: Path, database: Connection) -> None:
    files = dict(WITH_ROLLBACKS)
    # A rollback that moves the search_path: its history rows still go (schema-qualified), and the next
    # rollback, whose DROP is unqualified, starts from the session's own search_path again.
    files["0003.devices.rollback.sql"] = "SET search_path TO pg_catalog;\nDROP TABLE public.devices;\n"
    catalog = applied(tmp_path, database, files)
    report = roll_back_to(database, catalog, POLICY, "0")
    assert report.rolled_back_ids == ("0003.devices", "0002.accounts", "0001.users")
    assert applied_ids(database) == [] and checksummed(database) == []


def test_statement_by_statement_the_removal_is_still_in_the_rollbacks_transaction(
    tmp_path: Path, database: Connection
) -> None:
    # standard_conforming_strings in a file: sent statement by statement (see execute.read_differently_as_one).
    files = dict(WITH_ROLLBACKS)
    files["0003.devices.rollback.sql"] = "SET LOCAL standard_conforming_strings = on;\nDROP TABLE devices;\n"
    files["0002.accounts.rollback.sql"] = ("SET LOCAL standard_conforming_strings = on;\nDROP TABLE accounts;\n"
                                           "SELECT 1 / 0;\n")
    catalog = applied(tmp_path, database, files)
    assert roll_back_to(database, catalog, POLICY, "2").rolled_back_ids == ("0003.devices",)
    assert applied_ids(database) == ["0001.users", "0002.accounts"] and "devices" not in tables(database)
    before = fingerprint(database)
    with pytest.raises(RollbackError) as raised:
        roll_back_to(database, catalog, POLICY, "1")
    assert raised.value.report.failed.sqlstate == "22012"  # type: ignore[union-attr]
    assert raised.value.report.failed.statement_number == 3  # type: ignore[union-attr]
    assert fingerprint(database) == before


def test_a_lock_timeout_is_rolled_back_and_retried_until_the_reader_ends(tmp_path: Path, database: Connection) -> None:
    with connected(database) as setup:
        setup.execute("CREATE TABLE busy (id bigint)")
    files = {"0001.note.sql": "ALTER TABLE busy ADD COLUMN note text;\n",
             "0001.note.rollback.sql": "ALTER TABLE busy DROP COLUMN note;\n"}
    catalog = applied(tmp_path, database, files)
    policy = POLICY.model_copy(update={"lock_timeout_ms": 100, "lock_timeout_retries": 20,
                                       "lock_retry_base_delay_seconds": 0.05, "lock_retry_max_delay_seconds": 0.2})
    reader = database.connect(autocommit=False)
    reader.execute("SELECT * FROM busy")  # ACCESS SHARE until the transaction ends
    threading.Timer(1.0, reader.rollback).start()
    try:
        report = roll_back_to(database, catalog, policy, "0")
    finally:
        reader.close()
    assert report.rolled_back[0].attempts > 1
    assert applied_ids(database) == []
    with connected(database) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'busy'"
                            ).fetchone()[0] == 1  # type: ignore[index]


def test_a_lock_timeout_gives_up_after_the_retries_with_the_database_unchanged(
    tmp_path: Path, database: Connection
) -> None:
    with connected(database) as setup:
        setup.execute("CREATE TABLE busy (id bigint)")
    files = {"0001.note.sql": "ALTER TABLE busy ADD COLUMN note text;\n",
             "0001.note.rollback.sql": "ALTER TABLE busy DROP COLUMN note;\n"}
    catalog = applied(tmp_path, database, files)
    policy = POLICY.model_copy(update={"lock_timeout_ms": 50, "lock_timeout_retries": 2,
                                       "lock_retry_base_delay_seconds": 0.01})
    reader = database.connect(autocommit=False)
    reader.execute("SELECT * FROM busy")
    try:
        before = fingerprint(database)
        with pytest.raises(RollbackError) as raised:
            roll_back_to(database, catalog, policy, "0")
        after = fingerprint(database)
    finally:
        reader.close()
    failed = raised.value.report.failed
    assert failed is not None and failed.sqlstate == "55P03" and failed.attempts == 3
    assert "after 3 attempts" in str(raised.value) and "pg_blocking_pids" in str(raised.value)
    assert after == before


# ---- non-transactional rollbacks ------------------------------------------------------------------------------

INDEXED = {
    "0001.t.sql": "CREATE TABLE t (id bigint, v text);\n",
    "0001.t.rollback.sql": "DROP TABLE t;\n",
    "0002.t-index.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY t_v ON t (v);\n",
    "0002.t-index.rollback.sql": "DROP INDEX CONCURRENTLY t_v;\n",  # refused inside a transaction block
}


def index_exists(database: Connection, name: str) -> bool:
    with connected(database) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]  # type: ignore[index]


def test_a_non_transactional_rollback_runs_alone(tmp_path: Path, database: Connection) -> None:
    catalog = applied(tmp_path, database, INDEXED)
    assert plan_rollback(database, catalog, "1").non_transactional == ("0002.t-index",)
    report = roll_back_to(database, catalog, POLICY, "1")
    assert report.rolled_back_ids == ("0002.t-index",)
    assert not index_exists(database, "t_v") and "t" in tables(database)
    assert applied_ids(database) == ["0001.t"] and checksummed(database) == ["0001.t"]
    assert dirty_state(database) == [] and log_rows(database)[-1] == ("0002.t-index", "rollback")


def test_a_non_transactional_rollback_that_sets_an_encoding_python_has_no_codec_for_is_undone(
    tmp_path: Path, database: Connection
) -> None:
    """After its `SET client_encoding = 'EUC_TW'` psycopg could not write the next statement's dirty-mark move: the
    rollback failed with 'codec not available' and stayed dirty. The session's encoding is put back first."""
    files = {"0001.t.sql": "CREATE TABLE t (v int);\n",
             "0002.t-index.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY t_v ON t (v);\n",
             "0002.t-index.rollback.sql": "-- transactional: false\nSET client_encoding = 'EUC_TW';\n"
                                          "DROP INDEX CONCURRENTLY t_v;\nSET client_encoding = 'EUC_TW';\n"}
    catalog = applied(tmp_path, database, files)
    assert roll_back_to(database, catalog, POLICY, "1").rolled_back_ids == ("0002.t-index",)
    assert not index_exists(database, "t_v") and applied_ids(database) == ["0001.t"] and dirty_state(database) == []


def test_a_non_transactional_rollback_stopped_halfway_is_dirty_until_resolved(
    tmp_path: Path, database: Connection
) -> None:
    files = dict(INDEXED)
    files["0002.t-index.rollback.sql"] = "DROP INDEX CONCURRENTLY t_v;\nDROP INDEX CONCURRENTLY no_such_index;\n"
    catalog = applied(tmp_path, database, files)

    with pytest.raises(RollbackError) as raised:
        roll_back_to(database, catalog, POLICY, "1", environment="staging")

    failed = raised.value.report.failed
    assert failed is not None and failed.dirty and failed.sqlstate == "42704" and failed.statement_number == 2
    assert "rds-migrations resolve --env staging 0002.t-index --mark-not-applied" in str(raised.value)
    assert dirty_state(database) == [("0002.t-index", "failed", 2)]
    with connected(database) as conn:  # the mark says a rollback left it, not the migration
        mark = conn.execute("SELECT message, applied_through FROM _rds_migrations_dirty").fetchone()
    assert mark is not None and mark[0].startswith("rolling back (0002.t-index.rollback.sql): ") and mark[1] == 1
    assert applied_ids(database) == ["0001.t"] and raised.value.report.applied == ("0001.t",)
    with pytest.raises(DirtyDatabase):
        apply_pending(database, catalog, POLICY)
    with pytest.raises(DirtyDatabase):
        roll_back_to(database, catalog, POLICY, "0")
    # `resolve` explains it with the rollback file's statements, not the migration's.
    clean, explanation = explain_state(database, catalog, environment="staging")
    assert not clean and "its rollback file (0002.t-index.rollback.sql) was running" in explanation
    assert "1. ran: DROP INDEX CONCURRENTLY t_v" in explanation
    assert "2. FAILED: DROP INDEX CONCURRENTLY no_such_index" in explanation
    # The operator finishes the rollback by hand; the migration is pending again and applies.
    resolve_dirty(database, catalog, "0002.t-index", mark_applied=False, policy=POLICY)
    assert apply_pending(database, catalog, POLICY).applied_ids == ("0002.t-index",)
    assert index_exists(database, "t_v")


def test_a_non_transactional_rollback_failing_first_leaves_it_applied(tmp_path: Path, database: Connection) -> None:
    files = dict(INDEXED)
    files["0002.t-index.rollback.sql"] = "DROP INDEX CONCURRENTLY no_such_index;\n"
    catalog = applied(tmp_path, database, files)

    with pytest.raises(RollbackError) as raised:
        roll_back_to(database, catalog, POLICY, "1")

    failed = raised.value.report.failed
    assert failed is not None and not failed.dirty and failed.attempts == 1
    assert "nothing was undone; 0002.t-index stays applied" in str(raised.value)
    assert applied_ids(database) == ["0001.t", "0002.t-index"] and dirty_state(database) == []
    assert checksummed(database) == ["0001.t", "0002.t-index"] and index_exists(database, "t_v")
    assert not plan(database, catalog).problems  # recorded again with its checksum: the next run is clean


# ---- refusals, read from the plan (no database) ---------------------------------------------------------------


def test_the_plan_refuses_what_it_cannot_roll_back(tmp_path: Path) -> None:
    files = dict(WITH_ROLLBACKS)
    files["0003.devices.rollback.sql"] = "DROP TABLE devices;\nCOMMIT;\n"
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    checksums = {m.id: m.checksum for m in catalog.migrations}
    history = History(applied=catalog.ids, checksums=checksums)

    assert "--to '9' names no migration" in make_rollback_plan(catalog, history, "9").problems[0]
    ending = make_rollback_plan(catalog, history, "2").problems
    assert ending and "0003.devices.rollback.sql: statement 2 is `COMMIT`" in ending[0]
    edited = History(applied=catalog.ids, checksums={**checksums, "0001.users": "0" * 64})
    assert any("0001.users.sql: edited after it was applied" in p
               for p in make_rollback_plan(catalog, edited, "2").problems)
    gone = History(applied=(*catalog.ids, "0004.gone"), checksums=checksums)
    assert any("0004.gone: applied to the database but missing" in p
               for p in make_rollback_plan(catalog, gone, "2").problems)

    clean = make_rollback_plan(catalog, history, "0001.users")
    assert clean.undo == ("0003.devices", "0002.accounts") and clean.keep == ("0001.users",)
    assert json.loads(json.dumps(clean.to_json()))["undo"] == ["0003.devices", "0002.accounts"]
    # Undone in reverse APPLY order, whatever the file order (a migration applied out of order).
    shuffled = History(applied=("0001.users", "0003.devices", "0002.accounts"), checksums=checksums)
    assert make_rollback_plan(catalog, shuffled, "1").undo == ("0002.accounts", "0003.devices")
    assert make_rollback_plan(catalog, History(), "0").undo == ()


def test_run_with_a_target_below_the_applied_head_points_at_rollback(tmp_path: Path, database: Connection) -> None:
    catalog = applied(tmp_path, database, WITH_ROLLBACKS)
    problems = plan(database, catalog, target="1", environment="staging").problems
    assert any("below the newest applied migration (0003.devices)" in p
               and "`rds-migrations rollback --env staging --to 1`" in p for p in problems)
    with pytest.raises(HistoryMismatch, match="rds-migrations rollback --env NAME --to 0002.accounts"):
        apply_pending(database, catalog, POLICY, target="0002.accounts")
    assert not plan(database, catalog, target="3").problems  # at the head: nothing to do, no problem

    # Allowed out of order, a target below the head that has pending migrations up to it applies them.
    history = History(applied=("0001.users", "0003.devices"))
    current = make_plan(catalog, history, target="2", allow_out_of_order=True)
    assert current.pending == ("0002.accounts",) and not current.problems
    assert make_plan(catalog, history, target="1", allow_out_of_order=True).problems


def test_the_command_line_rolls_back_one_below_the_head_and_says_so_in_json(tmp_path: Path,
                                                                            database: Connection) -> None:
    import json

    from tests.helpers import cli, url_of

    write_migrations(tmp_path, WITH_ROLLBACKS)
    assert cli("run", "--database-url", url_of(database), cwd=tmp_path).returncode == 0
    target = cli("run", "--database-url", url_of(database), "--target", "1", cwd=tmp_path)
    assert target.returncode == 1 and "rds-migrations rollback" in target.stderr  # a run never undoes

    planned = cli("rollback", "--database-url", url_of(database), "--to", "2", "--dry-run", "--json", cwd=tmp_path)
    assert planned.returncode == 0 and "0003.devices" in planned.stderr
    dry = json.loads(planned.stdout)  # the plan, and nothing rolled back
    assert dry["planned"] == ["0003.devices"] and dry["rolled_back"] == []
    assert applied_ids(database) == ["0001.users", "0002.accounts", "0003.devices"]  # a dry run writes nothing

    result = cli("rollback", "--database-url", url_of(database), "--to", "2", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1 and [m["id"] for m in document["rolled_back"]] == ["0003.devices"]
    assert "Rollback SUCCEEDED" in result.stderr
    assert applied_ids(database) == ["0001.users", "0002.accounts"] and "devices" not in tables(database)
    assert re.search(r"still applied: +2 \(the newest 0002\.accounts\)\n", result.stderr), result.stderr[-3000:]


def test_a_failed_command_still_prints_one_json_document_with_what_it_did(tmp_path: Path,
                                                                        database: Connection) -> None:
    """`--json` promises one document on stdout: a rollback that failed after undoing one migration says which
    (it said "rolled_back": []), a failed run says what failed (it said only "outcome": "failed"), and a
    command that failed before it had a result (a plan on a database out of reach) gives its exit code and
    error (stdout was empty)."""
    import json

    from tests.helpers import cli, url_of

    write_migrations(tmp_path, WITH_ROLLBACKS)
    assert cli("run", "--database-url", url_of(database), cwd=tmp_path).returncode == 0
    write_migrations(tmp_path, {"0002.accounts.rollback.sql": "DROP TABLE no_such_table;\n"})  # broken since
    undo = cli("rollback", "--database-url", url_of(database), "--to", "1", "--json", cwd=tmp_path)
    assert undo.returncode == 1, undo.stderr[-3000:]
    document = json.loads(undo.stdout)
    assert [m["id"] for m in document["rolled_back"]] == ["0003.devices"] and document["exit_code"] == 1

    write_migrations(tmp_path, {"0004.broken.sql": "SELECT 1 / 0;\n"})
    failed = cli("run", "--database-url", url_of(database), "--json", cwd=tmp_path)
    document = json.loads(failed.stdout)
    assert failed.returncode == 1 and document["outcome"] == "failed" and document["exit_code"] == 1
    assert "22012" in json.dumps(document) and "0004.broken" in json.dumps(document), document

    gone = url_of(database).replace(f":{database.port}/", ":9/")
    for command in ("plan", "status", "drift"):
        result = cli(command, "--database-url", gone, "--json", cwd=tmp_path)
        document = json.loads(result.stdout)
        assert result.returncode == 1 and document["exit_code"] == 1 and document["command"] == command
        assert document["error"] in result.stderr


def test_the_rollback_flow_undoes_through_prefect_tasks_and_names_its_run(
    tmp_path: Path, database: Connection, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    """The `rollback` deployment's flow: the same pipeline with each step a task run of the flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.rollback import rollback
    from tests.helpers import PROJECT, url_of

    write_migrations(tmp_path, WITH_ROLLBACKS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(PROJECT / "deployments/environments.toml"))
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    apply_pending(database, read_catalog(tmp_path / "migrations", tmp_path), POLICY)

    state = rollback(environment="database-url", to="2", git_sha="abc1234", return_state=True)

    assert state.is_completed(), state.message
    assert state.result().rolled_back_ids == ("0003.devices",)
    assert applied_ids(database) == ["0001.users", "0002.accounts"] and "devices" not in tables(database)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.name == "database-url-abc1234"
    assert {"validate", "fetch-secret-database-url", "rollback-database-url"} <= {t.name for t in tasks}


def test_a_transactional_rollback_file_with_a_statement_refused_in_a_transaction_is_refused_at_the_plan(
    tmp_path: Path, database: Connection
) -> None:
    """It passed the plan and --dry-run, then the real rollback undid 0003.devices, stopped at 0002.accounts
    (25001) and said the database was as it was before this rollback."""
    files = {**WITH_ROLLBACKS,
             "0002.accounts.sql": "CREATE TABLE accounts (id bigint);\nCREATE INDEX a_id ON accounts (id);\n",
             "0002.accounts.rollback.sql": "DROP INDEX CONCURRENTLY a_id;\nDROP TABLE accounts;\n"}
    catalog = applied(tmp_path, database, files)
    before = fingerprint(database)
    problems = plan_rollback(database, catalog, "1").problems
    assert problems == ("0002.accounts.rollback.sql: statement 1 is `DROP INDEX CONCURRENTLY`, which cannot run inside "
                        "a transaction block, and the rollback of 0002.accounts.sql (transactional) runs in one with "
                        "the removal of its history rows; write it so that it runs in a transaction (DROP INDEX "
                        "without CONCURRENTLY, say), or roll back to 0002.accounts or later and undo it by hand",)
    with pytest.raises(RollbackRefused, match="nothing was undone"):
        roll_back_to(database, catalog, POLICY, "1")
    assert fingerprint(database) == before
    assert roll_back_to(database, catalog, POLICY, "2").rolled_back_ids == ("0003.devices",)  # above it: fine


def test_a_migration_applied_between_the_plan_and_the_lock_refuses_the_rollback(
    tmp_path: Path, database: Connection
) -> None:
    """The plan shown (and snapshotted, approved) said to undo 0002.accounts; another run applied 0003.devices
    before the rollback took the lock, and the rollback undid both."""
    first_two = {name: text for name, text in WITH_ROLLBACKS.items() if not name.startswith("0003")}
    applied(tmp_path, database, first_two)
    shown = plan_rollback(database, read_catalog(tmp_path / "migrations", tmp_path), "1")
    assert shown.undo == ("0002.accounts",)
    catalog = applied(tmp_path, database, WITH_ROLLBACKS)  # another run, between the plan and the lock
    before = fingerprint(database)
    with pytest.raises(RollbackRefused) as raised:
        roll_back_to(database, catalog, POLICY, "1", planned=shown.undo)
    assert ("the history changed after the plan was shown (applied since: 0003.devices): the plan said to undo "
            "0002.accounts, it would now undo 0003.devices, 0002.accounts; run the rollback again") in str(raised.value)
    assert "nothing was undone" in str(raised.value) and fingerprint(database) == before
    assert roll_back_to(database, catalog, POLICY, "1", planned=("0003.devices", "0002.accounts")).rolled_back_ids \
        == ("0003.devices", "0002.accounts")


def test_a_rollback_retried_after_undoing_part_of_its_plan_goes_on_with_the_rest(
    tmp_path: Path, database: Connection
) -> None:
    """The rollback task is retried when its connection is lost midway: the retry finds what it undid gone, the
    rest of its plan still to undo. It was refused as "the history changed after the plan was shown"."""
    catalog = applied(tmp_path, database, WITH_ROLLBACKS)
    planned = plan_rollback(database, catalog, "1").undo
    assert planned == ("0003.devices", "0002.accounts")
    assert roll_back_to(database, catalog, POLICY, "2").rolled_back_ids == ("0003.devices",)  # the first attempt
    assert roll_back_to(database, catalog, POLICY, "1", planned=planned).rolled_back_ids == ("0002.accounts",)
    assert applied_ids(database) == ["0001.users"]


def test_a_dry_run_rollback_checks_drift_without_creating_anything_on_the_target_server(
        tmp_path: Path, database: Connection) -> None:
    """policy.drift = warn rebuilds the drift reference before a rollback; in a dry run it is built on the embedded
    server, as a run's dry run builds its rehearsal there: not a scratch database made and dropped on the target's."""
    from tests.helpers import cli, url_of

    (tmp_path / "environments.toml").write_text(
        '[environments.warned]\ntier = "staging"\ncredentials = { kind = "url_env", variable = "DATABASE_URL" }\n'
        'snapshot = { kind = "none" }\nnotify = { kind = "console" }\n'
        'policy = { snapshot_required = false, drift = "warn" }\n')
    env = {"RDS_MIGRATIONS_ENVIRONMENTS": str(tmp_path / "environments.toml"), "DATABASE_URL": url_of(database)}
    write_migrations(tmp_path, WITH_ROLLBACKS)
    assert cli("run", "--env", "warned", cwd=tmp_path, env=env).returncode == 0
    with connected(database) as conn:  # nothing remembered: the reference is rebuilt on a scratch database
        conn.execute("DELETE FROM _rds_migrations_schema")
    planned = cli("rollback", "--env", "warned", "--to", "2", "--dry-run", cwd=tmp_path, env=env)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "rehearsed on the embedded server, not the target's: a dry run creates nothing" in planned.stderr
    assert applied_ids(database) == ["0001.users", "0002.accounts", "0003.devices"]
