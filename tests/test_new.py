"""`rds-migrations new`: the next file numbered and chained to the head, the slug rule, never overwriting, and a
template the catalog reads but that no rehearsal or run gets past until it is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.engine.connection import Connection
from tasks.engine.errors import EXIT_USAGE, UsageError
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.new import GUARD_MARK, NewMigrationRefused, new_migration
from tasks.engine.migrations.results import MigrationError
from tasks.engine.migrations.split import split_migration
from tests.helpers import POLICY, applied_ids, cli, dirty_state, url_of, write_migrations

TABLE = "CREATE TABLE {0} (id bigint PRIMARY KEY);\n"


def new(project: Path, slug: str, **options: bool) -> list[Path]:
    return new_migration(Path("migrations"), project, slug, **options)


def names(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def directives(path: Path) -> dict[str, str]:
    return split_migration(path.read_text(encoding="utf-8"))[0]


# ---- numbering and the head ---------------------------------------------------------------------------------


def test_the_first_migration_of_an_empty_directory_is_0001_and_depends_on_nothing(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    written = new(tmp_path, "create-users")
    assert names(written) == ["0001.create-users.sql"]
    assert directives(written[0]) == {}  # no `-- depends:` line, no `-- transactional:`
    assert written[0].parent == (tmp_path / "migrations").resolve()


def test_after_0009_comes_0010_and_it_depends_on_0009(tmp_path: Path) -> None:
    write_migrations(tmp_path, {f"000{n}.t{n}.sql": TABLE.format(f"t{n}") for n in range(1, 10)})
    written = new(tmp_path, "add-orders")
    assert names(written) == ["0010.add-orders.sql"]
    assert directives(written[0]) == {"depends": "0009.t9"}


@pytest.mark.parametrize(("existing", "expected"), [
    ("001_init.sql", "002.next.sql"),                  # 3 digits stay 3 digits
    ("20240101120000_init.sql", "20240101120001.next.sql"),  # a timestamp is a version too
    ("9999.last.sql", "10000.next.sql"),                # a number that outgrows the width keeps every digit
    ("12.unpadded.sql", "13.next.sql"),
])
def test_the_number_keeps_the_width_the_directory_uses(tmp_path: Path, existing: str, expected: str) -> None:
    write_migrations(tmp_path, {existing: TABLE.format("t")})
    assert names(new(tmp_path, "next")) == [expected]


def test_the_head_is_the_last_migration_in_apply_order_not_the_highest_number(tmp_path: Path) -> None:
    # 0002 depends on 0003, so yoyo applies 0001, 0003, 0002: the head is 0002
    write_migrations(tmp_path, {
        "0001.a.sql": TABLE.format("a"),
        "0002.b.sql": "-- depends: 0003.c\nCREATE TABLE b (c bigint REFERENCES c);\n",
        "0003.c.sql": "-- depends: 0001.a\n" + TABLE.format("c"),
    })
    written = new(tmp_path, "d")
    assert names(written) == ["0004.d.sql"]
    assert directives(written[0]) == {"depends": "0002.b"}
    assert read_catalog(Path("migrations"), tmp_path).ids[-1] == "0004.d"


def test_new_files_chain_one_after_another(tmp_path: Path) -> None:
    """The template is read by the catalog without a problem, so `new` can run twice in a row."""
    (tmp_path / "migrations").mkdir()
    for slug in ("create-users", "add-users-email", "index-users-email"):
        new(tmp_path, slug)
    catalog = read_catalog(Path("migrations"), tmp_path)
    assert catalog.problems == ()
    assert catalog.ids == ("0001.create-users", "0002.add-users-email", "0003.index-users-email")
    assert [m.depends for m in catalog.migrations] == [(), ("0001.create-users",), ("0002.add-users-email",)]


# ---- the files ------------------------------------------------------------------------------------------------


def test_a_transactional_template_is_read_by_the_catalog_as_one_guard_statement(tmp_path: Path) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a")})
    [path] = new(tmp_path, "add-b")
    text = path.read_text(encoding="utf-8")
    for rule in ("ONE change", "one transaction", "Never edit it once it has been applied", "--non-transactional"):
        assert rule in text
    catalog = read_catalog(Path("migrations"), tmp_path)
    assert catalog.problems == ()
    migration = catalog.get("0002.add-b")
    assert migration is not None and migration.transactional and migration.rollback_statements is None
    assert migration.depends == ("0001.a",)
    [guard] = migration.statements
    assert guard.startswith("DO $$") and f"0002.add-b.sql {GUARD_MARK}" in guard


def test_a_non_transactional_template_says_so_and_shows_a_rerunnable_example(tmp_path: Path) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a")})
    [path] = new(tmp_path, "index-a", transactional=False)
    text = path.read_text(encoding="utf-8")
    assert directives(path) == {"depends": "0001.a", "transactional": "false"}
    assert "-- CREATE INDEX CONCURRENTLY IF NOT EXISTS" in text  # an example, commented out
    assert "safe to run again" in text and "rds-migrations resolve" in text
    migration = read_catalog(Path("migrations"), tmp_path).get("0002.index-a")
    assert migration is not None and not migration.transactional
    assert len(migration.statements) == 1  # the example is a comment, never a statement


@pytest.mark.parametrize("transactional", [True, False])
def test_with_rollback_writes_a_rollback_file_the_catalog_pairs_with_it(tmp_path: Path, transactional: bool) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a")})
    written = new(tmp_path, "add-b", transactional=transactional, with_rollback=True)
    assert names(written) == ["0002.add-b.sql", "0002.add-b.rollback.sql"]
    rollback = written[1].read_text(encoding="utf-8")
    assert rollback.startswith("-- Rollback of 0002.add-b: undo exactly what 0002.add-b.sql does")
    assert ("DROP INDEX CONCURRENTLY" in rollback) is not transactional
    catalog = read_catalog(Path("migrations"), tmp_path)
    assert catalog.problems == ()
    [guard] = catalog.get("0002.add-b").rollback_statements
    assert f"0002.add-b.rollback.sql {GUARD_MARK}" in guard


# ---- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("slug", "suggested"), [
    ("AddUsers", "add-users"),
    ("ADD-USERS", "add-users"),
    ("add_users", "add-users"),
    ("add users", "add-users"),
    ("-add-users", "add-users"),
    ("add-users-", "add-users"),
    ("add--users", "add-users"),
    ("add.users", "add-users"),
    ("ümlaut-café", "umlaut-cafe"),  # accents dropped, not the letters (it suggested "mlaut-caf")
    ("", "add-orders-status"),
    ("   ", "add-orders-status"),
    ("___", "add-orders-status"),
])
def test_a_slug_that_is_not_lowercase_words_and_hyphens_is_refused_with_a_fix(
        tmp_path: Path, slug: str, suggested: str) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a")})
    with pytest.raises(NewMigrationRefused) as refused:
        new(tmp_path, slug)
    message = str(refused.value)
    assert "lowercase letters and digits in words joined by single hyphens" in message
    assert message.endswith(f"try {suggested}")
    assert isinstance(refused.value, UsageError) and refused.value.exit_code == EXIT_USAGE
    assert sorted(p.name for p in (tmp_path / "migrations").iterdir()) == ["0001.a.sql"]


@pytest.mark.parametrize("existing", ["0003.add-users.sql", "0003_add_users.sql", "0003-Add-Users.sql"])
def test_a_slug_already_used_is_refused_naming_the_migration(tmp_path: Path, existing: str) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a"), existing: TABLE.format("users")})
    with pytest.raises(NewMigrationRefused, match=f"already used by {existing.removesuffix('.sql')}"):
        new(tmp_path, "add-users")
    assert len(list((tmp_path / "migrations").iterdir())) == 2


def test_a_directory_with_problems_is_refused_naming_each_problem(tmp_path: Path) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a"), "0001.b.sql": TABLE.format("b"),
                                "0002.c.sql": "-- depends: 0009.nothing\n" + TABLE.format("c")})
    with pytest.raises(NewMigrationRefused) as refused:
        new(tmp_path, "d")
    message = str(refused.value)
    assert "version 1 is used by 2 files" in message and "0009.nothing names no migration" in message
    assert "rds-migrations validate" in message
    assert len(list((tmp_path / "migrations").iterdir())) == 3


def test_a_missing_directory_or_one_outside_the_project_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(NewMigrationRefused, match=r"does not exist \(create it first: mkdir -p migrations\)"):
        new(project, "a")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(NewMigrationRefused, match="must lie inside the project"):
        new_migration(Path("../elsewhere"), project, "a")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_never_overwrites_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a")})
    # the catalog skips directories, so this one is invisible to it until the rollback file is created
    (tmp_path / "migrations" / "0002.b.rollback.sql").mkdir()
    with pytest.raises(NewMigrationRefused, match=r"0002\.b\.rollback\.sql already exists; it was not replaced"):
        new(tmp_path, "b", with_rollback=True)
    assert not (tmp_path / "migrations" / "0002.b.sql").exists()  # the file written first was taken back
    assert (tmp_path / "migrations" / "0002.b.rollback.sql").is_dir()


# ---- the template against a real database -------------------------------------------------------------------


@pytest.mark.parametrize("transactional", [True, False])
def test_a_run_stops_at_an_unedited_template_with_nothing_applied_and_nothing_dirty(
        tmp_path: Path, database: Connection, transactional: bool) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a")})
    new(tmp_path, "add-b", transactional=transactional)
    with pytest.raises(MigrationError) as failed:
        apply_pending(database, read_catalog(Path("migrations"), tmp_path), POLICY)
    assert failed.value.report.failed.migration_id == "0002.add-b"
    assert f"0002.add-b.sql {GUARD_MARK}: write the migration in it" in str(failed.value)
    assert applied_ids(database) == ["0001.a"]
    assert dirty_state(database) == []  # a non-transactional template fails before anything of it ran


def test_validate_names_the_unedited_file_then_passes_once_it_is_written(tmp_path: Path, database: Connection) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a")})
    migration, rollback = new(tmp_path, "add-b", with_rollback=True)
    url = url_of(database)
    refused = cli("validate", "--database-url", url, cwd=tmp_path)
    assert refused.returncode == 1
    assert f"0002.add-b.sql {GUARD_MARK}: write the migration in it and delete this DO block" in refused.stdout

    migration.write_text(migration.read_text().replace(_guard_line(migration), TABLE.format("b")))
    refused = cli("validate", "--database-url", url, cwd=tmp_path)
    assert refused.returncode == 1  # the rehearsal rolls the tail back: the rollback's guard stops it
    assert f"0002.add-b.rollback.sql {GUARD_MARK}: write the rollback in it" in refused.stdout

    rollback.write_text(rollback.read_text().replace(_guard_line(rollback), "DROP TABLE b;\n"))
    passed = cli("validate", "--database-url", url, cwd=tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr


def _guard_line(path: Path) -> str:
    return next(line for line in path.read_text().splitlines(keepends=True) if line.startswith("DO $$"))


def test_the_commands_new_suggests_name_the_migrations_directory_so_they_work_when_pasted(tmp_path: Path) -> None:
    write_migrations(tmp_path, {"0001.a.sql": TABLE.format("a")}, directory="db/migrations")
    written = cli("new", "--migrations", "db/migrations", "add-b", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert "then run rds-migrations validate --migrations db/migrations" in written.stderr
    pasted = cli(*written.stderr.rsplit("then run rds-migrations ", 1)[1].split(), cwd=tmp_path)
    assert "0002.add-b.sql" in pasted.stdout  # validated the directory it names (the template stops a run)

    write_migrations(tmp_path, {"0001.b.sql": TABLE.format("b")}, directory="db/migrations")
    refused = cli("new", "--migrations", "db/migrations", "add-c", cwd=tmp_path)
    assert refused.returncode != 0 and "(rds-migrations validate --migrations db/migrations explains each)" in (
        refused.stderr)
