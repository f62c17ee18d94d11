"""The migrations directory: yoyo SQL files read into typed `Migration` values, in apply order.

yoyo's format is kept: `NNNN.slug.sql`, an optional `NNNN.slug.rollback.sql`, leading-comment directives
`-- depends: <id> ...` and `-- transactional: false`, statements split by yoyo (sqlparse). Every problem
is collected with the file it is about, so one run tells the user everything that is wrong.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from yoyo.migrations import read_sql_migration

from tasks.engine.migrations.sqltext import after_comments

# A migration id is the file name without `.sql`: a version number, a separator, then a slug.
MIGRATION_NAME = re.compile(
    r"^(?P<id>(?P<version>\d+)[._-](?P<slug>[A-Za-z0-9][A-Za-z0-9_.-]*?))(?P<rollback>\.rollback)?\.(?P<ext>sql)$"
)
VERSIONED = re.compile(r"^(?P<version>\d+)[._-]")
# COPY to or from the client needs a client that feeds or reads it (psql's \copy): not something a migration
# runs. Matched with string literals and comments blanked out; `COPY (query)` can only copy TO.
CLIENT_COPY = re.compile(r"COPY\s+(?:[^(].*\b(?:FROM\s+STDIN|TO\s+STDOUT)\b|\(.*\)\s*TO\s+STDOUT\b)",
                         re.IGNORECASE | re.DOTALL)
LITERALS_AND_COMMENTS = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    """Something wrong with the migrations, named by file (relative to the migrations directory)."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Migration:
    id: str
    version: int
    path: Path
    checksum: str  # sha256 of the file's text with line endings normalised
    statements: tuple[str, ...]
    transactional: bool = True
    depends: tuple[str, ...] = ()
    rollback_statements: tuple[str, ...] | None = None

    @property
    def has_rollback(self) -> bool:
        return self.rollback_statements is not None


@dataclass(frozen=True)
class Catalog:
    directory: Path
    migrations: tuple[Migration, ...]
    problems: tuple[Problem, ...] = field(default=())

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.migrations)

    def get(self, migration_id: str) -> Migration | None:
        return next((m for m in self.migrations if m.id == migration_id), None)


