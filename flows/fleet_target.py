"""The migrate-target flow: ONE target of a fleet, started by a distributed migrate-fleet run through its
deployment (so targets spread over every worker of the pool). Its parameters are names only; it reads the
target's credentials itself. It ends Failed when the target failed; its final state's message is the target's
result as JSON (names, ids and secret-free error text), which the fleet run reads back."""

from __future__ import annotations

import json

from prefect import flow
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, Failed, State

from flows.budget import within_budget
from flows.exclusive import slot
from flows.observe import short_sha
from flows.steps import PrefectSteps
from tasks.engine.environments import ENVIRONMENT_NAME, load_environment
from tasks.engine.fleet.config import TARGET_NAME
from tasks.engine.runs.fleet import migrate_one_target

# Bounds the targets being migrated at once, across every fleet run, in either mode.
FLEET_LIMIT = "rds-migrations-fleet"


def target_run_name() -> str:
    """`<environment>-<target>-<sha7>`; a value that is not a name is not repeated."""
    parameters = current_flow_run.parameters
    environment, target = parameters.get("environment"), parameters.get("target_name")
    environment = environment if isinstance(environment, str) and ENVIRONMENT_NAME.match(environment) else "invalid"
    target = target if isinstance(target, str) and TARGET_NAME.match(target) else "invalid"
    return f"{environment}-{target}-{short_sha(parameters.get('git_sha', 'unknown'))}"


@flow(name="migrate-target", flow_run_name=target_run_name)
def migrate_target_flow(
    environment: str,
    target_name: str,
    git_sha: str = "unknown",
    target: str | None = None,
    migrations_dir: str = "migrations",
    trigger: str = "fleet",
    dry_run: bool = False,
) -> State:
    """Plan, snapshot and migrate one target of an environment's fleet (the fleet run rehearsed the files).

    Args:
        environment: an environment with a fleet in deployments/environments.toml.
        target_name: the target: a database, or an instance or cluster identifier.
        git_sha: the commit whose migrations/ directory is being applied.
        target: apply up to and including this migration id or version number.
        migrations_dir: the migrations directory, relative to the project.
        trigger: who asked ("fleet" when a migrate-fleet run started it).
        dry_run: plan only; nothing is snapshotted or applied (a dry fleet run's targets are dry too).
    """
    steps = PrefectSteps()
    with within_budget(environment), slot(FLEET_LIMIT):
        result = migrate_one_target(
            load_environment(environment),
            target_name,
            steps,
            steps.client,
            git_sha=git_sha,
            target=target,
            migrations_dir=migrations_dir,
            trigger=trigger,
            dry_run=dry_run,
        )
    message = json.dumps(result.to_json())
    return (
        Failed(message=message, data=result) if result.outcome == "failed" else Completed(message=message, data=result)
    )
