"""One line saying what the numbers were measured on."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def memory_gib() -> float | None:
    try:
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 / 1024 if match else None


def node_version() -> str | None:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def describe(pg_version: str) -> dict[str, str]:
    memory = memory_gib()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{memory:.1f} GiB" if memory else "?",
        "os": f"{platform.system()} {platform.release()}",
        "postgresql": pg_version,
        "python": platform.python_version(),
        "node": node_version() or "absent",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_at_start": f"{load:.2f}" if load is not None else "?",
        "executable": sys.executable,
    }


def machine_line(info: dict[str, str]) -> str:
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory']}; {info['os']}; PostgreSQL {info['postgresql']} "
        f"(local, fsync off); Python {info['python']}; node {info['node']}; {info['date']}; "
        f"1-min load at start {info['load_at_start']}"
    )
