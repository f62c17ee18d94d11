"""The rehearsal never changes the target's server: not in a dry run, not with statements that reach beyond
one database (roles, ALTER DATABASE); and a rehearsal killed halfway leaves nothing once the next run ends.
Through the command line, on real PostgreSQL. Last, the scratch databases themselves: they commit without
waiting for the disk, and the target does not."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from tasks.engine.connection import Connection, connected
from tasks.engine.embedded import LocalServer, embedded_server
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.rehearsal import rehearse, rehearse_on_target_schema
from tasks.engine.migrations.results import MigrationError
from tests.helpers import POLICY, applied_ids, cli, start_run, url_of, wait_until_seen, write_migrations


def roles(database: Connection, prefix: str) -> list[str]:
    with connected(database) as conn:
        return [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s ORDER BY 1",
                                           (prefix + "%",))]


def scratch_databases(database: Connection) -> list[str]:
    with connected(database) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'rdsm\\_rehearsal\\_%' ORDER BY 1")]


@pytest.fixture
def role_name(database: Connection):
    name = f"rdsm_test_{uuid.uuid4().hex[:8]}"
    yield name
    with connected(database) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_a_dry_run_changes_nothing_on_the_target_server(tmp_path: Path, database: Connection,
                                                         role_name: str) -> None:
    write_migrations(tmp_path, {"0001.role.sql": f"CREATE ROLE {role_name} NOLOGIN;\n"
                                                 "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    before = scratch_databases(database)
    result = cli("run", "--database-url", url_of(database), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rehearsed on the embedded server, not the target's: a dry run creates nothing" in result.stderr
    assert roles(database, role_name) == [] and applied_ids(database) == []
    assert scratch_databases(database) == before  # not even a scratch database came and went


def test_a_migration_creating_a_role_is_rehearsed_elsewhere_and_applied_once(
        tmp_path: Path, database: Connection, role_name: str) -> None:
    write_migrations(tmp_path, {
        "0001.role.sql": f"CREATE ROLE {role_name} NOLOGIN;\n",
        "0002.grant.sql": f"CREATE TABLE a (id bigint PRIMARY KEY);\nGRANT SELECT ON a TO {role_name};\n",
        "0003.database.sql": f"ALTER DATABASE {database.dbname} SET work_mem = '8MB';\n",
    })
    result = cli("run", "--database-url", url_of(database), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "would change the target's server itself" in result.stderr
    assert roles(database, role_name) == [role_name]  # made once, by the run itself
    assert applied_ids(database) == ["0001.role", "0002.grant", "0003.database"]
    with connected(database) as conn:  # ALTER DATABASE reached the target only through the real run
        settings = conn.execute("SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d "
                                "ON d.oid = s.setdatabase WHERE d.datname = current_database()").fetchone()
    assert settings == (["work_mem=8MB"],)


def test_validate_and_a_role_made_in_a_do_block_never_reach_the_target_server(
        tmp_path: Path, database: Connection, role_name: str) -> None:
    """`validate --database-url` rehearses where a run would; a DO block's statements count as the block's own
    (the idiomatic `IF NOT EXISTS … THEN CREATE ROLE`). Both used to rehearse on the target's server: its
    database's settings and a new role stayed there after a rehearsal that then failed."""
    write_migrations(tmp_path, {
        "0001.role.sql": (f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role_name}') "
                          f"THEN CREATE ROLE {role_name} NOLOGIN; END IF; END $$;\n"),
        "0002.database.sql": f"ALTER DATABASE {database.dbname} SET work_mem = '9MB';\n",
        "0003.broken.sql": "SELECT 1 / 0;\n",
    })

    def settings() -> tuple | None:
        with connected(database) as conn:
            return conn.execute("SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d "
                                "ON d.oid = s.setdatabase WHERE d.datname = current_database()").fetchone()

    before = settings()
    validated = cli("validate", "--database-url", url_of(database), cwd=tmp_path)
    assert validated.returncode == 1 and "22012" in validated.stdout, validated.stdout + validated.stderr[-3000:]
    ran = cli("run", "--database-url", url_of(database), cwd=tmp_path)
    assert ran.returncode == 1 and "the database was not changed" in ran.stderr, ran.stderr[-3000:]
    assert "0001.role (CREATE ROLE in a DO block)" in ran.stderr
    assert roles(database, role_name) == [] and settings() == before and applied_ids(database) == []


