"""How a run's steps are carried out. The pipelines (migration.py, refresh.py) are written once against
`Steps`; flows/steps.py carries each step out as a Prefect task in a flow run (retries, logs, artifacts),
and `DirectSteps` calls the engine directly, for a person's terminal and CI when no Prefect API is there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.engine.connection import Connection
from tasks.engine.environments import AwsSettings, ConsoleNotify, Environment, Policy, SlackNotify
from tasks.engine.logs import Log
from tasks.engine.messages import Summary
from tasks.engine.migrations.baseline import BaselineReport, baseline
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.drift import DriftReport
from tasks.engine.migrations.report import ValidationReport
from tasks.engine.migrations.results import ApplyReport
from tasks.engine.migrations.rollback import RollbackReport
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.refresh import Replacement
from tasks.engine.snapshots.swap import SwapResult


@dataclass(frozen=True)
class RunInfo:
    """Where this run is recorded: its id (history rows, snapshot tags), its page, how to run it again."""

    run_id: str | None = None
    run_url: str | None = None
    flow_name: str | None = None
    deployment: str | None = None  # "<flow>/<deployment>" when it was started from a deployment


class Steps(Protocol):
    """One method per step of a pipeline; each takes and returns the typed values the diagram shows."""

    log: Log

    def run_info(self) -> RunInfo:
        """This run's id and links (empty outside Prefect)."""

    def pinned_environment(self) -> str | None:
        """The `environment` the run's deployment itself sets (its own record, which a run cannot change): the one
        environment that deployment's AWS role is for. None: no deployment, or one that pins none. Read only by
        the flows that check it (parameters.check_deployment_environment): it costs a call to the Prefect API."""

    def validate(self, migrations_dir: Path, project_root: Path, policy: Policy) -> tuple[Catalog, ValidationReport]:
        """Static checks and lint; `ValidationFailed` on errors."""

    def fetch_secret(self, environment: Environment, create: bool = True) -> Connection:
        """The environment's database credentials (`create`: an embedded database is created if new)."""

    def rehearse_and_plan(self, environment: Environment, catalog: Catalog, report: ValidationReport,
                          connection: Connection, target: str | None, dry_run: bool = False) -> ValidationReport:
        """The plan against the target and, when something is pending, the rehearsal (a dry run's never
        creates anything on the target's server)."""

    def approve(self, environment: Environment, report: ValidationReport, rollback: bool = False) -> str:
        """Wait for a person to approve the plan (with `rollback`: its pending migrations are to be undone); who
        approved, else `ApprovalDenied`."""

    def snapshot(self, environment: Environment, connection: Connection, git_sha: str, trigger: str,
                 reuse: bool = True, applied: tuple[str, ...] | None = None) -> Snapshot:
        """Take (or, with `reuse`, reuse this commit's, taken at the history `applied`) snapshot of the
        environment and wait until it is usable."""

    def migrate(self, connection: Connection, catalog: Catalog, policy: Policy, *, target: str | None,
                git_sha: str, environment: str, on_locked: Callable[[], None] | None = None) -> ApplyReport:
        """Apply the pending migrations under the migration lock (`on_locked`: called once it is taken)."""

    def plan_refresh(self, environment: Environment, source: Environment, connection: Connection) -> Replacement:
        """Check everything a refresh can before it creates anything."""

    def newest_snapshot(self, source: Environment) -> Snapshot:
        """The source environment's newest available snapshot."""

    def refresh(self, replacement: Replacement, snapshot: Snapshot, connection: Connection) -> SwapResult:
        """Restore, mask and swap in a refreshed copy."""

    def restore(self, environment: Environment, snapshot_id: str, connection: Connection | None) -> SwapResult:
        """Restore one of the environment's snapshots to a new name and swap it in (`connection`: the local
        kind's only)."""

    def rollback(self, connection: Connection, catalog: Catalog, policy: Policy, *, to: str, git_sha: str,
                 environment: str, planned: tuple[str, ...]) -> RollbackReport:
        """Undo the applied migrations after `to`, newest first, under the migration lock; refused, with nothing
        undone, when they are no longer what was `planned` (the plan that was shown)."""

    def baseline(self, environment: Environment, connection: Connection, catalog: Catalog, *, through: str | None,
                 tool: str | None, git_sha: str, dry_run: bool, schema: str | None = None) -> BaselineReport:
        """Record what the database already holds as applied, and keep its schema (migrations/baseline.py)."""

    def drift(self, environment: Environment, connection: Connection, catalog: Catalog, *,
              dry_run: bool = False) -> tuple[DriftReport, str]:
        """The live schema against what the applied migrations make; and where that came from (in a dry run,
        built where it creates nothing on the target's server)."""

    def notify(self, target: SlackNotify | ConsoleNotify, summary: Summary) -> bool:
        """Announce a run; never fails it."""

    def publish(self, key: str, markdown: str, description: str) -> None:
        """Keep a report where people look for it (a Prefect artifact; nowhere outside Prefect)."""

    def publish_table(self, key: str, rows: list[dict[str, object]], description: str) -> None:
        """Keep rows that a program reads back, as a run's crash hook does (a Prefect table artifact; nowhere
        outside Prefect)."""

    def exclusive(self, environment: str) -> AbstractContextManager[None]:
        """Hold the environment's one-run-at-a-time slot (a Prefect global concurrency limit under a
        deployment); the database's migration lock guards every run besides."""


