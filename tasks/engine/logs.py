"""The logger type every engine function takes: a standard `logging.Logger`, or Prefect's run logger
(a `LoggerAdapter`) when a Prefect task hands its own in."""

from __future__ import annotations

import logging

Log = logging.Logger | logging.LoggerAdapter


class Named(logging.LoggerAdapter):
    """`log` with every line starting with `name` and a colon: a fleet's targets run side by side, and their
    lines ("Plan:", "Applying 0002.b ...") would interleave with nothing to say whose they are."""

    def __init__(self, log: Log, name: str) -> None:
        super().__init__(log, {})  # type: ignore[arg-type] - an adapter of an adapter logs through both
        self.target = name

    def process(self, msg: object, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        return f"{self.target}: {msg}", kwargs
