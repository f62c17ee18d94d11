"""One session, known state: what a migration does to the session never reaches the next migration nor the
tool's own bookkeeping, a migration cannot end the transaction it is recorded in, and the history insert
survives the driver. Through the command line (`run --database-url`), on real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg import sql

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog, Migration, checksum, read_catalog
from tasks.engine.migrations.results import MigrationError
from tests.helpers import POLICY, applied_ids, cli, dirty_state, tables, url_of, write_migrations

# The database-url environment's policy (deployments/environments.toml): 2 s lock_timeout, 15 min statements.
STARTS_CLEAN = """
DO $$ BEGIN
    IF current_user <> session_user THEN RAISE EXCEPTION 'started as role %', current_user; END IF;
    IF current_setting('lock_timeout') <> '2s' THEN
        RAISE EXCEPTION 'started with lock_timeout %', current_setting('lock_timeout'); END IF;
    IF current_setting('statement_timeout') <> '15min' THEN
        RAISE EXCEPTION 'started with statement_timeout %', current_setting('statement_timeout'); END IF;
    IF current_setting('search_path') <> '"$user", public' THEN
        RAISE EXCEPTION 'started with search_path %', current_setting('search_path'); END IF;
END $$;
"""


def run(project: Path, database: Connection, *extra: str):
    return cli("run", "--database-url", url_of(database), "--git-sha", "abcdef1", *extra, cwd=project)


def history_rows(database: Connection) -> list[str]:
    with connected(database) as conn:
        return [r[0] for r in conn.execute("SELECT migration_id FROM public._rds_migrations_history ORDER BY 1")]


@pytest.fixture
def other_role(database: Connection):
    """A role of the server that migrations switch to (roles are the server's, not one database's)."""
    name = f"other_{database.dbname}"
    with connected(database) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    yield name
    with connected(database.with_database("postgres")) as conn:  # rehearsal databases it owns things in go first
        for (cached,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rdsm\\_%'").fetchall():
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(cached)))
    with connected(database) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


# ---- 1. transaction control inside a transactional migration --------------------------------------------


@pytest.mark.parametrize("ending", ["ROLLBACK", "commit", "End", "ABORT", "COMMIT AND CHAIN", "rollback work"])
def test_a_migration_that_would_end_its_transaction_is_refused_naming_the_line(
        tmp_path: Path, database: Connection, ending: str) -> None:
    write_migrations(tmp_path, {
        "0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n",
        "0002.b.sql": ("-- squawk-ignore-file\nCREATE TABLE b (id bigint PRIMARY KEY);\n"
                       f"INSERT INTO b VALUES (1);\n{ending};\nINSERT INTO b VALUES (2);\n"),
    })
    result = run(tmp_path, database)
    assert result.returncode == 1
    assert f"0002.b.sql:4: statement 3 is `{'ROLLBACK' if ending[0] in 'rRaA' else 'COMMIT'}`" in result.stderr
    assert "-- transactional: false" in result.stderr  # what to do instead
    assert tables(database) == set() and "_yoyo_migration" not in tables(database)  # nothing ran, anywhere


def test_an_answer_that_shows_the_transaction_ended_early_is_a_failure(tmp_path: Path, database: Connection) -> None:
    """The guard behind validation: a migration handed to the engine as it is (not read from a directory),
    whose ROLLBACK would undo its first half while the rest ran and was recorded."""
    statements = ("CREATE TABLE undone (id bigint)", "ROLLBACK", "CREATE TABLE kept (id bigint)")
    migration = Migration("0001.sneaky", 1, tmp_path / "0001.sneaky.sql", checksum("x"), statements)
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, Catalog(tmp_path, (migration,)), POLICY, git_sha="abcdef1")
    failure = raised.value.report.failed
    assert failure is not None and failure.dirty and failure.statement_number == 2
    assert "ended the migration's own transaction (ROLLBACK)" in failure.message
    assert applied_ids(database) == [] and history_rows(database) == []  # history never says "applied"
    assert dirty_state(database) == [("0001.sneaky", "failed", 2)]  # every later run refuses until resolved


def test_a_rollback_to_a_savepoint_or_a_prepared_query_stays_inside_the_transaction(
        tmp_path: Path, database: Connection) -> None:
    """`ROLLBACK TO SAVEPOINT` answers ROLLBACK and `PREPARE name AS` answers PREPARE, as a transaction's end
    would: the statements tell them apart. Applied and recorded (the history used to be removed, with a dirty
    mark and "rolled back" said of a migration whose tables were there); so is a rollback file's."""
    from tasks.engine.migrations.rollback import roll_back_to

    forward = ("CREATE TABLE t (id bigint)", "SAVEPOINT a", "CREATE TABLE u (id bigint)", "ROLLBACK TO SAVEPOINT a",
               "RELEASE SAVEPOINT a", "PREPARE q AS SELECT 1", "CREATE TABLE v (id bigint)")
    migration = Migration("0001.savepoints", 1, tmp_path / "0001.savepoints.sql", checksum("x"), forward,
                          rollback_statements=("PREPARE r AS SELECT 1", "DROP TABLE t", "DROP TABLE v"))
    catalog = Catalog(tmp_path, (migration,))
    report = apply_pending(database, catalog, POLICY, git_sha="abcdef1")
    assert [m.id for m in report.applied] == ["0001.savepoints"]
    assert tables(database) >= {"t", "v"} and "u" not in tables(database)
    assert applied_ids(database) == ["0001.savepoints"] and dirty_state(database) == []
    roll_back_to(database, catalog, POLICY, "0", git_sha="abcdef1")
    assert not tables(database) & {"t", "v"} and applied_ids(database) == [] and dirty_state(database) == []


