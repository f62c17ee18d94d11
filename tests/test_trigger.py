"""`rds-migrations trigger` (flows/trigger.py): the GitHub check without `prefect deployment run --watch`.

The e2e tests go through a real `prefect server` and a process worker, on a light stack of their own: three tiny
flows deployed from a temporary directory (no PostgreSQL, no git clone; tests/test_e2e.py covers the real
deployments). The command runs as GitHub runs it, in its own process (`python -m flows.trigger`), and its exit
code and output are what is checked; nothing is timed (bench/trigger.py measures).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flows import trigger as trigger_module
from flows import trigger_api
from flows.trigger import api_settings, trigger, ui_url
from tasks.engine.environments import load_environments
from tasks.engine.runs.budget import deadline_parts, run_budget_seconds, watch_timeout
from tasks.engine.server_binaries import free_port
from tests.helpers import stop_process_group

PROJECT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
POOL = "trigger-tests"

FLOWS = '''
import time

from prefect import flow, get_run_logger, task


@task
def say(note: str) -> str:
    get_run_logger().info("the task says %s", note)
    return note


@flow(name="trigger-noop")
def noop(note: str = "none", count: int = 1, environment: str = "none") -> None:
    # Prefect checks the parameters against these types: "1234567" must arrive as a string, 3 as an int.
    assert isinstance(note, str) and isinstance(count, int), (type(note), type(count))
    get_run_logger().info("hello from the no-op run: note=%s count=%d environment=%s", note, count, environment)
    say(note)


@flow(name="trigger-fail")
def fail() -> None:
    get_run_logger().info("about to apply 0042.add_index")
    raise RuntimeError("0042.add_index failed: relation no_such_table does not exist")


@flow(name="trigger-sleep")
def sleepy(seconds: float = 20) -> None:
    get_run_logger().info("sleeping %s s", seconds)
    time.sleep(seconds)
    get_run_logger().info("woke up")
'''

DEPLOY = '''
from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig

for entrypoint in ("tflows.py:noop", "tflows.py:fail", "tflows.py:sleepy"):
    flow.from_source(source={source!r}, entrypoint=entrypoint).deploy(name="t", work_pool_name={pool!r},
                                                                     print_next_steps=False)
# One at a time, queued: as migrate-production is.
flow.from_source(source={source!r}, entrypoint="tflows.py:sleepy").deploy(
    name="queued", work_pool_name={pool!r}, print_next_steps=False,
    concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE"))
'''


@dataclass
class Stack:
    api: str
    env: dict[str, str]

    def trigger(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flows.trigger", *args], cwd=PROJECT, env=env or self.env,
                              capture_output=True, text=True, timeout=300)

    def flow_run(self, flow_run_id: str) -> dict:
        for _ in range(20):  # a local server's SQLite answers 503 under load: ask again
            response = httpx.get(f"{self.api}/flow_runs/{flow_run_id}", timeout=10)
            if response.status_code != 503:
                return response.raise_for_status().json()
            time.sleep(0.5)
        return response.raise_for_status().json()


def _until(check, what: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, f"{what}: {log.read_text()[-3000:]}"
        time.sleep(0.5)


def _worker_polled(api: str) -> bool:
    response = httpx.post(f"{api}/work_pools/{POOL}/workers/filter", json={}, timeout=5)
    return response.status_code == 200 and any(w.get("last_heartbeat_time") for w in response.json())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("trigger")
    prefect_home, flows_dir, worker_dir = base / "prefect", base / "flows", base / "worker"
    for directory in (prefect_home, flows_dir, worker_dir):
        directory.mkdir()
    (flows_dir / "tflows.py").write_text(FLOWS)
    api = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",  # a queued run retries every 2 s, not 30
           "PYTHONUNBUFFERED": "1"}
    for key in ("PREFECT_API_KEY", "PREFECT_PROFILES_PATH", "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        env.pop(key, None)
    logs = (base / "server.log").open("w"), (base / "worker.log").open("w")
    port = api.split(":")[-1].split("/")[0]
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                              env={**env, "PREFECT_API_URL": ""}, stdout=logs[0], stderr=subprocess.STDOUT,
                              start_new_session=True)
    worker = None
    try:
        _until(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, "server start", server,
               base / "server.log")
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                                  cwd=worker_dir, env=env, stdout=logs[1], stderr=subprocess.STDOUT,
                                  start_new_session=True)
        # The worker creates its pool, then polls it (heartbeats): only then deploy and run.
        _until(lambda: _worker_polled(api), "worker start", worker, base / "worker.log")
        script = DEPLOY.format(source=str(flows_dir), pool=POOL)
        deployed = subprocess.run([sys.executable, "-c", script], cwd=flows_dir, env=env, capture_output=True,
                                  text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        yield Stack(api, env)
    finally:
        stop_process_group(worker)
        stop_process_group(server)
        for log in logs:
            log.close()


def _flow_run_id(output: str) -> str:
    match = re.search(r"^  id:\s+([0-9a-f-]{36})$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


# ---- through a real server and worker -------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_run_that_completes_exits_0_with_its_logs_and_typed_parameters(stack: Stack) -> None:
    # No --timeout: the deadline comes from the policy of the environment --env names (the project's file).
    done = stack.trigger("trigger-noop/t", "--param", "note=1234567", "--param", "count=3", "--env", "local")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    flow_run_id = _flow_run_id(out)
    # The id, the parameters as sent (typed by the deployment's schema), the UI link, the deadline, then the
    # run's own lines.
    assert '"count": 3' in out and '"environment": "local"' in out and '"note": "1234567"' in out
    assert f"  url:        http://127.0.0.1:{stack.api.split(':')[-1].split('/')[0]}/runs/flow-run/{flow_run_id}" in out
    local = load_environments(PROJECT / "deployments/environments.toml")["local"]
    assert f"  deadline:   {watch_timeout(local)} s from environment 'local''s policy: snapshot wait 0 + " in out
    assert "| INFO    | Flow run " in out
    assert "hello from the no-op run: note=1234567 count=3 environment=local" in out
    assert re.search(r"\| INFO    \| Task run 'say-[^']*' - the task says 1234567", out), out
    # The engine's last line was waited for and shown, then the outcome.
    assert "Finished in state Completed()" in out
    assert out.rstrip().splitlines()[-1].startswith("flow run ") and "finished in state Completed" in out
    assert out.index("hello from the no-op run") < out.index("Finished in state Completed()")
    assert "Traceback" not in done.stderr
    assert stack.flow_run(flow_run_id)["state"]["type"] == "COMPLETED"


@pytest.mark.e2e
def test_a_failing_run_exits_1_with_its_error_lines_and_a_github_annotation(stack: Stack, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    env = {**stack.env, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    done = stack.trigger("trigger-fail/t", "--timeout", "240", env=env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    # The run's error lines, logged before the Failed state and sent when the flow's process exited.
    assert "about to apply 0042.add_index" in out
    assert "| ERROR   | Flow run " in out
    assert "0042.add_index failed: relation no_such_table does not exist" in out
    assert "Finished in state Failed(" in out
    # The run's lines sit between ::stop-commands:: markers; the outcome is an annotation after them.
    token = re.search(r"^::stop-commands::([0-9a-f]{32})$", out, re.MULTILINE)
    assert token, out
    resumed = out.index(f"::{token.group(1)}::")
    assert out.index("0042.add_index failed") < resumed < out.index("::error title=trigger-fail/t%3A Failed::")
    assert "`trigger-fail/t`: **Failed**: Flow run encountered an exception: RuntimeError: 0042" in summary.read_text()
    assert stack.flow_run(_flow_run_id(out))["state"]["type"] == "FAILED"


@pytest.mark.e2e
def test_an_unknown_deployment_exits_2_naming_the_known_ones(stack: Stack) -> None:
    done = stack.trigger("trigger-noop/no-such-deployment", "--timeout", "60")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no deployment 'trigger-noop/no-such-deployment'" in done.stderr
    assert "trigger-noop/t" in done.stderr  # what the server has
    assert "Traceback" not in done.stderr and done.stdout == ""

    unknown_parameter = stack.trigger("trigger-noop/t", "--param", "colour=blue", "--timeout", "60")
    assert unknown_parameter.returncode == 2 and "no parameter colour" in unknown_parameter.stderr
    assert "(its parameters: count, environment, note)" in unknown_parameter.stderr
    # A deployment without an environment parameter has no policy to take a deadline from.
    no_policy = stack.trigger("trigger-fail/t")
    assert no_policy.returncode == 2 and "give --timeout" in no_policy.stderr and no_policy.stdout == ""


@pytest.mark.e2e
def test_the_deadline_exits_1_and_leaves_the_run_going(stack: Stack) -> None:
    done = stack.trigger("trigger-sleep/t", "--param", "seconds=20", "--timeout", "8")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    flow_run_id = _flow_run_id(done.stdout)
    last = done.stdout.rstrip().splitlines()[-1]
    assert re.fullmatch(r"flow run '.*' still running after \d+ s \(state \w+\); not cancelled: see "
                        rf"http://127\.0\.0\.1:\d+/runs/flow-run/{flow_run_id}", last), last
    # Not cancelled: the run is still going afterwards, and ends Completed on its own.
    assert stack.flow_run(flow_run_id)["state"]["type"] in {"SCHEDULED", "PENDING", "RUNNING"}
    deadline = time.monotonic() + 180
    while (state := stack.flow_run(flow_run_id)["state"]["type"]) not in {"COMPLETED", "FAILED", "CRASHED",
                                                                          "CANCELLED"}:
        assert time.monotonic() < deadline, state
        time.sleep(1)
    assert state == "COMPLETED"


@pytest.mark.e2e
def test_waiting_for_the_deployments_slot_behind_another_run_does_not_count_against_the_deadline(
    stack: Stack
) -> None:
    ahead = subprocess.Popen([sys.executable, "-m", "flows.trigger", "trigger-sleep/queued", "--param", "seconds=8",
                              "--timeout", "120"], cwd=PROJECT, env=stack.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # the first run holds the slot
        behind = stack.trigger("trigger-sleep/queued", "--param", "seconds=1", "--timeout", "10")
    finally:
        out, _ = ahead.communicate(timeout=180)
    assert ahead.returncode == 0, out[-2000:]
    assert behind.returncode == 0, behind.stdout[-3000:] + behind.stderr[-2000:]
    assert "AwaitingConcurrencySlot" in behind.stdout  # it waited its turn, and the wait did not count


# ---- without a server -------------------------------------------------------------------------------------------


def test_a_credential_in_a_parameter_is_refused_before_anything_is_sent() -> None:
    out, err = io.StringIO(), io.StringIO()
    secret = "postgresql://migrator:s3cret-Pw@db.internal:5432/app"
    # Port 9 (discard) on 127.0.0.1: nothing answers there; the refusal comes first, so it is never asked.
    code = trigger("migrate-production/production", {"git_sha": secret}, timeout=60,
                   api_url="http://127.0.0.1:9/api", api_key=None, out=out, err=err, environ={})
    assert code == 2
    assert "parameter git_sha looks like a credential" in err.getvalue()
    assert "s3cret" not in out.getvalue() + err.getvalue() and out.getvalue() == ""
    for value in ("pnu_" + "a" * 36, "AKIA" + "A" * 16, "https://hooks.slack.com/services/T0/B0/x", "the-api-key"):
        err = io.StringIO()
        code = trigger("a/b", {"note": value}, timeout=60, api_url="http://127.0.0.1:9/api",
                       api_key="the-api-key", out=io.StringIO(), err=err, environ={})
        assert code == 2 and value not in err.getvalue() and "looks like a credential" in err.getvalue()


def test_an_unreachable_api_or_none_at_all_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trigger_module, "START_RETRY_SECONDS", 0.5)
    err = io.StringIO()
    code = trigger("migrate-production/production", {}, timeout=60, api_url=f"http://127.0.0.1:{free_port()}/api",
                   api_key="pnu_" + "k" * 36, out=io.StringIO(), err=err, environ={})
    assert code == 2
    assert err.getvalue().startswith("rds-migrations: cannot reach the Prefect API at http://127.0.0.1:")
    assert len(err.getvalue().splitlines()) == 1 and "pnu_" not in err.getvalue()

    err = io.StringIO()
    assert trigger("a/b", {}, timeout=60, api_url=None, api_key=None, out=io.StringIO(), err=err, environ={}) == 2
    assert "PREFECT_API_URL is not set" in err.getvalue()

    for malformed in ("http://prefect:abc/api", "http://[::1/api", "http://prefect:99999/api", "http:///api"):
        err = io.StringIO()  # each used to end in a ValueError's traceback, exit 1
        code = trigger("a/b", {}, timeout=60, api_url=malformed, api_key=None, out=io.StringIO(), err=err,
                       environ={})
        assert code == 2 and len(err.getvalue().splitlines()) == 1, (malformed, err.getvalue())
        assert "PREFECT_API_URL" in err.getvalue() and malformed not in err.getvalue()


def test_a_pinned_deployment_asked_for_another_environment_is_refused_before_a_flow_run_is_created(
        prefect_api: None) -> None:
    """A rollback's deployment runs its own environment only (the flow refuses another: test_pinned_environment).
    The check refused nothing: it created the flow run, which failed. It is refused here, exit 2, one line naming
    the deployment, both environments and the other environment's deployment; no flow run of it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.callables import parameter_schema

    from flows.rollback import rollback

    schema = parameter_schema(rollback).model_dump()  # what `prefect deploy` sends: the flow's parameters
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(rollback)
        staging = client.create_deployment(flow_id=flow_id, name="rollback-staging", parameter_openapi_schema=schema,
                                           parameters={"environment": "staging", "trigger": "ui"})
        client.create_deployment(flow_id=flow_id, name="rollback-production", parameter_openapi_schema=schema,
                                 parameters={"environment": "production"})
    out, err = io.StringIO(), io.StringIO()

    code = trigger("rollback/rollback-staging", {"environment": "production", "to": "0"}, timeout=60,
                   api_url=PREFECT_API_URL.value(), api_key=None, out=out, err=err, environ={})

    assert code == 2 and out.getvalue() == "", out.getvalue()
    [line] = err.getvalue().splitlines()
    assert line == ("rds-migrations: deployment rollback/rollback-staging runs environment staging only (it has "
                    "staging's AWS role); this run asked for production: nothing was done. Run rds-migrations trigger "
                    "rollback/rollback-production --env production instead; no flow run was created"), line
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[staging])))
    assert runs == []
    # Its own environment, or none given (the deployment's): not refused here (the run is created).
    assert trigger_module._refuse_other_environment(None, "rollback/rollback-staging",  # type: ignore[arg-type]
                                                    {"parameters": {"environment": "staging"}},
                                                    {"environment": "staging"}, 0) is None


