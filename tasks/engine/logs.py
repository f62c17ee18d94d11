"""The logger type every engine function takes: a standard `logging.Logger`, or Prefect's run logger
(a `LoggerAdapter`) when a Prefect task hands its own in."""

from __future__ import annotations

import logging

Log = logging.Logger | logging.LoggerAdapter


class Named(logging.LoggerAdapter):
    """`log` with every line starting with `name` and a colon: a fleet's targets run side by side, and their
    lines ("Plan:", "Applying 0002.b ...") would interleave with nothing to say whose they are; the rehearsal's
    lines are its own (`Rehearsal: applying ...`, `sentence`: a sentence's capital made small), so a run's log
    never reads as if it applied twice."""

    def __init__(self, log: Log, name: str, *, sentence: bool = False) -> None:
        super().__init__(log, {})  # type: ignore[arg-type] - an adapter of an adapter logs through both
        self.target, self.sentence = name, sentence

    def process(self, msg: object, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        text = str(msg)
        if self.sentence and text[:1].isupper() and text[1:2].islower():  # Applying …, not an id or INVALID
            text = text[0].lower() + text[1:]
        return f"{self.target}: {text}", kwargs
