"""Waves and stop rules, pure: which targets run together, and when the rest must not start.

A canary wave of the first N targets runs first; the other targets start only when every canary succeeded
(or had nothing to do). Within and across waves, `stop_after_failures = K` lets no further target start once K
have failed; without it every target is tried.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from tasks.engine.fleet.report import TargetResult

T = TypeVar("T")
GOOD = frozenset({"succeeded", "nothing-to-do", "dry-run"})


@dataclass(frozen=True)
class Wave(Generic[T]):
    name: str  # "canary" or "rest"
    targets: tuple[T, ...]


def plan_waves(targets: Sequence[T], canary: int) -> list[Wave[T]]:
    """The canary wave (the first `canary` targets, when there are more than that) then the rest."""
    if 0 < canary < len(targets):
        return [Wave("canary", tuple(targets[:canary])), Wave("rest", tuple(targets[canary:]))]
    return [Wave("rest", tuple(targets))] if targets else []


def after_wave(wave: Wave[T], results: Sequence[TargetResult]) -> str | None:
    """Why the next waves must not start, or None: a canary that did not succeed stops the rest."""
    bad = [r.target for r in results if r.outcome not in GOOD]
    if wave.name == "canary" and bad:
        return f"the canary wave did not succeed ({', '.join(bad)}): the other targets were not started"
    return None


class StopRule:
    """`stop_after_failures`: counts failures as targets finish (from any thread) and says when to stop."""

    def __init__(self, stop_after_failures: int | None) -> None:
        self.limit = stop_after_failures
        self.failures = 0
        self._lock = threading.Lock()

    def record(self, result: TargetResult) -> None:
        if result.outcome == "failed":
            with self._lock:
                self.failures += 1

    @property
    def reason(self) -> str | None:
        if self.limit is not None and self.failures >= self.limit:
            return (
                f"{self.failures} target(s) failed, stop_after_failures is {self.limit}: the targets not yet "
                "started were not started"
            )
        return None
