"""The fleet run, as the issue draws it:

    validate (once) → discover → quota check → rehearse (once) → per target, in waves and at most
    `concurrency` at once: fetch-secret → plan → snapshot → migrate → retention → ONE notification

Per target this is the single-target pipeline of migration.py without its rehearsal and its notification,
on the target's own copy of the environment (fleet/targets.py). A target's failure is its result, not the
run's end: the others go on (stop rules aside), and the run raises `FleetFailed` at the end. `FleetSteps`
says how targets are spread: threads here (`DirectFleetSteps`), Prefect in flows/fleet.py.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment, Rehearsal
from tasks.engine.errors import ConfigError, InvalidIndexFound
from tasks.engine.fleet.config import Fleet
from tasks.engine.fleet.report import FleetFailed, FleetReport, TargetResult
from tasks.engine.fleet.runner import MapWave, run_waves, thread_pool
from tasks.engine.fleet.targets import Target, fleet_target, fleet_targets, target_connection
from tasks.engine.logs import Log, Named
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.reference import remember_live_schema
from tasks.engine.migrations.report import ValidationFailed, ValidationReport, with_rehearsal
from tasks.engine.migrations.results import ApplyReport, MigrationError
from tasks.engine.runs.commit import commit_of_run
from tasks.engine.runs.ended import Ended, said
from tasks.engine.runs.migration import Credentials, Progress, applied_per_history, check_tier
from tasks.engine.runs.parameters import check_parameters, refuse_password_in_parameters
from tasks.engine.runs.steps import DirectSteps, Steps
from tasks.engine.snapshots.retention import check_fleet_quota, prune_snapshots

Client = Callable[[str, Environment], Any]


@dataclass(frozen=True)
class FleetRun:
    """What every target of one fleet run shares: the checked (and rehearsed) files and the run's parameters."""

    catalog: Catalog
    report: ValidationReport
    git_sha: str
    trigger: str
    target: str | None = None
    dry_run: bool = False
    keep_snapshots: int | None = None


class FleetSteps(Protocol):
    """How a fleet run is carried out: the fleet-level `steps`, and how targets are spread and reported."""

    steps: Steps

    def client(self, service: str, environment: Environment) -> Any:
        """A boto3 client for the environment (None without AWS)."""

    def rehearse(self, target: Target, catalog: Catalog, report: ValidationReport, dry_run: bool) -> ValidationReport:
        """The fleet's one rehearsal, on the first target's rehearsal server."""

    def map_wave(self, fleet: Fleet) -> MapWave:
        """How one wave's targets run, at most `fleet.concurrency` at once."""

    def run_target(self, target: Target, run: FleetRun) -> TargetResult:
        """One target's pipeline; never raises for the target's own failure."""

    def progress(self, finished: int, total: int) -> None:
        """Told after each target."""

    def publish(self, report: FleetReport) -> None:
        """The per-target table where people look for it."""


class TargetCredentials(Credentials):
    """A target's credentials: its secret, URL or embedded database as the one-database run reads them, or an
    RDS-managed master secret completed with the discovered endpoint. Re-read once on a refused password."""

    def __init__(self, target: Target, parameters: dict[str, str | None], steps: Steps, client: Client, *,
                 create: bool = True) -> None:
        self.target, self.client = target, client
        super().__init__(target.environment, parameters, steps, create=create)

    def _fetch(self) -> Connection:
        if self.target.endpoint is None:
            return super()._fetch()
        connection = target_connection(self.target, self.client("secretsmanager", self.environment))
        refuse_password_in_parameters(connection, self.parameters)
        self.steps.log.info("Credentials read from %s for %s", connection.source, connection.describe())
        return connection


def parameters_of(run: FleetRun, environment: Environment) -> dict[str, str | None]:
    return {"environment": environment.name, "git_sha": run.git_sha, "trigger": run.trigger, "target": run.target}


def rehearse_once(
    environment: Environment,
    catalog: Catalog,
    report: ValidationReport,
    connection: Connection,
    *,
    dry_run: bool,
    log: Log,
) -> ValidationReport:
    """The whole directory applied from nothing once for the fleet, where the environment rehearses (the first
    target's server for `target_server`); `ValidationFailed` when it fails. Every target then only plans."""
    from tasks.engine.migrations.rehearsal import rehearsal_server, rehearse
    from tasks.engine.migrations.scratch import choose_place, empty_if_missing

    if environment.rehearsal.kind == "none" or not catalog.migrations:
        return report
    # The first target's credentials were read with create=not dry_run: a dry run's database may be missing.
    with empty_if_missing(environment, connection, log, created=not dry_run) as connection:
        server = rehearsal_server(environment, connection)
        assert server is not None  # only kind "none" has none
        place = choose_place(server, connection, catalog.migrations, dry_run=dry_run, log=log)
        result = rehearse(catalog, place, environment.policy, log, cache=environment.rehearsal.cache)
    report = with_rehearsal(report, result)
    if result.failure:
        raise ValidationFailed(report)
    return report