class DirectSteps:
    """Every step as a plain call into the engine, logging to `log`. AWS clients come from the default
    credential chain (no Prefect blocks); Slack needs a block, so a Slack target falls back to the log."""

    def __init__(self, log: Log | None = None, project_root: Path | None = None,
                 make_client: Callable[[str, AwsSettings], Any] | None = None) -> None:
        from tasks.engine.aws import AwsClients

        self.log = log or logging.getLogger("rds_migrations")
        self.project_root = project_root
        self.clients = AwsClients(make_client) if make_client else AwsClients()

    def client(self, service: str, environment: Environment) -> Any:
        return self.clients.get(service, environment)

    def run_info(self) -> RunInfo:
        return RunInfo()

    def pinned_environment(self) -> str | None:
        return None

    def validate(self, migrations_dir: Path, project_root: Path, policy: Policy) -> tuple[Catalog, ValidationReport]:
        from tasks.engine.migrations.validation import validate

        return validate(migrations_dir, project_root, policy, log=self.log)

    def fetch_secret(self, environment: Environment, create: bool = True) -> Connection:
        from tasks.engine.credentials import fetch_connection

        connection = fetch_connection(environment, self.client("secretsmanager", environment), create=create)
        self.log.info("Credentials read from %s for %s", connection.source, connection.describe())
        return connection

    def rehearse_and_plan(self, environment: Environment, catalog: Catalog, report: ValidationReport,
                          connection: Connection, target: str | None, dry_run: bool = False) -> ValidationReport:
        from tasks.engine.migrations.validation import rehearse_and_plan

        return rehearse_and_plan(environment, catalog, report, connection, target, log=self.log, dry_run=dry_run)

    def approve(self, environment: Environment, report: ValidationReport, rollback: bool = False) -> str:
        from tasks.engine.errors import ApprovalDenied

        raise ApprovalDenied(f"environment {environment.name} requires approval, which needs a Prefect API: run it "
                             "through its deployment (or with --prefect); nothing was snapshotted or applied")

    def snapshot(self, environment: Environment, connection: Connection, git_sha: str, trigger: str,
                 reuse: bool = True, applied: tuple[str, ...] | None = None) -> Snapshot:
        from tasks.engine.snapshots.take import take_snapshot

        return take_snapshot(environment, connection, git_sha=git_sha, flow_run_id=None, trigger=trigger,
                             rds_client=self.client("rds", environment), log=self.log, reuse=reuse,
                             applied=applied)

    def migrate(self, connection: Connection, catalog: Catalog, policy: Policy, *, target: str | None,
                git_sha: str, environment: str, on_locked: Callable[[], None] | None = None) -> ApplyReport:
        from tasks.engine.migrations.apply import apply_pending

        report = apply_pending(connection, catalog, policy, target=target, git_sha=git_sha, run_id=None,
                               environment=environment, log=self.log, on_locked=on_locked)
        self.log.info("Applied %d migration(s) in %.1fs", len(report.applied), report.duration_seconds)
        return report

    def plan_refresh(self, environment: Environment, source: Environment, connection: Connection) -> Replacement:
        from tasks.engine.snapshots.refresh import plan_refresh

        return plan_refresh(environment, source, connection, rds_client=self.client("rds", environment),
                            project_root=self.project_root, log=self.log)

    def newest_snapshot(self, source: Environment) -> Snapshot:
        from tasks.engine.snapshots.refresh import newest_snapshot

        return newest_snapshot(source, self.client("rds", source))

    def refresh(self, replacement: Replacement, snapshot: Snapshot, connection: Connection) -> SwapResult:
        from tasks.engine.snapshots.refresh import refresh_from

        return refresh_from(replacement, snapshot, connection, log=self.log)

    def restore(self, environment: Environment, snapshot_id: str, connection: Connection | None) -> SwapResult:
        from tasks.engine.snapshots.restore import restore_environment

        return restore_environment(environment, snapshot_id, connection, rds_client=self.client("rds", environment),
                                   log=self.log)

    def rollback(self, connection: Connection, catalog: Catalog, policy: Policy, *, to: str, git_sha: str,
                 environment: str, planned: tuple[str, ...]) -> RollbackReport:
        from tasks.engine.migrations.rollback import roll_back_to

        report = roll_back_to(connection, catalog, policy, to, git_sha=git_sha, run_id=None, environment=environment,
                              log=self.log, planned=planned)
        self.log.info("Rolled back %d migration(s) in %.1fs", len(report.rolled_back), report.duration_seconds)
        return report

    def baseline(self, environment: Environment, connection: Connection, catalog: Catalog, *, through: str | None,
                 tool: str | None, git_sha: str, dry_run: bool, schema: str | None = None) -> BaselineReport:
        return environment_baseline(environment, connection, catalog, self.log, through=through, tool=tool,
                                    git_sha=git_sha, dry_run=dry_run, schema=schema)

    def drift(self, environment: Environment, connection: Connection, catalog: Catalog, *,
              dry_run: bool = False) -> tuple[DriftReport, str]:
        return environment_drift(environment, connection, catalog, self.log, dry_run=dry_run)

    def notify(self, target: SlackNotify | ConsoleNotify, summary: Summary) -> bool:
        from tasks.engine.notify import deliver

        return deliver(target, summary, post=None, log=self.log)

    def publish(self, key: str, markdown: str, description: str) -> None:
        """Outside Prefect the report is in the log already."""

    def publish_table(self, key: str, rows: list[dict[str, object]], description: str) -> None:
        """Outside Prefect no hook reads it back."""

    def exclusive(self, environment: str) -> AbstractContextManager[None]:
        return nullcontext()


