"""Every flow stops itself at its environment's run budget (tasks/engine/runs/budget.py): the numbers the
GitHub check's deadline is made of, so the check never goes red while the run goes on, nor waits forever.

Prefect's own cancel scope interrupts the run (`prefect.utilities.timeout`, what a flow's `timeout_seconds`
uses: an alarm in the main thread, so a statement waiting on the server is interrupted too, and the server rolls
its transaction back when the session closes). What the run had done is then reported as a crash is, from what
the database says (flows/hooks.py), and the run ends Failed naming the budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import FlowRunContext
from prefect.utilities.timeout import timeout

from flows.hooks import report_over_budget
from tasks.engine.errors import RdsMigrationsError
from tasks.engine.fleet.targets import environment_named
from tasks.engine.runs.budget import run_budget_seconds


class RunOverBudget(TimeoutError):
    """The run took longer than its environment's budget and was stopped."""


def budget_of(environment: str) -> int | None:
    """The environment's run budget; None when it cannot be read (the run itself says why, naming it)."""
    try:
        return run_budget_seconds(environment_named(environment))
    except RdsMigrationsError:
        return None


@contextmanager
def within_budget(environment: str) -> Iterator[None]:
    """Around a flow's body: stop it at the budget, report what it had done, fail naming the budget."""
    seconds = budget_of(environment)
    if seconds is None:
        yield
        return
    try:
        with timeout(seconds=seconds, timeout_exc_type=RunOverBudget):
            yield
    except RunOverBudget:
        message = (f"environment {environment}: the run took longer than its budget of {seconds} s "
                   "(policy.run_budget_seconds, or the sum of its waits) and was stopped; what it had done is in "
                   "the notification, and `rds-migrations status` shows the database")
        context = FlowRunContext.get()
        if context is not None and context.flow is not None:
            report_over_budget(context.flow, context.flow_run, message)
        raise RunOverBudget(message) from None
