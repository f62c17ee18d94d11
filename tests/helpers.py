"""Small helpers for tests: write a migrations directory inside a project."""

from __future__ import annotations

from pathlib import Path


def write_migrations(project: Path, files: dict[str, str], directory: str = "migrations") -> Path:
    """Write `{"0001.create-x.sql": "...", ...}` into `project/directory` and return the directory."""
    target = project / directory
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (target / name).write_text(text, encoding="utf-8")
    return target
