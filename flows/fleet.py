"""The migrate-fleet flow: validate and rehearse once, then every target of an environment's fleet in waves,
spread by Prefect itself. Two modes, the same pipeline (tasks/engine/runs/fleet.py):

- `in_process`: a `fleet-target` task per target, mapped on a `ThreadPoolTaskRunner(max_workers=concurrency)`
  in this flow run's process (one machine);
- `distributed`: each target a `migrate-target` flow run of its deployment (`run_deployment`, as a subflow of
  this run), so targets spread over every worker of the work pool; its parameters are names only.

In both, the global concurrency limit `rds-migrations-fleet` bounds how many targets are migrated at once
across every fleet run. The run shows a progress artifact while it runs, a per-target table at its end, sends
ONE notification, and ends Failed when any target failed or did not start.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from prefect import flow, unmapped
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.task_runners import ThreadPoolTaskRunner

from flows.exclusive import ensure_limit, slot
from flows.fleet_hooks import report_fleet_cancellation, report_fleet_crash
from flows.fleet_target import FLEET_LIMIT
from flows.observe import ProgressArtifact, run_name
from flows.steps import PrefectSteps
from tasks.engine.environments import Environment
from tasks.engine.fleet.config import Fleet
from tasks.engine.fleet.report import FleetReport, TargetResult
from tasks.engine.fleet.runner import MapWave, RunTarget
from tasks.engine.fleet.targets import Target, fleet_to_run
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.report import ValidationReport
from tasks.engine.runs.fleet import FleetRun, TargetCredentials, migrate_fleet, run_target
from tasks.fleet import fleet_target, rehearse_fleet

DEFAULT_FLEET_LIMIT = 8  # the limit made when none exists; `rds-migrations setup-prefect` sizes it for the pool
TARGET_DEPLOYMENT = "migrate-target/target"


def ensure_fleet_limit(log: Any, limit: int = DEFAULT_FLEET_LIMIT) -> int:
    """The global limit exists (made with `limit` when missing, never changed); its size."""
    with get_client(sync_client=True) as client:
        if ensure_limit(client, FLEET_LIMIT, limit):
            log.info("Global concurrency limit %s created with %d slots", FLEET_LIMIT, limit)
        return client.read_global_concurrency_limit_by_name(FLEET_LIMIT).limit


class PrefectFleetSteps:
    """`FleetSteps` on Prefect: this flow run's steps, targets mapped on a thread pool task runner, each one
    migrated here (`in_process`) or by its own flow run on the work pool (`distributed`)."""

    def __init__(self, environment: Environment, mode: str, deployment: str = TARGET_DEPLOYMENT) -> None:
        self.steps = PrefectSteps()
        self.environment, self.mode, self.deployment = environment, mode, deployment
        self.progress_artifact = ProgressArtifact(f"fleet-progress-{environment.name}")

    def client(self, service: str, environment: Environment) -> Any:
        return self.steps.client(service, environment)

    def rehearse(self, target: Target, catalog: Catalog, report: ValidationReport, dry_run: bool) -> ValidationReport:
        connection = TargetCredentials(target, {}, self.steps, self.client, create=not dry_run).connection
        return rehearse_fleet(target.environment, catalog, report, connection, dry_run=dry_run)

    def map_wave(self, fleet: Fleet) -> MapWave:
        def map_wave(targets: Sequence[Target], run: RunTarget) -> list[TargetResult]:
            with ThreadPoolTaskRunner(max_workers=fleet.concurrency) as runner:
                futures = runner.map(fleet_target, {"target": list(targets), "run": unmapped(run)})
                # A failed target's task run is Failed and carries its result: read, not raised. A task that
                # raised (it could not even make a result) hands back its exception: raised, as before.
                results = [future.result(raise_on_failure=False) for future in futures]
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return results

        return map_wave

    def run_target(self, target: Target, run: FleetRun) -> TargetResult:
        if self.mode == "distributed":
            return self._launch(target, run)
        steps = PrefectSteps()  # in the target's task run: its steps are nested task runs, its logs its own
        with slot(FLEET_LIMIT):
            return run_target(target, steps, run, steps.client)

    def _launch(self, target: Target, run: FleetRun) -> TargetResult:
        parameters = {
            "environment": self.environment.name,
            "target_name": target.name,
            "git_sha": run.git_sha,
            "target": run.target,
            "trigger": "fleet",
            "migrations_dir": run.report.migrations_dir,
            "dry_run": run.dry_run,
        }
        flow_run = run_deployment(
            self.deployment, parameters=parameters, timeout=None, poll_interval=2, as_subflow=True
        )
        state = flow_run.state
        try:
            found = json.loads(state.message or "") if state is not None else None
        except ValueError:
            found = None
        if not isinstance(found, dict) or found.get("target") != target.name:
            return TargetResult(
                target.name,
                "failed",
                failed_step="flow-run",
                error=f"flow run {flow_run.name} ended {state.name if state else 'without a state'}: "
                f"{(state.message or '')[:500] if state else ''}",
            )
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in found.items() if k != "target"}
        return TargetResult(target=target.name, **fields)

    def progress(self, finished: int, total: int) -> None:
        self.progress_artifact.update(
            100 * finished / total, f"{finished} of {total} targets done", final=finished == total
        )

    def publish(self, report: FleetReport) -> None:
        try:
            create_table_artifact(
                report.rows(),
                key=f"fleet-targets-{report.environment}",
                description=f"Fleet {report.environment}: {report.count_line()}",
            )
        except Exception as exc:  # noqa: BLE001 - a report never changes a run
            self.steps.log.warning("Fleet table artifact not published (%s)", type(exc).__name__)


@flow(name="migrate-fleet", flow_run_name=run_name, on_crashed=[report_fleet_crash],
      on_cancellation=[report_fleet_cancellation])
def migrate_fleet_flow(
    environment: str = "local-fleet",
    git_sha: str = "unknown",
    dry_run: bool = False,
    target: str | None = None,
    migrations_dir: str = "migrations",
    trigger: str = "manual",
    concurrency: int | None = None,
    mode: str | None = None,
    url_variables: list[str] | None = None,
    target_deployment: str = TARGET_DEPLOYMENT,
) -> FleetReport:
    """Validate and rehearse once, then plan, snapshot and migrate every target of a fleet, in waves.

    Args:
        environment: an environment with a fleet (or `database-url` with `url_variables`).
        git_sha: the commit whose migrations/ directory is being applied.
        dry_run: validate and plan every target; nothing is snapshotted or applied.
        target: apply up to and including this migration id or version number.
        migrations_dir: the migrations directory, relative to the project.
        trigger: who asked for this run ("ui", "manual", "cli").
        concurrency: targets at once (default: the fleet's).
        mode: "in_process" or "distributed" (default: the fleet's).
        url_variables: names of environment variables holding plain PostgreSQL URLs (never the URLs).
        target_deployment: the migrate-target deployment a distributed run starts per target.
    """
    found = fleet_to_run(environment, url_variables, concurrency, mode)
    assert found.fleet is not None
    steps = PrefectFleetSteps(found, found.fleet.mode, target_deployment)
    slots = ensure_fleet_limit(steps.steps.log)
    steps.steps.log.info(
        "Fleet %s: %s mode, %d at once, bounded by %s (%d slots)",
        found.name,
        found.fleet.mode,
        found.fleet.concurrency,
        FLEET_LIMIT,
        slots,
    )
    with steps.steps.exclusive(found.name):
        return migrate_fleet(
            found,
            steps,
            git_sha=git_sha,
            dry_run=dry_run,
            target=target,
            migrations_dir=migrations_dir,
            trigger=trigger,
        )
