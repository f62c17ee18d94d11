"""The migrations directory: yoyo SQL files read into typed `Migration` values, in apply order.

yoyo's format is kept: `NNNN.slug.sql`, an optional `NNNN.slug.rollback.sql`, leading-comment directives
`-- depends: <id> ...` and `-- transactional: false`, statements split as PostgreSQL's scanner splits them
(split.py). Every problem is collected with the file it is about, so one run tells the user everything that
is wrong.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import stat
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from tasks.engine.errors import UsageError
from tasks.engine.migrations.split import read_text, split, text_of
from tasks.engine.migrations.sqltext import after_comments, comment_only
from tasks.engine.migrations.statements import breaks_the_session, copies_with_the_client, ends_transaction

# A migration id is the file name without `.sql`: a version number, a separator, then a slug.
MIGRATION_NAME = re.compile(
    r"^(?P<id>(?P<version>\d+)[._-](?P<slug>[A-Za-z0-9][A-Za-z0-9_.-]*?))(?P<rollback>\.rollback)?\.(?P<ext>sql)$"
)
VERSIONED = re.compile(r"^(?P<version>\d+)[._-]")
# golang-migrate's pair, {version}_{title}.up.sql and .down.sql: its down file is our rollback file.
GOLANG_MIGRATE = re.compile(r"^(?P<version>\d+)_(?P<title>.*)\.(?P<direction>up|down)\.sql$")
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
    spans: tuple[tuple[int, int], ...] = ()  # (first line, last line) of each statement in the file
    scanned: bool = True  # PostgreSQL's scanner read the file (False: a quote or comment left open; see split)

    def statement_at(self, line: int) -> str | None:
        """The statement the file's `line` is part of (None when it is outside every statement)."""
        for (first, last), statement in zip(self.spans, self.statements, strict=False):
            if first <= line <= last:
                return statement
        return None

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
        return self._by_id.get(migration_id)

    def index_of(self, name: str) -> int | None:
        """Where the migration `name` (an id, or a version number) sorts; None when it names none."""
        for index, migration in enumerate(self.migrations):
            if name == migration.id or (name.isdigit() and int(name) == migration.version):
                return index
        return None

    def named(self, name: str, option: str, *, zero: str = "") -> int:
        """`index_of`, for a command's `option` (`--target`, `--to`, `--through`): a name that matches nothing
        is the user's mistake, refused before any database is read. `zero` says what `0` means, if anything."""
        index = self.index_of(name)
        if index is None:
            newest = f"; the newest is {self.migrations[-1].id}" if self.migrations else ""
            # Repeated only when it reads as a version or an id: anything else may be a secret in the wrong field.
            shown = repr(name) if VERSIONED.match(name) or name.isdigit() else f"({len(name)} characters, not repeated)"
            raise UsageError(f"{option} {shown} names no migration in {self.directory.name}/ (a migration id or its "
                             f"version number{newest}{zero})")
        return index

    @cached_property
    def _by_id(self) -> dict[str, Migration]:
        return {m.id: m for m in self.migrations}


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
    paths = sorted(resolved.iterdir())
    # golang-migrate's pairs: an up file and a down file of one title (read as ours, the down file would run
    # forward), of one version or not (a down file renumbered, as the duplicate-version message once advised).
    # A file of either name without its partner is a migration of ours (`0005_warm.up`, `0002_scale.down`), as it
    # always was.
    halves = [(found["title"], found["direction"])
              for found in map(GOLANG_MIGRATE.match, (path.name for path in paths)) if found]
    paired = {title for title, direction in halves if direction == "down" and (title, "up") in halves}
    for path in paths:
        name = path.name
        if name.startswith(".") or path.is_dir():
            continue
        if (found := GOLANG_MIGRATE.match(name)) and found["title"] in paired:
            problems.append(Problem(name, _golang_migrate_name(found)))
            continue
        if path.is_symlink() and not path.exists():
            problems.append(Problem(name, f"is a symbolic link to {path.readlink()}, which does not exist: point it "
                                          "at the file, or remove it"))
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            problems.append(Problem(name, "is a symlink to a file outside the project; copy the file instead"))
            continue
        versioned = VERSIONED.match(name)
        match = MIGRATION_NAME.match(name)
        spaced = bool(re.search(r"\s", name))
        if versioned and not spaced and not (match and match["rollback"]):  # a rollback shares its version
            by_version.setdefault(int(versioned["version"]), []).append(name)
        if match is None:
            if spaced and name.endswith(".sql"):
                problems.append(Problem(name, "the file name holds white space; rename it NNNN.slug.sql (letters, "
                                              "digits, hyphens, dots and underscores)"))
            elif versioned and name.endswith(".py"):
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
            continue
        migration, found = _read_migration(path, match["id"], int(match["version"]))
        problems += found
        if not found:
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
            if (why := _not_a_file(path)) is not None:
                problems.append(Problem(path.name, why))
                continue
            try:
                text = read_text(path)
            except UnicodeDecodeError as exc:
                problems.append(Problem(path.name, _not_utf8(exc)))
                continue
            except OSError as exc:
                problems.append(Problem(path.name, _unreadable(exc)))
                continue
            undo = split(text)
            if undo.refusal or all(comment_only(statement) for statement in undo.statements):
                problems.append(Problem(path.name, undo.refusal or (
                    f"the rollback file holds no SQL statement ({'only comments' if text.strip() else 'nothing'})"
                    f": a rollback would record {migration_id} as undone and undo nothing; write what undoes it, "
                    "or delete the file")))
                continue
            migrations[migration_id] = _with_rollback(migrations[migration_id], undo.statements)

    # Files that are there but not read as migrations (a problem's file may carry its line: 0001.x.sql:3).
    refused = {p.file.partition(":")[0].removesuffix(".sql") for p in problems}
    for migration in migrations.values():
        for dependency in migration.depends:
            if dependency in refused:
                problems.append(Problem(migration.path.name, f"-- depends: {dependency}, which has an error of its "
                                                             "own (above): fix that one first"))
            elif dependency not in migrations:
                problems.append(
                    Problem(migration.path.name, f"-- depends: {dependency} names no migration in this directory")
                )
    ordered, cycle = _apply_order(migrations)
    if cycle:
        problems.append(Problem(cycle[0] + ".sql", f"dependency cycle between: {', '.join(cycle)}"))
    if not migrations and not problems:
        problems.append(Problem(str(directory), "the migrations directory holds no migrations (NNNN.slug.sql)"))
    return Catalog(resolved, tuple(ordered), tuple(problems))


