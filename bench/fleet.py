"""A fleet of databases in one run (issue 13), on the bench's PostgreSQL (password auth, like RDS).

- 50 fresh databases × 20 pending generated migrations (a table and an index each), the engine's fleet run
  (`migrate_fleet` with `DirectFleetSteps`: validate and rehearse once, then per target fetch-secret, plan,
  migrate) with concurrency 8, against the same work done one database after another (concurrency 1). The
  target: wall time ≤ 0.5 × serial. ROUNDS of each, interleaved (which goes first alternates), on fresh
  databases each time; the ratio of the medians (one pair alone swung from 0.36 to 0.61 on this machine).
- Per-target overhead: the serial fleet run's wall time per target minus the bare apply (`apply_pending`
  alone, the same 20 migrations on another 50 fresh databases, one after another), per target.
- A fleet run where every target is at head (the concurrency-8 fleet run again): wall time per target; the
  target is ≤ 0.2 s.

Each set of databases is fresh; the rehearsal cache is emptied before each fleet run, so each rehearses as a
first run does. No snapshot (`snapshot.kind = "none"`: the migrate path, not pg_dump, is measured).

    uv run python -m bench.fleet          # alone; or `python -m bench --only fleet` once registered
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import generate
from bench.pg import BenchServer
from bench.realistic import database_url, drop_rehearsal_cache
from tasks.engine.connection import Connection
from tasks.engine.environments import Environment, Policy
from tasks.engine.fleet.targets import url_fleet
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.runs.fleet import DirectFleetSteps, migrate_fleet
from tasks.engine.runs.steps import DirectSteps

TARGETS = 50
MIGRATIONS = 20
CONCURRENCY = 8
ROUNDS = 3
# The targets (issue 13).
PARALLEL_RATIO = 0.5
AT_HEAD_SECONDS_PER_TARGET = 0.2
POLICY = Policy(lock_timeout_ms=2000, statement_timeout_ms=60_000, migration_lock_wait_seconds=30)


def template() -> Environment:
    return Environment.model_validate(
        {
            "name": "bench-fleet",
            "tier": "staging",
            "credentials": {"kind": "url_env", "variable": "DATABASE_URL"},
            "snapshot": {"kind": "none"},
            "notify": {"kind": "console", "on_noop": False},
            "rehearsal": {"kind": "target_server"},
            "policy": POLICY.model_dump(),
        }
    )


def fresh_fleet(server: BenchServer, label: str, concurrency: int) -> tuple[Environment, list[Connection]]:
    """TARGETS fresh databases, their URLs in environment variables, as a URL fleet; and the databases."""
    variables, databases = [], []
    for n in range(1, TARGETS + 1):
        variable = f"BENCH_FLEET_{label.upper()}_{n}"
        databases.append(server.fresh_database(f"fleet_{label}"))
        os.environ[variable] = database_url(databases[-1])
        variables.append(variable)
    return url_fleet(template(), variables, concurrency), databases


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def run(server: BenchServer, base: Path, log: Callable[[str], None]) -> dict:
    project = base / "fleet-project"
    generate.write_migrations(project / "migrations", MIGRATIONS)
    quiet = logging.getLogger("bench.fleet")
    quiet.setLevel(logging.WARNING)
    steps = DirectFleetSteps(DirectSteps(log=quiet))

    def fleet_run(environment: Environment) -> float:
        return timed(lambda: migrate_fleet(environment, steps, git_sha="local", project_root=project))

    catalog = read_catalog(Path("migrations"), project)
    apply_pending(server.fresh_database("fleet_warm"), catalog, POLICY, git_sha="local")  # imports, caches
    times: dict[int, list[float]] = {1: [], CONCURRENCY: []}
    at_head = 0.0
    for round_number in range(ROUNDS):
        for concurrency in ((1, CONCURRENCY) if round_number % 2 == 0 else (CONCURRENCY, 1)):
            fleet, databases = fresh_fleet(server, f"c{concurrency}", concurrency)
            drop_rehearsal_cache(server)
            times[concurrency].append(fleet_run(fleet))
            log(f"  fleet run, concurrency {concurrency}: {times[concurrency][-1]:.2f} s")
            if concurrency == CONCURRENCY and round_number == ROUNDS - 1:
                at_head = fleet_run(fleet)
                log(f"  fleet run, every target at head: {at_head:.2f} s ({at_head / TARGETS:.3f} s per target)")
            for database in databases:
                server.drop(database)
    serial, parallel = statistics.median(times[1]), statistics.median(times[CONCURRENCY])
    log(f"  medians: concurrency 1 {serial:.2f} s, concurrency {CONCURRENCY} {parallel:.2f} s "
        f"(ratio {parallel / serial:.2f})")
    bare_databases = [server.fresh_database("fleet_bare") for _ in range(TARGETS)]
    bare = timed(lambda: [apply_pending(d, catalog, POLICY, git_sha="local") for d in bare_databases])
    log(f"  bare apply, {TARGETS} databases one after another: {bare:.2f} s")
    return {
        "targets": TARGETS,
        "migrations": MIGRATIONS,
        "concurrency": CONCURRENCY,
        "cpus": os.cpu_count(),
        "bare_apply_seconds": bare,
        "serial_seconds": serial,
        "parallel_seconds": parallel,
        "serial_runs": times[1],
        "parallel_runs": times[CONCURRENCY],
        "ratio": parallel / serial,
        "ratio_target": PARALLEL_RATIO,
        "overhead_per_target_seconds": (serial - bare) / TARGETS,
        "at_head_seconds": at_head,
        "at_head_per_target_seconds": at_head / TARGETS,
        "at_head_target": AT_HEAD_SECONDS_PER_TARGET,
    }


def render(results: dict) -> str:
    """The fleet's figures against the issue's targets."""
    r = results
    mark = {True: "met", False: "**missed**"}
    return "\n".join([
        "| figure | measured | target | |", "|---|---|---|---|",
        f"| {r['targets']} databases × {r['migrations']} migrations, concurrency {r['concurrency']} | "
        f"{r['parallel_seconds']:.2f} s vs {r['serial_seconds']:.2f} s one after another (medians of "
        f"{len(r.get('parallel_runs', [0]))}): ratio {r['ratio']:.2f} | "
        f"≤ {r['ratio_target']} | {mark[r['ratio'] <= r['ratio_target']]} |",
        f"| overhead per target over a bare apply | {r['overhead_per_target_seconds'] * 1000:.0f} ms "
        f"(bare apply of all {r['targets']}: {r['bare_apply_seconds']:.2f} s) | – | |",
        f"| a fleet run with every target at head | {r['at_head_seconds']:.2f} s: "
        f"{r['at_head_per_target_seconds']:.3f} s per target | ≤ {r['at_head_target']} s | "
        f"{mark[r['at_head_per_target_seconds'] <= r['at_head_target']]} |",
    ])


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="rdsm-bench-fleet-"))
    server = BenchServer(base)
    try:
        server.start()
        results = run(server, base, lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    ok = results["ratio"] <= PARALLEL_RATIO and results["at_head_per_target_seconds"] <= AT_HEAD_SECONDS_PER_TARGET
    for key, value in results.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
