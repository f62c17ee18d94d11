"""A baseline's check of the files it adopts: the migrations it records, replayed from nothing on a scratch
database (scratch.py, where drift rebuilds its reference), and what they make held against the live schema
(drift.compare), the tools' own history tables left aside. Nothing runs on the target: it is only read.

A baseline records migrations as applied without running them, and keeps the live schema as drift's reference:
a ported file that does not do what the other tool did (an index forgotten, `bigint` for `integer`) would
never be noticed here, yet a new database built from the same files would differ. `policy.drift` decides what
a difference does (baseline.py): `block` refuses, `warn` and `ignore` record and say so.

`--from TOOL`: that tool built the database from its first migration, so the whole schema is compared and a
file that cannot run from nothing is a difference. `--through VERSION`: the database may hold what was made
before its first migration (README, "Adopting an existing database"), so only what the migrations make is
compared (their objects, and what hangs off the tables they make: a column, an index a file forgot), and a
file that cannot run from nothing (it alters a table made before it) is said, not held against the port.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import psycopg

from tasks.engine.connection import connected
from tasks.engine.environments import Policy
from tasks.engine.errors import HistoryMismatch
from tasks.engine.logs import Log, Named
from tasks.engine.migrations.adopt import ignored_tables
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.drift import CONTAINERS, DriftReport, compare
from tasks.engine.migrations.results import MigrationError
from tasks.engine.migrations.schema import SchemaSnapshot, is_ignored, read_schema
from tasks.engine.migrations.scratch import Place, StartingPoint, create_scratch, scratch_database
from tasks.engine.migrations.sqltext import shorten

Scope = Literal["whole", "made"]
# Where the replay runs: chosen only when there is one to run (choose_place may start the embedded server).
PlaceFor = Callable[[Sequence[Migration]], Place]
WAY_OUT = ("fix the ported files so they build what the database holds (then baseline again); or, when it is the "
           "database that is wrong, adopt it as it is with `baseline --accept-differences` (the differences are "
           "then recorded as a warning)")


class PortDiffers(HistoryMismatch):
    """The migrations a baseline would record do not build the database's schema; nothing was recorded."""


@dataclass(frozen=True)
class ReplayCheck:
    """What the migrations a baseline records build from nothing, held against the live schema."""

    replayed: int  # migrations replayed
    where: str  # the scratch database's server
    scope: Scope
    drift: DriftReport | None = None  # None: the replay failed
    failure: str | None = None  # the migration that failed from nothing, and why
    left_out: int = 0  # "made": live objects no replayed migration makes (nor hangs off a table they make)

    @property
    def differs(self) -> bool:
        """A difference the policy decides on."""
        return bool(self.drift and self.drift.drifted) or (self.failure is not None and self.scope == "whole")

    def summary(self) -> str:
        what = f"the {self.replayed} migration(s) recorded, replayed from nothing on a scratch database ({self.where})"
        if self.failure is not None:
            tail = "" if self.scope == "whole" else (
                ": not compared (with --through they may build on tables made before the first of them)")
            return f"{what}, could not be: {self.failure}{tail}"
        assert self.drift is not None
        if not self.drift.drifted:
            return f"{what}, build the schema the database holds ({self.drift.compared} objects compared)"
        return f"{what}, do not build the schema the database holds: {self.drift.summary()}"

    def lines(self) -> list[str]:
        notes = list(self.drift.notes) if self.drift else []
        if self.left_out:
            notes.append(f"--through: {self.left_out} object(s) no recorded migration makes (made before them?) "
                         "were not compared")
        return [self.summary(), *(f"note: {note}" for note in notes),
                *(f"  {d.text}" for d in (self.drift.differences if self.drift else ()))]

    def to_json(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "where": self.where, "scope": self.scope, "differs": self.differs,
                "failure": self.failure, "left_out": self.left_out, "summary": self.summary(),
                "drift": self.drift.to_json() if self.drift else None}