def environment_drift(environment: Environment, connection: Connection, catalog: Catalog,
                      log: Log, *, dry_run: bool = False) -> tuple[DriftReport, str]:
    """The drift step's engine, for both kinds of steps: the reference is built (when not remembered) where
    the environment rehearses."""
    from tasks.engine.migrations.reference import check_drift
    from tasks.engine.migrations.rehearsal import rehearsal_place

    place = rehearsal_place(environment, connection, catalog.migrations, dry_run=dry_run, log=log)
    return check_drift(connection, catalog, place, environment.policy, log)


def environment_baseline(environment: Environment, connection: Connection, catalog: Catalog, log: Log, *,
                         through: str | None, tool: str | None, git_sha: str, dry_run: bool,
                         schema: str | None = None) -> BaselineReport:
    """The baseline step's engine, for both kinds of steps: what it records is replayed where the environment
    rehearses (baseline_replay.py), as drift's reference is built."""
    from tasks.engine.migrations.rehearsal import rehearsal_place

    return baseline(connection, catalog, environment.policy, through=through, tool=tool, git_sha=git_sha,
                    dry_run=dry_run, schema=schema, environment=environment.name, log=log,
                    place=lambda migrations: rehearsal_place(environment, connection, migrations, dry_run=dry_run,
                                                             log=log))
