"""A database's schema copied into another: `pg_dump --schema-only` of the source (read-only on it), restored
with `pg_restore` into a scratch database. No rows, no owners, no grants, and none of the migration tools'
own tables: what a rehearsal on the target's own schema starts from, and what `baseline` keeps of the schema
it adopted (the dump's bytes, in custom format)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tasks.engine.clients import client_binary, dumped_by
from tasks.engine.connection import Connection, connected
from tasks.engine.errors import RdsMigrationsError, redact
from tasks.engine.migrations.adopt import renamed_tool_tables
from tasks.engine.migrations.schema import TOOL_TABLES, is_ignored
from tasks.engine.processes import child_environment

# The sequences that belong to a table (serial columns), with the table they belong to: pg_dump leaves out a
# table it is told to, and dumps its serial sequences anyway, free-standing.
OWNED_SEQUENCES_SQL = """
SELECT sn.nspname, s.relname, tn.nspname, t.relname
FROM pg_class s
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE s.relkind = 'S'
"""


class SchemaCopyError(RdsMigrationsError):
    """pg_dump or pg_restore failed: the text says which, on what, and its own words (without a password)."""


def dump_schema(source: Connection) -> bytes:
    """The schema of `source` in pg_dump's custom format, without the migration tools' own tables (ours,
    yoyo's, Knex's, Flyway's, golang-migrate's: schema.TOOL_TABLES, and a tool's history found under another
    name) or their serial sequences. Reads only."""
    with connected(source, application_name="rds-migrations schema copy") as conn:
        renamed = renamed_tool_tables(conn)
        sequences = [(schema, name) for schema, name, table_schema, table in conn.execute(OWNED_SEQUENCES_SQL)
                     if is_ignored(table_schema, table) or (table_schema, table) in renamed]
        server = conn.info.server_version // 10000  # pg_dump refuses a server newer than itself
    with tempfile.TemporaryDirectory(prefix="rds-migrations-schema-") as work:
        path = Path(work) / "schema.dump"
        excluded = [f"--exclude-table=*.{table}" for table in TOOL_TABLES]
        excluded += [f"--exclude-table={_literal(schema)}.{_literal(name)}" for schema, name in [*renamed, *sequences]]
        dumper = client_binary("pg_dump", source.tls(), at_least=server)
        _run(source, [str(dumper), "--schema-only", "--format=custom", "--no-owner", "--no-privileges",
                      "--no-password", "--lock-wait-timeout=60s", *excluded, f"--file={path}"],
             "pg_dump of")
        return path.read_bytes()


def restore_schema(dump: bytes, target: Connection) -> None:
    """Restore a `dump_schema` dump into `target` (an empty scratch database); every statement must pass, in one
    transaction (one commit instead of one per object: 300 tables with an index each restore in a third of
    the time)."""
    with tempfile.TemporaryDirectory(prefix="rds-migrations-schema-") as work:
        path = Path(work) / "schema.dump"
        path.write_bytes(dump)
        restore = client_binary("pg_restore", target.tls(), at_least=dumped_by(path))  # as new as the dump's
        _run(target, [str(restore), "--no-owner", "--no-privileges",
                      "--single-transaction", "--no-password", f"--dbname={target.dbname}", "--", str(path)],
             "pg_restore into")


def _literal(name: str) -> str:
    """A name as a pg_dump pattern that matches it alone (quoted: no wildcard, case kept)."""
    return '"' + name.replace('"', '""') + '"'


def _run(connection: Connection, command: list[str], what: str) -> None:
    env = child_environment(**connection.libpq_env(), PGCONNECT_TIMEOUT="10")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SchemaCopyError(redact(f"{what} {connection.describe()} failed (exit {done.returncode}): "
                                     f"{done.stderr.strip()[-2000:]}", connection.password.get_secret_value()))
