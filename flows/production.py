"""The production flow: triggered through the Prefect API (GitHub Actions on a push to main).

Stricter than staging: the environment must be tier "production", its policy must require a snapshot and
lint findings must block.
"""

from __future__ import annotations

from functools import partial

from prefect import flow

from flows.approval import request_approval
from flows.exclusive import one_run_per_environment
from flows.pipeline import run_pipeline
from tasks.environments import ConfigError, Environment, load_environment
from tasks.notify import RunSummary


def check_production_policy(env: Environment) -> None:
    if env.tier != "production":
        raise ConfigError(f"environment {env.name!r} is tier {env.tier!r}: run it with the staging flow")
    if not env.policy.snapshot_required:
        raise ConfigError(f"environment {env.name!r}: production requires policy.snapshot_required = true")
    if env.policy.lint_blocks_on == "never":
        raise ConfigError(f"environment {env.name!r}: production requires lint findings to block")


@flow(name="migrate-production")
def production(
    git_sha: str = "unknown",
    dry_run: bool = False,
    target: str | None = None,
    environment: str = "production",
    migrations_dir: str = "migrations",
    trigger: str = "github",
) -> RunSummary:
    """Validate, snapshot (always, when something is pending), migrate and notify production.

    Args:
        git_sha: the commit whose migrations/ directory is being applied.
        dry_run: validate and plan only; nothing is snapshotted or applied.
        target: apply up to and including this migration id or version number.
        environment: an environment of tier "production" in deployments/environments.toml.
        migrations_dir: the migrations directory, relative to the project.
        trigger: who asked for this run ("github", "manual", "cli").
    """
    env = load_environment(environment)
    check_production_policy(env)
    approve = None
    if env.policy.approval_required:
        approve = partial(request_approval, env.name, timeout_seconds=env.policy.approval_timeout_seconds)
    with one_run_per_environment(env.name):
        return run_pipeline(env, git_sha=git_sha, dry_run=dry_run, target=target, migrations_dir=migrations_dir,
                            trigger=trigger, approve=approve)
