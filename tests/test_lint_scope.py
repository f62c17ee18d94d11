"""Lint what is about to run, not history: findings in applied migrations are information, and lock or rewrite
rules do not block on a table an earlier migration of the same pending batch created. A validation failure
ends by saying how to proceed. Through the command line, on real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tests.helpers import applied_ids, cli, url_of, write_migrations

# The database-url environment, but blocking on lint warnings as production does.
STRICT = """
[environments.strict]
tier = "staging"
credentials = { kind = "url_env", variable = "DATABASE_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
policy = { snapshot_required = false, lint_blocks_on = "warning" }
"""


@pytest.fixture
def strict(tmp_path: Path, database: Connection) -> dict[str, str]:
    (tmp_path / "environments.toml").write_text(STRICT)
    return {"RDS_MIGRATIONS_ENVIRONMENTS": str(tmp_path / "environments.toml"), "DATABASE_URL": url_of(database)}


def run(project: Path, env: dict[str, str]):
    return cli("run", "--env", "strict", "--git-sha", "abcdef1", cwd=project, env=env)


def test_a_finding_in_an_applied_migration_never_blocks_the_next_run(
        tmp_path: Path, database: Connection, strict: dict[str, str]) -> None:
    # Applied years ago by a team whose squawk did not flag 32-bit integers (here: applied by hand).
    write_migrations(tmp_path, {"0001.old.sql": "CREATE TABLE old (id int PRIMARY KEY);\n"})
    assert cli("run", "--database-url", url_of(database), cwd=tmp_path).returncode == 0
    write_migrations(tmp_path, {"0002.new.sql": "CREATE TABLE new (id bigint PRIMARY KEY);\n"})

    result = run(tmp_path, strict)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "0001.old.sql:1 prefer-bigint-over-int" in result.stderr  # still reported, as information
    assert "(not blocking: applied already)" in result.stderr
    assert applied_ids(database) == ["0001.old", "0002.new"]


def test_the_same_finding_in_a_pending_migration_blocks_and_says_how_to_proceed(
        tmp_path: Path, database: Connection, strict: dict[str, str]) -> None:
    write_migrations(tmp_path, {"0001.new.sql": "CREATE TABLE new (id int PRIMARY KEY);\n"})
    result = run(tmp_path, strict)
    assert result.returncode == 1
    assert "0001.new.sql:1: prefer-bigint-over-int" in result.stderr
    assert "to proceed:" in result.stderr and "-- squawk-ignore <rule>" in result.stderr
    assert "policy.lint_blocks_on, now 'warning'" in result.stderr
    assert applied_ids(database) == []


BATCH = {
    "0001.create-orders.sql": "CREATE TABLE orders (id bigint PRIMARY KEY);\n",
    "0002.index-and-require.sql": ("CREATE INDEX orders_id_idx ON orders (id);\n"
                                   "ALTER TABLE orders ADD COLUMN note text NOT NULL DEFAULT 'x';\n"),
}


def test_lock_rules_do_not_block_on_a_table_made_earlier_in_the_same_batch(
        tmp_path: Path, database: Connection, strict: dict[str, str]) -> None:
    write_migrations(tmp_path, BATCH)
    result = run(tmp_path, strict)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "require-concurrent-index-creation" in result.stderr  # reported, as information
    assert "(not blocking: a table created in this batch)" in result.stderr
    assert applied_ids(database) == ["0001.create-orders", "0002.index-and-require"]


def test_the_same_statements_block_on_a_table_that_already_held_data(
        tmp_path: Path, database: Connection, strict: dict[str, str]) -> None:
    write_migrations(tmp_path, {"0001.create-orders.sql": BATCH["0001.create-orders.sql"]})
    assert run(tmp_path, strict).returncode == 0
    with connected(database) as conn:
        conn.execute("INSERT INTO orders VALUES (1)")
    write_migrations(tmp_path, {"0002.index-and-require.sql": BATCH["0002.index-and-require.sql"]})
    result = run(tmp_path, strict)
    assert result.returncode == 1
    assert "0002.index-and-require.sql:1: require-concurrent-index-creation" in result.stderr
    assert applied_ids(database) == ["0001.create-orders"]


def test_a_finding_beyond_the_target_is_said_to_be_so_and_the_advice_fits_what_blocks(
        tmp_path: Path, database: Connection, strict: dict[str, str]) -> None:
    """A pending migration after --target is not "applied already"; a statement the server refuses in a
    transaction is fixed by `-- transactional: false`, which the advice says (no comment suppresses it); a
    database the plan refuses is not sent to "fix the files"."""
    write_migrations(tmp_path, {"0001.one.sql": "CREATE TABLE one (id bigint PRIMARY KEY);\n",
                                "0002.two.sql": "CREATE TABLE two (id int PRIMARY KEY);\n"})
    result = cli("run", "--env", "strict", "--target", "0001", cwd=tmp_path, env=strict)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0002.two.sql:1 prefer-bigint-over-int" in result.stderr
    assert "(not blocking: after the run's --target)" in result.stderr and "applied already" not in result.stderr

    write_migrations(tmp_path, {"0002.two.sql": "CREATE TABLE two (id bigint PRIMARY KEY);\n", "0003.index.sql":
                                "-- squawk-ignore-file\nCREATE INDEX CONCURRENTLY two_id ON two (id);\n"})
    refused = run(tmp_path, strict)
    assert refused.returncode == 1
    assert "run 0003.index.sql outside a transaction: make `-- transactional: false` its first line" in refused.stderr
    assert "fix the files named above" not in refused.stderr

    with connected(database) as conn:
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE '\\_yoyo%' OR "
                                     "tablename LIKE '\\_rds\\_migrations%' OR tablename = 'yoyo_lock'").fetchall():
            conn.execute(f'DROP TABLE "{table}"')  # the history is gone: the tables look made by hand
    (tmp_path / "migrations" / "0003.index.sql").unlink()
    unadopted = run(tmp_path, strict)
    assert unadopted.returncode == 1 and "rds-migrations baseline" in unadopted.stderr
    assert "fix the files named above" not in unadopted.stderr and "do what each problem above says" in unadopted.stderr