# ---- 2. session state never leaks from one migration to the next -------------------------------------------


def test_settings_role_and_search_path_set_by_a_migration_do_not_reach_the_next(
        tmp_path: Path, database: Connection, other_role: str) -> None:
    write_migrations(tmp_path, {
        "0001.own-search-path.sql": (f"CREATE SCHEMA app;\nGRANT CREATE, USAGE ON SCHEMA app TO {other_role};\n"
                                     f"GRANT CREATE, USAGE ON SCHEMA public TO {other_role};\n"
                                     "SET search_path = app;\nCREATE TABLE in_app (id bigint PRIMARY KEY);\n"),
        "0002.check.sql": STARTS_CLEAN,
        "0003.timeouts-off.sql": "SET lock_timeout = 0;\nSET statement_timeout = 0;\nSELECT 1;\n",
        "0004.check.sql": STARTS_CLEAN,
        "0005.as-another-role.sql": f"SET ROLE {other_role};\nCREATE TABLE owned (id bigint PRIMARY KEY);\n",
        "0006.check.sql": STARTS_CLEAN,
        "0007.reset-all.sql": "RESET ALL;\nSELECT 1;\n",
        "0008.check.sql": STARTS_CLEAN,
        "0009.deallocate-all.sql": "DEALLOCATE ALL;\nSELECT 1;\n",
        "0010.check.sql": STARTS_CLEAN,
        "0011.non-transactional-as-role.sql": (
            f"-- transactional: false\nSET ROLE {other_role};\nSET search_path = app;\n"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS owned_id ON public.owned (id);\n"),
        "0012.check.sql": STARTS_CLEAN,
        # Another session user, with the run's own user as current_user again: the next starts as the run.
        "0013.as-another-session-user.sql": (f"SET SESSION AUTHORIZATION {other_role};\n"
                                             f"SET ROLE {database.user};\nSELECT 1;\n"),
        "0014.check.sql": STARTS_CLEAN,
    })
    with connected(database) as conn:  # so that 0013 may become the run's user again
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(database.user), sql.Identifier(other_role)))
    result = run(tmp_path, database)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(history_rows(database)) == 14 and len(applied_ids(database)) == 14
    with connected(database) as conn:
        assert conn.execute("SELECT to_regclass('app.in_app') IS NOT NULL, to_regclass('public.in_app')").fetchone() \
            == (True, None)  # the migration's own search_path applied to its own statements
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'owned'").fetchone()
        assert owner == (other_role,)  # and its role to its own statements
        assert conn.execute("SELECT to_regclass('app._yoyo_migration')").fetchone() == (None,)  # history: public
    assert dirty_state(database) == []


SETTINGS_AS_THE_SESSION_BEGAN = """
DO $$ BEGIN
    IF current_setting('session_replication_role') <> 'origin' THEN
        RAISE EXCEPTION 'started with session_replication_role %', current_setting('session_replication_role'); END IF;
    IF current_setting('TimeZone') <> (SELECT reset_val FROM pg_settings WHERE name = 'TimeZone') THEN
        RAISE EXCEPTION 'started with TimeZone %', current_setting('TimeZone'); END IF;
    IF current_setting('DateStyle') <> (SELECT reset_val FROM pg_settings WHERE name = 'DateStyle') THEN
        RAISE EXCEPTION 'started with DateStyle %', current_setting('DateStyle'); END IF;
END $$;
"""


