"""`rds-migrations status`: what a database's history holds, at a glance, read-only.

Every applied migration (when, by which database user from which host, the git SHA, the flow run, how long,
how it came: applied, adopted by a baseline or marked by resolve, and whether its file still matches), what
is pending, the dirty marks, who holds the migration lock, and drift in one line when it is cheap: only when
a reference is remembered for the current state of history (nothing is rebuilt here). One read-only session;
the history comes from the `Ledger`, the rest from the server's own views.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.migrations.adopt import census, ignored_tables
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.dirty import DirtyMigration
from tasks.engine.migrations.drift import WAY_OUT, compare
from tasks.engine.migrations.hints import where_flag
from tasks.engine.migrations.history import AppliedRecord, Ledger
from tasks.engine.migrations.indexes import find_invalid_indexes
from tasks.engine.migrations.plan import make_plan
from tasks.engine.migrations.reference import current_state_key
from tasks.engine.migrations.schema import SchemaSnapshot, read_schema
from tasks.engine.migrations.session import ADVISORY_LOCK_KEY, session


def not_checked(environment: str | None, migrations: Path | None = None) -> str:
    return f"not checked (no remembered reference: run `rds-migrations drift {where_flag(environment, migrations)}`)"


NOT_CHECKED = not_checked(None)  # the database named as no environment: `--env NAME`
LOCKED_OUT = "not checked (a lock on the schema is held, by a migration running now?): try again"
HOW = {"apply": "apply", "baseline": "baseline", "mark": "mark"}  # anything else, or no log row: "unknown"
FILE_STYLE = {"ok": "green", "edited": "bold red", "missing file": "bold red", "unverified": "yellow"}

# Who holds the migration lock: the same key as session.migration_lock, in this database only.
LOCK_HOLDER_SQL = """
SELECT l.pid, a.application_name, a.usename::text, host(a.client_addr), a.backend_start, a.state
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
    SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
