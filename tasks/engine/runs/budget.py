"""How long a run of an environment may take, from its policy: the flows' timeout and the GitHub check's
deadline (`rds-migrations trigger`) come from the same numbers, so the check can never go red while the run
goes on, nor wait forever. A refresh or a restore waits for RDS as well (a restore, renames; a refresh's password
and deletion), each wait as long as `refresh.max_wait_seconds`: their budget adds those waits up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.engine.environments import RESTORE_WAIT_SECONDS
from tasks.engine.runs.kinds import RunKind

if TYPE_CHECKING:
    from tasks.engine.environments import Environment

FIXED_RUN_SECONDS = 600  # validation, rehearsal, plan, the other migrations, notification
START_MARGIN_SECONDS = 300  # the command's start to the flow's first state: a worker's poll, its process start
# The waits for RDS of a restore-and-swap (snapshots/swap.py, backends.py), each at most the environment's
# refresh.max_wait_seconds, by run kind and snapshot kind:
# - restore, rds_instance (3): the restored instance available; live → old renamed; new → live renamed.
# - restore, aurora_cluster (4): the restored cluster available; its new writer instance available; the two renames.
#   A restore keeps the replaced copy and keeps the snapshot's master password: no deletion, no password wait.
# - refresh, rds_instance (4): the restored instance; its master password reset applied; the two renames (the
#   replaced instance's deletion is asked for, not waited for).
# - refresh, aurora_cluster (6): the restored cluster; its writer; the password; the two renames; the replaced
#   cluster's instances deleted (one wait: they are deleted together), unless refresh.keep_old.
SWAP_WAITS: dict[tuple[RunKind, str], int] = {
    ("restore", "rds_instance"): 3, ("restore", "aurora_cluster"): 4,
    ("refresh", "rds_instance"): 4, ("refresh", "aurora_cluster"): 6,
}


def deadline_parts(environment: Environment, kind: RunKind = "migration",
                   source: Environment | None = None) -> dict[str, int]:
    """How long a run of this environment may take, part by part (seconds), from its policy; a refresh or a
    restore (`kind`) adds its waits for RDS (`swap_parts`), and a refresh migrates without a snapshot. `source`:
    the environment a refresh copies (its snapshot wait counts when the refresh takes a fresh snapshot).

    - snapshot: the snapshot's `max_wait_seconds` (RDS instance and Aurora cluster; a pg_dump or no snapshot
      has no wait of its own);
    - approval: `approval_timeout_seconds` when `approval_required` (the run is paused that long at most);
    - migration lock: `migration_lock_wait_seconds` (another run holding the environment's lock);
    - longest statement: `statement_timeout_ms`, once (any one statement is cut there; a run that applies several
      long migrations, backfills say, can need more: give it `policy.run_budget_seconds`, or the run stops at
      this sum, each migration atomic or marked dirty as ever);
    - lock retries: `lock_timeout_retries` × (`lock_timeout_ms` + `lock_retry_max_delay_seconds`), the worst
      case of the retried lock timeouts;
    - the rest of the run: FIXED_RUN_SECONDS (600) for validation, rehearsal, plan, the other migrations and
      notification;
    - start margin: START_MARGIN_SECONDS (300) from the command's start to the flow's first state: the worker's
      poll, its process start, a short wait for the deployment's concurrency slot.

    Everything but the start margin is what a run itself may use: every flow stops itself there
    (`run_budget_seconds`; flows/budget.py), so it fails, notifies and turns the check red with its reason
    before the check's own deadline passes. `policy.run_budget_seconds`, when set, replaces the sum.
    """
    if kind in ("refresh", "restore"):
        migrating = _migration_parts(environment, snapshot=False) if kind == "refresh" else {
            "rest of the run": FIXED_RUN_SECONDS}
        return {**swap_parts(environment, kind, source), **migrating, "start margin": START_MARGIN_SECONDS}
    return {**_migration_parts(environment, snapshot=True), "start margin": START_MARGIN_SECONDS}


def swap_parts(environment: Environment, kind: RunKind, source: Environment | None) -> dict[str, int]:
    """A refresh's or a restore's waits for RDS: a fresh snapshot of the source (a refresh that takes one), then
    each wait of the restore and swap (`SWAP_WAITS`), as long as `refresh.max_wait_seconds` (a restore of an
    environment without [refresh]: RESTORE_WAIT_SECONDS). The local kind (a dump) waits for nothing."""
    refresh = environment.refresh
    wait = refresh.max_wait_seconds if refresh is not None else RESTORE_WAIT_SECONDS
    waits = SWAP_WAITS.get((kind, environment.snapshot.kind), 0)
    fresh = kind == "refresh" and refresh is not None and refresh.use_fresh_snapshot and source is not None
    return {"fresh snapshot wait": int(getattr(source.snapshot, "max_wait_seconds", 0)) if fresh else 0,
            "restore and swap waits": waits * wait}


def _migration_parts(environment: Environment, *, snapshot: bool) -> dict[str, int]:
    policy = environment.policy
    if policy.run_budget_seconds is not None:  # said outright in the policy
        return {"run budget (policy)": policy.run_budget_seconds}
    snapshot_wait = getattr(environment.snapshot, "max_wait_seconds", 0) if snapshot else 0
    return {
        "snapshot wait": int(snapshot_wait),
        "approval wait": policy.approval_timeout_seconds if policy.approval_required else 0,
        "migration lock wait": int(policy.migration_lock_wait_seconds),
        "longest statement": policy.statement_timeout_ms // 1000,
        "lock timeout retries": int(policy.lock_timeout_retries
                                    * (policy.lock_timeout_ms / 1000 + policy.lock_retry_max_delay_seconds)),
        "rest of the run": FIXED_RUN_SECONDS,
    }


def run_budget_seconds(environment: Environment, kind: RunKind = "migration",
                       source: Environment | None = None) -> int:
    """What one run of this environment (of `kind`) may take once started: where its flow stops itself."""
    parts = deadline_parts(environment, kind, source)
    return sum(parts.values()) - parts["start margin"]


def watch_timeout(environment: Environment, kind: RunKind = "migration", source: Environment | None = None) -> int:
    """The check's deadline for a run of this environment (of `kind`), in seconds from the command's start."""
    return sum(deadline_parts(environment, kind, source).values())