def test_the_command_starts_without_importing_prefect() -> None:
    code = ("import sys, flows.trigger as t; t.api_settings(); t.refuse_credentials({'a': 'b'}, None); "
            "heavy = {'prefect', 'psycopg', 'pydantic'} & set(sys.modules); assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    usage = subprocess.run([sys.executable, "-m", "flows.trigger", "a/b", "--param", "oops"], cwd=PROJECT,
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--param takes key=value" in usage.stderr and "Traceback" not in usage.stderr


def test_the_credential_check_is_the_flows_own() -> None:
    from tasks.engine.runs import parameters

    assert trigger_api.CREDENTIAL.pattern == parameters.CREDENTIAL.pattern
    assert trigger_api.CREDENTIAL.flags == parameters.CREDENTIAL.flags


def test_the_deadline_adds_up_the_policy() -> None:
    environments = load_environments(PROJECT / "deployments/environments.toml")
    production = environments["production"]
    parts = deadline_parts(production)
    assert parts == {"snapshot wait": 3600, "approval wait": 0, "migration lock wait": 300,
                     "longest statement": 900, "lock timeout retries": 160, "rest of the run": 600,
                     "start margin": 300}
    assert watch_timeout(production) == sum(parts.values()) == run_budget_seconds(production) + 300
    approval = production.model_copy(update={"policy": production.policy.model_copy(
        update={"approval_required": True, "approval_timeout_seconds": 1800})})
    assert watch_timeout(approval) == watch_timeout(production) + 1800
    assert deadline_parts(environments["local"])["snapshot wait"] == 0  # pg_dump: no wait of its own


def test_a_refresh_or_a_restore_adds_its_waits_for_rds_to_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check following `rds-migrations trigger refresh-staging/...` (the command a refresh's failure names)
    had a migration's deadline, 78 minutes for staging, where the refresh may wait hours for RDS: it went red
    while the refresh went on. A refresh's deadline adds each wait of its restore and swap (and a fresh snapshot
    of its source) to the migration's, without the migration's snapshot wait; a restore's, its waits."""
    from flows.trigger import _default_timeout

    environments = load_environments(PROJECT / "deployments/environments.toml")
    staging, production = environments["staging"], environments["production"]
    wait = staging.refresh.max_wait_seconds
    refresh = deadline_parts(staging, "refresh", production)
    # An instance's refresh: the restore, the password, the two renames (budget.SWAP_WAITS); a restore: no password.
    assert refresh["restore and swap waits"] == 4 * wait and refresh["fresh snapshot wait"] == 0
    assert refresh["snapshot wait"] == 0 and refresh["migration lock wait"] == 120 and refresh["start margin"] == 300
    fresh = staging.model_copy(update={"refresh": staging.refresh.model_copy(update={"use_fresh_snapshot": True})})
    assert deadline_parts(fresh, "refresh", production)["fresh snapshot wait"] == 3600  # production's snapshot wait
    assert deadline_parts(production, "restore") == {"fresh snapshot wait": 0, "restore and swap waits": 3 * 4 * 3600,
                                                     "rest of the run": 600, "start margin": 300}
    assert deadline_parts(environments["local"], "restore")["restore and swap waits"] == 0  # a dump: no RDS wait
    assert run_budget_seconds(staging, "refresh", production) == watch_timeout(staging, "refresh", production) - 300

    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(PROJECT / "deployments/environments.toml"))
    seconds, why = _default_timeout({"environment": "staging"}, {}, "refresh-staging")
    assert seconds == watch_timeout(staging, "refresh", production) > watch_timeout(staging), why
    assert f"restore and swap waits {4 * wait}" in why, why
    assert _default_timeout({"environment": "staging"}, {}, "migrate-staging")[0] == watch_timeout(staging)


def test_the_api_comes_from_the_environment_or_the_active_profile(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "cloud"\n[profiles.cloud]\n'
                        'PREFECT_API_URL = "https://api.prefect.cloud/api/accounts/a1/workspaces/w1"\n'
                        'PREFECT_API_KEY = "pnu_x"\n')
    settings = api_settings({"PREFECT_PROFILES_PATH": str(profiles)})
    assert (settings.url, settings.key) == ("https://api.prefect.cloud/api/accounts/a1/workspaces/w1", "pnu_x")
    assert ui_url(settings.url, {}) == "https://app.prefect.cloud/account/a1/workspace/w1"
    assert api_settings({"PREFECT_API_URL": "http://h:4200/api", "PREFECT_PROFILES_PATH": str(profiles)}).key is None
    assert ui_url("http://user:pw@h:4200/api", {}) == "http://h:4200"


@pytest.fixture(autouse=True)
def _no_ambient_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit tests pass their settings explicitly."""
    for key in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "PREFECT_UI_URL"):
        monkeypatch.delenv(key, raising=False)

