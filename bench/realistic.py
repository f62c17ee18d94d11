"""A realistic application's history and large inputs (issue 15), on the bench's PostgreSQL.

- The psql floor for the 300-migration corpus (bench/corpus.py): one `psql` session, each transactional file
  in `BEGIN; ... COMMIT;`, each `-- transactional: false` file as it is, nothing recorded.
- The first `rds-migrations run` on an empty database, end to end: a new process of the CLI, as a user types
  it (`rds-migrations run --migrations migrations`, the database named by DATABASE_URL, which is what
  `--database-url` sets), from a project directory holding the migrations and deployments/environments.toml.
  Wall time from the process's start to its exit, median of 5 fresh databases, interleaved with the floor;
  CPU time (the CLI's process and the server's) beside it.
- The same command after one new migration is added on top (a table with a rollback file), on each of those
  databases: the incremental run a merge triggers.
- Where the first run's time goes: the phases of the measured runs, from the timestamps of the CLI's own log
  lines (start + validation, credentials + plan + rehearsal, the migrate step, notification + exit); beside
  them, static checks and lint apart (in process) and the time a new Python process takes to import the CLI.
- Large inputs: reading (`read_catalog`) a directory holding a 10 MB backfill migration of INSERTs, and the
  static checks + lint (`check_migrations`) of 5,000 files.

The rehearsal cache (databases `rdsm_rc_*` on the target's server) is dropped before every first run and dry
run, so each starts as a first run does on a new server; the incremental run keeps what its first run cached,
as a second run against the same server would.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from urllib.parse import quote

from psycopg import sql

from bench import corpus
from bench.pg import BenchServer, client_cpu_seconds, libpq_env, server_cpu_seconds
from tasks.engine.connection import Connection, connected
from tasks.engine.environments import Policy

PROJECT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "rds-migrations"
COUNT = 300
ROUNDS = 5
BACKFILL_MEGABYTES = 10
MANY_FILES = 5000
# The targets (issue 15).
FIRST_RUN_FLOOR_RATIO = 3.0
INCREMENTAL_SECONDS = 3.0
BACKFILL_READ_SECONDS = 2.0
MANY_VALIDATION_SECONDS = 5.0
CLI_TIMEOUT_SECONDS = 900


def database_url(connection: Connection) -> str:
    password = quote(connection.password.get_secret_value(), safe="")
    return f"postgresql://{connection.user}:{password}@{connection.host}:{connection.port}/{connection.dbname}"


def drop_rehearsal_cache(server: BenchServer) -> int:
    """Drop the cached rehearsal databases on the server (a first run on a new server finds none)."""
    with connected(server.connection()) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'rdsm\\_rc\\_%' OR datname LIKE 'rdsm\\_rehearsal\\_%'"
        ).fetchall()]
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return len(names)


def applied_count(connection: Connection) -> int:
    with connected(connection) as conn:
        exists = conn.execute("SELECT to_regclass('_yoyo_migration') IS NOT NULL").fetchone()[0]
        return conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()[0] if exists else 0


def psql_script(paths: list[Path], script: Path) -> Path:
    """The floor: one session, a transaction per transactional file, the others as they are."""
    parts = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        parts.append(text if text.startswith("-- transactional: false") else f"BEGIN;\n{text}COMMIT;\n")
    script.write_text("".join(parts), encoding="utf-8")
    return script


def run_psql(script: Path, connection: Connection) -> float:
    started = time.monotonic()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script)], env=libpq_env(connection),
                   check=True, capture_output=True)
    return time.monotonic() - started


# The CLI's log lines on stderr start with a wall-clock time (HH:MM:SS.mmm): where a run's time went, read from
# the very runs measured. Each phase ends at the first line holding its marker.
LOG_TIME = re.compile(r"^(\d{2}:\d{2}:\d{2}\.\d{3}) \|")
PHASES = (  # (phase, the log line that ends it)
    ("start, static checks and lint", "Static checks and lint"),
    ("credentials, plan and rehearsal", "Plan:"),
    ("migrate step", "Applied "),
    ("notification and exit", None),  # ends when the process exits
)


def phases(stderr: str, started: float, ended: float) -> dict[str, float] | None:
    """Seconds per phase of a CLI run, from its log's timestamps; None when a marker is missing."""
    seen: dict[str, float] = {}
    for line in stderr.splitlines():
        match = LOG_TIME.match(line)
        if not match:
            continue
        moment = datetime.combine(date.today(), clock.fromisoformat(match.group(1)))
        stamp = moment.timestamp()
        if stamp < started - 3600:  # the run crossed midnight
            stamp = (moment + timedelta(days=1)).timestamp()
        for _, marker in PHASES:
            if marker and marker in line and marker not in seen:
                seen[marker] = stamp
    out, previous = {}, started
    for name, marker in PHASES:
        end = ended if marker is None else seen.get(marker)
        if end is None:
            return None
        out[name] = max(end - previous, 0.0)
        previous = end
    return out


