"""The user schema of a database, read from the catalogs into a `SchemaSnapshot`: normalised, deterministic,
JSON-serialisable, and equal for two databases built by the same migrations.

Equal means: nothing in a snapshot depends on OIDs, the database's name, the order of catalog rows or the
reading session. Definitions come from the server's own deparsers (pg_get_expr, pg_get_indexdef, ...) read
in one REPEATABLE READ transaction with what they depend on pinned (PINNED_SETTINGS): an empty search_path
prints every user object schema-qualified, UTC and ISO styles print constants in defaults the same way.
One set-based query per kind of object reads the whole schema, never one query per table.

Left out: system schemas, what an extension owns (pg_depend 'e': the extension itself is compared), objects
made implicitly with another (a range type's constructors), and the migration tools' own tables with
everything hanging off them (`ignore`). Not read at all: owners, privileges, comments, event triggers,
operators, casts, collations, publications, foreign servers. The queries are in schema_queries.py."""

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
from tasks.engine.migrations.schema_queries import (
    COLUMNS,
    CONSTRAINTS,
    EXTENSIONS,
    INDEXES,
    POLICIES,
    RELATIONS,
    ROUTINES,
    RULES,
    SCHEMAS,
    STATISTICS,
    TRIGGERS,
    TYPES,
)

SNAPSHOT_VERSION = 2
# What a snapshot of an older format did not read (kinds, and fields of a table's definition). A reference
# remembered by an older rds-migrations is still read; drift leaves these out when either side lacks them.
NOT_READ_BEFORE = {2: ("rule", "statistics", "replica_identity")}

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
         "constraint", "index", "statistics", "view", "materialized view", "function", "procedure", "aggregate",
         "trigger", "rule", "policy")
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
    parent: str | None = None  # the table (or view) a column, constraint, index, trigger, rule, statistics
    # object or owned sequence belongs to
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
    inheritance, row security, storage options, replica identity), columns, constraints, indexes (definition,
    validity, owning constraint), extended statistics (definition, target), sequences, views, materialized
    views, functions, procedures, aggregates, triggers and rules (with their enabled state), row security
    policies, enums, domains, composite and range types. Equality ignores `server_version`; `version` is the
    format it was read in (an older one read less: `unread`).
    """

    objects: tuple[SchemaObject, ...]
    server_version: str = field(default="", compare=False)
    version: int = field(default=SNAPSHOT_VERSION, compare=False)  # the format it was read in

    def by_key(self) -> dict[tuple[str, str], SchemaObject]:
        return {obj.key: obj for obj in self.objects}

    def with_objects(self, more: Iterable[SchemaObject]) -> SchemaSnapshot:
        return SchemaSnapshot(objects=_sorted((*self.objects, *more)), server_version=self.server_version,
                              version=self.version)

    def unread(self) -> tuple[str, ...]:
        """The kinds and table fields its format did not read yet (NOT_READ_BEFORE)."""
        return tuple(item for since, items in NOT_READ_BEFORE.items() if self.version < since for item in items)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "server_version": self.server_version,
                "objects": [obj.to_json() for obj in self.objects]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> SchemaSnapshot:
        try:
            loaded = json.loads(data) if isinstance(data, str) else data
            version = loaded.get("version") if isinstance(loaded, Mapping) else type(loaded).__name__
            if version not in range(1, SNAPSHOT_VERSION + 1):
                raise SchemaSnapshotError(f"schema snapshot format {version!r} is not 1 to {SNAPSHOT_VERSION}: "
                                          "read it again from the database with this version of rds-migrations")
            objects = [SchemaObject(o["kind"], o["name"], dict(o["definition"]), o.get("parent"),
                                    dict(o.get("info") or {})) for o in loaded["objects"]]
            return cls(objects=_sorted(objects), server_version=str(loaded.get("server_version", "")),
                       version=version)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SchemaSnapshotError(f"schema snapshot is malformed: {type(exc).__name__}: {exc}") from None


def is_ignored(schema: str | None, table: str, patterns: Iterable[str] = TOOL_TABLES) -> bool:
    """Whether a table matches a pattern of `patterns` (a name, or `schema.table` when the pattern has a dot)."""
    return any(fnmatchcase(f"{schema}.{table}" if "." in pattern else table, pattern) for pattern in patterns)


def read_schema(conn: psycopg.Connection, *, ignore: Iterable[str] = TOOL_TABLES) -> SchemaSnapshot:
    """The user schema of `conn`'s database. Tables matching a pattern of `ignore` (see TOOL_TABLES) are left
    out with their columns, constraints, indexes, statistics, triggers, rules and owned sequences. Reads only;
    the session's settings are as they were afterwards."""
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


# ---- rows into objects: one object a row --------------------------------------------------------------

TABLE_KINDS = {"r": "ordinary", "p": "partitioned", "f": "foreign"}
TRIGGER_STATES = {"O": "enabled", "D": "disabled", "R": "replica", "A": "always"}  # a rule's too
REPLICA_IDENTITIES = {"d": None, "n": "nothing", "f": "full"}  # None: the default (the primary key)
POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


def _relation(name: str, relkind: str, persistence: str, rls: bool, force_rls: bool, options: list[str],
              partition_key: str | None, bound: str | None, inherits: list[str], view: str | None,
              seq_type: str | None, start: int, increment: int, minimum: int, maximum: int, cache: int,
              cycle: bool, owner_table: str | None, owner_column: str | None, replica_identity: str,
              replica_index: str | None) -> SchemaObject:
    if relkind in TABLE_KINDS:
        return SchemaObject("table", name, _compact({
            "kind": TABLE_KINDS[relkind], "persistence": "unlogged" if persistence == "u" else "permanent",
            "partition_key": partition_key, "partition_bound": bound, "inherits": inherits,
            "row_security": "forced" if force_rls and rls else "enabled" if rls else None,
            "options": sorted(options), "replica_identity": REPLICA_IDENTITIES.get(
                replica_identity, f"index {replica_index}" if replica_index else "nothing (its index was dropped)")}))
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
    (STATISTICS, lambda table, name, definition, target: SchemaObject("statistics", name, _compact({
        "definition": definition, "target": target}), parent=table)),
    (TRIGGERS, lambda table, name, definition, enabled: SchemaObject("trigger", f"{table}.{name}", {
        "definition": definition, "enabled": TRIGGER_STATES.get(enabled, enabled)}, parent=table)),
    (RULES, lambda table, name, definition, enabled: SchemaObject("rule", f"{table}.{name}", {
        "definition": definition, "enabled": TRIGGER_STATES.get(enabled, enabled)}, parent=table)),
    (POLICIES, lambda table, name, command, permissive, roles, using, check: SchemaObject(
        "policy", f"{table}.{name}", _compact({
            "command": POLICY_COMMANDS.get(command, command), "permissive": permissive, "roles": sorted(roles),
            "using": using, "with_check": check}), parent=table)),
    (ROUTINES, _routine),
    (TYPES, _type),
)
