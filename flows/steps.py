"""The pipelines' steps as Prefect tasks of the current flow run: each step a task run (retries, logs),
reports as artifacts (markdown, tables, progress; flows/observe.py) and events (flows/events.py), the run's
id and links from Prefect's runtime. The flow makes the AWS clients and hands them to the tasks; a task never
builds credentials."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run

from flows import events, observe
from flows.approval import request_approval
from flows.exclusive import one_run_per_environment
from tasks.adoption import baseline_task, drift_task
from tasks.aws import aws_client
from tasks.engine.aws import AwsClients
from tasks.engine.connection import Connection
from tasks.engine.environments import ConsoleNotify, Environment, Policy, SlackNotify
from tasks.engine.messages import Summary
from tasks.engine.migrations.baseline import BaselineReport
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.drift import DriftReport
from tasks.engine.migrations.report import ValidationFailed, ValidationReport
from tasks.engine.migrations.results import ApplyReport, MigrationError
from tasks.engine.migrations.rollback import RollbackReport
from tasks.engine.notices import Notice
from tasks.engine.runs.steps import RunInfo
from tasks.engine.snapshots.naming import Snapshot
from tasks.engine.snapshots.refresh import Replacement
from tasks.engine.snapshots.swap import SwapResult
from tasks.migrate import migrate
from tasks.notify import notify_task
from tasks.refresh import newest_snapshot_task, plan_refresh_task, refresh_task, restore_task
from tasks.rollback import rollback_task
from tasks.secrets import fetch_secret
from tasks.snapshot import snapshot_task
from tasks.validate import rehearse_and_plan, validate

observe.quiet_ordinary_failures()  # every flow runs its steps through this module


class PrefectSteps:
    """`Steps` (tasks/engine/runs/steps.py) carried out as this flow run's tasks."""

    def __init__(self) -> None:
        self.log = get_run_logger()
        self.clients = AwsClients(aws_client)  # from the environment's AwsCredentials block

    def client(self, service: str, environment: Environment) -> Any:
        return self.clients.get(service, environment)

    def run_info(self) -> RunInfo:
        url = current_flow_run.ui_url  # None-prefixed when no UI is configured (the ephemeral API)
        flow_name = current_flow_run.flow_name
        return RunInfo(
            run_id=current_flow_run.id,
            run_url=url if url and url.startswith("http") else None,
            flow_name=flow_name,
            deployment=f"{flow_name}/{current_deployment.name}" if current_deployment.name else None,
        )

    def pinned_environment(self) -> str | None:
        if not (deployment_id := current_deployment.id):
            return None
        try:
            with get_client(sync_client=True) as client:
                pinned = client.read_deployment(UUID(deployment_id)).parameters.get("environment")
        except Exception as exc:  # noqa: BLE001 - the API went away: the role stays the boundary, said
            self.log.warning("The deployment's own parameters could not be read (%s): its environment is not "
                             "checked against this run's", type(exc).__name__)
            return None
        return pinned if isinstance(pinned, str) else None

    def validate(self, migrations_dir: Path, project_root: Path, policy: Policy) -> tuple[Catalog, ValidationReport]:
        try:
            return validate(migrations_dir, project_root, policy)
        except ValidationFailed as exc:  # otherwise the findings are published with the plan
            observe.publish_lint(observe.run_environment(), exc.report)
            raise

    def fetch_secret(self, environment: Environment, create: bool = True) -> Connection:
        return fetch_secret(environment, self.client("secretsmanager", environment), create=create)

    def rehearse_and_plan(self, environment: Environment, catalog: Catalog, report: ValidationReport,
                          connection: Connection, target: str | None, dry_run: bool = False) -> ValidationReport:
        try:
            report = rehearse_and_plan(environment, catalog, report, connection, target, dry_run=dry_run)
        except ValidationFailed as exc:
            report = exc.report
            raise
        finally:  # what blocks is known once the plan says what is about to run
            observe.publish_lint(environment.name, report)
            observe.publish_plan(environment.name, report, catalog)
        return report

    def approve(self, environment: Environment, report: ValidationReport, rollback: bool = False) -> str:
        return request_approval(environment.name, report, timeout_seconds=environment.policy.approval_timeout_seconds,
                                rollback=rollback)

    def snapshot(self, environment: Environment, connection: Connection, git_sha: str, trigger: str,
                 reuse: bool = True, applied: tuple[str, ...] | None = None) -> Snapshot:
        return snapshot_task(environment, connection, git_sha=git_sha, trigger=trigger,
                             rds=self.client("rds", environment), progress=observe.snapshot_progress(environment.name),
                             reuse=reuse, applied=applied)

    def migrate(self, connection: Connection, catalog: Catalog, policy: Policy, *, target: str | None,
                git_sha: str, environment: str, on_locked: Callable[[], None] | None = None) -> ApplyReport:
        progress = observe.MigrationProgress(environment, git_sha)
        try:
            report = migrate(connection, catalog, policy, target=target, git_sha=git_sha, environment=environment,
                             observe=progress, on_locked=on_locked)
        except MigrationError as exc:
            observe.publish_applied(environment, exc.report)
            raise
        observe.publish_applied(environment, report)
        return report

    def plan_refresh(self, environment: Environment, source: Environment, connection: Connection) -> Replacement:
        return plan_refresh_task(environment, source, connection, rds=self.client("rds", environment))

    def newest_snapshot(self, source: Environment) -> Snapshot:
        return newest_snapshot_task(source, rds=self.client("rds", source))

    def refresh(self, replacement: Replacement, snapshot: Snapshot, connection: Connection) -> SwapResult:
        return refresh_task(replacement, snapshot, connection)

    def restore(self, environment: Environment, snapshot_id: str, connection: Connection | None) -> SwapResult:
        return restore_task(environment, snapshot_id, connection, rds=self.client("rds", environment))

    def rollback(self, connection: Connection, catalog: Catalog, policy: Policy, *, to: str, git_sha: str,
                 environment: str, planned: tuple[str, ...]) -> RollbackReport:
        return rollback_task(connection, catalog, policy, to=to, git_sha=git_sha, environment=environment,
                             planned=planned)

    def baseline(self, environment: Environment, connection: Connection, catalog: Catalog, *, through: str | None,
                 tool: str | None, git_sha: str, dry_run: bool, schema: str | None = None) -> BaselineReport:
        return baseline_task(environment, connection, catalog, through=through, tool=tool, git_sha=git_sha,
                             dry_run=dry_run, schema=schema)

    def drift(self, environment: Environment, connection: Connection, catalog: Catalog, *,
              dry_run: bool = False) -> tuple[DriftReport, str]:
        drift, source = drift_task(environment, connection, catalog, dry_run=dry_run)
        events.drift_found(environment.name, observe.run_sha(), drift)
        if not drift.drifted and self.run_info().flow_name == "drift-check":  # (a rollback checks drift too)
            # The check's last step, and a clean check notifies nobody: its completion is said here.
            events.run_completed(Notice("Drift check", environment.name, environment.tier, "succeeded",
                                        (("expected", source), ("found", drift.summary()))), observe.run_sha())
        return drift, source

    def notify(self, target: SlackNotify | ConsoleNotify, summary: Summary) -> bool:
        delivered = notify_task(target, summary)
        events.run_completed(summary, observe.run_sha())  # every kind of run: migration, refresh, fleet, notices
        return delivered

    def publish(self, key: str, markdown: str, description: str) -> None:
        create_markdown_artifact(markdown=markdown, key=key, description=description)

    def publish_table(self, key: str, rows: list[dict[str, object]], description: str) -> None:
        try:
            create_table_artifact(rows, key=key, description=description)
        except Exception as exc:  # noqa: BLE001 - a report never changes a run (a crash report then says less)
            self.log.warning("Table artifact %s not published (%s)", key, type(exc).__name__)

    def exclusive(self, environment: str) -> AbstractContextManager[None]:
        return one_run_per_environment(environment)
