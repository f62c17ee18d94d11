"""`rds-migrations status` on real PostgreSQL: what it shows (text and JSON) is exactly what the history tables
hold, read back here with plain SQL; dirty marks, the lock's holder, a baseline, drift when a reference is
remembered (and never waiting behind a migration's lock), a database with no history; aligned columns, colour
only when asked, never the password."""

from __future__ import annotations

import json
import re
import socket
import time
from datetime import UTC
from itertools import takewhile
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.resolve import resolve_dirty
from tasks.engine.migrations.results import MigrationError
from tasks.engine.migrations.session import ADVISORY_LOCK_KEY
from tasks.engine.migrations.status import COLUMNS, LOCKED_OUT, NOT_CHECKED, Status, read_status
from tests.conftest import CANARY_PASSWORD
from tests.helpers import POLICY, PROJECT, cli, url_of, write_migrations
from tests.test_resolve import HALF

FILES = {
    "0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n",
    "0002.add-users-nickname.sql": "ALTER TABLE users ADD COLUMN nickname text;\n",
    "0003.index-users-email.sql": ("-- transactional: false\n"
                                   "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n"),
}
LATER = {"0004.create-devices.sql": "CREATE TABLE devices (id bigint PRIMARY KEY);\n"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    return tmp_path


def held(database: Connection) -> list[dict]:
    """What the tables hold, in status's JSON shape, read with plain SQL (one log row per migration here)."""
    with connected(database) as conn:
        rows = conn.execute("""
            SELECT m.migration_id, m.applied_at_utc, l.operation, l.username, l.hostname, h.git_sha, h.flow_run_id,
                   h.duration_ms, h.transactional
            FROM _yoyo_migration m
            JOIN _yoyo_log l ON l.migration_hash = m.migration_hash AND l.operation IN ('apply', 'baseline', 'mark')
            LEFT JOIN _rds_migrations_history h ON h.migration_id = m.migration_id
            ORDER BY m.applied_at_utc, m.migration_id""").fetchall()
    return [{"id": i, "applied_at": at.replace(tzinfo=UTC).isoformat(), "how": how, "user": user, "host": host,
             "git_sha": sha, "flow_run_id": run, "duration_ms": ms, "transactional": transactional}
            for i, at, how, user, host, sha, run, ms, transactional in rows]


def shown(status: Status) -> dict:
    """status's JSON through a JSON round trip, after checking neither rendering holds the password."""
    document = json.loads(json.dumps(status.to_json()))
    for text in (json.dumps(document), status.to_text(color=False), status.to_text(color=True)):
        assert CANARY_PASSWORD not in text
    return document


def without(entries: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in keys} for entry in entries]


