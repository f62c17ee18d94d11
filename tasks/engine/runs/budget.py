"""How long a run of an environment may take, from its policy: the flows' timeout and the GitHub check's
deadline (`rds-migrations trigger`) come from the same numbers, so the check can never go red while the run
goes on, nor wait forever."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.engine.environments import Environment

FIXED_RUN_SECONDS = 600  # validation, rehearsal, plan, the other migrations, notification
START_MARGIN_SECONDS = 300  # the command's start to the flow's first state: a worker's poll, its process start


def deadline_parts(environment: Environment) -> dict[str, int]:
    """How long a run of this environment may take, part by part (seconds), from its policy.

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
    policy = environment.policy
    if policy.run_budget_seconds is not None:  # said outright in the policy
        return {"run budget (policy)": policy.run_budget_seconds, "start margin": START_MARGIN_SECONDS}
    snapshot = getattr(environment.snapshot, "max_wait_seconds", 0)
    return {
        "snapshot wait": int(snapshot),
        "approval wait": policy.approval_timeout_seconds if policy.approval_required else 0,
        "migration lock wait": int(policy.migration_lock_wait_seconds),
        "longest statement": policy.statement_timeout_ms // 1000,
        "lock timeout retries": int(policy.lock_timeout_retries
                                    * (policy.lock_timeout_ms / 1000 + policy.lock_retry_max_delay_seconds)),
        "rest of the run": FIXED_RUN_SECONDS,
        "start margin": START_MARGIN_SECONDS,
    }


def run_budget_seconds(environment: Environment) -> int:
    """What one run of this environment may take once started: where its flow stops itself."""
    parts = deadline_parts(environment)
    return sum(parts.values()) - parts["start margin"]


def watch_timeout(environment: Environment) -> int:
    """The check's deadline for this environment, in seconds from the command's start."""
    return sum(deadline_parts(environment).values())