def replay_recorded(conn: psycopg.Connection, directory: Path, recorded: Sequence[Migration], place: Place,
                    policy: Policy, scope: Scope, log: Log) -> ReplayCheck:
    """Replay `recorded` from nothing on a scratch database at `place` (started as the target's database
    starts: its search_path and schemas, reference.py) and compare what it holds with `conn`'s schema."""
    start = StartingPoint.of(conn)
    live = _without_history_schemas(conn, read_schema(conn, ignore=ignored_tables(conn)))
    # It rebuilds what the other tool applied, as applied: nothing a real run would wait on or refuse.
    replay_policy = policy.model_copy(update={"allow_out_of_order": True, "migration_lock_wait_seconds": 0,
                                              "lock_timeout_retries": 0})
    log.info("Replaying the %d migration(s) to be recorded on a scratch database (%s), to compare what they build "
             "with the database's schema; nothing runs on the database itself", len(recorded), place.where)
    with scratch_database(place, log) as name:
        scratch = create_scratch(place, name, log)
        start.prepare(scratch, recorded, log)
        try:
            apply_pending(scratch, Catalog(directory, tuple(recorded)), replay_policy, git_sha="baseline",
                          log=Named(log, "Replay", sentence=True))  # its lines are not the database's
        except MigrationError as exc:  # the scratch database's, not the target's: said as the port's
            return ReplayCheck(len(recorded), place.where, scope, failure=_failure(exc))
        with connected(scratch) as scratch_conn:
            built = read_schema(scratch_conn, ignore=ignored_tables(scratch_conn))
    compared, left_out = (live, 0) if scope == "whole" else _made_by(built, live)
    return ReplayCheck(len(recorded), place.where, scope, drift=compare(built, compared), left_out=left_out)


def refusal(database: str, check: ReplayCheck) -> PortDiffers:
    """The error a `block` policy ends a baseline in, naming each difference and the way out."""
    return PortDiffers(f"{database}: {check.summary()}; nothing was recorded (the database was only read)\n"
                       + "\n".join(check.lines()[1:] + [""]) + WAY_OUT)


def _without_history_schemas(conn: psycopg.Connection, live: SchemaSnapshot) -> SchemaSnapshot:
    """`live` without the schemas that hold nothing but the tools' history tables (Knex's `schemaName`, a copy
    of its history kept aside): no ported file makes them, and what is in them is never compared."""
    ignore = ignored_tables(conn)
    tables = conn.execute("SELECT quote_ident(schemaname), schemaname, tablename FROM pg_tables").fetchall()
    holding = {quoted for quoted, schema, table in tables if is_ignored(schema, table, ignore)}
    used = {obj.name.split(".")[0] for obj in live.objects if obj.kind != "schema"}
    return replace(live, objects=tuple(obj for obj in live.objects
                                       if not (obj.kind == "schema" and obj.name in holding - used)))


def _made_by(built: SchemaSnapshot, live: SchemaSnapshot) -> tuple[SchemaSnapshot, int]:
    """`live` without what no replayed migration makes: objects `built` lacks, unless they hang off a table
    (or view) it has (a column or an index a ported file forgot). How many were left out."""
    have = built.by_key()
    made = {obj.name for obj in built.objects if obj.kind in CONTAINERS}
    kept = [obj for obj in live.objects if obj.key in have or (obj.parent is not None and obj.parent in made)]
    return replace(live, objects=tuple(kept)), len(live.objects) - len(kept)


def _failure(exc: MigrationError) -> str:
    failed = exc.report.failed
    if failed is None:
        return str(exc).splitlines()[0]
    which = f"statement {failed.statement_number} of {failed.statement_count}, " if failed.statement_number else ""
    state = f"SQLSTATE {failed.sqlstate}" if failed.sqlstate else "no SQLSTATE"
    return f"{failed.migration_id} failed ({which}{state}): {failed.message} [{shorten(failed.statement)}]"