@pytest.mark.parametrize("per_message", [1, 20])
def test_any_setting_a_migration_makes_stays_with_it(tmp_path: Path, database: Connection, per_message: int) -> None:
    """`SET session_replication_role = replica` (foreign keys off), a time zone, a DateStyle: the next migration
    starts as the session began (RESET ALL), alone in its message or not, transactional or not, so whether it
    applies does not depend on which migrations are pending with it. An orphan row used to be committed when
    both were pending, where the same file failed on its own."""
    write_migrations(tmp_path, {
        "0001.parent-child.sql": ("CREATE TABLE parent (id bigint PRIMARY KEY);\n"
                                  "CREATE TABLE child (id bigint PRIMARY KEY, pid bigint REFERENCES parent (id));\n"
                                  "SET session_replication_role = replica;\nSET TIME ZONE 'Pacific/Kiritimati';\n"
                                  "SET DateStyle = 'German, DMY';\n"),
        "0002.check.sql": SETTINGS_AS_THE_SESSION_BEGAN,
        "0003.orphan.sql": "INSERT INTO child VALUES (1, 42);\n",
        "0004.non-transactional.sql": ("-- transactional: false\nSET session_replication_role = replica;\n"
                                       "SET default_transaction_read_only = on;\n"),
        "0005.check.sql": SETTINGS_AS_THE_SESSION_BEGAN + "CREATE TABLE written (id bigint);\n",
    })
    catalog = read_catalog(tmp_path / "migrations", tmp_path)
    policy = POLICY.model_copy(update={"migrations_per_message": per_message})
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, policy, git_sha="abcdef1")
    failure = raised.value.report.failed
    assert failure is not None and failure.migration_id == "0003.orphan" and failure.sqlstate == "23503"
    assert applied_ids(database) == ["0001.parent-child", "0002.check"]
    with connected(database) as conn:
        conn.execute("INSERT INTO parent VALUES (42)")
    report = apply_pending(database, catalog, policy, git_sha="abcdef1")
    assert report.applied_ids == ("0003.orphan", "0004.non-transactional", "0005.check")
    assert "written" in tables(database) and dirty_state(database) == []


# ---- 5. a non-transactional migration keeps its real error -------------------------------------------------


def row_two_already_there(project: Path, database: Connection) -> None:
    """The target holds a row the rehearsal's empty copy does not: the migration fails only for real."""
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    assert run(project, database).returncode == 0
    with connected(database) as conn:
        conn.execute("INSERT INTO a VALUES (2)")


def test_a_failing_non_transactional_migration_with_its_own_transaction_reports_the_real_error(
        tmp_path: Path, database: Connection) -> None:
    row_two_already_there(tmp_path, database)
    write_migrations(tmp_path, {
        "0002.own-transaction.sql": ("-- transactional: false\nCREATE TABLE before_it (id bigint);\n"
                                     "BEGIN;\nINSERT INTO a VALUES (1);\nINSERT INTO a VALUES (2);\nCOMMIT;\n"),
    })
    result = run(tmp_path, database)
    assert result.returncode == 1
    assert "SQLSTATE 23505" in result.stderr and "duplicate key value" in result.stderr
    assert "current transaction is aborted" not in result.stderr
    assert "statement 4 of 5" in result.stderr
    with connected(database) as conn:
        assert conn.execute("SELECT id FROM a").fetchall() == [(2,)]  # its own transaction rolled back
        [(state, number, through)] = conn.execute(
            "SELECT state, statement_number, applied_through FROM _rds_migrations_dirty").fetchall()
    assert (state, number, through) == ("failed", 4, 1)  # only what ran before its BEGIN is applied
    explained = cli("resolve", "--database-url", url_of(database), cwd=tmp_path)
    assert "statement 4 of 5 failed" in explained.stdout and "statement 1 is applied" in explained.stdout


def test_a_failing_transaction_of_its_own_with_nothing_before_it_leaves_the_database_clean(
        tmp_path: Path, database: Connection) -> None:
    row_two_already_there(tmp_path, database)
    write_migrations(tmp_path, {
        "0002.own-transaction.sql": ("-- transactional: false\nBEGIN;\nINSERT INTO a VALUES (1);\n"
                                     "INSERT INTO a VALUES (2);\nCOMMIT;\n"),
    })
    result = run(tmp_path, database)
    assert result.returncode == 1 and "duplicate key value" in result.stderr
    assert dirty_state(database) == [] and applied_ids(database) == ["0001.a"]


# ---- 6. the history insert survives the driver --------------------------------------------------------------


def test_concurrent_index_drops_after_many_non_transactional_migrations_keep_the_history_insert(
        tmp_path: Path, database: Connection) -> None:
    """psycopg prepares a statement of its own after 5 uses and then answers a DROP, ALTER or ROLLBACK with
    DEALLOCATE ALL: the shape that failed at migration 220 of a real project's 285."""
    files = {"0001.tables.sql": "".join(f"CREATE TABLE t{i} (a bigint);\n" for i in range(1, 8))}
    for i in range(1, 8):
        files[f"{i + 1:04d}.index-{i}.sql"] = (
            f"-- transactional: false\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i{i} ON t{i} (a);\n")
    files["0009.drop.sql"] = "-- transactional: false\nDROP INDEX CONCURRENTLY IF EXISTS i1;\n"
    files["0010.alter.sql"] = "ALTER TABLE t2 ADD COLUMN b bigint;\n"
    files["0011.after.sql"] = "CREATE TABLE after_the_drop (a bigint);\n"
    write_migrations(tmp_path, files)
    result = run(tmp_path, database)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(history_rows(database)) == 11