def columns(text: str) -> tuple[list[int], list[str]]:
    """Where each column of the applied table starts, and the table's rows."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith(COLUMNS[0]))
    rows = list(takewhile(bool, lines[lines.index(header) + 1:]))
    return [header.index(name) for name in COLUMNS], rows


def assert_aligned(text: str) -> None:
    starts, rows = columns(text)
    assert rows and starts == sorted(starts)
    for row in rows:
        for start in starts[1:]:
            assert row[start - 2:start] == "  " and row[start] != " ", (row, start)


def test_run_json_and_status_json_hold_what_the_database_holds(project: Path, database: Connection) -> None:
    write_migrations(project, FILES)
    ran = cli("run", "--database-url", url_of(database), "--git-sha", "abcdef1", "--json", cwd=project)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run = json.loads(ran.stdout)
    tables = held(database)
    assert run["command"] == "run" and run["outcome"] == "succeeded" and run["git_sha"] == "abcdef1"
    assert run["applied"] == [row["id"] for row in tables] == [name[:-4] for name in FILES]
    assert run["pending"] == []

    write_migrations(project, LATER)
    status = read_status(database, read_catalog(project / "migrations", project))
    document = shown(status)
    assert without(document["applied"], "flow_run_url", "file") == tables
    assert [(m["how"], m["user"], m["host"], m["git_sha"], m["transactional"]) for m in document["applied"]] == [
        ("apply", database.user, socket.gethostname()[:255], "abcdef1", transactional)
        for transactional in (True, True, False)]
    assert all(m["file"] == "ok" and m["flow_run_url"] is None and m["duration_ms"] >= 0 for m in document["applied"])
    assert document["pending"] == ["0004.create-devices"] and document["dirty"] == [] and document["problems"] == []
    assert document["lock"] == {"held": False} and document["has_history"] is True
    assert document["drift"] == {"checked": False, "drifted": None, "summary": NOT_CHECKED}  # policy drift: ignore
    assert document["database"] == database.describe()

    # The command: one JSON document, the same as the engine's, with the command's envelope.
    answered = cli("status", "--database-url", url_of(database), "--json", cwd=project)
    assert answered.returncode == 0, answered.stderr[-3000:]
    command = json.loads(answered.stdout)
    assert command["schema_version"] == 1 and command["command"] == "status"
    assert command["applied"] == document["applied"] and command["pending"] == document["pending"]
    plain = cli("status", "--database-url", url_of(database), cwd=project)  # not a terminal: no colour
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout and "0004.create-devices" in plain.stdout
    assert_aligned(plain.stdout)


def test_a_baseline_shows_as_baseline_with_drift_checked_against_its_remembered_schema(
        project: Path, database: Connection) -> None:
    with connected(database) as conn:  # made by hand (or by another tool) before adoption
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL)")
        conn.execute("ALTER TABLE users ADD COLUMN nickname text")
    write_migrations(project, FILES)
    adopted = cli("baseline", "--database-url", url_of(database), "--through", "0002", "--git-sha", "abcdef1",
                  cwd=project)
    assert adopted.returncode == 0, adopted.stderr[-3000:]
    catalog = read_catalog(project / "migrations", project)

    document = shown(status := read_status(database, catalog))
    assert without(document["applied"], "flow_run_url", "file") == held(database)
    assert [(m["id"], m["how"], m["git_sha"], m["file"]) for m in document["applied"]] == [
        ("0001.create-users", "baseline", "abcdef1", "ok"), ("0002.add-users-nickname", "baseline", "abcdef1", "ok")]
    assert document["pending"] == ["0003.index-users-email"]
    assert document["drift"]["checked"] is True and document["drift"]["drifted"] is False
    assert status.drift.startswith("no drift: the live schema is what the migrations make")

    with connected(database) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN added_by_hand text")
    drifted = read_status(database, catalog)
    assert drifted.drifted is True and drifted.drift.startswith("drift: 1 difference (1 unexpected)")
    with connected(database, autocommit=False) as migrating:  # a migration holding a table: status waits for none
        migrating.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        locked_out = read_status(database, catalog)
        assert time.monotonic() - started < 10 and (locked_out.drift, locked_out.drifted) == (LOCKED_OUT, None)
        assert locked_out.applied == drifted.applied

    apply_pending(database, catalog, POLICY, git_sha="fedcba9")  # a state with no remembered reference
    status = read_status(database, catalog)
    assert [m.how for m in status.applied] == ["baseline", "baseline", "apply"] and status.pending == ()
    assert status.drifted is None and status.drift == NOT_CHECKED
    text = status.to_text(color=False)
    assert_aligned(text)
    starts, rows = columns(text)
    assert [row[starts[1]:].split()[:2] for row in rows] == [
        ["baseline", "0001.create-users"], ["baseline", "0002.add-users-nickname"], ["apply", "0003.index-users-email"]]
    assert f"drift: {NOT_CHECKED}" in text and "lock:  not held" in text


def test_a_dirty_mark_shows_with_how_to_resolve_it_and_a_mark_shows_as_mark(tmp_path: Path,
                                                                              database: Connection) -> None:
    catalog = read_catalog(write_migrations(tmp_path, HALF), tmp_path)
    with pytest.raises(MigrationError):
        apply_pending(database, catalog, POLICY, git_sha="abcdef1")
    status = read_status(database, catalog, environment="staging")
    document = shown(status)
    with connected(database) as conn:
        marks = conn.execute("SELECT migration_id, state, statement_number, statement_count, sqlstate "
                             "FROM _rds_migrations_dirty").fetchall()
    assert [(d["migration_id"], d["state"], d["statement_number"], d["statement_count"], d["sqlstate"])
            for d in document["dirty"]] == marks == [("0002.half", "failed", 2, 3, "42P01")]
    assert document["dirty"][0]["description"] == status.dirty[0].describe()
    assert "rds-migrations resolve --env staging 0002.half --mark-applied" in document["dirty"][0]["to_resolve"]
    assert document["pending"] == ["0002.half", "0003.after"] and document["problems"] == []
    text = status.to_text(color=False)
    assert "1 applied, 2 pending, 1 dirty" in text.splitlines()[0]
    assert f"  {status.dirty[0].describe()}" in text and "to resolve: see what it left with" in text

    resolve_dirty(database, catalog, "0002.half", mark_applied=True, policy=POLICY)
    document = shown(read_status(database, catalog))
    assert document["dirty"] == [] and without(document["applied"], "flow_run_url", "file") == held(database)
    assert [(m["id"], m["how"], m["git_sha"]) for m in document["applied"]] == [
        ("0001.t", "apply", "abcdef1"), ("0002.half", "mark", "resolved")]


def test_the_lock_held_by_another_session_shows_its_holder(tmp_path: Path, database: Connection) -> None:
    catalog = read_catalog(write_migrations(tmp_path, LATER), tmp_path)
    with connected(database, application_name="deploy-bot") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        pid = other.info.backend_pid
        status = read_status(database, catalog)
        document = shown(status)
    assert document["lock"]["held"] is True and document["lock"]["pid"] == pid
    assert (document["lock"]["application_name"], document["lock"]["user"]) == ("deploy-bot", database.user)
    assert document["lock"]["since"].endswith("+00:00")
    assert f"lock:  held by deploy-bot (pid {pid}, user {database.user}, from " in status.to_text(color=False)
    assert read_status(database, catalog).lock is None  # released with its session


def test_edited_missing_and_unverified_files_and_flow_run_links(tmp_path: Path, database: Connection) -> None:
    directory = write_migrations(tmp_path, FILES)
    run_id = "6d1f0c2e-0000-4000-8000-000000000001"
    apply_pending(database, read_catalog(directory, tmp_path), POLICY, git_sha="abcdef1", run_id=run_id)
    (directory / "0001.create-users.sql").write_text(FILES["0001.create-users.sql"] + "-- edited\n")
    (directory / "0002.add-users-nickname.sql").unlink()
    with connected(database) as conn:  # as if plain yoyo had applied it: no checksum kept, yoyo's log row
        conn.execute("DELETE FROM _rds_migrations_history WHERE migration_id = '0003.index-users-email'")
        conn.execute("UPDATE _yoyo_log SET comment = NULL WHERE migration_id = '0003.index-users-email'")
    status = read_status(database, read_catalog(directory, tmp_path), ui_url="http://prefect.example/")
    document = shown(status)
    assert [(m["id"], m["file"]) for m in document["applied"]] == [
        ("0001.create-users", "edited"), ("0002.add-users-nickname", "missing file"),
        ("0003.index-users-email", "unverified")]
    link = f"http://prefect.example/runs/flow-run/{run_id}"
    assert [(m["flow_run_id"], m["flow_run_url"]) for m in document["applied"][:2]] == [(run_id, link)] * 2
    unverified = document["applied"][2]  # yoyo's rows still say who, where and when
    assert (unverified["how"], unverified["user"], unverified["git_sha"], unverified["flow_run_url"]) == (
        "apply", database.user, None, None)
    assert len(document["problems"]) == 2 and "edited after it was applied" in document["problems"][0]
    text = status.to_text(color=False)
    assert_aligned(text)
    assert link in text and "the next run refuses:" in text


def test_a_database_with_no_history_says_so_and_what_it_holds(tmp_path: Path, database: Connection) -> None:
    catalog = read_catalog(write_migrations(tmp_path, FILES), tmp_path)
    empty = shown(read_status(database, catalog))
    assert empty["has_history"] is False and empty["applied"] == []
    assert empty["pending"] == [name[:-4] for name in FILES] and "empty database" in empty["note"]
    with connected(database) as conn:
        conn.execute("CREATE TABLE legacy (id bigint)")
    status = read_status(database, catalog)
    assert "this database has 1 table (legacy) and no migration history" in (status.note or "")
    assert status.drift == NOT_CHECKED and "adopt it with `rds-migrations baseline`" in status.to_text(color=False)


def test_colour_only_when_asked_and_the_same_text_under_it(tmp_path: Path, database: Connection) -> None:
    catalog = read_catalog(write_migrations(tmp_path, FILES), tmp_path)
    apply_pending(database, catalog, POLICY, git_sha="abcdef1", target="0002")
    status = read_status(database, catalog)
    plain, coloured = status.to_text(color=False), status.to_text(color=True)
    assert "\x1b[" not in plain and "\x1b[" in coloured
    assert "\n".join(line.rstrip() for line in ANSI.sub("", coloured).splitlines()) == plain
    assert_aligned(plain)


def test_a_checksum_row_put_back_by_resolve_shows_as_marked_by_resolve(project: Path, database: Connection) -> None:
    """A checksum row deleted by hand, then `resolve --mark-applied`: status shows how it came now (`mark`, by
    resolve), not the run's `apply` beside the git SHA of an adoption."""
    catalog = read_catalog(write_migrations(project, FILES), project)
    apply_pending(database, catalog, POLICY, git_sha="abcdef1")
    with connected(database) as conn:
        conn.execute("DELETE FROM _rds_migrations_history WHERE migration_id = '0002.add-users-nickname'")
    mended = cli("resolve", "--database-url", url_of(database), "0002.add-users-nickname", "--mark-applied",
                 cwd=project)
    assert mended.returncode == 0, mended.stderr
    status = read_status(database, catalog, environment="staging")
    row = next(m for m in status.applied if m.id == "0002.add-users-nickname")
    assert (row.how, row.git_sha, row.file) == ("mark", "resolved", "ok")
    assert [m.how for m in status.applied if m.id != row.id] == ["apply", "apply"]
    assert status.pending == () and status.problems == ()


