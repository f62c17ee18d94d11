"""Several transactional migrations in ONE message, each still in its own transaction with its history rows.

By the environment's `policy.migrations_per_message` (default 20; 1: one message a migration), up to that many
consecutive migrations go in one simple-query message:

    BEGIN; <starting state>; <migration 1>; <history rows 1>; COMMIT; BEGIN; ...; <history rows 2>; COMMIT; ...

Each migration still commits with its history rows or not at all, and the server runs a message's statements
in order and stops at the first error: the migrations before it are committed and recorded, the failing one
is rolled back and named from its answers exactly as when it is sent alone (execute.py's `settle`), none
after it runs. What it saves is a round trip and a call into psycopg a migration: 5-15% of the bench's small
migrations on a local socket (BENCHMARKS.md); on RDS a round trip crosses the network.

What it must not change: PostgreSQL stamps a transaction's start (`now()`, `current_timestamp`,
`statement_timestamp()`) with the arrival of the message that began it, so migrations sent together see the
same `now()`. A migration that compares `now()` with what an earlier one of the same message wrote (`WHERE
created_at < now()` after a seed, a CHECK that `valid_to > valid_from`) would then do something else, and
which migrations share a message depends on what is pending. So by default (`shared_now = "never"`) a migration
that may read the clock (clock.py) goes only FIRST in a message, where its time is the one it would have had
alone; the ones after it are DDL that stores its expressions, which cannot tell. `shared_now = "accepted"` lets
any migration travel after another (the team's call).

A migration travels alone when it could change what the rest of a message does: non-transactional, a file
PostgreSQL's scanner cannot read (a quote left open), read differently as one message, too large, or holding a
statement `travels_alone` names. A message the server refuses before anything runs (it parses the whole
message first, so a syntax error anywhere refuses all of it) is sent again a migration at a time, which
names the failing statement exactly. Each migration's duration is measured by the server from its own
BEGIN (set in the starting state) and its history rows carry the time it was recorded, so the history reads
as if each had been sent alone. A connection lost in the middle of a message leaves the server running the
rest of it: that session is ended and the history read, so the report says exactly which were applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import psycopg
from psycopg import pq

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.catalog import Migration
from tasks.engine.migrations.clock import reads_the_clock
from tasks.engine.migrations.execute import (
    FATAL_ERROR,
    MISSING_PREPARED,
    READ_AS_A_WHOLE_REFUSED,
    RECORDING,
    Script,
    ended_the_transaction,
    failure_from,
    read_differently_as_one,
    send,
    settle,
)
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.results import AppliedMigration, MigrationFailure
from tasks.engine.migrations.session import StartingState
from tasks.engine.migrations.statements import travels_alone

MAX_CHARACTERS = 256 * 1024  # a large migration (a data backfill) goes alone: its round trip is nothing to it
SESSION_END_WAIT_SECONDS = 30  # for the server to end the session a lost connection left running


def travels_together(migration: Migration, server_version: int) -> bool:
    """Whether `migration` may share a message with others: transactional, on PostgreSQL 13+ (where
    `statement_timeout` applies to each statement of a message), read by PostgreSQL's scanner (a quote left
    open would pair with a quote of the migrations after it), read the same as one message, and with no
    statement that could change what the rest of the message does."""
    return (migration.transactional and server_version >= 130000 and migration.scanned
            and not read_differently_as_one(migration)
            and not any(travels_alone(statement) for statement in migration.statements))


def next_group(migrations: Sequence[Migration], server_version: int, limit: int,
               shared_now: str = "never") -> int:
    """How many of `migrations`, from the first, go in one message of at most `limit` (1: the first alone).
    `shared_now` "never": after the first, only migrations that cannot read the clock (clock.py), so none can
    tell it shares the first one's `now()`; "accepted": any that travels together."""
    if limit <= 1:
        return 1
    count = size = 0
    for migration in migrations[:limit]:
        size += sum(len(statement) for statement in migration.statements)
        if size > MAX_CHARACTERS or not travels_together(migration, server_version) or (
                count and shared_now == "never" and reads_the_clock(migration)):
            break
        count += 1
    return max(count, 1)


