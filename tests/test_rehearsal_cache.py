"""The rehearsal cache: a later rehearsal starts from the database an earlier one left, when the migrations
it holds are unchanged. No timing is asserted: what is checked is which database a rehearsal starts from."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from tasks.engine.connection import Connection, connected
from tasks.engine.environments import Policy
from tasks.engine.migrations.catalog import Catalog, read_catalog
from tasks.engine.migrations.plan import plan
from tasks.engine.migrations.rehearsal import rehearse
from tasks.engine.migrations.rehearsal_cache import REHEARSAL_CACHE_KEPT, rehearsal_keys
from tasks.engine.migrations.report import ValidationReport
from tests.helpers import write_migrations

POLICY = Policy()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose first migration is unique to the test, so no other test's cache can match it."""
    write_migrations(tmp_path, {
        "0001.a.sql": f"-- {uuid.uuid4().hex}\nCREATE TABLE a (id bigint PRIMARY KEY);\n",
        "0002.b.sql": "CREATE TABLE b (id bigint PRIMARY KEY);\n",
        "0003.c.sql": "CREATE TABLE c (id bigint PRIMARY KEY);\n",
    })
    return tmp_path


def catalog_of(project: Path) -> Catalog:
    catalog = read_catalog(Path("migrations"), project)
    assert not catalog.problems, catalog.problems
    return catalog


