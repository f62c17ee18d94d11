"""prefect.yaml (and its ECS twin), the GitHub workflows, the README and the IAM policies agree with the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).parents[1]
WORKFLOWS = sorted((PROJECT / ".github" / "workflows").glob("*.yml"))
PREFECT_YAML = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in PREFECT_YAML["deployments"]}


def flow_of(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(PROJECT / entrypoint))


def test_workflows_validate_offline_against_the_github_schema() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
                            capture_output=True, text=True)
    assert len(WORKFLOWS) >= 3
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_every_entrypoint_imports_and_names_a_flow(name: str) -> None:
    flow = flow_of(DEPLOYMENTS[name]["entrypoint"])
    assert flow.name.startswith(("migrate-", "refresh-", "restore-")) or flow.name in {"rollback", "baseline",
                                                                                       "drift-check"}
    parameters = set(flow.parameters.properties)
    assert set(DEPLOYMENTS[name].get("parameters", {})) <= parameters


def test_every_deployment_a_workflow_runs_exists() -> None:
    named = {f"{flow_of(d['entrypoint']).name}/{d['name']}" for d in DEPLOYMENTS.values()}
    runs = set()
    for workflow in WORKFLOWS:
        runs |= set(re.findall(r"'([a-z-]+/[a-z-]+)'", workflow.read_text()))
    assert {"migrate-production/production", "migrate-staging/staging"} <= runs
    assert runs <= named


def test_every_cli_command_in_workflows_and_readme_exists() -> None:
    from flows.cli import command_table

    commands = set(command_table())
    texts = [w.read_text() for w in WORKFLOWS] + [(PROJECT / "README.md").read_text()]
    used = {c for text in texts for c in re.findall(r"rds-migrations ([a-z][a-z-]+)", text)}
    assert used and used <= commands, used - commands


def test_the_push_trigger_watches_migrations_and_its_own_file() -> None:
    migrate = yaml.safe_load((PROJECT / ".github/workflows/migrate.yml").read_text())
    paths = migrate[True]["push"]["paths"]  # YAML 1.1 reads the key `on` as True
    assert "migrations/**" in paths and ".github/workflows/migrate.yml" in paths
    assert "rds-migrations trigger" in (PROJECT / ".github/workflows/migrate.yml").read_text()
    for workflow in WORKFLOWS:
        data = yaml.safe_load(workflow.read_text())
        assert data["permissions"] == {"contents": "read"}
        assert all("timeout-minutes" in job for job in data["jobs"].values())


def test_prefect_yaml_policies() -> None:
    assert DEPLOYMENTS["production"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    schedule = DEPLOYMENTS["staging-refresh"]["schedules"][0]
    assert schedule["cron"] and schedule["timezone"]
    assert "git_clone" in json.dumps(PREFECT_YAML["pull"])
    # What writes to a database runs one at a time per deployment; a read-only check needs no slot.
    writers = {n for n in DEPLOYMENTS if n in ("staging", "production", "staging-refresh")
               or n.startswith(("restore-", "rollback-", "baseline-"))}
    assert len(writers) == 9, writers
    for name in DEPLOYMENTS:
        if name in writers:
            assert DEPLOYMENTS[name]["concurrency_limit"]["limit"] == 1, name
        if name.startswith("baseline-"):
            assert DEPLOYMENTS[name]["parameters"]["dry_run"] is True  # adopting is tried before it is done
    assert DEPLOYMENTS["production-drift-check"]["schedules"][0]["cron"]


def policy(name: str) -> dict:
    return json.loads((PROJECT / "deployments/iam" / name).read_text())


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_github_oidc_trust_is_pinned_to_the_environment(environment: str) -> None:
    (statement,) = policy(f"github-oidc-trust-{environment}.json")["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    condition = statement["Condition"]["StringEquals"]
    assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert condition["token.actions.githubusercontent.com:sub"].endswith(f":environment:{environment}")
    assert "StringLike" not in statement["Condition"]


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_migrate_role_is_least_privilege(environment: str) -> None:
    statements = policy(f"migrate-{environment}.json")["Statement"]
    actions = {a for s in statements for a in s["Action"]}
    assert not any(a.endswith("*") for a in actions)
    assert not any(a.startswith(("rds:Delete", "rds:Modify", "rds:Restore")) for a in actions)
    writes = [s for s in statements if any(a.startswith("rds:Create") or a.startswith("rds:Add") for a in s["Action"])]
    assert all(r != "*" for s in writes for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]))
    secret = next(s for s in statements if "secretsmanager:GetSecretValue" in s["Action"])
    assert f"app-{environment}" in secret["Resource"]


def test_refresh_role_denies_production_explicitly() -> None:
    statements = policy("refresh-staging.json")["Statement"]
    deny = [s for s in statements if s["Effect"] == "Deny"]
    assert deny and all("app-production" in r for s in deny for r in s["Resource"])
    for s in statements:
        if s["Effect"] == "Allow" and {"rds:DeleteDBInstance", "rds:ModifyDBInstance"} & set(s["Action"]):
            assert "app-staging" in s["Resource"] and "production" not in s["Resource"]


ECS_YAML = yaml.safe_load((PROJECT / "deployments/prefect.ecs.yaml").read_text())


def test_the_ecs_file_deploys_the_same_deployments_on_the_ecs_pool() -> None:
    """Everything but the pool and its job variables is prefect.yaml's: the two files cannot drift apart."""
    ecs = {d["name"]: d for d in ECS_YAML["deployments"]}
    assert sorted(ecs) == sorted(DEPLOYMENTS)
    for name, deployment in DEPLOYMENTS.items():
        same = {k: v for k, v in deployment.items() if k != "work_pool"}
        assert {k: v for k, v in ecs[name].items() if k != "work_pool"} == same, name
        pool = ecs[name]["work_pool"]
        assert pool["name"] == "rds-migrations-ecs" and pool["job_variables"]["image"] == "{{ image-name.stdout }}"
        role = pool["job_variables"]["task_role_arn"].removeprefix("{{ $RDS_MIGRATIONS_ROLES }}")
        assert (PROJECT / "deployments/iam" / f"{role}.json").is_file(), name
    assert ECS_YAML["pull"] == PREFECT_YAML["pull"]


