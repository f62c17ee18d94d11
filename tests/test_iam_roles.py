"""The shipped IAM roles (deployments/iam/) against the calls their flows make: each flow runs over real HTTP to
the AWS emulator through the production code, every call is recorded, and each must be one an Allow statement
of the role lists. (The emulator cannot enforce the roles' resource scopes: it checks actions only, so the
actions are what is compared here; test_deploy_config.py checks the scopes.)"""

from __future__ import annotations

import json
import logging
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import yaml

from tasks.engine.aws import aws_client
from tasks.engine.credentials import read_secrets_manager
from tasks.engine.environments import AwsSettings
from tasks.engine.runs.refresh import restore_snapshot
from tasks.engine.runs.steps import DirectSteps
from tests import test_refresh as shared
from tests.test_refresh import PROJECT, Aws, rds_environments, rds_refresh

aws = shared.aws  # the emulated account of the refresh tests: production, staging, two production snapshots
SNAPSHOT = "rdsm-production-aaaaaaa-20261123t010000"


def allowed_actions(role: str) -> list[str]:
    document = json.loads((PROJECT / "deployments/iam" / f"{role}.json").read_text())
    return [action for statement in document["Statement"] if statement["Effect"] == "Allow"
            for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])]


def refused(role: str, actions: set[str]) -> set[str]:
    allowed = allowed_actions(role)
    return {action for action in actions if not any(fnmatchcase(action, pattern) for pattern in allowed)}


def recorded(client, actions: set[str], calls: list[tuple[str, dict]] | None = None):
    """`client`, recording the IAM action of every call it makes (`rds:RestoreDBInstanceFromDBSnapshot`), and into
    `calls` each with its parameters."""
    prefix = client.meta.service_model.signing_name

    def record(model, params: dict, **kwargs: object) -> None:
        actions.add(f"{prefix}:{model.name}")
        if calls is not None:
            calls.append((f"{prefix}:{model.name}", dict(params)))

    client.meta.events.register(f"before-parameter-build.{client.meta.service_model.service_name}.*", record)
    return client


def environments_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, *names: str) -> None:
    """An environments file naming the emulator's instance `app-<name>` and its secret, for each of `names` (each
    its own tier: staging or production)."""
    (tmp_path / "environments.toml").write_text("".join(f"""
[environments.{name}]
tier = "{name}"
aws = {{ region = "eu-west-1", endpoint_url = "{endpoint}" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/app-{name}" }}
snapshot = {{ kind = "rds_instance", instance_id = "app-{name}" }}
notify = {{ kind = "console" }}
""" for name in names))
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))


