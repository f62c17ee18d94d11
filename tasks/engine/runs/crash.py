"""What is known about a run that could not say so itself: its process was killed (OOM, `kill -9`, a spot
instance) or it was cancelled. Nothing comes from the dead process: the database's history rows and dirty
marks and the snapshots carry the run's flow run id, so the report is what they say.

The crash and cancel hooks (flows/hooks.py) add what the orchestrator knows (the step that was running, the
plan the run published) and deliver the summary like any other run's (tasks/engine/notify.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import sql

from tasks.engine.connection import Connection, connected
from tasks.engine.environments import (
    ENVIRONMENT_NAME,
    AuroraClusterSnapshot,
    Environment,
    PgDumpSnapshot,
    RdsInstanceSnapshot,
)
from tasks.engine.errors import RdsMigrationsError
from tasks.engine.git import GIT_SHA, GIT_SHA_PARAMETER
from tasks.engine.messages import RefreshSummary, RunSummary, restore_commands, shown_parameters
from tasks.engine.migrations.dirty import DirtyMigration
from tasks.engine.migrations.hints import where_flag
from tasks.engine.migrations.history import DIRTY_TABLE, Ledger
from tasks.engine.notices import Notice
from tasks.engine.runs.budget import run_budget_seconds
from tasks.engine.runs.kinds import flow_of
from tasks.engine.runs.parameters import TRIGGER
from tasks.engine.snapshots.dumps import dump_directory, stored_dumps
from tasks.engine.snapshots.naming import TAG_PREFIX, Snapshot, utc
from tasks.engine.snapshots.rds import CLUSTER, INSTANCE
from tasks.engine.snapshots.restore import SNAPSHOT_ID

# A rollback's `to`: a version number or a migration id (anything else is not repeated: it may be a secret).
ROLLBACK_TO = re.compile(r"^\d+([._-][A-Za-z0-9][A-Za-z0-9_.-]*)?$")
Ending = Literal["crashed", "cancelled", "timed-out"]
REFRESH_FLOWS = {flow_of("refresh"): "refresh", flow_of("restore"): "restore"}
ROLLBACK_FLOW = flow_of("rollback")
# A plan's numbered line, as runs before the undo table published it: "  2. 0007.add-index  (non-transactional: …)".
UNDO_LINE = re.compile(r"^ +\d+\. (\S+)", re.MULTILINE)
# The parameters a report repeats, each only when its allow-list takes it (a run's parameters are untrusted).
PARAMETERS = {"environment": ENVIRONMENT_NAME, "git_sha": GIT_SHA_PARAMETER, "trigger": TRIGGER,
              "snapshot_id": SNAPSHOT_ID, "to": ROLLBACK_TO}
# The run's own marks, even while the session it left behind still holds the lock (the server ends a dead
# client's session only when it next talks to it): the columns of DirtyMigration, in its order.
DIRTY_BY_RUN_SQL = """
SELECT migration_id, state, statement_number, statement_count, checksum, sqlstate, message, flow_run_id,
       started_at, applied_through
FROM {dirty} WHERE flow_run_id = %s ORDER BY started_at
"""


@dataclass(frozen=True)
class KnownState:
    """What the database and the snapshots say about one run."""

    applied: tuple[str, ...] = ()  # its rows in the history table, in the order it applied them
    dirty: tuple[DirtyMigration, ...] = ()  # the database's dirty marks, whichever run left them
    snapshot: Snapshot | None = None  # tagged with the run, else the one taken for its commit
    unknown: tuple[str, ...] = ()  # what could not be read, and why (no secret in it)
    history: tuple[str, ...] | None = None  # every migration the history says is applied now (None: not read)


@dataclass(frozen=True)
class EndedRun:
    """The run as the orchestrator knows it."""

    ending: Ending
    reason: str  # the orchestrator's state message ("Process exited with status code: -9 ...")
    flow_name: str
    flow_run_id: str
    parameters: dict[str, Any]
    step: str | None = None  # the step that was running, when known
    reached_snapshot: bool | None = None  # whether its snapshot step started (None: not known)
    planned: tuple[str, ...] | None = None  # what its plan said was pending, when it got that far
    deployment: str | None = None
    duration_seconds: float = 0.0
    run_url: str | None = None

    def parameter(self, name: str, default: str = "unknown") -> str:
        """A parameter's value when its allow-list takes it (it may be a secret pasted into the wrong field)."""
        value = self.parameters.get(name)
        return value if isinstance(value, str) and PARAMETERS[name].match(value) else default


