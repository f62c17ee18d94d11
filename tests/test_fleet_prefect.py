"""The migrate-fleet flow on Prefect: in-process (a mapped task per target on a thread pool task runner) under
the shared test harness, and distributed (a migrate-target flow run per target, as subflow runs, picked up by
two process workers of a real work pool). Artifacts, ONE Slack message, the run Failed when a target failed,
and the canary password nowhere: not in a parameter, an artifact or a message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.engine.connection import connected
from tasks.engine.embedded import embedded_server
from tests.conftest import CANARY_PASSWORD, SlackSink
from tests.helpers import PROJECT, applied_ids, url_of, write_migrations
from tests.test_fleet import FIRST, NEXT

BIN = Path(sys.executable).parent
POOL = "fleet-test-pool"
ENVIRONMENTS = """
[environments.database-url]
tier = "staging"
credentials = {{ kind = "url_env", variable = "DATABASE_URL" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "slack", webhook_block = "slack-fleet" }}

[environments.spread]
tier = "staging"
credentials = {{ kind = "embedded", database = "unused" }}
snapshot = {{ kind = "pg_dump" }}
notify = {{ kind = "console" }}
[environments.spread.fleet]
discover = {{ kind = "embedded", databases = 4, name_pattern = "{prefix}_{{n:02d}}" }}
concurrency = 2
mode = "distributed"
"""


def artifacts(key: str, flow_run_id: object) -> list:
    """The flow run's artifacts under `key` (other runs of the shared test server publish under it too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack_sink: SlackSink, prefect_api: None) -> Path:
    from prefect_slack import SlackWebhook

    prefix = f"fd_{uuid.uuid4().hex[:6]}"
    (tmp_path / "environments.toml").write_text(ENVIRONMENTS.format(prefix=prefix))
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    monkeypatch.chdir(tmp_path)
    SlackWebhook(url=slack_sink.url).save("slack-fleet", overwrite=True, _sync=True)
    (tmp_path / "prefix").write_text(prefix)
    return tmp_path


