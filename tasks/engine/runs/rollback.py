"""Rolling back to a version, as a run: the same pipeline as a migration run, the other way.

    validate → fetch-secret → plan (what will be undone, newest first) → [approve] → snapshot → roll back → notify

Refused before anything is written when a migration above the version has no rollback file (each named).
Nothing to undo, or a dry run: no snapshot and no lock. Notify always runs; the run ends in the error.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment
from tasks.engine.errors import Interrupted
from tasks.engine.fleet.targets import one_database_environment
from tasks.engine.logs import Log
from tasks.engine.messages import restore_commands
from tasks.engine.migrations.catalog import Catalog
from tasks.engine.migrations.hints import where_flag
from tasks.engine.migrations.plan import Plan
from tasks.engine.migrations.report import with_plan
from tasks.engine.migrations.rollback import RollbackError, RollbackRefused, RollbackReport
from tasks.engine.migrations.rollback_plan import ALL, RollbackPlan, plan_rollback
from tasks.engine.migrations.scratch import empty_if_missing
from tasks.engine.notices import Notice
from tasks.engine.runs.adoption import DriftFound
from tasks.engine.runs.commit import commit_of_run
from tasks.engine.runs.ended import Ended
from tasks.engine.runs.migration import Credentials, check_tier
from tasks.engine.runs.parameters import check_deployment_environment, check_parameters
from tasks.engine.runs.steps import Steps
from tasks.engine.snapshots.naming import Snapshot


def roll_back_environment(name: str, steps: Steps, *, to: str, git_sha: str = "unknown", dry_run: bool = False,
                          migrations_dir: str = "migrations", trigger: str = "manual",
                          project_root: Path | None = None) -> RollbackReport | None:
    """Undo the named environment's migrations after `to` (`"0"`: all), newest first. A dry run, or nothing to
    undo: the report holds the plan (`planned`) and nothing rolled back."""
    environment = one_database_environment(name)
    check_tier(environment, environment.tier)
    check_parameters(git_sha, trigger, to, migrations_dir, target_name="to")
    check_deployment_environment(environment.name, steps)
    started, step = time.monotonic(), "checkout"
    report: RollbackReport | None = None
    snapshot: Snapshot | None = None
    undo: tuple[str, ...] = ()
    where = where_flag(environment.name, Path(migrations_dir))  # a command pasted from a message names the database
    with steps.exclusive(environment.name):
        # Ctrl-C is told like any failure.
        with Ended(on_interrupt=lambda: Interrupted(
                f"interrupted (Ctrl-C) at step {step}: a rollback stopped midway was undone by the server (a "
                f"non-transactional one is marked dirty: `rds-migrations resolve {where}`); `rds-migrations status "
                f"{where}` shows what is applied now")) as ended:
            git_sha = commit_of_run(steps, git_sha, project_root or Path.cwd(), migrations_dir)
            step = "validate"
            catalog, validation = steps.validate(Path(migrations_dir), project_root or Path.cwd(), environment.policy)
            step = "fetch-secret"
            credentials = Credentials(environment, {"environment": environment.name, "git_sha": git_sha,
                                                    "trigger": trigger, "to": to}, steps, create=False)
            if to != ALL:  # after the credentials: a password pasted here is named as such first
                step = "validate"
                catalog.named(to, "--to", zero="; 0 undoes every migration")
            step = "plan"
            plan = credentials.run(lambda c: _plan(environment, c, catalog, to, steps.log))
            undo = plan.undo
            # The ids as data, for the crash hook (flows/hooks.py), which never reads the text below (for people).
            steps.publish_table(undo_key(environment.name), undo_rows(plan),
                                f"Migrations the rollback of {environment.name} will undo, newest first")
            steps.publish(f"rollback-plan-{environment.name}", f"```\n{plan.to_text()}\n```\n",
                          f"Rollback plan for {environment.name}")
            steps.log.info("Rollback plan:\n%s", plan.to_text())
            if plan.problems:
                raise RollbackRefused(plan)
            if plan.undo and environment.policy.drift != "ignore":  # as a run looks before it applies
                step = "drift"
                # A dry run creates nothing on the target's server: its reference is built elsewhere, as a run's.
                drift, source = credentials.run(lambda c: steps.drift(environment, c, catalog, dry_run=dry_run))
                if drift.drifted and environment.policy.drift == "block":
                    raise DriftFound(environment.name, drift)
                if drift.drifted:
                    steps.log.warning("%s (expected: %s); rolling back anyway: policy.drift = warn",
                                      drift.summary(), source)
            if plan.undo and not dry_run:
                if environment.tier == "production" and environment.policy.approval_required:
                    step = "approval"
                    # The approval form lists what will be undone as what is "pending" for this run, as a rollback.
                    steps.log.info("Approved by %s", steps.approve(environment, with_plan(
                        validation, Plan(applied=plan.keep, pending=plan.undo), catalog), rollback=True))
                if environment.snapshot.kind != "none":
                    step = "snapshot"
                    # Never the pre-migration snapshot of this commit: the database has changed since.
                    snapshot = steps.snapshot(environment, credentials.connection, git_sha, trigger, reuse=False)
                step = "rollback"
                report = credentials.run(lambda c: steps.rollback(c, catalog, environment.policy, to=to,
                                                                  git_sha=git_sha, environment=environment.name,
                                                                  planned=plan.undo))
            else:  # a dry run, or nothing to undo: what would be undone, for --json; nothing written
                report = RollbackReport(to=to, applied=plan.keep + tuple(reversed(plan.undo)))
        error = ended.error
        if isinstance(error, RollbackError):
            report = error.report
        outcome = "failed" if error else "dry-run" if dry_run else "nothing-to-do" if not undo else "succeeded"
        facts = [("to", to), ("git SHA", git_sha), ("planned", ", ".join(undo) or "nothing to undo")]
        if report is not None:
            report = replace(report, planned=undo)
            facts += [("rolled back", ", ".join(report.rolled_back_ids) or "none"),
                      ("still applied", report.still_applied())]
        if snapshot is not None:
            facts.append(("snapshot", snapshot.identifier))
        # Restoring undoes every write since the snapshot: offered only when the rollback changed something.
        changed = not isinstance(error, RollbackRefused) and (report is None or bool(report.rolled_back) or bool(
            report.failed and (report.failed.dirty or report.failed.outcome_unknown)))
        details = restore_commands(environment.name, snapshot.identifier) if snapshot and error and changed else ()
        notice = Notice("Rollback", environment.name, environment.tier, outcome, tuple(facts), details,
                        (f"at step {step}: {ended.said()}" if error else None), time.monotonic() - started,
                        steps.run_info().run_url)
        steps.notify(environment.notify, notice)
    ended.raise_if_failed(report)  # for --json: what was rolled back before it failed
    return report


def undo_key(environment: str) -> str:
    """The key of the table a rollback publishes of what it will undo (crash.undo_planned reads its rows)."""
    return f"rollback-undo-{environment}"


def undo_rows(plan: RollbackPlan) -> list[dict[str, object]]:
    """One row per migration the plan undoes, in the order it undoes them (none: refused, or nothing to undo)."""
    return [{"order": position, "migration": migration_id,
             "transactional": migration_id not in plan.non_transactional}
            for position, migration_id in enumerate(plan.undo, 1)]


def _plan(environment: Environment, connection: Connection, catalog: Catalog, to: str, log: Log) -> RollbackPlan:
    """The rollback's plan; an embedded database that does not exist yet (never created: a rollback creates
    nothing) has nothing to undo."""
    with empty_if_missing(environment, connection, log) as connection:
        return plan_rollback(connection, catalog, to, environment=environment.name)
