"""The user schema of a database, read from the catalogs into a `SchemaSnapshot`: normalised, deterministic,
JSON-serialisable, and equal for two databases built by the same migrations.

Equal means: nothing in a snapshot depends on OIDs, the database's name, the order of catalog rows or the
reading session. Definitions come from the server's own deparsers (pg_get_expr, pg_get_indexdef, ...) read
in one REPEATABLE READ transaction with what they depend on pinned (PINNED_SETTINGS): an empty search_path
prints every user object schema-qualified, UTC and ISO styles print constants in defaults the same way.
One set-based query per kind of object reads the whole schema, never one query per table.

Left out: system schemas, what an extension owns (pg_depend 'e': the extension itself is compared), objects
made implicitly with another (a range type's constructors), and the migration tools' own tables with
everything hanging off them (`ignore`). Not read at all: owners, privileges, comments, statistics objects,
rules, event triggers, operators, casts, collations, publications, foreign servers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from tasks.engine.errors import RdsMigrationsError

SNAPSHOT_VERSION = 1

# Patterns (fnmatch, case-sensitive) on a table's name, or on `schema.table` when the pattern has a dot.
TOOL_TABLES = (
    "_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock",  # yoyo
    "_rds_migrations*",  # ours: history, dirty marks, anything added later
    "knex_migrations", "knex_migrations_lock",  # Knex
    "flyway_schema_history",  # Flyway
    "schema_migrations",  # golang-migrate
)

# The order objects are listed in: containers first, then what lives in them.
KINDS = ("schema", "extension", "enum", "domain", "composite type", "range type", "sequence", "table", "column",
         "constraint", "index", "view", "materialized view", "function", "procedure", "aggregate", "trigger",
         "policy")
KIND_ORDER = {kind: position for position, kind in enumerate(KINDS)}

# What the deparsers' output depends on, pinned for the reading transaction.
PINNED_SETTINGS = {
    "search_path": "",  # pg_catalog only: every user object is printed schema-qualified
    "quote_all_identifiers": "off",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}


class SchemaSnapshotError(RdsMigrationsError):
    """A stored snapshot cannot be read: not JSON, another format version, or malformed."""


@dataclass(frozen=True)
class SchemaObject:
    """One object of the schema. `definition` is what drift compares; `info` is shown, never compared."""

    kind: str  # one of KINDS
    name: str  # stable and schema-qualified, quoted as PostgreSQL quotes: public.users, public.users.email
    definition: dict[str, Any]
    parent: str | None = None  # the table a column, constraint, index, trigger or owned sequence belongs to
    info: dict[str, Any] = field(default_factory=dict)  # extension version, column position

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SchemaSnapshot:
    """The user schema of one database, objects sorted by kind (`KINDS`) then name.

    Compared: schemas, extensions (their schema; the version is info), tables (kind, persistence, partitioning,
    inheritance, row security, storage options), columns, constraints, indexes (definition, validity, owning
    constraint), sequences, views, materialized views, functions, procedures, aggregates, triggers (with their
    enabled state), row security policies, enums, domains, composite and range types. Equality ignores
    `server_version`.
    """

    objects: tuple[SchemaObject, ...]
    server_version: str = field(default="", compare=False)
    version: int = SNAPSHOT_VERSION

    def by_key(self) -> dict[tuple[str, str], SchemaObject]:
        return {obj.key: obj for obj in self.objects}

    def with_objects(self, more: Iterable[SchemaObject]) -> SchemaSnapshot:
        return SchemaSnapshot(objects=_sorted((*self.objects, *more)), server_version=self.server_version)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "server_version": self.server_version,
                "objects": [obj.to_json() for obj in self.objects]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> SchemaSnapshot:
        try:
            loaded = json.loads(data) if isinstance(data, str) else data
            if not isinstance(loaded, Mapping) or loaded.get("version") != SNAPSHOT_VERSION:
                found = loaded.get("version") if isinstance(loaded, Mapping) else type(loaded).__name__
                raise SchemaSnapshotError(f"schema snapshot format {found!r} is not {SNAPSHOT_VERSION}: read it "
                                          "again from the database with this version of rds-migrations")
            objects = [SchemaObject(o["kind"], o["name"], dict(o["definition"]), o.get("parent"),
                                    dict(o.get("info") or {})) for o in loaded["objects"]]
            return cls(objects=_sorted(objects), server_version=str(loaded.get("server_version", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SchemaSnapshotError(f"schema snapshot is malformed: {type(exc).__name__}: {exc}") from None


def is_ignored(schema: str | None, table: str, patterns: Iterable[str] = TOOL_TABLES) -> bool:
    """Whether a table matches a pattern of `patterns` (a name, or `schema.table` when the pattern has a dot)."""
    return any(fnmatchcase(f"{schema}.{table}" if "." in pattern else table, pattern) for pattern in patterns)


def read_schema(conn: psycopg.Connection, *, ignore: Iterable[str] = TOOL_TABLES) -> SchemaSnapshot:
    """The user schema of `conn`'s database. Tables matching a pattern of `ignore` (see TOOL_TABLES) are left
    out with their columns, constraints, indexes, triggers and owned sequences. Reads only; the session's
    settings are as they were afterwards."""
    patterns = (ignore,) if isinstance(ignore, str) else tuple(ignore)

    def ignored(schema: str | None, table: str | None) -> bool:
        return table is not None and is_ignored(schema, table, patterns)

    with _pinned(conn) as cur:
        server_version = cur.execute("SELECT current_setting('server_version')").fetchone()[0]  # type: ignore[index]
        objects = [build(*row[2:]) for query, build in _READERS for row in cur.execute(query).fetchall()
                   if not ignored(row[0], row[1])]
    return SchemaSnapshot(objects=_sorted(objects), server_version=server_version)


@contextmanager
def _pinned(conn: psycopg.Connection) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor in one consistent read with PINNED_SETTINGS: a READ ONLY REPEATABLE READ transaction of its
    own when the connection is idle, else a savepoint, the caller's settings put back after it."""
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        if idle:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        names = list(PINNED_SETTINGS)
        saved = cur.execute("SELECT " + ", ".join(["current_setting(%s)"] * len(names)), names).fetchone()
        _set(cur, PINNED_SETTINGS)
        yield cur
        if not idle:  # a savepoint keeps SET LOCAL values when released: give the caller's back
            _set(cur, dict(zip(names, saved or (), strict=True)))


