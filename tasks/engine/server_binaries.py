"""Where the embedded server's PostgreSQL binaries come from, and who runs them.

The machine's own (`/usr/lib/postgresql/<v>/bin`, or `initdb` on PATH), newest first, else the `pgserver`
wheel's bundled PostgreSQL 16; `RDS_MIGRATIONS_PG_BINDIR` names one. PostgreSQL refuses to run as root: as root
the server runs as an unprivileged user (`postgres` when it exists, else one we create) through `runuser`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
from pathlib import Path

from tasks.engine.errors import EmbeddedServerError
from tasks.engine.processes import child_environment

SERVER_USER_FALLBACK = "rdsmigrations"


@functools.cache
def program_version(bindir: Path, program: str = "postgres") -> tuple[int, ...]:
    out = subprocess.run([str(bindir / program), "--version"], capture_output=True, text=True,
                         env=child_environment()).stdout
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    return tuple(int(g) for g in match.groups() if g) if match else (0,)


def candidate_bindirs() -> list[Path]:
    """Every directory holding PostgreSQL server binaries, newest version first."""
    found: list[Path] = []
    configured = os.environ.get("RDS_MIGRATIONS_PG_BINDIR")
    if configured:
        found.append(Path(configured))
    found += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    # Found, not imported: importing pgserver sets up platformdirs and warns on a machine without XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        found.append(Path(spec.origin).parent / "pginstall" / "bin")
    unique = []
    for path in found:
        if (path / "postgres").exists() and (path / "initdb").exists() and path not in unique:
            unique.append(path)
    return sorted(unique, key=program_version, reverse=True) if not configured else unique


def server_bindir() -> Path:
    dirs = candidate_bindirs()
    if not dirs:
        raise EmbeddedServerError(
            "no PostgreSQL server binaries found: install postgresql (apt-get install postgresql) "
            "or the pgserver wheel (uv sync installs it), or set RDS_MIGRATIONS_PG_BINDIR"
        )
    if os.environ.get("RDS_MIGRATIONS_PG_BINDIR"):
        return dirs[0]
    # Prefer the machine's own server; pgserver's bundled one is the fallback.
    system = [d for d in dirs if "pgserver" not in str(d)]
    return (system or dirs)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_user() -> str | None:
    """None when we are not root; otherwise the unprivileged user that runs the server."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVER_USER_FALLBACK):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER_FALLBACK],
        check=True,
        capture_output=True,
    )
    return SERVER_USER_FALLBACK
