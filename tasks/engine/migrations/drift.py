"""Drift: the live schema of a database against the schema its applied migrations make.

`compare` takes two `SchemaSnapshot`s (schema.py) and names every difference by object: missing from the live
database, there but made by no migration, or changed (with both definitions). Children of a missing or
unexpected table or view (its columns, constraints, indexes, statistics, triggers, rules, owned sequences)
are folded into its line. Pure: no database, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from tasks.engine.migrations.schema import KIND_ORDER, KINDS, SchemaObject, SchemaSnapshot
from tasks.engine.migrations.sqltext import shorten

Status = Literal["missing", "unexpected", "changed"]

STATUS_TEXT = {"missing": "missing (dropped by hand?)", "unexpected": "not made by any migration (added by hand?)"}
LABELS = {"not_null": "NOT NULL", "owned_by": "owned by", "partition_key": "partition key",
          "partition_bound": "partition bound", "row_security": "row security", "state_type": "state type",
          "replica_identity": "replica identity", "target": "statistics target", "rule": "rules",
          "statistics": "extended statistics"}
# Fields whose absence is PostgreSQL's default, printed as such rather than as "none".
DEFAULTED = ("replica_identity", "target")
# What children fold into: their line is the container's when it is missing or unexpected.
CONTAINERS = ("table", "view", "materialized view")
# What to do about drift, wherever it is reported: the pending migration then accounts for it (explained_by_pending).
WAY_OUT = ("write what was changed by hand as a migration that does the same (IF NOT EXISTS / IF EXISTS: here it "
           "then changes nothing), or undo it by hand")
NAME_WIDTH = 48  # names longer than this push their line's text right rather than every line's


@dataclass(frozen=True)
class FieldChange:
    """One attribute of a definition that differs: `expected` from the migrations, `live` from the database."""

    field: str
    expected: Any
    live: Any

    @property
    def text(self) -> str:
        if self.field == "valid":
            return "INVALID on the live database" if self.expected else "INVALID where the migrations were applied"
        label = LABELS.get(self.field, self.field)
        if self.field == "not_null":
            return f"{label}: expected {_null(self.expected)}, live {_null(self.live)}"
        if isinstance(self.expected, list) and isinstance(self.live, list):
            return f"{label}: {_list_change(self.expected, self.live)}"
        if _long(self.expected) or _long(self.live):
            return f"{label} differs{_first_difference(str(self.expected or ''), str(self.live or ''))}"
        if self.field in DEFAULTED:
            return f"{label}: expected {_show(self.expected, 'default')}, live {_show(self.live, 'default')}"
        return f"{label}: expected {_show(self.expected)}, live {_show(self.live)}"

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "expected": self.expected, "live": self.live}


@dataclass(frozen=True)
class Difference:
    """One object that is not as the migrations make it."""

    kind: str
    name: str
    status: Status
    changes: tuple[FieldChange, ...] = ()
    expected: dict[str, Any] | None = None  # the whole definitions, for JSON readers and the curious
    live: dict[str, Any] | None = None

    @property
    def detail(self) -> str:
        if self.status != "changed":
            return STATUS_TEXT[self.status]
        return "; ".join(change.text for change in self.changes)

    @property
    def text(self) -> str:
        """One line: `column public.users.nickname: not made by any migration (added by hand?)`."""
        return f"{self.kind} {self.name}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "status": self.status, "text": self.text,
                "changes": [change.to_json() for change in self.changes],
                "expected": self.expected, "live": self.live}


@dataclass(frozen=True)
class DriftReport:
    """Every difference, ordered by kind (containers first, see schema.KINDS) then name."""

    differences: tuple[Difference, ...]
    compared: int  # objects looked at: the union of both snapshots
    notes: tuple[str, ...] = ()  # what to keep in mind reading it; never drift by itself

    @property
    def drifted(self) -> bool:
        return bool(self.differences)

    def counts(self) -> dict[str, int]:
        return {status: sum(d.status == status for d in self.differences)
                for status in ("missing", "unexpected", "changed")}

    def summary(self) -> str:
        if not self.drifted:
            return f"no drift: the live schema is what the migrations make ({self.compared} objects compared)"
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items() if n)
        plural = "s" if len(self.differences) > 1 else ""
        return f"drift: {len(self.differences)} difference{plural} ({counts}) in {self.compared} objects compared"

    def to_text(self) -> str:
        """The summary, then one aligned line per difference: kind, name, what is wrong."""
        kind_width = max((len(d.kind) for d in self.differences), default=0)
        name_width = min(max((len(d.name) for d in self.differences), default=0), NAME_WIDTH)
        lines = [self.summary(), *(f"note: {note}" for note in self.notes)]
        lines += [f"  {d.kind:<{kind_width}}  {d.name:<{name_width}}  {d.detail}" for d in self.differences]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "compared": self.compared, "counts": self.counts(),
                "notes": list(self.notes), "differences": [d.to_json() for d in self.differences]}


def compare(expected: SchemaSnapshot, live: SchemaSnapshot) -> DriftReport:
    """Every object that differs between `expected` (what the applied migrations make, e.g. read from a
    rehearsal database) and `live` (the target database)."""
    unread = tuple(dict.fromkeys((*expected.unread(), *live.unread())))
    want, have = _read_by_both(expected, unread), _read_by_both(live, unread)
    missing = {key for key in want if key not in have}
    unexpected = {key for key in have if key not in want}
    # A table (or view) that is missing (or unexpected) says it for its columns, indexes, triggers, rules...
    folded = {status: {name for kind, name in keys if kind in CONTAINERS}
              for status, keys in (("missing", missing), ("unexpected", unexpected))}
    orders = _column_orders(want), _column_orders(have)
    differences: list[Difference] = []
    for key in sorted(want.keys() | have.keys(), key=lambda k: (KIND_ORDER.get(k[0], len(KINDS)), k[0], k[1])):
        kind, name = key
        if key in missing or key in unexpected:
            status: Status = "missing" if key in missing else "unexpected"
            obj = want[key] if key in missing else have[key]
            if obj.parent not in folded[status]:
                differences.append(Difference(kind, name, status, expected=want[key].definition if key in want
                                              else None, live=have[key].definition if key in have else None))
            continue
        changes = _changes(want[key].definition, have[key].definition)
        if kind == "table" and not (_inheriting(want[key]) or _inheriting(have[key])):
            changes += _column_order(orders[0].get(name, []), orders[1].get(name, []))
        if changes:
            differences.append(Difference(kind, name, "changed", tuple(changes), want[key].definition,
                                          have[key].definition))
    return DriftReport(differences=tuple(differences), compared=len(want.keys() | have.keys()),
                       notes=_version_notes(expected.server_version, live.server_version) + _unread_note(unread))


def explained_by_pending(drift: DriftReport, after: SchemaSnapshot, live: SchemaSnapshot) -> DriftReport:
    """`drift` (the live schema against the applied migrations) without the differences the pending migrations
    account for: an object the live database already has as the applied and pending migrations together make
    it (`after`), or lacks as they do. The way out of drift the report suggests: a change made by hand, then
    written as a migration (`CREATE INDEX ... IF NOT EXISTS`), no longer stops that migration's run. Each one
    becomes a note; whatever else differs stays drift."""
    want, have = after.by_key(), live.by_key()
    still = {(d.kind, d.name) for d in compare(after, live).differences}

    def accounted_for(difference: Difference) -> bool:
        keys = {(difference.kind, difference.name)}
        if difference.kind in CONTAINERS and difference.status != "changed":  # its columns, ... folded in
            keys |= {key for key, obj in (want | have).items() if obj.parent == difference.name}
        return all(key not in still and _definition(want.get(key)) == _definition(have.get(key)) for key in keys)

    accounted = [(d, accounted_for(d)) for d in drift.differences]  # once each: it compares definitions
    if not any(explained for _, explained in accounted):
        return drift
    return replace(drift, differences=tuple(d for d, explained in accounted if not explained),
                   notes=(*drift.notes, *(f"{d.text}: accounted for by a pending migration, not drift"
                                          for d, explained in accounted if explained)))


def _definition(obj: SchemaObject | None) -> dict[str, Any] | None:
    return obj.definition if obj is not None else None


def _read_by_both(snapshot: SchemaSnapshot, unread: tuple[str, ...]) -> dict[tuple[str, str], SchemaObject]:
    """`snapshot`'s objects by key, without the kinds and table fields in `unread` (one side did not read them)."""
    return {obj.key: replace(obj, definition={k: v for k, v in obj.definition.items() if k not in unread})
            for obj in snapshot.objects if obj.kind not in unread}


