"""A dirty mark: a non-transactional migration (or rollback) that started and did not finish, as its row in
`_rds_migrations_dirty` says, in words, with the commands that resolve it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tasks.engine.migrations.hints import resolve_hint


@dataclass(frozen=True)
class DirtyMigration:
    """A non-transactional migration that started and did not finish: its row in `_rds_migrations_dirty`."""

    migration_id: str
    state: str  # "running": the run died during it; "failed": a statement failed; "recording": ran, unrecorded
    statement_number: int  # the statement that was running or failed (1-based)
    statement_count: int
    checksum: str
    sqlstate: str | None = None
    message: str | None = None
    flow_run_id: str | None = None
    started_at: datetime | None = None
    applied_through: int | None = None  # when known: statements 1..applied_through are applied
    # "oid name" of each INVALID index there when the mark was written: not left by it (None: not recorded)
    invalid_before: tuple[str, ...] | None = None

    def __post_init__(self) -> None:  # read from a JSON array: a list
        if self.invalid_before is not None and not isinstance(self.invalid_before, tuple):
            object.__setattr__(self, "invalid_before", tuple(self.invalid_before))

    def describe(self) -> str:
        k, n = self.statement_number, self.statement_count
        applied = applied_before(k if self.applied_through is None else self.applied_through + 1)
        if self.state == "recording":
            what = f"all {n} statement(s) ran, but the run stopped before recording it"
        elif self.state == "failed":
            what = f"statement {k} of {n} failed (SQLSTATE {self.sqlstate}: {self.message}); {applied}"
        else:
            what = (f"the run stopped (process killed or connection lost) during statement {k} of {n}; "
                    f"{applied}, and statement {k} may or may not have completed")
        when = f"{self.started_at:%Y-%m-%d %H:%M:%S %Z}" if self.started_at else "an unknown time"
        return f"{self.migration_id} (non-transactional) is dirty: {what} (run {self.flow_run_id or '-'}, {when})"

    @property
    def rolling_back(self) -> bool:
        """Left by a rollback file (its messages start so: rollback_plan.rolling_back), not by the migration."""
        return (self.message or "").startswith("rolling back (")

    def hint(self, environment: str | None, migrations: Path | None = None) -> str:
        return resolve_hint(self.migration_id, environment, rolling_back=self.rolling_back, migrations=migrations)


def applied_before(number: int) -> str:
    if number <= 1:
        return "no statement before it ran"
    return "statement 1 is applied" if number == 2 else f"statements 1-{number - 1} are applied"
