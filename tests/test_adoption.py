"""Adopting databases teams already have, through the command line on real PostgreSQL: refused early when not
adopted, `baseline` from Knex, Flyway and golang-migrate, `--through 0` over foreign tables with the rehearsal
on the target's own schema, and drift that names a hand-added column and a dropped index and blocks."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tasks.engine.connection import Connection, connected
from tests.helpers import applied_ids, cli, url_of, write_migrations
from tests.test_adopt import FLYWAY_DDL, FLYWAY_ROW, GOLANG_DDL, GOLANG_ROW, KNEX_DDL, KNEX_ROW, run

# What Knex (or Flyway, or golang-migrate) made, and the files the team ported to this tool.
SCHEMA = """
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
ALTER TABLE users ADD COLUMN phone_number text;
CREATE TABLE devices (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id));
CREATE INDEX devices_user_id_idx ON devices (user_id);
"""
PORTED = {
    "0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n",
    "0002.add-phone-number-to-users.sql": "ALTER TABLE users ADD COLUMN phone_number text;\n",
    "0003.create-devices.sql": ("CREATE TABLE devices (id bigint PRIMARY KEY, user_id bigint NOT NULL "
                                "REFERENCES users (id));\nCREATE INDEX devices_user_id_idx ON devices (user_id);\n"),
}
NEW = {"0004.create-sessions.sql": "CREATE TABLE sessions (id bigint PRIMARY KEY, user_id bigint NOT NULL);\n"}

# An environment like production's: the pending migrations rehearsed on a copy of the target's schema, and
# drift blocking; a plain PostgreSQL from DATABASE_URL.
ADOPTED = """
[environments.adopted]
tier = "staging"
credentials = { kind = "url_env", variable = "DATABASE_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
rehearsal = { kind = "target_server", start = "target_schema" }
policy = { snapshot_required = false, lint_blocks_on = "error", drift = "block" }
"""


@pytest.fixture
def adopted(tmp_path: Path, database: Connection) -> dict[str, str]:
    (tmp_path / "environments.toml").write_text(ADOPTED)
    return {"RDS_MIGRATIONS_ENVIRONMENTS": str(tmp_path / "environments.toml"), "DATABASE_URL": url_of(database)}


def scratch_databases(database: Connection) -> list[str]:
    with connected(database) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rdsm\\_%'")]


def test_a_database_with_tables_and_no_history_is_refused_before_anything_happens(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    run(database, SCHEMA, KNEX_DDL)
    write_migrations(tmp_path, PORTED)
    before = scratch_databases(database)
    result = cli("run", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert result.returncode == 1
    assert "this database has 2 tables (devices, users)" in result.stderr
    assert "no migration history: adopt it with `rds-migrations baseline`" in result.stderr
    assert "migrated by Knex; try `rds-migrations baseline --from knex`" in result.stderr
    assert "rehearsal on" not in result.stderr  # refused before any rehearsal...
    assert scratch_databases(database) == before and applied_ids(database) == []  # ...lock or history


@pytest.mark.parametrize("tool", ["knex", "flyway", "golang-migrate"])
def test_a_database_another_tool_migrated_is_adopted_and_the_next_run_applies_only_the_new_migration(
        tmp_path: Path, database: Connection, adopted: dict[str, str], tool: str) -> None:
    run(database, SCHEMA)
    if tool == "knex":
        run(database, KNEX_DDL, (KNEX_ROW, ("001_create_users.js", 1)),
            (KNEX_ROW, ("002_add_phone_number_to_users.js", 1)), (KNEX_ROW, ("003_create_devices.js", 2)))
    elif tool == "flyway":
        run(database, FLYWAY_DDL.format(schema="public"), *(
            (FLYWAY_ROW.format(schema="public"), (rank, str(rank), description, "SQL", script, 0, True))
            for rank, description, script in [(1, "create users", "V1__create_users.sql"),
                                               (2, "add phone number to users", "V2__add_phone_number_to_users.sql"),
                                               (3, "create devices", "V3__create_devices.sql")]))
    else:
        run(database, GOLANG_DDL, (GOLANG_ROW, (3, False)))
    write_migrations(tmp_path, PORTED)

    shown = cli("baseline", "--env", "adopted", "--from", tool, "--dry-run", "--json", cwd=tmp_path, env=adopted)
    assert shown.returncode == 0, shown.stderr[-3000:]
    document = json.loads(shown.stdout)
    assert document["schema_version"] == 1 and document["dry_run"] is True
    assert document["adopted"] == ["0001.create-users", "0002.add-phone-number-to-users", "0003.create-devices"]
    assert [p["migration"] for p in document["mapping"]["mapping"]] == document["adopted"]  # entry → file
    assert applied_ids(database) == []  # a dry run writes nothing

    result = cli("baseline", "--env", "adopted", "--from", tool, cwd=tmp_path, env=adopted)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Baseline SUCCEEDED" in result.stderr and "3 migration(s) as applied" in result.stderr
    again = cli("baseline", "--env", "adopted", "--from", tool, cwd=tmp_path, env=adopted)
    assert again.returncode == 0 and "already adopted" in again.stdout  # idempotent

    write_migrations(tmp_path, NEW)
    ran = cli("run", "--env", "adopted", "--json", cwd=tmp_path, env=adopted)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout)["applied"] == ["0004.create-sessions"]
    assert applied_ids(database) == sorted([*[f[:-4] for f in PORTED], "0004.create-sessions"])
    if tool == "knex":  # the other tool's tables are left as they were
        with connected(database) as conn:
            assert conn.execute("SELECT count(*) FROM knex_migrations").fetchone() == (3,)


def test_through_on_a_database_knex_migrated_is_refused_and_json_says_why(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    """`--through 0` records nothing and reads no Knex history: the next run applied again what Knex had
    applied (a seed twice). It is refused, pointing at `--from knex`, and nothing is written."""
    run(database, SCHEMA, KNEX_DDL, (KNEX_ROW, ("001_create_users.js", 1)),
        (KNEX_ROW, ("002_add_phone_number_to_users.js", 1)), (KNEX_ROW, ("003_create_devices.js", 2)))
    write_migrations(tmp_path, PORTED)
    for through in ("0", "0001"):
        result = cli("baseline", "--env", "adopted", "--through", through, "--json", cwd=tmp_path, env=adopted)
        assert result.returncode == 1, result.stderr[-3000:]
        error = json.loads(result.stdout)["error"]
        assert "knex_migrations is here: Knex migrated this database" in error
        assert "would run again" in error and "`rds-migrations baseline --from knex`" in error
        assert error in result.stderr and "Traceback" not in result.stderr
    with connected(database) as conn:
        assert conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone() == (None,)  # nothing written


def test_a_baseline_says_what_it_would_record_and_nothing_of_it_where_history_is_there(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    """A dry run's notification said `recorded: 2 migration(s) as applied`, of a database it wrote nothing to."""
    run(database, SCHEMA)
    write_migrations(tmp_path, PORTED)
    shown = cli("baseline", "--env", "adopted", "--through", "0002", "--dry-run", cwd=tmp_path, env=adopted)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "2 migration(s) of migrations/ would be recorded as applied" in shown.stderr
    assert "would record: 2 migration(s) as applied, without running them" in shown.stderr, shown.stderr
    assert "recorded:" not in shown.stderr and applied_ids(database) == []
    assert cli("baseline", "--env", "adopted", "--through", "0003", cwd=tmp_path, env=adopted).returncode == 0
    again = cli("baseline", "--env", "adopted", "--through", "0001", "--dry-run", cwd=tmp_path, env=adopted)
    assert again.returncode == 1 and "already has migration history (3 applied" in again.stderr
    assert "recorded as applied" not in again.stderr  # it said "1 migration(s) … recorded", then refused


def test_a_refused_mapping_says_so_not_that_nothing_is_pending(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    """A refused Knex mapping ended `dry run: nothing was written; 0 pending` (and, not a dry run, `adopted: 0
    migration(s) recorded as applied`): nothing was worked out, and it says that."""
    run(database, SCHEMA, KNEX_DDL, (KNEX_ROW, ("001_create_users.js", 1)), (KNEX_ROW, ("002_seed_admin.js", 1)))
    write_migrations(tmp_path, PORTED)
    for dry_run in (("--dry-run",), ()):
        result = cli("baseline", "--env", "adopted", "--from", "knex", *dry_run, cwd=tmp_path, env=adopted)
        assert result.returncode == 1, result.stderr[-3000:]
        last = result.stdout.strip().splitlines()[-1]
        assert "the mapping was refused (above): nothing was written, nothing is worked out as adopted or " \
               "pending" in last, result.stdout
        assert "0 pending" not in result.stdout and "recorded as applied" not in result.stdout
    assert applied_ids(database) == []


def test_knex_history_in_two_schemas_is_adopted_from_the_one_schema_names(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    """The refusal said "name the one to adopt from", and no option named one."""
    run(database, SCHEMA, "CREATE SCHEMA old_copy", KNEX_DDL.replace('"knex_migrations', '"old_copy"."knex_migrations'),
        KNEX_DDL, (KNEX_ROW, ("001_create_users.js", 1)), (KNEX_ROW, ("002_add_phone_number_to_users.js", 1)),
        (KNEX_ROW, ("003_create_devices.js", 2)))
    write_migrations(tmp_path, PORTED)
    refused = cli("baseline", "--env", "adopted", "--from", "knex", "--dry-run", cwd=tmp_path, env=adopted)
    assert refused.returncode == 1
    assert "Knex's history is in 2 schemas" in refused.stderr
    assert "`rds-migrations baseline --env adopted --from knex --schema old_copy`" in refused.stderr
    chosen = cli("baseline", "--env", "adopted", "--from", "knex", "--schema", "public", "--json", cwd=tmp_path,
                 env=adopted)
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    assert json.loads(chosen.stdout)["adopted"] == [name[:-4] for name in PORTED]
    alone = cli("baseline", "--env", "adopted", "--through", "0", "--schema", "public", cwd=tmp_path, env=adopted)
    assert alone.returncode == 2 and "give it with --from" in alone.stderr


def test_a_refused_mapping_is_shown_entry_by_entry_in_json(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    run(database, SCHEMA, KNEX_DDL, (KNEX_ROW, ("001_create_users.js", 1)), (KNEX_ROW, ("002_seed_admin.js", 1)))
    write_migrations(tmp_path, PORTED)
    result = cli("baseline", "--env", "adopted", "--from", "knex", "--dry-run", "--json", cwd=tmp_path, env=adopted)
    assert result.returncode == 1, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert "Knex's history cannot be adopted" in document["error"] and "002_seed_admin.js" in document["error"]
    assert document["mapping"]["ok"] is False
    assert {"entry": "001_create_users.js", "migration": "0001.create-users"} in document["mapping"]["mapping"]
    assert [e for e in document["mapping"]["errors"] if e.startswith("002_seed_admin.js")]


def test_through_0_adopts_foreign_tables_and_a_migration_altering_one_is_rehearsed_on_the_target_schema(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    run(database, "CREATE TABLE pgbench_accounts (aid integer NOT NULL PRIMARY KEY, bid integer, abalance integer, "
                  "filler character(84))", "INSERT INTO pgbench_accounts VALUES (1, 1, 0, '')")
    write_migrations(tmp_path, {"0001.accounts-note.sql": "ALTER TABLE pgbench_accounts ADD COLUMN note text;\n"})
    assert cli("run", "--env", "adopted", cwd=tmp_path, env=adopted).returncode == 1  # not adopted yet

    adopted_now = cli("baseline", "--env", "adopted", "--through", "0", cwd=tmp_path, env=adopted)
    assert adopted_now.returncode == 0, adopted_now.stderr[-3000:]
    result = cli("run", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a copy of the target's schema" in result.stderr  # replayed from nothing it would fail: no such table
    assert applied_ids(database) == ["0001.accounts-note"]
    with connected(database) as conn:
        assert conn.execute("SELECT note FROM pgbench_accounts").fetchall() == [(None,)]


def test_a_hand_added_column_and_a_dropped_index_are_named_by_drift_and_block_the_run(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    write_migrations(tmp_path, PORTED)
    assert cli("run", "--env", "adopted", cwd=tmp_path, env=adopted).returncode == 0
    clean = cli("drift", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert clean.returncode == 0 and "no drift" in clean.stdout

    run(database, "ALTER TABLE users ADD COLUMN nickname text", "DROP INDEX devices_user_id_idx")
    drifted = cli("drift", "--env", "adopted", "--json", cwd=tmp_path, env=adopted)
    assert drifted.returncode == 1
    texts = [d["text"] for d in json.loads(drifted.stdout)["differences"]]
    assert "column public.users.nickname: not made by any migration (added by hand?)" in texts
    assert "index public.devices_user_id_idx: missing (dropped by hand?)" in texts

    write_migrations(tmp_path, NEW)
    blocked = cli("run", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert blocked.returncode == 1
    assert "the live schema has drifted" in blocked.stderr and "public.users.nickname" in blocked.stderr
    assert "0004.create-sessions" not in applied_ids(database)

    # The way out the failure names: what was changed by hand, written as migrations. One of the two is not enough.
    write_migrations(tmp_path, {"0005.keep-nickname.sql": "ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname text;"})
    half = cli("run", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert half.returncode == 1
    assert ("drift: 1 difference (1 missing) in 16 objects compared: index public.devices_user_id_idx: missing"
            in half.stderr)
    write_migrations(tmp_path, {
        "0006.index-dropped.sql": "-- transactional: false\nDROP INDEX CONCURRENTLY IF EXISTS devices_user_id_idx;"})
    both = cli("run", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert both.returncode == 0, both.stderr[-3000:]
    assert "column public.users.nickname: not made by any migration (added by hand?): accounted for by a pending " \
           "migration, not drift" in both.stdout + both.stderr
    assert {"0004.create-sessions", "0005.keep-nickname", "0006.index-dropped"} <= set(applied_ids(database))
    after = cli("drift", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert after.returncode == 0 and "no drift" in after.stdout


def test_a_database_whose_schemas_a_dba_made_first_shows_no_drift_until_something_changes(
        tmp_path: Path, database: Connection) -> None:
    """No `public`, a schema made by hand before any migration, a search_path naming it and the one the first
    migration makes: drift's reference starts the same way, so only a change by hand is named, in `app`."""
    run(database, "DROP SCHEMA public", "CREATE SCHEMA shared",
        f'ALTER DATABASE "{database.dbname}" SET search_path = app, shared')
    write_migrations(tmp_path, {"0001.schema.sql": "CREATE SCHEMA app;\n",
                                "0002.t.sql": "CREATE TABLE t (id bigint PRIMARY KEY);\n",
                                "0003.u.sql": "CREATE TABLE u (id bigint PRIMARY KEY, t_id bigint REFERENCES t);\n"})
    url = ("--database-url", url_of(database))
    assert cli("run", *url, cwd=tmp_path).returncode == 0
    clean = cli("drift", *url, "--json", cwd=tmp_path)
    assert json.loads(clean.stdout)["differences"] == [] and clean.returncode == 0, clean.stdout

    run(database, "ALTER TABLE app.t ADD COLUMN nickname text")
    drifted = cli("drift", *url, "--json", cwd=tmp_path)
    assert drifted.returncode == 1
    assert [d["text"] for d in json.loads(drifted.stdout)["differences"]] == [
        "column app.t.nickname: not made by any migration (added by hand?)"]


def test_a_copy_of_the_schema_keeps_the_databases_search_path(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    """The rehearsal on a copy of the target's schema, and drift's reference rebuilt from a baseline's dump,
    start with the target's search_path (`app`, as a DBA set it): no dump holds it, and every unqualified name
    in a migration used to be "relation … does not exist" there, so such a database could not be migrated."""
    run(database, "DROP SCHEMA public", "CREATE SCHEMA app",
        f'ALTER DATABASE "{database.dbname}" SET search_path = app', "CREATE TABLE app.users (id bigint PRIMARY KEY)")
    write_migrations(tmp_path, {"0001.users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n"})
    adopt = cli("baseline", "--env", "adopted", "--through", "0001", cwd=tmp_path, env=adopted)
    assert adopt.returncode == 0, adopt.stdout + adopt.stderr[-3000:]
    write_migrations(tmp_path, {"0002.email.sql": "ALTER TABLE users ADD COLUMN email text;\n"})
    result = cli("run", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a copy of the target's schema" in result.stderr and "): ok" in result.stderr, result.stderr[-3000:]
    assert "0002.email" in applied_ids(database)
    run(database, "DELETE FROM _rds_migrations_schema")  # forget the remembered reference: rebuild it
    drift = cli("drift", "--env", "adopted", "--json", cwd=tmp_path, env=adopted)
    assert drift.returncode == 0 and json.loads(drift.stdout)["differences"] == [], drift.stdout + drift.stderr


def test_a_reference_rebuilt_from_the_baseline_keeps_what_a_dump_cannot_carry(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    """Adopted: an inheritance child that gained a column before its parent did (a dump makes it again with the
    inherited columns first), an INVALID index left by a failed concurrent build (a dump leaves it out), and Knex's
    history under its own `tableName` (dropped after the adoption). Drift's reference rebuilt from the baseline's
    dump read them as a column order changed, an index added by hand and two tables dropped by hand."""
    run(database, "CREATE TABLE events (id bigint, at timestamptz)", "CREATE TABLE events_2019 () INHERITS (events)",
        "ALTER TABLE events_2019 ADD COLUMN legacy_flag boolean", "ALTER TABLE events ADD COLUMN source text",
        "CREATE TABLE dup (x int)", "INSERT INTO dup VALUES (1), (1)",
        "CREATE TABLE migrations (id serial PRIMARY KEY, name varchar(255), batch int, migration_time timestamptz)",
        "CREATE TABLE migrations_lock (index serial PRIMARY KEY, is_locked int)",
        ("INSERT INTO migrations (name, batch, migration_time) VALUES (%s, 1, now())", ("001_create_events.js",)))
    with pytest.raises(psycopg.errors.UniqueViolation):
        run(database, "CREATE UNIQUE INDEX CONCURRENTLY dup_x ON dup (x)")
    write_migrations(tmp_path, {"0001.create-events.sql": "CREATE TABLE events (id bigint, at timestamptz);\n"})
    # Adopted as it is: 0001 makes none of the rest (baseline_replay.py), and what matters here is the dump.
    adopt = cli("baseline", "--env", "adopted", "--from", "knex", "--accept-differences", cwd=tmp_path, env=adopted)
    assert adopt.returncode == 0, adopt.stdout + adopt.stderr[-3000:]
    run(database, "DROP TABLE migrations, migrations_lock")  # Knex is gone: its tables go too
    write_migrations(tmp_path, {"0002.audit.sql": "CREATE TABLE audit (id bigint);\n"})
    ran = cli("run", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert ran.returncode == 0, ran.stderr[-3000:]

    for rebuilt in (False, True):
        if rebuilt:  # forget the reference remembered after the run (a run that found drift remembers none)
            run(database, "DELETE FROM _rds_migrations_schema WHERE recorded_at = "
                          "(SELECT max(recorded_at) FROM _rds_migrations_schema)")
        drift = cli("drift", "--env", "adopted", "--json", cwd=tmp_path, env=adopted)
        document = json.loads(drift.stdout)
        assert document["differences"] == [] and drift.returncode == 0, drift.stdout + drift.stderr[-3000:]
    run(database, "ALTER TABLE events_2019 ADD COLUMN note text")  # a change by hand is still one
    drift = cli("drift", "--env", "adopted", "--json", cwd=tmp_path, env=adopted)
    assert [d["text"] for d in json.loads(drift.stdout)["differences"]] == [
        "column public.events_2019.note: not made by any migration (added by hand?)"]


def test_a_pending_migration_that_fails_on_a_drifted_database_leaves_the_drift_standing_and_says_so(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    """Whether the pending migrations account for the drift is found by replaying them on a scratch database;
    when one fails there, the drift blocks as it is, the note says why, and nothing reads as applied."""
    write_migrations(tmp_path, PORTED)
    assert cli("run", "--env", "adopted", cwd=tmp_path, env=adopted).returncode == 0
    run(database, "ALTER TABLE users ADD COLUMN nickname text")
    write_migrations(tmp_path, {"0004.broken.sql": "ALTER TABLE no_such_table ADD COLUMN x int;\n"})
    result = cli("run", "--env", "adopted", cwd=tmp_path, env=adopted)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "column public.users.nickname: not made by any migration" in result.stderr
    assert ("whether the pending migrations account for it is not known: drift's reference could not be rebuilt "
            "on a scratch database") in result.stderr and 'relation "no_such_table" does not exist' in result.stderr
    assert "applied:    none" in result.stderr and "0004.broken" not in applied_ids(database)


def test_a_rollback_on_a_drifted_database_is_refused_as_a_run_is(
        tmp_path: Path, database: Connection, adopted: dict[str, str]) -> None:
    """Rollback files assume the schema the migrations made: with `policy.drift = "block"` a rollback on a
    database changed by hand is refused before anything is undone, as a run is (it went ahead without a word)."""
    write_migrations(tmp_path, {"0001.users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
                                "0002.devices.sql": "CREATE TABLE devices (id bigint PRIMARY KEY);\n",
                                "0002.devices.rollback.sql": "DROP TABLE devices;\n"})
    assert cli("run", "--env", "adopted", cwd=tmp_path, env=adopted).returncode == 0
    run(database, "ALTER TABLE users ADD COLUMN nickname text")
    refused = cli("rollback", "--env", "adopted", "--to", "1", cwd=tmp_path, env=adopted)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "column public.users.nickname: not made by any migration" in refused.stderr
    assert applied_ids(database) == ["0001.users", "0002.devices"]


PGBENCH_ACCOUNTS = ("CREATE TABLE pgbench_accounts (aid integer NOT NULL PRIMARY KEY, bid integer, abalance integer, "
                    "filler character(84))")
WIDGETS_THEN_ACCOUNTS = {
    "0001.create-widgets.sql": "CREATE TABLE widgets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);\n",
    "0002.accounts-note.sql": "-- depends: 0001.create-widgets\nALTER TABLE pgbench_accounts ADD COLUMN note text;\n",
}


def test_an_adopted_database_is_rehearsed_on_a_copy_of_its_schema_with_the_shipped_database_url_environment(
        tmp_path: Path, database: Connection) -> None:
    """README's path for a database no tool migrated (`baseline --through 0`, then `run --database-url`): the
    shipped `database-url` environment leaves `rehearsal.start` unset, and a rehearsal from nothing failed with
    `relation "pgbench_accounts" does not exist`. An adopted target is rehearsed on a copy of its schema, and the
    run says why, on this run and the next."""
    run(database, PGBENCH_ACCOUNTS, "INSERT INTO pgbench_accounts VALUES (1, 1, 0, '')")
    write_migrations(tmp_path, WIDGETS_THEN_ACCOUNTS)
    url = ("--database-url", url_of(database))
    adopt = cli("baseline", *url, "--through", "0", cwd=tmp_path)
    assert adopt.returncode == 0, adopt.stdout + adopt.stderr[-3000:]

    result = cli("run", *url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("(rehearsed on a copy of the target's schema: it was adopted with a baseline, so the migrations alone "
            "do not build it)") in result.stderr
    assert "Rehearsing on a copy of the target's schema, not from an empty database" in result.stderr
    assert applied_ids(database) == ["0001.create-widgets", "0002.accounts-note"]

    write_migrations(tmp_path, {"0003.accounts-flag.sql": "ALTER TABLE pgbench_accounts ADD COLUMN flag boolean;\n"})
    again = cli("run", *url, cwd=tmp_path)  # history now, and still adopted: still on a copy of its schema
    assert again.returncode == 0, again.stderr[-3000:]
    assert "it was adopted with a baseline" in again.stderr and "from scratch" not in again.stderr
    with connected(database) as conn:
        assert conn.execute("SELECT note, flag FROM pgbench_accounts").fetchall() == [(None, None)]


def test_a_rehearsal_asked_to_start_empty_fails_on_an_adopted_table_and_names_the_setting_that_fixes_it(
        tmp_path: Path, database: Connection) -> None:
    """`start = "empty"` written in the environment is obeyed (the directory must build a database on its own):
    the failure on a table the target holds and no migration makes names `start = "target_schema"`."""
    (tmp_path / "environments.toml").write_text(
        ADOPTED.replace("[environments.adopted]", "[environments.from-nothing]")
        .replace('start = "target_schema"', 'start = "empty"').replace('drift = "block"', 'drift = "ignore"'))
    env = {"RDS_MIGRATIONS_ENVIRONMENTS": str(tmp_path / "environments.toml"), "DATABASE_URL": url_of(database)}
    run(database, PGBENCH_ACCOUNTS)
    write_migrations(tmp_path, WIDGETS_THEN_ACCOUNTS)
    assert cli("baseline", "--env", "from-nothing", "--through", "0", cwd=tmp_path, env=env).returncode == 0

    result = cli("run", "--env", "from-nothing", cwd=tmp_path, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert 'relation "pgbench_accounts" does not exist' in result.stderr
    assert ("pgbench_accounts is on the target, but no migration makes it and this rehearsal started from an empty "
            'database: set `rehearsal = { start = "target_schema" }` in [environments.from-nothing]') in result.stderr
    assert "it was adopted with a baseline" not in result.stderr and applied_ids(database) == []

    write_migrations(tmp_path, {"0002.accounts-note.sql": "-- depends: 0001.create-widgets\n"
                                                          "ALTER TABLE no_such_table ADD COLUMN note text;\n"})
    missing = cli("run", "--env", "from-nothing", cwd=tmp_path, env=env)  # on no table the target holds: no hint
    assert missing.returncode == 1 and 'relation "no_such_table" does not exist' in missing.stderr
    assert "target_schema" not in missing.stderr


def test_an_empty_database_with_no_history_is_still_rehearsed_from_nothing_with_the_cache(
        tmp_path: Path, database: Connection) -> None:
    """A pull request's CI (an empty services database, no history) and an ordinary target: the rehearsal starts
    from nothing, and the next run takes the cached rehearsal database."""
    url = ("--database-url", url_of(database))
    write_migrations(tmp_path, {"0001.users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n"})
    first = cli("run", *url, cwd=tmp_path)
    assert first.returncode == 0 and "applied 1 from scratch" in first.stderr, first.stderr[-3000:]
    write_migrations(tmp_path, {"0002.devices.sql": "CREATE TABLE devices (id bigint PRIMARY KEY);\n"})
    second = cli("run", *url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "started from a cached database holding the first 1 migrations, applied 1 on top" in second.stderr
    assert "a copy of the target's schema" not in first.stderr + second.stderr
