"""The frame a pipeline runs its steps in, so that it announces how it ended whatever happened, then ends in
the error it met. One frame for every pipeline (run, rollback, baseline, fleet, refresh, restore): the rule
about which failures are announced lives here once.

    with Ended(on_interrupt=lambda: Interrupted(...)) as ended:
        ...the steps...
    ...summarize and notify, with ended.error...
    ended.raise_if_failed(summary)
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from tasks.engine.errors import RdsMigrationsError, UsageError


def said(error: BaseException) -> str:
    """An error in words fit for a message (a notification, an artifact, an event): ours are written for people
    and free of secrets; anything else (a bug, a library's error) is named by its type, its text left to the
    run's log."""
    if isinstance(error, RdsMigrationsError):
        return str(error)
    return f"{type(error).__name__} (an unexpected error: the run's log has its details)"


class Ended:
    """What a pipeline's steps ended in (`error`: None when they finished):
    - a usage mistake (`UsageError`: a --target naming no file) goes straight out: said on the command line,
      announced to nobody;
    - any other failure is kept, for the announcement;
    - Ctrl-C too, as `on_interrupt()` describes it (without `on_interrupt`, it goes straight out)."""

    def __init__(self, on_interrupt: Callable[[], Exception] | None = None) -> None:
        self.error: Exception | None = None
        self._on_interrupt = on_interrupt

    def __enter__(self) -> Ended:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, UsageError):
            return False
        if isinstance(exc, Exception):
            self.error = exc
            return True
        if isinstance(exc, KeyboardInterrupt) and self._on_interrupt is not None:
            self.error = self._on_interrupt()
            return True
        return False

    def said(self) -> str:
        """The error kept, in words fit for a message (`said`); "" when the steps finished."""
        return "" if self.error is None else said(self.error)

    def raise_if_failed(self, result: object = None) -> None:
        """After the announcement: raise the error kept, carrying `result` (for --json: what was done)."""
        if self.error is None:
            return
        if isinstance(self.error, RdsMigrationsError) and result is not None:
            self.error.result = result
        raise self.error