def read_database(connection: Connection, flow_run_id: str) -> KnownState:
    """This run's history rows, its dirty marks, and those that dead runs before it left; what is applied now."""
    with connected(connection, application_name="rds-migrations crash report") as conn:
        ledger = Ledger.open(conn)
        tables = ledger.exists()
        if not (tables["history"] and tables["dirty"]):
            return KnownState(history=())
        dirty = sql.Identifier(ledger.schema, DIRTY_TABLE)
        applied = ledger.applied_by(flow_run_id)
        ours = tuple(DirtyMigration(*row) for row in conn.execute(sql.SQL(DIRTY_BY_RUN_SQL).format(dirty=dirty),
                                                                  (flow_run_id,)))
        history = ledger.read()
        others = tuple(mark for mark in history.dirty if mark.flow_run_id != flow_run_id)
        return KnownState(applied, ours + others, history=history.applied)


def run_snapshot(environment: Environment, flow_run_id: str, git_sha: str, rds_client: Any = None,
                 now: datetime | None = None, *, could_reuse: bool = True) -> Snapshot | None:
    """The snapshot tagged with this run; else (`could_reuse`: the run reached its snapshot step) the newest one
    taken for its commit that the run could have reused."""
    own, commits = snapshots_of_run(environment, flow_run_id, git_sha, rds_client, now)
    return own or (commits if could_reuse else None)


def snapshots_of_run(environment: Environment, flow_run_id: str, git_sha: str, rds_client: Any = None,
                     now: datetime | None = None) -> tuple[Snapshot | None, Snapshot | None]:
    """(the newest snapshot tagged with this run, the newest one taken for its commit that the run could have
    reused): at most `policy.snapshot_reuse_minutes` older than the run's start, which was at most its budget
    before `now` (an older one, named in the restore instructions, would lose every write since)."""
    config = environment.snapshot
    found: list[tuple[Snapshot, dict[str, str]]] = []
    if isinstance(config, PgDumpSnapshot):
        found = [(snapshot, {"flow_run_id": str(record.get("flow_run_id")), "git_sha": str(record.get("git_sha"))})
                 for snapshot, record in stored_dumps(dump_directory(config))
                 if record.get("environment") == environment.name]
    elif isinstance(config, RdsInstanceSnapshot | AuroraClusterSnapshot) and rds_client is not None:
        api, source = (INSTANCE, config.instance_id) if isinstance(config, RdsInstanceSnapshot) else \
            (CLUSTER, config.cluster_id)
        for item in api.manual_snapshots(rds_client, source):
            tags = {tag["Key"]: tag.get("Value", "") for tag in item.get("TagList", [])}
            if tags.get(f"{TAG_PREFIX}environment") != environment.name or item.get("Status") == "failed":
                continue
            created = item.get("SnapshotCreateTime")
            found.append((Snapshot(kind=api.kind, identifier=item[api.snapshot_param], source=source, reused=True,
                                   location=item.get(api.arn_key, ""),
                                   created_at=utc(created) if isinstance(created, datetime) else datetime.now(UTC)),
                          {"flow_run_id": tags.get(f"{TAG_PREFIX}flow-run-id", ""),
                           "git_sha": tags.get(f"{TAG_PREFIX}git-sha", "")}))
    ours = [s for s, tags in found if tags["flow_run_id"] == flow_run_id]
    commits: list[Snapshot] = []
    window = environment.policy.snapshot_reuse_minutes
    if GIT_SHA.match(git_sha) and window > 0:
        reusable_after = (now or datetime.now(UTC)) - timedelta(minutes=window,
                                                                seconds=run_budget_seconds(environment))
        commits = [s for s, tags in found if tags["git_sha"] == git_sha and s.created_at >= reusable_after]
    return (max(ours, key=lambda s: s.created_at) if ours else None,
            max(commits, key=lambda s: s.created_at) if commits else None)


def could_have_reused(run: EndedRun) -> bool | None:
    """Whether the run could have reused a snapshot of its commit: only from its snapshot step on (one that
    stopped before it took none; naming one, with how to restore it, would undo what was applied since), and
    never a rollback (it takes its own). None: the step it reached is not known."""
    return False if run.flow_name == ROLLBACK_FLOW else run.reached_snapshot


