"""The staging refresh flow (scheduled nightly): staging replaced by a masked copy of production's newest
snapshot, then migrated to head, then a notification — on success and on failure."""

from __future__ import annotations

import time

from prefect import flow

from flows.exclusive import one_run_per_environment
from flows.pipeline import GIT_SHA, TRIGGER, check_parameters, run_pipeline
from tasks.environments import ENVIRONMENT_NAME, ConfigError, Environment, load_environment
from tasks.refresh import (
    RefreshSummary,
    SwapResult,
    notify_refresh_task,
    refresh_task,
    shown_parameters,
    summarize,
)
from tasks.secrets import fetch_secret

MIGRATIONS_DIR = "migrations"


@flow(name="refresh-staging")
def refresh_staging(
    environment: str = "staging", git_sha: str = "unknown", trigger: str = "schedule"
) -> RefreshSummary:
    """Refresh a staging environment from production, mask it, migrate it to head and notify.

    A failure before the swap leaves the old staging untouched; the flow run then ends Failed after the
    notification (which names this deployment and its parameters).

    Args:
        environment: an environment of tier "staging" with a [refresh] section in deployments/environments.toml.
        git_sha: the commit whose migrations/ directory staging is migrated to afterwards.
        trigger: who asked for this run ("schedule", "manual", "cli").
    """
    parameters = shown_parameters({"environment": environment, "git_sha": git_sha, "trigger": trigger},
                                  {"environment": ENVIRONMENT_NAME, "git_sha": GIT_SHA, "trigger": TRIGGER})
    started, step = time.monotonic(), "parameters"
    env: Environment | None = None
    result: SwapResult | None = None
    applied: tuple[str, ...] = ()
    error: Exception | None = None
    try:
        env = load_environment(environment)
        check_parameters(git_sha, trigger, None, MIGRATIONS_DIR)
        if env.refresh is None:
            raise ConfigError(f"environment {environment!r} has no [refresh] section: it is never refreshed")
        source = load_environment(env.refresh.source_environment)
        with one_run_per_environment(env.name):
            step = "fetch-secret"
            connection = fetch_secret(env)
            step = "refresh"
            result = refresh_task(env, source, connection, git_sha=git_sha, trigger=trigger)
            step = "migrate"
            applied = run_pipeline(env, git_sha=git_sha, dry_run=False, target=None, migrations_dir=MIGRATIONS_DIR,
                                   trigger=trigger).applied
    except Exception as exc:  # noqa: BLE001 - announced, then re-raised below
        error = exc

    summary = summarize("refresh", environment, env.tier if env else "staging", parameters, result=result,
                        applied=applied, failed_step=step, error=error, duration_seconds=time.monotonic() - started)
    if env is not None:
        notify_refresh_task(env.notify, summary)
    if error is not None:
        raise error
    return summary
