"""Generated migrations: N small yoyo SQL files, a table and an index each (the shape the issue measures)."""

from __future__ import annotations

from pathlib import Path


def table_name(number: int) -> str:
    return f"bench_t{number:05d}"


def migration_path(directory: Path, number: int) -> Path:
    return directory / f"{number:05d}.bench-t{number:05d}.sql"


def write_migrations(directory: Path, count: int, start: int = 1) -> list[Path]:
    """Write migrations `start` .. `start + count - 1`; return their paths, in apply order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(start, start + count):
        table = table_name(number)
        path = migration_path(directory, number)
        path.write_text(
            f"-- Benchmark migration {number}: a table and an index.\n"
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL);\n"
            f"CREATE INDEX {table}_name_idx ON {table} (name);\n",
            encoding="utf-8",
        )
        paths.append(path)
    return paths


def write_rollback(directory: Path, number: int) -> Path:
    """A rollback file for generated migration `number` (dropping its table drops its index)."""
    path = migration_path(directory, number)
    rollback = path.with_name(path.name.removesuffix(".sql") + ".rollback.sql")
    rollback.write_text(f"DROP TABLE {table_name(number)};\n", encoding="utf-8")
    return rollback
