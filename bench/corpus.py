"""A realistic migrations directory: what an application's history looks like after a few years (issue 15).

`write_corpus(directory, count=300)` writes `NNNN.slug.sql` files (some with `.rollback.sql` files) that a team
would have written: tables with constraints and foreign keys to earlier tables, columns added (nullable or with
a constant default), indexes (on new tables in the migration, on existing ones `CONCURRENTLY IF NOT EXISTS` in
`-- transactional: false` files), plpgsql functions in dollar quotes and the triggers that use them, views and a
materialized view, enum types and values added to them later, a partitioned table and its monthly partitions,
data backfills (seed `INSERT ... SELECT`, `UPDATE ... WHERE` on rows inserted earlier, counter caches), the
expand-and-contract dance for a NOT NULL column (NOT VALID check, VALIDATE, SET NOT NULL), comments, and the few
`-- squawk-ignore` comments a real team writes where it knows better than the linter (each with its reason).

Every file applies in order with psql (a transaction per transactional file) and through the engine, every
rollback file undoes its migration (the rehearsal rolls back the tail that has them and applies it again),
and the directory lints clean under the production policy. The corpus is deterministic for a seed and
prefix-stable: `write_corpus(d, 301)` writes the same first 300 files as `write_corpus(d, 300)`, so the 301st
is "one new migration on top".

Also: `write_backfill` (one migration of about 10 MB of INSERTs) and `write_many` (5,000 small files).
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SEED = 15  # the number: the corpus every bench run measures

NOUNS = (
    "organizations", "users", "teams", "projects", "tasks", "comments", "invoices", "payments", "subscriptions",
    "plans", "products", "orders", "order_items", "shipments", "addresses", "tags", "notifications", "api_keys",
    "webhooks", "sessions", "documents", "attachments", "customers", "vendors", "warehouses", "stock_levels",
    "price_lists", "coupons", "refunds", "tickets", "labels", "milestones", "sprints", "releases", "deployments",
    "feature_flags", "experiments", "reports", "dashboards", "widgets", "datasets", "exports", "imports",
    "schedules", "reminders", "contacts", "leads", "opportunities", "campaigns", "email_templates", "locales",
    "tax_rates", "regions", "devices", "metrics", "alerts", "incidents", "runbooks", "integrations", "credits",
)
MODULES = ("billing", "crm", "ops", "analytics", "support", "inventory", "hr", "legal", "growth", "platform")
ENUMS = (  # (type suffix, column, values in order: the first three at creation, the rest added later)
    ("priority", "priority", ("low", "normal", "high", "urgent", "critical")),
    ("channel", "channel", ("email", "sms", "push", "webhook", "slack", "teams")),
    ("tier", "tier", ("free", "pro", "business", "enterprise", "strategic")),
    ("visibility", "visibility", ("private", "internal", "public", "restricted")),
    ("source", "source", ("web", "api", "import", "mobile", "partner")),
)
# Columns a new table may have besides id, its parent's id, name and created_at:
# (name, SQL, a table-level CHECK or None, kind) — kind says how later migrations may use the column.
OPTIONAL_COLUMNS = (
    ("status", "text NOT NULL DEFAULT 'active'", "CHECK (status IN ('active', 'suspended', 'archived'))", "status"),
    ("description", "text", None, "text"),
    ("amount_minor", "bigint NOT NULL DEFAULT 0", "CHECK (amount_minor >= 0)", "money"),
    ("currency", "text NOT NULL DEFAULT 'EUR'", "CHECK (currency ~ '^[A-Z]{3}$')", "fixed"),
    ("metadata", "jsonb NOT NULL DEFAULT '{}'::jsonb", "CHECK (jsonb_typeof(metadata) = 'object')", "json"),
    ("email", "text", "CHECK (email IS NULL OR position('@' IN email) > 1)", "email"),
    ("is_enabled", "boolean NOT NULL DEFAULT true", None, "bool"),
    ("sort_order", "bigint NOT NULL DEFAULT 0", None, "fixed"),
    ("starts_at", "timestamptz", None, "time"),
    ("public_id", "uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE", None, "fixed"),
    ("external_ref", "text", None, "unique"),
    ("quantity", "bigint NOT NULL DEFAULT 1", "CHECK (quantity > 0)", "fixed"),
    ("price", "numeric(12, 2)", "CHECK (price IS NULL OR price >= 0)", "number"),
    ("labels", "text[] NOT NULL DEFAULT '{}'", None, "array"),
    ("deleted_at", "timestamptz", None, "time"),
)
# Columns added later to an existing table: (name, SQL type and default, kind, a value for an UPDATE backfill).
ADDED_COLUMNS = (
    ("notes", "text", "text", "'migrated from the legacy notes field'"),
    ("locale", "text", "text", "'en-GB'"),
    ("timezone", "text", "text", "'Europe/London'"),
    ("archived_at", "timestamptz", "time", "created_at + interval '30 days'"),
    ("last_seen_at", "timestamptz", "time", "created_at"),
    ("retry_count", "bigint NOT NULL DEFAULT 0", "fixed", None),
    ("is_internal", "boolean NOT NULL DEFAULT false", "fixed", None),
    ("settings", "jsonb NOT NULL DEFAULT '{}'::jsonb", "fixed", None),
    ("score", "numeric(6, 2)", "number", "round((id % 100)::numeric / 10, 2)"),
    ("source_system", "text NOT NULL DEFAULT 'app'", "fixed", None),
    ("display_name", "text", "text", "initcap(name)"),
    ("legacy_code", "text", "text", "'L' || lpad(id::text, 8, '0')"),
    ("region_code", "text", "text", "'eu-west'"),
    ("version", "bigint NOT NULL DEFAULT 1", "fixed", None),
    ("verified_at", "timestamptz", "time", "created_at + interval '1 hour'"),
)

WEIGHTS = {
    "create_table": 20, "add_column": 14, "concurrent_index": 9, "seed": 7, "update_backfill": 5,
    "audit_trigger": 3, "updated_at_trigger": 4, "normalize_trigger": 2, "counter_cache": 2, "sql_function": 2,
    "view": 3, "enum": 3, "enum_value": 2, "enum_backfill": 1, "check_not_valid": 2, "fk_column": 3,
    "comment": 4, "drop_column": 1, "unique_ref": 1, "partition": 1, "matview_refresh": 1, "replace_function": 1,
    "set_default": 1, "small_index": 1, "maintenance_function": 1,
}
ROLLBACK_SHARE = 0.35  # of the migrations that have a natural rollback


@dataclass
class Migration:
    slug: str
    body: str
    rollback: str | None = None
    transactional: bool = True
    kind: str = ""


@dataclass
class Column:
    name: str
    kind: str
    protected: bool = False  # used by a view, a trigger, a constraint or a queued follow-up: never dropped
    added: bool = False  # added by ALTER TABLE (a candidate for a later DROP COLUMN)


@dataclass
class Table:
    name: str
    parent: str | None
    parent_column: str | None
    columns: dict[str, Column]
    rows: int = 0
    seeds: int = 0
    triggers: list[str] = field(default_factory=list)
    indexed: list[str] = field(default_factory=list)
    enum_columns: dict[str, str] = field(default_factory=dict)  # column -> enum type


def singular(name: str) -> str:
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith(("sses", "xes", "ches", "shes")):
        return name[:-2]
    return name[:-1] if name.endswith("s") else name


def words(name: str) -> str:
    return name.replace("_", " ")


def sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Generator:
    """The application's schema, evolved one migration at a time."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.tables: dict[str, Table] = {}
        self.unused = list(NOUNS)
        self.modules = deque(MODULES)
        self.enums: dict[str, list[str]] = {}  # type -> values committed so far
        self.enum_pending: dict[str, list[str]] = {}  # type -> values not added yet
        self.functions: dict[str, int] = {}  # name -> version
        self.views: list[str] = []
        self.matviews: list[str] = []
        self.partitions: list[tuple[int, int]] = []  # (year, month) of the events table's partitions
        self.follow_ups: deque[tuple[str, dict]] = deque()
        self.names: set[str] = set()  # every index / constraint / trigger name taken
        self.counter = 0
        self.opening = ["create_table", "updated_at_function", "create_table", "audit_setup", "create_table",
                        "create_table", "partitioned_table"]

    # ---- helpers -------------------------------------------------------------------------------------------

    def new_name(self, name: str) -> str:
        name = name[:55]
        candidate, n = name, 2
        while candidate in self.names:
            candidate, n = f"{name}_{n}", n + 1
        self.names.add(candidate)
        return candidate

    def pick_table(self, condition=lambda t: True) -> Table | None:
        tables = [t for t in self.tables.values() if condition(t) and t.name != "audit_events"]
        return self.random.choice(tables) if tables else None

    def rollback_or_none(self, text: str) -> str | None:
        return text if self.random.random() < ROLLBACK_SHARE else None

    def table_name(self) -> str:
        if self.unused:
            return self.unused.pop(self.random.randrange(min(len(self.unused), 6)))
        module = self.modules[0]
        self.modules.rotate(-1)
        for noun in self.random.sample(NOUNS, len(NOUNS)):
            name = f"{module}_{noun}"
            if name not in self.tables:
                return name
        self.counter += 1
        return f"{module}_{self.random.choice(NOUNS)}_{self.counter}"

    # ---- the migrations ------------------------------------------------------------------------------------

    def next(self) -> Migration:
        if self.opening:
            kind = self.opening.pop(0)
            migration = getattr(self, kind)()
            migration.kind = kind
            return migration
        if self.follow_ups and self.random.random() < 0.4:
            kind, args = self.follow_ups.popleft()
            migration = getattr(self, kind)(**args)
            migration.kind = kind
            return migration
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        while True:
            kind = self.random.choices(kinds, weights)[0]
            migration = getattr(self, kind)()
            if migration is not None:
                migration.kind = kind
                return migration

    def create_table(self) -> Migration:
        name = self.table_name()
        parent = self.pick_table(lambda t: t.name != "events") if self.tables else None
        lines = ["id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"]
        columns = {"id": Column("id", "id", True)}
        parent_column = None
        if parent is not None:
            parent_column = f"{singular(parent.name)}_id"
            lines.append(f"{parent_column} bigint NOT NULL REFERENCES {parent.name} (id) ON DELETE CASCADE")
            columns[parent_column] = Column(parent_column, "fk", True)
        lines.append("name text NOT NULL")
        columns["name"] = Column("name", "name", True)
        other = self.pick_table(lambda t: parent is not None and t.name not in (parent.name, "events"))
        if other is not None and self.random.random() < 0.3:
            column = f"{singular(other.name)}_id"
            lines.append(f"{column} bigint REFERENCES {other.name} (id) ON DELETE SET NULL")
            columns[column] = Column(column, "optional_fk", True)
        checks = [f"CONSTRAINT {self.new_name(name + '_name_length')} CHECK (char_length(name) BETWEEN 1 AND 200)"]
        for column, definition, check, kind in self.random.sample(OPTIONAL_COLUMNS, self.random.randint(2, 6)):
            lines.append(f"{column} {definition}")
            columns[column] = Column(column, kind)
            if check:
                checks.append(f"CONSTRAINT {self.new_name(f'{name}_{column}_check')} {check}")
        lines += ["created_at timestamptz NOT NULL DEFAULT now()", "updated_at timestamptz NOT NULL DEFAULT now()"]
        columns["created_at"] = Column("created_at", "created", True)
        columns["updated_at"] = Column("updated_at", "updated", True)
        unique = f"{parent_column}, name" if parent_column else "name"
        checks.append(f"CONSTRAINT {self.new_name(name + '_name_key')} UNIQUE ({unique})")
        body = [f"-- Create {words(name)}" + (f": each belongs to one {words(singular(parent.name))}." if parent
                                               else "."),
                f"CREATE TABLE {name} (", ",\n".join(f"    {line}" for line in lines + checks), ");"]
        table = Table(name, parent.name if parent else None, parent_column, columns)
        for column in [c for c in columns if c.endswith("_id")]:
            index = self.new_name(f"{name}_{column}_idx")
            body.append(f"CREATE INDEX {index} ON {name} ({column});")
            table.indexed.append(column)
        if "status" in columns and self.random.random() < 0.5:
            body.append(f"CREATE INDEX {self.new_name(name + '_active_idx')} ON {name} (created_at) "
                        "WHERE status = 'active';")
        if "set_updated_at" in self.functions and self.random.random() < 0.6:
            trigger = self.new_name(f"{name}_set_updated_at")
            body.append(f"CREATE TRIGGER {trigger}\n    BEFORE UPDATE ON {name}\n    FOR EACH ROW "
                        "EXECUTE FUNCTION set_updated_at();")
            table.triggers.append("set_updated_at")
        self.tables[name] = table
        if self.random.random() < 0.3:
            self.follow_ups.append(("seed", {"name": name}))
        rollback = self.rollback_or_none(
            f"-- Roll back: drop {words(name)} (nothing refers to it yet).\n"
            f"-- squawk-ignore-file ban-drop-table\nDROP TABLE IF EXISTS {name};\n")
        return Migration(f"create-{name.replace('_', '-')}", "\n".join(body) + "\n", rollback)

    def updated_at_function(self) -> Migration:
        self.functions["set_updated_at"] = 1
        body = """-- updated_at maintained by the database, whatever the client: a trigger function every table can use.
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    -- Only when something changed: a no-op UPDATE keeps the old timestamp.
    IF ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;
"""
        rollback = "-- squawk-ignore-file ban-drop-function\nDROP FUNCTION IF EXISTS set_updated_at();\n"
        return Migration("create-set-updated-at-function", body, self.rollback_or_none(rollback))

    def audit_setup(self) -> Migration:
        self.functions["audit_row_change"] = 1
        self.tables["audit_events"] = Table("audit_events", None, None, {"id": Column("id", "id", True)})
        body = """-- Audit trail: every change to an audited table, as JSON, written by a trigger.
CREATE TABLE audit_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name text NOT NULL,
    operation text NOT NULL,
    row_id bigint,
    old_row jsonb,
    new_row jsonb,
    changed_by text NOT NULL DEFAULT current_user,
    changed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_events_operation_check CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE'))
);
CREATE INDEX audit_events_table_row_idx ON audit_events (table_name, row_id);
CREATE INDEX audit_events_changed_at_idx ON audit_events USING brin (changed_at);

""" + audit_body()
        return Migration("create-audit-events", body)

    def partitioned_table(self) -> Migration:
        self.tables["events"] = Table("events", None, None, {"id": Column("id", "id", True)})
        self.partitions = [(2024, 1), (2024, 2), (2024, 3)]
        parts = "\n".join(partition_sql(year, month) for year, month in self.partitions)
        body = f"""-- Product events, partitioned by month: old months are detached and archived, not deleted by row.
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at timestamptz NOT NULL,
    kind text NOT NULL,
    actor text,
    payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
{parts}
CREATE INDEX events_kind_occurred_at_idx ON events (kind, occurred_at);
INSERT INTO events (occurred_at, kind, actor, payload)
SELECT timestamptz '2024-01-01 00:00+00' + g * interval '37 minutes',
       (ARRAY['signup', 'login', 'export', 'invite'])[1 + g % 4],
       'user-' || (g % 97),
       jsonb_build_object('sequence', g, 'client', CASE WHEN g % 3 = 0 THEN 'ios' ELSE 'web' END)
FROM generate_series(0, 2999) AS g;
"""
        return Migration("create-events-partitioned", body)

    def seed(self, name: str | None = None) -> Migration | None:
        table = self.tables.get(name) if name else self.pick_table(lambda t: t.name != "events")
        if table is None:
            return None
        table.seeds += 1
        batch = table.seeds
        if table.parent:
            parent = self.tables[table.parent]
            limit, per = self.random.choice((20, 50, 100)), self.random.randint(1, 4)
            count = min(parent.rows, limit) * per
            body = (f"-- Backfill {words(table.name)}: {per} for each of the first {limit} "
                    f"{words(parent.name)} (batch {batch}).\n"
                    f"INSERT INTO {table.name} ({table.parent_column}, name)\n"
                    f"SELECT p.id, 'batch {batch} ' || p.id || '-' || g\n"
                    f"FROM (SELECT id FROM {parent.name} ORDER BY id LIMIT {limit}) AS p\n"
                    f"CROSS JOIN generate_series(1, {per}) AS g;\n")
        else:
            count = self.random.choice((50, 100, 250, 500))
            body = (f"-- Backfill {words(table.name)}: the {count} records imported from the old system "
                    f"(batch {batch}).\n"
                    f"INSERT INTO {table.name} (name)\n"
                    f"SELECT 'imported {batch}-' || lpad(g::text, 5, '0')\n"
                    f"FROM generate_series(1, {count}) AS g;\n")
        table.rows += count
        return Migration(f"backfill-{table.name.replace('_', '-')}-{batch}", body)

    def update_backfill(self) -> Migration | None:
        table = self.pick_table(lambda t: any(c.added and c.kind in ("text", "time", "number") and c.name in
                                              dict((a[0], a) for a in ADDED_COLUMNS) for c in t.columns.values()))
        if table is None:
            return None
        candidates = [c for c in table.columns.values() if c.added and c.name in {a[0] for a in ADDED_COLUMNS}
                      and dict((a[0], a[3]) for a in ADDED_COLUMNS)[c.name]]
        if not candidates:
            return None
        column = self.random.choice(candidates)
        value = dict((a[0], a[3]) for a in ADDED_COLUMNS)[column.name]
        condition = self.random.choice(("", " AND id % 2 = 0", " AND created_at < now()"))
        body = (f"-- Backfill {words(table.name)}.{column.name} for the rows written before the column existed.\n"
                f"UPDATE {table.name}\nSET {column.name} = {value}\nWHERE {column.name} IS NULL{condition};\n")
        return Migration(f"backfill-{table.name.replace('_', '-')}-{column.name.replace('_', '-')}", body)

    def add_column(self) -> Migration | None:
        table = self.pick_table(lambda t: t.name != "events")
        if table is None:
            return None
        options = [a for a in ADDED_COLUMNS if a[0] not in table.columns]
        if not options:
            return None
        name, definition, kind, value = self.random.choice(options)
        table.columns[name] = Column(name, kind, added=True)
        body = (f"-- {words(table.name).capitalize()} get {words(name)}.\n"
                f"ALTER TABLE {table.name} ADD COLUMN {name} {definition};\n")
        rollback = self.rollback_or_none(
            f"-- squawk-ignore-file ban-drop-column\nALTER TABLE {table.name} DROP COLUMN IF EXISTS {name};\n")
        if value and re.fullmatch(r"'[^']*'", value) and self.random.random() < 0.5:
            # Expand and contract: backfill, NOT VALID check, validate, SET NOT NULL. The column is busy meanwhile.
            table.columns[name].protected = True
            self.follow_ups.append(("not_null_backfill", {"table": table.name, "column": name, "value": value}))
        return Migration(f"add-{table.name.replace('_', '-')}-{name.replace('_', '-')}", body, rollback)

    def not_null_backfill(self, table: str, column: str, value: str) -> Migration:
        constraint = self.new_name(f"{table}_{column}_not_null")
        self.follow_ups.append(("validate_constraint", {"table": table, "constraint": constraint,
                                                        "then": {"column": column}}))
        body = (f"-- {table}.{column} becomes required: new rows get a default, existing rows are backfilled, and\n"
                f"-- a NOT VALID check holds new writes to it without scanning the table under a lock.\n"
                f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT {value};\n"
                f"UPDATE {table} SET {column} = {value} WHERE {column} IS NULL;\n"
                f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({column} IS NOT NULL) NOT VALID;\n")
        return Migration(f"require-{table.replace('_', '-')}-{column.replace('_', '-')}", body)

    def validate_constraint(self, table: str, constraint: str, then: dict | None = None) -> Migration:
        if then is not None:
            self.follow_ups.append(("set_not_null", {"table": table, "column": then["column"],
                                                     "constraint": constraint}))
        body = (f"-- Validate {constraint}: a scan under SHARE UPDATE EXCLUSIVE, which blocks no reads or writes.\n"
                f"ALTER TABLE {table} VALIDATE CONSTRAINT {constraint};\n")
        return Migration(f"validate-{constraint.replace('_', '-')}", body)

    def set_not_null(self, table: str, column: str, constraint: str) -> Migration:
        body = (f"-- {table}.{column} NOT NULL: PostgreSQL uses the validated check {constraint} instead of a\n"
                f"-- full scan, so the ACCESS EXCLUSIVE lock is held for milliseconds. Then the check is redundant.\n"
                f"-- squawk-ignore adding-not-nullable-field\n"
                f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL;\n"
                f"-- squawk-ignore ban-drop-constraint\n"
                f"ALTER TABLE {table} DROP CONSTRAINT {constraint};\n")
        self.tables[table].columns[column].protected = True
        return Migration(f"not-null-{table.replace('_', '-')}-{column.replace('_', '-')}", body)

    def concurrent_index(self) -> Migration | None:
        table = self.pick_table(lambda t: t.name != "events")
        if table is None:
            return None
        choices = [c for c in table.columns.values() if c.name not in table.indexed
                   and c.kind in ("status", "time", "email", "json", "array", "created", "text", "optional_fk",
                                  "unique", "number", "enum") and c.name not in ("description", "notes")]
        if not choices:
            return None
        column = self.random.choice(choices)
        table.indexed.append(column.name)
        index = self.new_name(f"{table.name}_{column.name}_idx")
        if column.kind in ("json", "array"):
            definition = f"USING gin ({column.name})"
        elif column.kind == "email":
            definition = f"(lower({column.name}))"  # logins look e-mail addresses up case-insensitively
        elif column.kind == "time" and "deleted_at" in table.columns and column.name != "deleted_at":
            definition = f"({column.name}) WHERE deleted_at IS NULL"
        else:
            definition = f"({column.name})"
        why = (f"-- {words(table.name).capitalize()} are looked up by {words(column.name)}; "
               "built without blocking writes.")
        body = (f"-- transactional: false\n{why}\n"
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index}\n    ON {table.name} {definition};\n")
        rollback = self.rollback_or_none(f"-- transactional: false\nDROP INDEX CONCURRENTLY IF EXISTS {index};\n")
        return Migration(f"index-{table.name.replace('_', '-')}-{column.name.replace('_', '-')}", body, rollback,
                         transactional=False)

    def small_index(self) -> Migration | None:
        table = self.pick_table(lambda t: t.name != "events" and t.rows < 300 and "created_at" not in t.indexed)
        if table is None:
            return None
        table.indexed.append("created_at")
        index = self.new_name(f"{table.name}_created_at_idx")
        body = (f"-- {words(table.name).capitalize()} listed newest first.\n"
                f"-- {table.name} holds a few hundred rows: a plain build takes milliseconds, and it runs with the\n"
                f"-- rest of this migration in one transaction.\n"
                f"-- squawk-ignore require-concurrent-index-creation\n"
                f"CREATE INDEX {index} ON {table.name} (created_at DESC);\n"
                f"COMMENT ON INDEX {index} IS 'Newest-first listings';\n")
        rollback = self.rollback_or_none(
            f"-- squawk-ignore-file require-concurrent-index-deletion\nDROP INDEX IF EXISTS {index};\n")
        return Migration(f"index-{table.name.replace('_', '-')}-created-at", body, rollback)

    def unique_ref(self) -> Migration | None:
        table = self.pick_table(lambda t: "external_ref" in t.columns and "external_ref" not in t.indexed)
        if table is None:
            return None
        table.indexed.append("external_ref")
        table.columns["external_ref"].protected = True
        index = self.new_name(f"{table.name}_external_ref_key")
        self.follow_ups.append(("unique_constraint", {"table": table.name, "index": index}))
        body = (f"-- transactional: false\n-- The external reference becomes unique: the index first, without blocking "
                f"writes;\n-- the constraint is attached to it in a later migration.\n"
                f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {index}\n    ON {table.name} (external_ref);\n")
        return Migration(f"unique-index-{table.name.replace('_', '-')}-external-ref", body, transactional=False)

    def unique_constraint(self, table: str, index: str) -> Migration:
        body = (f"-- Attach the unique index built concurrently as the table's constraint (a catalog change).\n"
                f"ALTER TABLE {table}\n    ADD CONSTRAINT {index} UNIQUE USING INDEX {index};\n")
        return Migration(f"unique-{table.replace('_', '-')}-external-ref", body)

    def fk_column(self) -> Migration | None:
        table = self.pick_table(lambda t: t.name != "events")
        target = self.pick_table(lambda t: table is not None and t.name not in (table.name, "events"))
        if table is None or target is None:
            return None
        column = f"{singular(target.name)}_id"
        if column in table.columns:
            return None
        table.columns[column] = Column(column, "optional_fk", True, added=True)
        constraint = self.new_name(f"{table.name}_{column}_fkey")
        self.follow_ups.append(("fk_index", {"table": table.name, "column": column}))
        self.follow_ups.append(("validate_constraint", {"table": table.name, "constraint": constraint}))
        body = (f"-- {words(table.name).capitalize()} may name a {words(singular(target.name))}. NOT VALID: "
                f"existing rows are\n-- checked later (VALIDATE), without holding the lock meanwhile.\n"
                f"ALTER TABLE {table.name} ADD COLUMN {column} bigint;\n"
                f"ALTER TABLE {table.name}\n    ADD CONSTRAINT {constraint} FOREIGN KEY ({column})\n"
                f"    REFERENCES {target.name} (id) ON DELETE SET NULL NOT VALID;\n")
        return Migration(f"add-{table.name.replace('_', '-')}-{column.replace('_', '-')}", body)

    def fk_index(self, table: str, column: str) -> Migration:
        index = self.new_name(f"{table}_{column}_idx")
        self.tables[table].indexed.append(column)
        body = (f"-- transactional: false\n-- Index the foreign key: deleting a referenced row must not scan "
                f"{table}.\nCREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} ({column});\n")
        rollback = self.rollback_or_none(f"-- transactional: false\nDROP INDEX CONCURRENTLY IF EXISTS {index};\n")
        return Migration(f"index-{table.replace('_', '-')}-{column.replace('_', '-')}", body, rollback,
                         transactional=False)

    def check_not_valid(self) -> Migration | None:
        table = self.pick_table(lambda t: any(c.kind in ("money", "number", "name") for c in t.columns.values())
                                and t.name != "events")
        if table is None:
            return None
        column = self.random.choice([c for c in table.columns.values() if c.kind in ("money", "number", "name")])
        condition = (f"char_length({column.name}) <= 500" if column.kind == "name"
                     else f"{column.name} IS NULL OR {column.name} < 1000000000")
        column.protected = True
        constraint = self.new_name(f"{table.name}_{column.name}_bounded")
        self.follow_ups.append(("validate_constraint", {"table": table.name, "constraint": constraint}))
        body = (f"-- A sanity bound on {table.name}.{column.name}: enforced for new rows now, validated later.\n"
                f"ALTER TABLE {table.name}\n    ADD CONSTRAINT {constraint} CHECK ({condition}) NOT VALID;\n")
        return Migration(f"check-{table.name.replace('_', '-')}-{column.name.replace('_', '-')}", body)

    def audit_trigger(self) -> Migration | None:
        table = self.pick_table(lambda t: "audit_row_change" not in t.triggers and t.name != "events")
        if table is None or "audit_row_change" not in self.functions:
            return None
        table.triggers.append("audit_row_change")
        trigger = self.new_name(f"{table.name}_audit")
        body = (f"-- Audit every change to {words(table.name)} (compliance asked for it).\n"
                f"CREATE TRIGGER {trigger}\n    AFTER INSERT OR UPDATE OR DELETE ON {table.name}\n"
                f"    FOR EACH ROW EXECUTE FUNCTION audit_row_change();\n")
        rollback = self.rollback_or_none(f"DROP TRIGGER IF EXISTS {trigger} ON {table.name};\n")
        return Migration(f"audit-{table.name.replace('_', '-')}", body, rollback)

    def updated_at_trigger(self) -> Migration | None:
        table = self.pick_table(lambda t: "set_updated_at" not in t.triggers and "updated_at" in t.columns)
        if table is None:
            return None
        table.triggers.append("set_updated_at")
        trigger = self.new_name(f"{table.name}_set_updated_at")
        body = (f"-- Keep {table.name}.updated_at current on every update.\n"
                f"CREATE TRIGGER {trigger}\n    BEFORE UPDATE ON {table.name}\n"
                f"    FOR EACH ROW EXECUTE FUNCTION set_updated_at();\n")
        rollback = self.rollback_or_none(f"DROP TRIGGER IF EXISTS {trigger} ON {table.name};\n")
        return Migration(f"updated-at-{table.name.replace('_', '-')}", body, rollback)

    def normalize_trigger(self) -> Migration | None:
        table = self.pick_table(lambda t: "normalize" not in t.triggers and t.name != "events")
        if table is None:
            return None
        table.triggers.append("normalize")
        function = f"normalize_{table.name}"[:60]
        email = "email" in table.columns
        if email:
            table.columns["email"].protected = True
        lines = ["    NEW.name := btrim(regexp_replace(NEW.name, '\\s+', ' ', 'g'));"]
        if email:
            lines.append("    NEW.email := lower(btrim(NEW.email));")
        lines.append("    IF NEW.name = '' THEN\n        RAISE EXCEPTION 'a name is required; got only whitespace' "
                     "USING ERRCODE = 'check_violation';\n    END IF;")
        trigger = self.new_name(f"{table.name}_normalize")
        self.functions[function] = 1
        body = (f"-- Normalise {words(table.name)} on the way in: collapse whitespace"
                + (", lower-case e-mail addresses" if email else "") + ".\n"
                f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger\n    LANGUAGE plpgsql\nAS $body$\nBEGIN\n"
                + "\n".join(lines) + "\n    RETURN NEW;\nEND;\n$body$;\n\n"
                f"CREATE TRIGGER {trigger}\n    BEFORE INSERT OR UPDATE OF name"
                + (", email" if email else "") + f" ON {table.name}\n    FOR EACH ROW EXECUTE FUNCTION {function}();\n")
        rollback = self.rollback_or_none(
            f"-- squawk-ignore-file ban-drop-function\nDROP TRIGGER IF EXISTS {trigger} ON {table.name};\n"
            f"DROP FUNCTION IF EXISTS {function}();\n")
        return Migration(f"normalize-{table.name.replace('_', '-')}", body, rollback)

    def counter_cache(self) -> Migration | None:
        child = self.pick_table(lambda t: t.parent is not None and t.parent != "events"
                                and f"{t.name}_count" not in self.tables[t.parent].columns)
        if child is None:
            return None
        parent = self.tables[child.parent]
        column = f"{child.name}_count"[:60]
        parent.columns[column] = Column(column, "fixed", True, added=True)
        function = f"count_{child.name}"[:60]
        trigger = self.new_name(f"{child.name}_count")
        fk = child.parent_column
        self.functions[function] = 1
        body = f"""-- Counter cache: {parent.name}.{column}, kept by a trigger on {child.name}, backfilled once here.
ALTER TABLE {parent.name} ADD COLUMN {column} bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE {parent.name} SET {column} = {column} + 1 WHERE id = NEW.{fk};
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE {parent.name} SET {column} = {column} - 1 WHERE id = OLD.{fk};
    END IF;
    RETURN NULL;  -- AFTER trigger: the result is ignored
END;
$$;

CREATE TRIGGER {trigger}
    AFTER INSERT OR DELETE ON {child.name}
    FOR EACH ROW EXECUTE FUNCTION {function}();

UPDATE {parent.name} AS p
SET {column} = c.n
FROM (SELECT {fk}, count(*) AS n FROM {child.name} GROUP BY {fk}) AS c
WHERE c.{fk} = p.id;
"""
        rollback = self.rollback_or_none(
            f"-- squawk-ignore-file ban-drop-function,ban-drop-column\n"
            f"DROP TRIGGER IF EXISTS {trigger} ON {child.name};\nDROP FUNCTION IF EXISTS {function}();\n"
            f"ALTER TABLE {parent.name} DROP COLUMN IF EXISTS {column};\n")
        return Migration(f"counter-{parent.name.replace('_', '-')}-{child.name.replace('_', '-')}", body, rollback)

    def sql_function(self) -> Migration | None:
        child = self.pick_table(lambda t: t.parent is not None and t.parent != "events")
        if child is None:
            return None
        function = f"{singular(child.parent)}_recent_{child.name}"[:60]
        if function in self.functions:
            return None
        self.functions[function] = 1
        body = f"""-- The API's "recent {words(child.name)}" query, in one place.
CREATE OR REPLACE FUNCTION {function}(p_id bigint, p_limit integer DEFAULT 20)
    RETURNS SETOF {child.name}
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $fn$
    SELECT *
    FROM {child.name}
    WHERE {child.parent_column} = p_id
    ORDER BY created_at DESC, id DESC
    LIMIT greatest(p_limit, 0);
$fn$;
COMMENT ON FUNCTION {function}(bigint, integer) IS 'Newest first; p_limit caps the page; the API''s list endpoint';
"""
        rollback = self.rollback_or_none(
            f"-- squawk-ignore-file ban-drop-function\nDROP FUNCTION IF EXISTS {function}(bigint, integer);\n")
        return Migration(f"function-{function.replace('_', '-')}", body, rollback)

    def replace_function(self) -> Migration | None:
        if "set_updated_at" not in self.functions:
            return None
        self.functions["set_updated_at"] += 1
        version = self.functions["set_updated_at"]
        body = f"""-- set_updated_at v{version}: leave updated_at alone when the application set it itself (imports).
CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at
       AND ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
        NEW.updated_at := now();  -- v{version}
    END IF;
    RETURN NEW;
END;
$$;
"""
        return Migration(f"set-updated-at-v{version}", body)

    def maintenance_function(self) -> Migration | None:
        if "purge_soft_deleted" in self.functions:
            return None
        self.functions["purge_soft_deleted"] = 1
        body = """-- Housekeeping, called by the nightly job: delete soft-deleted rows older than a retention period.
-- Dynamic SQL quoted with format(): %I for identifiers, %L for literals.
CREATE OR REPLACE FUNCTION purge_soft_deleted(p_table regclass, p_days integer DEFAULT 90)
    RETURNS bigint
    LANGUAGE plpgsql
AS $purge$
DECLARE
    purged bigint;
BEGIN
    IF p_days < 7 THEN
        RAISE EXCEPTION 'retention of % days is too short; the minimum is 7', p_days;
    END IF;
    EXECUTE format($q$DELETE FROM %s WHERE deleted_at < now() - make_interval(days => %L)$q$, p_table, p_days);
    GET DIAGNOSTICS purged = ROW_COUNT;
    RAISE NOTICE 'purged % rows from %; retention % days', purged, p_table, p_days;
    RETURN purged;
END;
$purge$;
"""
        rollback = self.rollback_or_none(
            "-- squawk-ignore-file ban-drop-function\nDROP FUNCTION IF EXISTS purge_soft_deleted(regclass, integer);\n")
        return Migration("function-purge-soft-deleted", body, rollback)

    def view(self) -> Migration | None:
        child = self.pick_table(lambda t: t.parent is not None and t.parent != "events")
        if child is None:
            return None
        parent = self.tables[child.parent]
        name = f"{singular(parent.name)}_{child.name}_summary"[:60]
        if name in self.views:
            return None
        self.views.append(name)
        one = singular(child.name)
        status = "status" in child.columns
        if status:
            child.columns["status"].protected = True
        count = (f"count(c.id) FILTER (WHERE c.status = 'active') AS active_{child.name}" if status
                 else f"count(c.id) AS {child.name}")
        body = f"""-- Reporting: {words(child.name)} per {words(singular(parent.name))}.
CREATE OR REPLACE VIEW {name} AS
SELECT p.id AS {singular(parent.name)}_id,
       p.name,
       {count},
       max(c.created_at) AS last_{one}_at
FROM {parent.name} AS p
LEFT JOIN {child.name} AS c ON c.{child.parent_column} = p.id
GROUP BY p.id, p.name;
"""
        rollback = self.rollback_or_none(
            f"-- squawk-ignore-file ban-drop-view\nDROP VIEW IF EXISTS {name};\n")
        if self.random.random() < 0.4 and not self.matviews:
            matview = f"{name}_daily"[:60]
            self.matviews.append(matview)
            index = self.new_name(f"{matview}_key")
            body += f"""
-- And a daily rollup for the dashboard, refreshed by the nightly job.
CREATE MATERIALIZED VIEW {matview} AS
SELECT date_trunc('day', created_at) AS day, count(*) AS {child.name}
FROM {child.name}
GROUP BY 1
WITH DATA;
-- Created just above: nothing reads it yet, so a plain build blocks nobody.
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX {index} ON {matview} (day);
"""
            rollback = None
        return Migration(f"view-{name.replace('_', '-')}", body, rollback)

    def matview_refresh(self) -> Migration | None:
        if not self.matviews:
            return None
        matview = self.matviews[0]
        body = (f"-- Refresh {matview} after the backfills above (CONCURRENTLY: readers keep the old rows).\n"
                f"REFRESH MATERIALIZED VIEW CONCURRENTLY {matview};\n")
        return Migration(f"refresh-{matview.replace('_', '-')}", body)

    def enum(self) -> Migration | None:
        table = self.pick_table(lambda t: t.name != "events" and not t.enum_columns)
        options = [e for e in ENUMS if f"{singular(table.name) if table else ''}_{e[0]}" not in self.enums]
        if table is None or not options:
            return None
        suffix, column, values = self.random.choice(options)
        if column in table.columns:
            return None
        type_name = f"{singular(table.name)}_{suffix}"[:60]
        self.enums[type_name] = list(values[:3])
        self.enum_pending[type_name] = list(values[3:])
        table.columns[column] = Column(column, "enum", True, added=True)
        table.enum_columns[column] = type_name
        listed = ", ".join(sql_text(v) for v in values[:3])
        if self.random.random() < 0.4:
            create = (f"DO $$\nBEGIN\n    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = {sql_text(type_name)}) "
                      f"THEN\n        CREATE TYPE {type_name} AS ENUM ({listed});\n    END IF;\nEND\n$$;")
        else:
            create = f"CREATE TYPE {type_name} AS ENUM ({listed});"
        body = (f"-- {words(table.name).capitalize()} get a {suffix}: an enum, so a typo is an error, not a new "
                f"value.\n{create}\n"
                f"ALTER TABLE {table.name} ADD COLUMN {column} {type_name} NOT NULL DEFAULT {sql_text(values[1])};\n")
        rollback = self.rollback_or_none(
            f"-- squawk-ignore-file ban-drop-column\nALTER TABLE {table.name} DROP COLUMN IF EXISTS {column};\n"
            f"DROP TYPE IF EXISTS {type_name};\n")
        return Migration(f"enum-{type_name.replace('_', '-')}", body, rollback)

    def enum_value(self) -> Migration | None:
        pending = [t for t, values in self.enum_pending.items() if values]
        if not pending:
            return None
        type_name = self.random.choice(pending)
        value = self.enum_pending[type_name].pop(0)
        after = self.enums[type_name][-1]
        self.enums[type_name].append(value)  # usable from the next migration on (its own transaction)
        body = (f"-- A new {type_name} value. PostgreSQL 12+ allows this in a transaction, but the value cannot be\n"
                f"-- used before that transaction commits: the backfill that uses it is a later migration.\n"
                f"ALTER TYPE {type_name} ADD VALUE IF NOT EXISTS {sql_text(value)} AFTER {sql_text(after)};\n")
        return Migration(f"enum-{type_name.replace('_', '-')}-{value}", body)  # no rollback: values cannot be dropped

    def enum_backfill(self) -> Migration | None:
        tables = [(t, c, e) for t in self.tables.values() for c, e in t.enum_columns.items()
                  if len(self.enums.get(e, ())) > 3 and c in t.columns]
        if not tables:
            return None
        table, column, type_name = self.random.choice(tables)
        value = self.enums[type_name][-1]
        body = (f"-- Reclassify: every tenth {words(singular(table.name))} moves to {value!r} (added in an "
                f"earlier migration).\n"
                f"UPDATE {table.name}\nSET {column} = {sql_text(value)}\n"
                f"WHERE id % 10 = 0 AND {column} = {sql_text(self.enums[type_name][0])};\n")
        return Migration(f"reclassify-{table.name.replace('_', '-')}-{column}-{value}", body)

    def comment(self) -> Migration | None:
        table = self.pick_table()
        if table is None:
            return None
        column = self.random.choice(list(table.columns))
        owner = f"{words(table.name).capitalize()}: owned by the {self.random.choice(MODULES)} team; see the wiki."
        meaning = f"The {words(column)}; it's part of the public API, so don't repurpose it."
        body = (f"-- Documentation in the schema, for the data team's catalog.\n"
                f"COMMENT ON TABLE {table.name} IS {sql_text(owner)};\n"
                f"COMMENT ON COLUMN {table.name}.{column} IS {sql_text(meaning)};\n")
        rollback = self.rollback_or_none(f"COMMENT ON TABLE {table.name} IS NULL;\n"
                                         f"COMMENT ON COLUMN {table.name}.{column} IS NULL;\n")
        return Migration(f"comment-{table.name.replace('_', '-')}", body, rollback)

    def drop_column(self) -> Migration | None:
        table = self.pick_table(lambda t: any(c.added and not c.protected for c in t.columns.values()))
        if table is None:
            return None
        column = self.random.choice([c for c in table.columns.values() if c.added and not c.protected])
        del table.columns[column.name]
        table.indexed = [c for c in table.indexed if c != column.name]
        body = (f"-- Contract: {table.name}.{column.name} is no longer read or written by any deployed release\n"
                f"-- (removed from the code two releases ago), so it goes. Dropping a column is a catalog change.\n"
                f"-- squawk-ignore ban-drop-column\n"
                f"ALTER TABLE {table.name} DROP COLUMN IF EXISTS {column.name};\n")
        return Migration(f"drop-{table.name.replace('_', '-')}-{column.name.replace('_', '-')}", body)

    def set_default(self) -> Migration | None:
        table = self.pick_table(lambda t: "status" in t.columns)
        if table is None:
            return None
        body = (f"-- New {words(table.name)} start suspended until someone approves them.\n"
                f"ALTER TABLE {table.name} ALTER COLUMN status SET DEFAULT 'suspended';\n")
        rollback = self.rollback_or_none(f"ALTER TABLE {table.name} ALTER COLUMN status SET DEFAULT 'active';\n")
        return Migration(f"default-{table.name.replace('_', '-')}-status", body, rollback)

    def partition(self) -> Migration | None:
        if not self.partitions:
            return None
        year, month = self.partitions[-1]
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        self.partitions.append((year, month))
        body = (f"-- Next month's partition of events, created ahead of time.\n"
                f"{partition_sql(year, month, if_not_exists=True)}\n")
        rollback = self.rollback_or_none(
            f"-- squawk-ignore-file ban-drop-table\nDROP TABLE IF EXISTS events_{year}_{month:02d};\n")
        return Migration(f"events-partition-{year}-{month:02d}", body, rollback)


def partition_sql(year: int, month: int, *, if_not_exists: bool = False) -> str:
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    return (f"CREATE TABLE {'IF NOT EXISTS ' if if_not_exists else ''}events_{year}_{month:02d} PARTITION OF events\n"
            f"    FOR VALUES FROM ('{year}-{month:02d}-01') TO ('{following[0]}-{following[1]:02d}-01');")


def audit_body() -> str:
    return """CREATE OR REPLACE FUNCTION audit_row_change() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $function$
DECLARE
    old_data jsonb;
    new_data jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        old_data := to_jsonb(OLD);
    ELSIF TG_OP = 'UPDATE' THEN
        old_data := to_jsonb(OLD);
        new_data := to_jsonb(NEW);
        IF old_data = new_data THEN
            RETURN NEW;  -- nothing changed; nothing to record
        END IF;
    ELSE
        new_data := to_jsonb(NEW);
    END IF;
    INSERT INTO audit_events (table_name, operation, row_id, old_row, new_row)
    VALUES (TG_TABLE_NAME, TG_OP, (coalesce(new_data, old_data)->>'id')::bigint, old_data, new_data);
    RETURN coalesce(NEW, OLD);
END;
$function$;
"""


def migrations(seed: int = SEED) -> Iterator[Migration]:
    """The corpus, one migration after another, forever (prefix-stable for a seed)."""
    generator = Generator(seed)
    while True:
        yield generator.next()


def file_stem(number: int, slug: str, width: int) -> str:
    return f"{number:0{width}d}.{slug}"


def write_corpus(directory: Path, count: int = 300, seed: int = SEED, *, start: int = 1,
                 max_files: int | None = None) -> list[Path]:
    """Write migrations `start`..`count` of the corpus for `seed` into `directory`; return the migration paths.

    `max_files`: stop once that many files are written, rollback files included. File names are
    `NNNN.slug.sql` (wider when the count needs it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(max_files or count)))
    paths: list[Path] = []
    files = 0
    for number, migration in enumerate(migrations(seed), 1):
        if number > count or (max_files is not None and files >= max_files):
            break
        if number < start:
            continue
        stem = file_stem(number, migration.slug, width)
        path = directory / f"{stem}.sql"
        path.write_text(migration.body, encoding="utf-8")
        paths.append(path)
        files += 1
        if migration.rollback is not None and (max_files is None or files < max_files):
            (directory / f"{stem}.rollback.sql").write_text(migration.rollback, encoding="utf-8")
            files += 1
    return paths


def write_next(directory: Path, after: int = 300, seed: int = SEED) -> Path:
    """One new migration on top of the first `after`: a new table with a foreign key to an earlier one and a
    rollback file (the typical change; the rehearsal rolls it back and applies it again)."""
    generator = Generator(seed)
    for _ in range(after):
        generator.next()
    migration = generator.create_table()
    migration.rollback = (f"-- squawk-ignore-file ban-drop-table\n"
                          f"DROP TABLE IF EXISTS {next(reversed(generator.tables))};\n")
    stem = file_stem(after + 1, migration.slug, max(4, len(str(after + 1))))
    path = directory / f"{stem}.sql"
    path.write_text(migration.body, encoding="utf-8")
    (directory / f"{stem}.rollback.sql").write_text(migration.rollback, encoding="utf-8")
    return path


def kinds(count: int = 300, seed: int = SEED) -> dict[str, int]:
    """How many migrations of each kind the first `count` hold (for the report)."""
    found: dict[str, int] = {}
    for number, migration in enumerate(migrations(seed), 1):
        if number > count:
            break
        found[migration.kind] = found.get(migration.kind, 0) + 1
    return dict(sorted(found.items(), key=lambda item: -item[1]))


def write_many(directory: Path, count: int = 5000, seed: int = SEED) -> list[Path]:
    """`count` small files in all, migrations and their rollback files: the corpus, continued that far."""
    return write_corpus(directory, count, seed, max_files=count)


def write_backfill(directory: Path, megabytes: float = 10, rows_per_statement: int = 1) -> Path:
    """A table, then one migration of about `megabytes` MB of INSERT statements: a data backfill (postal codes),
    `rows_per_statement` rows per INSERT (1: as `pg_dump --inserts` writes them). Returns the big file."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "0001.create-postal-codes.sql").write_text(
        "-- Postal codes: reference data, loaded by the next migration.\n"
        "CREATE TABLE postal_codes (\n"
        "    id bigint PRIMARY KEY,\n    country text NOT NULL,\n    code text NOT NULL,\n"
        "    place_name text NOT NULL,\n    admin_region text,\n    latitude numeric(8, 5),\n"
        "    longitude numeric(8, 5),\n"
        "    CONSTRAINT postal_codes_country_code_key UNIQUE (country, code, place_name)\n"
        ");\n", encoding="utf-8")
    rng = random.Random(SEED)
    countries = ("DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE", "AT", "BE")
    places = ("Mitte", "Nord", "Süd", "Altstadt", "Hafen", "Saint-Denis", "O'Brien's Cross", "Kings Park",
              "Vila Nova", "Neustadt", "Am Markt", "Oberdorf")
    target = int(megabytes * 1_000_000)
    path = directory / "0002.backfill-postal-codes.sql"
    size = 0
    row_id = 0
    with path.open("w", encoding="utf-8") as out:
        header = "-- Backfill postal_codes from the vendor's dump (one INSERT per row, as pg_dump --inserts writes).\n"
        out.write(header)
        size += len(header.encode())
        columns = "INSERT INTO postal_codes (id, country, code, place_name, admin_region, latitude, longitude) VALUES "
        while size < target:
            rows = []
            for _ in range(rows_per_statement):
                row_id += 1
                country = countries[row_id % len(countries)]
                place = f"{rng.choice(places)} {row_id}".replace("'", "''")
                rows.append(f"({row_id}, '{country}', '{rng.randrange(10000, 99999)}', '{place}', "
                            f"'Region {row_id % 37}', {rng.uniform(35, 60):.5f}, {rng.uniform(-9, 25):.5f})")
            statement = columns + ",\n    ".join(rows) + ";\n"
            out.write(statement)
            size += len(statement.encode())
    return path