SLEEP_IN_REHEARSAL = ("DO $$ BEGIN IF current_database() LIKE 'rdsm_rehearsal%' THEN PERFORM pg_sleep(60); "
                      "END IF; END $$;\n")


def test_a_rehearsal_killed_halfway_leaves_nothing_once_the_next_run_ends(tmp_path: Path,
                                                                          database: Connection) -> None:
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n",
                                "0002.slow-in-rehearsal.sql": SLEEP_IN_REHEARSAL})
    before = scratch_databases(database)
    running = start_run(tmp_path, database, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True)
    try:
        wait_until_seen(database, "SELECT 1 FROM pg_stat_activity WHERE datname LIKE 'rdsm\\_rehearsal\\_%' "
                                  "AND wait_event = 'PgSleep'", running, "the rehearsal never started")
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.wait()
    left = sorted(set(scratch_databases(database)) - set(before))
    assert len(left) == 1  # what kill -9 leaves behind, for now

    write_migrations(tmp_path, {"0002.slow-in-rehearsal.sql": "SELECT 1;\n"})  # fixed, and run again
    result = cli("run", "--database-url", url_of(database), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Dropped 1 scratch database(s) a stopped run left: {left[0]}" in result.stderr
    assert scratch_databases(database) == before


# Fails on any database that was not set to commit without waiting for the disk.
COMMITS_WITHOUT_WAITING = (
    "DO $$ BEGIN\n"
    "  IF NOT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase\n"
    "                 WHERE d.datname = current_database() AND 'synchronous_commit=off' = ANY (s.setconfig)) THEN\n"
    "    RAISE EXCEPTION 'this database waits for the disk at every commit';\n"
    "  END IF;\n"
    "END $$;\n"
)


def test_scratch_databases_commit_without_waiting_for_the_disk(tmp_path: Path, database: Connection) -> None:
    catalog = read_catalog(write_migrations(tmp_path, {"0001.check.sql": COMMITS_WITHOUT_WAITING}), tmp_path)
    assert rehearse(catalog, database, POLICY, cache=False).failure is None
    assert rehearse_on_target_schema(catalog, ("0001.check",), database, database, POLICY).failure is None
    with pytest.raises(MigrationError, match="waits for the disk"):  # the target itself is left as it is
        apply_pending(database, catalog, POLICY)


def test_a_rehearsal_on_the_embedded_server_leaves_no_database_or_server_setting_behind(
        tmp_path: Path, database: Connection, pg_server: LocalServer) -> None:
    """A migration that creates a database and sets a server setting is rehearsed on the embedded server (it
    reaches beyond one database): afterwards that server holds neither, so the next rehearsal there (a run on
    another database) does not fail with "database ... already exists"."""
    made = f"rdsm_test_reports_{uuid.uuid4().hex[:8]}"
    write_migrations(tmp_path, {"0001.t.sql": "CREATE TABLE t (id bigint);\n", "0002.reports.sql": (
        f"-- transactional: false\nCREATE DATABASE {made};\n"
        "ALTER SYSTEM SET log_min_duration_statement = '5s';\nSELECT pg_reload_conf();\n")})
    local = embedded_server()
    local.start()
    auto_conf = "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'"
    with connected(local.connection()) as conn:
        settings_before = conn.execute(auto_conf).fetchall()
    try:
        ran = cli("run", "--database-url", url_of(database), cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "rehearsed on the embedded server" in ran.stderr
        with connected(local.connection()) as conn:
            assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (made,)).fetchone()
            assert conn.execute(auto_conf).fetchall() == settings_before
        pg_server.drop_database(made)  # what the run made on the target's server, for a run on another database
        other = pg_server.ensure_database(f"t_{uuid.uuid4().hex[:10]}")
        try:
            again = cli("run", "--database-url", url_of(other), cwd=tmp_path)
            assert again.returncode == 0, again.stderr[-3000:]
        finally:
            pg_server.drop_database(other.dbname)
    finally:
        pg_server.drop_database(made)
        with connected(pg_server.connection()) as conn:  # the target's server: as it was
            conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
            conn.execute("SELECT pg_reload_conf()")
        with connected(local.connection()) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(made)))
            conn.execute("ALTER SYSTEM RESET log_min_duration_statement")
            conn.execute("SELECT pg_reload_conf()")


