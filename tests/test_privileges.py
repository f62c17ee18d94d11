"""Who the tool runs as: a login whose sessions start as another role, a login that may not create databases or
tables, a login that may not read the history. Each one either works as it would by hand or is told in one
sentence what is missing (never a traceback), with nothing applied. Through the command line, on real
PostgreSQL, with real roles."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from psycopg import sql
from pydantic import SecretStr

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.results import MigrationError
from tests.conftest import drop_roles
from tests.helpers import (
    applied_ids,
    cli,
    dirty_state,
    lose_the_connection_mid_message,
    tables,
    url_of,
    write_migrations,
)


def run(project: Path, database: Connection, *extra: str):
    return cli("run", "--database-url", url_of(database), "--git-sha", "abcdef1", *extra, cwd=project)


# ---- the role a login starts with (ALTER ROLE ... SET role) is where every migration starts ------------------


STARTS_AS_OWNER = """
DO $$ BEGIN
    IF current_user <> '{owner}' THEN RAISE EXCEPTION 'started as role %', current_user; END IF;
END $$;
"""


@pytest.fixture
def deployer_of_owner(database: Connection):
    """As RDS teams set it up: objects belong to a role nobody logs in as (the owner); the migrator logs in as
    its own user, a NOINHERIT member of the owner, whose `ALTER ROLE ... SET role` makes every session the
    owner. Yields (the migrator's connection, the owner's name)."""
    owner, deployer, password = f"owner_{database.dbname}", f"deployer_{database.dbname}", uuid.uuid4().hex
    with connected(database) as conn:
        for statement in (
                "CREATE ROLE {owner} NOLOGIN", "CREATE ROLE {deployer} LOGIN NOINHERIT CREATEDB PASSWORD {password}",
                "GRANT {owner} TO {deployer}", "ALTER ROLE {deployer} SET role = {owner_name}",
                "GRANT CREATE ON DATABASE {db} TO {owner}", "GRANT CREATE, USAGE ON SCHEMA public TO {owner}"):
            conn.execute(sql.SQL(statement).format(
                owner=sql.Identifier(owner), deployer=sql.Identifier(deployer), password=sql.Literal(password),
                owner_name=sql.Literal(owner), db=sql.Identifier(database.dbname)))
    yield database.model_copy(update={"user": deployer, "password": SecretStr(password)}), owner
    drop_roles(database, [deployer, owner])


def test_the_role_a_login_starts_with_is_where_every_migration_starts(
        tmp_path: Path, deployer_of_owner: tuple[Connection, str]) -> None:
    """Every migration starts as the role the session began with, not as the login user with no role: the
    tables belong to the owner, and a migration that drops the role does not take it from the next."""
    deployer, owner = deployer_of_owner
    checks = STARTS_AS_OWNER.replace("{owner}", owner)
    write_migrations(tmp_path, {
        "0001.check.sql": checks,
        "0002.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n",
        "0003.role-dropped.sql": "SET ROLE NONE;\nSELECT 1;\n",
        "0004.check.sql": checks,
        "0005.non-transactional.sql": "-- transactional: false\nSET ROLE NONE;\nSELECT 1;\n",
        "0006.check.sql": checks,
        "0007.index.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY IF NOT EXISTS a_id ON a (id);\n",
        "0008.b.sql": "CREATE TABLE b (id bigint PRIMARY KEY);\n",
    })
    result = run(tmp_path, deployer)
    assert result.returncode == 0, result.stderr[-3000:]
    with connected(deployer) as conn:
        owners = conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' "
                              "ORDER BY 1").fetchall()
        assert conn.execute("SELECT count(*) FROM public._rds_migrations_history").fetchone() == (8,)
    assert owners == [(name, owner) for name in sorted(
        ["_rds_migrations_baseline", "_rds_migrations_dirty", "_rds_migrations_history", "_rds_migrations_schema",
         "_yoyo_log", "_yoyo_migration", "_yoyo_version", "a", "b", "yoyo_lock"])]
    assert dirty_state(deployer) == []
    # The next run's rehearsal starts from the one this run cached (made, renamed and found by the login).
    write_migrations(tmp_path, {"0009.c.sql": "CREATE TABLE c (id bigint PRIMARY KEY);\n"})
    again = run(tmp_path, deployer)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "from a cached database holding the first 8 migrations" in again.stdout + again.stderr
    assert "Traceback" not in again.stderr and "not cached" not in again.stdout + again.stderr


def test_a_database_a_dba_prepared_shows_no_drift_to_a_login_that_starts_as_its_owner(
        tmp_path: Path, database: Connection, deployer_of_owner: tuple[Connection, str]) -> None:
    """Drift's scratch database starts like the target (no public, the DBA's schema, its search_path) although
    the login made it and the migrations replay as the owner role."""
    deployer, owner = deployer_of_owner
    with connected(database) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(owner)))
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = app").format(sql.Identifier(database.dbname)))
    write_migrations(tmp_path, {"0001.t.sql": "CREATE TABLE t (id bigint PRIMARY KEY);\n"})
    assert run(tmp_path, deployer).returncode == 0
    drift = cli("drift", "--database-url", url_of(deployer), cwd=tmp_path)
    assert drift.returncode == 0 and "no drift" in drift.stdout, drift.stdout + drift.stderr[-2000:]
    assert "does not start like the target" not in drift.stderr


def test_a_noinherit_login_rehearses_in_the_public_schema_of_its_own_scratch_database(
        tmp_path: Path, database: Connection, login) -> None:
    """PostgreSQL 15+: the public schema of a database belongs to pg_database_owner, whose rights a NOINHERIT
    owner does not have as itself: its scratch database gives them to it."""
    migrator = login("noinherit", "NOINHERIT CREATEDB")
    with connected(database) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(migrator.user)))
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    result = run(tmp_path, migrator)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a" in tables(database)


def history_made_by_another_login(project: Path, database: Connection, login) -> Connection:
    """Two logins with CREATE on the schema; the first applies 0001.a, so it owns the history tables. The second,
    returned, owns nothing yet."""
    first, second = login("first", "CREATEDB"), login("second", "CREATEDB")
    with connected(database) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}, {}").format(
            sql.Identifier(first.user), sql.Identifier(second.user)))
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    assert run(project, first).returncode == 0
    return second

def test_another_login_with_every_right_on_the_history_may_run_without_owning_it(
        tmp_path: Path, database: Connection, login) -> None:
    """The history tables were made by one login; another, with CREATE on the schema and every right on the
    tables but not their owner, runs the next migration (bringing the tables up to date needs no owner when
    they are up to date)."""
    second = history_made_by_another_login(tmp_path, database, login)
    with connected(database) as conn:
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(second.user)))
    write_migrations(tmp_path, {"0002.b.sql": "CREATE TABLE b (id bigint PRIMARY KEY);\n"})
    result = run(tmp_path, second)
    assert result.returncode == 0, result.stderr[-3000:]
    with connected(database) as conn:
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'b'").fetchone() == (second.user,)


def test_history_an_earlier_version_made_works_for_a_login_that_may_not_bring_it_up_to_date(
        tmp_path: Path, database: Connection, login) -> None:
    """The dirty-mark table lacks the column this version adds (`invalid_before`: made by an earlier one), and the
    login running now may not add it (not the owner). The plan and the run, dirty mark included, work without it
    (then every INVALID index counts as a leftover, as before). The plan read the column, so every run failed:
    "column d.invalid_before does not exist"."""
    second = history_made_by_another_login(tmp_path, database, login)
    with connected(database) as conn:  # as an earlier version left it
        conn.execute("ALTER TABLE _rds_migrations_dirty DROP COLUMN invalid_before")
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(second.user)))
    write_migrations(tmp_path, {
        "0002.b.sql": "CREATE TABLE b (id bigint);\n",
        "0003.index.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY b_id ON b (id);\n"})
    result = run(tmp_path, second)  # 0003 writes its dirty mark, then its record
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert applied_ids(database) == ["0001.a", "0002.b", "0003.index"] and dirty_state(database) == []
    with connected(database) as conn:
        assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = '_rds_migrations_dirty'::regclass "
                            "AND attname = 'invalid_before'").fetchone()[0] == 0

def test_a_login_that_may_not_create_databases_is_told_what_to_do(
        tmp_path: Path, database: Connection, login) -> None:
    """The rehearsal's temporary database needs CREATEDB (on RDS the master user has it, a migrator role may
    not): one sentence saying so and the ways out, not a traceback; nothing is applied."""
    migrator = login("nocreatedb")
    with connected(database) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(migrator.user)))
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    result = run(tmp_path, migrator)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the rehearsal cannot create its temporary database" in result.stderr
    assert f'ALTER ROLE "{migrator.user}" CREATEDB' in result.stderr
    assert 'rehearsal = { kind = "embedded" }' in result.stderr
    assert tables(database) == set()


# ---- a login without the rights the tool needs on the target: one sentence, nothing applied ---------------------


def test_a_login_that_may_not_create_the_history_tables_is_told_which_grant(
        tmp_path: Path, database: Connection, login) -> None:
    migrator = login("nocreate", "CREATEDB")  # may rehearse (its own scratch database), not create in public
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    result = run(tmp_path, migrator)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (f"cannot be created or brought up to date in schema 'public' of database {database.dbname!r} as "
            f"{migrator.user}: permission denied for schema public. Nothing was applied. Grant it (GRANT CREATE ON "
            f'SCHEMA "public" TO "{migrator.user}")') in result.stderr
    assert tables(database) == set()


def test_a_refusal_no_step_explains_is_one_line_in_every_command(
        tmp_path: Path, database: Connection, login) -> None:
    """History made by another role, a login that may create tables but not read that history: `run` (inside
    the pipeline, after the notification) and `status` (outside it) both end in one line with the SQLSTATE."""
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    assert run(tmp_path, database).returncode == 0
    reader = login("noread", "CREATEDB")
    with connected(database) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(reader.user)))
    write_migrations(tmp_path, {"0002.b.sql": "CREATE TABLE b (id bigint PRIMARY KEY);\n"})
    for result in (run(tmp_path, reader), cli("status", "--database-url", url_of(reader), cwd=tmp_path)):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert "the database refused (SQLSTATE 42501): permission denied for table" in last
        assert "lacks a privilege this needs" in last
    assert "b" not in tables(database)


def test_a_connection_lost_mid_message_is_settled_by_a_login_that_starts_as_the_owner(
    tmp_path: Path, database: Connection, deployer_of_owner: tuple[Connection, str]
) -> None:
    # The new session that ends the lost one starts as the owner, which may not end the login's sessions: it
    # does so as the login, then reads the history as the owner.
    migrator, _ = deployer_of_owner
    error = lose_the_connection_mid_message(tmp_path, database, migrator)
    assert isinstance(error, MigrationError), error
    report = error.report
    assert report.applied_ids == ("0001.a",) and applied_ids(database) == ["0001.a"]
    assert report.failed is not None and report.failed.migration_id == "0002.slow"
    assert not report.failed.outcome_unknown and report.pending == ("0002.slow", "0003.c")