class Cli:
    """`rds-migrations run` in a new process, from the project directory, with the database in DATABASE_URL
    (what `--database-url` sets: the password stays off the process list)."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.project = project
        self.env = env

    def __call__(self, connection: Connection, *arguments: str) -> tuple[float, dict[str, float] | None]:
        env = {**self.env, "DATABASE_URL": database_url(connection)}
        started_at = time.time()
        started = time.monotonic()
        done = subprocess.run([str(CLI), "run", "--migrations", "migrations", *arguments], cwd=self.project, env=env,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS)
        elapsed = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"rds-migrations run {' '.join(arguments)} exited {done.returncode}:\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
        return elapsed, phases(done.stderr, started_at, started_at + elapsed)


def cli_home(base: Path) -> Path:
    """The CLI runs' RDS_MIGRATIONS_HOME: where a dry run's rehearsal starts the embedded server."""
    return base / "rds-migrations-home"


def stop_cli_server(base: Path) -> None:
    """Stop and delete the embedded server the CLI runs may have started (its data may live under /tmp)."""
    from tasks.engine.embedded import LocalServer

    LocalServer(cli_home(base) / "postgres").destroy()


def cli_env(base: Path, env: dict[str, str]) -> dict[str, str]:
    """A user's shell on a laptop: no Prefect API configured; Prefect's home and ours in the bench's directory."""
    env = {key: value for key, value in env.items()
           if key not in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILES_PATH", "DATABASE_URL",
                          "RDS_MIGRATIONS_ENVIRONMENTS")}
    (base / "prefect-home").mkdir(parents=True, exist_ok=True)
    env.update(PREFECT_HOME=str(base / "prefect-home"), RDS_MIGRATIONS_HOME=str(cli_home(base)),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def prepare_project(base: Path) -> tuple[Path, list[Path], float]:
    project = base / "realistic"
    (project / "deployments").mkdir(parents=True)
    shutil.copyfile(PROJECT / "deployments" / "environments.toml", project / "deployments" / "environments.toml")
    started = time.monotonic()
    paths = corpus.write_corpus(project / "migrations", COUNT)
    return project, paths, time.monotonic() - started


# The same environment as the shipped `database-url`, with the rehearsal turned off, as a user may say outright:
# what a first run costs without it (for information: the default keeps it).
UNREHEARSED_ENVIRONMENTS = """[environments.database-url]
tier = "staging"
credentials = { kind = "url_env", variable = "DATABASE_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
rehearsal = { kind = "none" }
policy = { snapshot_required = false, rehearsal_required = false, lint_blocks_on = "error" }
"""


def prepare_unrehearsed(base: Path, paths: list[Path]) -> Path:
    """A second project with the same migrations, whose `database-url` environment does not rehearse."""
    project = base / "realistic-unrehearsed"
    (project / "deployments").mkdir(parents=True)
    (project / "deployments" / "environments.toml").write_text(UNREHEARSED_ENVIRONMENTS, encoding="utf-8")
    (project / "migrations").mkdir()
    for path in paths:
        shutil.copyfile(path, project / "migrations" / path.name)
    return project


def describe_corpus(directory: Path, paths: list[Path]) -> dict:
    files = sorted(directory.iterdir())
    return {
        "seed": corpus.SEED,
        "migrations": len(paths),
        "files": len(files),
        "rollback_files": sum(1 for f in files if f.name.endswith(".rollback.sql")),
        "non_transactional": sum(1 for p in paths if p.read_text(encoding="utf-8").startswith(
            "-- transactional: false")),
        "bytes": sum(f.stat().st_size for f in files),
        "kinds": corpus.kinds(len(paths)),
    }


def first_and_incremental(server: BenchServer, project: Path, paths: list[Path], cli: Cli,
                          log: Callable[[str], None], unrehearsed: Cli | None = None) -> dict:
    """Rounds of: the psql floor, the CLI's first run then one new migration on top, and (with `unrehearsed`)
    a first run that does not rehearse; in a rotating order."""
    directory = project / "migrations"
    floor_script = psql_script(paths, project / "floor.sql")
    times: dict[str, list] = {"floor": [], "first_run": [], "incremental": [], "incremental_floor": [],
                              "first_run_unrehearsed": []}
    cpu: dict[str, list[tuple[float, float]]] = {"floor": [], "first_run": []}  # (client, server) CPU seconds
    first_phases: list[dict[str, float] | None] = []
    incremental_phases: list[dict[str, float] | None] = []
    new_migration = None

    def floor() -> None:
        connection = server.fresh_database("real_psql")
        client, backend = client_cpu_seconds(), server_cpu_seconds(server)
        times["floor"].append(run_psql(floor_script, connection))
        cpu["floor"].append((client_cpu_seconds() - client, server_cpu_seconds(server) - backend))
        log(f"  psql floor, {COUNT} migrations                 {times['floor'][-1]:7.2f} s")
        server.drop(connection)

    def ours() -> None:
        nonlocal new_migration
        drop_rehearsal_cache(server)
        connection = server.fresh_database("real_cli")
        client, backend = client_cpu_seconds(), server_cpu_seconds(server)
        seconds, split = cli(connection)
        cpu["first_run"].append((client_cpu_seconds() - client, server_cpu_seconds(server) - backend))
        times["first_run"].append(seconds)
        first_phases.append(split)
        if applied_count(connection) != COUNT:
            raise RuntimeError(f"the first run applied {applied_count(connection)} of {COUNT} migrations")
        log(f"  first run, {COUNT} migrations                  {seconds:7.2f} s")
        new = corpus.write_next(directory, COUNT)
        new_migration = new.name
        try:
            seconds, split = cli(connection)
            times["incremental"].append(seconds)
            incremental_phases.append(split)
            if applied_count(connection) != COUNT + 1:
                raise RuntimeError(f"the incremental run left {applied_count(connection)} of {COUNT + 1} applied")
            log(f"  one new on top ({new.stem})  {seconds:7.2f} s")
            if not times["incremental_floor"]:  # psql applying that one file on top of the 300, for reference
                below = server.fresh_database("real_psql_next")
                run_psql(floor_script, below)
                times["incremental_floor"].append(run_psql(psql_script([new], project / "next.sql"), below))
                server.drop(below)
        finally:
            for leftover in directory.glob(f"{COUNT + 1:04d}.*"):
                leftover.unlink()
        server.drop(connection)

    def without_rehearsal() -> None:
        connection = server.fresh_database("real_unrehearsed")
        seconds, _ = unrehearsed(connection)
        if applied_count(connection) != COUNT:
            raise RuntimeError(f"the run without rehearsal applied {applied_count(connection)} of {COUNT}")
        times["first_run_unrehearsed"].append(seconds)
        log(f"  first run, no rehearsal (opt-out)       {seconds:7.2f} s")
        server.drop(connection)

    steps = [floor, ours] + ([without_rehearsal] if unrehearsed is not None else [])
    for round_number in range(ROUNDS):
        for step in steps[round_number % len(steps):] + steps[:round_number % len(steps)]:
            step()
    return {**{f"{k}_seconds": v for k, v in times.items()}, "cpu": cpu, "new_migration": new_migration,
            "first_run_phases": first_phases, "incremental_phases": incremental_phases}


def breakdown(project: Path, cli: Cli, log: Callable[[str], None]) -> dict:
    """What the CLI's log cannot split: a new process's start, static checks apart from lint."""
    from tasks.engine.migrations.validation import check_migrations

    out: dict[str, float] = {}
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import flows.cli, flows.cli_change"], cwd=project, env=cli.env, check=True,
                   capture_output=True)
    out["python_start_seconds"] = time.monotonic() - started
    started = time.monotonic()
    subprocess.run([str(CLI), "--help"], cwd=project, env=cli.env, check=True, capture_output=True)
    out["cli_help_seconds"] = time.monotonic() - started
    uv = shutil.which("uv")
    if uv:  # what `uv run` adds in front of the CLI when a user types `uv run rds-migrations ...` (no sync here)
        started = time.monotonic()
        done = subprocess.run([uv, "run", "--project", str(PROJECT), "--no-sync", "rds-migrations", "--help"],
                              cwd=project, env=cli.env, capture_output=True)
        if done.returncode == 0:
            out["uv_run_help_seconds"] = time.monotonic() - started
    started = time.monotonic()
    _, report = check_migrations(Path("migrations"), project, Policy())
    out["validate_seconds"] = time.monotonic() - started
    out["static_seconds"], out["lint_seconds"] = report.timings["static"], report.timings["lint"]
    if not report.ok:
        problems = report.problems + tuple(map(str, report.findings))
        raise RuntimeError(f"the corpus does not validate: {problems[:5]}")
    log("  in process: static checks {static_seconds:.2f} s, lint {lint_seconds:.2f} s; a new process importing "
        "the CLI {python_start_seconds:.2f} s".format(**out))
    return out


