"""What an apply run did: each migration applied, the one that failed and why, what is still pending."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tasks.engine.errors import RdsMigrationsError
from tasks.engine.migrations.dirty import applied_before
from tasks.engine.migrations.sqltext import shorten
from tasks.engine.migrations.statements import concurrent_index, without_passwords

LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class AppliedMigration:
    id: str
    duration_seconds: float
    attempts: int = 1


@dataclass(frozen=True)
class MigrationFailure:
    migration_id: str
    statement: str
    sqlstate: str | None
    message: str
    transactional: bool
    attempts: int = 1
    statement_number: int = 0  # 1-based; 0 when not known (recording failed)
    statement_count: int = 0
    dirty: bool = False  # non-transactional and left partly applied: later runs refuse until resolved
    resolution: str = ""
    outcome_unknown: bool = False  # the session ended before the server said whether it committed
    applied_through: int | None = None  # non-transactional: statements 1..applied_through are applied, when known
    commits_inside: bool = False  # the failing statement (a CALL, a DO that COMMITs) may have committed part of it

    def __post_init__(self) -> None:  # it is shown, stored and sent: a password a migration spells is not
        object.__setattr__(self, "statement", without_passwords(self.statement))

    def outcome(self) -> str:
        if self.outcome_unknown:
            return ("whether it committed is not known (the session ended first); the history tables, written in "
                    "the migration's own transaction, know: the next run's plan shows it applied or pending")
        if self.transactional and self.sqlstate == LOCK_NOT_AVAILABLE:
            return (f"rolled back: database unchanged, {self.attempts} attempts, each stopped by lock_timeout "
                    "behind another session's lock; find it with pg_blocking_pids() and run again")
        if self.transactional:
            return "rolled back: the database is as it was before this migration"
        if self.dirty and self.statement_number == 0:
            return "non-transactional: all its statements ran but it could not be recorded; the database is dirty"
        if self.dirty:
            through = self.statement_number if self.applied_through is None else self.applied_through + 1
            partly = (f", and statement {self.statement_number} (a CALL, a DO block that can COMMIT, or a statement "
                      "that commits in phases) may have committed part of its work" if self.commits_inside else "")
            return (f"non-transactional: {applied_before(through)}{partly}; the database is marked dirty and later "
                    "runs refuse until it is resolved")
        leftover = ""
        if concurrent_index(self.statement):
            leftover = ("; a failed CREATE INDEX CONCURRENTLY leaves an INVALID index, which the next run drops or "
                        "refuses (policy.invalid_index)")
        return f"non-transactional, so not retried: its first statement failed and nothing else ran{leftover}"

    def __str__(self) -> str:
        state = f"SQLSTATE {self.sqlstate}" if self.sqlstate else "no SQLSTATE"
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        which = f"statement {self.statement_number} of {self.statement_count}" if self.statement_number else "statement"
        text = (f"migration {self.migration_id} failed{tries} ({state}): {self.message}\n"
                f"  {which}: {shorten(self.statement)}\n  {self.outcome()}")
        return text + (f"\n  to resolve: {self.resolution}" if self.resolution else "")


@dataclass(frozen=True)
class ApplyReport:
    applied: tuple[AppliedMigration, ...] = ()
    failed: MigrationFailure | None = None
    pending: tuple[str, ...] = ()
    duration_seconds: float = 0.0
    dry_run: bool = False

    @property
    def applied_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.applied)


class MigrationError(RdsMigrationsError):
    """The run stopped. Carries the report of what was applied, what failed and what is pending."""

    def __init__(self, message: str, report: ApplyReport) -> None:
        super().__init__(message)
        self.report = report


class ApplyObserver(Protocol):
    """Told about each migration as the apply loop finishes it (the Prefect side turns this into a progress
    artifact and events). It must not raise: what it does never changes the run."""

    def applied(self, migration: AppliedMigration, position: int, count: int) -> None:
        """`migration` was applied and recorded; it was number `position` (1-based) of `count` pending."""

    def failed(self, failure: MigrationFailure, position: int, count: int) -> None:
        """The run stopped at `failure`, number `position` of `count`."""
