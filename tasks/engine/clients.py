"""Which PostgreSQL client program (pg_dump, pg_restore, psql) runs for a connection.

A machine may hold several: the server directories (`/usr/lib/postgresql/<v>/bin`), client-only installs, one on
PATH, and pgserver's, which is built without SSL. The one chosen must be able to do the job and to honour the
connection's TLS settings exactly:
- new enough: pg_dump refuses a server newer than itself, and pg_restore an archive made by a newer pg_dump;
- built with SSL unless the mode is `disable`: libpq's default (`prefer`) uses TLS when the server offers it, as
  psycopg does, where a client built without SSL would connect in the clear. A machine with no such client
  connects in the clear only where the mode allows it (`prefer`, `allow`); a mode that requires TLS is refused;
- `sslnegotiation` needs libpq 17 and `sslrootcert=system` (the operating system's certificates) libpq 16, both
  with SSL: a client that lacks them would refuse them, or read "system" as a file name.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import EmbeddedServerError
from tasks.engine.processes import child_environment
from tasks.engine.server_binaries import candidate_bindirs, program_version


def client_binary(name: str, tls: Mapping[str, str] | None = None, *, at_least: int | None = None) -> Path:
    """The newest `name` whose major version is at least `at_least` (the server's for pg_dump, the archive's
    pg_dump's for pg_restore; when none is, the newest: its own error then says why) and whose libpq honours
    `tls`, a connection's libpq TLS settings, with PGSSLMODE and PGSSLROOTCERT where it names none."""
    tls = tls or {}
    mode = tls.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer"
    root = tls.get("sslrootcert") or os.environ.get("PGSSLROOTCERT")
    found = shutil.which(name)
    binaries = [b for b in dict.fromkeys(_clients(name) + ([Path(found)] if found else [])) if b.exists()]
    if not binaries:
        raise EmbeddedServerError(f"{name} not found: install postgresql-client or the pgserver wheel")
    if at_least is not None:
        binaries = [b for b in binaries if program_version(b.parent, b.name)[0] >= at_least] or binaries
    if mode == "disable":
        return binaries[0]
    ssl = "host=/nonexistent sslmode=require" + (" sslnegotiation=postgres" if "sslnegotiation" in tls else "")
    able = [b for b in binaries if not _libpq_answer(b, ssl)[0]]
    if root == "system":
        able = [b for b in able if _libpq_answer(b, f"{ssl} sslrootcert=system")[1]]
    if able:
        return able[0]
    if mode in ("prefer", "allow") and root != "system" and "sslnegotiation" not in tls:
        return binaries[0]
    needs = ("sslnegotiation needs libpq 17 or later" if "sslnegotiation" in tls else
             "sslrootcert=system needs libpq 16 or later" if root == "system" else f"sslmode {mode} needs SSL")
    newer = f" of version {at_least} or later" if at_least else ""
    raise EmbeddedServerError(f"no {name}{newer} here can honour the connection's TLS settings ({needs}, and "
                              "pgserver's client is built without SSL): install a postgresql-client that has them"
                              + (", or name a root certificate file" if root == "system" else ""))


def server_major(connection: Connection) -> int | None:
    """The server's major version (pg_dump refuses a server newer than itself); None when it cannot be asked:
    the program then says why, in its own words."""
    try:
        with connected(connection, application_name="rds-migrations version") as conn:
            return conn.info.server_version // 10000
    except Exception:  # noqa: BLE001 - the dump's own error is the one to show
        return None


def dumped_by(archive: Path) -> int | None:
    """The major version of the pg_dump that made a custom-format archive (pg_restore must be at least as new),
    read by the newest pg_restore here; None when it cannot be read."""
    reader = client_binary("pg_restore", {"sslmode": "disable"})
    listed = subprocess.run([str(reader), "--list", "--", str(archive)], capture_output=True, text=True,
                            env=child_environment(), timeout=60)
    match = re.search(r"Dumped by pg_dump version: (\d+)", listed.stdout)
    return int(match.group(1)) if match else None


def _clients(name: str) -> list[Path]:
    """`name` in every server directory and every client-only install (postgresql-client-NN), newest first."""
    dirs = [*candidate_bindirs(), *Path("/usr/lib/postgresql").glob("*/bin")]
    binaries = list(dict.fromkeys(d / name for d in dirs if (d / name).exists()))
    return sorted(binaries, key=lambda binary: program_version(binary.parent, binary.name), reverse=True)


@functools.cache
def _libpq_answer(binary: Path, conninfo: str) -> tuple[bool, bool]:
    """How the client's libpq takes `conninfo` before it connects (to nowhere): (refuses it: no SSL or an
    unknown option; knows sslrootcert=system: libpq 16 and later refuse a weak sslmode with it up front)."""
    # The clients of one directory share one libpq, and pg_dump is the one that connects before reading anything.
    client = binary.with_name("pg_dump") if binary.with_name("pg_dump").exists() else binary
    result = subprocess.run([str(client), f"--dbname={conninfo}"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=30, env=child_environment(PGCONNECT_TIMEOUT="2"))
    refused = "not compiled in" in result.stderr or "invalid connection option" in result.stderr
    return refused, "weak sslmode" in result.stderr
