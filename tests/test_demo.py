"""`make demo`'s command, run as a newcomer runs it: twice, the second time a no-op."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.engine.embedded import LocalServer

pytestmark = pytest.mark.integration  # it starts its own PostgreSQL and Prefect's temporary server
PROJECT = Path(__file__).parents[1]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The demo's RDS_MIGRATIONS_HOME. The demo keeps its stopped server for the next `make demo`; the test
    deletes it (its data lives under /tmp when the home is not reachable by the server's user: 80 MB a run)."""
    yield tmp_path
    LocalServer(tmp_path / "postgres").destroy()


def demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RDS_MIGRATIONS_HOME": str(home)}
    env.pop("RDS_MIGRATIONS_ENVIRONMENTS", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", "demo", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_demo_runs_staging_then_production_and_a_second_run_is_a_no_op(home: Path) -> None:
    first = demo(home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout + first.stderr
    assert "migrate-staging" in out and "migrate-production" in out
    assert "Applying 0001.create-users" in out
    dumps = sorted((home / "snapshots").glob("*.dump"))
    assert len(dumps) == 2  # one before staging's migrations, one before production's
    assert "SUCCEEDED" in out

    second = demo(home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert "NOTHING TO DO" in out and "Applying" not in out
    assert sorted((home / "snapshots").glob("*.dump")) == dumps
