"""Adoption's mapping: each entry of another tool's history (adopt.py reads it) paired with one of our
migrations, and what would be recorded as applied and what stays pending. Pure: no database.

`map_to_catalog` pairs Knex entries by the name's slug, Flyway's by version then description, and takes
golang-migrate's one version as every migration up to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from tasks.engine.migrations.adopt import TITLES, AdoptionRefused, AppliedEntry, check_tool
from tasks.engine.migrations.catalog import Catalog, Migration

EXTENSIONS = re.compile(r"\.(?:js|ts|cjs|mjs|cts|mts|sql|coffee)$", re.IGNORECASE)
NUMBER_PREFIX = re.compile(r"^(\d+)[._\-\s]+(?=.)")


def slug_key(name: str, *, numbered: bool = True) -> str:
    """What a migration's name says, whoever wrote it: no extension, no leading number (a sequence number or
    a timestamp), lower case, `_`, `-`, `.` and spaces alike. `002_Add_phone.js` and `0002.add-phone` → `add-phone`.
    `numbered` False: a name that holds no number of its own (Flyway's description), whose first word, a year
    in `2024 cleanup`, is part of what it says."""
    stem = EXTENSIONS.sub("", name.strip())
    stem = NUMBER_PREFIX.sub("", stem, count=1) if numbered else stem
    return "-".join(part for part in re.split(r"[\s_.\-]+", stem.lower()) if part)


class Pair(NamedTuple):
    entry: str  # as the tool names it
    migration: str  # our migration id (in `Adoption.skipped`: why the entry maps to nothing)


@dataclass(frozen=True)
class Adoption:
    """The mapping shown before anything is written. With any error nothing is applied nor pending."""

    tool: str
    directory: str
    pairs: tuple[Pair, ...]
    applied: tuple[str, ...] = ()  # to record as applied, in apply order (empty on error)
    pending: tuple[str, ...] = ()  # what the next run applies (empty on error)
    skipped: tuple[Pair, ...] = ()  # entries that map to nothing, on purpose: (entry, why)
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def check(self) -> None:
        if self.errors:
            raise AdoptionRefused(f"{TITLES[self.tool]}'s history cannot be adopted; nothing was written: "
                                  + "; ".join(self.errors))

    def to_text(self) -> str:
        width = max((len(p.entry) for p in (*self.pairs, *self.skipped)), default=0)
        lines = [f"{TITLES[self.tool]}'s history → {self.directory}/"]
        lines += [f"  {p.entry:<{width}}  →  {p.migration}" for p in self.pairs]
        lines += [f"  {p.entry:<{width}}  ·  skipped: {p.migration}" for p in self.skipped]
        if self.errors:
            return "\n".join([*lines, "refused, nothing will be recorded:", *(f"  - {e}" for e in self.errors)])
        lines.append(f"to record as applied without running them: {len(self.applied)}; pending: {len(self.pending)}")
        return "\n".join(lines + [f"  pending  {m}" for m in self.pending])

    def to_json(self) -> dict:
        return {"tool": self.tool, "directory": self.directory, "ok": self.ok,
                "mapping": [p._asdict() for p in self.pairs], "applied": list(self.applied),
                "pending": list(self.pending), "skipped": [{"entry": e, "reason": r} for e, r in self.skipped],
                "errors": list(self.errors)}


def map_to_catalog(entries: list[AppliedEntry], catalog: Catalog, tool: str) -> Adoption:
    """Pair each applied entry with one of our migrations. Errors, each naming its entry: no match, two entries
    for one migration, matches that are not a prefix of the apply order (naming the gap)."""
    check_tool(tool)
    title, migrations, directory = TITLES[tool], catalog.migrations, catalog.directory.name
    pairs: list[Pair] = []
    skipped: list[Pair] = []
    errors: list[str] = []
    if catalog.problems:
        errors.append(f"{directory}/ has {len(catalog.problems)} problem(s): run `rds-migrations validate` first")
    taken: dict[str, str] = {}  # migration id -> the entry that matched it

    def take(entry: str, migration: Migration) -> None:
        if migration.id in taken:
            errors.append(f"{entry}: matches {migration.id}, which {taken[migration.id]} already matches: two entries "
                          f"of {title}'s history cannot be one migration; rename one of the files")
        else:
            taken[migration.id] = entry
            pairs.append(Pair(entry, migration.id))

    for entry in entries:
        if entry.kind == "repeatable":
            skipped.append(Pair(entry.label, "repeatable: its objects are in the schema; rds-migrations has no "
                                             "repeatable migrations, so change them in new ones"))
            continue
        if entry.kind == "up_to":
            covered, problem = _up_to(entry, migrations, tool, directory)
            if not covered and not problem:
                skipped.append(Pair(entry.label, "older than every migration here"))
        else:
            found, problem = (_knex_match if tool == "knex" else _flyway_match)(entry, migrations, taken, directory)
            covered = (found,) if found else ()
        for migration in covered:
            take(entry.label, migration)
        if problem:
            errors.append(problem)

    position = {m.id: i for i, m in enumerate(migrations)}
    newest = max(taken, key=position.__getitem__, default=None)
    for migration in migrations[:position[newest]] if newest else ():
        if migration.id not in taken:
            errors.append(f"{migration.id}: not in {title}'s history, yet {newest} after it is: adopting would leave "
                          f"a hole. If it never ran, renumber it after {newest}; if it did, fix {title}'s history")
    if errors:
        return Adoption(tool, directory, tuple(pairs), skipped=tuple(skipped), errors=tuple(errors))
    return Adoption(tool, directory, tuple(pairs), tuple(m.id for m in migrations if m.id in taken),
                    tuple(m.id for m in migrations if m.id not in taken), tuple(skipped))


Migrations = tuple[Migration, ...]
Match = tuple["Migration | None", "str | None"]  # the migration an entry names, or why none


def _knex_match(entry: AppliedEntry, migrations: Migrations, taken: dict[str, str], directory: str) -> Match:
    key, number = slug_key(entry.name), NUMBER_PREFIX.match(entry.name)
    named = [m for m in migrations if slug_key(m.id) == key]
    if not named:
        return None, f"{entry.name}: no migration in {directory}/ is named like it (looked for NNNN.{key}.sql)"
    free = [m for m in named if m.id not in taken]  # one slug twice (`add-index`): same number, else the next
    return next((m for m in free if number and m.version == int(number[1])), (free or named)[0]), None


def _flyway_match(entry: AppliedEntry, migrations: Migrations, taken: dict[str, str], directory: str) -> Match:
    key, number = slug_key(entry.description, numbered=False), _whole(entry.version)
    named = [m for m in migrations if slug_key(m.id) == key]
    if number is None:  # 1.1: ours are whole numbers, so only a file that kept the description maps
        return (named[0], None) if len(named) == 1 else (None, (
            f"{entry.name}: version {entry.version} is not a whole number and no one migration in {directory}/ is "
            f"named like it: renumber it NNNN.{key}.sql"))
    same = next((m for m in migrations if m.version == number), None)
    if same is None:
        hint = f" ({named[0].id} is named like it: renumber it {number})" if named else ""
        return None, f"{entry.name}: no migration in {directory}/ has version {number}{hint}"
    if slug_key(same.id) != key:
        return None, (f"{entry.name}: version {number} here is {same.id}, but Flyway applied “{entry.description}”; "
                      f"if they are the same change, rename {same.id} so its slug reads {key}")
    return same, None


def _up_to(entry: AppliedEntry, migrations: Migrations, tool: str, directory: str) -> tuple[Migrations, str | None]:
    """Every migration up to the entry's version, which must be one of ours: otherwise the boundary is a guess."""
    number = _whole(entry.version)
    covered = tuple(m for m in migrations if number is not None and m.version <= number)
    if tool == "flyway" and number is not None and not covered:
        return (), None  # a baseline older than all of ours stands for nothing of ours: skipped
    if number is None or not any(m.version == number for m in covered):
        return (), (f"{entry.label}: {TITLES[tool]} recorded version {entry.version} and no migration in {directory}/ "
                    f"has that version: keep {TITLES[tool]}'s version numbers in the file names")
    return covered, None


def _whole(version: str | None) -> int | None:
    """Flyway's `2`, `002` and `2.0` are version 2; `1.1` is not a whole number."""
    parts = (version or "").replace("_", ".").split(".")
    return int(parts[0]) if all(p.isdigit() for p in parts) and not any(int(p) for p in parts[1:]) else None
