"""The kind of run each flow is, in one table: the run.completed event's `kind` label (flows/events.py), a
crashed run's report (crash.py: a refresh's or a rollback's summary is not a migration's) and a refresh's
summary (refresh.py) read it. A new flow gets its row here (tests/test_flow_kinds.py fails until it has one)."""

from __future__ import annotations

from typing import Literal

RunKind = Literal["migration", "refresh", "restore", "rollback", "baseline", "drift-check", "fleet"]

FLOW_KINDS: dict[str, RunKind] = {
    "migrate-staging": "migration", "migrate-production": "migration", "migrate-target": "migration",
    "refresh-staging": "refresh", "restore-snapshot": "restore", "rollback": "rollback",
    "baseline": "baseline", "drift-check": "drift-check", "migrate-fleet": "fleet",
}


def flow_of(kind: RunKind) -> str:
    """The one flow of `kind` (a refresh, a restore, a rollback: every kind but a migration has one)."""
    [flow] = [name for name, its in FLOW_KINDS.items() if its == kind]
    return flow