def _set(cur: psycopg.Cursor[Any], settings: Mapping[str, str]) -> None:
    cur.execute("SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(settings)),
                [value for item in settings.items() for value in item])


def _sorted(objects: Iterable[SchemaObject]) -> tuple[SchemaObject, ...]:
    return tuple(sorted(objects, key=lambda obj: (KIND_ORDER.get(obj.kind, len(KINDS)), obj.kind, obj.name)))


def _compact(definition: dict[str, Any]) -> dict[str, Any]:
    """Leave out what is not set, so a definition lists only what was asked for."""
    return {key: value for key, value in definition.items() if value is not None and value != []}


# ---- the queries: each row starts with the (schema, table) that `ignore` is matched against --------------

USER_SCHEMA = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"


def _not_member(catalog: str, oid: str) -> str:
    """Not an object an extension created (its members are left out: the extension is compared instead)."""
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend x WHERE x.classid = '{catalog}'::regclass AND x.objid = {oid} "
            "AND x.deptype = 'e')")


def _of_tables(joins: str = "", where: str = "") -> str:
    """FROM user tables (`c`, in schema `n`) and what `joins` hangs off them."""
    return (f"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace {joins}\n"
            f"WHERE {USER_SCHEMA} AND {_not_member('pg_class', 'c.oid')} {where}")


def _collation(oid: str) -> str:
    return (f"(SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) FROM pg_collation co "
            f"JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = {oid})")


SCHEMAS = f"""
SELECT NULL, NULL, quote_ident(n.nspname) FROM pg_namespace n
WHERE {USER_SCHEMA} AND {_not_member('pg_namespace', 'n.oid')}"""

EXTENSIONS = """
SELECT NULL, NULL, quote_ident(e.extname), quote_ident(n.nspname), e.extversion
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"""