def known_state(environment: Environment, connection: Connection | Exception, flow_run_id: str, git_sha: str,
                rds_client: Any = None, *, could_reuse: bool | None = True) -> KnownState:
    """Everything that can be read; each part that cannot is named in `unknown` instead of failing the rest.
    `connection` is the error that stopped the credentials being read, when they could not be. `could_reuse`:
    whether the run got as far as its snapshot step (`could_have_reused`; None: not known)."""
    database = KnownState()
    snapshot = None
    unknown = []
    if isinstance(connection, Exception):
        unknown.append(f"what the database says (its credentials could not be read: {describe(connection)})")
    else:
        try:
            database = read_database(connection, flow_run_id)
        except Exception as exc:  # noqa: BLE001 - reported as unknown, never raised
            unknown.append(f"what the database says (it could not be read: {describe(exc)})")
    try:
        own, commits = snapshots_of_run(environment, flow_run_id, git_sha, rds_client)
        snapshot = own or (commits if could_reuse else None)
        if snapshot is None and commits is not None and could_reuse is None:
            unknown.append(f"whether the run got as far as its snapshot step, so whether it reused "
                           f"{commits.identifier}, taken for its commit: restore from it only if it did")
    except Exception as exc:  # noqa: BLE001 - reported as unknown, never raised
        unknown.append(f"whether a snapshot was taken ({describe(exc)})")
    return replace(database, snapshot=snapshot, unknown=tuple(unknown))


def describe(exc: BaseException) -> str:
    """Our errors' texts are free of secrets; anyone else's is named by its type only."""
    return str(exc).splitlines()[0][:300] if isinstance(exc, RdsMigrationsError) else type(exc).__name__


def explanation(run: EndedRun, environment: str, known: KnownState) -> str:
    """The error text of the summary: why nobody heard from the run, and what the database says."""
    what = {"crashed": "crashed (its process died", "cancelled": "was cancelled (its process was stopped",
            "timed-out": "was stopped at its time budget (from the environment's policy"}[run.ending]
    lines = [f"The flow run {what}: {run.reason.strip()[:300] or 'no reason given'}); it could not report "
             "itself, so this is what the database and the snapshots say."]
    ours = [d for d in known.dirty if d.flow_run_id == run.flow_run_id]
    for mark in known.dirty:
        lines.append(f"Dirty: {mark.describe()}. To resolve: {mark.hint(environment)}.")
    if run.flow_name == ROLLBACK_FLOW:
        lines += rollback_lines(run, environment, known, ours)
    else:
        if run.step == "migrate" and not ours:
            lines.append("The migration that was running, if any, ran in its own transaction: the server rolled it "
                         "back when the session ended, and the next run applies it again.")
        if run.planned is None:
            lines.append("What is still pending is not known here (the run stopped before its plan was published): "
                         f"`rds-migrations plan {where_flag(environment)}` says.")
    lines += [f"Not known: {item}." for item in known.unknown]
    return "\n".join(lines)


def crash_summary(run: EndedRun, environment: Environment | None,
                  known: KnownState) -> RunSummary | RefreshSummary | Notice:
    """The summary a crashed or cancelled run would have sent, built from what is known."""
    name = run.parameter("environment")
    step = f"{run.step or 'unknown'} (run {run.ending})"
    error = explanation(run, name, known)
    tier = environment.tier if environment else "unknown"
    if run.flow_name == ROLLBACK_FLOW:
        return rollback_notice(run, tier, error, known)
    if run.flow_name in REFRESH_FLOWS:
        given = {key: str(value) for key, value in run.parameters.items() if key in PARAMETERS}
        return RefreshSummary(
            action=REFRESH_FLOWS[run.flow_name], environment=name, tier=tier, outcome="failed",  # type: ignore[arg-type]
            failed_step=step, error=error, result=None, applied=known.applied, deployment=run.deployment,
            flow_name=run.flow_name, parameters=shown_parameters(given, PARAMETERS),
            duration_seconds=run.duration_seconds, run_url=run.run_url,
        )
    ours = [d for d in known.dirty if d.flow_run_id == run.flow_run_id]
    pending = None if run.planned is None else tuple(m for m in run.planned if m not in known.applied)
    failed = ours[0].migration_id if ours else (pending[0] if run.step == "migrate" and pending else None)
    # Its own dirty mark says what it left (the `Dirty:` line above): never "rolled back".
    left = (f"non-transactional, stopped {'while recording it' if ours[0].state == 'recording' else 'midway'}: "
            "the database is marked dirty (see Dirty above) and later runs refuse until it is resolved"
            if ours else None)
    snapshot = known.snapshot
    return RunSummary(
        environment=name, tier=tier, git_sha=run.parameter("git_sha"), trigger=run.parameter("trigger"),
        outcome="failed", failed_step=step, error=error,
        applied=known.applied, failed_migration=failed, failed_outcome=left, pending=pending,
        snapshot_id=snapshot.identifier if snapshot else None,
        snapshot_location=snapshot.location if snapshot else None,
        restore_steps=restore_commands(name, snapshot.identifier) if snapshot else (),
        duration_seconds=run.duration_seconds, run_url=run.run_url,
    )


