"""The rollback plan, read-only: what `rds-migrations rollback --to VERSION` would undo, newest first (the
reverse of the order they were applied), what stays applied, and what refuses it: a version that names nothing,
a migration above it with no rollback file (each named), a rollback file that would end its own transaction,
release the migration lock, or run in a transaction a statement PostgreSQL refuses in one, history that does not
match the files, a dirty mark."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tasks.engine.connection import Connection
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.history import History, read_history
from tasks.engine.migrations.plan import make_plan
from tasks.engine.migrations.session import session
from tasks.engine.migrations.statements import (
    breaks_the_session,
    copies_with_the_client,
    ends_transaction,
    refused_in_transaction,
)

ALL = "0"  # `--to 0`: undo every applied migration


@dataclass(frozen=True)
class RollbackPlan:
    """What `--to` would undo, newest first, and what stays applied. `problems` refuse the whole rollback."""

    to: str
    undo: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()  # applied, and staying applied (in apply order)
    problems: tuple[str, ...] = ()
    non_transactional: tuple[str, ...] = ()  # of `undo`: run alone, never retried

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [f"Rollback to {'nothing (every migration undone)' if self.to == ALL else self.to}"]
        if self.problems:
            lines += ["refused, nothing will be undone:", *(f"  - {problem}" for problem in self.problems)]
        elif not self.undo:
            lines.append("nothing to undo: no applied migration sorts after it")
        else:
            lines.append(f"{len(self.undo)} migration(s) to undo, in this order:")
            lines += [f"  {n}. {migration_id}" + ("  (non-transactional: alone, never retried)"
                                                  if migration_id in self.non_transactional else "")
                      for n, migration_id in enumerate(self.undo, 1)]
        stays = f"{len(self.keep)} migration(s), the newest {self.keep[-1]}" if self.keep else "nothing"
        return "\n".join([*lines, f"stays applied: {stays}"])


def plan_rollback(connection: Connection, catalog: Catalog, to: str, *,
                  environment: str | None = None) -> RollbackPlan:
    """Read-only: connect, read the history, say what `--to` would undo. Takes no lock, writes nothing."""
    with session(connection, read_only=True) as conn:
        return make_rollback_plan(catalog, read_history(conn), to, environment=environment)


def make_rollback_plan(catalog: Catalog, history: History, to: str, *,
                       environment: str | None = None) -> RollbackPlan:
    """The applied migrations that sort after `to` (a migration id, its version number, or "0" for all), in
    reverse apply order; refused when any lacks a usable rollback file or the history does not match the files."""
    # The apply plan's checks of the history: dirty marks, applied files missing or edited (a pending file
    # sorting before applied ones is no reason not to roll back).
    problems = list(make_plan(catalog, history, allow_out_of_order=True, environment=environment).problems)
    position = {m.id: index for index, m in enumerate(catalog.migrations)}
    index = -1 if to == ALL else catalog.index_of(to)
    if index is None:
        problems.append(f"--to {to!r} names no migration (use a migration id or its version number, or 0 to undo "
                        "every migration)")
        return RollbackPlan(to, keep=history.applied, problems=tuple(problems))
    undo = tuple(i for i in reversed(history.applied) if i in position and position[i] > index)
    by_id = {m.id: m for m in catalog.migrations}
    for migration_id in undo:
        problems += _refusals(by_id[migration_id])
    undone = set(undo)
    return RollbackPlan(to, undo, tuple(i for i in history.applied if i not in undone), tuple(problems),
                        tuple(i for i in undo if not by_id[i].transactional))


def _refusals(migration: Migration) -> list[str]:
    """Why `migration`'s rollback file cannot be run as the tool runs it (the catalog checks migrations only)."""
    name = rollback_file(migration)
    if migration.rollback_statements is None:
        return [f"{migration.path.name}: would be undone, and has no rollback file ({name}); write one, or roll "
                f"back to {migration.id} or later"]
    found = []
    for number, statement in enumerate(migration.rollback_statements, 1):
        ending = ends_transaction(statement)
        if ending and migration.transactional:
            found.append(f"{name}: statement {number} is `{ending}`: it would end the transaction the rollback runs "
                         "in with the removal of its history rows; remove it")
        elif ending:
            found.append(f"{name}: statement {number} is `{ending}`: a non-transactional rollback runs each statement "
                         "on its own, with no transaction of its own; remove it")
        refused = refused_in_transaction(statement) if migration.transactional else None
        if refused:  # as validation says of a transactional migration (lint: cannot-run-in-transaction)
            found.append(f"{name}: statement {number} is `{refused}`, which cannot run inside a transaction block, "
                         f"and the rollback of {migration.path.name} (transactional) runs in one with the removal "
                         "of its history rows; write it so that it runs in a transaction (DROP INDEX without "
                         f"CONCURRENTLY, say), or roll back to {migration.id} or later and undo it by hand")
        breaking = breaks_the_session(statement)
        if breaking:
            found.append(f"{name}: statement {number}: {breaking}; remove it")
        if copies_with_the_client(statement):
            found.append(f"{name}: statement {number} copies to or from the client (COPY … FROM STDIN / TO STDOUT), "
                         "which the tool cannot do: use INSERT, or COPY from a file on the database server")
    return found


def rollback_file(migration: Migration) -> str:
    return f"{migration.id}.rollback.sql"


def rolling_back(migration: Migration) -> str:
    """How a dirty mark's message starts when a rollback, not the migration, left it."""
    return f"rolling back ({rollback_file(migration)})"
