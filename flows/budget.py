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
from tasks.engine.runs.kinds import RunKind


class RunOverBudget(TimeoutError):
    """The run took longer than its environment's budget and was stopped."""


def budget_of(environment: str, kind: RunKind = "migration") -> int | None:
    """The budget of a run of `kind` of the environment (a refresh's counts its source's snapshot wait); None
    when it cannot be read (the run itself says why, naming it)."""
    try:
        named = environment_named(environment)
        source = environment_named(named.refresh.source_environment) \
            if kind == "refresh" and named.refresh is not None else None
        return run_budget_seconds(named, kind, source)
    except RdsMigrationsError:
        return None


@contextmanager
def within_budget(environment: str, kind: RunKind = "migration") -> Iterator[None]:
    """Around a flow's body: stop it at the budget of a run of `kind`, report what it had done, fail naming the
    budget."""
    seconds = budget_of(environment, kind)
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