def checksum(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def resolve_directory(directory: Path, project_root: Path) -> tuple[Path | None, list[Problem]]:
    """The migrations directory, resolved; it must exist and lie inside the project (symlinks included)."""
    root = project_root.resolve()
    shown = str(directory)
    resolved = (directory if directory.is_absolute() else root / directory).resolve()
    if not resolved.is_relative_to(root):
        return None, [Problem(shown, f"the migrations directory must lie inside the project ({root})")]
    if not resolved.exists():
        return None, [Problem(shown, "the migrations directory does not exist")]
    if not resolved.is_dir():
        return None, [Problem(shown, "is not a directory")]
    return resolved, []


def read_catalog(directory: Path, project_root: Path) -> Catalog:
    """Read and check every migration file; problems are collected, nothing is executed."""
    resolved, problems = resolve_directory(directory, project_root)
    if resolved is None:
        return Catalog(directory, (), tuple(problems))
    root = project_root.resolve()

    migrations: dict[str, Migration] = {}
    rollbacks: dict[str, Path] = {}
    by_version: dict[int, list[str]] = {}
    for path in sorted(resolved.iterdir()):
        name = path.name
        if name.startswith(".") or path.is_dir():
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            problems.append(Problem(name, "is a symlink to a file outside the project; copy the file instead"))
            continue
        versioned = VERSIONED.match(name)
        match = MIGRATION_NAME.match(name)
        if versioned:
            by_version.setdefault(int(versioned["version"]), []).append(name)
        if match is None:
            if versioned and name.endswith(".py"):
                problems.append(Problem(name, "Python migrations are not run by rds-migrations; write it as SQL"))
            elif versioned:
                problems.append(Problem(name, "not a SQL migration: expected NNNN.slug.sql or NNNN.slug.rollback.sql"))
            elif name.endswith((".sql", ".py")):
                problems.append(
                    Problem(name, "a migration's name must start with a version number: NNNN.slug.sql")
                )
            continue  # READMEs and other notes are allowed beside the migrations
        if match["rollback"]:
            rollbacks[match["id"]] = path
            by_version[int(match["version"])].remove(name)  # a rollback shares its migration's version
            continue
        migration, problem = _read_migration(path, match["id"], int(match["version"]))
        if problem:
            problems.append(problem)
        else:
            migrations[migration.id] = migration

    for version, names in sorted(by_version.items()):
        if len(names) > 1:
            problems.append(
                Problem(
                    names[0],
                    f"version {version} is used by {len(names)} files: {', '.join(names)}; "
                    "give each migration its own version number",
                )
            )
    for migration_id, path in sorted(rollbacks.items()):
        if migration_id not in migrations and not any(p.file == f"{migration_id}.sql" for p in problems):
            problems.append(Problem(path.name, f"rollback file with no migration: {migration_id}.sql does not exist"))
        elif migration_id in migrations:
            _, _, statements = read_sql_migration(str(path))
            migrations[migration_id] = _with_rollback(migrations[migration_id], statements)

    for migration in migrations.values():
        for dependency in migration.depends:
            if dependency not in migrations:
                problems.append(
                    Problem(migration.path.name, f"-- depends: {dependency} names no migration in this directory")
                )
    ordered, cycle = _apply_order(migrations)
    if cycle:
        problems.append(Problem(cycle[0] + ".sql", f"dependency cycle between: {', '.join(cycle)}"))
    if not migrations and not problems:
        problems.append(Problem(str(directory), "the migrations directory holds no migrations (NNNN.slug.sql)"))
    return Catalog(resolved, tuple(ordered), tuple(problems))


def _read_migration(path: Path, migration_id: str, version: int) -> tuple[Migration, Problem | None]:
    text = path.read_text(encoding="utf-8")
    directives, _, statements = read_sql_migration(str(path))
    unknown = None
    transactional_value = directives.get("transactional", "true").strip().lower()
    if transactional_value not in ("true", "false"):
        unknown = Problem(path.name, f"-- transactional: must be true or false, not {transactional_value!r}")
    migration = Migration(
        id=migration_id,
        version=version,
        path=path,
        checksum=checksum(text),
        statements=tuple(s.strip() for s in statements),
        transactional=transactional_value != "false",
        depends=tuple(directives.get("depends", "").split()),
    )
    if not statements:
        return migration, Problem(path.name, "the migration holds no SQL statement")
    for number, statement in enumerate(migration.statements, 1):
        if CLIENT_COPY.match(LITERALS_AND_COMMENTS.sub(" ", after_comments(statement))):
            return migration, Problem(path.name, f"statement {number} copies to or from the client (COPY … FROM "
                                                 "STDIN / TO STDOUT), which a migration cannot do: use INSERT, "
                                                 "or COPY from a file on the database server")
    return migration, unknown


def _with_rollback(migration: Migration, statements: list[str]) -> Migration:
    return replace(migration, rollback_statements=tuple(s.strip() for s in statements))


def _apply_order(migrations: dict[str, Migration]) -> tuple[list[Migration], list[str]]:
    """Topological order by `-- depends:`, ties broken by id (yoyo's order). Returns (order, cycle)."""
    waiting_on = {m.id: {d for d in m.depends if d in migrations} for m in migrations.values()}
    dependents: dict[str, list[str]] = {}
    for mid, deps in waiting_on.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(mid)
    ready = [mid for mid, deps in waiting_on.items() if not deps]
    heapq.heapify(ready)
    order: list[Migration] = []
    while ready:
        current = heapq.heappop(ready)
        order.append(migrations[current])
        for mid in dependents.get(current, ()):
            waiting_on[mid].discard(current)
            if not waiting_on[mid]:
                heapq.heappush(ready, mid)
    cycle = sorted(mid for mid, deps in waiting_on.items() if deps)
    return order, cycle
