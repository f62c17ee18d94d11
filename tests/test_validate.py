"""validate: the catalog's static checks, rehearsal and plan (lint has its own tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.plan import plan
from tasks.engine.migrations.rehearsal import rehearse
from tasks.engine.migrations.validation import check_migrations
from tests.helpers import write_migrations

POLICY = Policy()


def problems_of(project: Path, files: dict[str, str], directory: str = "migrations") -> list[str]:
    write_migrations(project, files, directory)
    return [str(p) for p in read_catalog(Path(directory), project).problems]


def test_duplicate_versions_fail_and_name_both_files(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {
        "001_init.js": "exports.up = () => {}\n",
        "001_init.sql": "CREATE TABLE a (id bigint);\n",
        "0002.a.sql": "CREATE TABLE b (id bigint);\n",
        "0002.b.sql": "CREATE TABLE c (id bigint);\n",
    })
    joined = "\n".join(problems)
    assert "001_init.js" in joined and "001_init.sql" in joined
    assert "version 2 is used by 2 files: 0002.a.sql, 0002.b.sql" in joined


def test_golang_migrate_files_are_refused_with_the_names_to_give_them(tmp_path: Path) -> None:
    """golang-migrate's `000001_create_a.up.sql` and `000001_create_a.down.sql` used to be read as two migrations
    of one version ("give each migration its own version number"), and following that advice ran each down file
    forward as a migration of its own. Each file is named with the name it takes here: the up file
    NNNN.slug.sql, the down file its rollback file; renamed so, they read as migrations with rollbacks."""
    golang = {"000001_create_a.up.sql": "CREATE TABLE a (id bigint);\n",
              "000001_create_a.down.sql": "DROP TABLE a;\n",
              "000002_AddUsers.up.sql": "CREATE TABLE users (id bigint);\n",
              "000002_AddUsers.down.sql": "DROP TABLE users;\n"}
    problems = "\n".join(problems_of(tmp_path, golang))
    assert "version 1 is used by" not in problems and "own version number" not in problems, problems
    assert "000001_create_a.up.sql: golang-migrate's up file" in problems
    assert "rename it 000001.create-a.sql" in problems and "rename it 000001.create-a.rollback.sql" in problems
    assert "rename it 000002.add-users.sql" in problems and "rename it 000002.add-users.rollback.sql" in problems
    assert len(problems.splitlines()) == 4, problems

    # As the old advice had it: each down file under a version of its own. Still a down file, never run forward.
    renumbered = tmp_path / "renumbered"
    problems = "\n".join(problems_of(renumbered, {"000001_create_a.up.sql": golang["000001_create_a.up.sql"],
                                                  "000003_create_a.down.sql": "DROP TABLE a;\n"}))
    assert "000003_create_a.down.sql: golang-migrate's down file" in problems, problems
    assert "rename it 000003.create-a.rollback.sql" in problems

    # A migration of ours whose name merely ends in .up or .down, with no partner: read as it always was.
    ours = tmp_path / "ours"
    write_migrations(ours, {"0001_create-users.sql": "CREATE TABLE users (id bigint);\n",
                            "0002_scale.down.sql": "ALTER TABLE users ADD COLUMN scale int;\n",
                            "0003_warm.up.sql": "ALTER TABLE users ADD COLUMN warm int;\n"})
    catalog = read_catalog(Path("migrations"), ours)
    assert catalog.problems == () and catalog.ids == ("0001_create-users", "0002_scale.down", "0003_warm.up")

    renamed = tmp_path / "renamed"
    write_migrations(renamed, {"000001.create-a.sql": golang["000001_create_a.up.sql"],
                               "000001.create-a.rollback.sql": golang["000001_create_a.down.sql"],
                               "000002.add-users.sql": golang["000002_AddUsers.up.sql"],
                               "000002.add-users.rollback.sql": golang["000002_AddUsers.down.sql"]})
    catalog = read_catalog(Path("migrations"), renamed)
    assert catalog.problems == () and catalog.ids == ("000001.create-a", "000002.add-users")
    assert [m.version for m in catalog.migrations] == [1, 2] and all(m.has_rollback for m in catalog.migrations)


def test_unknown_depends_orphan_rollback_and_bad_names(tmp_path: Path) -> None:
    problems = "\n".join(problems_of(tmp_path, {
        "0001.a.sql": "-- depends: 0000.nothing\nCREATE TABLE a (id bigint);\n",
        "0002.gone.rollback.sql": "DROP TABLE gone;\n",
        "create_things.sql": "CREATE TABLE x (id bigint);\n",
        "0003.code.py": "steps = []\n",
        "0004.empty.sql": "-- nothing here\n",
        "README.md": "notes are fine\n",
    }))
    assert "0001.a.sql: -- depends: 0000.nothing names no migration" in problems
    assert "0002.gone.rollback.sql: rollback file with no migration" in problems
    assert "create_things.sql: a migration's name must start with a version number" in problems
    assert "0003.code.py: Python migrations are not run" in problems
    assert "0004.empty.sql: the migration holds no SQL statement" in problems
    assert "README.md" not in problems


def test_copy_to_or_from_the_client_is_refused_naming_the_statement(tmp_path: Path) -> None:
    problems = "\n".join(problems_of(tmp_path, {
        "0001.load.sql": "CREATE TABLE a (id int);\n/* seed */ copy a (id)\n  FROM stdin;\n",
        "0002.dump.sql": "COPY (SELECT 1) TO STDOUT;\n",
        "0003.server-file.sql": "CREATE TABLE b (id int);\nCOPY b FROM '/srv/seed.csv';\n",
        "0004.tricky.sql": (
            "CREATE TABLE stdin (id int);\n"
            "COPY stdin FROM '/x.csv' WITH (FORMAT csv, NULL 'TO STDOUT');\n"
            "COPY stdin FROM '/x.csv' -- never FROM STDIN here\n;\n"
            "COPY (SELECT id FROM stdin) TO '/x.csv';\n"
        ),
        "0005.hidden.sql": "COPY (SELECT 1) TO /* out */ STDOUT;\n",
        "0006.no-space.sql": "CREATE TABLE t (id int);\nCOPY(SELECT 1) TO STDOUT;\n",
        "0007.quoted.sql": 'CREATE TABLE t (id int);\nCOPY"t" FROM stdin;\n',
        "0008.program.sql": "CREATE TABLE t (id int);\nCOPY t TO PROGRAM 'cat';\n",
    }))
    assert "0001.load.sql: statement 2 copies to or from the client" in problems
    assert "0002.dump.sql: statement 1 copies to or from the client" in problems
    assert "0003.server-file.sql" not in problems and "0004.tricky.sql" not in problems
    assert "0005.hidden.sql: statement 1 copies to or from the client" in problems
    # Read by the parser, not a pattern: no space after COPY, a quoted name; a program is the server's own.
    assert "0006.no-space.sql: statement 2 copies" in problems and "0007.quoted.sql: statement 2 copies" in problems
    assert "0008.program.sql" not in problems


def test_text_the_scanner_stops_before_is_refused_not_dropped(tmp_path: Path) -> None:
    """pglast's scanner stops quietly at a NUL byte, after a parenthesis left open, or at a last word after the
    last `;`: what it does not return would never reach the server, and the migration would be recorded as
    applied all the same. Such a file is refused with its line; so is a rollback file, and one that undoes
    nothing (only comments, or empty), which would record a rollback and leave the schema as it was."""
    problems = "\n".join(problems_of(tmp_path, {
        "0001.nul.sql": "CREATE TABLE a (id bigint);\n-- reviewed by bob\x00\nCREATE TABLE b (id bigint);\n",
        "0002.paren.sql": ("CREATE TABLE c (id bigint);\nCREATE TABLE d (id bigint, CHECK (id > 0);\n"
                           "CREATE TABLE e (id bigint);\n"),
        "0003.trailing.sql": "CREATE TABLE f (id bigint);\nDROP TABLE f; x\n",
        "0004.fine.sql": "-- a comment; with a semicolon\nCREATE TABLE g (id bigint); /* c; */ ;\nANALYZE\n",
        "0004.fine.rollback.sql": "DELETE FROM g WHERE id IN (1, 2;\nDROP TABLE g;\n",
        "0005.h.sql": "CREATE TABLE h (id bigint);\n",
        "0005.h.rollback.sql": "-- TODO write the rollback\n",
        "0006.i.sql": "CREATE TABLE i (id bigint);\n",
        "0006.i.rollback.sql": "",
    }))
    assert "0001.nul.sql: line 2 holds a NUL byte" in problems
    assert "0002.paren.sql: line 2: text no statement holds ('CREATE TABLE d (id bigint, CHECK (id > 0);" in problems
    assert "0003.trailing.sql: line 2: text no statement holds ('x')" in problems
    assert "0004.fine.sql:" not in problems
    assert "0004.fine.rollback.sql: line 1: text no statement holds ('DELETE FROM g WHERE id IN (1, 2;" in problems
    assert ("0005.h.rollback.sql: the rollback file holds no SQL statement (only comments): a rollback would record "
            "0005.h as undone and undo nothing") in problems
    assert "0006.i.rollback.sql: the rollback file holds no SQL statement (nothing)" in problems
    (tmp_path / "migrations" / "0007.gone.sql").symlink_to(tmp_path / "migrations" / "nowhere.sql")
    (tmp_path / "migrations" / "0008.psql.sql").write_text("CREATE TABLE p (id int);\n\\set ON_ERROR_STOP on\n"
                                                          "CREATE TABLE q (id int);\n")
    problems = "\n".join(str(p) for p in read_catalog(Path("migrations"), tmp_path).problems)
    assert f"0007.gone.sql: is a symbolic link to {tmp_path / 'migrations' / 'nowhere.sql'}, which does not " \
           "exist" in problems
    assert "0008.psql.sql: line 2: `\\set` is a psql meta-command, not SQL" in problems
    catalog = read_catalog(Path("migrations"), tmp_path)  # the files refused are not read as migrations
    assert [m.id for m in catalog.migrations] == ["0004.fine", "0005.h", "0006.i"]
    assert catalog.migrations[0].statements == ("CREATE TABLE g (id bigint)", "ANALYZE")


def test_a_file_that_cannot_be_read_is_named_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket named like a migration, a FIFO named like a rollback file: each is a problem naming the file, not
    an error that stops the run unexplained (the socket: an OSError) or a wait for ever (opening the FIFO)."""
    import os
    import socket

    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n"})
    monkeypatch.chdir(tmp_path / "migrations")  # a socket's path is short: bound by its relative name
    os.mkfifo("0001.a.rollback.sql")
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind("0002.b.sql")
    catalog = read_catalog(tmp_path / "migrations", tmp_path)
    problems = "\n".join(str(p) for p in catalog.problems)
    for name in ("0002.b.sql", "0001.a.rollback.sql"):
        assert f"{name}: is not a regular file (a FIFO, a socket or a device): make it a file" in problems, problems
    assert [m.id for m in catalog.migrations] == ["0001.a"]


