"""Validation of 1,000 files (static checks + lint), and a rehearsal of 1 new migration on top of 1,000."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench import generate
from bench.pg import BenchServer
from tasks.engine.environments import Policy
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.rehearsal import rehearse
from tasks.engine.migrations.validation import check_migrations


@dataclass
class ValidationResults:
    files: int
    static_seconds: float
    lint_seconds: float
    total_seconds: float
    findings: int


@dataclass
class RehearsalResults:
    base: int
    cold_seconds: float  # all of them, from nothing (this also fills the cache)
    incremental_seconds: float  # one more, starting from the cached database
    incremental_reused: int
    scratch_seconds: float  # the same one-more rehearsal without the cache: the reference
    catalog_seconds: float  # reading the 1,000 + 1 files (part of the validation step, not of the rehearsal)


def validate_files(base: Path, count: int, repeats: int = 3) -> ValidationResults:
    project = base / f"validate-{count}"
    generate.write_migrations(project / "migrations", count)
    runs = []
    for _ in range(repeats):
        started = time.monotonic()
        _, report = check_migrations(Path("migrations"), project, Policy())
        runs.append((time.monotonic() - started, report))
    total, report = min(runs, key=lambda run: run[0])
    if not report.ok:
        raise RuntimeError(f"the generated migrations do not validate: {report.errors[:3]}")
    return ValidationResults(count, report.timings["static"], report.timings["lint"], total, len(report.findings))


def rehearse_incrementally(server: BenchServer, base: Path, count: int) -> RehearsalResults:
    project = base / f"rehearse-{count}"
    directory = project / "migrations"
    generate.write_migrations(directory, count)
    target = server.connection()
    policy = Policy()

    catalog = read_catalog(directory, project)
    cold = rehearse(catalog, target, policy)
    if cold.failure:
        raise RuntimeError(cold.failure)

    # The new migration, with a rollback file: the rehearsal rolls it back and re-applies it as well.
    generate.write_migrations(directory, 1, start=count + 1)
    generate.write_rollback(directory, count + 1)
    started = time.monotonic()
    catalog = read_catalog(directory, project)
    catalog_seconds = time.monotonic() - started
    incremental = rehearse(catalog, target, policy)
    if incremental.failure:
        raise RuntimeError(incremental.failure)
    scratch = rehearse(catalog, target, policy, cache=False)
    return RehearsalResults(
        base=count,
        cold_seconds=cold.duration_seconds,
        incremental_seconds=incremental.duration_seconds,
        incremental_reused=incremental.reused,
        scratch_seconds=scratch.duration_seconds,
        catalog_seconds=catalog_seconds,
    )