# A sequence's owner: the column of a serial or identity column (or of ALTER SEQUENCE ... OWNED BY).
SEQUENCE_OWNER = """LEFT JOIN pg_sequence s ON s.seqrelid = c.oid
LEFT JOIN LATERAL (
    SELECT t.oid, t.relname, tn.nspname, a.attname FROM pg_depend d
    JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
    WHERE c.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.objid = c.oid
      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
) owner ON true"""

COLUMN_JOINS = """JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum"""

RELATIONS = f"""
SELECT coalesce(owner.nspname, n.nspname), coalesce(owner.relname, c.relname),
       c.oid::regclass::text, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
       coalesce(c.reloptions, '{{}}'),
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
       ARRAY(SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = c.oid ORDER BY i.inhseqno),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
       format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
       owner.oid::regclass::text, quote_ident(owner.attname)
{_of_tables(SEQUENCE_OWNER, "AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S')")}"""

COLUMNS = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(a.attname),
       row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
       format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid),
       a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN {_collation("a.attcollation")} END
{_of_tables(COLUMN_JOINS, "AND c.relkind IN ('r', 'p', 'f')")}"""

CONSTRAINTS = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(k.conname), pg_get_constraintdef(k.oid)
{_of_tables("JOIN pg_constraint k ON k.conrelid = c.oid", "AND k.contype <> 'n'")}"""

