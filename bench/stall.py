"""Traffic stall: read-only pgbench load on a table, a long read transaction holding it, then a migration that
needs ACCESS EXCLUSIVE on it. While the migration waits for its lock, every later query on the table queues
behind it; the worst query latency is the stall the application sees."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.pg import BenchServer, libpq_env, yoyo_url
from tasks.engine.connection import Connection, connected
from tasks.engine.environments import Policy
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog

ROWS = 10_000
CLIENTS = 4
RATE = 400  # transactions per second in all: a steady load that leaves the 2 cores room to answer
WARMUP = 1.0  # load before the long transaction starts
BLOCKER_SECONDS = 4.0  # how long the long read transaction holds the table
MIGRATION_DELAY = 0.5  # the migration starts this long after the long transaction
COOL_DOWN = 2.0
MIGRATION = "ALTER TABLE accounts ADD COLUMN note text;\n"
QUERY = f"\\set id random(1, {ROWS})\nSELECT balance FROM accounts WHERE id = :id;\n"


@dataclass
class Stall:
    scenario: str
    worst_ms: float
    p99_ms: float
    transactions: int
    migration_seconds: float | None
    note: str = ""


def _prepare(server: BenchServer) -> Connection:
    connection = server.fresh_database("stall")
    with connected(connection) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute(f"INSERT INTO accounts SELECT g, 0 FROM generate_series(1, {ROWS}) g")
        conn.execute("ANALYZE accounts")
    return connection


def _hold_table(connection: Connection, seconds: float) -> None:
    """A long read transaction: a report, a backup, an idle-in-transaction session."""
    with connected(connection, autocommit=False) as conn:
        conn.execute("SELECT count(*) FROM accounts").fetchone()
        time.sleep(seconds)
        conn.rollback()


def _latencies(directory: Path) -> list[float]:
    """Per-transaction latencies (ms) from pgbench's -l logs: `client tx time_us script epoch epoch_us [lag]`."""
    values = []
    for log in directory.glob("pgbench_log*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                values.append(int(fields[2]) / 1000)
    return values


def scenario(server: BenchServer, name: str, migrate: Callable[[Connection], None] | None) -> Stall:
    connection = _prepare(server)
    duration = WARMUP + BLOCKER_SECONDS + COOL_DOWN
    with tempfile.TemporaryDirectory(prefix="rdsm-pgbench-") as logs:
        script = Path(logs) / "query.sql"
        script.write_text(QUERY)
        pgbench = subprocess.Popen(
            [str(server.bindir / "pgbench"), "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(int(duration + 0.999)),
             "-R", str(RATE), "-l", "-f", str(script)],
            cwd=logs, env=libpq_env(connection), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(WARMUP)
        blocker = threading.Thread(target=_hold_table, args=(connection, BLOCKER_SECONDS))
        blocker.start()
        time.sleep(MIGRATION_DELAY)
        migration_seconds = None
        if migrate is not None:
            started = time.monotonic()
            migrate(connection)
            migration_seconds = time.monotonic() - started
        blocker.join()
        _, errors = pgbench.communicate(timeout=120)
        if pgbench.returncode != 0:
            raise RuntimeError(f"pgbench failed: {errors.strip()[-500:]}")
        latencies = sorted(_latencies(Path(logs)))
    server.drop(connection)
    if not latencies:
        raise RuntimeError("pgbench logged no transactions")
    return Stall(name, latencies[-1], latencies[int(len(latencies) * 0.99)], len(latencies), migration_seconds)


def _yoyo(base: Path) -> Callable[[Connection], None]:
    directory = base / "stall-yoyo" / "migrations"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "0001.add-note.sql").write_text(MIGRATION)

    def apply(connection: Connection) -> None:
        subprocess.run([str(Path(sys.executable).parent / "yoyo"), "apply", "--batch", "--no-config-file",
                        "--database", yoyo_url(connection), str(directory)], check=True, capture_output=True)

    return apply


def _ours(base: Path, policy: Policy) -> Callable[[Connection], None]:
    project = base / f"stall-ours-{policy.lock_timeout_ms}"
    (project / "migrations").mkdir(parents=True, exist_ok=True)
    (project / "migrations" / "0001.add-note.sql").write_text(MIGRATION)
    catalog = read_catalog(project / "migrations", project)

    def apply(connection: Connection) -> None:
        apply_pending(connection, catalog, policy, git_sha="bench")

    return apply


def policy_with(lock_timeout_ms: int) -> Policy:
    # Retries spaced so that they outlast the long transaction; each attempt waits at most lock_timeout.
    return Policy(lock_timeout_ms=lock_timeout_ms, lock_timeout_retries=10, lock_retry_base_delay_seconds=0.5,
                  lock_retry_max_delay_seconds=2.0)


def run(server: BenchServer, base: Path, lock_timeouts_ms: tuple[int, ...],
        log: Callable[[str], None]) -> list[Stall]:
    results = [scenario(server, "no migration (the long transaction alone)", None)]
    log(f"  baseline: worst {results[-1].worst_ms:.0f} ms")
    results.append(scenario(server, "yoyo apply (no lock_timeout)", _yoyo(base)))
    log(f"  yoyo: worst {results[-1].worst_ms:.0f} ms")
    for lock_timeout in lock_timeouts_ms:
        results.append(scenario(server, f"rds-migrations, lock_timeout {lock_timeout} ms", _ours(base, policy_with(
            lock_timeout))))
        log(f"  rds-migrations ({lock_timeout} ms): worst {results[-1].worst_ms:.0f} ms")
    return results