def test_a_dependency_on_a_file_with_an_error_says_so_not_that_it_is_missing(tmp_path: Path) -> None:
    problems = "\n".join(problems_of(tmp_path, {
        "0001.load.sql": "CREATE TABLE a (id int);\nCOPY a (id) FROM stdin;\n",
        "0002.next.sql": "-- depends: 0001.load\nCREATE TABLE b (id int);\n",
        "0003.other.sql": "-- depends: 0009.nowhere\nCREATE TABLE c (id int);\n",
        "0004.own-transaction.sql": "BEGIN;\nCREATE TABLE d (id int);\nCOMMIT;\n",
        "0005.after.sql": "-- depends: 0004.own-transaction\nCREATE TABLE e (id int);\n",
    }))
    assert "0002.next.sql: -- depends: 0001.load, which has an error of its own (above): fix that one first" in problems
    assert "0001.load names no migration" not in problems
    assert "0003.other.sql: -- depends: 0009.nowhere names no migration in this directory" in problems
    assert "0005.after.sql: -- depends: 0004.own-transaction, which has an error of its own" in problems


def test_missing_empty_and_outside_directories_are_errors(tmp_path: Path) -> None:
    assert "does not exist" in read_catalog(Path("migrations"), tmp_path).problems[0].message
    (tmp_path / "migrations").mkdir()
    assert "holds no migrations" in read_catalog(Path("migrations"), tmp_path).problems[0].message
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    assert "inside the project" in read_catalog(outside, tmp_path).problems[0].message
    (tmp_path / "escape").symlink_to(outside, target_is_directory=True)
    assert "inside the project" in read_catalog(Path("escape"), tmp_path).problems[0].message


