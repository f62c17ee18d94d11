"""Executing one migration: how its statements and its history rows reach the server.

- A transactional migration is ONE simple-query message: BEGIN, its statements, the history insert, COMMIT.
  One round trip and one call into psycopg (Python's cost per call, not the server, kept us above psql).
  The server answers each statement in turn and stops at the first error, so the answers name the statement
  that failed (`statement_timeout` applies per statement: PostgreSQL 13+).
- Statement by statement, in one transaction with the history rows: PostgreSQL < 13, and a migration the
  server could read differently as one message (see `read_differently_as_one`).
- A non-transactional migration runs alone: see nontransactional.py.
Every migration starts from the session's `StartingState` (the run's user, the policy's timeouts, the
search_path the session began with), sent at the head of its transaction; the history rows are written as
the run's own user. Every function answers `None` when the migration is applied and recorded, else a
`MigrationFailure`; an answer that shows the migration ended its own transaction is a failure.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg
from psycopg import generators, pq

from tasks.engine.errors import redact, server_words
from tasks.engine.migrations.catalog import Migration
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.results import MigrationFailure
from tasks.engine.migrations.session import StartingState
from tasks.engine.migrations.sqltext import after_comments, comment_only
from tasks.engine.migrations.statements import ends_transaction

FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
COPY_REFUSED = "a migration cannot COPY to or from the client (use INSERT, or COPY from a file on the server)"
PLAIN_ANSWERS = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY, FATAL_ERROR)


def run_transactional(conn: psycopg.Connection, ledger: Ledger, migration: Migration, start: StartingState, *,
                      git_sha: str, run_id: str | None, started: float) -> MigrationFailure | None:
    """BEGIN, the starting state, the statements, the history rows and COMMIT in ONE simple-query message: one
    round trip and one call into psycopg (Python's cost per call, not the server, is what kept us above
    psql). The server answers each statement in turn and stops at the first error, so the answers say which
    statement failed."""
    if conn.info.server_version < 130000 or read_differently_as_one(migration):
        return _run_statement_by_statement(conn, ledger, migration, start, git_sha=git_sha, run_id=run_id,
                                           started=started)
    failure = _run_as_one(conn, ledger, migration, start, git_sha=git_sha, run_id=run_id, prepared=True)
    if failure is not None and failure.sqlstate == MISSING_PREPARED and failure.statement == RECORDING:
        # The prepared history insert was dropped (by the migration itself, say DEALLOCATE ALL): the migration
        # was rolled back; prepare it again for the next ones and run this one with the insert written out.
        ledger.prepare_record()
        failure = _run_as_one(conn, ledger, migration, start, git_sha=git_sha, run_id=run_id, prepared=False)
    return failure


def _run_as_one(conn: psycopg.Connection, ledger: Ledger, migration: Migration, start: StartingState, *,
                git_sha: str, run_id: str | None, prepared: bool) -> MigrationFailure | None:
    script = Script.build(migration, ledger.record_statement(migration, git_sha, run_id, prepared=prepared),
                          start=start.statements(), before_record=start.as_the_run())
    answers: list[pq.PGresult] = []
    lost = send(conn, script.text, answers)
    failure = settle(conn, ledger, migration, script, answers, lost)
    if failure is READ_AS_A_WHOLE_REFUSED:
        # Refused before BEGIN ran, so nothing ran: the server could not read the message as a whole (a quote
        # or comment left open, a setting that changes how later text reads). Statement by statement, as
        # written, each one passes or fails on its own and the failing one is named exactly.
        return _run_statement_by_statement(conn, ledger, migration, start, git_sha=git_sha, run_id=run_id,
                                           started=time.monotonic())
    return failure


def send(conn: psycopg.Connection, text: str, answers: list[pq.PGresult]) -> psycopg.Error | None:
    """Send `text` as one message, collecting the server's answers into `answers` as they arrive; the error
    that ended the exchange when the connection was lost before the last one. Ctrl-C or SystemExit stops the
    statement and ends the session, which rolls back the migration being run and frees the migration lock at
    once (`answers` then holds what had been answered)."""
    try:
        _exchange(conn, text, answers)
    except psycopg.Error as exc:
        return exc
    except BaseException:
        _abandon(conn)
        raise
    return None


class ReadAsAWholeRefused:
    """`settle`'s answer when the server refused the message before its BEGIN ran: nothing ran."""


