"""Non-transactional failures: dirty marks until an operator resolves them, and INVALID indexes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import DirtyDatabase, InvalidIndexFound, ResolveError
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.plan import plan
from tasks.engine.migrations.resolve import explain_state, resolve_dirty
from tasks.engine.migrations.results import MigrationError
from tests.helpers import (
    POLICY,
    applied_ids,
    cli,
    dirty_state,
    tables,
    url_of,
    write_migrations,
)

# ---- non-transactional failures: dirty marks and INVALID indexes ------------------------------------------


HALF = {
    "0001.t.sql": "CREATE TABLE t (id bigint);\n",
    "0002.half.sql": (
        "-- transactional: false\n"
        "CREATE TABLE half_a (id bigint);\n"
        "INSERT INTO no_such_table VALUES (1);\n"
        "CREATE TABLE half_b (id bigint);\n"
    ),
    "0003.after.sql": "CREATE TABLE after_half (id bigint);\n",
}


def test_a_non_transactional_migration_failing_halfway_marks_the_database_dirty_until_resolved(
    tmp_path: Path, database: Connection
) -> None:
    catalog = read_catalog(write_migrations(tmp_path, HALF), tmp_path)
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, POLICY, environment="staging")
    failed = raised.value.report.failed
    assert failed is not None and failed.dirty and (failed.statement_number, failed.statement_count) == (2, 3)
    message = str(raised.value)
    assert "statement 2 of 3: INSERT INTO no_such_table" in message and "42P01" in message
    assert "statement 1 is applied; the database is marked dirty" in message
    assert "rds-migrations resolve --env staging 0002.half --mark-applied" in message
    assert dirty_state(database) == [("0002.half", "failed", 2)]

    problems = plan(database, catalog).problems
    assert len(problems) == 1 and "0002.half (non-transactional) is dirty: statement 2 of 3 failed " \
                                  "(SQLSTATE 42P01" in problems[0]
    with pytest.raises(DirtyDatabase, match=r"(?s)1\. ran: .*2\. FAILED: INSERT.*3\. not run"):
        apply_pending(database, catalog, POLICY)
    assert "after_half" not in tables(database)
    with pytest.raises(ResolveError, match="0003.after is not marked dirty.*dirty: 0002.half"):
        resolve_dirty(database, catalog, "0003.after", mark_applied=True, policy=POLICY)

    with connected(database) as conn:  # the operator finishes it by hand, then records that
        conn.execute("CREATE TABLE half_b (id bigint)")
    assert "recorded as applied" in resolve_dirty(database, catalog, "0002.half", mark_applied=True, policy=POLICY)
    assert apply_pending(database, catalog, POLICY).applied_ids == ("0003.after",)
    assert applied_ids(database) == ["0001.t", "0002.half", "0003.after"]


def test_resolve_refuses_when_the_file_changed_since_it_ran(tmp_path: Path, database: Connection) -> None:
    directory = write_migrations(tmp_path, HALF)
    with pytest.raises(MigrationError):
        apply_pending(database, read_catalog(directory, tmp_path), POLICY)
    write_migrations(tmp_path, {"0002.half.sql": HALF["0002.half.sql"].replace("no_such_table", "t")})
    catalog = read_catalog(directory, tmp_path)
    with pytest.raises(DirtyDatabase, match="its file changed since it ran"):
        apply_pending(database, catalog, POLICY)
    with pytest.raises(ResolveError, match="0002.half.sql changed since it ran"):
        resolve_dirty(database, catalog, "0002.half", mark_applied=True, policy=POLICY)


def test_a_failing_first_statement_leaves_the_database_clean_and_is_not_retried(
    tmp_path: Path, database: Connection
) -> None:
    with connected(database) as setup:
        setup.execute("CREATE TABLE busy (id bigint)")
    files = {"0001.nt.sql": "-- transactional: false\nALTER TABLE busy ADD COLUMN c int;\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    policy = POLICY.model_copy(update={"lock_timeout_ms": 50, "lock_timeout_retries": 5,
                                       "lock_retry_base_delay_seconds": 0.01})
    reader = database.connect(autocommit=False)
    reader.execute("SELECT * FROM busy")
    try:
        with pytest.raises(MigrationError) as raised:
            apply_pending(database, catalog, policy)
    finally:
        reader.close()
    failed = raised.value.report.failed
    assert failed is not None and failed.sqlstate == "55P03" and failed.attempts == 1 and not failed.dirty
    assert "non-transactional, so not retried" in str(raised.value)
    assert dirty_state(database) == [] and plan(database, catalog).problems == ()
    assert apply_pending(database, catalog, POLICY).applied_ids == ("0001.nt",)  # once the reader is gone


def test_a_do_block_that_commits_then_fails_leaves_the_database_dirty(tmp_path: Path, database: Connection) -> None:
    """A batched backfill: a DO block, run on its own, may COMMIT as it goes, so failing as the first statement
    does not mean nothing ran. It used to be "nothing else ran", with no mark, and the next run did it again on
    top of the rows it had committed. A transaction of the file's own, opened then failing, is not counted as
    applied either ("statements 1-3 are applied" was said where only statement 1 was)."""
    files = {
        "0001.backfill.sql": ("-- transactional: false\nDO $$ BEGIN CREATE TABLE batch_log (n bigint); "
                              "INSERT INTO batch_log VALUES (1); COMMIT; INSERT INTO batch_log VALUES (2); COMMIT; "
                              "PERFORM 1 / 0; END $$;\n"),
    }
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, POLICY)
    failed = raised.value.report.failed
    assert failed is not None and failed.dirty and failed.commits_inside and failed.sqlstate == "22012"
    assert ("non-transactional: no statement before it ran, and statement 1 (a CALL, a DO block that can COMMIT, "
            "or a statement that commits in phases) may have committed part of its work; the database is marked "
            "dirty") in str(raised.value)
    assert dirty_state(database) == [("0001.backfill", "failed", 1)] and applied_ids(database) == []
    with connected(database) as conn:
        assert conn.execute("SELECT count(*) FROM batch_log").fetchone() == (2,)
    assert any("dirty" in problem for problem in plan(database, catalog).problems)  # the next run refuses

    files = {"0002.own-transaction.sql": ("-- transactional: false\nCREATE TABLE own_a (id bigint);\nBEGIN;\n"
                                          "CREATE TABLE own_b (id bigint);\nSELECT 1 / 0;\nCOMMIT;\n")}
    other = tmp_path / "other"
    catalog = read_catalog(write_migrations(other, files), other)
    with connected(database) as conn:
        conn.execute("DELETE FROM _rds_migrations_dirty")
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, POLICY)
    assert "non-transactional: statement 1 is applied;" in str(raised.value), str(raised.value)
    assert "own_a" in tables(database) and "own_b" not in tables(database)


def test_a_mark_of_a_run_in_progress_is_not_dirty(tmp_path: Path, database: Connection) -> None:
    files = {"0001.nt.sql": "-- transactional: false\nCREATE TABLE nt (id bigint);\nSELECT pg_sleep(1);\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    running = threading.Thread(target=apply_pending, args=(database, catalog, POLICY))
    running.start()
    try:
        with connected(database) as conn:
            deadline = time.monotonic() + 10
            while conn.execute("SELECT to_regclass('_rds_migrations_dirty')").fetchone()[0] is None or \
                    not conn.execute("SELECT 1 FROM _rds_migrations_dirty").fetchone():
                assert time.monotonic() < deadline
                time.sleep(0.02)
        current = plan(database, catalog)
        assert current.problems == () and current.pending == ("0001.nt",)
    finally:
        running.join()
    assert applied_ids(database) == ["0001.nt"] and dirty_state(database) == []


UNIQUE_EMAIL = {
    "0001.users-email.sql": (
        "-- transactional: false\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {name} ON users (email);\n"
    ),
}


def users_with_a_duplicate(database: Connection) -> None:
    with connected(database) as conn:
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text)")
        conn.execute("INSERT INTO users VALUES (1, 'a@example.com'), (2, 'a@example.com')")


def index_valid(database: Connection, name: str) -> bool | None:
    with connected(database) as conn:
        row = conn.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                           "WHERE c.relname = %s", (name,)).fetchone()
    return row[0] if row else None


def test_an_invalid_index_is_refused_with_the_exact_drop_command(tmp_path: Path, database: Connection) -> None:
    users_with_a_duplicate(database)
    files = {k: v.format(name="users_email_key") for k, v in UNIQUE_EMAIL.items()}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, POLICY)
    assert raised.value.report.failed.sqlstate == "23505"  # type: ignore[union-attr]
    assert "leaves an INVALID index, which the next run drops or refuses" in str(raised.value)
    assert index_valid(database, "users_email_key") is False and dirty_state(database) == []

    with connected(database) as conn:
        conn.execute("DELETE FROM users WHERE id = 2")  # the data is fixed; the INVALID index is still there
    command = 'DROP INDEX CONCURRENTLY IF EXISTS "public"."users_email_key";'
    assert [i.drop_command for i in plan(database, catalog).invalid_indexes] == [command]
    with pytest.raises(InvalidIndexFound) as refused:
        apply_pending(database, catalog, POLICY)
    assert f"drop it, then run again: {command}" in str(refused.value) and "0001.users-email" in str(refused.value)
    assert applied_ids(database) == []  # IF NOT EXISTS would have skipped the build and recorded it

    with connected(database) as conn:
        conn.execute(command)
    assert apply_pending(database, catalog, POLICY).applied_ids == ("0001.users-email",)
    assert index_valid(database, "users_email_key") is True


def test_an_invalid_index_after_another_statement_of_its_migration_is_found(tmp_path: Path,
                                                                         database: Connection) -> None:
    """The index's statement is not the file's first: its leftover is still found (the lookup once numbered
    only the indexes, so a statement before one shifted it onto nothing) and the run refuses, not records."""
    users_with_a_duplicate(database)
    files = {"0001.cic.sql": "-- transactional: false\nCREATE TABLE IF NOT EXISTS audit (id bigint);\n"
                             "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key ON users (email);\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with pytest.raises(MigrationError):
        apply_pending(database, catalog, POLICY)
    with connected(database) as conn:
        conn.execute("DELETE FROM users WHERE id = 2")
    resolve_dirty(database, catalog, "0001.cic", mark_applied=False, policy=POLICY)  # statement 1 may run again
    assert [str(i) for i in plan(database, catalog).invalid_indexes] == [
        'INVALID index "public"."users_email_key" on "users", left by a failed CREATE INDEX CONCURRENTLY of 0001.cic']
    with pytest.raises(InvalidIndexFound):  # IF NOT EXISTS would skip the build and record a broken index
        apply_pending(database, catalog, POLICY)
    assert applied_ids(database) == [] and index_valid(database, "users_email_key") is False


def test_an_invalid_index_on_a_quoted_schema_and_table_is_found(tmp_path: Path, database: Connection) -> None:
    # The parser reads the table as the server will (quoted, mixed case, in its schema): the leftover of the
    # failed build is found there and named with its schema.
    with connected(database) as conn:
        conn.execute('CREATE SCHEMA "Billing"; CREATE TABLE "Billing"."Customer Emails" (id bigint, email text)')
        conn.execute('INSERT INTO "Billing"."Customer Emails" VALUES (1, \'a@example.com\'), (2, \'a@example.com\')')
    # The server folds only ASCII letters of an unquoted name: Émails_Once is stored as Émails_once.
    files = {"0001.emails.sql": "-- transactional: false\n/* one per customer */ CREATE UNIQUE INDEX\n"
                                '  CONCURRENTLY Émails_Once ON ONLY "Billing"."Customer Emails" (email);\n'}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with pytest.raises(MigrationError):
        apply_pending(database, catalog, POLICY)
    assert index_valid(database, "Émails_once") is False
    invalid = plan(database, catalog).invalid_indexes
    assert [i.drop_command for i in invalid] == ['DROP INDEX CONCURRENTLY IF EXISTS "Billing"."Émails_once";']
    assert str(invalid[0]).startswith('INVALID index "Billing"."Émails_once" on "Billing"."Customer Emails"')


def test_an_invalid_index_is_dropped_and_built_again_when_the_policy_says_so(
    tmp_path: Path, database: Connection
) -> None:
    users_with_a_duplicate(database)
    hostile = 'users_email"; DROP TABLE users; --'  # a name is an identifier, always quoted
    files = {k: v.format(name='"users_email""; DROP TABLE users; --"') for k, v in UNIQUE_EMAIL.items()}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with pytest.raises(MigrationError):
        apply_pending(database, catalog, POLICY)
    assert index_valid(database, hostile) is False
    with connected(database) as conn:
        conn.execute("DELETE FROM users WHERE id = 2")

    policy = POLICY.model_copy(update={"invalid_index": "drop_and_retry"})
    assert apply_pending(database, catalog, policy).applied_ids == ("0001.users-email",)
    assert index_valid(database, hostile) is True and "users" in tables(database)


def test_the_summary_of_a_run_left_dirty_says_so_and_how_to_resolve_it(tmp_path: Path, database: Connection) -> None:
    """Not "rolled back, as it was before": a non-transactional migration's first statement stays applied."""
    write_migrations(tmp_path, {"0001.users.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text);\n"})
    assert cli("run", "--database-url", url_of(database), cwd=tmp_path).returncode == 0
    with connected(database) as conn:  # the application's data: a rehearsal from nothing has none of it
        conn.execute("INSERT INTO users VALUES (1, 'a@example.com'), (2, 'a@example.com')")
    write_migrations(tmp_path, {"0002.cic.sql": "-- transactional: false\nCREATE TABLE audit (id bigint);\n"
                                                "CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);\n"})
    result = cli("run", "--database-url", url_of(database), "--git-sha", "abcdef1", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    summary = result.stdout + result.stderr
    assert "0002.cic: non-transactional: statement 1 is applied; the database is marked dirty" in summary
    assert "rds-migrations resolve --database-url URL 0002.cic --mark-not-applied" in summary
    assert "was rolled back, so the database is as it was before" not in summary


def test_the_suggested_commands_work_as_printed(tmp_path: Path, database: Connection) -> None:
    """Each command a dirty mark's message suggests names the database as the run did, and runs: `--database-url
    URL` for a run given a URL (`--env database-url` failed: DATABASE_URL is not set), the target's own name for
    a target of a fleet (`--env <fleet>-<target>`, which named no environment), and, for a mark a rollback left,
    --mark-not-applied once the rollback is finished by hand (it said --mark-applied, which recorded the
    migration as applied while its objects were gone)."""
    from tests.helpers import shipped_environments_and

    write_migrations(tmp_path, {"0001.t.sql": "CREATE TABLE t (id bigint);\n",
                                "0002.half.sql": "-- transactional: false\nCREATE TABLE half (id bigint);\n",
                                "0002.half.rollback.sql": "DROP TABLE half;\n"})
    assert cli("run", "--database-url", url_of(database), cwd=tmp_path).returncode == 0
    write_migrations(tmp_path, {"0002.half.rollback.sql": "DROP TABLE half;\nDROP TABLE no_such_table;\n"})
    undo = cli("rollback", "--database-url", url_of(database), "--to", "1", cwd=tmp_path)
    assert undo.returncode == 1 and dirty_state(database) == [("0002.half", "failed", 2)], undo.stderr[-2000:]
    said = cli("resolve", "--database-url", url_of(database), cwd=tmp_path)
    assert said.returncode == 1, said.stdout + said.stderr
    assert ("finish the rollback by hand (the rest of 0002.half.rollback.sql) and run `rds-migrations resolve "
            "--database-url URL 0002.half --mark-not-applied`") in said.stdout, said.stdout
    assert "--env database-url" not in said.stdout + undo.stderr

    environments = shipped_environments_and(tmp_path, """
[environments.tenants]
tier = "staging"
credentials = { kind = "url_env", variable = "UNUSED_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
rehearsal = { kind = "target_server" }
policy = { snapshot_required = false }

[environments.tenants.fleet]
targets = [{ name = "acme", url_env = "ACME_URL" }]

[environments.tagged]
tier = "staging"
aws = { region = "eu-west-1" }
credentials = { kind = "secrets_manager", secret_id = "rds/tagged/migrator" }
snapshot = { kind = "none" }
notify = { kind = "console" }
policy = { snapshot_required = false }

[environments.tagged.fleet]
discover = { kind = "rds_instances", tags = { app = "tenants" } }
""")
    env = {"RDS_MIGRATIONS_ENVIRONMENTS": str(environments), "ACME_URL": url_of(database)}
    by_target = cli("resolve", "--env", "tenants-acme", cwd=tmp_path, env=env)
    assert by_target.returncode == 1 and "0002.half (non-transactional) is dirty" in by_target.stdout, \
        by_target.stdout + by_target.stderr
    assert "`rds-migrations resolve --env tenants-acme 0002.half --mark-not-applied`" in by_target.stdout
    mended = cli("resolve", "--env", "tenants-acme", "0002.half", "--mark-not-applied", cwd=tmp_path, env=env)
    assert mended.returncode == 0 and dirty_state(database) == [], mended.stdout + mended.stderr
    assert applied_ids(database) == ["0001.t"]
    tagged = cli("resolve", "--env", "tagged-tenant7", cwd=tmp_path, env=env)  # found by tag: no AWS asked
    assert tagged.returncode == 2 and "whose targets are found by tag in AWS: name that database with " \
        "--database-url URL" in tagged.stderr, tagged.stderr


def test_history_rows_deleted_by_hand_are_refused_and_put_back_by_resolve(tmp_path: Path,
                                                                          database: Connection) -> None:
    """A checksum row deleted from _rds_migrations_history used to let an edited file through as "unverified"
    (its new checksum recorded), and a yoyo row deleted by hand read as a migration out of order ("renumber
    it"). Both are named as history edited by hand, and `resolve` puts them back as the operator says. A
    migration plain yoyo applied (no log row of ours) is still taken as unverified, as before."""
    files = {"0001.a.sql": "CREATE TABLE a (id bigint);\n", "0002.b.sql": "CREATE TABLE b (id bigint);\n",
             "0003.c.sql": "CREATE TABLE c (id bigint);\n"}
    write_migrations(tmp_path, files)
    url = ("--database-url", url_of(database))
    assert cli("run", *url, cwd=tmp_path).returncode == 0
    with connected(database) as conn:
        conn.execute("DELETE FROM _rds_migrations_history WHERE migration_id = '0002.b'")
        conn.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0001.a'")
    write_migrations(tmp_path, {"0002.b.sql": "CREATE TABLE b (id bigint, evil text);\n"})
    refused = cli("run", *url, cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert ("0002.b.sql: applied by rds-migrations (yoyo's log says so), but its checksum row is gone" in
            refused.stderr and "`rds-migrations resolve --database-url URL 0002.b --mark-applied`" in refused.stderr)
    assert "0001.a: rds-migrations recorded it as applied (its checksum row is there), but yoyo's row" in \
        refused.stderr and "out of order" not in refused.stderr
    assert "evil" not in cli("status", *url, cwd=tmp_path).stdout
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint, edited text);\n"})
    edited = cli("resolve", *url, "0001.a", "--mark-applied", cwd=tmp_path)  # its checksum row was kept
    assert edited.returncode == 1 and "0001.a.sql changed since it was applied" in edited.stderr, edited.stderr
    write_migrations(tmp_path, {"0002.b.sql": files["0002.b.sql"],  # checked: the files as they were applied
                                "0001.a.sql": files["0001.a.sql"]})
    for migration in ("0002.b", "0001.a"):
        mended = cli("resolve", *url, migration, "--mark-applied", cwd=tmp_path)
        assert mended.returncode == 0 and "is recorded as applied" in mended.stdout, mended.stdout + mended.stderr
    assert cli("plan", *url, cwd=tmp_path).returncode == 0
    assert sorted(applied_ids(database)) == ["0001.a", "0002.b", "0003.c"]

    with connected(database) as conn:  # the whole table dropped: the same
        conn.execute("DROP TABLE _rds_migrations_history")
    dropped = cli("plan", *url, cwd=tmp_path)
    assert dropped.returncode == 1 and dropped.stdout.count("but its checksum row is gone") == 3, dropped.stdout
    for migration in ("0001.a", "0002.b", "0003.c"):
        assert cli("resolve", *url, migration, "--mark-applied", cwd=tmp_path).returncode == 0

    with connected(database) as conn:  # as plain yoyo would have left it: no checksum, no log row of ours
        conn.execute("DELETE FROM _rds_migrations_history WHERE migration_id = '0003.c'")
        conn.execute("UPDATE _yoyo_log SET comment = NULL WHERE migration_id = '0003.c'")
    planned = cli("plan", *url, "--json", cwd=tmp_path)
    assert planned.returncode == 0 and json.loads(planned.stdout)["unverified"] == ["0003.c"], planned.stdout


def test_resolve_names_history_edited_by_hand_instead_of_saying_clean(tmp_path: Path, database: Connection) -> None:
    """`plan` refused a history edited by hand (a yoyo row or a checksum row deleted) and named `resolve` as the
    way out, while `resolve` alone said "clean (no dirty migration, ...)" and exited 0. It names each with the
    command that mends it, and exits 1 as for a dirty migration; once mended, it is clean again."""
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                                "0002.b.sql": "-- depends: 0001.a\nCREATE TABLE b (id bigint);\n"})
    url = ("--database-url", url_of(database))
    assert cli("run", *url, cwd=tmp_path).returncode == 0
    with connected(database) as conn:
        conn.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0001.a'")
        conn.execute("DELETE FROM _rds_migrations_history WHERE migration_id = '0002.b'")
    assert cli("plan", *url, cwd=tmp_path).returncode == 1
    said = cli("resolve", *url, cwd=tmp_path)
    assert said.returncode == 1 and "clean" not in said.stdout, said.stdout + said.stderr
    assert "0001.a: rds-migrations recorded it as applied (its checksum row is there), but yoyo's row" in said.stdout
    assert "`rds-migrations resolve --database-url URL 0001.a --mark-not-applied`" in said.stdout
    assert "0002.b.sql: applied by rds-migrations (yoyo's log says so), but its checksum row is gone" in said.stdout
    assert "`rds-migrations resolve --database-url URL 0002.b --mark-applied`" in said.stdout
    for migration in ("0001.a", "0002.b"):
        assert cli("resolve", *url, migration, "--mark-applied", cwd=tmp_path).returncode == 0
    clean = cli("resolve", *url, cwd=tmp_path)
    assert clean.returncode == 0 and "clean" in clean.stdout, clean.stdout + clean.stderr


