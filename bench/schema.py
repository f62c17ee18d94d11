"""Adoption and day-two figures (issues 11 and 15), on the bench's PostgreSQL, through the CLI as a user types it:

- `rds-migrations drift` on a 300-table database (a table and an index each), its reference remembered by the
  run that migrated it (the usual case), and again with the reference forgotten (rebuilt on a scratch database:
  what the first check after an upgrade costs). Target: ≤ 2 s.
- The rehearsal on a copy of the target's schema (`rehearsal.start = "target_schema"`, no cache) with one
  pending migration on that database: the engine's rehearse-and-plan step, in process, and the whole
  `rds-migrations run` around it. Target: ≤ 3 s.
- Peak client memory applying 10,000 migrations (issue 15: ≤ 150 MiB): `apply_pending` in a fresh process,
  its peak resident set size (VmHWM) as the kernel counts it.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from bench import generate
from bench.pg import BenchServer
from bench.realistic import CLI, cli_env, database_url
from tasks.engine.connection import Connection, connected

TABLES = 300
ROUNDS = 5
MEMORY_MIGRATIONS = 10_000
DRIFT_SECONDS = 2.0
TARGET_SCHEMA_REHEARSAL_SECONDS = 3.0
MEMORY_MIB = 150.0
ENVIRONMENT = """
[environments.bench]
tier = "staging"
credentials = { kind = "url_env", variable = "DATABASE_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
rehearsal = { kind = "target_server", start = "target_schema", cache = false }
policy = { snapshot_required = false, lint_blocks_on = "error", drift = "warn" }
"""


def cli(project: Path, env: dict[str, str], connection: Connection, *arguments: str) -> float:
    started = time.monotonic()
    done = subprocess.run([str(CLI), *arguments, "--env", "bench", "--migrations", "migrations"], cwd=project,
                          env={**env, "DATABASE_URL": database_url(connection)}, capture_output=True, text=True,
                          timeout=900)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"rds-migrations {' '.join(arguments)} exited {done.returncode}:\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    return elapsed


def rehearse_in_process(project: Path, connection: Connection) -> float:
    """The rehearse-and-plan step alone: validate first (not timed), then the step as the pipeline calls it."""
    from tasks.engine.environments import load_environment
    from tasks.engine.migrations.validation import rehearse_and_plan, validate

    environment = load_environment("bench", project / "deployments" / "environments.toml")
    catalog, report = validate(project / "migrations", project, environment.policy)
    started = time.monotonic()
    planned = rehearse_and_plan(environment, catalog, report, connection, None)
    elapsed = time.monotonic() - started
    if len(planned.pending) != 1:
        raise RuntimeError(f"expected one pending migration, the plan has {len(planned.pending)}")
    return elapsed


def drift_and_rehearsal(server: BenchServer, base: Path, env: dict[str, str], log: Callable[[str], None]) -> dict:
    project = base / "schema"
    (project / "deployments").mkdir(parents=True)
    (project / "deployments" / "environments.toml").write_text(ENVIRONMENT)
    generate.write_migrations(project / "migrations", TABLES)
    env = {**env, "RDS_MIGRATIONS_ENVIRONMENTS": str(project / "deployments" / "environments.toml")}
    connection = server.fresh_database("schema")
    first_run = cli(project, env, connection, "run")
    with connected(connection) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                              "AND tablename LIKE 'bench_t%'").fetchone()[0]
    log(f"  {tables} tables migrated in {first_run:.2f} s (the run remembers the schema it made)")
    remembered = [cli(project, env, connection, "drift") for _ in range(ROUNDS)]
    log(f"  drift, reference remembered      median {statistics.median(remembered):6.2f} s")
    # The rehearsal while the reference is remembered, as after every clean run: the step's drift check (the
    # environment's drift = "warn") then reads it instead of rebuilding it on a scratch database.
    generate.write_migrations(project / "migrations", 1, start=TABLES + 1)
    engine = [rehearse_in_process(project, connection) for _ in range(ROUNDS)]
    log(f"  target-schema rehearsal, 1 on {TABLES}   median {statistics.median(engine):6.2f} s (engine step)")
    whole = cli(project, env, connection, "run", "--dry-run")
    log(f"  run --dry-run around it          {whole:6.2f} s")
    rebuilt = []
    for _ in range(3):  # last: each forgets the remembered reference
        with connected(connection) as conn:
            conn.execute("DELETE FROM _rds_migrations_schema")
        rebuilt.append(cli(project, env, connection, "drift"))
    log(f"  drift, reference rebuilt         median {statistics.median(rebuilt):6.2f} s")
    server.drop(connection)
    return {"tables": tables, "first_run_seconds": first_run, "drift_remembered_seconds": remembered,
            "drift_rebuilt_seconds": rebuilt, "target_schema_rehearsal_seconds": engine,
            "dry_run_seconds": whole, "drift_target_seconds": DRIFT_SECONDS,
            "rehearsal_target_seconds": TARGET_SCHEMA_REHEARSAL_SECONDS}


APPLY_IN_A_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    def peak_kib():  # VmHWM: this process's own peak (getrusage's maxrss keeps the forking parent's after exec)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise SystemExit("no VmHWM in /proc/self/status")

    from tasks.engine.connection import connection_from_url
    from tasks.engine.environments import Policy
    from tasks.engine.migrations.apply import apply_pending
    from tasks.engine.migrations.catalog import read_catalog
    before = peak_kib()
    catalog = read_catalog(Path(sys.argv[1]), Path(sys.argv[1]).parent)
    read = peak_kib()
    started = time.monotonic()
    report = apply_pending(connection_from_url(sys.argv[2], "bench"), catalog, Policy(statement_timeout_ms=600_000))
    print(len(report.applied), time.monotonic() - started, before, read, peak_kib())
""")


