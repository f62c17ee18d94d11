"""Apply N generated migrations on a fresh database: our engine, one psql session (the floor), the yoyo CLI
and Knex, interleaved so that a noisy neighbour slows every tool alike.

Beside the floor, a reference that is not a tool: the same psql session sending each migration as ONE
message (`BEGIN\\; ...\\; COMMIT`), as our engine does, without the history rows and the session reset. The
gap between it and the floor is what one message a migration saves; the gap between it and our engine is
what our bookkeeping costs."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import generate, knex
from bench.pg import BenchServer, client_cpu_seconds, libpq_env, server_cpu_seconds, yoyo_url
from tasks.engine.connection import Connection, connected
from tasks.engine.environments import Policy
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog, read_catalog
from tasks.engine.migrations.split import read_text, split_migration

PSQL, OURS, YOYO, KNEX = "psql (floor)", "rds-migrations", "yoyo CLI", "Knex"
PSQL_ONE = "psql, one message a migration"
ALONE = "rds-migrations, one message a migration"  # policy.migrations_per_message = 1 (the default until 12-01)
CANDIDATE = "candidate engine"


@dataclass
class Workload:
    n: int
    project: Path
    directory: Path
    paths: list[Path]
    psql_script: Path
    psql_one_message: Path
    catalog: Catalog | None = None
    catalog_seconds: list[float] = field(default_factory=list)
    knex_directory: Path | None = None


@dataclass
class ApplyResults:
    times: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # wall seconds, one per run
    cpu: dict[tuple[str, int], list[tuple[float, float]]] = field(default_factory=dict)  # (client, server) CPU s
    catalog_seconds: dict[int, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    knex_version: str | None = None


def prepare(base: Path, n: int, with_knex: bool) -> Workload:
    project = base / f"apply-{n}"
    directory = project / "migrations"
    paths = generate.write_migrations(directory, n)
    script = project / "psql.sql"
    # The floor the issue defines: one session, one transaction per migration, nothing else.
    script.write_text("".join(f"BEGIN;\n{p.read_text()}COMMIT;\n" for p in paths))
    one = project / "psql-one-message.sql"
    one.write_text("".join(one_message(p) for p in paths))
    workload = Workload(n, project, directory, paths, script, one)
    if with_knex:
        workload.knex_directory = knex.write_migrations(paths, project / "knex")
    return workload


def one_message(path: Path) -> str:
    """A migration as psql sends it in ONE message: its statements joined by `\\;` (the newline first: a
    statement may end in a -- comment)."""
    _, statements = split_migration(read_text(path))
    return "\n\\;\n".join(["BEGIN", *statements, "COMMIT"]) + "\n;\n"


def run_psql(workload: Workload, connection: Connection, script: Path | None = None) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script or workload.psql_script)],
                   env=libpq_env(connection), check=True, capture_output=True)


def read_files(workload: Workload) -> None:
    """What the validate step does before the migrate step: read the files into a catalog (timed apart)."""
    started = time.monotonic()
    catalog = read_catalog(workload.directory, workload.project)
    workload.catalog_seconds.append(time.monotonic() - started)
    workload.catalog = catalog


def run_yoyo(workload: Workload, connection: Connection) -> None:
    yoyo = Path(sys.executable).parent / "yoyo"
    subprocess.run([str(yoyo), "apply", "--batch", "--no-config-file", "--database", yoyo_url(connection),
                    str(workload.directory)], check=True, capture_output=True, timeout=900)


def count_tables(connection: Connection) -> int:
    with connected(connection) as conn:
        return conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'bench\\_t%'").fetchone()[0]


def run(server: BenchServer, base: Path, sizes: list[int], repeats: dict[int, dict[str, int]],
        log: Callable[[str], None], candidate: tuple[str, Callable[..., object]] | None = None) -> ApplyResults:
    """Every tool on every N, interleaved. `candidate`: (name, an `apply_pending` to compare with ours)."""
    results = ApplyResults()
    knex_home, why = knex.install()
    if knex_home is None:
        results.skipped[KNEX] = why
        log(f"  Knex skipped: {why}")
    else:
        results.knex_version = knex.version(knex_home)
    policy = Policy()
    alone = policy.model_copy(update={"migrations_per_message": 1})

    for n in sizes:
        workload = prepare(base, n, knex_home is not None)
        # Read once up front: the engine's timed run is the migrate step alone, as the flow runs it.
        read_files(workload)
        tools: list[tuple[str, Callable[[Connection], None]]] = [
            (PSQL, lambda c, w=workload: run_psql(w, c)),
            (PSQL_ONE, lambda c, w=workload: run_psql(w, c, w.psql_one_message)),
            (OURS, lambda c, w=workload: apply_pending(c, w.catalog, policy, git_sha="bench")),
            (ALONE, lambda c, w=workload: apply_pending(c, w.catalog, alone, git_sha="bench")),
            (YOYO, lambda c, w=workload: run_yoyo(w, c)),
        ]
        if candidate is not None:
            candidate_name, candidate_apply = candidate
            tools.append((candidate_name,
                          lambda c, w=workload, a=candidate_apply: a(c, w.catalog, policy, git_sha="bench")))
        if knex_home is not None and workload.knex_directory is not None:
            tools.append((KNEX, lambda c, w=workload: knex.run(knex_home, w.knex_directory, c)))
        rounds = max(repeats[n].values())
        for round_number in range(rounds):
            # Rotate the order each round: no tool always runs first (cold) or last.
            order = tools[round_number % len(tools):] + tools[: round_number % len(tools)]
            for name, apply in order:
                if round_number >= repeats[n].get(name, repeats[n]["default"]):
                    continue
                connection = server.fresh_database("apply")
                client, backend, started = client_cpu_seconds(), server_cpu_seconds(server), time.monotonic()
                apply(connection)
                elapsed = time.monotonic() - started
                cpu = (client_cpu_seconds() - client, server_cpu_seconds(server) - backend)
                applied = count_tables(connection)  # every tool is checked the same way
                server.drop(connection)
                if applied != n:
                    raise RuntimeError(f"{name} applied {applied} of {n} migrations")
                results.times.setdefault((name, n), []).append(elapsed)
                results.cpu.setdefault((name, n), []).append(cpu)
                log(f"  N={n:>5} {name:<18} {elapsed:7.2f} s  (CPU: client {cpu[0]:.2f} s, server {cpu[1]:.2f} s)")
        results.catalog_seconds[n] = statistics.median(workload.catalog_seconds)
    return results
