"""Adoption, read-only: what a database holds that is not ours, and what another tool says it applied.

`census` counts the user objects and finds the history Knex, Flyway or golang-migrate left; `read_applied`
reads that history in the order the tool applied it (refusing a run in progress, a failed or a dirty
migration). adopt_mapping.py pairs each entry with one of our migrations. Nothing here writes: every query
is a SELECT on the connection handed in.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from glob import escape
from typing import Literal

import psycopg
from psycopg import sql

from tasks.engine.errors import HistoryMismatch, UsageError
from tasks.engine.migrations.history import TABLES as OUR_TABLES
from tasks.engine.migrations.schema import TOOL_TABLES, is_ignored

TITLES = {"knex": "Knex", "flyway": "Flyway", "golang-migrate": "golang-migrate"}
TOOLS = tuple(TITLES)
HISTORY_TABLES = {"knex": "knex_migrations", "flyway": "flyway_schema_history", "golang-migrate": "schema_migrations"}
KNEX_COLUMNS = {"id", "name", "batch", "migration_time"}
FLYWAY_COLUMNS = {"installed_rank", "version", "description", "type", "script", "success"}
GOLANG_COLUMNS = {"version": "bigint", "dirty": "boolean"}  # exactly: Rails' and dbmate's schema_migrations differ
# Knex's `tableName`, Flyway's `table` (`schema_version` before 5): found by their columns too (see _tool_tables).
OTHER_NAMES = {"knex": " (or a table of another name with them and its _lock table)",
               "flyway": " (or a table of another name with them, as Flyway before 5 named it schema_version)"}
OURS = frozenset(OUR_TABLES.values())  # yoyo's tables and ours
KINDS = ("table", "view", "sequence", "function", "type")
SHOWN = 10  # names kept per kind


class AdoptionRefused(HistoryMismatch):
    """Another tool's history cannot be adopted as it is: a run in progress, a failed migration, a bad mapping."""


# ---- the census ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objects:
    kind: str  # one of KINDS
    count: int = 0
    names: tuple[str, ...] = ()  # the first SHOWN, sorted; schema-qualified when off the search_path

    def __str__(self) -> str:
        return f"{self.count} {self.kind}{'' if self.count == 1 else 's'}"


@dataclass(frozen=True)
class Census:
    """What a database holds that is not ours. Counts leave out system schemas, extension members, our
    history tables, and the history tables (with their sequences) of the tools in `tools`."""

    objects: tuple[Objects, ...]
    tools: tuple[str, ...] = ()  # "knex", "flyway", "golang-migrate": whose history is here
    tool_tables: tuple[str, ...] = ()  # where: "knex_migrations", "app.flyway_schema_history"
    has_history: bool = False  # ours (_yoyo_migration) exists: the plan takes it from there

    def of(self, kind: str) -> Objects:
        return next(o for o in self.objects if o.kind == kind)

    @property
    def empty(self) -> bool:
        """No user object and no other tool's history: another tool's tables alone mean it migrated this."""
        return not any(o.count for o in self.objects) and not self.tools

    @property
    def needs_baseline(self) -> bool:
        return not self.has_history and not self.empty

    def refusal(self) -> str | None:
        """Why a run must not start here (a non-empty database with no history of ours), or None."""
        if not self.needs_baseline:
            return None
        found = [f"{o} ({', '.join(o.names[:3])}{', …' if o.count > 3 else ''})" for o in self.objects if o.count]
        text = f"this database has {_and(found)}" if found else "this database has no tables of its own"
        text += " and no migration history: adopt it with `rds-migrations baseline`"
        if not self.tools:
            return text + ", which records as applied, without running them, the migrations already in it"
        verb = "is" if len(self.tool_tables) == 1 else "are"
        tries = " or ".join(f"`rds-migrations baseline --from {t}`" for t in self.tools)
        by = " and by ".join(TITLES[t] for t in self.tools)
        return f"{text} ({_and(self.tool_tables)} {verb} here: it was migrated by {by}; try {tries})"


USER_SCHEMA = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"  # pg_catalog, pg_toast, pg_temp_N
NOT_MEMBER = "NOT EXISTS (SELECT FROM pg_depend WHERE classid = '{0}'::regclass AND objid = {1} AND deptype = 'e')"
# (kind, name as shown, schema, name, the table owning a sequence) for every object outside extensions.
CENSUS_SQL = f"""
SELECT CASE WHEN c.relkind IN ('v', 'm') THEN 'view' WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END,
       c.oid::regclass::text, n.nspname, c.relname, owner.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_depend d ON c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class owner ON owner.oid = d.refobjid
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S') AND {USER_SCHEMA} AND {NOT_MEMBER.format("pg_class", "c.oid")}
UNION ALL
SELECT 'function', p.oid::regprocedure::text, n.nspname, p.proname, NULL
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {USER_SCHEMA} AND {NOT_MEMBER.format("pg_proc", "p.oid")}
UNION ALL
SELECT 'type', t.oid::regtype::text, n.nspname, t.typname, NULL
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace LEFT JOIN pg_class r ON r.oid = t.typrelid
WHERE {USER_SCHEMA} AND {NOT_MEMBER.format("pg_type", "t.oid")} AND (t.typtype IN ('e', 'd', 'r')
      OR (t.typtype = 'c' AND r.relkind = 'c') OR (t.typtype = 'b' AND t.typcategory <> 'A'))"""
