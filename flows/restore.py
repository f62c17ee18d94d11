"""The restore flow: one of an environment's snapshots restored to a NEW name and swapped in by renames.

Any tier: this is how production comes back after a bad migration (the failure notification of the
production flow names the snapshot). The replaced copy is kept as `<id>-old-<time>`; nothing is ever
restored onto the live name.
"""

from __future__ import annotations

import time

from prefect import flow

from flows.exclusive import one_run_per_environment
from flows.pipeline import GIT_SHA, check_parameters
from tasks.environments import ENVIRONMENT_NAME, Environment, load_environment
from tasks.refresh import (
    SNAPSHOT_ID,
    RefreshSummary,
    SwapResult,
    check_snapshot_id,
    notify_refresh_task,
    restore_task,
    shown_parameters,
    summarize,
)
from tasks.secrets import fetch_secret


@flow(name="restore-snapshot")
def restore_snapshot(environment: str, snapshot_id: str, git_sha: str = "unknown") -> RefreshSummary:
    """Restore `snapshot_id` next to the environment's database, swap names, keep the old copy, notify.

    Args:
        environment: the environment whose database is replaced (deployments/environments.toml).
        snapshot_id: one of this environment's snapshots: an RDS DB or cluster snapshot id, or (local kind)
            a dump's name in its snapshots directory, without `.dump`.
        git_sha: the commit the restored database should match, for the record.
    """
    parameters = shown_parameters({"environment": environment, "snapshot_id": snapshot_id, "git_sha": git_sha},
                                  {"environment": ENVIRONMENT_NAME, "snapshot_id": SNAPSHOT_ID, "git_sha": GIT_SHA})
    started, step = time.monotonic(), "parameters"
    env: Environment | None = None
    result: SwapResult | None = None
    error: Exception | None = None
    try:
        env = load_environment(environment)
        check_parameters(git_sha, "manual", None, "migrations")
        check_snapshot_id(snapshot_id)
        with one_run_per_environment(env.name):
            step = "fetch-secret"
            connection = fetch_secret(env)
            step = "restore"
            result = restore_task(env, snapshot_id, connection)
    except Exception as exc:  # noqa: BLE001 - announced, then re-raised below
        error = exc

    summary = summarize("restore", environment, env.tier if env else "unknown", parameters, result=result,
                        failed_step=step, error=error, duration_seconds=time.monotonic() - started)
    if env is not None:
        notify_refresh_task(env.notify, summary)
    if error is not None:
        raise error
    return summary
