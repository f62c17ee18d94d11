"""A person's terminal (issue 15, item 1): `rds-migrations run --database-url URL` as a new user types it, on
this repository's own migrations, with nothing pending and with one migration pending; both ways a command
line run can go: straight through the engine (no Prefect API configured: the default) and as a Prefect flow
(`--prefect`: Prefect's temporary API server, started and stopped by the command).

Each round takes a fresh database, brings it to one below the head with `run --target` (not timed), then times
`run` (one pending: the last migration) and `run` again (nothing pending). Wall time from the process's start
to its exit; the engine path 3 rounds, the Prefect path 2 (about 10 s a run). The exit code must be 0 and the
database must hold every migration afterwards.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.pg import BenchServer
from bench.realistic import PROJECT, Cli, applied_count, cli_env

NO_OP_SECONDS = 2.0  # the targets (issue 15)
ONE_PENDING_SECONDS = 2.5
ROUNDS = {"engine": 3, "prefect": 2}


def prepare_project(base: Path) -> tuple[Path, list[str]]:
    """A copy of this repository's migrations and environments: what a new user runs the tool on."""
    project = base / "local"
    shutil.copytree(PROJECT / "migrations", project / "migrations")
    (project / "deployments").mkdir(parents=True)
    shutil.copyfile(PROJECT / "deployments" / "environments.toml", project / "deployments" / "environments.toml")
    ids = sorted(p.name.removesuffix(".sql") for p in (project / "migrations").glob("*.sql")
                 if not p.name.endswith(".rollback.sql"))
    return project, ids


def run(server: BenchServer, base: Path, env: dict[str, str], log: Callable[[str], None]) -> dict:
    started = time.monotonic()
    project, ids = prepare_project(base)
    cli = Cli(project, cli_env(base, env))
    warm = server.fresh_database("local_warm")  # the first process compiles bytecode: not measured
    cli(warm, "--dry-run")
    server.drop(warm)
    times: dict[str, dict[str, list[float]]] = {}
    for way, rounds in ROUNDS.items():
        extra = ("--prefect",) if way == "prefect" else ()
        found = times.setdefault(way, {"one_pending": [], "no_op": []})
        for _ in range(rounds):
            connection = server.fresh_database(f"local_{way}")
            cli(connection, "--target", ids[-2].split(".")[0])
            seconds, _ = cli(connection, *extra)
            found["one_pending"].append(seconds)
            seconds, _ = cli(connection, *extra)
            found["no_op"].append(seconds)
            if applied_count(connection) != len(ids):
                raise RuntimeError(f"the {way} runs left {applied_count(connection)} of {len(ids)} migrations applied")
            server.drop(connection)
        log(f"  {way:8} one pending median {statistics.median(found['one_pending']):5.2f} s, "
            f"nothing pending median {statistics.median(found['no_op']):5.2f} s")
    return {"migrations": len(ids), "times": times, "rounds": ROUNDS, "section_seconds": time.monotonic() - started,
            "targets": {"no_op_seconds": NO_OP_SECONDS, "one_pending_seconds": ONE_PENDING_SECONDS}}


def render(results: dict) -> str:
    mark = {True: "met", False: "**missed**"}
    engine, prefect = results["times"]["engine"], results["times"]["prefect"]
    targets = results["targets"]
    rows = ["| `rds-migrations run --database-url URL` | engine path (default) | `--prefect` (temporary server) | "
            "engine ÷ Prefect | target (engine path) | |", "|---|---:|---:|---:|---|---|"]
    for key, label, target in (("no_op", "nothing pending", targets["no_op_seconds"]),
                               ("one_pending", "one migration pending", targets["one_pending_seconds"])):
        ours, theirs = statistics.median(engine[key]), statistics.median(prefect[key])
        rows.append(f"| {label} (median) | {ours:.2f} s | {theirs:.2f} s | {ours / theirs:.2f} | ≤ {target:.1f} s | "
                    f"{mark[ours <= target]} |")
    runs = "; ".join(f"{way} {key.replace('_', ' ')}: " + ", ".join(f"{s:.2f}" for s in values)
                     for way, found in results["times"].items() for key, values in found.items())
    return "\n".join(rows) + (f"\n\nThis repository's {results['migrations']} migrations; each run a new process "
                              f"from start to exit, exit code 0. Runs (s): {runs}.")
