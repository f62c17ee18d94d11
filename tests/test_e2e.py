"""End to end, as GitHub does it: a real `prefect server`, `prefect deploy --all` of prefect.yaml, a process
worker, and `prefect deployment run ... --watch` — against the embedded local environment. What a run shows
(its name, artifacts and events) and what a crash or a stuck run tells the team are read back through the
Prefect API and the Slack sink."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tasks.engine.connection import connected
from tasks.engine.embedded import LocalServer
from tasks.engine.server_binaries import free_port
from tests.conftest import SlackSink
from tests.helpers import stop_process_group

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

[environments.local-slack]
tier = "staging"
credentials = { kind = "embedded", database = "app_slack" }
snapshot = { kind = "pg_dump" }
notify = { kind = "slack", webhook_block = "slack-e2e" }
"""
# Run from `crash-migrations/` by the crash test: 0002 sleeps on the target (not in the rehearsal's database).
CRASH_MIGRATIONS = {
    "0001.create-notes.sql": "CREATE TABLE notes (id bigint PRIMARY KEY);\n",
    "0002.slow.sql": ("CREATE TABLE slow (id bigint PRIMARY KEY);\n"
                      "DO $$ BEGIN IF current_database() = 'app_slack' THEN PERFORM pg_sleep(60); END IF; END $$;\n"),
    "0003.after-slow.sql": "CREATE TABLE after_slow (id bigint PRIMARY KEY);\n",
}
SLEEPING = "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND application_name = %s"


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
        return self.head()

    def head(self) -> str:
        """The commit a run of main gets (a run checks out its git_sha: it must be a real one)."""
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

    def setup(self, *options: str) -> str:
        done = subprocess.run([sys.executable, "-m", "flows.cli", "setup-prefect", "local", "local-production",
                               "local-approval", "local-slack", *options], cwd=self.repo, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def api_post(self, path: str, body: dict) -> object:
        for _ in range(10):  # the server's SQLite answers 503 ("database is locked") under load: ask again
            response = httpx.post(f"{self.api}/{path}", json=body, timeout=30)
            if response.status_code != 503:
                break
            time.sleep(1)
        assert response.status_code < 300, response.text
        return response.json()

    def logs(self, flow_run_id: str) -> str:
        """The flow run's log lines, for a failing assertion's message."""
        found = self.api_post("logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        state = httpx.get(f"{self.api}/flow_runs/{flow_run_id}").json()["state"]
        lines = [line["message"] for line in found] + [f"state: {state['type']}: {state['message']}"]  # type: ignore
        return "\n".join(lines)[-4000:]

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
    (target / "crash-migrations").mkdir()
    for name, text in CRASH_MIGRATIONS.items():
        (target / "crash-migrations" / name).write_text(text)
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
        setup = stack.setup()  # no Slack block yet: the automations that notify come with the crash test's
        assert "automation 'rds-migrations: heartbeats stopped'" in setup
        deployed = stack.prefect("--no-prompt", "deploy", "--all")
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "rds-migrations",
                                   "--type", "process"], cwd=worker_dir, env=env, stdout=logs[1],
                                  stderr=subprocess.STDOUT, start_new_session=True)
        yield stack
    finally:
        for process in (worker, server):
            stop_process_group(process)
        LocalServer(home / "postgres").destroy()
        for log in logs:
            log.close()


def run_and_watch(stack: Stack, deployment: str, **params: str) -> subprocess.CompletedProcess[str]:
    """Exactly what .github/workflows/migrate.yml runs."""
    args = ["deployment", "run", deployment, "--watch", "--watch-timeout", "240"]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    return stack.prefect(*args)


def flow_run_id_in(output: str) -> str:
    """`prefect deployment run` prints the flow run's id on its `UUID:` line."""
    return next(line.split()[-1] for line in output.splitlines() if "UUID" in line)