COLUMNS_SQL = f"""
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND {USER_SCHEMA} AND (c.relname = ANY(%s) OR EXISTS (
    SELECT 1 FROM pg_attribute m WHERE m.attrelid = c.oid AND NOT m.attisdropped
      AND m.attname IN ('migration_time', 'is_locked', 'installed_rank')))
ORDER BY 1, 2"""


def census(conn: psycopg.Connection) -> Census:
    """Count the user objects and find other tools' history. SELECTs only."""
    found = _tool_tables(conn)
    tools = tuple(t for t in TOOLS if t in found)
    theirs = {place for t in tools for place in found[t]}
    theirs |= {(schema, f"{name}_lock") for schema, name in found.get("knex", ())}
    names: dict[str, list[str]] = defaultdict(list)
    has_history = False
    for kind, shown, schema, name, owner in conn.execute(CENSUS_SQL):
        if kind == "table" and name in OURS:
            has_history = has_history or name == "_yoyo_migration"
        elif (schema, name) not in theirs and (schema, owner) not in theirs:
            names[kind].append(shown)
    objects = tuple(Objects(k, len(names[k]), tuple(sorted(names[k])[:SHOWN])) for k in KINDS)
    return Census(objects, tools, tuple(_shown(*place) for t in tools for place in found[t]), has_history)


def _tool_tables(conn: psycopg.Connection) -> dict[str, list[tuple[str, str]]]:
    """Each tool's history table, (schema, name), in any schema; known by its name and its columns, or by its
    columns alone (a Knex table then only with its `<name>_lock` beside it)."""
    columns: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for schema, table, column, type_ in conn.execute(COLUMNS_SQL, (list(HISTORY_TABLES.values()),)):
        columns[(schema, table)][column] = type_
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (schema, table), cols in columns.items():
        names = set(cols)
        lock = columns.get((schema, f"{table}_lock"), {})
        if KNEX_COLUMNS <= names and (table == "knex_migrations" or (names == KNEX_COLUMNS and "is_locked" in lock)):
            found["knex"].append((schema, table))
        elif FLYWAY_COLUMNS <= names:
            found["flyway"].append((schema, table))
        elif table == "schema_migrations" and cols == GOLANG_COLUMNS:
            found["golang-migrate"].append((schema, table))
    return dict(found)


def renamed_tool_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(schema, name) of each tool's history table found under a name schema.TOOL_TABLES does not hold (Knex's
    `tableName` with its `_lock` table, Flyway's `schema_version`): the other tool's, not the user schema."""
    found = _tool_tables(conn)
    places = {place for tool in TOOLS for place in found.get(tool, ())}
    places |= {(schema, f"{name}_lock") for schema, name in found.get("knex", ())}
    return sorted(place for place in places if not is_ignored(*place))


def ignored_tables(conn: psycopg.Connection) -> tuple[str, ...]:
    """The `ignore` patterns of read_schema here: the tools' tables by their usual names, and under others."""
    return TOOL_TABLES + tuple(f"{escape(schema)}.{escape(name)}" for schema, name in renamed_tool_tables(conn))


# ---- what the other tool applied -------------------------------------------------------------------------


EntryKind = Literal["migration", "up_to", "repeatable"]


@dataclass(frozen=True)
class AppliedEntry:
    """One line of another tool's history, as that tool names it."""

    name: str  # knex: the file name; flyway: the script; golang-migrate: the version
    kind: EntryKind = "migration"  # "up_to": every migration up to `version`; "repeatable": flyway's R__
    version: str | None = None  # flyway's and golang-migrate's version, as text
    description: str = ""  # flyway's description
    detail: str = ""  # where it sits in the tool's history: "batch 2", "installed_rank 3"

    @property
    def label(self) -> str:
        if self.kind != "up_to":
            return self.name
        return f"version ≤ {self.version}" if self.name == self.version else f"{self.name} (≤ {self.version})"


