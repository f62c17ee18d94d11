"""`make bench` (`uv run python -m bench`): measure, print the tables, write bench/out/ and the plot.

    uv run python -m bench                       # everything, 9–11 minutes on 2 cores
    uv run python -m bench --only apply,stall    # some sections
    uv run python -m bench --render bench/out/results.json   # after a bench run: its tables and plot again
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bench import apply, fleet, local, machine, realistic, report, schema, stall, validation  # noqa: E402
from bench import trigger as trigger_bench  # noqa: E402
from bench.pg import BenchServer  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SECTIONS = ("apply", "stall", "validation", "local", "realistic", "schema", "fleet", "prefect", "trigger")
SIZES = (100, 300, 1000)
# Runs per tool and N, in rounds that run every tool once in a rotating order; medians are reported. The
# floor and the engine run N = 1,000 five times (their ratio is the target); the slow reference tools once.
REPEATS = {
    100: {"default": 3, apply.YOYO: 2},
    300: {"default": 3, apply.YOYO: 1, apply.KNEX: 2},
    1000: {"default": 5, apply.YOYO: 1, apply.KNEX: 1},
}
LOCK_TIMEOUT_MS = 200  # the stall target's lock_timeout; 2,000 ms (the shipped production policy) is shown too
VALIDATION_FILES = 1000
REHEARSAL_BASE = 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bytecode_env() -> dict[str, str]:
    """An environment in which Python caches compiled bytecode, as an installed worker does.

    `uv sync` compiles no bytecode by default, and some machines (this one) set PYTHONDONTWRITEBYTECODE: then
    every process compiles Prefect from source again, seconds per start. The cache goes outside the venv.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                     / "rds-migrations-bench" / "pycache")
    return env


def cli_section(results: dict, name: str, title: str, measure: Callable[[], dict]) -> None:
    """A section that runs the CLI: its figures in `results[name]`, or why not in `results["errors"]`."""
    log(title)
    try:
        results[name] = measure()
    except (RuntimeError, subprocess.SubprocessError) as exc:
        results["errors"][name] = str(exc)
        log(f"  not measured: {exc}")


def run_prefect_section(out: Path) -> dict:
    """In its own process: Prefect must see the temporary server's settings before it is imported."""
    result_file, log_file = out / "prefect.json", out / "prefect.log"
    with log_file.open("w") as output:
        done = subprocess.run([sys.executable, "-m", "bench.prefect_run", str(result_file)], cwd=HERE.parent,
                              env=bytecode_env(), stdout=output, stderr=subprocess.STDOUT, timeout=900)
    if done.returncode != 0:
        tail = log_file.read_text()[-1500:]
        raise RuntimeError(f"bench.prefect_run failed (see {log_file}):\n{tail}")
    return json.loads(result_file.read_text())


