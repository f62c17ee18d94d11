"""Dirty databases: explain what a non-transactional migration (or its rollback file) that did not finish left
behind (each statement's fate, the indexes it names), and record how an operator resolved it by hand."""

from __future__ import annotations

import logging
import time

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.errors import ResolveError
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.dirty import DirtyMigration
from tasks.engine.migrations.history import Ledger, read_history
from tasks.engine.migrations.indexes import find_invalid_indexes, index_state
from tasks.engine.migrations.leftovers import Leftover, leftovers
from tasks.engine.migrations.plan import edited_by_hand, make_plan
from tasks.engine.migrations.rollback_plan import rollback_file, rolling_back
from tasks.engine.migrations.search_path import search_paths
from tasks.engine.migrations.session import migration_lock, session
from tasks.engine.migrations.sqltext import quote_identifier, shorten
from tasks.engine.migrations.statements import without_passwords

logger = logging.getLogger(__name__)


def explain_dirty(conn: psycopg.Connection, catalog: Catalog, dirty: DirtyMigration, environment: str | None,
                  *, with_hint: bool = True) -> str:
    """Reconcile instead of re-applying: what the mark says, each statement's fate, the indexes it names."""
    lines = [dirty.describe()]
    migration = catalog.get(dirty.migration_id)
    if migration is None:
        lines.append(f"  its file is not in {catalog.directory.name}/ any more: restore it to resolve this")
    else:
        if migration.checksum != dirty.checksum:
            lines.append("  its file changed since it ran: restore the version that ran to resolve this")
        statements = migration.statements
        undoing = bool(dirty.message and dirty.message.startswith(rolling_back(migration)))
        if undoing:  # its rollback file left the mark: those statements are the ones that ran, or not
            statements = migration.rollback_statements or ()
            lines.append(f"  its rollback file ({rollback_file(migration)}) was running; the migration is recorded as "
                         "not applied: --mark-not-applied once the undo is finished by hand, --mark-applied once "
                         "what the rollback undid is put back")
        # Applied: what ran before a transaction of the file's own that the failure rolled back.
        through = dirty.statement_number - 1 if dirty.applied_through is None else dirty.applied_through
        before = dirty.invalid_before or ()  # INVALID indexes that were there before it: not its leftovers
        for number, (statement, path) in enumerate(zip(statements, search_paths(statements), strict=True), 1):
            if dirty.state == "recording" or number <= through:
                fate = "ran"
            elif number < dirty.statement_number:
                fate = "rolled back with its transaction"
            elif number == dirty.statement_number:
                fate = "FAILED" if dirty.state == "failed" else "was running when the run stopped"
            else:
                fate = "not run"
            index = index_state(conn, statement, path)
            note = ""
            if index is not None:
                valid = {True: "valid", False: "INVALID", None: "missing"}[index[2]]
                note = f" [index {quote_identifier(index[1])}: {valid}]"
            note += "".join(f" [left: {left}]" for left in leftovers(conn, statement, path, before) or ())
            lines.append(f"  {number}. {fate}: {shorten(without_passwords(statement), 120)}{note}")
    if with_hint:
        lines.append(f"  to resolve: {dirty.hint(environment, catalog.directory)}")
    return "\n".join(lines)


def _mend(ledger: Ledger, catalog: Catalog, migration_id: str, *, mark_applied: bool, checksum_lost: bool) -> str:
    """History rows edited by hand, put back as the operator says: applied (with the file's checksum and yoyo's
    row) or not applied (both gone, pending again)."""
    migration = catalog.get(migration_id)
    if migration is None:
        raise ResolveError(f"{migration_id}: its file is not in {catalog.directory.name}/; restore it first")
    kept = ledger.read().checksums.get(migration_id)
    if mark_applied and kept is not None and kept != migration.checksum:
        raise ResolveError(f"{migration.path.name} changed since it was applied (checksum {kept[:12]} recorded, "
                           f"{migration.checksum[:12]} now); restore the version that ran first")
    with ledger.conn.transaction():
        if not mark_applied:
            ledger.forget(migration)
            return f"{migration_id} is recorded as not applied: the next run applies it"
        if checksum_lost:
            ledger.record_checksum(migration)
        else:
            ledger.record_applied([migration], "resolved", None, operation="mark",
                                  comment="rds-migrations resolve --mark-applied")
    return f"{migration_id} is recorded as applied, with the checksum of {migration.path.name}"