def test_in_process_fleet_maps_a_task_per_target_and_reports_once(
    project: Path, pg_server, slack_sink: SlackSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.fleet import migrate_fleet_flow

    databases = [pg_server.ensure_database(f"p_{uuid.uuid4().hex[:8]}") for _ in range(4)]
    variables = []
    for n, database in enumerate(databases, 1):
        monkeypatch.setenv(f"FLEET_TEST_URL_{n}", url_of(database))
        variables.append(f"FLEET_TEST_URL_{n}")
    write_migrations(project, FIRST)
    assert migrate_fleet_flow(
        environment="database-url", url_variables=variables, git_sha="abc1234", concurrency=2, return_state=True
    ).is_completed()
    with connected(databases[2]) as conn:
        conn.execute("CREATE TABLE widgets (id bigint PRIMARY KEY)")
    write_migrations(project, NEXT)
    slack_sink.messages.clear()

    state = migrate_fleet_flow(
        environment="database-url", url_variables=variables, git_sha="abc1234", concurrency=2, return_state=True
    )

    assert state.is_failed()
    broken = databases[2].dbname
    assert [applied_ids(d) for d in databases] == [sorted(n[:-4] for n in NEXT)] * 2 + [["0001.create-notes"]] + [
        sorted(n[:-4] for n in NEXT)
    ]
    assert len(slack_sink.messages) == 1  # ONE message for the fleet
    message = slack_sink.texts()[0]
    assert "FAILED" in message and "3 succeeded, 1 failed" in message and broken in message
    flow_run_id = state.state_details.flow_run_id
    [table] = artifacts("fleet-targets-database-url", flow_run_id)
    assert broken in str(table.data) and "failed" in str(table.data)
    assert artifacts("fleet-progress-database-url", flow_run_id)[0].type == "progress"
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert {f"target-{d.dbname}" for d in databases} <= {t.name for t in task_runs}
    states = {t.name: t.state.type.value for t in task_runs if t.name.startswith("target-")}
    assert states == {f"target-{d.dbname}": "FAILED" if d.dbname == broken else "COMPLETED" for d in databases}
    seen = (
        str(run.parameters)
        + str(table.data)
        + message
        + "".join(str(a.data) for a in artifacts("fleet-progress-database-url", flow_run_id))
    )
    assert CANARY_PASSWORD not in seen and "postgresql://" not in seen


def test_a_target_task_that_raises_ends_the_wave_with_its_error(prefect_api: None) -> None:
    """A target whose task could not even make a result (its flow run could not be started, say) raises its own
    error out of the wave, while a target that failed the ordinary way is a result read from its Failed state."""
    from types import SimpleNamespace

    from prefect import flow

    from flows.fleet import PrefectFleetSteps
    from tasks.engine.fleet.report import TargetResult

    def run(target: SimpleNamespace) -> TargetResult:
        if target.name == "b":
            raise RuntimeError("the target's flow run could not be started")
        return TargetResult(target.name, "failed" if target.name == "c" else "succeeded", error="boom")

    @flow
    def wave(names: list[str]) -> list[str]:
        map_wave = PrefectFleetSteps.map_wave(SimpleNamespace(), SimpleNamespace(concurrency=2))  # type: ignore[arg-type]
        return [r.outcome for r in map_wave([SimpleNamespace(name=n) for n in names], run)]

    assert wave(["a", "c"]) == ["succeeded", "failed"]
    with pytest.raises(RuntimeError, match="could not be started"):
        wave(["a", "b", "c"])


def test_a_url_fleet_is_refused_in_distributed_mode(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.fleet import migrate_fleet_flow

    monkeypatch.setenv("FLEET_TEST_URL_1", "postgresql://u:p@127.0.0.1:1/d")
    state = migrate_fleet_flow(
        environment="database-url", url_variables=["FLEET_TEST_URL_1"], mode="distributed", return_state=True
    )
    assert state.is_failed() and "in_process only" in state.message


# ---- distributed: a real work pool and two process workers ---------------------------------------------------------


@pytest.fixture
def workers(project: Path) -> Iterator[str]:
    """A process work pool, the migrate-target deployment (from this checkout), and two workers."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL

    from flows.setup import process_pool_template

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(name=POOL, type="process", base_job_template=process_pool_template())
            )
        except ObjectAlreadyExists:
            pass
    # A flow run starts in its deployment's directory: this test's, which holds its migrations/ (the code is
    # this checkout's, on PYTHONPATH).
    (project / "fleet_target_entry.py").write_text("from flows.fleet_target import migrate_target_flow  # noqa\n")
    deployment = Flow.from_source(str(project), "fleet_target_entry.py:migrate_target_flow")
    deployment.deploy(name="target", work_pool_name=POOL, print_next_steps=False, build=False, push=False)
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PYTHONPATH": str(PROJECT),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    logs = [(project / f"worker-{n}.log").open("w") for n in (1, 2)]
    processes = [
        subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", f"w{n}"],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for n, log in zip((1, 2), logs, strict=True)
    ]
    try:
        yield "migrate-target/target"
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for log in logs:
            log.close()


def databases_named(prefix: str) -> list[str]:
    with connected(embedded_server().connection()) as conn:
        return [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) "
                                               "ORDER BY 1", (f"{prefix}_",))]


@pytest.mark.e2e
def test_distributed_fleet_runs_each_target_as_a_subflow_run_on_the_pool(project: Path, workers: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId

    from flows.fleet import migrate_fleet_flow

    prefix = (project / "prefix").read_text()
    embedded_server().start()
    write_migrations(project, NEXT)
    dry = migrate_fleet_flow(environment="spread", git_sha="abc1234", target_deployment=workers, dry_run=True,
                             return_state=True)
    assert dry.is_completed() and dry.result().counts == {"dry-run": 4}, dry.message
    # A dry fleet run's targets changed nothing: not one of their databases (new with this project) was made.
    assert databases_named(prefix) == []
    started = time.monotonic()
    state = migrate_fleet_flow(environment="spread", git_sha="abc1234", target_deployment=workers, return_state=True)
    elapsed = time.monotonic() - started

    logs = "".join((project / f"worker-{n}.log").read_text()[-1500:] for n in (1, 2))
    assert state.is_completed(), f"{state.message}\n{logs}"
    report = state.result()
    assert report.counts == {"succeeded": 4}, report.to_json()
    for n in range(1, 5):
        assert applied_ids(embedded_server().connection(f"{prefix}_{n:02d}")) == sorted(m[:-4] for m in NEXT)
    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(state.state_details.flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [parent.id]}))
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in task_runs])
            )
        )
    assert sorted(c.parameters["target_name"] for c in children) == [f"{prefix}_{n:02d}" for n in range(1, 5)]
    assert all(c.state.is_completed() and c.work_pool_name == POOL for c in children)
    assert all(
        set(c.parameters) <= {"environment", "target_name", "git_sha", "target", "trigger", "migrations_dir",
                              "dry_run"}
        for c in children
    )
    print(f"distributed fleet of 4: {elapsed:.1f}s")
