"""Small helpers for tests: write a migrations directory inside a project; the policy and the three
migrations the engine tests share; what a database holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from tasks.engine.connection import Connection, connected
from tasks.engine.environments import Policy
from tests.conftest import CANARY_PASSWORD


def write_migrations(project: Path, files: dict[str, str], directory: str = "migrations") -> Path:
    """Write `{"0001.create-x.sql": "...", ...}` into `project/directory` and return the directory."""
    target = project / directory
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (target / name).write_text(text, encoding="utf-8")
    return target


POLICY = Policy(lock_timeout_ms=2000, statement_timeout_ms=60_000, migration_lock_wait_seconds=30)

THREE = {
    "0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n",
    "0002.create-accounts.sql": (
        "CREATE TABLE accounts (id bigint PRIMARY KEY);\n"
        "INSERT INTO accounts VALUES (1);\n"
        "INSERT INTO no_such_table VALUES (1);\n"
    ),
    "0003.create-devices.sql": "CREATE TABLE devices (id bigint PRIMARY KEY);\n",
}


def tables(connection: Connection) -> set[str]:
    with connected(connection) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def applied_ids(connection: Connection) -> list[str]:
    """yoyo's view of what is applied ([] when there is no history at all)."""
    with connected(connection) as conn:
        if conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone() == (None,):
            return []
        return [r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")]


# A statement that sleeps (60 s at most) while the flag that raise_sleep_flag() raises is up.
SLEEP_WHILE_FLAGGED = "DO $$ BEGIN IF EXISTS (SELECT FROM sleep_flag) THEN PERFORM pg_sleep(60); END IF; END $$;\n"


def raise_sleep_flag(database: Connection) -> None:
    with connected(database) as setup:
        setup.execute("CREATE TABLE sleep_flag (on_ boolean)")
        setup.execute("INSERT INTO sleep_flag VALUES (true)")


# The migrating session inside pg_sleep, however its statements were sent.
SLEEPING = ("SELECT 1 FROM pg_stat_activity WHERE application_name = 'rds-migrations' AND wait_event = 'PgSleep' "
            "AND datname = current_database()")


def dirty_state(database: Connection) -> list[tuple]:
    with connected(database) as conn:
        return conn.execute(
            "SELECT migration_id, state, statement_number FROM _rds_migrations_dirty ORDER BY 1").fetchall()


# ---- the command line, run as a user runs it ---------------------------------------------------------------

PROJECT = Path(__file__).parents[1]


def url_of(c: Connection) -> str:
    return f"postgresql://{c.user}:{quote(c.password.get_secret_value(), safe='')}@{c.host}:{c.port}/{c.dbname}"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "RDS_MIGRATIONS_ENVIRONMENTS": str(PROJECT / "deployments/environments.toml"),
                   "PYTHONPATH": str(PROJECT),
                   **(env or {})}
    environment.pop("DATABASE_URL", None) if env is None or "DATABASE_URL" not in env else None
    result = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert CANARY_PASSWORD not in result.stdout + result.stderr
    return result


def stop_process_group(process: subprocess.Popen | None) -> None:
    """Stop a process started with `start_new_session=True` and everything it started: SIGTERM, then SIGKILL
    after 30 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
