"""A baseline replays the migrations it records on a scratch database and holds what they build against the
live schema, through the command line on real PostgreSQL: a Knex port that forgot an index (and wrote `bigint`
where Knex made `integer`) is refused under `policy.drift = "block"` with nothing recorded, recorded with a
warning under "warn" (or with --accept-differences), shown by a dry run that leaves nothing behind; a faithful
port is recorded; a file that cannot run from nothing is named; `--through` over tables made before the first
migration compares only what the migrations make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from psycopg import sql

from tasks.engine.connection import Connection, connected
from tasks.engine.embedded import embedded_server
from tests.helpers import applied_ids, cli, url_of, write_migrations
from tests.test_adopt import KNEX_DDL, KNEX_ROW, run

# What Knex made, and the files a team ported from its migrations.
KNEX_SCHEMA = """
CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers (id),
                     total_cents integer NOT NULL);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
"""
FAITHFUL = {
    "0001.create-customers.sql": "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL);\n",
    "0002.create-orders.sql": ("CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL "
                               "REFERENCES customers (id), total_cents integer NOT NULL);\n"
                               "CREATE INDEX orders_customer_id_idx ON orders (customer_id);\n"),
}
# The index forgotten, a column's type wrong: a new database built from these differs from production.
UNFAITHFUL = {**FAITHFUL, "0002.create-orders.sql": (
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers (id), "
    "total_cents bigint NOT NULL);\n")}
MISSING_INDEX = "index public.orders_customer_id_idx: not made by any migration (added by hand?)"
WRONG_TYPE = "column public.orders.total_cents: type: expected bigint, live integer"

ENVIRONMENTS = """
[environments.adopted]
tier = "production"
credentials = {{ kind = "url_env", variable = "DATABASE_URL" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "console" }}
rehearsal = {{ {rehearsal} }}
policy = {{ snapshot_required = false, rehearsal_required = {required}, lint_blocks_on = "error", drift = "{drift}" }}
"""


def environment(tmp_path: Path, database: Connection, drift: str, *, rehearsed: bool = True) -> dict[str, str]:
    """The `adopted` environment on `database`, its policy.drift `drift`; not `rehearsed`: one that never is."""
    rehearsal = 'kind = "target_server", start = "target_schema"' if rehearsed else 'kind = "none"'
    (tmp_path / "environments.toml").write_text(ENVIRONMENTS.format(
        drift=drift, rehearsal=rehearsal, required=str(rehearsed).lower()))
    return {"RDS_MIGRATIONS_ENVIRONMENTS": str(tmp_path / "environments.toml"), "DATABASE_URL": url_of(database)}


def knex_database(database: Connection) -> None:
    run(database, KNEX_SCHEMA, KNEX_DDL, (KNEX_ROW, ("001_create_customers.js", 1)),
        (KNEX_ROW, ("002_create_orders.js", 1)))


def scratch_databases(database: Connection) -> list[str]:
    """Scratch databases on the test server and on the embedded one (where a dry run replays); not the rehearsal
    cache's, which other tests' rehearsals keep there on purpose (rehearsal_cache.py)."""
    found, local = [], embedded_server()
    for server in (database, *([local.connection()] if local.port is not None else [])):
        with connected(server) as conn:
            found += [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rdsm\\_%' "
                                                 "AND datname NOT LIKE 'rdsm\\_rc\\_%'")]
    return found


def history_tables(database: Connection) -> list[str]:
    with connected(database) as conn:
        return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE '\\_yoyo%' "
                                           "OR tablename LIKE '\\_rds\\_migrations%'")]


def test_a_port_that_forgot_an_index_is_refused_under_block_and_nothing_is_recorded(
        tmp_path: Path, database: Connection) -> None:
    knex_database(database)
    write_migrations(tmp_path, UNFAITHFUL)
    env = environment(tmp_path, database, "block")

    refused = cli("baseline", "--env", "adopted", "--from", "knex", cwd=tmp_path, env=env)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert "do not build the schema the database holds: drift: 2 differences" in refused.stderr
    assert MISSING_INDEX in refused.stderr and WRONG_TYPE in refused.stderr
    assert "nothing was recorded" in refused.stderr and "fix the ported files" in refused.stderr
    assert "--accept-differences" in refused.stderr
    assert history_tables(database) == [] and applied_ids(database) == []  # history unchanged: none
    assert scratch_databases(database) == []

    shown = cli("baseline", "--env", "adopted", "--from", "knex", "--json", cwd=tmp_path, env=env)
    document = json.loads(shown.stdout)
    assert shown.returncode == 1 and document["refused"] is True and MISSING_INDEX in document["error"]
    assert {d["text"] for d in document["replay"]["drift"]["differences"]} == {MISSING_INDEX, WRONG_TYPE}
    assert history_tables(database) == []

    write_migrations(tmp_path, FAITHFUL)  # the way out: the files fixed
    fixed = cli("baseline", "--env", "adopted", "--from", "knex", cwd=tmp_path, env=env)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert applied_ids(database) == ["0001.create-customers", "0002.create-orders"]


@pytest.mark.parametrize("drift", ["warn", "ignore", "database-url"])
def test_a_port_that_forgot_an_index_is_recorded_with_a_warning_under_warn(
        tmp_path: Path, database: Connection, drift: str) -> None:
    """Under `warn`, and under `ignore` too (the shipped `database-url` environment's): an adoption happens once,
    so it is always checked; only `block` refuses."""
    knex_database(database)
    write_migrations(tmp_path, UNFAITHFUL)
    where = ("--database-url", url_of(database)) if drift == "database-url" else ("--env", "adopted")
    env = environment(tmp_path, database, "ignore" if drift == "database-url" else drift)
    if drift == "database-url":
        env.pop("RDS_MIGRATIONS_ENVIRONMENTS")
    result = cli("baseline", *where, "--from", "knex", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["replay"]["differs"] is True and document["refused"] is False
    assert {d["text"] for d in document["replay"]["drift"]["differences"]} == {MISSING_INDEX, WRONG_TYPE}
    assert "WARNING | the 2 migration(s) recorded, replayed from nothing" in result.stderr  # the log
    assert "| Replay: applying 0001.create-customers" in result.stderr and "| Applying" not in result.stderr
    assert "  warning:     the 2 migration(s) recorded" in result.stderr  # the notification
    assert MISSING_INDEX in result.stderr.split("Baseline SUCCEEDED")[1]
    assert applied_ids(database) == ["0001.create-customers", "0002.create-orders"]
    text = cli("baseline", *where, "--from", "knex", cwd=tmp_path, env=env)
    assert text.returncode == 0 and "already adopted" in text.stdout


def test_accept_differences_adopts_under_block_with_the_warning(tmp_path: Path, database: Connection) -> None:
    knex_database(database)
    write_migrations(tmp_path, UNFAITHFUL)
    env = environment(tmp_path, database, "block")
    result = cli("baseline", "--env", "adopted", "--from", "knex", "--accept-differences", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: the 2 migration(s) recorded" in result.stdout and MISSING_INDEX in result.stdout
    assert applied_ids(database) == ["0001.create-customers", "0002.create-orders"]


def test_a_faithful_port_is_recorded_with_no_difference(tmp_path: Path, database: Connection) -> None:
    knex_database(database)
    write_migrations(tmp_path, FAITHFUL)
    env = environment(tmp_path, database, "block")
    result = cli("baseline", "--env", "adopted", "--from", "knex", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    replay = json.loads(result.stdout)["replay"]
    assert replay["differs"] is False and replay["drift"]["differences"] == [] and replay["replayed"] == 2
    assert "build the schema the database holds" in replay["summary"]
    assert applied_ids(database) == ["0001.create-customers", "0002.create-orders"]
    assert scratch_databases(database) == []
    drift = cli("drift", "--env", "adopted", cwd=tmp_path, env=env)
    assert drift.returncode == 0 and "no drift" in drift.stdout


def test_a_dry_run_shows_the_differences_and_changes_nothing_anywhere(
        tmp_path: Path, database: Connection) -> None:
    knex_database(database)
    write_migrations(tmp_path, UNFAITHFUL)
    for drift, code in (("block", 1), ("warn", 0)):
        dry = cli("baseline", "--env", "adopted", "--from", "knex", "--dry-run", "--json", cwd=tmp_path,
                  env=environment(tmp_path, database, drift))
        assert dry.returncode == code, dry.stderr[-3000:]
        document = json.loads(dry.stdout)
        assert document["dry_run"] is True and document["replay"]["differs"] is True
        assert {d["text"] for d in document["replay"]["drift"]["differences"]} == {MISSING_INDEX, WRONG_TYPE}
        assert "the embedded server" in dry.stderr  # a dry run creates nothing on the target's server
        assert history_tables(database) == [] and scratch_databases(database) == []


def test_a_file_that_cannot_run_from_nothing_is_named_and_decided_by_the_policy(
        tmp_path: Path, database: Connection) -> None:
    knex_database(database)
    write_migrations(tmp_path, {**FAITHFUL, "0002.create-orders.sql": (
        "ALTER TABLE legacy_orders RENAME TO orders;\n")})  # a table only the live database ever had
    refused = cli("baseline", "--env", "adopted", "--from", "knex", cwd=tmp_path,
                  env=environment(tmp_path, database, "block"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert ('could not be: 0002.create-orders failed (statement 1 of 1, SQLSTATE 42P01): relation "legacy_orders" '
            "does not exist") in refused.stderr
    assert history_tables(database) == [] and scratch_databases(database) == []
    warned = cli("baseline", "--env", "adopted", "--from", "knex", cwd=tmp_path,
                 env=environment(tmp_path, database, "warn"))
    assert warned.returncode == 0 and "warning: " in warned.stdout and "legacy_orders" in warned.stdout
    assert applied_ids(database) == ["0001.create-customers", "0002.create-orders"]


@pytest.mark.parametrize("case", ["faithful", "forgot_index", "builds_on_legacy"])
def test_through_compares_only_what_the_migrations_make(tmp_path: Path, database: Connection, case: str) -> None:
    """`--through` over a database that held tables before its first migration (README, "Adopting an existing
    database"): a table no migration makes is not a difference, a file that alters one cannot run from nothing
    (said, not held against it); an index forgotten on a table the migrations make still is one."""
    run(database, "CREATE TABLE legacy (id bigint PRIMARY KEY)", "ALTER TABLE legacy ADD COLUMN note text",
        KNEX_SCHEMA.replace("REFERENCES customers (id)", ""))
    files = {"0001.create-customers.sql": FAITHFUL["0001.create-customers.sql"],
             "0002.create-orders.sql": FAITHFUL["0002.create-orders.sql"].replace("REFERENCES customers (id)", "")}
    if case == "forgot_index":
        files["0002.create-orders.sql"] = files["0002.create-orders.sql"].split("CREATE INDEX")[0]
    if case == "builds_on_legacy":
        files["0003.legacy-note.sql"] = "ALTER TABLE legacy ADD COLUMN IF NOT EXISTS note text;\n"
    write_migrations(tmp_path, files)
    through = "0003" if case == "builds_on_legacy" else "0002"
    result = cli("baseline", "--env", "adopted", "--through", through, "--json", cwd=tmp_path,
                 env=environment(tmp_path, database, "block"))
    replay = json.loads(result.stdout)["replay"]
    if case == "forgot_index":
        assert result.returncode == 1 and MISSING_INDEX in result.stderr
        assert replay["left_out"] > 0  # legacy, its columns, its key: not compared
        assert history_tables(database) == []
    elif case == "faithful":
        assert result.returncode == 0 and replay["differs"] is False, result.stderr[-3000:]
        assert replay["left_out"] > 0 and "not compared" in result.stderr
        assert applied_ids(database) == ["0001.create-customers", "0002.create-orders"]
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert replay["failure"] == ('0003.legacy-note failed (statement 1 of 1, SQLSTATE 42P01): relation "legacy" '
                                     "does not exist [ALTER TABLE legacy ADD COLUMN IF NOT EXISTS note text]")
        assert "could not be" in result.stderr and "not compared (with --through" in result.stderr
        assert "0003.legacy-note" in applied_ids(database)


@pytest.mark.parametrize("drift", ["ignore", "warn", "block"])
def test_a_replay_that_cannot_make_its_scratch_database_refuses_only_under_block(
        tmp_path: Path, database: Connection, login, drift: str) -> None:
    """An application role without CREATEDB, an environment that never rehearses: `warn` and `ignore` still
    record (the replay could not run, and the log says so); only `block` refuses, as it refuses a difference."""
    owner = login("owner")
    run(database, sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(database.dbname), sql.Identifier(owner.user)).as_string(None),
        sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(owner.user)).as_string(None))
    run(owner, KNEX_SCHEMA)
    write_migrations(tmp_path, FAITHFUL)
    env = environment(tmp_path, owner, drift, rehearsed=False)
    result = cli("baseline", "--env", "adopted", "--through", "0002", cwd=tmp_path, env=env)
    if drift == "block":
        assert result.returncode == 1 and "cannot create its temporary database" in result.stderr, result.stderr
        assert history_tables(database) == []
        return
    assert result.returncode == 0, result.stderr[-3000:]
    assert "were not replayed" in result.stderr and f"policy.drift = {drift}" in result.stderr, result.stderr
    assert applied_ids(database) == ["0001.create-customers", "0002.create-orders"]
