"""The staging refresh and the restore, as runs:

    refresh: fetch-secret → plan-refresh → snapshot (newest of the source, or a fresh one) → refresh
             (restore, mask, swap) → migrate (the staging run, unannounced, without a snapshot: the copy it
             would snapshot is the one just made) → notify (one message: what was refreshed and what was
             migrated, or where it failed)
    restore: fetch-secret → restore (to a new name, then swap; the old copy kept) → notify

Notify always runs; the run ends in the error when a step failed. Every name a refresh creates, renames or
deletes is checked before the call (snapshots/swap.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from tasks.engine.environments import ENVIRONMENT_NAME, ConsoleNotify, Environment, SlackNotify, load_environment
from tasks.engine.errors import ConfigError, Interrupted, RdsMigrationsError
from tasks.engine.fleet.targets import one_database_environment
from tasks.engine.git import GIT_SHA_PARAMETER
from tasks.engine.messages import RefreshSummary, RunSummary, Summary, refresh_command, shown_parameters
from tasks.engine.runs.ended import Ended
from tasks.engine.runs.kinds import flow_of
from tasks.engine.runs.migration import run_migration
from tasks.engine.runs.parameters import TRIGGER, check_deployment_environment, check_parameters
from tasks.engine.runs.steps import Steps
from tasks.engine.snapshots.restore import SNAPSHOT_ID, check_snapshot_id
from tasks.engine.snapshots.swap import SwapResult, describe_error

MIGRATIONS_DIR = "migrations"
# Its way back is the refresh itself (restore, mask): a snapshot of the copy just made would cost minutes and
# a stored snapshot every night, for nothing.
NO_SNAPSHOT = "it was just restored from its source's snapshot and masked by this refresh: the way back is to run " \
              "the refresh again"


@dataclass
class Outcome:
    """What a refresh or restore has got to: the step it is in, and what each step returned."""

    step: str = "parameters"
    environment: Environment | None = None
    result: SwapResult | None = None
    applied: tuple[str, ...] | None = ()  # None: not known (the history could not be read)


def refresh_staging(name: str, steps: Steps, *, git_sha: str = "unknown", trigger: str = "schedule",
                    project_root: Path | None = None) -> RefreshSummary:
    """Refresh a staging environment from its source's snapshot, mask it, migrate it to head and notify."""
    parameters = shown_parameters({"environment": name, "git_sha": git_sha, "trigger": trigger},
                                  {"environment": ENVIRONMENT_NAME, "git_sha": GIT_SHA_PARAMETER, "trigger": TRIGGER})
    started, outcome = time.monotonic(), Outcome()
    with Ended(on_interrupt=lambda: _interrupted(outcome)) as ended:
        env = outcome.environment = load_environment(name)
        check_parameters(git_sha, trigger, None, MIGRATIONS_DIR)
        if env.refresh is None:
            raise ConfigError(f"environment {name!r} has no [refresh] section: it is never refreshed")
        source = load_environment(env.refresh.source_environment)
        with steps.exclusive(env.name):
            outcome.step = "fetch-secret"
            connection = steps.fetch_secret(env)
            outcome.step = "refresh"
            replacement = steps.plan_refresh(env, source, connection)
            outcome.step = "snapshot"
            if env.refresh.use_fresh_snapshot:
                steps.log.info("Taking a fresh snapshot of %s", source.name)
                # The RDS kinds never use the connection; the local kind dumps the source database.
                # Never created to be dumped: a source that does not exist is an error, not an empty staging.
                dump_from = steps.fetch_secret(source, create=False) if source.snapshot.kind == "pg_dump" \
                    else connection
                snapshot = steps.snapshot(source, dump_from, "refresh", trigger)
            else:
                snapshot = steps.newest_snapshot(source)
            steps.log.info("Refreshing %s from snapshot %s of %s (%s, git %s)", env.name, snapshot.identifier,
                           source.name, snapshot.created_at.isoformat(), git_sha)
            outcome.step = "refresh"
            outcome.result = steps.refresh(replacement, snapshot, connection)
            outcome.step = "migrate"
            _migrate(env, steps, outcome, git_sha=git_sha, trigger=trigger, project_root=project_root)
    return _announce("refresh", name, steps, parameters, outcome, ended, time.monotonic() - started)