"""


@dataclass(frozen=True)
class AppliedMigration:
    """One applied migration, as the history tables hold it, held against its file."""

    id: str
    applied_at: datetime | None  # UTC; None when yoyo's row has no time (written by hand)
    how: str  # "apply" | "baseline" | "mark" | "unknown"
    user: str | None  # the database user that recorded it
    host: str | None  # the machine the tool ran on
    git_sha: str | None
    flow_run_id: str | None
    flow_run_url: str | None  # when a Prefect UI is configured
    duration_ms: int | None
    transactional: bool | None
    file: str  # "ok" | "edited" | "unverified" (no checksum kept: plain yoyo?) | "missing file"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "applied_at": self.applied_at and self.applied_at.isoformat(), "how": self.how,
                "user": self.user,
                "host": self.host, "git_sha": self.git_sha, "flow_run_id": self.flow_run_id,
                "flow_run_url": self.flow_run_url, "duration_ms": self.duration_ms,
                "transactional": self.transactional, "file": self.file}


@dataclass(frozen=True)
class LockHolder:
    """The session holding the migration lock (fields the server hides from other roles are None)."""

    pid: int
    application: str | None
    user: str | None
    client: str | None  # None: a local socket, or hidden
    since: datetime | None  # when that session connected
    state: str | None

    def describe(self) -> str:
        since = f"connected since {self.since:%Y-%m-%d %H:%M:%S %Z}" if self.since else "connected since unknown"
        return (f"held by {self.application or 'an unnamed session'} (pid {self.pid}, user {self.user or '?'}, "
                f"from {self.client or 'a local socket'}, {since}, {self.state or 'state unknown'})")

    def to_json(self) -> dict[str, Any]:
        return {"held": True, "pid": self.pid, "application_name": self.application, "user": self.user,
                "client_addr": self.client, "since": self.since.isoformat() if self.since else None,
                "state": self.state}


@dataclass(frozen=True)
class Status:
    """What `rds-migrations status` shows: read in one read-only session."""

    database: str  # user@host:port/dbname, never a password
    environment: str | None
    history_schema: str
    has_history: bool
    applied: tuple[AppliedMigration, ...]
    pending: tuple[str, ...]  # in apply order
    dirty: tuple[DirtyMigration, ...]
    lock: LockHolder | None  # None: not held
    drift: str  # one line
    drifted: bool | None  # None: not checked
    problems: tuple[str, ...] = ()  # what makes the next run refuse, besides dirty marks
    note: str | None = None  # a database with no history: what it holds
    migrations: Path | None = None  # the directory read, named in the commands it suggests when not the default

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment, "database": self.database, "history_schema": self.history_schema,
            "has_history": self.has_history, "applied": [m.to_json() for m in self.applied],
            "pending": list(self.pending),
            "dirty": [{"migration_id": d.migration_id, "state": d.state, "statement_number": d.statement_number,
                       "statement_count": d.statement_count, "sqlstate": d.sqlstate, "message": d.message,
                       "flow_run_id": d.flow_run_id, "started_at": d.started_at.isoformat() if d.started_at else None,
                       "applied_through": d.applied_through, "description": d.describe(),
                       "to_resolve": d.hint(self.environment, self.migrations)} for d in self.dirty],
            "lock": self.lock.to_json() if self.lock else {"held": False},
            "drift": {"checked": self.drifted is not None, "drifted": self.drifted, "summary": self.drift},
            "problems": list(self.problems), "note": self.note,
        }

    def to_text(self, color: bool = False) -> str:
        """Aligned columns for a person; colour (through rich) only when asked, e.g. on a terminal."""
        return _render(self._lines(), color)

    def _lines(self) -> list[list[tuple[str, str | None]]]:
        """Each line as (text, rich style) pieces; the plain text alone is aligned."""
        name = f"{self.environment} ({self.database})" if self.environment else self.database
        lines: list[list[tuple[str, str | None]]] = [[
            (name, "bold"), (f": {len(self.applied)} applied, {len(self.pending)} pending", None),
            (f", {len(self.dirty)} dirty" if self.dirty else "", "bold red")]]
        if self.note:
            lines.append([(self.note, "yellow")])
        if self.applied:
            lines += [[]] + _table(self.applied)
        if self.pending:
            lines += [[], [("pending, in apply order:", "bold")]]
            lines += [[("  " + migration_id, "yellow")] for migration_id in self.pending]
        if self.dirty:
            lines += [[], [("dirty:", "bold red")]]
            for dirty in self.dirty:
                lines += [[("  " + dirty.describe(), "red")],
                          [(f"    to resolve: {dirty.hint(self.environment, self.migrations)}", None)]]
        if self.problems:
            lines += [[], [("the next run refuses:", "bold red")]] + [[("  " + p, "red")] for p in self.problems]
        lines.append([])
        lock = self.lock.describe() if self.lock else "not held"
        lines.append([("lock:  ", "bold"), (lock, "yellow" if self.lock else None)])
        drift_style = None if self.drifted is None else ("bold red" if self.drifted else "green")
        lines.append([("drift: ", "bold"), (self.drift, drift_style)])
        return lines


COLUMNS = ("applied (UTC)", "how", "migration", "user", "host", "git sha", "flow run", "took", "file")


def _table(applied: tuple[AppliedMigration, ...]) -> list[list[tuple[str, str | None]]]:
    rows = [(f"{m.applied_at:%Y-%m-%d %H:%M:%S}" if m.applied_at else "(no time)", m.how,
             m.id, m.user or "-", m.host or "-", _sha(m.git_sha),
             m.flow_run_url or m.flow_run_id or "-", _took(m.duration_ms), m.file) for m in applied]
    widths = [max(len(str(cell)) for cell in column) for column in zip(COLUMNS, *rows, strict=True)]

    def line(cells: tuple[str, ...], styles: tuple[str | None, ...]) -> list[tuple[str, str | None]]:
        pieces: list[tuple[str, str | None]] = []
        for number, (cell, width, style) in enumerate(zip(cells, widths, styles, strict=True)):
            last = number == len(cells) - 1
            pieces.append((cell if last else cell.ljust(width) + "  ", style))
        return pieces

    table = [line(COLUMNS, ("bold",) * len(COLUMNS))]
    for row, migration in zip(rows, applied, strict=True):
        styles = [None] * len(COLUMNS)
        styles[1] = "cyan" if migration.how != "apply" else None
        styles[-1] = FILE_STYLE.get(migration.file)
        table.append(line(row, tuple(styles)))
    return table


def _render(lines: list[list[tuple[str, str | None]]], color: bool) -> str:
    if not color:
        return "\n".join("".join(text for text, _ in line).rstrip() for line in lines)
    from rich.console import Console
    from rich.text import Text

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=100_000, highlight=False,
                      soft_wrap=True)
    for line in lines:
        console.print(Text.assemble(*((text, style or "") for text, style in line)))
    return out.getvalue().rstrip("\n")


def _sha(sha: str | None) -> str:
    if not sha:
        return "-"
    return sha[:7] if re.fullmatch(r"[0-9a-f]{8,64}", sha) else sha


def _took(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    return f"{ms / 1000:.1f}s" if ms < 60_000 else f"{ms // 60_000}m {ms % 60_000 // 1000:02d}s"


# ---- reading ---------------------------------------------------------------------------------------------


def read_status(connection: Connection, catalog: Catalog, *, environment: str | None = None,
                allow_out_of_order: bool = False, drift_blocks: bool = False, ui_url: str | None = None) -> Status:
    """Everything `status` shows, in one read-only session. `ui_url` (default: PREFECT_UI_URL) makes each flow
    run id a link; `allow_out_of_order` and `drift_blocks` (policy.drift = "block") are the environment's
    policy, for what the next run would refuse."""
    ui = (ui_url if ui_url is not None else os.environ.get("PREFECT_UI_URL", "")).rstrip("/") or None
    # A read-only session never waits long behind a migration's locks (session.READ_TIMEOUTS): reading the
    # schema's definitions waits for them.
    with session(connection, read_only=True, application_name="rds-migrations status") as conn:
        ledger = Ledger.open(conn)
        has_history = ledger.exists()["migration"]
        history = ledger.read()
        records = ledger.applied_records()
        # Dirty marks are shown on their own, with how to resolve them: the plan's other problems stay.
        plan = make_plan(catalog, replace(history, dirty=()), allow_out_of_order=allow_out_of_order,
                         environment=environment)
        note = None
        if not has_history:
            note = census(conn).refusal() or ("no migration history: an empty database (the first run applies "
                                              "every migration)")
        drift, drifted = _drift(conn, ledger, catalog, environment) if has_history else (
            not_checked(environment, catalog.directory), None)
        lock = _lock_holder(conn)
        refusals = tuple(f"{index}: with policy.invalid_index = refuse (the default) the next run refuses; with "
                         f"drop_and_retry it drops it and builds it again; by hand: {index.drop_command}"
                         for index in find_invalid_indexes(conn, catalog, plan.pending))
    if drifted and drift_blocks:  # as the run's check would: drift explained by a pending migration is let through
        unless = ", unless a pending migration makes the same change" if plan.pending else ""
        refusals += (f"the live schema has drifted from what the applied migrations make, and policy.drift = block"
                    f"{unless}; `rds-migrations drift {where_flag(environment, catalog.directory)}` names each "
                    f"difference: {WAY_OUT}",)
    by_id = {m.id: m for m in catalog.migrations}
    applied = tuple(_applied(record, by_id.get(record.migration_id), ui) for record in records)
    return Status(database=connection.describe(), environment=environment, history_schema=ledger.schema,
                  has_history=has_history, applied=applied, pending=plan.pending, dirty=history.dirty, lock=lock,
                  drift=drift, drifted=drifted, problems=(*map(str, catalog.problems), *plan.problems, *refusals),
                  note=note, migrations=catalog.directory)


def _applied(record: AppliedRecord, migration: Migration | None, ui: str | None) -> AppliedMigration:
    if migration is None:
        file = "missing file"
    elif record.checksum is None:
        file = "unverified"
    else:
        file = "ok" if record.checksum.strip() == migration.checksum else "edited"
    run = record.flow_run_id
    return AppliedMigration(
        id=record.migration_id, applied_at=record.applied_at, how=HOW.get(record.operation or "", "unknown"),
        user=record.username, host=record.hostname, git_sha=record.git_sha, flow_run_id=run,
        flow_run_url=f"{ui}/runs/flow-run/{run}" if ui and run else None, duration_ms=record.duration_ms,
        transactional=record.transactional, file=file)


def remembered_drift(connection: Connection, catalog: Catalog,
                     environment: str | None = None) -> tuple[str, bool | None]:
    """`status`'s drift line on its own, for `plan`: (the line, whether it drifted; None: not checked)."""
    with session(connection, read_only=True, application_name="rds-migrations plan") as conn:
        ledger = Ledger.open(conn)
        if not ledger.exists()["migration"]:
            return not_checked(environment, catalog.directory), None
        return _drift(conn, ledger, catalog, environment)


def _drift(conn: psycopg.Connection, ledger: Ledger, catalog: Catalog,
           environment: str | None) -> tuple[str, bool | None]:
    """Drift in one line, only when a reference is remembered for this state of history (cheap: two schemas
    compared); rebuilding one is `rds-migrations drift`'s job."""
    remembered = ledger.remembered_schema(current_state_key(ledger, catalog))
    if remembered is None:
        return not_checked(environment, catalog.directory), None
    try:
        live = read_schema(conn, ignore=ignored_tables(conn))
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
        return LOCKED_OUT, None
    report = compare(SchemaSnapshot.from_json(remembered), live)
    if report.drifted:
        where = where_flag(environment, catalog.directory)
        return f"{report.summary()}: `rds-migrations drift {where}` names them", True
    return report.summary(), False


def _lock_holder(conn: psycopg.Connection) -> LockHolder | None:
    row = conn.execute(LOCK_HOLDER_SQL, (ADVISORY_LOCK_KEY,)).fetchone()
    if row is None:
        return None
    pid, application, user, client, since, state = row
    return LockHolder(pid, application, user, client, since.astimezone(UTC) if since else None, state)