# ---- a rollback ---------------------------------------------------------------------------------------------


def undo_planned(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """What a rollback's undo table (`rollback-undo-<env>`: runs/rollback.py undo_rows) says it will undo, newest
    first (a refused plan, or one with nothing to undo, has no row)."""
    return tuple(str(row["migration"]) for row in sorted(rows, key=lambda row: int(row["order"])))


def undo_listed(plan_text: str) -> tuple[str, ...]:
    """What the plan artifact (`rollback-plan-<env>`) of a rollback started before the undo table existed says it
    will undo: the numbered lines of RollbackPlan.to_text as it was then, a format no new run is read by."""
    return tuple(match.group(1) for match in UNDO_LINE.finditer(plan_text))


def undo_progress(run: EndedRun, known: KnownState) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Of what the rollback's plan was to undo (newest first): (undone, left dirty, still applied), by what the
    history says now. A migration whose rollback file stopped halfway is unrecorded and dirty: never "undone"."""
    dirty = {mark.migration_id for mark in known.dirty if mark.flow_run_id == run.flow_run_id}
    planned, history = run.planned or (), known.history or ()
    return (tuple(m for m in planned if m not in history and m not in dirty),
            tuple(m for m in planned if m in dirty), tuple(m for m in planned if m in history))


def rollback_lines(run: EndedRun, environment: str, known: KnownState, ours: list[DirtyMigration]) -> list[str]:
    """What a stopped rollback left, beyond its dirty marks: what was running, what is pending again."""
    where = where_flag(environment)
    lines = []
    if run.step == "rollback" and not ours:
        lines.append("The rollback file that was running, if any, ran in one transaction with the removal of its "
                     "history rows: the server rolled it back when the session ended, so that migration stays "
                     "applied.")
    if run.planned is None:
        lines.append("What it was to undo is not known here (the run stopped before its plan was published): "
                     f"`rds-migrations status {where}` shows what is applied now.")
    elif known.history is not None:
        undone, _, still = undo_progress(run, known)
        if undone:
            lines.append(f"Undone, so pending again (the next run applies them): {', '.join(undone)}.")
        if still:
            then = "once the dirty mark is resolved, " if ours else ""
            lines.append(f"Still applied: {', '.join(still)}; to undo them, {then}run "
                         f"`rds-migrations rollback {where} --to {run.parameter('to', 'VERSION')}` again.")
    return lines


def rollback_notice(run: EndedRun, tier: str, error: str, known: KnownState) -> Notice:
    """The notice a stopped rollback would have sent (as runs/rollback.py words it): what its plan was to undo
    against what the history says now, and the snapshot it took (its own: a rollback never reuses one)."""
    name = run.parameter("environment")
    facts = [("to", run.parameter("to")), ("git SHA", run.parameter("git_sha")),
             ("planned", "not known (the run stopped before its plan)" if run.planned is None
              else ", ".join(run.planned) or "nothing to undo")]
    if run.planned is not None and known.history is None:
        facts.append(("rolled back", "not known (the database could not be read)"))
    elif run.planned is not None:
        undone, dirty, still = undo_progress(run, known)
        facts += [("rolled back", ", ".join(undone) or "none"),
                  *([("left dirty", f"{', '.join(dirty)} (partly undone: see Dirty below)")] if dirty else []),
                  ("still applied", ", ".join(still) or "none of the planned")]
    snapshot = known.snapshot
    if snapshot is not None:
        facts.append(("snapshot", snapshot.identifier))
    return Notice("Rollback", name, tier, "failed", tuple(facts),
                  restore_commands(name, snapshot.identifier) if snapshot else (),
                  f"at step {run.step or 'unknown'} (run {run.ending}): {error}", run.duration_seconds, run.run_url)
