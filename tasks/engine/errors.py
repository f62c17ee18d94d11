"""Every error a person should read derives from `RdsMigrationsError`; the CLI catches that one class.

Each class says what kind of failure it is and which exit code the command line gives it: 2 for a bad
command or configuration (fix the input), 1 for a run that was refused or failed (read the message). The
two that carry a report live beside it: `ValidationFailed` (migrations/report.py) and `MigrationError`
(migrations/results.py). The texts never hold a secret: they are built from names, identifiers and
SQLSTATEs, and a database or AWS error is redacted before it becomes one of these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def redact(text: str, *secrets: str) -> str:
    """`text` without the secrets, in every form they take in SQL and URLs: as they are, as a quoted SQL
    literal writes them (quotes doubled, or backslash-escaped in an E'' string) and URL-quoted. A secret of one
    to three characters is no secret, and starring every "p" in a message would both garble it and give the
    password away."""
    for secret in secrets:
        if len(secret) < 4:
            continue
        forms = {secret, secret.replace("'", "''"), secret.replace("\\", "\\\\").replace("'", "\\'"),
                 secret.replace("\\", "\\\\").replace("'", "''"), quote(secret, safe=""), quote(secret)}
        for form in sorted(forms, key=len, reverse=True):  # the longest first: a form may hold another
            text = text.replace(form, "**********")
    return text


# SQLSTATE classes whose errors can quote a row's values: 22 (data exception: `invalid input syntax for type
# integer: "<value>"`) and 23 (integrity: `Failing row contains (...)`, `Key (email)=(...) already exists`).
ROW_DATA_CLASSES = ("22", "23")
ROW_VALUES_LEFT_OUT = "the row's values are not repeated here; run the statement in psql to see them"


def server_words(exc: Exception) -> str:
    """What the database said, for messages that travel (Slack, events, artifacts, the history's dirty marks):
    its primary message, and its DETAIL unless that can quote a row's values, which are personal data. Where they
    could be quoted (a data or integrity error), the quoted value and the DETAIL give way to a short note. Read by
    attributes: psycopg is not imported here."""
    diag = getattr(exc, "diag", None)
    primary = (getattr(diag, "message_primary", None) or str(exc).split("\n", 1)[0]).strip()
    detail = (getattr(diag, "message_detail", None) or "").strip()
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if not sqlstate.startswith(ROW_DATA_CLASSES):
        return f"{primary} ({detail})" if detail else primary
    # The server's own text, not SQL: from the first double quote to the last is the value (which may hold one).
    quoted = re.sub(r'".*"', '"..."', primary, flags=re.S) if sqlstate.startswith("22") else primary
    return f"{quoted} ({ROW_VALUES_LEFT_OUT})" if detail or quoted != primary else quoted


class RdsMigrationsError(Exception):
    """The root: a failure explained in words, with what to do next. `result`: what the run did before it
    failed (its summary or report), when a pipeline knows it: `--json` prints it."""

    exit_code = EXIT_FAILED
    result: object | None = None


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


class DatabaseRefused(RdsMigrationsError):
    """The database refused what the tool itself asked of it (a privilege, a setting): its SQLSTATE and words,
    and what to do. A migration's own failure is a `MigrationError`, not this."""

    @classmethod
    def of(cls, exc: Exception, *secrets: str) -> DatabaseRefused:
        """From a psycopg error (read by its attributes: psycopg is not imported here), without the query text
        the driver adds and without `secrets`."""
        diag = getattr(exc, "diag", None)
        words = (getattr(diag, "message_primary", None) or str(exc).split("\n", 1)[0]).strip()
        sqlstate = getattr(exc, "sqlstate", None)
        hint = _REFUSAL_HINTS.get(sqlstate or "", "")
        text = f"the database refused (SQLSTATE {sqlstate or 'unknown'}): {words}{hint}"
        return cls(redact(text, *secrets))


_REFUSAL_HINTS = {
    "42501": "; the database user lacks a privilege this needs: grant it, or run as a role that has it",
    "25006": "; the session is read-only (a replica, or default_transaction_read_only): point at the primary",
    "53300": "; the server has no connection slots left: try again when fewer sessions are open",
    "57014": ("; a statement timeout (a migration's: the environment's policy.statement_timeout_ms; the tool's own "
              "reads: 60 s) or an operator cancelled it"),
    "55P03": ("; another session holds a lock on a table this needs (a migration or a DDL running now?); "
              "`SELECT pid, pg_blocking_pids(pid), query FROM pg_stat_activity WHERE wait_event_type = 'Lock'` "
              "shows who waits for whom: try again when it ends"),
}


class EmbeddedServerError(RdsMigrationsError):
    """The throwaway local PostgreSQL could not be found, started or used."""


# ---- before anything runs -------------------------------------------------------------------------------


class LintError(RdsMigrationsError):
    """squawk could not run, or its output could not be read. Not raised for findings."""


class RehearsalUnavailable(RdsMigrationsError):
    """The rehearsal's scratch database could not be made where the environment asks: nothing was applied."""


class DriftReferenceUnavailable(RdsMigrationsError):
    """Drift's reference could not be rebuilt: a migration failed on the scratch database. The target was not
    touched."""


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


class Interrupted(RdsMigrationsError):
    """Ctrl-C (SIGINT): the run stopped where it was, told the team, and exits 130 as an interrupted program
    does. The statement running was stopped and the server rolled back its transaction."""

    exit_code = 130
