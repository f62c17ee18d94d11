"""Restore: one of an environment's own snapshots restored to `<live>-restored-<time>` and swapped in; the
replaced copy is kept as `<live>-old-<time>`. Any tier: it is how production comes back after a bad run,
and what a failure notification tells an operator to run."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tasks.engine.connection import Connection
from tasks.engine.environments import Environment, PgDumpSnapshot
from tasks.engine.errors import ConfigError, RefreshError
from tasks.engine.logs import Log
from tasks.engine.snapshots.backends import make_backend
from tasks.engine.snapshots.dumps import dump_directory, stored_dumps
from tasks.engine.snapshots.naming import Snapshot, SnapshotKind, derived_name, stamp
from tasks.engine.snapshots.rds import api_for
from tasks.engine.snapshots.refresh import DEFAULT_WAIT_SECONDS, live_name
from tasks.engine.snapshots.swap import SwapPlan, SwapResult, replace_from_snapshot

logger = logging.getLogger(__name__)
# What a restore-flow snapshot id may be: ours (`rdsm-...`), any manual one, or an automated one (`rds:...`).
SNAPSHOT_ID = re.compile(r"^(rds:)?[A-Za-z](?!.*--)[A-Za-z0-9-]{0,254}(?<!-)$")


def named_snapshot(environment: Environment, snapshot_id: str, live: str, rds: Any = None) -> Snapshot:
    """The snapshot a restore was asked for; it must be available and taken of this environment."""
    config = environment.snapshot
    if isinstance(config, PgDumpSnapshot):
        for snapshot, record in stored_dumps(dump_directory(config)):
            if snapshot.identifier == snapshot_id:
                if record.get("environment") != environment.name:
                    raise RefreshError(f"dump {snapshot_id} was taken of environment {record.get('environment')!r}, "
                                       f"not {environment.name!r}: nothing was changed")
                return snapshot
        raise RefreshError(f"no complete dump {snapshot_id} in {dump_directory(config)}: nothing was changed")
    found = api_for(config.kind).available_snapshots(rds, snapshot_id=snapshot_id)
    if not found:
        raise RefreshError(f"no available snapshot {snapshot_id}: nothing was changed")
    if found[0].source != live:
        raise RefreshError(f"snapshot {snapshot_id} was taken of {found[0].source}, not {live}: nothing was "
                           "changed (restore it with the environment it belongs to)")
    return found[0]


def check_snapshot_id(snapshot_id: str) -> str:
    # A refused value is never repeated: it may be a secret pasted into the wrong field.
    if not SNAPSHOT_ID.match(snapshot_id):
        raise ConfigError(f"snapshot_id ({len(snapshot_id)} characters) is not a snapshot identifier (a letter "
                          "first, then letters, digits and single hyphens; `rds:` first for an automated one)")
    return snapshot_id


def restore_environment(
    environment: Environment,
    snapshot_id: str,
    credentials: Connection | None,
    *,
    now: datetime | None = None,
    rds_client: Any = None,
    log: Log = logger,
    sleep: Callable[[float], None] = time.sleep,
) -> SwapResult:
    """Restore one of an environment's own snapshots to `<live>-restored-<time>` and swap it in; the replaced
    copy is kept as `<live>-old-<time>`. Works for any tier: it is how production comes back after a bad
    migration. `credentials` are the local kind's (the server the dump is restored into); the RDS kinds call
    the RDS API alone."""
    started = time.monotonic()
    check_snapshot_id(snapshot_id)
    live, when = live_name(environment, credentials), stamp(now)
    kind: SnapshotKind = environment.snapshot.kind  # type: ignore[assignment]
    sep = "_" if kind == "pg_dump" else "-"
    plan = SwapPlan(kind=kind, live=live, new=derived_name(live, "restored", when, sep=sep),
                    old=derived_name(live, "old", when, sep=sep), stamp=when, keep_old=True)
    wait = environment.refresh.max_wait_seconds if environment.refresh else DEFAULT_WAIT_SECONDS
    tags = {"rds-migrations:managed-by": "rds-migrations", "rds-migrations:restored-from": snapshot_id}
    backend = make_backend(plan, credentials, rds_client, wait, tags, log, sleep, own_snapshot=True)
    live_copy = backend.inspect()
    snapshot = named_snapshot(environment, snapshot_id, live, getattr(backend, "rds", None))
    replace_from_snapshot(backend, plan, snapshot, live_copy, prepare=None, log=log)
    return SwapResult(action="restore", environment=environment.name, kind=kind, snapshot=snapshot, live=live,
                      new=plan.new, old=plan.old, old_deleted=False, duration_seconds=time.monotonic() - started)
