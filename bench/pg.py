"""The benchmark's PostgreSQL: one throwaway local server (password auth, like RDS), fresh databases on it."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from urllib.parse import quote

from pydantic import SecretStr

from tasks.engine.connection import Connection, connected
from tasks.engine.embedded import LocalServer

# A password with URL-reserved characters: every tool must be given it correctly (yoyo: URL-quoted).
PASSWORD = "bench-pw@x:/?#%"


class BenchServer:
    def __init__(self, base: Path) -> None:
        self.local = LocalServer(base / "postgres", password=SecretStr(PASSWORD))
        self._names = itertools.count(1)

    def start(self) -> None:
        self.local.start()

    def stop(self) -> None:
        self.local.destroy()

    @property
    def bindir(self) -> Path:
        return self.local.bindir

    def version(self) -> str:
        with connected(self.local.connection()) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]

    def fresh_database(self, prefix: str) -> Connection:
        return self.local.ensure_database(f"{prefix}_{next(self._names)}")

    def drop(self, connection: Connection) -> None:
        self.local.drop_database(connection.dbname)

    def connection(self, dbname: str = "postgres") -> Connection:
        return self.local.connection(dbname)


def yoyo_url(connection: Connection) -> str:
    password = quote(connection.password.get_secret_value(), safe="")
    return f"postgresql+psycopg://{connection.user}:{password}@{connection.host}:{connection.port}/{connection.dbname}"


def libpq_env(connection: Connection) -> dict[str, str]:
    """The environment for psql / pgbench: connection settings in PG* variables, never on the command line."""
    return {**os.environ, **connection.libpq_env()}


def server_cpu_seconds(server: BenchServer) -> float:
    """CPU seconds used so far by the PostgreSQL server: its live processes, plus the children that exited
    (which the postmaster reaped into its own counters). Linux /proc; 0.0 elsewhere."""
    try:
        postmaster = int((server.local.data_dir / "postmaster.pid").read_text().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[1]) == postmaster:  # ppid
                total += int(fields[11]) + int(fields[12])  # utime, stime
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15])  # its own utime, stime and its reaped children's
        return total / ticks
    except (OSError, ValueError, IndexError):
        return 0.0


def client_cpu_seconds() -> float:
    """CPU seconds of this process and of the child processes it has waited for (psql, yoyo, node)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