def test_symlinked_file_out_of_the_project_is_refused(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-evil.sql"
    outside.write_text("DROP TABLE users;\n")
    directory = write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n"})
    (directory / "0002.evil.sql").symlink_to(outside)
    assert "symlink to a file outside the project" in str(read_catalog(directory, tmp_path).problems)


def test_depends_orders_migrations(tmp_path: Path) -> None:
    write_migrations(tmp_path, {
        "0001.b.sql": "-- depends: 0002.a\nCREATE TABLE b (id bigint);\n",
        "0002.a.sql": "CREATE TABLE a (id bigint);\n",
        "0003.c.sql": "CREATE TABLE c (id bigint);\n",
    })
    assert read_catalog(Path("migrations"), tmp_path).ids == ("0002.a", "0001.b", "0003.c")


def test_check_migrations_reports_lint_and_static_problems_together(tmp_path: Path) -> None:
    write_migrations(tmp_path, {
        "0001.users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
        "0002.required.sql": "ALTER TABLE users ADD COLUMN email text NOT NULL;\n",
        "0002.dup.sql": "SELECT 1;\n",
    })
    _, report = check_migrations(Path("migrations"), tmp_path, POLICY)
    assert not report.ok
    assert any("adding-required-field" == f.rule for f in report.blocking_findings)
    assert any("version 2" in p for p in report.problems)
    assert "adding-required-field" in report.to_markdown()


def test_rehearsal_applies_rolls_back_and_reapplies(tmp_path: Path, database: Connection) -> None:
    write_migrations(tmp_path, {
        "0001.a.sql": "CREATE TABLE a (id bigint);\n",
        "0002.b.sql": "CREATE TABLE b (id bigint);\n",
        "0002.b.rollback.sql": "DROP TABLE b;\n",
        "0003.c.sql": "CREATE TABLE c (id bigint);\n",
        "0003.c.rollback.sql": "DROP TABLE c;\n",
    })
    catalog = read_catalog(Path("migrations"), tmp_path)
    result = rehearse(catalog, database, POLICY)
    assert result.failure is None
    assert result.rolled_back == ("0003.c", "0002.b")
    assert plan(database, catalog).pending == catalog.ids  # the target itself was not touched


def test_the_rehearsals_log_lines_are_told_from_the_runs(tmp_path: Path, database: Connection) -> None:
    """The rehearsal logged `Applying 0001.a (1 of 2)` as the real apply does, so a run's log read as if it had
    applied everything twice. Its lines say `Rehearsal: applying`; the real apply's are as they were (make bench
    reads them)."""
    from tests.helpers import cli, url_of

    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                                "0002.b.sql": "CREATE TABLE b (id bigint);\n",
                                "0002.b.rollback.sql": "DROP TABLE b;\n"})
    ran = cli("run", "--database-url", url_of(database), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    said = [line.split(" | ", 2)[-1] for line in ran.stderr.splitlines() if " | " in line]
    real = [line for line in said if line.startswith("Applying ")]
    rehearsed = [line for line in said if line.startswith("Rehearsal: applying ")]
    assert real == ["Applying 0001.a to 0002.b (1-2 of 2, each in its own transaction)"] or \
        real == ["Applying 0001.a (1 of 2)", "Applying 0002.b (2 of 2)"], said
    assert len(rehearsed) >= 2 and any("0002.b" in line for line in rehearsed[1:]), said  # applied again


def test_rehearsal_catches_a_broken_rollback(tmp_path: Path, database: Connection) -> None:
    write_migrations(tmp_path, {
        "0001.a.sql": "CREATE TABLE a (id bigint);\n",
        "0001.a.rollback.sql": "DROP TABLE not_a;\n",
    })
    result = rehearse(read_catalog(Path("migrations"), tmp_path), database, POLICY)
    assert result.failure and "0001.a" in result.failure and "42P01" in result.failure


def test_plan_is_read_only(tmp_path: Path, database: Connection) -> None:
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n"})
    catalog = read_catalog(Path("migrations"), tmp_path)
    assert plan(database, catalog).pending == ("0001.a",)
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%yoyo%'").fetchone()[0] == 0
    apply_pending(database, catalog, POLICY)
    assert plan(database, catalog).pending == ()


@pytest.mark.parametrize("text", ["-- transactional: maybe\nSELECT 1;\n"])
def test_bad_directive_value(tmp_path: Path, text: str) -> None:
    assert "transactional: must be true or false" in "\n".join(problems_of(tmp_path, {"0001.a.sql": text}))


def test_a_sql_standard_function_body_is_one_statement(tmp_path: Path, database: Connection) -> None:
    """`BEGIN ATOMIC … ; … END` (PostgreSQL 14+) holds semicolons: the scanner cut there, and the lone `END`
    was refused as a COMMIT. Split by the parser, it is one statement, and applies."""
    write_migrations(tmp_path, {"0001.atomic.sql": (
        "CREATE FUNCTION add_two(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT a + 1;\n  SELECT a + 2;\n"
        "END;\nCREATE TABLE after_fn (id bigint);\n")})
    catalog = read_catalog(Path("migrations"), tmp_path)
    assert catalog.problems == () and len(catalog.migrations[0].statements) == 2
    apply_pending(database, catalog, POLICY)
    from tasks.engine.connection import connected

    with connected(database) as conn:
        assert conn.execute("SELECT add_two(1), to_regclass('after_fn') IS NOT NULL").fetchone() == (3, True)