READ_AS_A_WHOLE_REFUSED = ReadAsAWholeRefused()


def settle(conn: psycopg.Connection, ledger: Ledger, migration: Migration, script: Script,
           answers: list[pq.PGresult], lost: psycopg.Error | None) -> MigrationFailure | None | ReadAsAWholeRefused:
    """What the server's `answers` to one migration's part of a message say: `None` when it is applied and
    recorded, its failure (rolled back, or ended early and marked dirty), or `READ_AS_A_WHOLE_REFUSED`."""
    if lost is not None:
        # The connection is gone without a word from the server. Its answers are sent in batches, so those read
        # so far say only that at least that many statements had run: which one was running is not known.
        confirmed = min(max(len(answers) - script.prefix, 0), len(script.answered))
        return replace(failure_from(migration, f"(not known: the connection was lost after the server had confirmed "
                                               f"{confirmed} statement(s))", lost, 0), outcome_unknown=True)
    ended = script.ended_early(answers)
    if ended is not None:
        return _ended_early(conn, ledger, migration, *ended)
    failed = next((i for i, answer in enumerate(answers) if answer.status == FATAL_ERROR), None)
    if failed == 0 and not conn.closed:
        return READ_AS_A_WHOLE_REFUSED
    if failed is not None and failed > script.commit_index and answers[script.commit_index].command_status == b"COMMIT":
        return None  # committed, with its history rows, before the server ended the session
    if failed is not None:
        exc = psycopg.errors.error_from_result(answers[failed], encoding=conn.info.encoding)
        _roll_back_quietly(conn)
        number, statement = script.locate(failed, answers)
        return failure_from(migration, statement, exc, number)
    if len(answers) <= script.commit_index or answers[-1].status != pq.ExecStatus.COMMAND_OK \
            or answers[-1].command_status != b"COMMIT" or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        # COPY to the client (refused by validation): the server goes on without us and may commit; the
        # session is mid-protocol, so end it.
        number, statement = script.locate(len(answers) - 1, answers)
        conn.close()
        return MigrationFailure(
            migration_id=migration.id, statement=statement, sqlstate=None, transactional=True,
            message=COPY_REFUSED, statement_number=number, statement_count=len(migration.statements),
            outcome_unknown=True,
        )
    return None


def _ended_early(conn: psycopg.Connection, ledger: Ledger, migration: Migration, number: int,
                 tag: str) -> MigrationFailure:
    """A statement of the migration ended its transaction (validation refuses such files; this is the guard
    behind it): what ran before it is committed or undone, what ran after it ran on its own. The history must
    not say "applied": its rows go, and a dirty mark stops every run until an operator looks."""
    _roll_back_quietly(conn)
    message = (f"statement {number} ended the migration's own transaction ({tag}): the statements before it were "
               f"{'committed' if tag.startswith('COMMIT') else 'undone'} and the ones after it ran one by one")
    failure = MigrationFailure(migration_id=migration.id, statement=migration.statements[number - 1],
                               sqlstate=None, message=message, transactional=True, statement_number=number,
                               statement_count=len(migration.statements), dirty=True)
    with conn.transaction():
        ledger.unrecord(migration)
        ledger.mark_dirty(migration, "unknown", None)
    ledger.mark_progress(migration.id, "failed", number, None, message[:2000])
    return failure


def _exchange(conn: psycopg.Connection, text: str, answers: list[pq.PGresult]) -> None:
    """Send `text` as one message and collect the server's answers into `answers` as they arrive, so that they
    are there when the connection drops halfway. Stops at an answer that needs more than reading (COPY)."""
    pgconn = conn.pgconn
    with conn.lock:
        pgconn.send_query(text.encode(conn.info.encoding))
        conn.wait(generators.send(pgconn))
        while True:
            try:
                # An answer already read off the socket is taken as it is; psycopg's wait only when one is not
                # there yet (a migration has seven answers: most are there by the time the first is read).
                answer = pgconn.get_result() if not pgconn.is_busy() else conn.wait(generators.fetch(pgconn))
            except psycopg.Error:
                if any(a.status == FATAL_ERROR for a in answers):
                    return  # the server said why before it closed the connection (as psycopg's fetch_many does)
                raise
            if answer is None:
                return
            if answer.status == pq.ExecStatus.COPY_IN:  # no data to send: fail the COPY, which aborts the rest
                while conn.pgconn.put_copy_end(COPY_REFUSED.encode()) == 0:
                    conn.wait(generators.send(conn.pgconn))
                conn.wait(generators.send(conn.pgconn))
                continue
            answers.append(answer)
            if answer.status not in PLAIN_ANSWERS:
                return


