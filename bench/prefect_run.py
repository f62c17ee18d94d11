"""No-op runs through Prefect: the flow body with nothing pending, and trigger→done through a local Prefect
server and a process worker, triggered with `prefect deployment run ... --watch` as GitHub Actions does.

Run as its own process (`python -m bench.prefect_run RESULT.json`): Prefect reads its settings from the
environment when it is imported, and this module points them at a temporary server and home first. (So
nothing from `tasks` or `flows` is imported at the top: they import Prefect.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "rds-migrations-bench"
DEPLOYMENT = "migrate-staging/bench-noop"
ENVIRONMENT = "local"
# The documented worker settings (BENCHMARKS.md): poll every second; prefetch matters for scheduled runs only.
WORKER_QUERY_SECONDS = "1"
WORKER_PREFETCH_SECONDS = "5"
NOOP_RUNS = 3
TRIGGERED_RUNS = 3
POLL_SECONDS = 0.25
LOG_LINES = 1000


def _wait_healthy(api: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("prefect server exited while starting")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("prefect server did not answer /health in time")


def start_server(api: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    """`prefect server start` on `port`, in its own process group, answering /health when this returns."""
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={**env, "PREFECT_API_URL": ""}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_healthy(api, server)
    except RuntimeError:
        _stop(server)
        raise
    return server


def start_worker(api: str, env: dict[str, str], worker_dir: Path) -> subprocess.Popen:
    """A process worker on POOL, in its own process group, having polled the pool once when this returns."""
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
         "--prefetch-seconds", WORKER_PREFETCH_SECONDS],
        cwd=worker_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_for_worker(api, worker)
    except RuntimeError:
        _stop(worker)
        raise
    return worker


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # our own process group (start_new_session=True)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return (later - earlier).total_seconds() if later and earlier else None


def _setup(pool: str) -> None:
    """The work pool and the environment's concurrency limit, as `rds-migrations setup-prefect` makes them."""
    try:
        from flows.setup import setup_prefect
    except ImportError:
        setup_prefect = None
    if setup_prefect is not None:
        setup_prefect([ENVIRONMENT], work_pool=pool)
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def _wait_for_worker(api: str, worker: subprocess.Popen, timeout: float = 120) -> None:
    """Until the worker has polled the pool once: a deployed worker is long running, so its start is not part
    of a triggered run's time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError("the worker exited while starting")
        workers = httpx.post(f"{api}/work_pools/{POOL}/workers/filter", json={}, timeout=10).raise_for_status().json()
        if any(w.get("last_heartbeat_time") for w in workers):
            return
        time.sleep(0.25)
    raise RuntimeError("the worker did not poll its pool in time")


def _flow_run(flow_run_id: str) -> dict[str, float | None]:
    """Where a flow run's time went, from the server's state timestamps."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        states = sorted(client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)
    first = {}
    for state in states:
        first.setdefault(state.type.value, state.timestamp)
    return {
        "created": run.created.timestamp() if run.created else None,
        "queued_seconds": _seconds(first.get("PENDING"), run.created),  # until the worker picked it up
        "start_seconds": _seconds(first.get("RUNNING"), first.get("PENDING")),  # subprocess start, flow load
        "body_seconds": _seconds(first.get("COMPLETED"), first.get("RUNNING")),
        "completed": first["COMPLETED"].timestamp() if first.get("COMPLETED") else None,
        "state": run.state.type.value if run.state else None,
    }


def noop_in_process() -> dict[str, object]:
    """The staging flow on the embedded environment, in this process: once to apply, then with nothing pending."""
    from flows.staging import staging

    started = time.monotonic()
    first = staging(environment=ENVIRONMENT, git_sha="local", trigger="cli", return_state=True)
    if not first.is_completed():
        raise RuntimeError(f"the first staging run did not complete: {first}")
    first_seconds = time.monotonic() - started
    runs = []
    for _ in range(NOOP_RUNS):
        started = time.monotonic()
        state = staging(environment=ENVIRONMENT, git_sha="local", trigger="cli", return_state=True)
        wall = time.monotonic() - started
        summary = state.result()
        if summary.outcome != "nothing-to-do":
            raise RuntimeError(f"expected a no-op run, got {summary.outcome}")
        timings = _flow_run(str(state.state_details.flow_run_id))
        runs.append({"wall_seconds": wall, "body_seconds": timings["body_seconds"],
                     "pipeline_seconds": summary.duration_seconds})
    return {"first_run_seconds": first_seconds, "runs": runs}


def log_line_cost() -> float:
    """Seconds for LOG_LINES run-logger lines in a task (the engine logs one line per migration applied)."""
    from prefect import flow, get_run_logger, task

    @task
    def lines(count: int) -> float:
        log = get_run_logger()
        started = time.monotonic()
        for number in range(count):
            log.info("Applying %s (%d of %d)", f"{number:05d}.bench-t{number:05d}", number + 1, count)
        return time.monotonic() - started

    @flow
    def logging_cost(count: int) -> float:
        return lines(count)

    return logging_cost(LOG_LINES)