def read_applied(conn: psycopg.Connection, tool: str, *, schema: str | None = None,
                 where: str = "--env NAME") -> list[AppliedEntry]:
    """What `tool` applied, in its order. Refuses a Knex lock held, a failed Flyway row, a dirty golang-migrate
    version, and a history found in several schemas when `schema` does not say which (`where`: how the command
    it suggests names the database, hints.where_flag). SELECTs only."""
    check_tool(tool)
    places = [p for p in _tool_tables(conn).get(tool, []) if schema in (None, p[0])]
    if not places:
        where = f"schema {schema} holds no" if schema else "no schema holds"
        raise AdoptionRefused(f"no {TITLES[tool]} history here: {where} {HISTORY_TABLES[tool]} with "
                              f"{TITLES[tool]}'s columns{OTHER_NAMES.get(tool, '')}")
    if len(places) > 1:
        raise AdoptionRefused(f"{TITLES[tool]}'s history is in {len(places)} schemas "
                              f"({_and([_shown(*p) for p in places])}): name the one to adopt from with "
                              f"--schema (`rds-migrations baseline {where} --from {tool} --schema {places[0][0]}`; the "
                              "baseline deployment's history_schema)")
    table, shown = sql.Identifier(*places[0]), _shown(*places[0])
    if tool == "knex":  # knex_migrations_lock holds one row, is_locked = 1 while a Knex run holds it
        lock = sql.Identifier(places[0][0], f"{places[0][1]}_lock")
        if conn.execute("SELECT to_regclass(%s)", (lock.as_string(conn),)).fetchone()[0]:
            if conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE is_locked = 1").format(lock)).fetchone()[0]:
                raise AdoptionRefused(
                    f"{shown}_lock is locked (is_locked = 1): a Knex migration may be running now, or one died "
                    "without unlocking. Wait for it; if no Knex run is in progress, run `knex migrate:unlock`")
        rows = conn.execute(sql.SQL("SELECT id, name, batch FROM {} ORDER BY id").format(table)).fetchall()
        nameless = [str(row_id) for row_id, name, _ in rows if not (name or "").strip()]
        if nameless:
            raise AdoptionRefused(
                f"{shown} has {len(nameless)} row(s) with no name (id {_and(nameless)}): Knex names each migration "
                "it applied, so those were written by hand. Delete them, or fill in the file names, then adopt again")
        return [AppliedEntry(name, detail=f"batch {batch}") for _, name, batch in rows]
    if tool == "flyway":
        return _read_flyway(conn, table, shown)
    rows = conn.execute(sql.SQL("SELECT version, dirty FROM {}").format(table)).fetchall()
    if len(rows) > 1:
        raise AdoptionRefused(f"{shown} holds {len(rows)} rows; golang-migrate keeps one: it was edited by hand")
    if rows and rows[0][1]:
        raise AdoptionRefused(
            f"{shown} is dirty at version {rows[0][0]}: that migration failed or died halfway. Finish or undo it by "
            "hand, `migrate force` the last version fully applied, then adopt again")
    return [AppliedEntry(str(v), "up_to", str(v), detail=shown) for v, _ in rows if v >= 0]  # -1: nothing applied


def _read_flyway(conn: psycopg.Connection, table: sql.Identifier, shown: str) -> list[AppliedEntry]:
    rows = conn.execute(sql.SQL("SELECT installed_rank, version, description, type, script, success FROM {} "
                                "ORDER BY installed_rank").format(table)).fetchall()
    failed = [f"installed_rank {r[0]} ({r[4]}, version {r[1]})" for r in rows if not r[5]]
    if failed:
        raise AdoptionRefused(
            f"{shown} records {_and(failed)} as failed (success = false): the database may hold part of it. Finish "
            "or undo it by hand, remove the failed row with `flyway repair`, then adopt again")
    entries: list[AppliedEntry] = []
    for rank, version, description, type_, script, _ in rows:
        kind = type_.upper()
        if kind == "SCHEMA":  # `<< Flyway Schema Creation >>`: Flyway created the schema; not a migration
            continue
        if kind == "DELETE" or kind.startswith("UNDO"):  # marked deleted by `flyway repair`, or undone
            gone = [e for e in entries if e.version == version and (version or e.description == description)]
            entries = [e for e in entries if e is not gone[-1]] if gone else entries
            continue
        # BASELINE (`<< Flyway Baseline >>`) and the SQL_/JDBC_BASELINE of baseline migrations stand for every
        # version up to theirs; a version-less row is a repeatable migration (R__).
        entry_kind: EntryKind = "up_to" if "BASELINE" in kind else "repeatable" if version is None else "migration"
        entries.append(AppliedEntry(script, entry_kind, version, description, f"installed_rank {rank}"))
    return entries


def check_tool(tool: str) -> None:
    if tool not in TITLES:
        raise UsageError(f"unknown migration tool {tool!r}: expected one of {', '.join(TOOLS)}")


def _shown(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


def _and(items: list[str] | tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
