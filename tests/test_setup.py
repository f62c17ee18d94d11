"""`rds-migrations setup-prefect` against Prefect's test API server: the pool starts flow runs with one process."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate

from flows.setup import FLOW_RUN_COMMAND, process_pool_template, setup_prefect


def pool_command(name: str) -> str | None:
    with get_client(sync_client=True) as client:
        template = client.read_work_pool(name).base_job_template  # {}: Prefect's default, filled by a worker
        return template.get("variables", {}).get("properties", {}).get("command", {}).get("default")


def limits() -> set[str]:
    with get_client(sync_client=True) as client:
        return {limit.name for limit in client.read_global_concurrency_limits(limit=200)}


def test_a_new_pool_starts_flow_runs_with_the_engine_and_each_environment_gets_a_limit(prefect_api) -> None:
    pool, environment = f"p-{uuid.uuid4().hex[:8]}", f"e{uuid.uuid4().hex[:6]}"
    done = setup_prefect([environment], work_pool=pool)
    assert pool_command(pool) == FLOW_RUN_COMMAND == "python -m prefect.engine"
    assert f"db-migrate-{environment}" in limits()
    assert done[:2] == [f"work pool {pool} (process) created; flow runs start with `python -m prefect.engine`",
                        f"concurrency limit db-migrate-{environment} (1) created"]
    assert done[2].startswith("concurrency limit rds-migrations-fleet ") and "rds-migrations-fleet" in limits()
    assert "start workers with `uv run prefect worker start" in done[3]
    again = setup_prefect([environment], work_pool=pool)
    assert again[:2] == [f"work pool {pool} exists", f"concurrency limit db-migrate-{environment} exists"]


def test_an_existing_pool_gets_the_command_only_where_none_was_chosen(prefect_api) -> None:
    plain, chosen = f"plain-{uuid.uuid4().hex[:8]}", f"chosen-{uuid.uuid4().hex[:8]}"
    customised = process_pool_template(None)  # Prefect's default: no command
    customised["variables"]["properties"]["working_dir"]["default"] = "/srv/migrations"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=plain, type="process", base_job_template=customised))
        client.create_work_pool(WorkPoolCreate(name=chosen, type="process",
                                               base_job_template=process_pool_template("/opt/venv/bin/python -m x")))
    assert pool_command(plain) is None

    assert f"work pool {plain}: flow runs start with `{FLOW_RUN_COMMAND}`" in setup_prefect([], work_pool=plain)
    assert pool_command(plain) == FLOW_RUN_COMMAND
    with get_client(sync_client=True) as client:  # the operator's other defaults are kept
        template = client.read_work_pool(plain).base_job_template
    assert template["variables"]["properties"]["working_dir"]["default"] == "/srv/migrations"
    setup_prefect([], work_pool=chosen)
    assert pool_command(chosen) == "/opt/venv/bin/python -m x"


def test_an_empty_command_keeps_prefects_default(prefect_api) -> None:
    pool = f"default-{uuid.uuid4().hex[:8]}"
    setup_prefect([], work_pool=pool, flow_run_command="")
    assert pool_command(pool) is None


def test_a_deployment_run_whose_limit_is_missing_is_told_the_command_that_makes_it(
        prefect_api, monkeypatch, capsys) -> None:
    """Under a deployment a run takes its environment's limit, strictly: a missing one (a new environment, or one
    target of a fleet) stops it before anything is done, with the command to run, where Prefect's own error
    named only the limit. setup-prefect takes a fleet's target as the fleet's messages name it."""
    from flows.cli import main
    from flows.exclusive import one_run_per_environment
    from tasks.engine.errors import ConfigError
    from tests.helpers import PROJECT

    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(uuid.uuid4()))  # as under a deployment
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(PROJECT / "deployments/environments.toml"))
    target = "local-fleet-tenant-03"
    with get_client(sync_client=True) as client:
        if f"db-migrate-{target}" in limits():  # the session's server: a test run before this one
            client.delete_global_concurrency_limit_by_name(f"db-migrate-{target}")
    entered: list[str] = []
    with pytest.raises(ConfigError, match=f"no concurrency limit db-migrate-{target}.*`rds-migrations "
                                          f"setup-prefect {target}` once"):
        with one_run_per_environment(target):
            entered.append("without a limit")

    assert main(["setup-prefect", target, "--work-pool", f"p-{uuid.uuid4().hex[:8]}"]) == 0
    assert f"concurrency limit db-migrate-{target} (1) created" in capsys.readouterr().out
    with one_run_per_environment(target):
        entered.append("with its limit")
    assert entered == ["with its limit"]
    assert main(["setup-prefect", "local-fleet-tenant-99"]) == 2  # no such target: a typo, no limit made
    assert "local-fleet-tenant-99" in capsys.readouterr().err and "db-migrate-local-fleet-tenant-99" not in limits()


def test_a_run_holding_its_limit_goes_on_when_the_lease_cannot_be_renewed(prefect_api, monkeypatch) -> None:
    """The self-hosted server keeps leases in memory: restarted (an upgrade, an OOM kill) or out for a minute,
    it answers every renewal with an error. Prefect then cancels a strict holder in its main thread, midway
    through whatever it runs, a migration included; the run goes on instead (the database's advisory lock is
    what keeps runs apart). The renewal fails here as it does then: from the server, at once, every time."""
    import time

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.concurrency import _leases

    from flows.exclusive import one_run_per_environment

    def gone(self, lease_id, lease_duration) -> None:
        raise RuntimeError("410 Gone: Lease not found (the server restarted)")

    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(uuid.uuid4()))
    monkeypatch.setattr(SyncPrefectClient, "renew_concurrency_lease", gone)
    monkeypatch.setattr(_leases, "_RENEWAL_RETRY_BASE_DELAY", 0.01)
    environment = f"e{uuid.uuid4().hex[:6]}"
    setup_prefect([environment], work_pool=f"p-{uuid.uuid4().hex[:8]}")
    steps = []
    with one_run_per_environment(environment):
        for step in range(30):  # 3 s of work, in steps a cancellation would cut
            time.sleep(0.1)
            steps.append(step)
    assert len(steps) == 30


def test_setup_prefect_without_a_server_or_with_one_out_of_reach_says_so_and_creates_nothing(tmp_path) -> None:
    """Without PREFECT_API_URL, Prefect would start a temporary server, set it up, throw it away and print
    "created": a CI job missing its secret went green having set up nothing. A server out of reach, or a URL
    that is not one, is one line, exit 2, where it was a traceback."""
    from tasks.engine.server_binaries import free_port
    from tests.helpers import PROJECT, cli

    bare = {"PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "", "PREFECT_PROFILES_PATH": str(tmp_path / "p.toml")}
    for env, said in ((bare, "none is named: set PREFECT_API_URL"),
                      ({**bare, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"},
                       "cannot reach the Prefect API at http://127.0.0.1:"),
                      ({**bare, "PREFECT_API_URL": "http://prefect:port/api"}, "PREFECT_API_URL is not a URL")):
        done = cli("setup-prefect", "staging", cwd=PROJECT, env=env)
        assert done.returncode == 2, done.stdout + done.stderr[-2000:]
        assert said in done.stderr and "Traceback" not in done.stderr and "created" not in done.stdout