def test_an_invalid_index_is_named_by_status_and_never_marked_applied(tmp_path: Path, database: Connection) -> None:
    """`resolve --mark-applied` used to record a migration whose unique index was left INVALID (never used, never
    unique, never built again), and `status` never named the index; only `drift` did."""
    write_migrations(tmp_path, {
        "0001.dup.sql": "CREATE TABLE dup (v int);\n",
        "0002.idx.sql": ("-- transactional: false\nCREATE TABLE other (id int);\n"
                         "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS dup_v ON dup (v);\n"),
    })
    url = ("--database-url", url_of(database))
    assert cli("run", *url, "--target", "1", cwd=tmp_path).returncode == 0
    with connected(database) as conn:  # the target's rows, which no rehearsal has
        conn.execute("INSERT INTO dup VALUES (1), (1)")
    failed = cli("run", *url, cwd=tmp_path)
    assert failed.returncode == 1 and dirty_state(database) == [("0002.idx", "failed", 2)], failed.stderr[-2000:]
    status = cli("status", *url, cwd=tmp_path)
    assert 'dup_v" on "dup", left by a failed CREATE INDEX CONCURRENTLY of 0002.idx' in status.stdout, status.stdout
    refused = cli("resolve", *url, "0002.idx", "--mark-applied", cwd=tmp_path)
    assert refused.returncode == 1 and "the migration would keep it INVALID" in refused.stderr, refused.stderr
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "public"."dup_v";' in refused.stderr
    assert applied_ids(database) == ["0001.dup"] and dirty_state(database) == [("0002.idx", "failed", 2)]


