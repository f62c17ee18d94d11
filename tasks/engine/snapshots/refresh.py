"""Staging refresh: the newest available snapshot of the source environment (production), or a fresh one,
restored next to staging with staging's settings; production's master password replaced by staging's; the
masking SQL run in one transaction; then the names swapped (staging → `<id>-old-<time>`, new → staging) and
the old copy deleted unless the environment keeps it.

Three steps, so that a flow shows each (see pipelines.py): `plan_refresh` checks everything it can before
anything is created; a snapshot is chosen (`newest_snapshot`) or taken (take.py); `refresh_from` restores,
masks and swaps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from tasks.engine.connection import Connection
from tasks.engine.credentials import read_url_from_env
from tasks.engine.environments import (
    RESTORE_WAIT_SECONDS,
    EmbeddedCredentials,
    Environment,
    PgDumpSnapshot,
    UrlFromEnvCredentials,
)
from tasks.engine.errors import DatabaseUnreachable, RefreshError
from tasks.engine.logs import Log
from tasks.engine.snapshots.backends import make_backend
from tasks.engine.snapshots.dumps import dump_directory, stored_dumps
from tasks.engine.snapshots.naming import Snapshot, SnapshotKind, derived_name, stamp
from tasks.engine.snapshots.rds import api_for
from tasks.engine.snapshots.swap import Backend, LiveCopy, SwapPlan, SwapResult, describe_error, replace_from_snapshot

logger = logging.getLogger(__name__)

CONNECT_ATTEMPTS, CONNECT_RETRY_SECONDS = 20, 15  # a restored instance may refuse connections for a while
DEFAULT_WAIT_SECONDS = RESTORE_WAIT_SECONDS  # a restore of an environment without [refresh]


@dataclass(frozen=True)
class Replacement:
    """One restore-and-swap of an environment's database, checked before anything is created: the names it
    touches, the backend that makes the calls, the live copy's settings, the masking files (refresh only)."""

    environment: str
    plan: SwapPlan
    backend: Backend
    live: LiveCopy
    masking_files: tuple[Path, ...] = ()

    @property
    def kind(self) -> SnapshotKind:
        return self.plan.kind


def plan_refresh(
    environment: Environment,
    source: Environment,
    credentials: Connection,
    *,
    rds_client: Any = None,
    project_root: Path | None = None,
    now: datetime | None = None,
    log: Log = logger,
    sleep: Callable[[float], None] = time.sleep,
) -> Replacement:
    """Everything that can be checked before a refresh creates anything: the environments, the names, the
    live copy and its master user, the masking files. `credentials` are staging's own (its secret)."""
    config = environment.refresh
    if config is None:
        raise RefreshError(f"environment {environment.name} has no [refresh] section: it is never refreshed")
    if source.name != config.source_environment or source.snapshot.kind != environment.snapshot.kind:
        raise RefreshError(f"environment {environment.name} is refreshed from {config.source_environment!r} of "
                           f"its own kind ({environment.snapshot.kind}), not from {source.name!r} "
                           f"({source.snapshot.kind})")
    kind: SnapshotKind = environment.snapshot.kind  # type: ignore[assignment]
    live, when = live_name(environment, credentials), stamp(now)
    sep = "_" if kind == "pg_dump" else "-"
    plan = SwapPlan(kind=kind, live=live, new=derived_name(live, "new", when, sep=sep),
                    old=derived_name(live, "old", when, sep=sep), stamp=when, keep_old=config.keep_old,
                    pattern=config.identifier_pattern, protected=live_name(source, None))
    files = masking_files(config.masking_dir, project_root)
    tags = {"rds-migrations:managed-by": "rds-migrations", "rds-migrations:refreshed-from": source.name}
    backend = make_backend(plan, credentials, rds_client, config.max_wait_seconds, tags, log, sleep)
    live_copy = backend.inspect()
    if kind != "pg_dump" and live_copy.master_username != credentials.user:
        raise RefreshError(f"the secret of {environment.name} is for user {credentials.user!r}, but the master user "
                           f"of {live} is {live_copy.master_username!r}: the refresh resets the master password to "
                           "the secret's, so it needs the master user's secret; nothing was changed")
    return Replacement(environment.name, plan, backend, live_copy, tuple(files))