@dataclass(frozen=True)
class Sent:
    """What a message of several migrations did, after those committed were passed to `on_applied`.
    `failure`: why the first one not applied was not (rolled back, ready to retry after a lock timeout).
    `again_alone`: how many, from the first not applied, to send again one at a time, because the answers
    said nothing about them (the message was refused before it ran; the prepared history insert was dropped)."""

    failure: MigrationFailure | None = None
    again_alone: int = 0


def run_together(conn: psycopg.Connection, connection: Connection, ledger: Ledger, migrations: Sequence[Migration],
                 start: StartingState, *, git_sha: str, run_id: str | None,
                 on_applied: Callable[[AppliedMigration], None]) -> Sent:
    """Send `migrations` (each `travels_together`) in one message and read what each did; `connection`
    reaches the same database again when the connection is lost in the middle."""
    scripts = [Script.build(migration, ledger.record_statement(migration, git_sha, run_id),
                            start=start.statements(), before_record=start.as_the_run()) for migration in migrations]
    session_pid = conn.info.backend_pid
    answers: list[pq.PGresult] = []
    try:
        lost = send(conn, ";\n".join(script.text for script in scripts), answers)
    except BaseException:  # Ctrl-C: the session was ended; those whose COMMIT was answered stay applied
        for applied in _answered_commits(migrations, _parts(answers)):
            on_applied(applied)
        raise
    if lost is not None:
        return _after_lost(connection, session_pid, ledger, migrations, _parts(answers), lost, on_applied)
    parts = _parts(answers)
    for index, (migration, script) in enumerate(zip(migrations, scripts, strict=True)):
        part = parts[index] if index < len(parts) else []
        if _committed(part):
            on_applied(AppliedMigration(migration.id, _duration(part)))
            continue
        failure = settle(conn, ledger, migration, script, part, None)
        if failure is None:  # committed with its history rows, then the server ended the session
            on_applied(AppliedMigration(migration.id, _duration(part[:script.commit_index + 1])))
            if index + 1 < len(migrations):
                return Sent(_not_started(migrations[index + 1], _last_word(conn, part)))
            return Sent()
        if failure is READ_AS_A_WHOLE_REFUSED:  # refused before the first BEGIN ran (index 0): nothing ran
            return Sent(again_alone=len(migrations) - index)
        assert isinstance(failure, MigrationFailure)
        if failure.sqlstate == MISSING_PREPARED and failure.statement == RECORDING:
            ledger.prepare_record()  # a migration dropped it (and was rolled back): prepared again, it goes alone
            return Sent(again_alone=1)
        return Sent(failure)  # the server stopped at it: none after it ran
    return Sent()


def _after_lost(connection: Connection, session_pid: int, ledger: Ledger, migrations: Sequence[Migration],
                parts: list[list[pq.PGresult]], lost: psycopg.Error,
                on_applied: Callable[[AppliedMigration], None]) -> Sent:
    """The connection was lost in the middle of the message; the server may still be running the rest of it.
    End that session and read the history: those recorded are applied (a prefix: the server runs them in
    order), the first not recorded was rolled back with its history rows. When the server cannot be reached,
    those whose COMMIT was answered are applied and the next one's outcome is unknown, as when a migration is
    sent alone, with the ones after it."""
    recorded = _recorded_once_ended(connection, session_pid, ledger)
    if recorded is None:
        answered = _answered_commits(migrations, parts)
        for applied in answered:
            on_applied(applied)
        if len(answered) == len(migrations):
            return Sent()
        migration, after = migrations[len(answered)], len(migrations) - len(answered) - 1
        failure = replace(failure_from(migration, "(not known: the connection was lost while the message of "
                                                  "several migrations ran)", lost, 0), outcome_unknown=True)
        return Sent(replace(failure, message=f"{failure.message}; the server could not be reached again, so this "
                                              f"migration and the {after} sent after it in the same message may or "
                                              "may not have been applied: the history tables say "
                                              "(`rds-migrations status`)"))
    for migration in migrations:
        if migration.id not in recorded:
            return Sent(failure_from(migration, "(not known exactly: the connection was lost while it ran; the "
                                                "server ended the session, and its history rows are not there)",
                                     lost, 0))
        on_applied(AppliedMigration(migration.id, recorded[migration.id]))
    return Sent()


