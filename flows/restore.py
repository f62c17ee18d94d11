"""The restore flow: one of an environment's snapshots restored to a NEW name and swapped in by renames.

Any tier: this is how production comes back after a bad migration (the failure notification of the
production flow names the snapshot and this flow). The replaced copy is kept as `<id>-old-<time>`; nothing
is ever restored onto the live name.
"""

from __future__ import annotations

from prefect import flow

from flows.budget import within_budget
from flows.hooks import report_cancellation, report_crash
from flows.observe import run_name
from flows.steps import PrefectSteps
from tasks.engine.messages import RefreshSummary
from tasks.engine.runs.refresh import restore_snapshot as run_restore


@flow(name="restore-snapshot", flow_run_name=run_name, on_crashed=[report_crash],
      on_cancellation=[report_cancellation])
def restore_snapshot(environment: str, snapshot_id: str, git_sha: str = "unknown") -> RefreshSummary:
    """Restore `snapshot_id` next to the environment's database, swap names, keep the old copy, notify.

    Args:
        environment: the environment whose database is replaced (deployments/environments.toml).
        snapshot_id: one of this environment's snapshots: an RDS DB or cluster snapshot id, or (local kind)
            a dump's name in its snapshots directory, without `.dump`.
        git_sha: the commit the restored database should match, for the record.
    """
    with within_budget(environment, "restore"):
        return run_restore(environment, snapshot_id, PrefectSteps(), git_sha=git_sha)
