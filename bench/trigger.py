"""The GitHub check, start → exit: `rds-migrations trigger` against `prefect deployment run --watch`, side by side,
on the same no-op runs through a local Prefect server and a process worker (as bench/prefect_run.py sets them up).

    uv run python -m bench.trigger RESULT.json [ROUNDS]     # on its own (two or three minutes)

From `python -m bench`: `run_section(out, env)` runs it in its own process (Prefect must see the temporary
server's settings before it is imported) and `render(results)` gives the table. Each command runs ROUNDS times,
alternating which goes first, after one unmeasured run of each (the first applies every migration, so the
measured runs have nothing pending). Wall time is the command's start to its exit; the server's state
timestamps split it into start → run created, created → Completed (server and worker: the same for both), and
Completed → exit (how long the command takes to notice the end and print the last logs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench.prefect_run import (
    BIN,
    DEPLOYMENT,
    POOL,
    PROJECT,
    WORKER_QUERY_SECONDS,
    _free_port,
    _setup,
    _stop,
    deploy,
    start_server,
    start_worker,
)

ROUNDS = 3
TIMEOUT_SECONDS = 180
WIRED = "rds-migrations trigger"
# Until flows/cli.py has the command: the same process the wired command is (flows.cli imported, then trigger).
UNWIRED = ("import sys, flows.cli; from flows.trigger import main; sys.exit(main(sys.argv[1:]))",)
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", re.MULTILINE)


def trigger_command() -> tuple[str, list[str]]:
    """`rds-migrations trigger` when flows/cli.py has it, else the same imports run by hand."""
    wired = subprocess.run([str(BIN / "rds-migrations"), "trigger", "--help"], cwd=PROJECT, capture_output=True,
                           timeout=60)
    if wired.returncode == 0:
        return WIRED, [str(BIN / "rds-migrations"), "trigger"]
    return "flows.cli + flows.trigger (not wired yet)", [sys.executable, "-c", *UNWIRED]


def _time(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _server_times(api: str, flow_run_id: str) -> dict[str, float | None]:
    with httpx.Client(base_url=api, timeout=30) as http:
        for _ in range(20):
            run, states = http.get(f"/flow_runs/{flow_run_id}"), http.get("/flow_run_states/",
                                                                           params={"flow_run_id": flow_run_id})
            if run.status_code != 503 and states.status_code != 503:
                break
            time.sleep(0.25)
        run, states = run.raise_for_status().json(), states.raise_for_status().json()
        logs = http.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                               "sort": "TIMESTAMP_DESC", "limit": 50}).raise_for_status().json()
    first: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s["timestamp"]):
        first.setdefault(state["type"], _time(state["timestamp"]))
    # When the engine's last line ("Finished in state …", logged after the final state) reached the server: the
    # flow's process sends its logs in batches, the last at its exit.
    last = next((log for log in logs if not log.get("task_run_id")
                 and log["message"].startswith("Finished in state")), None)
    return {"created": _time(run["created"]), "running": first.get("RUNNING"), "completed": first.get("COMPLETED"),
            "last_log": _time(last["created"]) if last else None,
            "state": run["state"]["type"] if run.get("state") else None}


def measure(api: str, name: str, command: list[str], env: dict[str, str]) -> dict[str, object]:
    """One no-op run triggered by `command`, timed from its start to its exit."""
    started_at, started = time.time(), time.monotonic()
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS + 60)
    wall, ended_at = time.monotonic() - started, time.time()
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{name} exited {done.returncode}: {output[-1500:]}")
    match = re.search(r"(?:UUID|id):\s*([0-9a-f-]{36})", done.stdout)
    if match is None:
        raise RuntimeError(f"{name}: no flow run id in {done.stdout[-500:]}")
    times = _server_times(api, match.group(1))
    if times["state"] != "COMPLETED":
        raise RuntimeError(f"{name}: the flow run ended {times['state']}")
    created, completed = times["created"], times["completed"]
    run_seconds = completed - created if completed and created else None
    return {
        "wall_seconds": wall,
        # The command's own time: everything but the server and worker's part (that part varies with the load).
        "own_seconds": wall - run_seconds if run_seconds is not None else None,
        "start_until_created_seconds": created - started_at if created else None,
        "created_until_completed_seconds": run_seconds,
        "completed_until_exit_seconds": ended_at - completed if completed else None,
        "completed_until_last_log_seconds": times["last_log"] - completed if times["last_log"] and completed else None,
        # Logs in the job: how many of the run's lines were printed, and whether the engine's last one was.
        "log_lines": len(LOG_LINE.findall(done.stdout)) if name != "watch" else
        sum(1 for line in done.stdout.splitlines() if line.lstrip().startswith("▪")),
        "shows_last_log_line": "Finished in state Completed" in done.stdout,
        "output": done.stdout,
    }


def _bytecode(env: dict[str, str]) -> dict[str, str]:
    """As `python -m bench` runs its Prefect section (bench.__main__.bytecode_env): compiled bytecode cached."""
    if env.get("PYTHONPYCACHEPREFIX"):
        return env
    env = {key: value for key, value in env.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                     / "rds-migrations-bench" / "pycache")
    return env


def main(out: Path, rounds: int = ROUNDS) -> None:
    base = Path(tempfile.mkdtemp(prefix="rdsm-bench-trigger-"))
    home, prefect_home, worker_dir = base / "home", base / "prefect", base / "worker"
    for directory in (home, prefect_home, worker_dir):
        directory.mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _bytecode({
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS,
        "RDS_MIGRATIONS_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        # The pool starts each run with `python -m prefect.engine`: the venv's python first, as `uv run` does.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    for key in ("RDS_MIGRATIONS_ENVIRONMENTS", "DATABASE_URL", "PREFECT_PROFILES_PATH", "PREFECT_API_KEY",
                "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        env.pop(key, None)
    os.environ.clear()
    os.environ.update(env)  # before Prefect is imported in this process (by _setup and deploy)
    os.chdir(PROJECT)
    label, trigger = trigger_command()
    commands = {
        "trigger": [*trigger, DEPLOYMENT, "--timeout", str(TIMEOUT_SECONDS)],
        # The same command without flows/cli.py's imports: what `rds-migrations trigger` costs when the CLI hands
        # `trigger` over before importing the other commands.
        "module": [sys.executable, "-m", "flows.trigger", DEPLOYMENT, "--timeout", str(TIMEOUT_SECONDS)],
        "watch": [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout",
                  str(TIMEOUT_SECONDS)],
    }
    results: dict[str, object] = {"trigger_command": label, "rounds": rounds,
                                  "worker_query_seconds": float(WORKER_QUERY_SECONDS),
                                  # The flow processes' log batches (Prefect's default 2 s unless set).
                                  "log_batch_interval": env.get("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "2.0")}
    server = worker = None
    try:
        server = start_server(api, port, env)
        _setup(POOL)
        deploy(env)
        worker = start_worker(api, env, worker_dir)
        for name in commands:  # unmeasured: the first applies every migration; all warm up
            measure(api, name, commands[name], env)
        runs: dict[str, list[dict[str, object]]] = {name: [] for name in commands}
        names = list(commands)
        for round_number in range(rounds):  # the order rotates: none always follows the same one
            for name in names[round_number % len(names):] + names[:round_number % len(names)]:
                runs[name].append(measure(api, name, commands[name], env))
                runs[name][-1]["load_average"] = os.getloadavg()[0]
        # What each command printed, once (its last run): the job's log as a reader would see it.
        results["sample_output"] = {name: runs[name][-1]["output"] for name in runs}
        for measured in runs.values():
            for one in measured:
                del one["output"]
        results["runs"] = runs
    finally:
        _stop(worker)
        _stop(server)
        from tasks.engine.embedded import LocalServer

        LocalServer(home / "postgres").destroy()
        shutil.rmtree(base, ignore_errors=True)
    out.write_text(json.dumps(results, indent=2))


def run_section(out: Path, env: dict[str, str]) -> dict:
    """From `python -m bench`: in its own process, its log beside the results."""
    result_file, log_file = out / "trigger.json", out / "trigger.log"
    with log_file.open("w") as output:
        done = subprocess.run([sys.executable, "-m", "bench.trigger", str(result_file)], cwd=PROJECT, env=env,
                              stdout=output, stderr=subprocess.STDOUT, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"bench.trigger failed (see {log_file}):\n{log_file.read_text()[-1500:]}")
    return json.loads(result_file.read_text())


def _median(runs: list[dict[str, object]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def render(results: dict) -> str:
    """The side-by-side table (medians)."""
    runs = results["runs"]
    columns = (("start → exit", "wall_seconds"), ("own time (start → exit − created → Completed)", "own_seconds"),
               ("start → run created", "start_until_created_seconds"),
               ("created → Completed", "created_until_completed_seconds"),
               ("Completed → exit", "completed_until_exit_seconds"),
               ("Completed → last log line at the server", "completed_until_last_log_seconds"))
    names = {"trigger": f"`rds-migrations trigger` ({results['trigger_command']})"
             if results["trigger_command"] != WIRED else "`rds-migrations trigger`",
             "module": "`python -m flows.trigger`",
             "watch": "`prefect deployment run --watch`"}
    titles = " | ".join(title for title, _ in columns)
    lines = [f"| command (no-op run, median of {results['rounds']}) | {titles} | log lines shown | "
             "last log line shown |",
             "|---|" + "---:|" * len(columns) + "---:|---|"]
    for name in (name for name in names if name in runs):
        cells = [f"{value:.2f} s" if (value := _median(runs[name], key)) is not None else "–" for _, key in columns]
        shown = sum(bool(r["shows_last_log_line"]) for r in runs[name])
        lines.append(f"| {names[name]} | {' | '.join(cells)} | {_median(runs[name], 'log_lines'):.0f} | "
                     f"{shown} of {len(runs[name])} |")
    walls = "; ".join(f"{names[name].split(' (')[0]} " + ", ".join(f"{r['wall_seconds']:.2f}" for r in runs[name])
                      for name in names if name in runs)
    loads = [r["load_average"] for name in runs for r in runs[name] if "load_average" in r]
    lines += ["", f"Each run, start → exit (s): {walls}."
              + (f" Load average {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores." if loads else "")]
    return "\n".join(lines)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(n) for n in sys.argv[2:3]))
    print(render(json.loads(Path(sys.argv[1]).read_text())))