def timed_runs(measure: Callable[[], float], budget: float, runs: int = 3) -> list[float]:
    """Up to `runs` runs; one only when the first is far over budget (the figure is clear, the time is not)."""
    times = [measure()]
    while len(times) < runs and times[0] <= 2 * budget:
        times.append(measure())
    return times


def large_inputs(base: Path, log: Callable[[str], None]) -> dict:
    from tasks.engine.migrations.catalog import read_catalog
    from tasks.engine.migrations.validation import check_migrations

    backfill_project = base / "backfill"
    big = corpus.write_backfill(backfill_project / "migrations", BACKFILL_MEGABYTES)
    found: dict = {}

    def read() -> float:
        started = time.monotonic()
        catalog = read_catalog(Path("migrations"), backfill_project)
        elapsed = time.monotonic() - started
        if catalog.problems:
            raise RuntimeError(f"the backfill does not read: {catalog.problems[:3]}")
        found["statements"] = sum(len(m.statements) for m in catalog.migrations if m.path.name == big.name)
        return elapsed

    backfill = {"bytes": big.stat().st_size, "seconds": timed_runs(read, BACKFILL_READ_SECONDS)}
    backfill["statements"] = found["statements"]
    log(f"  read a {backfill['bytes'] / 1e6:.1f} MB backfill ({backfill['statements']:,} statements) "
        f"{statistics.median(backfill['seconds']):7.2f} s")

    many_project = base / "many"
    paths = corpus.write_many(many_project / "migrations", MANY_FILES)
    reports = []

    def validate() -> float:
        started = time.monotonic()
        _, report = check_migrations(Path("migrations"), many_project, Policy())
        elapsed = time.monotonic() - started
        if not report.ok:
            problems = report.problems + tuple(map(str, report.findings))
            raise RuntimeError(f"the {MANY_FILES:,} files do not validate: {problems[:5]}")
        reports.append(report)
        return elapsed

    seconds = timed_runs(validate, MANY_VALIDATION_SECONDS)
    middle = sorted(range(len(seconds)), key=lambda i: seconds[i])[len(seconds) // 2]
    many = {"files": len(list((many_project / "migrations").iterdir())), "migrations": len(paths), "seconds": seconds,
            "static_seconds": reports[middle].timings["static"], "lint_seconds": reports[middle].timings["lint"],
            "findings": len(reports[middle].findings)}
    log(f"  static checks + lint of {many['files']:,} files      {statistics.median(seconds):7.2f} s "
        f"(static {many['static_seconds']:.2f} s, lint {many['lint_seconds']:.2f} s)")
    return {"backfill": backfill, "many": many}


def run(server: BenchServer, base: Path, env: dict[str, str], log: Callable[[str], None]) -> dict:
    started = time.monotonic()
    project, paths, generate_seconds = prepare_project(base)
    results: dict = {"corpus": {**describe_corpus(project / "migrations", paths), "generate_seconds": generate_seconds},
                     "targets": {"first_run_floor_ratio": FIRST_RUN_FLOOR_RATIO,
                                 "incremental_seconds": INCREMENTAL_SECONDS,
                                 "backfill_read_seconds": BACKFILL_READ_SECONDS,
                                 "many_validation_seconds": MANY_VALIDATION_SECONDS}}
    c = results["corpus"]
    log(f"  corpus: {c['migrations']} migrations, {c['files']} files ({c['rollback_files']} rollback, "
        f"{c['non_transactional']} non-transactional), {c['bytes'] / 1024:.0f} KiB, "
        f"written in {generate_seconds:.2f} s")
    cli = Cli(project, cli_env(base, env))
    # Not measured: the first process ever compiles bytecode into the cache and creates Prefect's home.
    drop_rehearsal_cache(server)
    warm = server.fresh_database("real_warm")
    cli(warm, "--dry-run")
    server.drop(warm)
    unrehearsed = Cli(prepare_unrehearsed(base, paths), cli.env)
    results.update(first_and_incremental(server, project, paths, cli, log, unrehearsed))
    results["breakdown"] = breakdown(project, cli, log)
    drop_rehearsal_cache(server)
    results.update(large_inputs(base, log))
    results["section_seconds"] = time.monotonic() - started
    return results