def _answered_commits(migrations: Sequence[Migration], parts: list[list[pq.PGresult]]) -> list[AppliedMigration]:
    """The migrations, from the first, whose BEGIN … COMMIT the answers read so far show committed."""
    answered = []
    for migration, part in zip(migrations, parts, strict=False):
        if not _committed(part):
            break
        answered.append(AppliedMigration(migration.id, _duration(part)))
    return answered


def _recorded_once_ended(connection: Connection, session_pid: int, ledger: Ledger) -> dict[str, float] | None:
    """The migrations the history holds (with their durations in seconds), read once the session `session_pid`
    is gone; None when the server cannot be reached or the session does not end."""
    try:
        with connected(connection, application_name="rds-migrations (after a lost connection)") as conn:
            # As the login, which may end its own sessions; the role its sessions start as (ALTER ROLE ... SET
            # role) may not, and is taken again to read the history it owns.
            conn.execute("SET ROLE NONE")
            conn.execute("SELECT pg_terminate_backend(%s)", (session_pid,))
            conn.execute("RESET ROLE")
            deadline = time.monotonic() + SESSION_END_WAIT_SECONDS
            while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (session_pid,)).fetchone():
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.1)
            rows = conn.execute(ledger.statements["history_rows"]).fetchall()
    except psycopg.Error:
        return None
    return {row[0]: (row[4] or 0) / 1000 for row in rows}


def _not_started(migration: Migration, error: psycopg.Error) -> MigrationFailure:
    return failure_from(migration, "(not started: the server ended the session before it began)", error, 0)


def _parts(answers: list[pq.PGresult]) -> list[list[pq.PGresult]]:
    """The answers split where each migration's BEGIN answered (no migration that travels together holds a
    BEGIN of its own)."""
    parts: list[list[pq.PGresult]] = []
    for answer in answers:
        if answer.status == pq.ExecStatus.COMMAND_OK and answer.command_status == b"BEGIN" or not parts:
            parts.append([])
        parts[-1].append(answer)
    return parts


def _committed(part: list[pq.PGresult]) -> bool:
    """BEGIN … COMMIT answered, with no error and nothing in between that ended the transaction."""
    return (len(part) >= 3 and part[0].command_status == b"BEGIN" and part[-1].command_status == b"COMMIT"
            and part[-1].status == pq.ExecStatus.COMMAND_OK
            and all(answer.status != FATAL_ERROR and not ended_the_transaction(answer) for answer in part[1:-1]))


def _duration(part: list[pq.PGresult]) -> float:
    """Seconds, from the history insert's answer (RETURNING duration_ms, measured by the server)."""
    record = part[-2]
    if record.status == pq.ExecStatus.TUPLES_OK and record.ntuples == 1 and record.get_value(0, 0) is not None:
        return int(record.get_value(0, 0)) / 1000
    return 0.0


def _last_word(conn: psycopg.Connection, part: list[pq.PGresult]) -> psycopg.Error:
    """The error the server ended the session with, after a migration had committed."""
    fatal = next((answer for answer in reversed(part) if answer.status == FATAL_ERROR), None)
    if fatal is None:
        return psycopg.OperationalError("the server sent no answer to it")
    return psycopg.errors.error_from_result(fatal, encoding=conn.info.encoding)
