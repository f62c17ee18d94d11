"""Baseline: adopt a database that another tool (Knex, Flyway, golang-migrate) or a person already migrated.

The migrations it already holds are recorded as applied without running them (yoyo's rows, our checksums,
who, when, from where, the git SHA, operation `baseline`), and the schema as it was is kept, so drift is
measured from it. `--through VERSION` records every migration up to VERSION (`0`: none: the schema as it is
becomes the starting point and the next run applies the whole directory on top of it); `--from TOOL` maps
that tool's history onto the directory (adopt.py) and refuses, writing nothing, on any entry it cannot map.

Under the migration lock, idempotent (the same migrations recorded again: nothing to do), refused when other
history is already there. The other tool's tables are left as they are. A dry run reads only.

Before anything is written, the migrations to be recorded are replayed on a scratch database and what they build
is compared with the live schema (baseline_replay.py), as `policy.drift` says: `block` refuses on a difference,
`warn` and `ignore` record and report it (an adoption happens once: it is always checked). A dry run shows
the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.environments import Policy
from tasks.engine.errors import HistoryMismatch, InvalidMigrations, RehearsalUnavailable, UsageError
from tasks.engine.logs import Log
from tasks.engine.migrations.adopt import TITLES, AdoptionRefused, census, ignored_tables, read_applied
from tasks.engine.migrations.adopt_mapping import map_to_catalog
from tasks.engine.migrations.baseline_replay import PlaceFor, ReplayCheck, refusal, replay_recorded
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.hints import where_flag
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.reference import state_key
from tasks.engine.migrations.schema import read_schema
from tasks.engine.migrations.schema_copy import dump_schema
from tasks.engine.migrations.session import migration_lock, session

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineReport:
    """What a baseline adopted (or, in a dry run, would adopt)."""

    database: str
    tool: str | None
    through: str
    adopted: tuple[str, ...]  # recorded as applied without running them
    pending: tuple[str, ...]  # what the next run applies
    mapping: str  # the mapping, as shown before anything was written
    already: bool = False  # the same migrations were recorded before: nothing was written
    dry_run: bool = False
    # Nothing was written and nothing is worked out as adopted or pending (both empty): the mapping was refused
    # (`replay` None), or the replay found differences that the policy blocks.
    refused: bool = False
    adoption: dict[str, Any] | None = None  # --from: the mapping, entry by entry (adopt_mapping.Adoption.to_json)
    replay: ReplayCheck | None = None  # what the migrations recorded build, held against the live schema

    def to_text(self) -> str:
        warning = ""
        if self.replay is not None:
            warning = "\n" + ("warning: " if self.replay.differs and not self.refused else "") + "\n".join(
                self.replay.lines())
        if self.refused:
            why = "refused: the migrations do not build its schema" if self.replay is not None \
                else "the mapping was refused"
            return (f"{self.mapping}{warning}\n{self.database}: {why} (above): nothing was written, nothing is "
                    "worked out as adopted or pending")
        if self.already:
            state = "already adopted: the same migrations are recorded; nothing was written"
        elif self.dry_run:
            state = "dry run: nothing was written"
        else:
            state = f"adopted: {len(self.adopted)} migration(s) recorded as applied, the schema kept for drift"
        return f"{self.mapping}{warning}\n{self.database}: {state}; {len(self.pending)} pending"

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "tool": self.tool, "through": self.through,
                "adopted": list(self.adopted), "pending": list(self.pending), "already": self.already,
                "dry_run": self.dry_run, "refused": self.refused, "mapping": self.adoption,
                "replay": self.replay.to_json() if self.replay else None}


def baseline(connection: Connection, catalog: Catalog, policy: Policy, *, through: str | None = None,
             tool: str | None = None, git_sha: str = "unknown", run_id: str | None = None, dry_run: bool = False,
             schema: str | None = None, environment: str | None = None, place: PlaceFor | None = None,
             log: Log = logger) -> BaselineReport:
    """Adopt the database `connection` names: see the module's docstring. `schema`: with `tool`, the schema
    holding that tool's history (needed when it is in several). `environment`: as the run named it, for the
    commands its messages suggest. `place`: where the migrations recorded are replayed (baseline_replay.py);
    None: not replayed."""
    if (through is None) == (tool is None):
        raise UsageError("say what to adopt: --through VERSION (0 for nothing) or --from knex|flyway|golang-migrate")
    if catalog.problems:
        raise InvalidMigrations("the migrations directory has problems; nothing was written:\n"
                                + "\n".join(f"  - {problem}" for problem in catalog.problems))
    with session(connection, read_only=dry_run, policy=policy, application_name="rds-migrations baseline") as conn:
        lock = migration_lock(conn, policy.migration_lock_wait_seconds) if not dry_run else _nothing()
        with lock:
            ledger = Ledger.open(conn)
            history = ledger.read()
            adopted_before = bool(history.applied) or ledger.baseline() is not None
            shown: dict[str, Any] | None = None
            if tool is not None:
                applied = read_applied(conn, tool, schema=schema, where=where_flag(environment, catalog.directory))
                adoption = map_to_catalog(applied, catalog, tool)
                mapping, shown = adoption.to_text(), adoption.to_json()
                adopted = [m for m in catalog.migrations if m.id in set(adoption.applied)]
            else:
                if not adopted_before:
                    _refuse_other_history(conn)
                adopted = _through(catalog, through or "0")
                verb = "would be" if dry_run else "are"
                mapping = (f"--through {through}: {len(adopted)} migration(s) of {catalog.directory.name}/ {verb} "
                           "recorded as applied without running them" + "".join(f"\n  {m.id}" for m in adopted))
            pending = tuple(m.id for m in catalog.migrations if m not in adopted)
            report = BaselineReport(connection.describe(), tool, through or (adopted[-1].id if adopted else "0"),
                                    tuple(m.id for m in adopted), pending, mapping, dry_run=dry_run,
                                    adoption=shown)
            if adopted_before:  # said before any mapping: there is nothing to adopt
                if set(history.applied) == {m.id for m in adopted}:
                    return replace(report, already=True)
                raise HistoryMismatch(
                    f"{connection.describe()} already has migration history ({len(history.applied)} applied, the "
                    f"newest {history.applied[-1] if history.applied else 'none'}): a baseline adopts a database "
                    "that has none; nothing was written (`rds-migrations status` shows what is recorded, "
                    "`rds-migrations plan` what is pending)")
            log.info("%s", mapping)
            if tool is not None:
                try:
                    adoption.check()
                except AdoptionRefused as refused:  # --json still shows the mapping that was refused
                    refused.result = replace(report, through="0", adopted=(), pending=(), refused=True)
                    raise
            check = None
            if adopted and place is not None:
                try:
                    check = replay_recorded(conn, catalog.directory, adopted, place(adopted), policy,
                                            "whole" if tool is not None else "made", log)
                except RehearsalUnavailable as exc:  # no scratch database there: only `block` makes it a refusal
                    if policy.drift == "block":
                        raise
                    log.warning("The migrations recorded were not replayed (%s): what they build was not compared "
                                "with the schema (policy.drift = %s)", exc, policy.drift)
            if check is not None:
                report = replace(report, replay=check)
                if check.differs and policy.drift == "block":
                    refused = refusal(connection.describe(), check)
                    refused.result = replace(report, through="0", adopted=(), pending=(), refused=True)
                    raise refused
                (log.warning if check.differs else log.info)("%s", "\n".join(check.lines()))
            if dry_run:
                return report
            dump = dump_schema(connection)
            ledger.create_tables()
            ledger.record_baseline(adopted, tool=tool, through=report.through, git_sha=git_sha, run_id=run_id,
                                   schema_dump=dump, comment=f"rds-migrations baseline "
                                   f"{'--from ' + tool if tool else '--through ' + report.through}")
            # The schema as adopted is, by definition, what the migrations recorded so far make.
            adopted_baseline = ledger.baseline()
            assert adopted_baseline is not None
            ledger.remember_schema(state_key(adopted, adopted_baseline.id),
                                   read_schema(conn, ignore=ignored_tables(conn)).to_json())
    log.info("Adopted %s: %d migration(s) recorded as applied", connection.describe(), len(adopted))
    return report


def _refuse_other_history(conn: psycopg.Connection) -> None:
    """`--through` records what it is told and reads no other tool's history: where Knex, Flyway or
    golang-migrate left one, a migration that tool applied past VERSION would run again (a seed twice)."""
    found = census(conn)
    if not found.tools:
        return
    by = " and ".join(TITLES[t] for t in found.tools)
    tries = " or ".join(f"`rds-migrations baseline --from {t}`" for t in found.tools)
    raise AdoptionRefused(
        f"{', '.join(found.tool_tables)} {'is' if len(found.tool_tables) == 1 else 'are'} here: {by} migrated this "
        f"database, and --through would record what it names without reading that history (a migration {by} "
        f"applied would run again); nothing was written. Adopt it with {tries}, which maps that history onto the "
        "directory; if these migrations are not the ones it applied (a new start), rename or drop its history "
        "table first")


def _through(catalog: Catalog, through: str) -> list[Migration]:
    if through == "0":
        return []
    index = catalog.named(through, "--through", zero="; 0 adopts the schema as it is with nothing recorded")
    return list(catalog.migrations[: index + 1])


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