def apply_memory(server: BenchServer, base: Path, log: Callable[[str], None]) -> dict:
    """Peak resident memory of a process reading and applying 10,000 migrations (its VmHWM, in KiB)."""
    directory = base / "memory" / "migrations"
    generate.write_migrations(directory, MEMORY_MIGRATIONS)
    connection = server.fresh_database("memory")
    done = subprocess.run([sys.executable, "-c", APPLY_IN_A_CHILD, str(directory), database_url(connection)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"applying {MEMORY_MIGRATIONS} migrations failed:\n{done.stderr[-3000:]}")
    applied, seconds, at_start, after_read, peak = done.stdout.split()
    server.drop(connection)
    result = {"migrations": int(applied), "apply_seconds": float(seconds), "peak_mib": int(peak) / 1024,
              "after_imports_mib": int(at_start) / 1024, "after_read_mib": int(after_read) / 1024,
              "target_mib": MEMORY_MIB}
    log(f"  {result['migrations']:,} migrations applied in {result['apply_seconds']:.1f} s; peak memory "
        f"{result['peak_mib']:.0f} MiB (imports {result['after_imports_mib']:.0f}, catalog read "
        f"{result['after_read_mib']:.0f})")
    return result


def run(server: BenchServer, base: Path, env: dict[str, str], log: Callable[[str], None]) -> dict:
    return {"drift": drift_and_rehearsal(server, base, cli_env(base, env), log),
            "memory": apply_memory(server, base, log)}


def render(results: dict) -> str:
    """Drift, the target-schema rehearsal and apply's memory against their targets (medians)."""
    import statistics as stats

    drift, memory = results["drift"], results["memory"]
    mark = {True: "met", False: "**missed**"}
    remembered = stats.median(drift["drift_remembered_seconds"])
    rebuilt = stats.median(drift["drift_rebuilt_seconds"])
    rehearsal = stats.median(drift["target_schema_rehearsal_seconds"])
    return "\n".join([
        "| figure | measured | target | |", "|---|---|---|---|",
        f"| `drift` on {drift['tables']} tables, reference remembered (CLI, start to exit) | {remembered:.2f} s | "
        f"≤ {drift['drift_target_seconds']:g} s | {mark[remembered <= drift['drift_target_seconds']]} |",
        f"| `drift` on {drift['tables']} tables, reference rebuilt on a scratch database | {rebuilt:.2f} s | – | |",
        f"| rehearsal on a copy of the target's schema, 1 pending on {drift['tables']} tables (engine step) | "
        f"{rehearsal:.2f} s | ≤ {drift['rehearsal_target_seconds']:g} s | "
        f"{mark[rehearsal <= drift['rehearsal_target_seconds']]} |",
        f"| `run --dry-run` around it (CLI, start to exit) | {drift['dry_run_seconds']:.2f} s | – | |",
        f"| peak client memory applying {memory['migrations']:,} migrations | {memory['peak_mib']:.0f} MiB "
        f"(after imports {memory['after_imports_mib']:.0f}, catalog read {memory['after_read_mib']:.0f}; "
        f"applied in {memory['apply_seconds']:.1f} s) | ≤ {memory['target_mib']:g} MiB | "
        f"{mark[memory['peak_mib'] <= memory['target_mib']]} |",
    ])
