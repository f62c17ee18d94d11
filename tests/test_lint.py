"""The lint step: squawk really runs on real files; the sample migrations really run on PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from yoyo.migrations import read_sql_migration

from tasks.engine.connection import Connection
from tasks.engine.errors import LintError
from tasks.engine.migrations import lint
from tasks.engine.migrations.lint import (
    ALWAYS_EXCLUDED,
    RULE_SEVERITY,
    LintFinding,
    blocking,
    is_transactional,
    lint_files,
    squawk_binary,
)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def write(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql, encoding="utf-8")
    return path


def lint_one(path: Path, *, transactional: bool | None = None) -> list[LintFinding]:
    mode = is_transactional(path) if transactional is None else transactional
    return lint_files([path], transactional={path: mode})


def summary(findings: list[LintFinding]) -> set[tuple[str, int, str, str]]:
    return {(f.file, f.line, f.rule, f.severity) for f in findings}


# ---- what squawk finds, and how we grade it ----------------------------------------------------------------


def test_dangerous_statements_are_errors_with_file_name_and_line(tmp_path: Path) -> None:
    nested = tmp_path / "migrations"
    nested.mkdir()
    path = write(
        nested,
        "0042.add-nickname.sql",
        "-- Add a required nickname to users.\n"
        "\n"
        "ALTER TABLE users ADD COLUMN nickname text NOT NULL;\n"
        "\n"
        "CREATE INDEX users_nickname_idx\n"
        "    ON users (nickname);\n",
    )
    findings = lint_one(path)
    assert ("0042.add-nickname.sql", 3, "adding-required-field", "error") in summary(findings)
    assert ("0042.add-nickname.sql", 5, "require-concurrent-index-creation", "error") in summary(findings)
    finding = next(f for f in findings if f.rule == "adding-required-field")
    assert "NOT NULL" in finding.message and finding.help
    assert str(finding).startswith("0042.add-nickname.sql:3: error: adding-required-field: ")


def test_begin_and_commit_in_a_transactional_file_are_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "0001.nested.sql",
        "-- Opens its own transaction inside yoyo's.\n"
        "BEGIN;\nCREATE TABLE t (id bigint PRIMARY KEY);\nCOMMIT;\n",
    )
    findings = lint_one(path)
    assert {(f.line, f.rule, f.severity) for f in findings} >= {
        (2, "transaction-nesting", "error"),
        (4, "transaction-nesting", "error"),
    }


def test_concurrently_is_an_error_in_a_transactional_file_and_fine_outside_one(tmp_path: Path) -> None:
    # Alone in its file, which squawk itself lets through: yoyo still wraps it in a transaction.
    statement = "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email);\n"
    inside = write(tmp_path, "0001.inside.sql", "-- Build an index.\n" + statement)
    outside = write(tmp_path, "0002.outside.sql", "-- Build an index.\n-- transactional: false\n" + statement)
    assert is_transactional(inside) and not is_transactional(outside)

    findings = lint_files([inside, outside], transactional={inside: True, outside: False})

    assert summary(findings) == {("0001.inside.sql", 2, lint.CANNOT_RUN_IN_TRANSACTION, "error")}
    assert "CREATE INDEX CONCURRENTLY" in findings[0].message


def test_concurrently_among_other_statements_is_reported_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "0001.mixed.sql",
        "-- Column and index.\n"
        "ALTER TABLE users ADD COLUMN nickname text;\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_nickname_idx ON users (nickname);\n",
    )
    findings = [f for f in lint_one(path) if f.line == 3]
    assert [(f.rule, f.severity) for f in findings] == [
        ("ban-concurrent-index-creation-in-transaction", "error")
    ]


def test_other_statements_that_cannot_run_in_a_transaction_are_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "0001.no-transaction.sql",
        "-- Things PostgreSQL refuses in a transaction block; 'CONCURRENTLY' in a string is fine:\n"
        "SELECT 'drop index concurrently';\n"
        "DROP INDEX CONCURRENTLY IF EXISTS users_nickname_idx;\n"
        "REINDEX INDEX\n  CONCURRENTLY users_email_key;\n"
        "REFRESH MATERIALIZED VIEW CONCURRENTLY monthly_totals;\n"
        "VACUUM (ANALYZE) users;\n",
    )
    findings = [f for f in lint_one(path) if f.rule == lint.CANNOT_RUN_IN_TRANSACTION]
    assert [(f.line, f.severity) for f in findings] == [(3, "error"), (5, "error"), (7, "error")]
    outside = write(
        tmp_path, "0002.outside.sql", "-- Outside.\n-- transactional: false\nVACUUM (ANALYZE) users;\n"
    )
    assert lint_one(outside) == []


def test_only_non_transactional_files_must_be_rerunnable(tmp_path: Path) -> None:
    sql = "-- Create a table.\n{header}CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY);\n"
    inside = write(tmp_path, "0001.inside.sql", sql.format(header=""))
    outside = write(tmp_path, "0002.outside.sql", sql.format(header="-- transactional: false\n"))

    findings = lint_files([inside, outside], transactional={inside: True, outside: False})

    assert summary(findings) == {("0002.outside.sql", 3, "prefer-robust-stmts", "warning")}


def test_a_syntax_error_is_an_error_naming_the_file(tmp_path: Path) -> None:
    good = write(tmp_path, "0001.good.sql", "-- Fine.\nCREATE TABLE a (id bigint PRIMARY KEY);\n")
    bad = write(tmp_path, "0002.broken.sql", "-- Broken.\nCREATE TABLE b (\n  id bigint\n;\n")
    findings = lint_files([good, bad], transactional={good: True, bad: True})
    errors = [f for f in findings if f.rule == "syntax-error"]
    assert errors and all(f.file == "0002.broken.sql" and f.severity == "error" for f in errors)
    assert not [f for f in findings if f.file == "0001.good.sql"]


def test_a_file_that_is_not_utf8_is_an_error_and_the_others_are_still_linted(tmp_path: Path) -> None:
    latin1 = tmp_path / "0001.latin1.sql"
    latin1.write_bytes("-- Café.\nSELECT 'déjà vu';\n".encode("latin-1"))
    other = write(tmp_path, "0002.other.sql", "-- Index.\nCREATE INDEX i ON users (email);\n")
    findings = lint_files([latin1, other], transactional={latin1: True, other: True})
    assert summary(findings) == {
        ("0001.latin1.sql", 1, lint.NOT_UTF8, "error"),
        ("0002.other.sql", 2, "require-concurrent-index-creation", "error"),
    }


def test_timeout_rules_are_never_reported(tmp_path: Path) -> None:
    # Each of these statements takes a lock squawk wants a lock_timeout/statement_timeout for.
    sql = (
        "-- Lock-taking statements.\n{header}"
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname text;\n"
        "ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_check;\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_nickname_idx ON users (nickname);\n"
    )
    inside = write(tmp_path, "0001.inside.sql", sql.format(header=""))
    outside = write(tmp_path, "0002.outside.sql", sql.format(header="-- transactional: false\n"))
    findings = lint_files([inside, outside], transactional={inside: True, outside: False})
    assert findings, "the files should still produce other findings"
    assert not {f.rule for f in findings} & set(ALWAYS_EXCLUDED)


def test_style_rules_are_warnings_and_table_rewrites_are_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "0001.mixed.sql",
        "-- Mixed.\n"
        "CREATE TABLE notes (id serial PRIMARY KEY, body varchar(100), at timestamp);\n"
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(200);\n",
    )
    by_rule = {f.rule: f.severity for f in lint_one(path)}
    assert by_rule["prefer-text-field"] == "warning"
    assert by_rule["prefer-timestamp-tz"] == "warning"
    assert by_rule["prefer-identity"] == "warning"
    assert by_rule["changing-column-type"] == "error"


def test_an_unnamed_concurrent_index_is_a_warning_where_it_can_fail_halfway(tmp_path: Path) -> None:
    """A failed unnamed build leaves an INVALID index with a name the server chose: the next run can neither
    find it nor drop it, and builds another beside it. Named, it is found again (resolve.py, indexes.py)."""
    unnamed = write(tmp_path, "0001.unnamed.sql", "-- transactional: false\nCREATE TABLE t (id int);\n"
                                                   "CREATE UNIQUE INDEX CONCURRENTLY ON t (id);\n")
    named = write(tmp_path, "0002.named.sql", "-- transactional: false\n"
                                               "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_id ON t (id);\n")
    findings = lint_files([unnamed, named], transactional={unnamed: False, named: False})
    ours = [f for f in findings if f.rule == lint.UNNAMED_CONCURRENT_INDEX]
    assert summary(ours) == {("0001.unnamed.sql", 3, lint.UNNAMED_CONCURRENT_INDEX, "warning")}
    assert ours[0].help is not None and "Name the index" in ours[0].help


def test_every_graded_rule_is_a_squawk_rule(tmp_path: Path) -> None:
    # squawk refuses an unknown rule name in --exclude, so a misspelt rule here would never match anything.
    empty = write(tmp_path, "empty.sql", "")
    names = sorted(
        set(RULE_SEVERITY) - {"syntax-error"} | set(ALWAYS_EXCLUDED) | set(lint.EXCLUDED_IN_TRANSACTION)
    )
    done = subprocess.run(
        [str(squawk_binary()), f"--config={os.devnull}", f"--exclude={','.join(names)}", str(empty)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_squawk_ignore_comments_suppress_a_finding(tmp_path: Path) -> None:
    statement = "CREATE INDEX users_email_idx ON users (email);\n"
    plain = write(tmp_path, "0001.plain.sql", "-- Index.\n" + statement)
    ignored = write(
        tmp_path,
        "0002.ignored.sql",
        "-- Index.\n-- squawk-ignore require-concurrent-index-creation\n" + statement,
    )
    whole_file = write(tmp_path, "0003.file.sql", "-- Index.\n-- squawk-ignore-file\n" + statement)
    findings = lint_files(
        [plain, ignored, whole_file], transactional={plain: True, ignored: True, whole_file: True}
    )
    assert summary(findings) == {("0001.plain.sql", 2, "require-concurrent-index-creation", "error")}


def test_findings_map_back_to_awkward_file_names_in_path_order(tmp_path: Path) -> None:
    # squawk would read "[1]" as a glob pattern and report "./x.sql" as "x.sql".
    sql = "-- Index.\nCREATE INDEX i ON users (email);\n"
    first = write(tmp_path, "0002.weird[1]*name.sql", sql)
    (tmp_path / "sub").mkdir()
    second = write(tmp_path / "sub", "0001.plain.sql", sql)
    findings = lint_files([first, second, first], transactional={first: True, second: False})
    assert [(f.file, f.rule) for f in findings if f.severity == "error"] == [
        ("0002.weird[1]*name.sql", "require-concurrent-index-creation"),
        ("0001.plain.sql", "require-concurrent-index-creation"),
    ]


def test_a_squawk_config_file_is_not_read(tmp_path: Path) -> None:
    # squawk looks for .squawk.toml from its working directory upwards, as in a repository's root.
    (tmp_path / ".squawk.toml").write_text('excluded_paths = ["*.sql"]\n')  # would skip every file
    (tmp_path / "migrations").mkdir()
    path = write(tmp_path / "migrations", "0001.index.sql", "-- Index.\nCREATE INDEX i ON users (email);\n")
    assert [f.rule for f in lint_one(path)] == ["require-concurrent-index-creation"]


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    path = write(tmp_path, "0001.a.sql", "-- A.\nSELECT 1;\n")
    with pytest.raises(ValueError, match="0001.a.sql"):
        lint_files([path], transactional={})
    missing = tmp_path / "0002.missing.sql"
    with pytest.raises(LintError, match="0002.missing.sql"):
        lint_files([missing], transactional={missing: True})
    with pytest.raises(LintError, match="squawk failed.*banana"):
        lint_files([path], transactional={path: True}, pg_version="banana")
    assert lint_files([], transactional={}) == []


def test_pg_version_reaches_squawk(tmp_path: Path) -> None:
    # Before PostgreSQL 11 any ADD COLUMN ... DEFAULT rewrote the table; from 11 a constant default does not.
    path = write(
        tmp_path, "0001.default.sql", "-- Default.\nALTER TABLE users ADD COLUMN score bigint DEFAULT 0;\n"
    )
    old = lint_files([path], transactional={path: True}, pg_version="10")
    new = lint_files([path], transactional={path: True}, pg_version="15")
    assert ("0001.default.sql", 2, "adding-field-with-default", "error") in summary(old)
    assert "adding-field-with-default" not in {f.rule for f in new}


def test_squawk_binary_is_found_beside_python_then_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_squawk = Path(sys.executable).parent / "squawk"
    assert squawk_binary() == venv_squawk
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(venv_squawk.parent))
    assert squawk_binary() == venv_squawk
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LintError, match="squawk-cli"):
        squawk_binary()


# ---- which findings block ---------------------------------------------------------------------------------


def test_blocking_follows_the_policy() -> None:
    error = LintFinding("0001.a.sql", 3, "adding-required-field", "error", "required column", None)
    warning = LintFinding("0001.a.sql", 4, "prefer-text-field", "warning", "varchar", "use text")
    findings = [error, warning]
    assert blocking(findings, "error") == [error]
    assert blocking(findings, "warning") == [error, warning]
    assert blocking(findings, "never") == []
    assert blocking([warning], "error") == []
    with pytest.raises(ValueError):
        blocking(findings, "sometimes")  # type: ignore[arg-type]


# ---- is_transactional -------------------------------------------------------------------------------------


def test_is_transactional_reads_the_yoyo_directive(tmp_path: Path) -> None:
    default = write(tmp_path, "0001.a.sql", "-- A.\nSELECT 1;\n")
    off = write(tmp_path, "0002.b.sql", "-- B.\n-- depends: 0001.a\n-- transactional: FALSE\nSELECT 1;\n")
    off_rollback = write(tmp_path, "0002.b.rollback.sql", "-- Undo B.\nSELECT 1;\n")
    on = write(tmp_path, "0003.c.sql", "-- C.\n-- transactional: true\nSELECT 1;\n")
    # Only the leading comment holds directives, as in yoyo.
    late = write(tmp_path, "0004.d.sql", "-- D.\nSELECT 1;\n-- transactional: false\nSELECT 2;\n")
    bad = write(tmp_path, "0005.e.sql", "-- E.\n-- transactional: maybe\nSELECT 1;\n")
    assert is_transactional(default) is True
    assert is_transactional(off) is False
    assert is_transactional(off_rollback) is False  # a rollback runs the way its migration does
    assert is_transactional(on) is True
    assert is_transactional(late) is True
    with pytest.raises(ValueError, match="0005.e.sql.*maybe"):
        is_transactional(bad)
    with pytest.raises(FileNotFoundError):
        is_transactional(tmp_path / "0009.none.sql")


# ---- scale ------------------------------------------------------------------------------------------------


def test_a_thousand_files_in_two_squawk_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths: dict[Path, bool] = {}
    for i in range(1000):
        transactional = i % 10 != 0
        header = "-- plain\n" if transactional else "-- transactional: false\n"
        path = write(
            tmp_path,
            f"{i:04d}.generated-{i}.sql",
            f"-- Generated migration {i}.\n{header}"
            f"CREATE TABLE IF NOT EXISTS gen_{i} (id bigint GENERATED ALWAYS AS IDENTITY, name text);\n"
            f"ALTER TABLE users ADD COLUMN IF NOT EXISTS c{i} text NOT NULL;\n",
        )
        paths[path] = transactional
    runs: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(command: list[str], *args: object, **kwargs: object) -> subprocess.CompletedProcess:
        runs.append(command)
        return real_run(command, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lint.subprocess, "run", counting_run)
    started = time.perf_counter()
    findings = lint_files(list(paths), transactional=paths)
    elapsed = time.perf_counter() - started
    print(
        f"\nlinted {len(paths)} files in {elapsed:.3f} s ({len(runs)} squawk runs, {len(findings)} findings)"
    )

    assert len(runs) == 2
    assert sorted("--assume-in-transaction" in run for run in runs) == [False, True]
    assert summary(findings) == {(p.name, 4, "adding-required-field", "error") for p in paths}
    assert [f.file for f in findings] == [p.name for p in paths]


# ---- the sample application's migrations ------------------------------------------------------------------

MIGRATION_NAME = re.compile(r"^(?P<id>\d{4}\.[a-z0-9]+(?:-[a-z0-9]+)*)(?P<rollback>\.rollback)?\.sql$")


def sample_migrations() -> list[Path]:
    return sorted(p for p in MIGRATIONS.glob("*.sql") if not p.name.endswith(".rollback.sql"))


def rollback_of(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".sql") + ".rollback.sql")


def test_sample_migrations_have_no_blocking_findings_under_the_production_policy() -> None:
    paths = sorted(MIGRATIONS.glob("*.sql"))
    findings = lint_files(paths, transactional={p: is_transactional(p) for p in paths})
    assert blocking(findings, "warning") == [], "\n".join(map(str, findings))


def test_sample_migrations_follow_the_yoyo_layout() -> None:
    files = sorted(MIGRATIONS.iterdir())
    assert all(MIGRATION_NAME.match(p.name) for p in files), [p.name for p in files]
    migrations = sample_migrations()
    assert 6 <= len(migrations) <= 10
    ids = [p.name.removesuffix(".sql") for p in migrations]
    for path in files:
        first_line = path.read_text(encoding="utf-8").splitlines()[0]
        assert re.match(r"^-- \S", first_line), f"{path.name} should open with a one-line comment"
        directives, docstring, statements = read_sql_migration(str(path))
        assert statements, path.name
        for dependency in directives.get("depends", "").split():
            assert dependency in ids, f"{path.name} depends on unknown {dependency}"
            assert dependency < path.name, f"{path.name} depends on the later {dependency}"
    assert any(read_sql_migration(str(p))[0].get("depends") for p in migrations)
    concurrent = [p for p in migrations if not is_transactional(p)]
    assert concurrent
    for path in concurrent:
        statements = read_sql_migration(str(path))[2]
        assert len(statements) == 1 and "CREATE INDEX CONCURRENTLY IF NOT EXISTS" in statements[0], path.name
    assert all(p.exists() for p in map(rollback_of, migrations[:8]))


def run_migration_file(conn: psycopg.Connection, path: Path) -> None:
    """Run a file the way yoyo does: in one transaction, or statement by statement when it says so."""
    statements = read_sql_migration(str(path))[2]
    if is_transactional(path):
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    else:
        for statement in statements:
            conn.execute(statement)


def schema_of(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """Everything the migrations create in the public schema, in a comparable form."""
    queries = {
        "columns": """
            SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
            FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""",
        "constraints": """
            SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
        "indexes": """
            SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
        "relations": """
            SELECT relname, relkind FROM pg_class
            WHERE relnamespace = 'public'::regnamespace ORDER BY 1""",
    }
    return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}


def test_sample_migrations_apply_roll_back_and_apply_again(database: Connection) -> None:
    migrations = sample_migrations()
    with database.connect() as conn:
        states = [schema_of(conn)]
        assert not states[0]["relations"]
        for path in migrations:
            run_migration_file(conn, path)
            states.append(schema_of(conn))
            assert states[-1] != states[-2], f"{path.name} changed nothing"

        tables = {row[0] for row in states[-1]["relations"] if row[1] == "r"}
        assert tables == {
            "users",
            "devices",
            "phone_otp_codes",
            "accounts",
            "categories",
            "transactions",
            "revoked_auth_tokens",
        }
        assert all(valid for *_, valid in states[-1]["indexes"])
        assert all(validated for *_, validated in states[-1]["constraints"])
        assert conn.execute("SELECT count(*) FROM categories WHERE user_id IS NULL").fetchone() == (7,)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO users (phone_e164) VALUES ('0123')")

        for index in reversed(range(len(migrations))):
            rollback = rollback_of(migrations[index])
            if rollback.exists():
                run_migration_file(conn, rollback)
                assert schema_of(conn) == states[index], (
                    f"{rollback.name} did not undo {migrations[index].name}"
                )
        assert schema_of(conn) == states[0]

        for path in migrations:
            run_migration_file(conn, path)
        assert schema_of(conn) == states[-1]


def test_statements_refused_in_a_transaction_are_found_by_the_parser_on_their_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "0001.more.sql",
        "-- Lines are counted in characters, not bytes, and comments before a statement are not its line.\n"
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        "  -- DROP INDEX CONCURRENTLY in a function body is text\n"
        "  PERFORM 1;\n"
        "END $$;\n"
        "DROP INDEX /* déjà vu, déjà vu, déjà vu, déjà vu, déjà vu, déjà vu, déjà vu, déjà vu, déjà vu */\n"
        "  CONCURRENTLY i;\n"
        "-- reclaim the space\n"
        "VACUUM FULL t;\n"
        "ALTER TABLE events\n  DETACH PARTITION events_2020\n  CONCURRENTLY;\n"
        "/* a new disk */ CREATE TABLESPACE fast LOCATION '/ssd';\n"
        "REINDEX SCHEMA app; DROP INDEX CONCURRENTLY j;\n",
    )
    findings = [f for f in lint_one(path) if f.rule == lint.CANNOT_RUN_IN_TRANSACTION]
    assert [(f.line, f.message.split("`")[1]) for f in findings] == [
        (8, "DROP INDEX CONCURRENTLY"), (10, "VACUUM"), (13, "ALTER TABLE ... DETACH PARTITION CONCURRENTLY"),
        (14, "CREATE TABLESPACE"), (15, "REINDEX SCHEMA"), (15, "DROP INDEX CONCURRENTLY")]


def test_a_statement_refused_in_a_transaction_is_found_in_a_file_the_lexer_cannot_read(tmp_path: Path) -> None:
    # An unclosed quote at the end: the statements before it are still split (by sqlparse) and read.
    path = write(tmp_path, "0001.unclosed.sql", "-- Broken at the end.\nVACUUM t;\nSELECT 'never closed;\n")
    findings = [f for f in lint_one(path) if f.rule == lint.CANNOT_RUN_IN_TRANSACTION]
    assert [(f.line, f.message.split("`")[1]) for f in findings] == [(2, "VACUUM")]


def test_squawk_and_our_rule_report_a_concurrent_index_once_and_keep_the_statement_beside_it(tmp_path: Path) -> None:
    path = write(tmp_path, "0001.same-line.sql",
                 "-- Two on one line.\nCREATE TABLE t (a int);\n"
                 "CREATE INDEX CONCURRENTLY i ON t (a); DROP INDEX CONCURRENTLY k;\n")
    findings = [(f.line, f.rule) for f in lint_one(path) if f.rule in (lint.CANNOT_RUN_IN_TRANSACTION,
                                                                          lint.SQUAWK_CONCURRENTLY_RULE)]
    assert sorted(findings) == [(3, lint.SQUAWK_CONCURRENTLY_RULE), (3, lint.CANNOT_RUN_IN_TRANSACTION)]