def plan_only(environment: Environment) -> Environment:
    """The target's environment with its rehearsal off: the fleet rehearsed once already."""
    return environment.model_copy(update={"rehearsal": Rehearsal(kind="none")})


def naming(steps: Steps, name: str) -> Steps:
    """`steps` whose log lines start with the target's `name` (a copy: the targets running at once share `steps`)."""
    twin = copy.copy(steps)
    twin.log = Named(steps.log, name)
    return twin


def run_target(target: Target, steps: Steps, run: FleetRun, client: Client) -> TargetResult:
    """fetch-secret → plan → snapshot → migrate → retention for one target; its failure is its result."""
    environment, started = target.environment, time.monotonic()
    steps = naming(steps, target.name)
    # `pending` is None until the target's plan is read: a target that fails before it says "not known", not 0.
    step, snapshot, applied = "fetch-secret", None, None
    pending: tuple[str, ...] | None = None
    try:
        credentials = TargetCredentials(target, parameters_of(run, environment), steps, client, create=not run.dry_run)
        step = "plan"
        report = credentials.run(
            lambda c: steps.rehearse_and_plan(
                plan_only(environment), run.catalog, run.report, c, run.target, dry_run=run.dry_run
            )
        )
        pending = report.pending
        if report.plan and report.plan.invalid_indexes and environment.policy.invalid_index == "refuse":
            raise InvalidIndexFound(report.plan.invalid_indexes)
        if not pending or run.dry_run:
            outcome = "dry-run" if run.dry_run else "nothing-to-do"
            return TargetResult(target.name, outcome, pending=pending, duration_seconds=time.monotonic() - started)
        if environment.snapshot.kind != "none":
            step = "snapshot"
            snapshot = steps.snapshot(environment, credentials.connection, run.git_sha, run.trigger,
                                      applied=report.plan.applied if report.plan else None)
        step = "migrate"
        progress = Progress("migrate", run.git_sha, report, connection=credentials.connection,
                            run_id=steps.run_info().run_id)
        applied = credentials.run(
            lambda c: steps.migrate(
                c, run.catalog, environment.policy, target=run.target, git_sha=run.git_sha,
                environment=environment.name, on_locked=progress.took_the_lock,
            )
        )
        if report.drift is not None and not report.drift.drifted:
            remember_live_schema(credentials.connection, run.catalog)
    except Exception as exc:  # noqa: BLE001 - the target's result; the fleet goes on and fails at its end
        unknown = False
        if isinstance(exc, MigrationError):
            applied = exc.report
        elif isinstance(exc, ValidationFailed) and exc.report.plan is not None:
            pending = exc.report.pending  # refused at its plan: what it would have applied
        elif step == "migrate" and pending is not None:  # not a migration's failure (a lost connection, a bug)
            # Before the lock, nothing was applied (the history's changes are another run's); after it, the
            # history says what was (not known when it cannot be read: never "none").
            applied = applied_per_history(progress) if progress.locked else ApplyReport(applied=(), pending=pending)
            unknown = applied is None
        steps.log.error("failed at step %s: %s", step, exc)
        return TargetResult(
            target.name,
            "failed",
            applied=None if unknown else applied.applied_ids if applied else (),
            pending=None if unknown else applied.pending if applied else pending,
            snapshot=snapshot.identifier if snapshot else None,
            duration_seconds=time.monotonic() - started,
            error=said(exc),
            failed_step=step,
            failed_migration=applied.failed.migration_id if applied and applied.failed else None,
        )
    if run.keep_snapshots and snapshot is not None:
        try:
            prune_snapshots(environment, run.keep_snapshots, client("rds", environment), steps.log)
        except Exception as exc:  # noqa: BLE001 - retention never changes a migrated target's outcome
            steps.log.warning("old snapshots not pruned (%s: %s)", type(exc).__name__, exc)
    return TargetResult(
        target.name,
        "succeeded",
        applied=applied.applied_ids,
        pending=applied.pending,
        snapshot=snapshot.identifier if snapshot else None,
        duration_seconds=time.monotonic() - started,
    )


def check_fleet(environment: Environment) -> Fleet:
    """A fleet environment under its tier's rules; what fleets do not do yet is refused."""
    if environment.fleet is None:
        raise ConfigError(f"environment {environment.name} names no fleet: run it with `rds-migrations run --env`")
    check_tier(environment, environment.tier)
    if environment.policy.approval_required:
        raise ConfigError(f"environment {environment.name}: policy.approval_required is not supported for a fleet")
    return environment.fleet


