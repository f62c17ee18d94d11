"""The local kind of snapshot: a `pg_dump -Fc` file with a JSON sidecar (written last, so a dump without
one is incomplete and never used), reused for the same commit like an RDS snapshot."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from tasks.engine.clients import client_binary, server_major
from tasks.engine.connection import Connection
from tasks.engine.embedded import embedded_home
from tasks.engine.environments import PgDumpSnapshot
from tasks.engine.errors import SnapshotError, redact
from tasks.engine.git import GIT_SHA
from tasks.engine.logs import Log
from tasks.engine.processes import child_environment
from tasks.engine.snapshots.naming import (
    HISTORY_TAG,
    NAME_PREFIX,
    TAG_PREFIX,
    UNKNOWN_HISTORY,
    Snapshot,
    minutes_old,
    utc,
)


def dump_directory(config: PgDumpSnapshot) -> Path:
    """Where an environment's pg_dump snapshots live: its `directory` (relative to the working directory),
    or `<RDS_MIGRATIONS_HOME>/snapshots` beside the embedded server."""
    return (Path(config.directory) if config.directory else embedded_home() / "snapshots").resolve()


def take_dump(config: PgDumpSnapshot, connection: Connection, identifier: str, tags: dict[str, str],
              when: datetime, log: Log, reuse: bool = True, taken_after: datetime | None = None) -> Snapshot:
    directory = dump_directory(config)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {
        "identifier": identifier,
        "environment": tags[f"{TAG_PREFIX}environment"],
        "git_sha": tags[f"{TAG_PREFIX}git-sha"],
        "database": connection.dbname,
        "created_at": when.isoformat(),
        "flow_run_id": tags[f"{TAG_PREFIX}flow-run-id"],
        "trigger": tags[f"{TAG_PREFIX}trigger"],
        "history": tags[HISTORY_TAG],
    }
    reusable = _find_reusable_dump(directory, record, taken_after) if reuse else None
    if reusable is not None:
        log.info("Reusing dump %s of database %s (taken %d min ago), taken for the same git SHA at the same "
                 "history", reusable.location, connection.dbname,
                 minutes_old(reusable.created_at, when))
        return reusable

    dump, partial = directory / f"{identifier}.dump", directory / f"{identifier}.dump.partial"
    log.info("Dumping database %s to %s", connection.dbname, dump)
    env = child_environment(**connection.libpq_env(), PGCONNECT_TIMEOUT="10")
    # The password is only in PGPASSWORD, the TLS settings in PGSSLMODE etc.; a table lock held elsewhere fails
    # the dump instead of hanging it.
    dumper = client_binary("pg_dump", connection.tls(), at_least=server_major(connection))
    command = [str(dumper), "--format=custom", "--no-password",
               "--lock-wait-timeout=60s", f"--file={partial}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        password = connection.password.get_secret_value()
        raise SnapshotError(redact(
            f"pg_dump of {connection.describe()} failed (exit {result.returncode}): no snapshot taken; "
            f"{result.stderr.strip()[-2000:]}",
            password,
        ))
    partial.chmod(0o600)
    partial.rename(dump)
    # The sidecar is written last: a dump without one is incomplete and never reused.
    (directory / f"{identifier}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Snapshot(kind="pg_dump", identifier=identifier, source=connection.dbname, reused=False,
                    location=str(dump), created_at=when)


def stored_dumps(directory: Path) -> Iterator[tuple[Snapshot, dict]]:
    """Complete dumps (the JSON sidecar is written last) with their sidecar records; damaged ones skipped."""
    for sidecar in directory.glob(f"{NAME_PREFIX}-*.json"):
        dump = sidecar.with_suffix(".dump")
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            created = datetime.fromisoformat(record["created_at"])
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not one of ours, or damaged: never used
        if dump.is_file():
            yield Snapshot(kind="pg_dump", identifier=sidecar.stem, source=str(record.get("database", "")),
                           reused=True, location=str(dump), created_at=utc(created)), record


def _find_reusable_dump(directory: Path, wanted: dict[str, str], taken_after: datetime | None) -> Snapshot | None:
    if not GIT_SHA.match(wanted["git_sha"]) or wanted["history"] == UNKNOWN_HISTORY:
        return None
    found = [snapshot for snapshot, record in stored_dumps(directory)
             if all(record.get(key) == wanted[key] for key in ("environment", "git_sha", "database", "history"))
             and (taken_after is None or snapshot.created_at >= taken_after)]
    return max(found, key=lambda s: s.created_at) if found else None