def cached_states(server: Connection, catalog: Catalog) -> list[int]:
    """For each cached rehearsal database on the server that matches a prefix of `catalog`: how many it holds."""
    position = {key: index + 1 for index, key in enumerate(rehearsal_keys(catalog, server.user))}
    with connected(server) as conn:
        names = [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rdsm\\_rc\\_%'")]
    return sorted(position[name.rsplit("_", 1)[1]] for name in names if name.rsplit("_", 1)[1] in position)


def add(project: Path, name: str, text: str) -> None:
    (project / "migrations" / name).write_text(text, encoding="utf-8")


def test_a_new_migration_starts_from_the_cached_database(project: Path, database: Connection) -> None:
    first = rehearse(catalog_of(project), database, POLICY)
    assert first.failure is None and first.reused == 0
    assert cached_states(database, catalog_of(project)) == [3]

    add(project, "0004.d.sql", "CREATE TABLE d (id bigint PRIMARY KEY REFERENCES a);\n")
    catalog = catalog_of(project)
    second = rehearse(catalog, database, POLICY)
    assert second.failure is None
    assert second.reused == 3 and second.applied == 1
    assert second.counts() == "started from a cached database holding the first 3 migrations, applied 1 on top"
    assert cached_states(database, catalog) == [4]  # the state was taken, extended, and cached again
    assert plan(database, catalog).pending == catalog.ids  # the target itself was not touched


def test_the_same_migrations_again_reuse_everything_and_still_roll_the_tail_back(
        project: Path, database: Connection) -> None:
    add(project, "0003.c.rollback.sql", "DROP TABLE c;\n")
    catalog = catalog_of(project)
    cold = rehearse(catalog, database, POLICY)
    warm = rehearse(catalog, database, POLICY)
    assert (cold.reused, warm.reused) == (0, 3)
    assert cold.rolled_back == warm.rolled_back == ("0003.c",)
    assert warm.failure is None


def test_an_edited_earlier_migration_rebuilds_from_nothing(project: Path, database: Connection) -> None:
    rehearse(catalog_of(project), database, POLICY)
    add(project, "0002.b.sql", "CREATE TABLE b (id bigint PRIMARY KEY, note text);\n")
    add(project, "0004.d.sql", "CREATE TABLE d (id bigint PRIMARY KEY);\n")
    catalog = catalog_of(project)
    assert cached_states(database, catalog) == []  # the cached state holds the old 0002
    result = rehearse(catalog, database, POLICY)
    assert result.failure is None and result.reused == 0  # nothing cached holds 0001 then the new 0002
    assert cached_states(database, catalog) == [4]


def test_a_failing_new_migration_leaves_the_cache_usable(project: Path, database: Connection) -> None:
    rehearse(catalog_of(project), database, POLICY)
    add(project, "0004.d.sql", "CREATE TABLE d (id bigint PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);\n")
    failed = rehearse(catalog_of(project), database, POLICY)
    assert failed.failure and "0004.d" in failed.failure and "42P01" in failed.failure
    assert failed.reused == 3
    assert cached_states(database, catalog_of(project)) == [3]  # rolled back: the state before 0004 is kept

    add(project, "0004.d.sql", "CREATE TABLE d (id bigint PRIMARY KEY);\n")
    fixed = rehearse(catalog_of(project), database, POLICY)
    assert fixed.failure is None and fixed.reused == 3
    assert cached_states(database, catalog_of(project)) == [4]


def test_a_broken_rollback_is_caught_on_a_cache_hit(project: Path, database: Connection) -> None:
    rehearse(catalog_of(project), database, POLICY)
    add(project, "0004.d.sql", "CREATE TABLE d (id bigint PRIMARY KEY);\n")
    add(project, "0004.d.rollback.sql", "DROP TABLE not_d;\n")
    result = rehearse(catalog_of(project), database, POLICY)
    assert result.reused == 3
    assert result.failure and "rollback of" in result.failure and "42P01" in result.failure
    # The failed rollback was rolled back in its transaction: the database holds the four migrations.
    assert cached_states(database, catalog_of(project)) == [4]

    add(project, "0004.d.rollback.sql", "DROP TABLE d;\n")
    fixed = rehearse(catalog_of(project), database, POLICY)
    assert fixed.failure is None and fixed.reused == 4 and fixed.rolled_back == ("0004.d",)


def test_every_rendering_says_how_many_came_cached_how_many_were_applied_and_which_failed(
        project: Path, database: Connection) -> None:
    """The walk that found it: a new migration whose rollback fails, on top of a cache; then fixed, on top of the
    cache that failure left (it holds the new migration too)."""
    rehearse(catalog_of(project), database, POLICY)
    add(project, "0004.d.sql", "CREATE TABLE d (id bigint PRIMARY KEY);\n")
    add(project, "0004.d.rollback.sql", "DROP TABLE not_d;\n")
    catalog = catalog_of(project)
    broken = ValidationReport("migrations", catalog.ids, rehearsals=(rehearse(catalog, database, POLICY),))
    said = "started from a cached database holding the first 3 migrations, applied 1 on top"
    assert f"{said}, rolled back and re-applied 0" in broken.to_text() and "applied 4" not in broken.to_text()
    assert f"{said}; rolled back and re-applied: none" in broken.to_markdown()
    assert "from scratch" not in broken.to_markdown() and "rollback of 0004.d" in broken.to_markdown()

    add(project, "0004.d.rollback.sql", "DROP TABLE d;\n")
    catalog = catalog_of(project)
    fixed = ValidationReport("migrations", catalog.ids, rehearsals=(rehearse(catalog, database, POLICY),))
    said = "started from a cached database holding the first 4 migrations, applied 0 on top"
    assert f"{said}, rolled back and re-applied 1" in fixed.to_text(), fixed.to_text()
    assert f"{said}; rolled back and re-applied: 0004.d; ok" in fixed.to_markdown(), fixed.to_markdown()
    assert fixed.to_json()["rehearsals"][0] | {"seconds": 0, "where": ""} == {  # type: ignore[index]
        "where": "", "reused": 4, "applied": 0, "rolled_back": ["0004.d"], "failure": None, "note": None,
        "on_target_schema": False, "seconds": 0}

    add(project, "0005.e.sql", "CREATE TABLE e (id bigint PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);\n")
    catalog = catalog_of(project)
    failed = ValidationReport("migrations", catalog.ids, rehearsals=(rehearse(catalog, database, POLICY),))
    said = "started from a cached database holding the first 4 migrations, applied 0 on top"
    assert f"{said}, rolled back and re-applied 0" in failed.to_text(), failed.to_text()
    assert "FAILED: migration 0005.e failed" in failed.to_text()


def test_a_non_transactional_failure_is_not_cached(project: Path, database: Connection) -> None:
    rehearse(catalog_of(project), database, POLICY)
    add(project, "0004.d.sql", "-- transactional: false\nCREATE TABLE d (id bigint);\nINSERT INTO nope VALUES (1);\n")
    result = rehearse(catalog_of(project), database, POLICY)
    assert result.failure and "0004.d" in result.failure and result.reused == 3
    assert cached_states(database, catalog_of(project)) == []  # 0004 left table d behind: not a known state
    assert rehearse(catalog_of(project), database, POLICY).reused == 0


def test_cached_databases_refuse_connections_and_only_the_newest_are_kept(
        tmp_path: Path, database: Connection) -> None:
    catalogs = []
    for number in range(REHEARSAL_CACHE_KEPT + 1):
        project = tmp_path / f"p{number}"
        write_migrations(project, {"0001.a.sql": f"-- {uuid.uuid4().hex}\nCREATE TABLE a (id bigint);\n"})
        catalogs.append(catalog_of(project))
        assert rehearse(catalogs[-1], database, POLICY).failure is None
    assert [cached_states(database, c) for c in catalogs] == [[]] + [[1]] * REHEARSAL_CACHE_KEPT
    with connected(database) as conn:
        allowed = conn.execute("SELECT bool_or(datallowconn) FROM pg_database WHERE datname LIKE 'rdsm\\_rc\\_%'")
        assert allowed.fetchone()[0] is False


def test_without_the_cache_nothing_is_reused_or_left_behind(project: Path, database: Connection) -> None:
    catalog = catalog_of(project)
    assert rehearse(catalog, database, POLICY, cache=False).reused == 0
    assert rehearse(catalog, database, POLICY, cache=False).reused == 0
    assert cached_states(database, catalog) == []


def test_a_role_that_is_not_superuser_uses_the_cache(project: Path, database: Connection) -> None:
    """As on RDS: the migrator role owns its databases and has CREATEDB, nothing more."""
    role, password = f"rdsm_cache_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with connected(database) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'")
    owner = database.model_copy(update={"user": role, "password": SecretStr(password)})
    try:
        assert rehearse(catalog_of(project), owner, POLICY).failure is None
        second = rehearse(catalog_of(project), owner, POLICY)
        assert second.failure is None and second.reused == 3
        assert rehearse(catalog_of(project), database, POLICY).reused == 0  # another role: its own cache
    finally:
        with connected(database) as conn:
            owned = conn.execute("SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles "
                                 "WHERE rolname = %s)", (role,)).fetchall()
            for (name,) in owned:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f"DROP ROLE {role}")