class Unannounced:
    """The refresh's steps for its migrate step: the refresh announces what it refreshed and what it migrated in
    one message, so the migration run's own announcement is not made (nor its run.completed event)."""

    def __init__(self, steps: Steps) -> None:
        self._steps = steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._steps, name)

    def notify(self, target: SlackNotify | ConsoleNotify, summary: Summary) -> bool:
        return False


def _migrate(env: Environment, steps: Steps, outcome: Outcome, *, git_sha: str, trigger: str,
             project_root: Path | None) -> None:
    """Migrate the refreshed staging to head; what it applied goes into `outcome`, failed or not."""
    try:
        outcome.applied = run_migration(env, cast(Steps, Unannounced(steps)), git_sha=git_sha, dry_run=False,
                                        target=None, migrations_dir=MIGRATIONS_DIR, trigger=trigger,
                                        project_root=project_root, no_snapshot=NO_SNAPSHOT).applied
    except RdsMigrationsError as exc:
        if isinstance(exc.result, RunSummary):
            outcome.applied = exc.result.applied
        raise


def restore_snapshot(name: str, snapshot_id: str, steps: Steps, *, git_sha: str = "unknown") -> RefreshSummary:
    """Restore `snapshot_id` next to the environment's database, swap names, keep the old copy, notify."""
    parameters = shown_parameters({"environment": name, "snapshot_id": snapshot_id, "git_sha": git_sha},
                                  {"environment": ENVIRONMENT_NAME, "snapshot_id": SNAPSHOT_ID,
                                   "git_sha": GIT_SHA_PARAMETER})
    started, outcome = time.monotonic(), Outcome()
    with Ended(on_interrupt=lambda: _interrupted(outcome)) as ended:
        env = outcome.environment = one_database_environment(name)
        check_parameters(git_sha, "manual", None, MIGRATIONS_DIR)
        check_snapshot_id(snapshot_id)
        check_deployment_environment(env.name, steps)
        with steps.exclusive(env.name):
            # The RDS kinds restore and rename through the RDS API alone: the database's secret is read (and the
            # restore role may read it) only for the local kind, which restores into the database's server.
            outcome.step = "fetch-secret"
            connection = steps.fetch_secret(env) if env.snapshot.kind == "pg_dump" else None
            outcome.step = "restore"
            outcome.result = steps.restore(env, snapshot_id, connection)
    return _announce("restore", name, steps, parameters, outcome, ended, time.monotonic() - started)


def _interrupted(outcome: Outcome) -> Interrupted:
    """Ctrl-C outside the restore-and-swap, which says itself where its copies are (swap.ended_in)."""
    said = f"interrupted (Ctrl-C) at step {outcome.step}"
    if outcome.result is None:
        return Interrupted(f"{said}: nothing was replaced")
    return Interrupted(f"{said}: {outcome.result.live} was replaced by the refreshed copy, which was not migrated "
                       "to head: run the environment's staging migration")


def _announce(action: Literal["refresh", "restore"], name: str, steps: Steps,
              parameters: tuple[tuple[str, str], ...], outcome: Outcome, ended: Ended,
              duration: float) -> RefreshSummary:
    """Summarize, notify (when the environment is known, so is where to notify), then raise any error."""
    env, error = outcome.environment, ended.error
    info = steps.run_info()
    said = describe_error(error) if error else None
    if said and outcome.step == "migrate" and outcome.result is not None:
        # The refreshed copy is live and production untouched: the way back is the next refresh, not a restore
        # (its migrate step took no snapshot; the source's snapshot restored as is would skip the masking).
        said += (f"\n{outcome.result.live} is the refreshed, masked copy, not migrated to head (production was "
                 "not touched; nothing needs restoring): fix the migration, then run the environment's staging "
                 f"migration, or the refresh again: {refresh_command(name, info.deployment)}")
    summary = RefreshSummary(
        action=action, environment=name, tier=env.tier if env else ("staging" if action == "refresh" else "unknown"),
        outcome="failed" if error else "succeeded", failed_step=outcome.step if error else None,
        error=said, result=outcome.result, applied=outcome.applied,
        deployment=info.deployment, flow_name=info.flow_name or flow_of(action), parameters=parameters,
        duration_seconds=duration, run_url=info.run_url,
    )
    if env is not None:
        steps.notify(env.notify, summary)
    ended.raise_if_failed()
    return summary