def _abandon(conn: psycopg.Connection) -> None:
    try:
        conn.cancel_safe(timeout=5)  # else the server notices the closed session only when the statement ends
    except Exception:  # noqa: BLE001 - closing is what matters
        pass
    conn.close()


def _roll_back_quietly(conn: psycopg.Connection) -> None:
    if conn.info.transaction_status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
        quietly(conn.execute, "ROLLBACK")  # if the connection is gone, the server rolls back with the session


def _run_statement_by_statement(conn: psycopg.Connection, ledger: Ledger, migration: Migration,
                                start: StartingState, *, git_sha: str, run_id: str | None,
                                started: float) -> MigrationFailure | None:
    """One call per statement, in one transaction with the history rows (written out, not prepared)."""
    statement, number = "", 0
    try:
        with conn.transaction():
            conn.execute("; ".join(start.statements()))
            for number, statement in enumerate(migration.statements, 1):  # noqa: B007 - reported on failure
                answer = conn.execute(statement, prepare=False)
                if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
                    raise _EndedEarly(number, answer.statusmessage or "COMMIT or ROLLBACK")
            conn.execute("; ".join(start.as_the_run()))
            ledger.record(migration, git_sha, run_id, started)
    except _EndedEarly as ended:
        return _ended_early(conn, ledger, migration, ended.number, ended.tag)
    except psycopg.Error as exc:
        return failure_from(migration, statement, exc, number)
    return None


class _EndedEarly(Exception):
    def __init__(self, number: int, tag: str) -> None:
        super().__init__(tag)
        self.number, self.tag = number, tag


def read_differently_as_one(migration: Migration) -> bool:
    """Whether the server could read this migration differently as one message than statement by statement:
    `standard_conforming_strings` set inside it (the whole message is read before the SET runs), or a `\\'`
    (yoyo's splitter reads it as an escaped quote, PostgreSQL does not, so the two may split differently)."""
    return any("\\'" in statement or "standard_conforming_strings" in statement.lower()
               for statement in migration.statements)


@dataclass(frozen=True)
class Script:
    """A transactional migration as one message: BEGIN, the starting state, the statements, the run's own
    user again, the history rows, COMMIT."""

    text: str
    statements: tuple[str, ...]
    answered: tuple[int, ...]  # the numbers (1-based) of the statements the server answers: not comment-only
    prefix: int = 1  # answers before the first statement's: BEGIN and the starting state
    suffix: int = 0  # answers after the last statement's, before the history rows'

    @classmethod
    def build(cls, migration: Migration, record: str, *, start: tuple[str, ...] = (),
              before_record: tuple[str, ...] = ()) -> Script:
        # The newline before each `;`: a statement ending in a -- comment must not swallow the separator.
        text = "".join(["BEGIN;\n", *(f"{s};\n" for s in start),
                        *(f"{statement}\n;\n" for statement in migration.statements),
                        *(f"{s};\n" for s in before_record), record, ";\nCOMMIT"])
        answered = tuple(n for n, statement in enumerate(migration.statements, 1) if not comment_only(statement))
        return cls(text, migration.statements, answered, 1 + len(start), len(before_record))

    @property
    def record_index(self) -> int:
        return self.prefix + len(self.answered) + self.suffix

    @property
    def commit_index(self) -> int:
        return self.record_index + 1

    def ended_early(self, answers: list[pq.PGresult]) -> tuple[int, str] | None:
        """(statement number, command tag) of a statement whose answer shows the transaction ended before the
        tool's COMMIT (a COMMIT, ROLLBACK or PREPARE TRANSACTION of the migration's own)."""
        for index in range(self.prefix, min(len(answers), self.record_index)):
            if not ended_the_transaction(answers[index]):
                continue
            number, _ = self.locate(index, answers)
            if ended_the_transaction(answers[index], self.statements[number - 1] if number else None):
                tag = (answers[index].command_status or b"").decode("ascii", "replace")
                return number or self.answered[min(index - self.prefix, len(self.answered) - 1)], tag
        return None

    def locate(self, index: int, answers: list[pq.PGresult]) -> tuple[int, str]:
        """(statement number, statement) of the `index`-th answer; (0, what it is) outside the statements.

        Trusted only when every answer before it has the command tag its statement implies: yoyo's splitter and
        the server can disagree on where a statement ends (sqlparse reads `\\'` as an escaped quote, PostgreSQL
        does not), and then counting would name the wrong statement."""
        first, last = self.prefix, self.prefix + len(self.answered)
        checked = [(i, self.statements[self.answered[i - first] - 1]) for i in range(first, min(index, last))]
        if index > self.commit_index or not all(
                command_tag_fits(statement, answers[i].command_status or b"") for i, statement in checked):
            return 0, ("(not known exactly: the server split this file into statements differently from yoyo; "
                       "the error message says what failed)")
        if index <= 0:
            return 0, "(not started: the session ended before the migration began)"
        if index < first:
            return 0, "(starting the migration: the session's starting state)"
        if index < last:
            number = self.answered[index - first]
            return number, self.statements[number - 1]
        if index < self.record_index:
            return 0, "(back to the run's own user, before recording it)"
        return 0, RECORDING if index == self.record_index else "COMMIT"