def migrate_fleet(
    environment: Environment,
    fleet_steps: FleetSteps,
    *,
    git_sha: str,
    dry_run: bool = False,
    target: str | None = None,
    migrations_dir: str = "migrations",
    trigger: str = "manual",
    project_root: Path | None = None,
) -> FleetReport:
    """Migrate every target of the environment's fleet; one notification; `FleetFailed` when any target failed
    or did not start (a failure before any target ran is raised as it is)."""
    check_parameters(git_sha, trigger, target, migrations_dir)
    fleet = check_fleet(environment)
    steps, started = fleet_steps.steps, time.monotonic()
    results, stopped, targets = [], None, []
    step = "checkout"
    with Ended() as ended:
        git_sha = commit_of_run(steps, git_sha, project_root or Path.cwd(), migrations_dir)
        step = "validate"
        catalog, report = steps.validate(Path(migrations_dir), project_root or Path.cwd(), environment.policy)
        if target is not None:
            catalog.named(target, "--target")
        step = "discover"
        rds = fleet_steps.client("rds", environment)
        targets = fleet_targets(environment, rds, steps.log)
        if not targets:
            raise ConfigError(f"environment {environment.name}: its fleet has no targets (nothing matched?)")
        if not dry_run:
            check_fleet_quota([t.environment for t in targets], rds, steps.log)
        step = "rehearse"
        report = fleet_steps.rehearse(targets[0], catalog, report, dry_run)
        step = "targets"
        run = FleetRun(catalog, report, git_sha, trigger, target, dry_run, fleet.keep_snapshots)
        results, stopped = run_waves(
            targets,
            lambda t: fleet_steps.run_target(t, run),
            fleet,
            fleet_steps.map_wave(fleet),
            fleet_steps.progress,
            steps.log,
        )
    error = ended.error
    summary = FleetReport(
        environment.name,
        environment.tier,
        git_sha,
        trigger,
        tuple(results),
        stopped,
        error=ended.said() if error else None,
        failed_step=step if error else None,
        duration_seconds=time.monotonic() - started,
        run_url=steps.run_info().run_url,
        named_as={t.name: t.named_as for t in targets},
    )
    fleet_steps.publish(summary)
    steps.notify(environment.notify, summary)
    ended.raise_if_failed()
    if summary.outcome == "failed":
        raise FleetFailed(summary)
    return summary


def migrate_one_target(
    environment: Environment,
    name: str,
    steps: Steps,
    client: Client,
    *,
    git_sha: str,
    target: str | None = None,
    migrations_dir: str = "migrations",
    trigger: str = "manual",
    project_root: Path | None = None,
    dry_run: bool = False,
) -> TargetResult:
    """One target of a fleet, as a distributed fleet run starts it: the files checked again where it runs
    (the fleet run rehearsed them), then the target's pipeline."""
    check_parameters(git_sha, trigger, target, migrations_dir)
    fleet = check_fleet(environment)
    git_sha = commit_of_run(steps, git_sha, project_root or Path.cwd(), migrations_dir)
    catalog, report = steps.validate(Path(migrations_dir), project_root or Path.cwd(), environment.policy)
    found = fleet_target(environment, name, client("rds", environment), steps.log)
    run = FleetRun(catalog, report, git_sha, trigger, target, dry_run=dry_run, keep_snapshots=fleet.keep_snapshots)
    return run_target(found, steps, run, client)


class DirectFleetSteps:
    """A fleet run without Prefect: `DirectSteps` for every step, a thread pool per wave."""

    def __init__(self, steps: DirectSteps) -> None:
        self.steps = steps

    def client(self, service: str, environment: Environment) -> Any:
        return self.steps.client(service, environment)

    def rehearse(self, target: Target, catalog: Catalog, report: ValidationReport, dry_run: bool) -> ValidationReport:
        connection = TargetCredentials(target, {}, self.steps, self.client, create=not dry_run).connection
        return rehearse_once(target.environment, catalog, report, connection, dry_run=dry_run, log=self.steps.log)

    def map_wave(self, fleet: Fleet) -> MapWave:
        return thread_pool(fleet.concurrency)

    def run_target(self, target: Target, run: FleetRun) -> TargetResult:
        return run_target(target, self.steps, run, self.client)

    def progress(self, finished: int, total: int) -> None:
        self.steps.log.info("Fleet progress: %d of %d targets done", finished, total)

    def publish(self, report: FleetReport) -> None:
        """Outside Prefect the table goes to the console (flows/cli_fleet.py)."""
