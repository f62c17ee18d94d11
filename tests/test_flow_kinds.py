"""Every flow of ours is a kind of run in the one table (tasks/engine/runs/kinds.py) that the run.completed event,
a crashed run's report, a refresh's summary and the automations read: a new flow cannot be forgotten there."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import yaml
from prefect import Flow

import flows
from tasks.engine.runs.kinds import FLOW_KINDS

PROJECT = Path(__file__).resolve().parents[1]


def flows_of_the_package() -> set[str]:
    found = set()
    for module in pkgutil.iter_modules(flows.__path__):
        loaded = importlib.import_module(f"flows.{module.name}")
        found |= {value.name for value in vars(loaded).values() if isinstance(value, Flow)}
    return found


def test_every_flow_deployed_or_defined_has_a_kind_and_every_kind_a_flow() -> None:
    from prefect.flows import load_flow_from_entrypoint

    deployed = {load_flow_from_entrypoint(str(PROJECT / d["entrypoint"])).name
                for d in yaml.safe_load((PROJECT / "prefect.yaml").read_text())["deployments"]}
    defined = flows_of_the_package()
    assert deployed <= defined and "migrate-staging" in defined
    assert set(FLOW_KINDS) == defined, "give each flow its kind of run in tasks/engine/runs/kinds.py"
