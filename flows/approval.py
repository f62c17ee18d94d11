"""The production approval gate: pause after the plan, until a person approves or rejects it.

Approve from the Prefect UI (the paused run shows a form), or with one API call:
    POST /api/flow_runs/<id>/resume  {"run_input": {"approved": true, "approver": "jane", "reason": "CHG-42"}}
An empty input resumes with the defaults, and `approved` defaults to False: only an explicit yes migrates.
"""

from __future__ import annotations

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from tasks.engine.errors import ApprovalDenied
from tasks.engine.migrations.report import ValidationReport


class Approval(RunInput):
    approved: bool = False
    approver: str = ""
    reason: str = ""


def request_approval(environment: str, report: ValidationReport, timeout_seconds: int,
                     rollback: bool = False) -> str:
    """Pause the flow run for approval. Returns who approved; raises `ApprovalDenied` otherwise. With
    `rollback`, the plan's pending migrations are the ones to be undone, newest first."""
    pending = ", ".join(report.pending)
    if rollback:
        description = (
            f"Approve ROLLING BACK **{environment}**: undo {len(report.pending)} migration(s), newest first "
            f"({pending}). The plan is in the `rollback-plan-{environment}` artifact. Set approved to true to proceed."
        )
    else:
        description = (
            f"Approve migrating **{environment}**: {len(report.pending)} pending ({pending}). "
            f"The plan is in the `migration-plan-{environment}` artifact. Set approved to true to proceed."
        )
    try:
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(description=description, approved=False),
            timeout=timeout_seconds,
        )
    except FlowPauseTimeout:
        raise ApprovalDenied(
            f"nobody approved within {timeout_seconds}s: nothing was snapshotted or applied"
        ) from None
    who = (answer.approver or "someone").strip()[:100]
    if not answer.approved:
        reason = f": {answer.reason.strip()[:300]}" if answer.reason.strip() else ""
        raise ApprovalDenied(f"rejected by {who}{reason}; nothing was snapshotted or applied")
    return who