def deploy(env: dict[str, str]) -> None:
    from prefect import flow

    flow.from_source(source=str(PROJECT), entrypoint="flows/staging.py:staging").deploy(
        name=DEPLOYMENT.split("/")[1],
        work_pool_name=POOL,
        parameters={"environment": ENVIRONMENT, "trigger": "github", "git_sha": "local"},
        job_variables={"env": {"RDS_MIGRATIONS_HOME": env["RDS_MIGRATIONS_HOME"]}},
        print_next_steps=False,
    )


def trigger_and_watch(env: dict[str, str]) -> dict[str, object]:
    """`prefect deployment run ... --watch`, timed from the command's start to its exit."""
    started_at = time.time()
    started = time.monotonic()
    done = subprocess.run([str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "180"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    ended_at = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"deployment run failed ({done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout)
    if match is None:
        raise RuntimeError(f"no flow run id in: {done.stdout[-500:]}")
    timings = _flow_run(match.group(1))
    if timings["state"] != "COMPLETED":
        raise RuntimeError(f"flow run ended {timings['state']}")
    created, completed = timings.pop("created"), timings.pop("completed")
    return {
        "wall_seconds": wall,
        "cli_until_created_seconds": created - started_at if created else None,
        **timings,
        "run_seconds": completed - created if created and completed else None,
        "completed_until_cli_exit_seconds": ended_at - completed if completed else None,
    }


def _answer(send, attempts: int = 20) -> dict:
    """The JSON of a request to the server, asked again while it answers 503 (its SQLite database is locked
    under load; nothing was done)."""
    for _ in range(attempts):
        response = send()
        if response.status_code != 503:
            return response.raise_for_status().json()
        time.sleep(0.25)
    return response.raise_for_status().json()


def trigger_and_poll(api: str) -> dict[str, object]:
    """The same run started with two REST calls and watched by polling its state: no CLI start, no wait for
    straggling logs (what a curl step in a GitHub workflow can do)."""
    started = time.monotonic()
    with httpx.Client(base_url=api, timeout=30) as http:
        deployment = _answer(lambda: http.get(f"/deployments/name/{DEPLOYMENT}"))
        flow_run = _answer(lambda: http.post(f"/deployments/{deployment['id']}/create_flow_run", json={}))
        while True:
            state = _answer(lambda: http.get(f"/flow_runs/{flow_run['id']}"))["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            if time.monotonic() - started > 180:
                raise RuntimeError("the triggered run did not finish in 180 s")
            time.sleep(POLL_SECONDS)
    wall = time.monotonic() - started
    if state["type"] != "COMPLETED":
        raise RuntimeError(f"flow run ended {state['type']}")
    timings = _flow_run(flow_run["id"])
    created, completed = timings.pop("created"), timings.pop("completed")
    return {"wall_seconds": wall, **timings, "run_seconds": completed - created if created and completed else None}


def import_seconds(module: str, env: dict[str, str]) -> float:
    """Wall time of a fresh Python process importing `module` (the worker's subprocess does that first)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=PROJECT, env=env, check=True, capture_output=True)
    return time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="rdsm-bench-prefect-"))
    home, prefect_home, worker_dir = base / "home", base / "prefect", base / "worker"
    for directory in (home, prefect_home, worker_dir):
        directory.mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": WORKER_QUERY_SECONDS,
        "RDS_MIGRATIONS_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("RDS_MIGRATIONS_ENVIRONMENTS", "DATABASE_URL", "PREFECT_PROFILES_PATH"):
        env.pop(key, None)
    os.environ.clear()
    os.environ.update(env)  # before Prefect is imported in this process
    os.chdir(PROJECT)
    results: dict[str, object] = {"worker_query_seconds": float(WORKER_QUERY_SECONDS),
                                  "worker_prefetch_seconds": float(WORKER_PREFETCH_SECONDS)}
    server = worker = None
    try:
        started = time.monotonic()
        server = start_server(api, port, env)
        results["server_start_seconds"] = time.monotonic() - started
        _setup(POOL)
        results["noop_in_process"] = noop_in_process()
        results["log_lines"] = LOG_LINES
        results["log_lines_seconds"] = log_line_cost()

        deploy(env)
        worker = start_worker(api, env, worker_dir)
        # Alternated, so that neither way of triggering always gets the worker's first (cold) subprocess.
        results["triggered_api"], results["triggered_cli"] = [], []
        for _ in range(TRIGGERED_RUNS):
            results["triggered_api"].append(trigger_and_poll(api))
            results["triggered_cli"].append(trigger_and_watch(env))
        results["import_seconds"] = {module: import_seconds(module, env) for module in ("prefect", "flows.staging")}
        uncached = {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(base / "no-pycache")}
        results["import_seconds_without_bytecode"] = {"prefect": import_seconds("prefect", uncached)}
    finally:
        _stop(worker)
        _stop(server)
        from tasks.engine.embedded import LocalServer

        LocalServer(home / "postgres").destroy()
        shutil.rmtree(base, ignore_errors=True)
    out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