def allowed_resources(role: str) -> list[str]:
    return [resource for s in policy(f"{role}.json")["Statement"] if s["Effect"] == "Allow"
            for resource in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]


@pytest.mark.parametrize("name", sorted(d["name"] for d in ECS_YAML["deployments"]))
def test_a_deployment_that_takes_an_environment_pins_it_and_runs_with_that_environments_role(name: str) -> None:
    """A role made for one environment (`<what>-<environment>`, deployments/iam/) serves only a deployment pinned
    to that environment: a rollback of staging with production's role would read production's secret and be
    refused staging's. The flow refuses a run for another environment than its deployment's
    (tests/test_pinned_environment.py). A fleet's role (`migrate-fleet`) is the fleet environments'."""
    from tasks.engine.environments import load_environments

    deployment = {d["name"]: d for d in ECS_YAML["deployments"]}[name]
    role = deployment["work_pool"]["job_variables"]["task_role_arn"].removeprefix("{{ $RDS_MIGRATIONS_ROLES }}")
    environments = load_environments(PROJECT / "deployments/environments.toml")
    made_for = role.rsplit("-", 1)[1]
    if made_for not in environments:
        assert role == "migrate-fleet" and "fleet" in deployment["tags"], (name, role)
        return
    if "environment" in flow_of(deployment["entrypoint"]).parameters.properties:
        assert deployment.get("parameters", {}).get("environment") == made_for, \
            f"{name} runs with {role}, {made_for}'s role, so it must pin environment = {made_for}"
    # ...and the role reaches that environment's database alone, never another's.
    reached = {m for resource in allowed_resources(role) for m in re.findall(r"app-([a-z]+)", resource)}
    assert reached == {made_for}, (role, reached)
    assert environments[made_for].snapshot.instance_id == f"app-{made_for}"


def test_the_restore_command_names_each_environments_own_restore_deployment() -> None:
    """What a failure notification tells an operator to run (tasks/engine/messages.py) exists, pinned."""
    from tasks.engine.messages import restore_commands

    for config in (PREFECT_YAML, ECS_YAML):
        deployments = {d["name"]: d for d in config["deployments"]}
        for environment in ("staging", "production"):
            words = restore_commands(environment, "rdsm-x")[1].split()
            flow_name, deployment = words[words.index("run") + 1].split("/")
            assert flow_of(deployments[deployment]["entrypoint"]).name == flow_name
            assert deployments[deployment]["parameters"]["environment"] == environment


def test_the_ecs_build_and_push_steps_build_the_dockerfile_and_name_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    """Prefect's own step runner runs the build and push steps, with `docker` a script that records its
    arguments (no Docker engine here); the image the deployments get is the one pushed."""
    import asyncio

    from prefect.deployments.steps.core import run_steps
    from prefect.utilities.templating import apply_values

    calls = tmp_path / "docker-calls"
    docker = tmp_path / "bin" / "docker"
    docker.parent.mkdir()
    docker.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{docker.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("RDS_MIGRATIONS_IMAGE", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-migrations")
    monkeypatch.setenv("RDS_MIGRATIONS_IMAGE_TAG", "0a1b2c3d4e5f")
    monkeypatch.chdir(PROJECT)
    outputs = asyncio.run(run_steps(ECS_YAML["build"] + ECS_YAML["push"], print_function=lambda *a, **k: None))
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rds-migrations:0a1b2c3d4e5f"
    assert calls.read_text().splitlines() == [f"build --platform linux/amd64 --tag {image} .", f"push {image}"]
    assert (PROJECT / "Dockerfile").is_file()
    job = apply_values(ECS_YAML["deployments"][0]["work_pool"]["job_variables"], outputs)
    assert job["image"] == image


def test_the_fleet_role_deletes_only_snapshots_it_tagged_and_snapshots_only_fleet_instances() -> None:
    statements = policy("migrate-fleet.json")["Statement"]
    actions = {a for s in statements for a in s["Action"]}
    assert not any(a.endswith("*") for a in actions)
    assert not any(a.startswith(("rds:Modify", "rds:Restore")) for a in actions)
    [delete] = [s for s in statements if "rds:DeleteDBSnapshot" in s["Action"]]
    assert delete["Action"] == ["rds:DeleteDBSnapshot"] and delete["Resource"].endswith(":snapshot:rdsm-tenants-*")
    assert delete["Condition"]["StringEquals"] == {"rds:snapshot-tag/rds-migrations:managed-by": "rds-migrations"}
    on_instances = [s for s in statements if "rds:CreateDBSnapshot" in s["Action"] and ":db:" in s["Resource"]]
    assert on_instances and all(s["Condition"]["StringEquals"] for s in on_instances)