def _golang_migrate_name(found: re.Match[str]) -> str:
    """The name a golang-migrate file takes here: the up file NNNN.slug.sql, the down file its rollback file."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", found["title"])  # AddUsers: add-users
    migration_id = f"{found['version']}.{re.sub(r'[^a-z0-9]+', '-', words.lower()).strip('-') or 'migration'}"
    if found["direction"] == "up":
        return (f"golang-migrate's up file: rds-migrations reads NNNN.slug.sql (its down file as "
                f"NNNN.slug.rollback.sql); rename it {migration_id}.sql")
    return (f"golang-migrate's down file, which would be read as a migration of its own and run forward: rename "
            f"it {migration_id}.rollback.sql (the rollback file of {migration_id}.sql)")


def _not_utf8(exc: UnicodeDecodeError) -> str:
    line = exc.object[: exc.start].count(b"\n") + 1
    return f"is not valid UTF-8 (line {line}): save it as UTF-8"


def _unreadable(exc: OSError) -> str:
    return (f"cannot be read ({exc.strerror or type(exc).__name__}): make it a regular file the user running "
            "rds-migrations can read")


def _not_a_file(path: Path) -> str | None:
    """Why `path` is not read, when it is not a regular file: opening a FIFO would wait for a writer forever."""
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError as exc:
        return _unreadable(exc)
    return None if regular else "is not a regular file (a FIFO, a socket or a device): make it a file"


def _read_migration(path: Path, migration_id: str, version: int) -> tuple[Migration, list[Problem]]:
    if (why := _not_a_file(path)) is not None:
        return Migration(migration_id, version, path, "", ()), [Problem(path.name, why)]
    try:
        raw = path.read_bytes()
        text = text_of(raw)
    except UnicodeDecodeError as exc:
        return Migration(migration_id, version, path, "", ()), [Problem(path.name, _not_utf8(exc))]
    except OSError as exc:  # a socket or a FIFO named like a migration, a file this user may not read
        return Migration(migration_id, version, path, "", ()), [Problem(path.name, _unreadable(exc))]
    found = split(text)
    directives, statements = found.directives, found.statements
    problems = [Problem(path.name, found.refusal)] if found.refusal else []
    transactional_value = directives.get("transactional", "true").strip().lower()
    if transactional_value not in ("true", "false"):
        problems.append(Problem(path.name, f"-- transactional: must be true or false, not {transactional_value!r}"))
    migration = Migration(
        id=migration_id,
        version=version,
        path=path,
        checksum=checksum(raw.decode("utf-8")),  # the file as it is, a byte order mark included
        statements=tuple(s.strip() for s in statements),
        transactional=transactional_value != "false",
        depends=tuple(directives.get("depends", "").split()),
        scanned=found.scanned,
    )
    if found.refusal:  # what else is wrong with it is read once that is mended
        return migration, problems
    if all(comment_only(statement) for statement in migration.statements):
        what = "only comments" if text.strip() else "nothing"
        return migration, [Problem(path.name, f"the migration holds no SQL statement ({what})")]
    lines = _lines(text, migration.statements)
    ends = [*(max(first, following - 1) for first, following in zip(lines, lines[1:], strict=False)),
            text.count("\n") + 1]
    migration = replace(migration, spans=tuple(zip(lines, ends, strict=True)))
    for number, statement in enumerate(migration.statements, 1):
        where = f"{path.name}:{lines[number - 1]}"
        if copies_with_the_client(statement):
            problems.append(Problem(path.name, f"statement {number} copies to or from the client (COPY … FROM "
                                               "STDIN / TO STDOUT), which a migration cannot do: use INSERT, "
                                               "or COPY from a file on the database server"))
        ending = ends_transaction(statement) if migration.transactional else None
        if ending:
            problems.append(Problem(where, f"statement {number} is `{ending}`: it would end the transaction this "
                                           "migration runs in with its history rows, so part of it would be applied "
                                           "unrecorded or undone unnoticed; remove it (the tool commits each "
                                           "migration itself), or make the file `-- transactional: false`"))
        breaking = breaks_the_session(statement)
        if breaking:
            problems.append(Problem(where, f"statement {number}: {breaking}, and other runs could then migrate "
                                           "at the same time; remove it"))
    return migration, problems


def _lines(text: str, statements: tuple[str, ...]) -> list[int]:
    """The line each statement starts on in `text` (found in order; 0 when not found as written)."""
    lines, position, line = [], 0, 1
    for statement in statements:
        found = text.find(statement, position)
        if found < 0:
            lines.append(0)
            continue
        line += text.count("\n", position, found)
        start = statement.find(after_comments(statement)[:20]) if after_comments(statement) else 0
        lines.append(line + statement.count("\n", 0, max(start, 0)))
        position = found
    return lines


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
