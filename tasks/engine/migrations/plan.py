"""The plan: what is pending, read-only, and what makes applying unsafe (an edited, deleted or out-of-order
file, a dirty mark, a target that names nothing). Takes no lock and writes nothing."""

from __future__ import annotations

from dataclasses import dataclass, replace

import psycopg
from psycopg import sql

from tasks.engine.connection import Connection
from tasks.engine.migrations.adopt import census
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.hints import where_flag
from tasks.engine.migrations.history import TABLES, History, Ledger
from tasks.engine.migrations.indexes import InvalidIndex, find_invalid_indexes
from tasks.engine.migrations.session import session


@dataclass(frozen=True)
class Plan:
    """What would run, read-only. `problems` block any apply."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    problems: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()  # applied before checksums were kept (e.g. by plain yoyo)
    beyond_target: tuple[str, ...] = ()  # pending, but after the requested target
    invalid_indexes: tuple[InvalidIndex, ...] = ()  # dropped or refused by policy.invalid_index
    adopted: bool = False  # `baseline` adopted the target: the migrations alone do not build it

    def to_json(self) -> dict[str, object]:
        return {"applied": list(self.applied), "pending": list(self.pending), "problems": list(self.problems),
                "unverified": list(self.unverified), "beyond_target": list(self.beyond_target),
                "invalid_indexes": [str(index) for index in self.invalid_indexes]}


def make_plan(catalog: Catalog, history: History, *, target: str | None = None,
              allow_out_of_order: bool = False, environment: str | None = None) -> Plan:
    """Compare files and history: what is pending, and what makes applying unsafe."""
    problems: list[str] = [
        f"{dirty.describe()}; nothing runs until it is resolved: {dirty.hint(environment, catalog.directory)}"
        for dirty in history.dirty
    ]
    unverified: list[str] = []
    applied = set(history.applied)
    # Lookup tables: Catalog.get and Catalog.ids.index scan the catalog, which is O(N^2) here at 1,000 applied.
    by_id = {m.id: m for m in catalog.migrations}
    position = {m.id: index for index, m in enumerate(catalog.migrations)}
    for migration_id in history.applied:
        migration = by_id.get(migration_id)
        if migration is None:
            problems.append(
                f"{migration_id}: applied to the database but missing from {catalog.directory.name}/ "
                "(deleted or renamed); restore the file under its original name"
            )
        elif migration_id in history.checksum_lost:
            problems.append(_checksum_lost(catalog, migration, environment))
        elif migration_id not in history.checksums:
            unverified.append(migration_id)
        elif history.checksums[migration_id] != migration.checksum:
            problems.append(
                f"{migration.path.name}: edited after it was applied (checksum "
                f"{history.checksums[migration_id][:12]} applied, {migration.checksum[:12]} now); restore the "
                "applied version and put the change in a new migration"
            )
    problems += [_yoyo_row_lost(catalog, migration_id, environment) for migration_id in history.yoyo_row_lost]
    pending = [m for m in catalog.migrations if m.id not in applied]
    known_applied = [position[i] for i in applied if i in position]
    if pending and known_applied and not allow_out_of_order:
        newest_applied = max(known_applied)
        for migration in pending:
            if position[migration.id] < newest_applied and migration.id not in history.yoyo_row_lost:
                problems.append(
                    f"{migration.path.name}: out of order: it sorts before migrations already applied; "
                    "renumber it after the newest applied migration (or set policy.allow_out_of_order)"
                )
    beyond: list[str] = []
    if target is not None:
        index = catalog.index_of(target)
        if index is None:
            problems.append(f"target {target!r} names no migration (use a migration id or its version number)")
        else:
            beyond = [m.id for m in pending if position[m.id] > index]
            pending = [m for m in pending if position[m.id] <= index]
            if not pending and known_applied and index < max(known_applied):
                problems.append(_below_head(catalog, target, max(known_applied), environment))
    return Plan(
        applied=history.applied,
        pending=tuple(m.id for m in pending),
        problems=tuple(problems),
        unverified=tuple(unverified),
        beyond_target=tuple(beyond),
    )


def edited_by_hand(catalog: Catalog, history: History, environment: str | None = None) -> list[str]:
    """The problems above that `resolve MIGRATION_ID --mark-applied/--mark-not-applied` mends: history rows
    deleted by hand (a checksum row of a file that is here, a yoyo row), each with its command."""
    lost = [_checksum_lost(catalog, migration, environment) for migration in map(catalog.get, history.checksum_lost)
            if migration is not None]
    return lost + [_yoyo_row_lost(catalog, migration_id, environment) for migration_id in history.yoyo_row_lost]


def _checksum_lost(catalog: Catalog, migration: Migration, environment: str | None) -> str:
    return (f"{migration.path.name}: applied by rds-migrations (yoyo's log says so), but its checksum row is gone "
            "from _rds_migrations_history: the history tables were edited by hand, so whether this file is the "
            "one applied cannot be told. Check it against the database, then record it again: "
            f"`rds-migrations resolve {where_flag(environment, catalog.directory)} {migration.id} --mark-applied`")


def _yoyo_row_lost(catalog: Catalog, migration_id: str, environment: str | None) -> str:
    where = where_flag(environment, catalog.directory)
    return (f"{migration_id}: rds-migrations recorded it as applied (its checksum row is there), but yoyo's row for "
            "it is gone with no rollback in yoyo's log: the history tables were edited by hand. If what it makes is "
            f"there: `rds-migrations resolve {where} {migration_id} --mark-applied`; if not: `rds-migrations "
            f"resolve {where} {migration_id} --mark-not-applied`")


def _below_head(catalog: Catalog, target: str, head: int, environment: str | None) -> str:
    """`run` only applies: a target below what is applied asks for a rollback, which is its own command."""
    where = where_flag(environment, catalog.directory)
    return (f"target {target!r} is below the newest applied migration ({catalog.migrations[head].id}): a run only "
            f"applies, it never undoes; to go back to it, run `rds-migrations rollback {where} --to {target}` "
            "(every migration above it needs a rollback file)")


def plan(connection: Connection, catalog: Catalog, *, target: str | None = None,
         allow_out_of_order: bool = False, environment: str | None = None) -> Plan:
    """Read-only: connect, read the history, compare with the files. Takes no lock, writes nothing."""
    with session(connection, read_only=True) as conn:
        ledger = Ledger.open(conn)
        history = ledger.read()
        current = make_plan(catalog, history, target=target, allow_out_of_order=allow_out_of_order,
                            environment=environment)
        current = replace(current, adopted=_adopted(conn, ledger))
        if not history.applied:
            # A database holding things no migration of ours made, with no history: adopt it first.
            refusal = census(conn).refusal()
            if refusal:
                return replace(current, problems=(refusal, *current.problems))
        return replace(current, invalid_indexes=find_invalid_indexes(conn, catalog, current.pending))


def _adopted(conn: psycopg.Connection, ledger: Ledger) -> bool:
    """Whether a baseline was recorded here (a row in its table; the dump it holds is not read)."""
    if not ledger.exists()["baseline"]:
        return False
    query = sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(ledger.schema, TABLES["baseline"]))
    return bool(conn.execute(query).fetchone()[0])  # type: ignore[index]