INDEXES = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, x.indexrelid::regclass::text, pg_get_indexdef(x.indexrelid),
       x.indisvalid, (SELECT quote_ident(k.conname) FROM pg_constraint k WHERE k.conindid = x.indexrelid
                      AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x'))
{_of_tables("JOIN pg_index x ON x.indrelid = c.oid")}"""

TRIGGERS = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(g.tgname), pg_get_triggerdef(g.oid), g.tgenabled
{_of_tables("JOIN pg_trigger g ON g.tgrelid = c.oid", "AND NOT g.tgisinternal")}"""

POLICIES = f"""
SELECT n.nspname, c.relname, c.oid::regclass::text, quote_ident(pol.polname), pol.polcmd, pol.polpermissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE quote_ident(pg_get_userbyid(r)) END
             FROM unnest(pol.polroles) r),  -- sorted in Python: ORDER BY here would follow the database's collation
       pg_get_expr(pol.polqual, pol.polrelid), pg_get_expr(pol.polwithcheck, pol.polrelid)
{_of_tables("JOIN pg_policy pol ON pol.polrelid = c.oid")}"""

ROUTINES = f"""
SELECT NULL, NULL, p.oid::regprocedure::text, p.prokind,
       CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END, pg_get_function_result(p.oid),
       g.aggtransfn::oid::regprocedure::text, format_type(g.aggtranstype, NULL),
       nullif(g.aggfinalfn::oid, 0)::regprocedure::text, g.agginitval
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace LEFT JOIN pg_aggregate g ON g.aggfnoid = p.oid
WHERE {USER_SCHEMA} AND {_not_member('pg_proc', 'p.oid')}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'i')  -- made with another object (a range type's constructors)"""

TYPES = f"""
SELECT NULL, NULL, format_type(t.oid, NULL), t.typtype,
       ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
       format_type(t.typbasetype, t.typtypmod), t.typnotnull, pg_get_expr(t.typdefaultbin, 0),
       CASE WHEN t.typcollation <> b.typcollation THEN {_collation("t.typcollation")} END,
       ARRAY(SELECT quote_ident(k.conname) || ' ' || pg_get_constraintdef(k.oid) FROM pg_constraint k
             WHERE k.contypid = t.oid AND k.contype <> 'n' ORDER BY k.conname),
       ARRAY(SELECT quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       format_type(r.rngsubtype, NULL)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_type b ON b.oid = t.typbasetype LEFT JOIN pg_range r ON r.rngtypid = t.oid
WHERE {USER_SCHEMA} AND {_not_member('pg_type', 't.oid')} AND (t.typtype IN ('e', 'd', 'r')
      OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))"""


# ---- rows into objects: one object a row --------------------------------------------------------------

TABLE_KINDS = {"r": "ordinary", "p": "partitioned", "f": "foreign"}
TRIGGER_STATES = {"O": "enabled", "D": "disabled", "R": "replica", "A": "always"}
POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


def _relation(name: str, relkind: str, persistence: str, rls: bool, force_rls: bool, options: list[str],
              partition_key: str | None, bound: str | None, inherits: list[str], view: str | None,
              seq_type: str | None, start: int, increment: int, minimum: int, maximum: int, cache: int,
              cycle: bool, owner_table: str | None, owner_column: str | None) -> SchemaObject:
    if relkind in TABLE_KINDS:
        return SchemaObject("table", name, _compact({
            "kind": TABLE_KINDS[relkind], "persistence": "unlogged" if persistence == "u" else "permanent",
            "partition_key": partition_key, "partition_bound": bound, "inherits": inherits,
            "row_security": "forced" if force_rls and rls else "enabled" if rls else None,
            "options": sorted(options)}))
    if relkind in ("v", "m"):
        kind = "view" if relkind == "v" else "materialized view"
        return SchemaObject(kind, name, _compact({"definition": view, "options": sorted(options)}))
    return SchemaObject("sequence", name, _compact({
        "type": seq_type, "start": start, "increment": increment, "min": minimum, "max": maximum, "cache": cache,
        "cycle": cycle, "owned_by": f"{owner_table}.{owner_column}" if owner_table else None}), parent=owner_table)


def _column(table: str, name: str, position: int, type_: str, not_null: bool, default: str | None,
            identity: str, generated: str, collation: str | None) -> SchemaObject:
    return SchemaObject("column", f"{table}.{name}", _compact({
        "type": type_, "not_null": not_null, "default": None if generated else default,
        "generated": default if generated else None,  # the expression of a GENERATED ... STORED column
        "identity": {"a": "always", "d": "by default"}.get(identity), "collation": collation,
    }), parent=table, info={"position": position})


def _routine(name: str, prokind: str, definition: str | None, result: str, transition: str | None,
             state_type: str | None, final: str | None, initial: str | None) -> SchemaObject:
    if prokind == "a":
        return SchemaObject("aggregate", name, _compact({"result": result, "transition": transition,
                                                         "state_type": state_type, "final": final,
                                                         "initial": initial}))
    return SchemaObject("procedure" if prokind == "p" else "function", name, {"definition": definition})


def _type(name: str, typtype: str, labels: list[str], base: str, not_null: bool, default: str | None,
          collation: str | None, checks: list[str], attributes: list[str], subtype: str | None) -> SchemaObject:
    if typtype == "e":
        return SchemaObject("enum", name, {"labels": labels})
    if typtype == "d":
        return SchemaObject("domain", name, _compact({"type": base, "not_null": not_null, "default": default,
                                                      "collation": collation, "constraints": checks}))
    if typtype == "c":
        return SchemaObject("composite type", name, {"attributes": attributes})
    return SchemaObject("range type", name, {"subtype": subtype})


_READERS: tuple[tuple[str, Callable[..., SchemaObject]], ...] = (
    (SCHEMAS, lambda name: SchemaObject("schema", name, {})),
    (EXTENSIONS, lambda name, schema, version: SchemaObject("extension", name, {"schema": schema},
                                                            info={"version": version})),
    (RELATIONS, _relation),
    (COLUMNS, _column),
    (CONSTRAINTS, lambda table, name, definition: SchemaObject("constraint", f"{table}.{name}",
                                                               {"definition": definition}, parent=table)),
    (INDEXES, lambda table, name, definition, valid, constraint: SchemaObject("index", name, _compact({
        "definition": definition, "valid": valid, "constraint": constraint}), parent=table)),
    (TRIGGERS, lambda table, name, definition, enabled: SchemaObject("trigger", f"{table}.{name}", {
        "definition": definition, "enabled": TRIGGER_STATES.get(enabled, enabled)}, parent=table)),
    (POLICIES, lambda table, name, command, permissive, roles, using, check: SchemaObject(
        "policy", f"{table}.{name}", _compact({
            "command": POLICY_COMMANDS.get(command, command), "permissive": permissive, "roles": sorted(roles),
            "using": using, "with_check": check}), parent=table)),
    (ROUTINES, _routine),
    (TYPES, _type),
)
