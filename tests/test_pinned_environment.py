"""A deployment that sets its `environment` runs that environment only: it carries that environment's AWS role
(deployments/prefect.ecs.yaml), so a rollback, baseline, drift check or restore started from it for another
environment is refused before anything is read or written. Real deployments on the Prefect test server, each
flow run created from one (as a worker's would be) and run in this process; a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.engine.connection import Connection
from tests.helpers import tables, url_of, write_migrations

ENVIRONMENTS = """
[environments.pinned]
tier = "staging"
credentials = { kind = "url_env", variable = "PINNED_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }

[environments.other]
tier = "staging"
credentials = { kind = "url_env", variable = "OTHER_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: Connection, prefect_api: None) -> Path:
    """Both environments name the same empty database (whatever a refused run did would show in it), each with
    its concurrency limit: nothing but the pin stops a run."""
    from prefect.client.orchestration import get_client

    from flows.exclusive import ensure_limit, limit_name

    (tmp_path / "environments.toml").write_text(ENVIRONMENTS)
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    monkeypatch.setenv("PINNED_URL", url_of(database))
    monkeypatch.setenv("OTHER_URL", url_of(database))
    monkeypatch.chdir(tmp_path)
    write_migrations(tmp_path, {"0001.create-notes.sql": "CREATE TABLE notes (id bigint PRIMARY KEY);\n"})
    with get_client(sync_client=True) as client:  # what `rds-migrations setup-prefect pinned other` makes
        for environment in ("pinned", "other"):
            ensure_limit(client, limit_name(environment), 1)
    return tmp_path


def run_from_deployment(flow: Any, deployment: str, pinned: dict[str, Any], asked: dict[str, Any]):
    """Deploy `flow` as `deployment` with the parameters `pinned`, then run a flow run of it that asks for
    `asked` (merged over them, as the API merges a run's parameters) here, as a worker would run it."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(flow_id=client.create_flow(flow), name=deployment, parameters=pinned)
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=asked)
    return run_flow(flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")


def flows() -> dict[str, tuple[Callable[[], Any], dict[str, Any]]]:
    from flows.adoption import baseline, drift_check
    from flows.restore import restore_snapshot
    from flows.rollback import rollback

    return {"rollback": (rollback, {"to": "0"}), "baseline": (baseline, {"through": "0001"}),
            "drift-check": (drift_check, {}), "restore": (restore_snapshot, {"snapshot_id": "rdsm-pinned-x"})}


@pytest.mark.parametrize("kind", ["rollback", "baseline", "drift-check", "restore"])
def test_a_run_for_another_environment_than_its_deployments_is_refused_before_anything(
        project: Path, database: Connection, kind: str) -> None:
    flow, parameters = flows()[kind]

    state = run_from_deployment(flow, f"{kind}-pinned", {"environment": "pinned"},
                                {"environment": "other", **parameters})

    assert state.is_failed(), state
    assert (f"deployment {flow.name}/{kind}-pinned runs environment pinned only (it has pinned's AWS role); this "
            "run asked for other: nothing was done") in state.message
    assert tables(database) == set()  # a baseline would have recorded 0001 as applied: nothing was written


def test_a_run_for_its_deployments_own_environment_runs(project: Path, database: Connection) -> None:
    from flows.adoption import baseline

    state = run_from_deployment(baseline, "baseline-pinned-own", {"environment": "pinned"},
                                {"environment": "pinned", "through": "0001"})

    assert state.is_completed(), state.message
    assert tables(database) != set()  # recorded: the pin lets its own environment through


def test_the_kinds_rds_migrations_trigger_refuses_first_are_the_flows_that_refuse() -> None:
    """`rds-migrations trigger` refuses another environment before creating a run of these kinds only
    (parameters.PINNED_KINDS): exactly the flows refusing it above."""
    from tasks.engine.runs.parameters import PINNED_KINDS

    assert set(flows()) == PINNED_KINDS
