"""Adopting a database and watching it afterwards, as runs:

    baseline:    fetch-secret → baseline (record what is already applied, keep the schema) → notify
    drift-check: fetch-secret → drift (the live schema against what the applied migrations make) → notify,
                 only when something drifted or the check itself failed (a nightly schedule should not be noise,
                 nor fail in silence)

A drifted database ends the check in `DriftFound` (exit 1 on the command line, a Failed flow run); a check that
could not compare ends in its error, after notifying.
"""

from __future__ import annotations

import time
from pathlib import Path

from tasks.engine.errors import RdsMigrationsError
from tasks.engine.fleet.targets import one_database_environment
from tasks.engine.migrations.baseline import BaselineReport
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.drift import WAY_OUT, DriftReport
from tasks.engine.migrations.scratch import empty_if_missing
from tasks.engine.notices import Notice
from tasks.engine.runs.commit import commit_of_run
from tasks.engine.runs.ended import Ended
from tasks.engine.runs.parameters import check_deployment_environment, check_parameters, check_schema
from tasks.engine.runs.steps import Steps


class DriftFound(RdsMigrationsError):
    """The live schema is not what the applied migrations make (every difference is in the report)."""

    def __init__(self, environment: str, drift: DriftReport) -> None:
        super().__init__(f"{environment}: {drift.summary()}\n" + "\n".join(f"  {d.text}" for d in drift.differences)
                         + f"\n{WAY_OUT}")
        self.drift = drift


def adopt_environment(name: str, steps: Steps, *, through: str | None = None, tool: str | None = None,
                      migrations_dir: str = "migrations", git_sha: str = "unknown", dry_run: bool = False,
                      history_schema: str | None = None, project_root: Path | None = None,
                      accept_differences: bool = False) -> BaselineReport:
    """Record what the named environment's database already holds as applied, keep its schema, notify.
    `history_schema`: with `tool`, the schema holding that tool's history (when it is in several).
    `accept_differences`: what the migrations recorded build differs from the schema: a warning, whatever
    `policy.drift` says."""
    environment = one_database_environment(name)
    if accept_differences and environment.policy.drift == "block":  # for this adoption only: runs still block
        environment = environment.model_copy(update={"policy": environment.policy.model_copy(
            update={"drift": "warn"})})
    check_parameters(git_sha, "manual", through, migrations_dir, target_name="through")
    check_deployment_environment(environment.name, steps)
    check_schema(history_schema, tool)
    started, report = time.monotonic(), None
    with Ended() as ended, steps.exclusive(environment.name):
        git_sha = commit_of_run(steps, git_sha, project_root or Path.cwd(), migrations_dir)
        catalog = read_catalog(Path(migrations_dir), project_root or Path.cwd())
        with empty_if_missing(environment, steps.fetch_secret(environment, create=not dry_run), steps.log,
                              created=not dry_run) as connection:  # a dry run's embedded database: not created
            report = steps.baseline(environment, connection, catalog, through=through, tool=tool,
                                    git_sha=git_sha, dry_run=dry_run, schema=history_schema)
    error = ended.error
    outcome = "failed" if error else "dry-run" if dry_run else "nothing-to-do" if report and report.already \
        else "succeeded"
    facts, details = [("adopting", f"--from {tool}" if tool else f"--through {through}")], []
    if report is not None:
        facts += [("would record" if dry_run else "recorded",
                   f"{len(report.adopted)} migration(s) as applied, without running them"),
                  ("pending", f"{len(report.pending)}")]
        details = report.mapping.splitlines()
        if report.replay is not None and report.replay.differs:  # recorded all the same (policy.drift is not "block")
            facts.append(("warning", report.replay.summary()))
            details += report.replay.lines()[1:]
    notice = Notice("Baseline", environment.name, environment.tier, outcome, tuple(facts),
                    tuple(details), ended.said() if error else None,
                    time.monotonic() - started, steps.run_info().run_url)
    steps.notify(environment.notify, notice)
    ended.raise_if_failed()
    assert report is not None
    return report


def check_environment_drift(name: str, steps: Steps, *, migrations_dir: str = "migrations",
                            project_root: Path | None = None) -> DriftReport:
    """Compare the named environment's live schema with what its applied migrations make; notify and raise
    `DriftFound` when they differ. A check that could not compare (the database unreachable, the secret
    unreadable, the migrations unreadable) notifies too, naming the step, and ends in its error: a nightly check
    that fails in silence would pass for one that found nothing."""
    environment = one_database_environment(name)
    check_parameters("unknown", "schedule", None, migrations_dir)
    check_deployment_environment(environment.name, steps)
    started, step, drift, source = time.monotonic(), "read-migrations", None, ""
    with Ended() as ended:
        catalog = read_catalog(Path(migrations_dir), project_root or Path.cwd())
        step = "fetch-secret"
        with empty_if_missing(environment, steps.fetch_secret(environment, create=False), steps.log) as connection:
            step = "drift-check"
            drift, source = steps.drift(environment, connection, catalog)
        steps.log.info("%s (the expected schema: %s)", drift.summary(), source)
    error = ended.error
    if error is not None:
        notice = Notice("Drift check", environment.name, environment.tier, "failed", (("failed step", step),),
                        error=f"{ended.said()}\nThe live schema was not compared with the migrations. Fix the cause "
                              f"above and run the drift check again (`rds-migrations drift --env {environment.name}` "
                              "compares it from a terminal).",
                        duration_seconds=time.monotonic() - started, run_url=steps.run_info().run_url)
        steps.notify(environment.notify, notice)
        ended.raise_if_failed()
    assert drift is not None
    if drift.drifted:
        notice = Notice("Drift check", environment.name, environment.tier, "drifted",
                        (("expected", source), ("found", drift.summary())),
                        tuple(d.text for d in drift.differences), duration_seconds=time.monotonic() - started,
                        run_url=steps.run_info().run_url)
        steps.notify(environment.notify, notice)
        raise DriftFound(environment.name, drift)
    return drift

