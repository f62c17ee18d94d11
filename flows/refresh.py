"""The staging refresh flow (scheduled nightly): staging replaced by a masked copy of production's newest
snapshot (or a fresh one), then migrated to head, then a notification — on success and on failure. The
steps are in tasks/engine/runs/refresh.py; each is a task run of this flow."""

from __future__ import annotations

from prefect import flow

from flows.budget import within_budget
from flows.hooks import report_cancellation, report_crash
from flows.observe import run_name
from flows.steps import PrefectSteps
from tasks.engine.messages import RefreshSummary
from tasks.engine.runs.refresh import refresh_staging as run_refresh


@flow(name="refresh-staging", flow_run_name=run_name, on_crashed=[report_crash],
      on_cancellation=[report_cancellation])
def refresh_staging(
    environment: str = "staging", git_sha: str = "unknown", trigger: str = "schedule"
) -> RefreshSummary:
    """Refresh a staging environment from production, mask it, migrate it to head and notify.

    A failure before the swap leaves the old staging untouched; the flow run then ends Failed after the
    notification (which names this deployment and its parameters).

    Args:
        environment: an environment of tier "staging" with a [refresh] section in deployments/environments.toml.
        git_sha: the commit whose migrations/ directory staging is migrated to afterwards.
        trigger: who asked for this run ("schedule", "manual", "cli").
    """
    with within_budget(environment, "refresh"):
        return run_refresh(environment, PrefectSteps(), git_sha=git_sha, trigger=trigger)