def test_the_suggested_commands_name_a_migrations_directory_that_is_not_the_default(
        tmp_path: Path, database: Connection) -> None:
    """A project keeping its migrations in db/migrations: the resolve command a dirty mark suggests says so
    (without it, resolve read migrations/ and said the file was not there any more)."""
    write_migrations(tmp_path, {
        "0001.dup.sql": "CREATE TABLE dup (v int);\n",
        "0002.idx.sql": ("-- transactional: false\nCREATE TABLE other (id int);\n"
                         "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS dup_v ON dup (v);\n"),
    }, "db/migrations")
    url = ("--database-url", url_of(database), "--migrations", "db/migrations")
    assert cli("run", *url, "--target", "1", cwd=tmp_path).returncode == 0
    with connected(database) as conn:  # the target's rows, which no rehearsal has
        conn.execute("INSERT INTO dup VALUES (1), (1)")
    failed = cli("run", *url, cwd=tmp_path)
    suggested = "`rds-migrations resolve --database-url URL --migrations db/migrations 0002.idx --mark-not-applied`"
    assert failed.returncode == 1 and suggested in failed.stderr, failed.stderr[-3000:]
    said = cli("resolve", *url, cwd=tmp_path)
    assert said.returncode == 1 and suggested in said.stdout and "not in" not in said.stdout, said.stdout


