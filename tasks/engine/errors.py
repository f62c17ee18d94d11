"""Every error a person should read derives from `RdsMigrationsError`; the CLI catches that one class.

Each class says what kind of failure it is and which exit code the command line gives it: 2 for a bad
command or configuration (fix the input), 1 for a run that was refused or failed (read the message). The
two that carry a report live beside it: `ValidationFailed` (migrations/report.py) and `MigrationError`
(migrations/results.py). The texts never hold a secret: they are built from names, identifiers and
SQLSTATEs, and a database or AWS error is redacted before it becomes one of these.
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class RdsMigrationsError(Exception):
    """The root: a failure explained in words, with what to do next."""

    exit_code = EXIT_FAILED


# ---- the input: exit 2 ----------------------------------------------------------------------------------


class ConfigError(RdsMigrationsError):
    """The environments file is missing or malformed, a parameter is refused, or a name points nowhere."""

    exit_code = EXIT_USAGE


class UsageError(RdsMigrationsError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


# ---- reaching the database ------------------------------------------------------------------------------


class SecretError(RdsMigrationsError):
    """The credentials could not be read or are malformed. The text names the field, never a value."""


class DatabaseUnreachable(RdsMigrationsError):
    """Connecting failed. Transient when the server refused or was not there; not when auth failed."""

    def __init__(self, where: str, detail: str, sqlstate: str | None) -> None:
        # libpq reports a refused password at connect time as text, without the SQLSTATE: name it anyway.
        if sqlstate is None and "password authentication failed" in detail:
            sqlstate = "28P01"
        self.sqlstate = sqlstate
        self.auth_failed = sqlstate in {"28P01", "28000"}
        super().__init__(f"cannot connect to {where}: {detail.strip()}")


class EmbeddedServerError(RdsMigrationsError):
    """The throwaway local PostgreSQL could not be found, started or used."""


# ---- before anything runs -------------------------------------------------------------------------------


class LintError(RdsMigrationsError):
    """squawk could not run, or its output could not be read. Not raised for findings."""


class CommitUnavailable(RdsMigrationsError):
    """A run's commit cannot be fetched or checked out: nothing was read from migrations/ or touched."""


class InvalidMigrations(RdsMigrationsError):
    """The migrations directory has problems (catalog.py names each file and line): nothing was applied."""


class HistoryMismatch(RdsMigrationsError):
    """The database's history does not match the files: nothing was applied."""


class DirtyDatabase(HistoryMismatch):
    """A non-transactional migration did not finish: nothing runs until an operator resolves it."""


class InvalidIndexFound(HistoryMismatch):
    """An INVALID index is in the way of a pending migration and the policy says refuse: nothing was applied.

    `indexes` are `InvalidIndex` values: their text names the index, their `drop_command` the way out."""

    def __init__(self, indexes: Iterable, reason: str = "policy.invalid_index is 'refuse'") -> None:
        self.indexes = tuple(indexes)
        lines = [f"{index}; drop it, then run again: {index.drop_command}" for index in self.indexes]
        super().__init__(
            "; ".join(lines) + f" ({reason}; with the index in place the migration would fail, or with IF NOT "
            "EXISTS be recorded while the index stays unusable; nothing was applied)"
        )


class LockTimeout(RdsMigrationsError):
    """Another run holds the migration lock."""


class ResolveError(RdsMigrationsError):
    """`rds-migrations resolve` was asked for something that is not so (not dirty, file changed or missing)."""


class ApprovalDenied(RdsMigrationsError):
    """Nobody approved: rejected, or the pause timed out. Nothing was snapshotted or applied."""


# ---- while it runs --------------------------------------------------------------------------------------


class SnapshotError(RdsMigrationsError):
    """The snapshot could not be taken or did not complete. Names the snapshot, its state and what to do.

    Not transient: retrying the same call will not help (quota, failed snapshot, instance not available).
    """


class RefreshError(RdsMigrationsError):
    """A refresh or restore was refused or failed. Says what state each copy is in and what to do next."""