def explain_state(connection: Connection, catalog: Catalog, *, environment: str | None = None) -> tuple[bool, str]:
    """Read-only, for operators: (clean, explanation) of dirty marks, history rows edited by hand (both refuse
    every run until resolved) and INVALID indexes in the way."""
    with session(connection, read_only=True) as conn:
        history = read_history(conn)
        texts = [explain_dirty(conn, catalog, dirty, environment) for dirty in history.dirty]
        edited = edited_by_hand(catalog, history, environment)
        texts += edited
        pending = make_plan(catalog, history).pending
        texts += [f"{index}: dropped on the next run by policy drop_and_retry, else drop it: {index.drop_command}"
                  for index in find_invalid_indexes(conn, catalog, pending)]
    if not texts:
        return True, f"{connection.describe()}: clean (no dirty migration, no history edited by hand, no INVALID " \
                     "index in the way)"
    return not (history.dirty or edited), "\n".join(texts)


def _left(conn: psycopg.Connection, migration: Migration | None, dirty: DirtyMigration) -> list[Leftover]:
    """What the statements that ran (the rollback file's, when it left the mark) left half done."""
    if migration is None:
        return []
    ran = (migration.rollback_statements or ()) if dirty.rolling_back else migration.statements
    return [found for statement, path in zip(ran, search_paths(ran), strict=True)
            for found in leftovers(conn, statement, path, dirty.invalid_before or ()) or ()]


def resolve_dirty(connection: Connection, catalog: Catalog, migration_id: str, *, mark_applied: bool,
                  policy: Policy, log: Log = logger) -> str:
    """An operator finished (`mark_applied`) or undid a dirty migration by hand: record that, under the lock."""
    with session(connection, policy=policy, application_name="rds-migrations resolve") as conn, \
            migration_lock(conn, policy.migration_lock_wait_seconds):
        ledger = Ledger.open(conn)
        ledger.create_tables()
        history = ledger.read()
        dirty = {d.migration_id: d for d in history.dirty}
        if migration_id in history.checksum_lost + history.yoyo_row_lost:
            outcome = _mend(ledger, catalog, migration_id, mark_applied=mark_applied,
                            checksum_lost=migration_id in history.checksum_lost)
            log.warning("Resolved by an operator: %s", outcome)
            return f"{connection.describe()}: {outcome}"
        if migration_id not in dirty:
            others = f" (dirty: {', '.join(dirty)})" if dirty else " (nothing is dirty)"
            raise ResolveError(f"{migration_id} is not marked dirty on {connection.describe()}{others}")
        migration = catalog.get(migration_id)
        left = _left(conn, migration, dirty[migration_id])
        stays = "".join(f"; still there: {found}" for found in left if not found.blocks)
        blocking = " ".join(str(found) for found in left if found.blocks)
        if mark_applied:
            if migration is None:
                raise ResolveError(f"{migration_id}: its file is not in {catalog.directory.name}/; restore it first "
                                   "(its checksum is recorded with it)")
            if migration.checksum != dirty[migration_id].checksum:
                raise ResolveError(f"{migration.path.name} changed since it ran; restore the version that ran first")
            invalid = find_invalid_indexes(conn, catalog, [migration_id])
            if invalid:  # recorded as applied, it would stay INVALID: never used, never unique, never built again
                raise ResolveError(f"{invalid[0]}: recorded as applied, the migration would keep it INVALID (never "
                                   f"used, never unique, never built again). Drop it ({invalid[0].drop_command}) "
                                   "and build it by hand, then mark it applied; or mark it not applied, and the "
                                   "next run builds it")
            if blocking:  # half done: recorded as applied, it would stay so
                raise ResolveError(f"{migration_id} is half done, so not recorded as applied: {blocking} "
                                   "then mark it applied")
            with conn.transaction():
                ledger.record(migration, "resolved", None, time.monotonic(), operation="mark",
                              comment="rds-migrations resolve --mark-applied")
                ledger.clear_dirty(migration_id)
            outcome = f"{migration_id} is recorded as applied and no longer dirty{stays}"
        else:
            if blocking:  # pending again, the next run would run it on top of what it left half done
                raise ResolveError(f"{migration_id} is half done, so not recorded as not applied (the next run would "
                                   f"run it again on top of what it left): {blocking} then mark it not applied once "
                                   "what it did is undone, or applied if that finished it")
            with conn.transaction():
                ledger.clear_dirty(migration_id)
                ledger.record_unmarked(migration_id)
            outcome = f"{migration_id} is no longer dirty and is pending again: the next run applies it{stays}"
    log.warning("Resolved by an operator: %s", outcome)
    return outcome