def refresh_from(replacement: Replacement, snapshot: Snapshot, credentials: Connection, *,
                 mask: Callable[[Connection, list[Path]], None] | None = None, log: Log = logger,
                 sleep: Callable[[float], None] = time.sleep) -> SwapResult:
    """Restore `snapshot` next to staging, give it staging's password, mask it, swap it in. `mask` runs the
    masking files (default: `run_masking`)."""
    started = time.monotonic()
    backend, files = replacement.backend, list(replacement.masking_files)

    def prepare(name: str) -> None:
        backend.reset_master_password(name, credentials.password)
        target = backend.connection_to(name, credentials)
        if mask is None:
            run_masking(target, files, log=log, sleep=sleep)
        else:
            mask(target, files)

    plan = replacement.plan
    old_deleted = replace_from_snapshot(backend, plan, snapshot, replacement.live, prepare=prepare, log=log)
    return SwapResult(action="refresh", environment=replacement.environment, kind=plan.kind, snapshot=snapshot,
                      live=plan.live, new=plan.new, old=plan.old, old_deleted=old_deleted,
                      masking_files=tuple(p.name for p in files), duration_seconds=time.monotonic() - started)


def newest_snapshot(source: Environment, rds: Any = None) -> Snapshot:
    """The newest available manual or automated snapshot of the source environment."""
    config = source.snapshot
    if isinstance(config, PgDumpSnapshot):
        directory = dump_directory(config)
        found = [s for s, record in stored_dumps(directory) if record.get("environment") == source.name]
        where = f"dump of environment {source.name} in {directory}"
    else:
        source_id = live_name(source, None)
        found = api_for(config.kind).available_snapshots(rds, source_id=source_id)
        where = f"snapshot of {source_id}"
    if not found:
        raise RefreshError(f"no available {where}: nothing was changed; take one (run the production flow, or "
                           "set refresh.use_fresh_snapshot = true)")
    return max(found, key=lambda s: s.created_at)


def masking_files(directory: Path, project_root: Path | None = None) -> list[Path]:
    path = (project_root or Path.cwd()) / directory
    files = sorted(p for p in path.glob("*.sql") if p.is_file()) if path.is_dir() else []
    if not files:
        raise RefreshError(f"no masking SQL (*.sql) in {path}: refusing to copy production data unmasked; "
                           "nothing was changed")
    return files


def run_masking(connection: Connection, files: list[Path], *, log: Log = logger,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """Run the masking files in name order in ONE transaction: all of them apply, or none."""
    texts = [(path.name, path.read_text(encoding="utf-8")) for path in files]
    conn = _connect_when_ready(connection, log, sleep)
    try:
        with conn.transaction():
            for name, text in texts:
                log.info("Masking: %s", name)
                try:
                    conn.execute(text)  # type: ignore[arg-type]  # a file of statements, no parameters
                except psycopg.Error as exc:
                    raise RefreshError(f"masking file {name} failed: {describe_error(exc)}; the masking "
                                       "transaction was rolled back") from None
    finally:
        conn.close()


def _connect_when_ready(connection: Connection, log: Log, sleep: Callable[[float], None]) -> psycopg.Connection:
    """A restored instance, or one whose password was just reset, may refuse connections for a while."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return connection.connect(application_name="rds-migrations refresh")
        except DatabaseUnreachable as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise
            log.info("%s is not accepting connections yet (%s); retrying in %s s", connection.describe(),
                     "authentication failed" if exc.auth_failed else exc.sqlstate, CONNECT_RETRY_SECONDS)
            sleep(CONNECT_RETRY_SECONDS)
    raise AssertionError("unreachable")


def live_name(environment: Environment, credentials: Connection | None) -> str:
    """What a refresh or restore replaces: the RDS instance or cluster, or (local kind) the database."""
    config = environment.snapshot
    if config.kind == "rds_instance":
        return config.instance_id
    if config.kind == "aurora_cluster":
        return config.cluster_id
    if config.kind == "pg_dump":
        if credentials is not None:
            return credentials.dbname
        if isinstance(environment.credentials, EmbeddedCredentials):
            return environment.credentials.database
        if isinstance(environment.credentials, UrlFromEnvCredentials):
            return read_url_from_env(environment.credentials).dbname
        raise RefreshError(f"environment {environment.name}: the local kind needs embedded or url_env credentials")
    raise RefreshError(f"environment {environment.name} has no snapshots (snapshot.kind = 'none'): nothing to "
                       "restore or refresh")