def _unread_note(unread: tuple[str, ...]) -> tuple[str, ...]:
    """A schema remembered by an older rds-migrations did not read everything: what was left out is said."""
    if not unread:
        return ()
    return (f"a schema was read by an older rds-migrations, without {', '.join(LABELS.get(u, u) for u in unread)}: "
            "they are not compared until the next migration is applied (its schema is then read afresh)",)


def _version_notes(expected: str, live: str) -> tuple[str, ...]:
    """Definitions are printed by the server: two major versions may print the same view or default apart."""
    majors = expected.split(".")[0], live.split(".")[0]
    if expected and live and majors[0] != majors[1]:
        return (f"the expected schema was read from PostgreSQL {expected.split()[0]} and the live one from "
                f"{live.split()[0]}: a definition may differ only in how each version prints it",)
    return ()


def _changes(expected: dict[str, Any], live: dict[str, Any]) -> list[FieldChange]:
    fields = list(expected) + [field for field in live if field not in expected]
    return [FieldChange(field, expected.get(field), live.get(field)) for field in fields
            if expected.get(field) != live.get(field)]


def _column_orders(objects: dict[tuple[str, str], SchemaObject]) -> dict[str, list[str]]:
    """Each table's columns, in the table's order."""
    columns = sorted((obj for (kind, _), obj in objects.items() if kind == "column"),
                     key=lambda obj: (obj.parent or "", obj.info.get("position", 0)))
    orders: dict[str, list[str]] = {}
    for column in columns:
        orders.setdefault(column.parent or "", []).append(column.name.removeprefix(f"{column.parent}."))
    return orders