def load_candidate(path: Path) -> tuple[str, Callable[..., object]]:
    """A copy of tasks/engine/migrations/apply.py (any module with an `apply_pending`) with a proposed change,
    measured beside the engine as it is."""
    spec = importlib.util.spec_from_file_location("bench_candidate_migrate", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return apply.CANDIDATE, module.apply_pending


def measure(sections: tuple[str, ...], sizes: tuple[int, ...], out: Path, candidate: Path | None = None) -> dict:
    base = Path(tempfile.mkdtemp(prefix="rdsm-bench-"))
    server = BenchServer(base)
    results: dict = {"sections": list(sections), "lock_timeout_ms": LOCK_TIMEOUT_MS, "errors": {}}
    started = time.monotonic()
    try:
        server.start()
        info = machine.describe(server.version())
        results["machine"], results["machine_line"] = info, machine.machine_line(info)
        log(f"Machine: {results['machine_line']}")
        if "apply" in sections:
            log("Apply N generated migrations (a table and an index each) on fresh databases:")
            measured = apply.run(server, base, list(sizes), {n: REPEATS.get(n, {"default": 1}) for n in sizes}, log,
                                 candidate=load_candidate(candidate) if candidate else None)
            times: dict[str, dict[str, list[float]]] = {}
            cpu: dict[str, dict[str, list[list[float]]]] = {}
            for (tool, n), values in measured.times.items():
                times.setdefault(tool, {})[str(n)] = values
                cpu.setdefault(tool, {})[str(n)] = [list(c) for c in measured.cpu[(tool, n)]]
            results["apply"] = {"sizes": list(sizes), "times": times, "cpu": cpu, "skipped": measured.skipped,
                                "catalog_seconds": {str(n): s for n, s in measured.catalog_seconds.items()},
                                "knex_version": measured.knex_version}
        if "stall" in sections:
            log("Traffic stall (pgbench read-only load, a 4 s read transaction, then an ALTER TABLE):")
            results["stall"] = [dataclasses.asdict(s) for s in stall.run(server, base, (LOCK_TIMEOUT_MS, 2000), log)]
        if "validation" in sections:
            log(f"Static checks + lint of {VALIDATION_FILES:,} files; rehearsal of 1 new on {REHEARSAL_BASE:,}:")
            results["validation"] = dataclasses.asdict(validation.validate_files(base, VALIDATION_FILES))
            log(f"  validation {results['validation']['total_seconds']:.2f} s")
            results["rehearsal"] = dataclasses.asdict(validation.rehearse_incrementally(server, base, REHEARSAL_BASE))
            log(f"  rehearsal {results['rehearsal']['incremental_seconds']:.2f} s")
        env = bytecode_env()
        if "local" in sections:
            cli_section(results, "local", "A person's terminal: `rds-migrations run --database-url` on this "
                        "repository's migrations, the engine path and --prefect:",
                        lambda: local.run(server, base, env, log))
        if "realistic" in sections:
            cli_section(results, "realistic", f"A realistic history of {realistic.COUNT} migrations "
                        "(bench/corpus.py), the CLI end to end; large inputs:",
                        lambda: realistic.run(server, base, env, log))
        if "schema" in sections:
            cli_section(results, "schema", f"Drift and the target-schema rehearsal on {schema.TABLES} tables; "
                        f"memory for {schema.MEMORY_MIGRATIONS:,} migrations:",
                        lambda: schema.run(server, base, env, log))
        if "fleet" in sections:
            log(f"A fleet of {fleet.TARGETS} databases × {fleet.MIGRATIONS} migrations, concurrency "
                f"{fleet.CONCURRENCY} vs one after another:")
            results["fleet"] = fleet.run(server, base, log)
    finally:
        server.stop()
        realistic.stop_cli_server(base)  # the CLI's dry runs rehearse on the embedded server: it must not outlive us
        shutil.rmtree(base, ignore_errors=True)
    if "trigger" in sections:
        log("The GitHub check: rds-migrations trigger against prefect deployment run --watch (a few minutes):")
        try:
            results["trigger"] = trigger_bench.run_section(out, bytecode_env())
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            results["errors"]["trigger"] = str(exc)
            log(f"  not measured: {exc}")
    if "prefect" in sections:
        log("No-op runs through a local Prefect server and a process worker (takes a minute or two):")
        try:
            results["prefect"] = run_prefect_section(out)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            results["errors"]["prefect"] = str(exc)
            log(f"  not measured: {exc}")
    results["duration_seconds"] = time.monotonic() - started
    return results


def render(results: dict, out: Path, publish: bool) -> str:
    text = "\n\n".join(part for part in (
        f"Machine: {results['machine_line']}",
        "### Apply N migrations (median seconds; ratio to the psql floor)\n\n"
        + report.apply_table(results) if "apply" in results else "",
        "### Against the targets\n\n" + report.targets_table(results) if report.rows(results) else "",
        report.trigger_breakdown(results),
        "### A person's terminal: the engine path and the Prefect path\n\n" + local.render(results["local"])
        if "local" in results else "",
        "### A realistic history and large inputs (issue 15)\n\n" + report.realistic_table(results)
        if "realistic" in results else "",
        "### Adoption and day two: drift, the target-schema rehearsal, memory\n\n" + schema.render(results["schema"])
        if "schema" in results else "",
        "### A fleet of databases\n\n" + fleet.render(results["fleet"]) if "fleet" in results else "",
        "### The GitHub check\n\n" + trigger_bench.render(results["trigger"]) if "trigger" in results else "",
        "\n".join(f"Not measured, {k}: {v}" for k, v in results.get("errors", {}).items()),
        f"Measured in {results['duration_seconds']:.0f} s." if "duration_seconds" in results else "",
    ) if part)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    report.write_plot(results, out / "results.png")
    if publish:
        shutil.copyfile(out / "results.png", HERE / "results.png")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="N values for the apply section")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON", help="render saved results, measure nothing")
    parser.add_argument("--candidate", type=Path, metavar="APPLY_PY",
                        help="also apply with this copy of tasks/engine/migrations/apply.py (a proposed change), "
                             "side by side")
    args = parser.parse_args(argv)
    if args.render:
        if not args.render.is_file():  # one line, not a traceback: the file is made by a bench run
            parser.exit(2, f"python -m bench: {args.render} does not exist: it is written by a bench run; run "
                           "`make bench` (or `uv run python -m bench --only SECTIONS`) first\n")
        results = json.loads(args.render.read_text())
    else:
        sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
        sizes = tuple(sorted(int(n) for n in args.sizes.split(",")))
        OUT.mkdir(parents=True, exist_ok=True)  # before measuring: the prefect section writes its log there
        results = measure(sections, sizes, OUT, args.candidate)
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
    complete = (set(results.get("sections", ())) == set(SECTIONS) and not results.get("errors")
                and not args.candidate)
    print(render(results, OUT, publish=complete and not args.render))
    print(f"\nWritten: {OUT / 'results.md'}, {OUT / 'results.json'}, {OUT / 'results.png'}"
          + (f", {HERE / 'results.png'}" if complete and not args.render else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