def test_an_invalid_index_on_a_table_found_by_the_migrations_own_search_path_is_found(
    tmp_path: Path, database: Connection
) -> None:
    """The table of a failed `CREATE UNIQUE INDEX CONCURRENTLY` after `SET search_path = app` is app's: it was
    looked up under the tool's search_path, so the INVALID index was "missing", and the next run, its IF NOT
    EXISTS skipping the build, recorded the migration with the unique index INVALID."""
    with connected(database) as conn:
        conn.execute("CREATE SCHEMA app; CREATE TABLE app.users (id int, email text); "
                     "INSERT INTO app.users VALUES (1, 'a'), (2, 'a')")
    files = {"0001.uq.sql": ("-- transactional: false\nSET search_path = app;\n"
                             "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_uq ON users (email);\n")}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with pytest.raises(MigrationError):
        apply_pending(database, catalog, POLICY)
    assert '2. FAILED: CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_uq ON users (email) ' \
           '[index "users_email_uq": INVALID]' in explain_state(database, catalog)[1]
    with pytest.raises(ResolveError, match=r'INVALID index "app"."users_email_uq"'):
        resolve_dirty(database, catalog, "0001.uq", mark_applied=True, policy=POLICY)

    with connected(database) as conn:
        conn.execute("DELETE FROM app.users WHERE id = 2")  # the data is fixed; the INVALID index is still there
    resolve_dirty(database, catalog, "0001.uq", mark_applied=False, policy=POLICY)
    with pytest.raises(InvalidIndexFound, match=r'DROP INDEX CONCURRENTLY IF EXISTS "app"."users_email_uq";'):
        apply_pending(database, catalog, POLICY)
    assert applied_ids(database) == [] and index_valid(database, "users_email_uq") is False


def test_statements_rolled_back_with_a_files_own_transaction_are_not_listed_as_ran(
    tmp_path: Path, database: Connection
) -> None:
    """The header said statement 1 is applied, but the list said BEGIN and the first INSERT "ran" (the table
    is empty: they were rolled back with the failing INSERT's transaction)."""
    files = {"0001.own.sql": ("-- transactional: false\nCREATE TABLE a (id int);\nBEGIN;\nINSERT INTO a VALUES (1);\n"
                              "INSERT INTO a VALUES ('x');\nCOMMIT;\n")}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    with pytest.raises(MigrationError):
        apply_pending(database, catalog, POLICY)
    text = explain_state(database, catalog)[1]
    assert "statement 1 is applied" in text and "  1. ran: CREATE TABLE a (id int)\n" in text
    assert "  2. rolled back with its transaction: BEGIN\n" in text
    assert "  3. rolled back with its transaction: INSERT INTO a VALUES (1)\n" in text
    assert "  4. FAILED: INSERT INTO a VALUES ('x')\n  5. not run: COMMIT\n" in text
