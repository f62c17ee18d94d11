"""`rds-migrations new`: the next migration file, numbered after the highest version, chained to the head
with `-- depends:`, from a template that says what to write and refuses to run until it is written.

The template's only statement is a guard, a DO block that raises naming the file. A file of comments alone
would be refused by the catalog, and then `new` (which refuses a directory with problems) could not be run
twice in a row; a harmless placeholder (`SELECT 1;`) would be applied as is by someone who forgot to edit
it. With the guard the catalog reads the file, `plan` lists it, and the rehearsal stops on it with the
file's name and what to do; a run with no rehearsal stops there too with nothing applied (a transactional
migration rolls back; a non-transactional one fails at its first statement, which leaves no dirty mark).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from tasks.engine.errors import UsageError
from tasks.engine.migrations.catalog import MIGRATION_NAME, VERSIONED, Catalog, read_catalog, resolve_directory
from tasks.engine.migrations.hints import migrations_flag

SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
SLUG_RULE = "lowercase letters and digits in words joined by single hyphens"
DEFAULT_WIDTH = 4
# The one problem `read_catalog` reports for a directory with no migration yet: where the first one goes.
_EMPTY_DIRECTORY = "the migrations directory holds no migrations"
GUARD_MARK = "is still the template written by rds-migrations new"


class NewMigrationRefused(UsageError):
    """`rds-migrations new` was asked for a file it will not write: a bad or used slug, a broken directory."""


def new_migration(directory: Path, project_root: Path, slug: str, *, transactional: bool = True,
                  with_rollback: bool = False) -> list[Path]:
    """Write the next migration (and its rollback file when asked); returns the paths written.

    Example: in a directory ending with `0011.add-users-locale.sql`,
    `new_migration(Path("migrations"), Path.cwd(), "add-orders")` writes `0012.add-orders.sql` with
    `-- depends: 0011.add-users-locale`.
    """
    check_slug(slug)
    catalog = _readable_catalog(directory, project_root)
    _check_unused(catalog, slug)
    version, width = next_version(catalog)
    migration_id = f"{version:0{width}d}.{slug}"
    head = catalog.migrations[-1].id if catalog.migrations else None
    files = {catalog.directory / f"{migration_id}.sql": migration_text(migration_id, head, transactional)}
    if with_rollback:
        files[catalog.directory / f"{migration_id}.rollback.sql"] = rollback_text(migration_id, transactional)
    return _write_new(files)


MAX_SLUG = 120  # with the version and .rollback.sql, a name well inside any file system's 255 bytes


def check_slug(slug: str) -> str:
    if len(slug) > MAX_SLUG:
        raise NewMigrationRefused(f"the slug is {len(slug)} characters long: at most {MAX_SLUG} (it names the "
                                  "change in the file name, NNNN.slug.sql: a few words say it)")
    if SLUG.match(slug):
        return slug
    # Accents dropped (ümlaut: umlaut), not the letters; AddUsers: add-users.
    plain = unicodedata.normalize("NFKD", slug).encode("ascii", "ignore").decode("ascii")
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", plain)
    fixed = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-") or "add-orders-status"
    shown = repr(slug) if slug.strip() else "an empty slug"
    raise NewMigrationRefused(f"{shown} is not a migration slug: {SLUG_RULE} (it names the change in the file "
                              f"name, NNNN.slug.sql); try {fixed}")


def next_version(catalog: Catalog) -> tuple[int, int]:
    """(the next version number, the digits to write it with): one more than the highest version, as wide as
    the newest file's number (4 digits in an empty directory; a number that outgrows the width keeps all)."""
    if not catalog.migrations:
        return 1, DEFAULT_WIDTH
    newest = max(catalog.migrations, key=lambda m: m.version)
    digits = VERSIONED.match(newest.path.name)
    return newest.version + 1, len(digits["version"]) if digits else DEFAULT_WIDTH


