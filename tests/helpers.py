"""Small helpers for tests: write a migrations directory inside a project; the policy and the three
migrations the engine tests share; what a database holds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

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


def end_the_session_while_it_sleeps(database: Connection, apply: Callable[[], object]) -> BaseException | None:
    """Run `apply` in a thread; once the migrating session sleeps (pg_sleep), the server ends that session (as
    `pg_terminate_backend` or a shutdown would). The exception `apply` ended with."""
    return _while_it_sleeps(database, apply, lambda watcher: watcher.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'rds-migrations' AND datname = current_database()"))


def _while_it_sleeps(database: Connection, apply: Callable[[], object],
                     then: Callable[[psycopg.Connection], object]) -> BaseException | None:
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            apply()
        except BaseException as exc:  # noqa: BLE001 - examined by the test
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    with connected(database, application_name="test-watcher") as watcher:
        deadline = time.monotonic() + 30
        while not watcher.execute(SLEEPING).fetchone():
            assert time.monotonic() < deadline and runner.is_alive()
            time.sleep(0.05)
        then(watcher)
    runner.join(60)
    return outcome.get("error")


class CuttableProxy:
    """A TCP proxy in front of the test server; `cut()` drops every connection through it at once, as a network
    failure or a load balancer's reset would (the server is not told). New connections still pass."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> CuttableProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        # The connections of now only: the first one shut makes its client connect again at once, and that new
        # connection (appended meanwhile) must pass.
        doomed, self.sockets = self.sockets, []
        for connection in doomed:
            try:
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            except OSError:
                pass


def lose_the_connection_mid_message(tmp_path: Path, database: Connection, login: Connection) -> BaseException | None:
    """`0001.a`, `0002.slow` (2 s asleep) and `0003.c` applied by `login`, 20 migrations a message, through a proxy
    that is cut while 0002 sleeps: the network drops, the server is not told. The exception the apply ended with."""
    from tasks.engine.migrations.apply import apply_pending
    from tasks.engine.migrations.catalog import read_catalog

    files = {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
             "0002.slow.sql": "CREATE TABLE slow (id bigint);\nSELECT pg_sleep(2);\n",
             "0003.c.sql": "CREATE TABLE c (id bigint);\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    together = POLICY.model_copy(update={"migrations_per_message": 20})
    with CuttableProxy(database.host, database.port) as proxy:
        through = login.model_copy(update={"host": "127.0.0.1", "port": proxy.port})
        return _while_it_sleeps(database, lambda: apply_pending(through, catalog, together), lambda _: proxy.cut())


# Lock timeouts retried quickly and often enough to outlast a reader that holds its lock for a second.
RETRYING = POLICY.model_copy(update={"lock_timeout_ms": 100, "lock_timeout_retries": 20,
                                     "lock_retry_base_delay_seconds": 0.05, "lock_retry_max_delay_seconds": 0.2})


@contextmanager
def reader_holding(database: Connection, table: str, seconds: float = 1.0) -> Iterator[None]:
    """A reader holding ACCESS SHARE on `table` (made here) for `seconds`, then ending its transaction."""
    with connected(database) as setup:
        setup.execute(f"CREATE TABLE {table} (id bigint)")
    reader = database.connect(autocommit=False)
    reader.execute(f"SELECT * FROM {table}")  # holds ACCESS SHARE until the transaction ends
    threading.Timer(seconds, reader.rollback).start()
    try:
        yield
    finally:
        reader.close()


def dirty_state(database: Connection) -> list[tuple]:
    with connected(database) as conn:
        return conn.execute(
            "SELECT migration_id, state, statement_number FROM _rds_migrations_dirty ORDER BY 1").fetchall()


# ---- the command line, run as a user runs it ---------------------------------------------------------------

PROJECT = Path(__file__).parents[1]


def shipped_environments_and(directory: Path, more: str) -> Path:
    """An environments file in `directory`: the shipped one, and the environments of `more` (TOML) after it."""
    path = directory / "environments.toml"
    path.write_text((PROJECT / "deployments/environments.toml").read_text() + more)
    return path


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


def start_run(project: Path, database: Connection, *args: str, environments: Path | None = None,
              **popen: object) -> subprocess.Popen:
    """`rds-migrations run [args]` on `database` (DATABASE_URL), in the background, as a user starts it."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "DATABASE_URL": url_of(database),
           "RDS_MIGRATIONS_ENVIRONMENTS": str(environments or PROJECT / "deployments/environments.toml")}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", *args], cwd=project, env=env,
                            **popen)


def ctrl_c(running: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C (SIGINT) to `running`; its (stdout, stderr), the process killed if it does not end. It must exit
    130."""
    try:
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 130, err[-3000:]
    return out, err


def ctrl_c_once_sleeping(running: subprocess.Popen, database: Connection) -> tuple[str, str]:
    """Ctrl-C (SIGINT) to `running` once a migration sleeps on `database` (SLEEPING): `ctrl_c`'s answer."""
    try:
        wait_until_seen(database, SLEEPING, running, "the migration on the target never started")
    except BaseException:
        running.kill()
        raise
    return ctrl_c(running)


def wait_until_seen(database: Connection, query: str, process: subprocess.Popen, what: str,
                    seconds: float = 60) -> None:
    """Until `query` (on `database`) returns a row; `process` must still be running meanwhile."""
    deadline = time.monotonic() + seconds
    with connected(database) as watcher:
        while not watcher.execute(query).fetchone():
            assert process.poll() is None and time.monotonic() < deadline, what
            time.sleep(0.1)


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


def a_bug_when_applying(monkeypatch: pytest.MonkeyPatch, migration_id: str) -> None:
    """The engine fails with an error that is not ours (a RuntimeError, as a bug would) when it comes to the
    non-transactional `migration_id`, before sending it. Injected: every real trigger of such an error is a
    defect that gets mended, and what is tested here is what the run says afterwards, not the engine."""
    from tasks.engine.migrations import apply

    real = apply.run_alone

    def run_alone(conn, ledger, migration, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if migration.id == migration_id:
            raise RuntimeError(f"a bug in the engine at {migration_id}")
        return real(conn, ledger, migration, *args, **kwargs)

    monkeypatch.setattr(apply, "run_alone", run_alone)