def test_production_through_the_api_applies_and_a_failing_migration_fails_the_check(stack: Stack) -> None:
    sha = stack.commit("nothing new")
    result = run_and_watch(stack, "migrate-production/production", git_sha=sha, environment="local-production")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    applied = stack.applied("app_production")
    assert len(applied) == len(list((PROJECT / "migrations").glob("[0-9]*[0-9a-z].sql"))) - len(
        list((PROJECT / "migrations").glob("*.rollback.sql")))
    what_the_run_shows(stack, flow_run_id_in(result.stdout), sha, applied)

    (stack.repo / "migrations" / "0999.broken.sql").write_text("INSERT INTO no_such_table VALUES (1);\n")
    sha = stack.commit("a broken migration")
    try:
        result = run_and_watch(stack, "migrate-production/production", git_sha=sha, environment="local-production")
        assert result.returncode != 0
        assert stack.applied("app_production") == applied
    finally:
        (stack.repo / "migrations" / "0999.broken.sql").unlink()
        stack.commit("remove the broken migration")


def what_the_run_shows(stack: Stack, flow_run_id: str, sha: str, applied: list[str]) -> None:
    """Its name, its task runs' names, its table and progress artifacts and its events, through the API."""
    assert httpx.get(f"{stack.api}/flow_runs/{flow_run_id}").json()["name"] == f"local-production-{sha[:7]}"
    tasks = stack.api_post("task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert {t["name"] for t in tasks} >= {"validate", "fetch-secret-local-production", "notify-local-production",
                                          "rehearse-and-plan-local-production", "snapshot-local-production",
                                          "migrate-local-production"}
    found = stack.api_post("artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    artifacts = {a["key"]: a for a in sorted(found, key=lambda a: a["created"])}
    plan = json.loads(artifacts["migration-plan-table-local-production"]["data"])
    assert [row["migration"] for row in plan] == applied and {row["status"] for row in plan} == {"pending"}
    rows = json.loads(artifacts["applied-migrations-local-production"]["data"])
    assert [(row["migration"], row["outcome"], row["lock retries"]) for row in rows] == [
        (m, "applied", 0) for m in applied]
    assert artifacts["lint-findings-local-production"]["type"] == "table"
    for key in ("migration-progress-local-production", "snapshot-progress-local-production"):
        assert artifacts[key]["type"] == "progress" and float(artifacts[key]["data"]) == 100
    assert f"{len(applied)} of {len(applied)} migrations applied" in artifacts[
        "migration-progress-local-production"]["description"]

    query = {"filter": {"event": {"prefix": ["rds-migrations."]},
                        "related": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50}
    deadline = time.monotonic() + 60
    while True:  # events arrive asynchronously
        events = stack.api_post("events/filter", query)["events"]  # type: ignore[index]
        names = [e["event"] for e in events]
        if names.count("rds-migrations.migration.applied") == len(applied) and "rds-migrations.run.completed" in names:
            break
        assert time.monotonic() < deadline, names
        time.sleep(1)
    completed = next(e for e in events if e["event"] == "rds-migrations.run.completed")
    assert completed["resource"]["rds-migrations.outcome"] == "succeeded"
    assert completed["resource"]["rds-migrations.git-sha"] == sha
    assert sorted(e["resource"]["rds-migrations.migration-id"] for e in events
                  if e["event"] == "rds-migrations.migration.applied") == sorted(applied)


def start_run(stack: Stack, environment: str, deployment: str = "migrate-production/production",
              **params: str) -> str:
    args = ["deployment", "run", deployment, "--param", f"environment={environment}"]
    for key, value in {"git_sha": stack.head(), **params}.items():
        args += ["--param", f"{key}={value}"]
    result = stack.prefect(*args)
    assert result.returncode == 0, result.stderr
    return flow_run_id_in(result.stdout)


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


# ---- a killed run, a crash nobody reported, a run stuck Pending: the team hears of each ------------------------


def alerts_to(stack: Stack, sink: SlackSink, *options: str) -> None:
    """The environments' Slack block on the e2e server, pointing at `sink`, and the automations that use it."""
    code = f"from prefect_slack import SlackWebhook; SlackWebhook(url={sink.url!r}).save('slack-e2e', overwrite=True)"
    saved = subprocess.run([sys.executable, "-c", code], env=stack.env, capture_output=True, text=True, timeout=120)
    assert saved.returncode == 0, saved.stderr
    done = stack.setup(*options)
    assert "automation 'rds-migrations: crashed and not reported'" in done, done


def flow_run_process(flow_run_id: str) -> int:
    """The pid of the process the worker started for the flow run (it has the run's id in its environment)."""
    wanted = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and wanted in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process for flow run {flow_run_id}")


def wait_for_message(sink: SlackSink, *fragments: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = [text for text in sink.texts() if all(fragment in text for fragment in fragments)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no Slack message with {fragments}: {sink.texts()}"
        time.sleep(1)


def stop_inside_the_slow_migration(stack: Stack, sha: str, stop: Callable[[str], None], ending: str,
                                   sink: SlackSink) -> str:
    """Run crash-migrations/ on a new local-slack database through the staging deployment; `stop` the flow run
    while 0002 sleeps; once its hook's message is in Slack, end the session it left; the message."""
    postgres = LocalServer(stack.home / "postgres")
    if postgres.port is not None:
        postgres.drop_database("app_slack")
    flow_run_id = start_run(stack, "local-slack", "migrate-staging/staging", git_sha=sha,
                            migrations_dir="crash-migrations")
    deadline = time.monotonic() + 180
    while postgres.port is None:  # the run starts the embedded server when it is the first to need it
        assert stack.state(flow_run_id) in {"SCHEDULED", "PENDING", "RUNNING"} and time.monotonic() < deadline
        time.sleep(0.5)
    session = f"rds-migrations run {flow_run_id}"
    with connected(postgres.connection()) as watcher:
        while not watcher.execute(SLEEPING, (session,)).fetchone():
            assert stack.state(flow_run_id) in {"SCHEDULED", "PENDING", "RUNNING"} and time.monotonic() < deadline, \
                stack.logs(flow_run_id)
            time.sleep(0.5)
        stop(flow_run_id)
        ended = stack.wait_for(flow_run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
        assert ended == ending.upper(), stack.logs(flow_run_id)
        message = wait_for_message(sink, f"run {ending}", f"{sha[:7]}")
        watcher.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (session,))
    return message


def test_a_run_cancelled_under_the_worker_is_reported_to_slack_by_the_cancel_hook(
        stack: Stack, slack_sink: SlackSink) -> None:
    alerts_to(stack, slack_sink)
    sha = stack.commit("the cancel test")

    def cancel(flow_run_id: str) -> None:
        stack.api_post(f"flow_runs/{flow_run_id}/set_state", {"state": {"type": "CANCELLING"}})

    message = stop_inside_the_slow_migration(stack, sha, cancel, "cancelled", slack_sink)

    for expected in ("FAILED at step migrate (run cancelled)", "`local-slack`", "The flow run was cancelled",
                     "*Applied (1):* `0001.create-notes`", "*Failed migration:* `0002.slow`",
                     f"rdsm-local-slack-{sha[:7]}-"):
        assert expected in message, expected
    assert stack.applied("app_slack") == ["0001.create-notes"]


def test_a_run_killed_under_the_worker_is_reported_to_slack_by_the_crash_hook(
        stack: Stack, slack_sink: SlackSink) -> None:
    alerts_to(stack, slack_sink, "--crash-report-seconds", "20")
    sha = stack.commit("the crash test")
    message = stop_inside_the_slow_migration(
        stack, sha, lambda flow_run_id: os.kill(flow_run_process(flow_run_id), signal.SIGKILL), "crashed", slack_sink)

    snapshot = next(path.stem for path in (stack.home / "snapshots").glob(f"rdsm-local-slack-{sha[:7]}-*.dump"))
    for expected in ("FAILED at step migrate (run crashed)", "`local-slack`", f"`{sha[:7]}`",
                     "*Applied (1):* `0001.create-notes`", "*Failed migration:* `0002.slow`",
                     "`0002.slow`, `0003.after-slow`", f"*Snapshot:* `{snapshot}`",
                     f"rds-migrations restore --env local-slack --snapshot-id {snapshot}", "status code: -9",
                     "the server rolled it back"):
        assert expected in message, expected
    assert stack.applied("app_slack") == ["0001.create-notes"]
    # The hook's report is what the "crashed and not reported" automation waits for: it stays quiet.
    time.sleep(35)
    assert not [text for text in slack_sink.texts() if "not reported" in text and f"local-slack-{sha[:7]}" in text]


def test_the_automations_alert_on_a_crash_nobody_reported_a_lost_heartbeat_and_a_run_stuck_pending(
        stack: Stack, slack_sink: SlackSink) -> None:
    """The last test of the module: its windows are short enough to crash any real run still going."""
    alerts_to(stack, slack_sink, "--crash-report-seconds", "10", "--pending-seconds", "10", "--heartbeat-seconds", "10")
    flow_id = httpx.get(f"{stack.api}/flows/name/migrate-staging").json()["id"]
    parameters = {"environment": "local-slack", "git_sha": "abcdef1"}

    def flow_run(name: str, state: str) -> str:  # a run no worker will touch
        return stack.api_post("flow_runs/", {"flow_id": flow_id, "name": name, "parameters": parameters,
                                             "state": {"type": state}})["id"]  # type: ignore[index]

    # One whose process died with its worker (nobody ran the hook), one whose heartbeats stopped (a lost host),
    # one stuck Pending.
    crashed, zombie, pending = flow_run("local-slack-lost", "RUNNING"), flow_run("local-slack-zombie", "RUNNING"), \
        flow_run("local-slack-stuck", "PENDING")
    try:
        stack.api_post(f"flow_runs/{crashed}/set_state", {"state": {"type": "CRASHED", "message": "worker lost"},
                                                          "force": True})
        heartbeat = {"id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(),
                     "event": "prefect.flow-run.heartbeat",
                     "resource": {"prefect.resource.id": f"prefect.flow-run.{zombie}",
                                  "prefect.resource.name": "local-slack-zombie"},
                     "related": [{"prefect.resource.id": f"prefect.flow.{flow_id}", "prefect.resource.role": "flow",
                                  "prefect.resource.name": "migrate-staging"}]}
        assert httpx.post(f"{stack.api}/events", json=[heartbeat]).status_code == 204
        lost = wait_for_message(slack_sink, "CRASHED and not reported", "local-slack-lost", timeout=120)
        stuck = wait_for_message(slack_sink, "PENDING too long", "local-slack-stuck", timeout=120)
        assert stack.wait_for(zombie, {"CRASHED"}, timeout=120) == "CRASHED"
        assert "No heartbeat for 10 s" in httpx.get(f"{stack.api}/flow_runs/{zombie}").json()["state"]["message"]
        wait_for_message(slack_sink, "CRASHED and not reported", "local-slack-zombie", timeout=120)
    finally:
        stack.setup()  # the automations as setup-prefect makes them by default
        for flow_run_id in (crashed, zombie, pending):
            httpx.delete(f"{stack.api}/flow_runs/{flow_run_id}")
    # The run's checked name, never its parameters (a pasted secret or a Slack mention would be repeated).
    assert "migrate-staging run local-slack-lost crashed" in lost and "rds-migrations resolve --env" in lost
    assert "git SHA" not in lost
    assert "has been Pending for 10 s" in stuck