def _inheriting(table: SchemaObject) -> bool:
    """An inheritance child (not a partition): its column order is not compared. A schema-only dump makes it
    again as `CREATE TABLE child (<its own columns>) INHERITS (parent)`, the inherited columns first, so a
    reference rebuilt from a baseline's dump has them in another order than a table that gained its own column
    before its parent gained one; no migration can change a column's position."""
    return bool(table.definition.get("inherits")) and not table.definition.get("partition_bound")


def _column_order(expected: list[str], live: list[str]) -> list[FieldChange]:
    """The order of the columns both sides have (a column dropped or added by hand is reported on its own)."""
    both = set(expected) & set(live)
    expected, live = [c for c in expected if c in both], [c for c in live if c in both]
    return [FieldChange("column order", expected, live)] if expected != live else []


def _null(not_null: Any) -> str:
    return "NOT NULL" if not_null else "nullable"


def _show(value: Any, absent: str = "none") -> str:
    return absent if value is None else str(value)


def _long(value: Any) -> bool:
    return isinstance(value, str) and ("\n" in value.strip() or len(value) > 80)


def _first_difference(expected: str, live: str) -> str:
    """Where two long definitions (function bodies, views, indexes) part: the first line that differs, from a
    little before its first differing character."""
    expected_lines, live_lines = expected.splitlines(), live.splitlines()
    for number, (want, have) in enumerate(zip(expected_lines, live_lines, strict=False), start=1):
        if want != have:
            at = next((i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b), len(want))
            where = f" at line {number}" if max(len(expected_lines), len(live_lines)) > 1 else ""
            return f"{where}: expected {_excerpt(want, at)!r}, live {_excerpt(have, at)!r}"
    number = min(len(expected_lines), len(live_lines)) + 1
    return f" from line {number}: expected {len(expected_lines)} lines, live {len(live_lines)}"


def _excerpt(line: str, at: int, width: int = 70) -> str:
    """`line` from 40 characters before `at` (or its first non-blank), at most `width` long."""
    indent = len(line) - len(line.lstrip())
    begin = max(indent, at - 40)
    return ("…" if begin > indent else "") + shorten(line[begin:], width)


def _list_change(expected: list[Any], live: list[Any]) -> str:
    added = [item for item in live if item not in expected]
    removed = [item for item in expected if item not in live]
    parts = [f"live has {', '.join(map(repr, added))} that no migration made"] if added else []
    parts += [f"live lacks {', '.join(map(repr, removed))}"] if removed else []
    return "; ".join(parts) or f"expected ({', '.join(map(str, expected))}), live ({', '.join(map(str, live))})"