def test_the_drift_command_status_suggests_names_the_database(project: Path, database: Connection,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)  # as the command line runs it: the directory named from where it runs
    catalog = read_catalog(write_migrations(project, FILES, directory="db/migrations"), project)
    apply_pending(database, catalog, POLICY, git_sha="abcdef1")
    status = read_status(database, catalog, environment="staging")
    assert "`rds-migrations drift --env staging --migrations db/migrations`" in status.drift
    assert "`rds-migrations drift --database-url URL`" in read_status(database, read_catalog(
        write_migrations(project, FILES), project), environment="database-url").drift


BLOCKING = """
[environments.blocky]
tier = "staging"
credentials = { kind = "url_env", variable = "BLOCKY_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
rehearsal = { kind = "target_server" }
policy = { snapshot_required = false, drift = "block" }
"""


def test_plan_and_status_say_the_next_run_refuses_a_drifted_schema_under_drift_block(
        project: Path, database: Connection) -> None:
    """What the run's drift check will refuse, `plan` and `status` say first (against the schema remembered after
    the last run); with a migration pending, that migration may account for it, so they say "unless"."""
    write_migrations(project, dict(list(FILES.items())[:2]))
    (project / "environments.toml").write_text(BLOCKING)
    env = {"BLOCKY_URL": url_of(database), "RDS_MIGRATIONS_ENVIRONMENTS": str(project / "environments.toml")}
    ran = cli("run", "--env", "blocky", cwd=project, env=env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    clean = cli("plan", "--env", "blocky", "--json", cwd=project, env=env)
    assert clean.returncode == 0 and json.loads(clean.stdout)["drift"]["drifted"] is False, clean.stdout + clean.stderr

    with connected(database) as conn:
        conn.execute("ALTER TABLE users ALTER COLUMN nickname TYPE varchar(10)")
    planned = cli("plan", "--env", "blocky", cwd=project, env=env)
    assert planned.returncode == 1, planned.stdout + planned.stderr
    assert "ERROR drift: drift: 1 difference (1 changed)" in planned.stdout, planned.stdout
    assert "(policy.drift = block: the run will refuse)" in planned.stdout, planned.stdout
    status = cli("status", "--env", "blocky", "--json", cwd=project, env=env)
    problems = json.loads(status.stdout)["problems"]
    assert any(p.startswith("the live schema has drifted from what the applied migrations make, and policy.drift "
                            "= block; `rds-migrations drift --env blocky` names each difference") for p in problems)
    refused = cli("run", "--env", "blocky", cwd=project, env=env)  # what they said
    assert refused.returncode != 0 and "drifted" in refused.stdout + refused.stderr, refused.stderr[-3000:]

    write_migrations(project, {"0003.widen-nickname.sql": "ALTER TABLE users ALTER COLUMN nickname TYPE text;\n"})
    pending = cli("plan", "--env", "blocky", cwd=project, env=env)
    assert pending.returncode == 0, pending.stdout + pending.stderr
    assert "WARNING drift:" in pending.stdout and "the run will refuse unless a pending migration makes the same " \
        "change" in pending.stdout, pending.stdout