def test_a_list_setting_a_rehearsal_changed_with_alter_system_is_put_back_as_the_same_list(
        tmp_path: Path, database: Connection, pg_server: LocalServer) -> None:
    """The embedded server's postgresql.auto.conf already sets search_path (a list whose names the server quotes
    one by one); a rehearsed migration sets it with ALTER SYSTEM. Afterwards the file and new sessions there
    hold the same list again, not one name made of the whole list (`"\"\"$user\"\", public"`)."""
    write_migrations(tmp_path, {"0001.path.sql": (
        "-- transactional: false\nALTER SYSTEM SET search_path = public;\nSELECT pg_reload_conf();\n")})
    local = embedded_server()
    local.start()
    in_file = "SELECT setting FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' AND name = %s"
    try:
        with connected(local.connection()) as conn:
            conn.execute("ALTER SYSTEM SET search_path = \"$user\", public")
            conn.execute("SELECT pg_reload_conf()")
        ran = cli("run", "--database-url", url_of(database), cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "rehearsed on the embedded server" in ran.stderr
        with connected(local.connection()) as conn:
            assert conn.execute(in_file, ("search_path",)).fetchall() == [('"$user", public',)]
        with connected(local.connection()) as conn:  # a new session, after the reload
            assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'
    finally:
        for server in (pg_server.connection(), local.connection()):
            with connected(server) as conn:
                conn.execute("ALTER SYSTEM RESET search_path")
                conn.execute("SELECT pg_reload_conf()")


def test_what_migrations_do_beyond_their_database_is_read_in_one_pass(tmp_path: Path) -> None:
    """Beyond.of, which choose_place reads once: every statement that reaches the server, named once per
    migration and kind, whether one alters a database, and the roles, databases and settings made, by name."""
    from tasks.engine.migrations.beyond import Beyond

    catalog = read_catalog(write_migrations(tmp_path, {
        "0001.t.sql": "CREATE TABLE t (id bigint);\n",
        "0002.roles.sql": "CREATE ROLE app_reader NOLOGIN;\nCREATE ROLE app_writer NOLOGIN;\n",
        "0003.server.sql": ("-- transactional: false\nCREATE DATABASE reports;\nALTER DATABASE reports SET work_mem = "
                            "'8MB';\nALTER SYSTEM SET Log_Min_Duration_Statement = '5s';\nALTER SYSTEM RESET ALL;\n"),
    }), tmp_path)
    beyond = Beyond.of(catalog.migrations)
    assert beyond.reaching == ("0002.roles (CREATE ROLE)", "0003.server (CREATE DATABASE)",
                               "0003.server (ALTER DATABASE)", "0003.server (ALTER SYSTEM)")
    assert beyond.alters_databases
    assert (beyond.roles, beyond.databases, beyond.settings) == (
        {"app_reader", "app_writer"}, {"reports"}, {"log_min_duration_statement", "*"})
    assert Beyond.of(catalog.migrations[:1]) == Beyond()