@pytest.fixture
def production(aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environments file naming the emulator's production instance, with its secret."""
    environments_file(tmp_path, monkeypatch, aws.endpoint, "production")


def test_the_restore_role_allows_every_call_a_restore_of_production_makes(aws: Aws, production: None,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """What every failure notification tells an operator to run. An RDS restore calls the RDS API alone: it
    used to read the database's secret first, which the restore role (rightly) may not."""
    boto3_session = aws_client("secretsmanager", AwsSettings(region="eu-west-1", endpoint_url=aws.endpoint))
    boto3_session.create_secret(Name="rds/app-production", SecretString=json.dumps(
        {"username": "app", "password": "production-PW-1", "host": "h", "port": 5432, "dbname": "app"}))
    actions: set[str] = set()
    steps = DirectSteps(make_client=lambda service, settings: recorded(aws_client(service, settings), actions))

    with caplog.at_level(logging.INFO):
        summary = restore_snapshot("production", SNAPSHOT, steps, git_sha="abc1234")

    assert summary.outcome == "succeeded" and summary.result.live == "app-production"
    assert "rds:RestoreDBInstanceFromDBSnapshot" in actions and "rds:ModifyDBInstance" in actions
    assert refused("restore-production", actions) == set(), sorted(actions)
    assert f"{SNAPSHOT} of app-production" in caplog.text and "UTC, as asked)" in caplog.text  # not "newest"


def test_the_refresh_role_allows_every_call_a_refresh_and_its_staging_migration_make(aws: Aws) -> None:
    """The nightly refresh restores production's snapshot into staging's names, masks it, then migrates staging
    to head as a staging run does, reading staging's secret. It takes no snapshot of staging (the refresh is the
    way back), so the role may not: least privilege."""
    actions: set[str] = set()
    recorded(aws.rds, actions)
    target, source = rds_environments(aws.endpoint)
    rds_refresh(aws, target, source)
    secrets = recorded(aws_client("secretsmanager", target.aws), actions)
    secrets.create_secret(Name="rds/app-staging", SecretString=json.dumps(
        {"username": "app", "password": "staging-PW-2", "host": "h", "port": 5432, "dbname": "app"}))
    actions.discard("secretsmanager:CreateSecret")  # the test's own
    read_secrets_manager(target.credentials, secrets)

    assert {"rds:RestoreDBInstanceFromDBSnapshot", "secretsmanager:GetSecretValue"} <= actions, sorted(actions)
    assert "rds:CreateDBSnapshot" not in actions, sorted(actions)
    assert refused("refresh-staging", actions) == set(), sorted(actions)
    assert refused("refresh-staging", {"rds:CreateDBSnapshot"}) == {"rds:CreateDBSnapshot"}
    # A secret under a customer-managed key is decrypted through Secrets Manager, as the staging run's role does.
    assert {"kms:Decrypt"} <= set(allowed_actions("refresh-staging")) & set(allowed_actions("migrate-staging"))


def out_of_scope(role: str, calls: list[tuple[str, dict]]) -> set[str]:
    """The calls of a restore whose resource (`db:NAME`, `snapshot:NAME`) no Allow statement of `role` lists for
    that action: what IAM would refuse (the emulator does not)."""
    statements = [s for s in json.loads((PROJECT / "deployments/iam" / f"{role}.json").read_text())["Statement"]
                  if s["Effect"] == "Allow"]
    refused_calls = set()
    for action, params in calls:
        operation = action.split(":")[1]
        if operation == "RestoreDBInstanceFromDBSnapshot":
            touched = [f"db:{params['DBInstanceIdentifier']}", f"snapshot:{params['DBSnapshotIdentifier']}"]
        elif operation in ("ModifyDBInstance", "DeleteDBInstance"):
            touched = [f"db:{params['DBInstanceIdentifier']}"]
        elif operation == "AddTagsToResource":
            touched = [params["ResourceName"].split(":", 5)[5]]  # arn:aws:rds:REGION:ACCOUNT:db:NAME
        else:
            continue  # describe and list: Resource "*"
        for resource in touched:
            if not any(fnmatchcase(action, a) and fnmatchcase(resource, r.split(":", 5)[5])
                       for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
                       for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])):
                refused_calls.add(f"{action} on {resource}")
    return refused_calls


ECS_RESTORES = [d for d in yaml.safe_load((PROJECT / "deployments/prefect.ecs.yaml").read_text())["deployments"]
                if d["entrypoint"] == "flows/restore.py:restore_snapshot"]


@pytest.mark.parametrize("deployment", ECS_RESTORES, ids=[d["name"] for d in ECS_RESTORES])
def test_each_restore_deployments_role_allows_a_restore_of_its_environment_and_not_of_another(
        aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deployment: dict) -> None:
    """The restore deployment's pinned environment restored with its role: every call's action and resource
    allowed. The other environment's restore role would be refused it: a deployment must carry its own."""
    environment = deployment.get("parameters", {}).get("environment")
    assert environment in ("staging", "production"), f"{deployment['name']} pins no environment, yet has one's role"
    role = deployment["work_pool"]["job_variables"]["task_role_arn"].removeprefix("{{ $RDS_MIGRATIONS_ROLES }}")
    other = {"staging": "production", "production": "staging"}[environment]
    environments_file(tmp_path, monkeypatch, aws.endpoint, "staging", "production")
    snapshot = f"rdsm-{environment}-ccccccc-20261125t010000"
    aws.rds.create_db_snapshot(DBSnapshotIdentifier=snapshot, DBInstanceIdentifier=f"app-{environment}")
    actions: set[str] = set()
    calls: list[tuple[str, dict]] = []

    def client(service, settings):
        return recorded(aws_client(service, settings), actions, calls)

    summary = restore_snapshot(environment, snapshot, DirectSteps(make_client=client), git_sha="abc1234")

    assert summary.outcome == "succeeded" and summary.result.live == f"app-{environment}"
    assert refused(role, actions) == set(), calls
    assert out_of_scope(role, calls) == set(), calls
    assert out_of_scope(f"restore-{other}", calls), f"restore-{other} would have been allowed {environment}'s restore"
