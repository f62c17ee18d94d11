"""Adoption, read-only, on real PostgreSQL: the census of a database with no history of ours, and the history
Knex, Flyway and golang-migrate leave, read and mapped onto a migrations directory.

Each tool's tables are created with that tool's own DDL, copied from its source (cited beside each), and
filled the way the tool fills them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tasks.engine.clients import client_binary
from tasks.engine.connection import Connection, connected
from tasks.engine.errors import UsageError
from tasks.engine.migrations.adopt import AdoptionRefused, Census, census, read_applied
from tasks.engine.migrations.adopt_mapping import map_to_catalog, slug_key
from tasks.engine.migrations.catalog import Catalog, read_catalog
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.session import session
from tests.helpers import write_migrations

# knex/knex lib/migrations/migrate/table-creator.js (_createMigrationTable, _createMigrationLockTable,
# _insertLockRowIfNeeded) compiled by lib/dialects/postgres/schema/pg-columncompiler.js (increments -> serial
# primary key, string -> varchar(255), timestamp -> timestamptz): the SQL Knex sends to PostgreSQL.
KNEX_DDL = """
create table "knex_migrations" ("id" serial primary key, "name" varchar(255), "batch" integer,
                                "migration_time" timestamptz);
create table "knex_migrations_lock" ("index" serial primary key, "is_locked" integer);
insert into "knex_migrations_lock" ("is_locked") values (0);
"""
# knex/knex lib/migrations/migrate/Migrator.js _waterfallBatch: one row per file, `{name, batch, migration_time}`.
KNEX_ROW = 'insert into "knex_migrations" ("name", "batch", "migration_time") values (%s, %s, now())'

# flyway/flyway flyway-database/flyway-database-postgresql/src/main/java/org/flywaydb/database/postgresql/
# PostgreSQLDatabase.java getRawCreateScript (baseline=false), for table "<schema>"."flyway_schema_history".
FLYWAY_DDL = """
CREATE TABLE "{schema}"."flyway_schema_history" (
    "installed_rank" INT NOT NULL,
    "version" VARCHAR(50),
    "description" VARCHAR(200) NOT NULL,
    "type" VARCHAR(20) NOT NULL,
    "script" VARCHAR(1000) NOT NULL,
    "checksum" INTEGER,
    "installed_by" VARCHAR(100) NOT NULL,
    "installed_on" TIMESTAMP NOT NULL DEFAULT now(),
    "execution_time" INTEGER NOT NULL,
    "success" BOOLEAN NOT NULL
);
ALTER TABLE "{schema}"."flyway_schema_history" ADD CONSTRAINT "flyway_schema_history_pk" PRIMARY KEY ("installed_rank");
CREATE INDEX "flyway_schema_history_s_idx" ON "{schema}"."flyway_schema_history" ("success");
"""
# flyway/flyway flyway-core .../internal/database/base/Database.java getInsertStatement (and getBaselineStatement:
# rank 1, the baseline version, '<< Flyway Baseline >>', 'BASELINE', NULL checksum, 0 ms, TRUE).
FLYWAY_ROW = ('INSERT INTO "{schema}"."flyway_schema_history" ("installed_rank", "version", "description", "type", '
              '"script", "checksum", "installed_by", "execution_time", "success") VALUES (%s, %s, %s, %s, %s, %s, '
              "'deploy', 12, %s)")

# golang-migrate/migrate database/postgres/postgres.go ensureVersionTable and SetVersion (TRUNCATE, then one row).
GOLANG_DDL = 'CREATE TABLE IF NOT EXISTS "public"."schema_migrations" (version bigint not null primary key, ' \
             "dirty boolean not null)"
GOLANG_ROW = 'INSERT INTO "public"."schema_migrations" (version, dirty) VALUES (%s, %s)'

# Rails' ActiveRecord::SchemaMigration: same name, not golang-migrate's columns.
RAILS_DDL = 'CREATE TABLE "schema_migrations" ("version" character varying NOT NULL PRIMARY KEY)'


def run(database: Connection, *statements: str | tuple[str, tuple]) -> None:
    with connected(database) as conn:
        for statement in statements:
            conn.execute(*statement) if isinstance(statement, tuple) else conn.execute(statement)


def catalog_of(tmp_path: Path, *ids: str) -> Catalog:
    directory = write_migrations(tmp_path, {f"{i}.sql": f"SELECT {n};\n" for n, i in enumerate(ids)})
    catalog = read_catalog(directory, tmp_path)
    assert catalog.problems == ()
    return catalog


def knex(database: Connection, *rows: tuple[str, int]) -> None:
    run(database, KNEX_DDL, *((KNEX_ROW, row) for row in rows))


def flyway(database: Connection, *rows: tuple, schema: str = "public") -> None:
    run(database, f'CREATE SCHEMA IF NOT EXISTS "{schema}"', FLYWAY_DDL.format(schema=schema),
        *((FLYWAY_ROW.format(schema=schema), row) for row in rows))


def applied(database: Connection, tool: str) -> list:
    with connected(database) as conn:
        return read_applied(conn, tool)


def census_of(database: Connection) -> Census:
    with connected(database) as conn:
        return census(conn)


# ---- slug keys (no database) -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "002_add_phone_number_to_users.js", "0002.add-phone-number-to-users", "0002.add-phone-number-to-users.sql",
    "20231004120000_Add_Phone_Number_To_Users.ts", "add_phone_number_to_users.cjs", "Add phone number to users",
    "7-add-phone-number-to-users.mjs",
])
def test_one_slug_key_whatever_the_number_extension_separator_or_case(name: str) -> None:
    assert slug_key(name) == "add-phone-number-to-users"


def test_only_the_first_number_is_a_prefix() -> None:
    assert slug_key("001_2fa_settings.js") == slug_key("0005.2fa-settings") == "2fa-settings"
    assert slug_key("001.js") == "001"


# ---- Knex ---------------------------------------------------------------------------------------------------

USERS_PHONE_DEVICES = ("0001.create-users", "0002.add-phone-number-to-users", "0003.create-devices",
                       "0004.create-payments")


def test_knex_history_maps_by_slug_in_the_order_knex_applied_it(database: Connection, tmp_path: Path) -> None:
    knex(database, ("001_create_users.js", 1), ("002_add_phone_number_to_users.js", 1), ("003_create_devices.ts", 2))
    entries = applied(database, "knex")
    assert [(e.name, e.detail) for e in entries] == [
        ("001_create_users.js", "batch 1"), ("002_add_phone_number_to_users.js", "batch 1"),
        ("003_create_devices.ts", "batch 2")]

    adoption = map_to_catalog(entries, catalog_of(tmp_path, *USERS_PHONE_DEVICES), "knex")

    assert adoption.ok, adoption.errors
    assert adoption.pairs == (("001_create_users.js", "0001.create-users"),
                              ("002_add_phone_number_to_users.js", "0002.add-phone-number-to-users"),
                              ("003_create_devices.ts", "0003.create-devices"))
    assert adoption.applied == USERS_PHONE_DEVICES[:3] and adoption.pending == ("0004.create-payments",)
    text = adoption.to_text()
    rows = [line for line in text.splitlines() if "→  0" in line]
    assert rows[0] == "  001_create_users.js" + " " * 15 + "→  0001.create-users"
    assert len(rows) == 3 and len({row.index("→") for row in rows}) == 1  # aligned
    assert "pending  0004.create-payments" in text
    assert json.loads(json.dumps(adoption.to_json()))["mapping"][2] == {
        "entry": "003_create_devices.ts", "migration": "0003.create-devices"}
    adoption.check()  # no error: does not raise


def test_knex_timestamps_and_the_order_of_ids_not_names(database: Connection, tmp_path: Path) -> None:
    # Knex's history is read by id: a file merged late with an older timestamp was applied last.
    knex(database, ("20231004120000_create_users.js", 1), ("20231005090000_create_devices.js", 1),
         ("20231004130000_add_phone_number_to_users.js", 2))
    entries = applied(database, "knex")
    assert [e.name for e in entries][-1] == "20231004130000_add_phone_number_to_users.js"
    adoption = map_to_catalog(entries, catalog_of(tmp_path, *USERS_PHONE_DEVICES), "knex")
    assert adoption.applied == USERS_PHONE_DEVICES[:3]


def test_an_unknown_knex_entry_is_refused_by_name_and_nothing_would_be_recorded(
        database: Connection, tmp_path: Path) -> None:
    knex(database, ("001_create_users.js", 1), ("002_add_legacy_flags.js", 1))
    adoption = map_to_catalog(applied(database, "knex"), catalog_of(tmp_path, *USERS_PHONE_DEVICES), "knex")
    assert not adoption.ok
    assert [e.split(":")[0] for e in adoption.errors] == ["002_add_legacy_flags.js"]
    assert "NNNN.add-legacy-flags.sql" in adoption.errors[0]
    assert adoption.applied == () and adoption.pending == ()
    assert "refused, nothing will be recorded" in adoption.to_text()
    with pytest.raises(AdoptionRefused, match="002_add_legacy_flags.js"):
        adoption.check()


def test_a_gap_in_the_apply_order_is_refused_naming_the_missing_migration(
        database: Connection, tmp_path: Path) -> None:
    knex(database, ("001_create_users.js", 1), ("003_create_devices.js", 1))
    adoption = map_to_catalog(applied(database, "knex"), catalog_of(tmp_path, *USERS_PHONE_DEVICES), "knex")
    assert len(adoption.errors) == 1
    assert adoption.errors[0].startswith("0002.add-phone-number-to-users: not in Knex's history, yet "
                                         "0003.create-devices after it is")


def test_two_entries_for_one_migration_are_refused(database: Connection, tmp_path: Path) -> None:
    # The team moved from .js to .ts and Knex ran the renamed file again.
    knex(database, ("001_create_users.js", 1), ("001_create_users.ts", 2))
    adoption = map_to_catalog(applied(database, "knex"), catalog_of(tmp_path, *USERS_PHONE_DEVICES), "knex")
    assert [e.split(":")[0] for e in adoption.errors] == ["001_create_users.ts"]
    assert "which 001_create_users.js already matches" in adoption.errors[0]


def test_one_slug_twice_maps_each_entry_to_its_own_file(database: Connection, tmp_path: Path) -> None:
    knex(database, ("001_create_users.js", 1), ("002_add_index.js", 1), ("003_add_index.js", 2))
    catalog = catalog_of(tmp_path, "0001.create-users", "0002.add-index", "0003.add-index")
    assert map_to_catalog(applied(database, "knex"), catalog, "knex").pairs[1:] == (
        ("002_add_index.js", "0002.add-index"), ("003_add_index.js", "0003.add-index"))


def test_a_held_knex_lock_refuses(database: Connection) -> None:
    knex(database, ("001_create_users.js", 1))
    # what Migrator.js _lockMigrations does: update ... set is_locked = 1 where is_locked = 0
    run(database, 'update "knex_migrations_lock" set "is_locked" = 1 where "is_locked" = 0')
    with pytest.raises(AdoptionRefused, match=r"knex_migrations_lock is locked.*knex migrate:unlock"):
        applied(database, "knex")


def test_a_knex_row_with_no_name_is_refused_naming_its_id(database: Connection) -> None:
    """Written by hand (Knex names every row): refused with the row ids, where a NULL name used to end in a
    Python traceback and an empty one in "no migration is named like it (looked for NNNN..sql)"."""
    knex(database, ("001_create_users.js", 1))
    run(database, "INSERT INTO knex_migrations (name, batch) VALUES (NULL, 4), ('  ', 4)")
    with pytest.raises(AdoptionRefused, match=r"knex_migrations has 2 row\(s\) with no name \(id 2 and 3\)"):
        applied(database, "knex")


def test_an_empty_knex_history_adopts_nothing_and_leaves_everything_pending(
        database: Connection, tmp_path: Path) -> None:
    knex(database)  # `knex migrate:latest` with no files, or every batch rolled back
    adoption = map_to_catalog(applied(database, "knex"), catalog_of(tmp_path, *USERS_PHONE_DEVICES), "knex")
    assert adoption.ok and adoption.pairs == () and adoption.pending == USERS_PHONE_DEVICES


# ---- Flyway -------------------------------------------------------------------------------------------------

FLYWAY_HISTORY = (
    # Flyway created schema "app" (rank 0, SCHEMA), the database was baselined at 1, then V2, R__ and V3 ran.
    (0, None, "<< Flyway Schema Creation >>", "SCHEMA", '"app"', None, True),
    (1, "1", "<< Flyway Baseline >>", "BASELINE", "<< Flyway Baseline >>", None, True),
    (2, "2", "Add phone number to users", "SQL", "V2__Add_phone_number_to_users.sql", 1021, True),
    (3, None, "views", "SQL", "R__views.sql", 77, True),
    (4, "3", "create devices", "SQL", "V3__create_devices.sql", -5, True),
)


def test_flyway_history_maps_by_version_then_description(database: Connection, tmp_path: Path) -> None:
    flyway(database, *FLYWAY_HISTORY, schema="app")
    catalog = catalog_of(tmp_path, "0001.baseline", "0002.add-phone-number-to-users", "0003.create-devices",
                         "0004.create-payments")
    adoption = map_to_catalog(applied(database, "flyway"), catalog, "flyway")
    assert adoption.ok, adoption.errors
    assert adoption.pairs == (("<< Flyway Baseline >> (≤ 1)", "0001.baseline"),
                              ("V2__Add_phone_number_to_users.sql", "0002.add-phone-number-to-users"),
                              ("V3__create_devices.sql", "0003.create-devices"))
    assert [p.entry for p in adoption.skipped] == ["R__views.sql"]
    assert adoption.pending == ("0004.create-payments",)
    assert census_of(database).tool_tables == ("app.flyway_schema_history",)


@pytest.mark.parametrize(("row", "catalog_ids", "error"), [
    ((5, "4", "add index", "SQL", "V4__add_index.sql", 1, True), ("0003.create-devices",),
     "V4__add_index.sql: no migration in migrations/ has version 4"),
    ((5, "4", "add index", "SQL", "V4__add_index.sql", 1, True), ("0003.create-devices", "0004.add-indexes"),
     "V4__add_index.sql: version 4 here is 0004.add-indexes, but Flyway applied “add index”"),
    ((5, "3.1", "add index", "SQL", "V3_1__add_index.sql", 1, True), ("0003.create-devices",),
     "V3_1__add_index.sql: version 3.1 is not a whole number"),
])
def test_flyway_entries_that_match_nothing_are_refused_by_name(
        database: Connection, tmp_path: Path, row: tuple, catalog_ids: tuple[str, ...], error: str) -> None:
    flyway(database, *FLYWAY_HISTORY, row)
    catalog = catalog_of(tmp_path, "0001.baseline", "0002.add-phone-number-to-users", *catalog_ids)
    adoption = map_to_catalog(applied(database, "flyway"), catalog, "flyway")
    assert [e for e in adoption.errors if e.startswith(error)], adoption.errors


def test_a_flyway_description_that_starts_with_a_number_keeps_it(database: Connection, tmp_path: Path) -> None:
    """Flyway's description holds no version (the script's `V2__` does): `2024 cleanup` is what it says, and
    0002.2024-cleanup is its file. Its year was taken for a version prefix and cut off."""
    flyway(database, *FLYWAY_HISTORY[:3], (5, "3", "2024 cleanup", "SQL", "V3__2024_cleanup.sql", 1, True))
    catalog = catalog_of(tmp_path, "0001.baseline", "0002.add-phone-number-to-users", "0003.2024-cleanup")
    adoption = map_to_catalog(applied(database, "flyway"), catalog, "flyway")
    assert adoption.ok, adoption.errors
    assert ("V3__2024_cleanup.sql", "0003.2024-cleanup") in adoption.pairs


def test_a_dotted_flyway_version_maps_to_a_renumbered_file_that_kept_its_description(
        database: Connection, tmp_path: Path) -> None:
    flyway(database, *FLYWAY_HISTORY, (5, "3.1", "add index", "SQL", "V3_1__add_index.sql", 1, True),
           (6, "4", "remove legacy", "SQL", "V4__remove_legacy.sql", 1, True),
           (7, "4", "remove legacy", "DELETE", "V4__remove_legacy.sql", None, True))  # `flyway repair`: deleted
    catalog = catalog_of(tmp_path, "0001.baseline", "0002.add-phone-number-to-users", "0003.create-devices",
                         "0004.add-index")
    adoption = map_to_catalog(applied(database, "flyway"), catalog, "flyway")
    assert adoption.ok, adoption.errors
    assert adoption.pairs[-1] == ("V3_1__add_index.sql", "0004.add-index") and adoption.pending == ()


def test_a_flyway_baseline_older_than_every_migration_is_skipped(database: Connection, tmp_path: Path) -> None:
    flyway(database, *FLYWAY_HISTORY[:3])
    adoption = map_to_catalog(applied(database, "flyway"), catalog_of(tmp_path, "0002.add-phone-number-to-users"),
                              "flyway")
    assert adoption.ok and adoption.applied == ("0002.add-phone-number-to-users",)
    assert adoption.skipped == (("<< Flyway Baseline >> (≤ 1)", "older than every migration here"),)


def test_a_failed_flyway_row_refuses_naming_it(database: Connection) -> None:
    flyway(database, *FLYWAY_HISTORY, (5, "4", "add index concurrently", "SQL", "V4__add_index_concurrently.sql",
                                       9, False))
    with pytest.raises(AdoptionRefused, match=r"installed_rank 5 \(V4__add_index_concurrently.sql, version 4\) as "
                                              r"failed.*flyway repair"):
        applied(database, "flyway")


# ---- golang-migrate -----------------------------------------------------------------------------------------


def test_golang_migrate_version_covers_every_migration_up_to_it(database: Connection, tmp_path: Path) -> None:
    run(database, GOLANG_DDL, (GOLANG_ROW, (2, False)))
    adoption = map_to_catalog(applied(database, "golang-migrate"), catalog_of(tmp_path, *USERS_PHONE_DEVICES),
                              "golang-migrate")
    assert adoption.pairs == (("version ≤ 2", "0001.create-users"), ("version ≤ 2", "0002.add-phone-number-to-users"))
    assert adoption.pending == USERS_PHONE_DEVICES[2:]


def test_a_golang_migrate_version_none_of_ours_has_is_refused(database: Connection, tmp_path: Path) -> None:
    run(database, GOLANG_DDL, (GOLANG_ROW, (20231004120000, False)))
    adoption = map_to_catalog(applied(database, "golang-migrate"), catalog_of(tmp_path, *USERS_PHONE_DEVICES),
                              "golang-migrate")
    assert adoption.errors[0].startswith("version ≤ 20231004120000: golang-migrate recorded version 20231004120000 "
                                         "and no migration in migrations/ has that version")


def test_a_dirty_golang_migrate_version_refuses_naming_it(database: Connection) -> None:
    run(database, GOLANG_DDL, (GOLANG_ROW, (3, True)))
    with pytest.raises(AdoptionRefused, match="schema_migrations is dirty at version 3"):
        applied(database, "golang-migrate")


# ---- where the history is ----------------------------------------------------------------------------------


def test_a_history_in_several_schemas_must_be_named(database: Connection, tmp_path: Path) -> None:
    flyway(database, *FLYWAY_HISTORY, schema="app")
    flyway(database, *FLYWAY_HISTORY[:2], schema="reporting")
    with pytest.raises(AdoptionRefused, match=r"in 2 schemas \(app.flyway_schema_history and "
                                              r"reporting.flyway_schema_history\): name the one"):
        applied(database, "flyway")
    with connected(database) as conn:
        assert len(read_applied(conn, "flyway", schema="app")) == 4
        assert len(read_applied(conn, "flyway", schema="reporting")) == 1
        with pytest.raises(AdoptionRefused, match="no Flyway history here: schema public holds no "
                                                  "flyway_schema_history with Flyway's columns"):
            read_applied(conn, "flyway", schema="public")
        with pytest.raises(UsageError, match="unknown migration tool 'liquibase'"):
            read_applied(conn, "liquibase")
    with pytest.raises(UsageError):
        map_to_catalog([], catalog_of(tmp_path, "0001.create-users"), "rails")


# ---- the census ---------------------------------------------------------------------------------------------


def test_census_of_a_hand_made_schema_counts_and_names_what_is_there(database: Connection) -> None:
    run(database,
        "CREATE EXTENSION citext",  # its type and functions are the extension's, not the team's
        "CREATE TYPE mood AS ENUM ('ok', 'sad')",
        "CREATE DOMAIN email AS citext CHECK (VALUE LIKE '%@%')",
        "CREATE TABLE users (id serial PRIMARY KEY, address email, feeling mood)",
        "CREATE TABLE devices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id int REFERENCES users)",
        "CREATE SEQUENCE invoice_numbers",
        "CREATE VIEW happy_users AS SELECT * FROM users WHERE feeling = 'ok'",
        "CREATE FUNCTION touch(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1'",
        "CREATE SCHEMA billing", "CREATE TABLE billing.invoices (number bigint)")
    found = census_of(database)
    assert (found.of("table").count, found.of("table").names) == (3, ("billing.invoices", "devices", "users"))
    assert found.of("sequence").names == ("devices_id_seq", "invoice_numbers", "users_id_seq")
    assert found.of("view").names == ("happy_users",) and found.of("function").names == ("touch(integer)",)
    assert found.of("type").names == ("email", "mood")
    assert (found.tools, found.has_history, found.empty, found.needs_baseline) == ((), False, False, True)
    assert found.refusal() == (
        "this database has 3 tables (billing.invoices, devices, users), 1 view (happy_users), 3 sequences "
        "(devices_id_seq, invoice_numbers, users_id_seq), 1 function (touch(integer)) and 2 types (email, mood) "
        "and no migration history: adopt it with `rds-migrations baseline`, which records as applied, without "
        "running them, the migrations already in it")


def test_census_of_a_pgbench_database(database: Connection) -> None:
    pgbench = client_binary("pgbench")
    subprocess.run([str(pgbench), "-i", "-I", "dtp", "-q"], env=database.libpq_env(), check=True,
                   capture_output=True, timeout=60)  # tables and primary keys, no rows
    found = census_of(database)
    assert found.of("table").names == ("pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers")
    assert [o.count for o in found.objects] == [4, 0, 0, 0, 0]
    assert found.refusal().startswith("this database has 4 tables (pgbench_accounts, pgbench_branches, "
                                      "pgbench_history, …) and no migration history")


@pytest.mark.parametrize(("tool", "ddl", "table"), [
    ("knex", KNEX_DDL, "knex_migrations"),
    ("knex", KNEX_DDL.replace("knex_migrations", "migrations"), "migrations"),  # knexfile's tableName
    ("flyway", FLYWAY_DDL.format(schema="public"), "flyway_schema_history"),
    ("flyway", FLYWAY_DDL.format(schema="public").replace("flyway_schema_history", "schema_version"),
     "schema_version"),  # Flyway before 5
    ("golang-migrate", GOLANG_DDL, "schema_migrations"),
])
def test_census_detects_each_tool_by_its_tables_alone(database: Connection, tool: str, ddl: str, table: str) -> None:
    run(database, ddl)
    found = census_of(database)
    assert found.tools == (tool,) and found.tool_tables == (table,)
    assert [o.count for o in found.objects] == [0, 0, 0, 0, 0]  # knex's serial sequences are its own too
    assert not found.empty and found.needs_baseline
    assert found.refusal() == (
        "this database has no tables of its own and no migration history: adopt it with `rds-migrations baseline` "
        f"({table} is here: it was migrated by {slug_key(tool).title().replace('Golang-Migrate', 'golang-migrate')}; "
        f"try `rds-migrations baseline --from {tool}`)")


def test_a_knex_history_under_another_name_is_read_and_a_look_alike_without_its_lock_is_not(
        database: Connection) -> None:
    run(database, KNEX_DDL.replace("knex_migrations", "migrations"),
        (KNEX_ROW.replace("knex_migrations", "migrations"), ("001_create_users.js", 1)),
        "CREATE SCHEMA other", 'CREATE TABLE other.jobs ("id" serial primary key, "name" varchar(255), '
                               '"batch" integer, "migration_time" timestamptz)')
    assert [(e.name, e.detail) for e in applied(database, "knex")] == [("001_create_users.js", "batch 1")]
    found = census_of(database)
    assert found.tools == ("knex",) and found.tool_tables == ("migrations",)
    assert found.of("table").names == ("other.jobs",)  # Knex's columns, no jobs_lock: a table of the team's


def test_census_leaves_a_rails_schema_migrations_as_a_user_table(database: Connection) -> None:
    run(database, RAILS_DDL, "CREATE TABLE users (id bigint)")
    found = census_of(database)
    assert found.tools == () and found.of("table").names == ("schema_migrations", "users")
    with pytest.raises(AdoptionRefused, match="no golang-migrate history here: no schema holds schema_migrations "
                                              "with golang-migrate's columns"):
        applied(database, "golang-migrate")


def test_census_of_an_empty_database_and_of_one_of_ours(database: Connection) -> None:
    assert census_of(database).empty and census_of(database).refusal() is None
    with connected(database) as conn:
        Ledger.open(conn).create_tables()
    run(database, "CREATE TABLE users (id bigint)")
    found = census_of(database)
    assert found.has_history and found.refusal() is None
    assert found.of("table").names == ("users",)  # yoyo's and our history tables are not counted


# ---- read-only ----------------------------------------------------------------------------------------------

FINGERPRINT_SQL = """
SELECT md5(string_agg(line, '|' ORDER BY line)) FROM (
  SELECT format('%s.%s %s %s %s', n.nspname, c.relname, c.relkind, c.relfilenode,
                (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum)
                 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0)) AS line
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT LIKE 'pg\\_%'
  UNION ALL SELECT format('%s', k) FROM knex_migrations k
  UNION ALL SELECT format('%s', l) FROM knex_migrations_lock l
  UNION ALL SELECT format('%s', f) FROM flyway_schema_history f
  UNION ALL SELECT format('%s', g) FROM schema_migrations g) lines
"""


def test_census_and_reading_history_write_nothing(database: Connection, tmp_path: Path) -> None:
    knex(database, ("001_create_users.js", 1))
    flyway(database, *FLYWAY_HISTORY)
    run(database, GOLANG_DDL, (GOLANG_ROW, (2, False)), "CREATE TABLE users (id serial)")
    with connected(database) as conn:
        before = conn.execute(FINGERPRINT_SQL).fetchone()
    # In a read-only session any write would fail (SQLSTATE 25006): all of it runs there.
    with session(database, read_only=True) as conn:
        found = census(conn)
        histories = {tool: read_applied(conn, tool) for tool in found.tools}
    assert found.tools == ("knex", "flyway", "golang-migrate") and all(histories.values())
    with connected(database) as conn:
        assert conn.execute(FINGERPRINT_SQL).fetchone() == before
        census(conn), [read_applied(conn, tool) for tool in found.tools]  # on a writable connection too
        assert conn.execute(FINGERPRINT_SQL).fetchone() == before
