"""End to end, as GitHub does it: a real `prefect server`, `prefect deploy --all` of prefect.yaml, a process
worker, and `prefect deployment run ... --watch` — against the embedded local environment."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tasks.engine.connection import connected
from tasks.engine.embedded import LocalServer, free_port

pytestmark = pytest.mark.e2e
PROJECT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent

APPROVAL_ENVIRONMENT = """

[environments.local-approval]
tier = "production"
credentials = { kind = "embedded", database = "app_approval" }
snapshot = { kind = "pg_dump" }
notify = { kind = "console" }
[environments.local-approval.policy]
snapshot_required = true
lint_blocks_on = "warning"
approval_required = true
approval_timeout_seconds = 300
"""


@dataclass
class Stack:
    repo: Path
    env: dict[str, str]
    api: str
    home: Path

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "prefect"), *args], cwd=self.repo, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def commit(self, message: str) -> str:
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
        subprocess.run([*git, "add", "-A"], cwd=self.repo, check=True, capture_output=True)
        subprocess.run([*git, "commit", "-qm", message, "--allow-empty"], cwd=self.repo, check=True,
                       capture_output=True)
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=self.repo, capture_output=True, text=True,
                              check=True).stdout.strip()

    def applied(self, database: str) -> list[str]:
        server = LocalServer(self.home / "postgres")
        if server.port is None:
            return []
        with connected(server.connection()) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                return []
        with connected(server.connection(database)) as conn:
            if conn.execute("SELECT to_regclass('_yoyo_migration')").fetchone()[0] is None:
                return []
            return [r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY 1")]

    def state(self, flow_run_id: str) -> str:
        return httpx.get(f"{self.api}/flow_runs/{flow_run_id}").json()["state"]["type"]

    def wait_for(self, flow_run_id: str, states: set[str], timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.state(flow_run_id)) not in states:
            assert time.monotonic() < deadline, f"flow run {flow_run_id} stuck in {state}"
            time.sleep(0.5)
        return state


def project_copy(target: Path) -> None:
    """The working tree as a git repository on `main` (what a clone of main holds)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source = PROJECT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    with (target / "deployments/environments.toml").open("a") as out:
        out.write(APPROVAL_ENVIRONMENT)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=target, check=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("e2e")
    repo, home, prefect_home, worker_dir = base / "repo", base / "home", base / "prefect", base / "worker"
    for d in (repo, home, prefect_home, worker_dir):
        d.mkdir()
    project_copy(repo)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "RDS_MIGRATIONS_HOME": str(home),
        "RDS_MIGRATIONS_REPOSITORY": str(repo),
        "RDS_MIGRATIONS_BRANCH": "main",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("RDS_MIGRATIONS_ENVIRONMENTS", "DATABASE_URL", "PREFECT_PROFILES_PATH"):
        env.pop(key, None)
    stack = Stack(repo, env, api, home)
    stack.commit("initial")
    logs = (base / "server.log").open("w"), (base / "worker.log").open("w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={**env, "PREFECT_API_URL": ""}, stdout=logs[0], stderr=subprocess.STDOUT,
                              start_new_session=True)
    worker = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (base / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        setup = subprocess.run([sys.executable, "-m", "flows.setup", "local", "local-production", "local-approval"],
                               cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert setup.returncode == 0, setup.stderr
        deployed = stack.prefect("--no-prompt", "deploy", "--all")
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "rds-migrations",
                                   "--type", "process"], cwd=worker_dir, env=env, stdout=logs[1],
                                  stderr=subprocess.STDOUT, start_new_session=True)
        yield stack
    finally:
        for process in (worker, server):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        LocalServer(home / "postgres").destroy()
        for log in logs:
            log.close()


def run_and_watch(stack: Stack, deployment: str, **params: str) -> subprocess.CompletedProcess[str]:
    """Exactly what .github/workflows/migrate.yml runs."""
    args = ["deployment", "run", deployment, "--watch", "--watch-timeout", "240"]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    return stack.prefect(*args)


def test_production_through_the_api_applies_and_a_failing_migration_fails_the_check(stack: Stack) -> None:
    sha = stack.commit("nothing new")
    result = run_and_watch(stack, "migrate-production/production", git_sha=sha, environment="local-production")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    applied = stack.applied("app_production")
    assert len(applied) == len(list((PROJECT / "migrations").glob("[0-9]*[0-9a-z].sql"))) - len(
        list((PROJECT / "migrations").glob("*.rollback.sql")))

    (stack.repo / "migrations" / "0999.broken.sql").write_text("INSERT INTO no_such_table VALUES (1);\n")
    sha = stack.commit("a broken migration")
    try:
        result = run_and_watch(stack, "migrate-production/production", git_sha=sha, environment="local-production")
        assert result.returncode != 0
        assert stack.applied("app_production") == applied
    finally:
        (stack.repo / "migrations" / "0999.broken.sql").unlink()
        stack.commit("remove the broken migration")


def start_run(stack: Stack, environment: str) -> str:
    result = stack.prefect("deployment", "run", "migrate-production/production",
                           "--param", f"environment={environment}", "--param", "git_sha=abcdef1")
    assert result.returncode == 0, result.stderr
    return next(line.split()[-1] for line in result.stdout.splitlines() if "UUID" in line)


def resume(stack: Stack, flow_run_id: str, run_input: dict[str, object]) -> None:
    stack.wait_for(flow_run_id, {"PAUSED"})
    for _ in range(10):  # the server's SQLite answers 503 ("database is locked") under load: ask again
        response = httpx.post(f"{stack.api}/flow_runs/{flow_run_id}/resume", json={"run_input": run_input})
        if response.status_code != 503:
            break
        time.sleep(1)
    assert response.status_code in (200, 201) and response.json()["status"] == "ACCEPT", response.text


def test_approval_gate_rejected_applies_nothing_then_approved_applies(stack: Stack) -> None:
    rejected = start_run(stack, "local-approval")
    resume(stack, rejected, {"approved": False, "approver": "jane", "reason": "not during the sale"})
    assert stack.wait_for(rejected, {"COMPLETED", "FAILED", "CRASHED"}) == "FAILED"
    assert stack.applied("app_approval") == []
    assert not list((stack.home / "snapshots").glob("rdsm-local-approval-*.dump"))

    approved = start_run(stack, "local-approval")
    resume(stack, approved, {"approved": True, "approver": "jane", "reason": "CHG-42"})
    assert stack.wait_for(approved, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
    assert stack.applied("app_approval")
    assert list((stack.home / "snapshots").glob("rdsm-local-approval-*.dump"))