def ended_the_transaction(answer: pq.PGresult, statement: str | None = None) -> bool:
    """Whether `answer` (to `statement`, when known) says the transaction it ran in ended: a COMMIT, a ROLLBACK,
    a PREPARE TRANSACTION. `ROLLBACK TO SAVEPOINT` answers ROLLBACK too, and `PREPARE name AS` answers PREPARE:
    both stay inside it, which the statement, read by the parser, tells apart."""
    if answer.status != pq.ExecStatus.COMMAND_OK:
        return False
    tag = (answer.command_status or b"").decode("ascii", "replace")
    if tag == "ROLLBACK" and statement is not None:
        return ends_transaction(statement) is not None
    return tag in ("COMMIT", "ROLLBACK", "PREPARE TRANSACTION")


MISSING_PREPARED = "26000"  # invalid_sql_statement_name: the prepared history insert is gone
RECORDING = "(recording it in the history tables)"


# Statements whose first keyword is the first word of the command tag the server answers them with. Others
# (WITH, VALUES, TABLE, EXECUTE, ...) are not checked; CREATE … AS answers SELECT.
_TAGGED = {"ALTER", "ANALYZE", "CALL", "CLUSTER", "COMMENT", "CREATE", "DELETE", "DO", "DROP", "GRANT", "INSERT",
           "LOCK", "MERGE", "REFRESH", "REINDEX", "RESET", "REVOKE", "SECURITY", "SELECT", "SET", "TRUNCATE",
           "UPDATE"}


_KEYWORD = re.compile(r"[A-Za-z]+")


def command_tag_fits(statement: str, tag: bytes) -> bool:
    keyword = _KEYWORD.match(after_comments(statement))
    word = keyword.group().upper() if keyword else ""
    if word not in _TAGGED:
        return True
    answered = tag.split(b" ", 1)[0].decode("ascii", "replace")
    return answered == word or (word == "CREATE" and answered == "SELECT")


def quietly(call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except psycopg.Error:
        pass  # the connection is gone: a dirty mark stays (the next run explains it), a transaction rolls back


def failure_from(migration: Migration, statement: str, exc: psycopg.Error, number: int) -> MigrationFailure:
    return MigrationFailure(
        migration_id=migration.id,
        statement=statement,
        sqlstate=exc.sqlstate,
        message=server_words(exc),  # never a row's values: the failure travels to Slack, events and artifacts
        transactional=migration.transactional,
        statement_number=number,
        statement_count=len(migration.statements),
    )


def redacted(failure: MigrationFailure, password: str) -> MigrationFailure:
    return replace(failure, statement=redact(failure.statement, password), message=redact(failure.message, password))
