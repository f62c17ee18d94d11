"""A database's schema copied into another: `pg_dump --schema-only` of the source (read-only on it), restored
with `pg_restore` into a scratch database. No rows, no owners, no grants, and none of the migration tools'
own tables: what a rehearsal on the target's own schema starts from, and what `baseline` keeps of the schema
it adopted (the dump's bytes, in custom format)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tasks.engine.connection import Connection
from tasks.engine.embedded import client_binary
from tasks.engine.errors import RdsMigrationsError, redact
from tasks.engine.processes import child_environment

# The tools' own tables (ours, yoyo's, Knex's, Flyway's, golang-migrate's) stay out of every copy.
TOOL_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock", "_rds_migrations*",
               "knex_migrations", "knex_migrations_lock", "flyway_schema_history", "schema_migrations")


class SchemaCopyError(RdsMigrationsError):
    """pg_dump or pg_restore failed: the text says which, on what, and its own words (without a password)."""


def dump_schema(source: Connection) -> bytes:
    """The schema of `source` in pg_dump's custom format. Reads only."""
    with tempfile.TemporaryDirectory(prefix="rds-migrations-schema-") as work:
        path = Path(work) / "schema.dump"
        excluded = [f"--exclude-table=*.{table}" for table in TOOL_TABLES]
        _run(source, [str(client_binary("pg_dump", source.tls())), "--schema-only", "--format=custom",
                      "--no-owner", "--no-privileges", "--no-password", "--lock-wait-timeout=60s", *excluded,
                      f"--file={path}"],
             "pg_dump of")
        return path.read_bytes()


def restore_schema(dump: bytes, target: Connection) -> None:
    """Restore a `dump_schema` dump into `target` (an empty scratch database); every statement must pass, in one
    transaction (one commit instead of one per object: 300 tables with an index each restore in a third of
    the time)."""
    with tempfile.TemporaryDirectory(prefix="rds-migrations-schema-") as work:
        path = Path(work) / "schema.dump"
        path.write_bytes(dump)
        _run(target, [str(client_binary("pg_restore", target.tls())), "--no-owner", "--no-privileges",
                      "--single-transaction", "--no-password", f"--dbname={target.dbname}", "--", str(path)],
             "pg_restore into")


def _run(connection: Connection, command: list[str], what: str) -> None:
    env = child_environment(**connection.libpq_env(), PGCONNECT_TIMEOUT="10")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SchemaCopyError(redact(f"{what} {connection.describe()} failed (exit {done.returncode}): "
                                     f"{done.stderr.strip()[-2000:]}", connection.password.get_secret_value()))