def migration_text(migration_id: str, head: str | None, transactional: bool) -> str:
    directives = ([f"-- depends: {head}"] if head else []) + ([] if transactional else ["-- transactional: false"])
    if transactional:
        how = [
            "-- Write ONE change (a table, a column, a constraint...) in plain SQL, each statement ending with a",
            "-- semicolon. The file runs in one transaction with its history row: all of it is applied, or none.",
            "-- What cannot run inside a transaction (CREATE INDEX CONCURRENTLY...) goes in a migration of its",
            "-- own, written by `rds-migrations new SLUG --non-transactional`.",
        ]
        example = []
    else:
        how = [
            "-- This file runs OUTSIDE a transaction (the directive below), statement by statement: keep it for",
            "-- what cannot run inside one, such as CREATE INDEX CONCURRENTLY, and put everything else in",
            "-- ordinary migrations. If it stops halfway the statements that ran stay applied and the database",
            "-- is marked dirty until `rds-migrations resolve`: make every statement safe to run again",
            "-- (IF NOT EXISTS, IF EXISTS).",
        ]
        example = [
            "--",
            "-- For example (a failed CONCURRENTLY build leaves an INVALID index, handled by policy.invalid_index):",
            "-- CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_customer_id_idx ON orders (customer_id);",
        ]
    lines = [
        f"-- {migration_id}: say in one line what this changes and why.",
        "--",
        *how,
        "-- Never edit it once it has been applied anywhere (its checksum is kept and the next run is refused):",
        "-- write a new migration instead.",
        *directives,
        *example,
        "",
        *_guard(f"{migration_id}.sql", "the migration"),
    ]
    return "\n".join(lines) + "\n"


def rollback_text(migration_id: str, transactional: bool) -> str:
    if transactional:
        how = ["-- It runs like its migration, in one transaction."]
    else:
        how = ["-- It runs like its migration, outside a transaction, statement by statement: e.g.",
               "-- DROP INDEX CONCURRENTLY IF EXISTS orders_customer_id_idx;"]
    lines = [
        f"-- Rollback of {migration_id}: undo exactly what {migration_id}.sql does, newest change first, so that",
        "-- applying the migration again works (the rehearsal rolls the newest migrations back and applies",
        "-- them again to prove it).",
        *how,
        "",
        *_guard(f"{migration_id}.rollback.sql", "the rollback"),
    ]
    return "\n".join(lines) + "\n"


def _guard(file_name: str, what: str) -> list[str]:
    return [
        f"-- Delete this guard when you write {what}: until then the rehearsal stops here and no run applies it.",
        f"DO $$ BEGIN RAISE EXCEPTION '{file_name} {GUARD_MARK}: write {what} in it and delete this DO block'; "
        "END $$;",
    ]


def _readable_catalog(directory: Path, project_root: Path) -> Catalog:
    resolved, problems = resolve_directory(directory, project_root)
    if resolved is None:
        hint = "" if (project_root / directory).exists() else f" (create it first: mkdir -p {directory})"
        raise NewMigrationRefused(f"{'; '.join(map(str, problems))}{hint}")
    catalog = read_catalog(directory, project_root)
    problems = [p for p in catalog.problems if not p.message.startswith(_EMPTY_DIRECTORY)]
    if problems:
        raise NewMigrationRefused(
            f"{directory} has problems, and a migration numbered on top of them would make it worse; fix them "
            f"first (rds-migrations validate{migrations_flag(directory)} explains each): "
            f"{'; '.join(map(str, problems))}")
    return catalog


def _check_unused(catalog: Catalog, slug: str) -> None:
    for migration in catalog.migrations:
        name = MIGRATION_NAME.match(migration.path.name)
        # `add_users` or `Add-Users` from another tool names the same change as `add-users`
        if name and re.sub(r"[_.]", "-", name["slug"].lower()) == slug:
            raise NewMigrationRefused(f"the slug {slug} is already used by {migration.id}: a migration is one "
                                      "change, so name this one for what it does (a different slug)")


def _write_new(files: dict[Path, str]) -> list[Path]:
    """Each file created, never replaced: if one is there already, nothing is left written."""
    written: list[Path] = []
    try:
        for path, text in files.items():
            with path.open("x", encoding="utf-8", newline="\n") as file:
                file.write(text)
            written.append(path)
    except FileExistsError as exc:
        for path in written:
            path.unlink()
        raise NewMigrationRefused(f"{exc.filename} already exists; it was not replaced and nothing was written") \
            from None
    return written
