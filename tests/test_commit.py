"""Every run is pinned to its commit: a deployment run checks out the SHA it was given (fetched into a shallow
clone of the branch) and applies exactly that commit's migrations/; one it cannot fetch fails before the
database is touched, naming the SHA; a terminal run warns when migrations/ holds what its commit does not.
Real git repositories, a real PostgreSQL; the Prefect deployment path itself is in tests/test_e2e.py."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import psycopg
import pytest

from tasks.engine.connection import Connection
from tasks.engine.errors import CommitUnavailable
from tasks.engine.git import check_out, uncommitted
from tasks.engine.runs.migration import migrate_environment
from tasks.engine.runs.steps import DirectSteps, RunInfo
from tests.conftest import CANARY_PASSWORD
from tests.helpers import PROJECT, applied_ids, tables, url_of

A_MIGRATION = {"0001.accounts.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY);\n"}
B_MIGRATION = {"0002.accounts-name.sql": "-- depends: 0001.accounts\nALTER TABLE accounts ADD COLUMN name text;\n"}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def commit(root: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (root / "migrations" / name).write_text(text)
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository whose main holds commit A (one migration) then commit B (a second)."""
    root = tmp_path / "origin"
    (root / "migrations").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    a = commit(root, A_MIGRATION, "A")
    b = commit(root, B_MIGRATION, "B")
    return root, a, b


def shallow_clone(origin: Path, where: Path) -> Path:
    """What a deployment's pull step holds: the branch's tip, one commit deep."""
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", "main", f"file://{origin}", str(where)],
                   check=True)
    return where


class DeploymentSteps(DirectSteps):
    """DirectSteps as a deployment's flow run sees itself: started from a deployment."""

    def run_info(self) -> RunInfo:
        return RunInfo(run_id="run-1", flow_name="migrate-staging", deployment="migrate-staging/staging")


def run(clone: Path, steps: DirectSteps, git_sha: str, database: Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(clone)
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(PROJECT / "deployments/environments.toml"))
    monkeypatch.setenv("DATABASE_URL", url_of(database))
    migrate_environment("database-url", "staging", steps, git_sha=git_sha, project_root=clone, trigger="ui")


def recorded_shas(database: Connection) -> list[str]:
    with psycopg.connect(url_of(database)) as conn:
        rows = conn.execute("SELECT git_sha FROM _rds_migrations_history ORDER BY migration_id").fetchall()
    return [row[0] for row in rows]


def test_a_deployment_run_applies_exactly_its_commits_migrations(
    tmp_path: Path, origin: tuple[Path, str, str], database: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, a, b = origin
    clone = shallow_clone(root, tmp_path / "clone")  # holds B only
    run(clone, DeploymentSteps(), a, database, monkeypatch)
    assert applied_ids(database) == ["0001.accounts"] and recorded_shas(database) == [a]

    run(shallow_clone(root, tmp_path / "clone-2"), DeploymentSteps(), b, database, monkeypatch)
    assert applied_ids(database) == ["0001.accounts", "0002.accounts-name"]
    assert recorded_shas(database) == [a, b]


def test_a_deployment_run_without_a_sha_records_the_commit_it_applied(
    tmp_path: Path, origin: tuple[Path, str, str], database: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, b = origin
    run(shallow_clone(root, tmp_path / "clone"), DeploymentSteps(), "unknown", database, monkeypatch)
    assert recorded_shas(database) == [b, b]


def test_a_commit_that_cannot_be_fetched_fails_before_the_database_is_touched(
    tmp_path: Path, origin: tuple[Path, str, str], database: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, _ = origin
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(CommitUnavailable) as raised:
        run(shallow_clone(root, tmp_path / "clone"), DeploymentSteps(), missing, database, monkeypatch)
    assert f"commit {missing} cannot be fetched from origin" in str(raised.value)
    assert "nothing was read or changed" in str(raised.value) and CANARY_PASSWORD not in str(raised.value)
    assert tables(database) == set()  # not even the history tables


def test_check_out_refuses_what_it_cannot_pin(tmp_path: Path, origin: tuple[Path, str, str]) -> None:
    root, a, _ = origin
    clone = shallow_clone(root, tmp_path / "clone")
    with pytest.raises(CommitUnavailable, match=rf"commit {a[:7]} is not in the clone.*full 40-digit SHA"):
        check_out(clone, a[:7])
    with pytest.raises(CommitUnavailable, match="is not a commit id"):
        check_out(clone, "main")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(CommitUnavailable, match="is not a git checkout"):
        check_out(plain, a)
    # Credentials in the remote's URL never reach the error.
    git(clone, "remote", "set-url", "origin", f"https://user:{CANARY_PASSWORD[:8]}@127.0.0.1:9/nothing.git")
    with pytest.raises(CommitUnavailable) as raised:
        check_out(clone, "0123456789abcdef0123456789abcdef01234567")
    assert CANARY_PASSWORD[:8] not in str(raised.value)


def test_a_terminal_run_warns_when_migrations_hold_what_its_commit_does_not(
    tmp_path: Path, origin: tuple[Path, str, str], database: Connection, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    root, _, b = origin
    (root / "migrations" / "0003.accounts-email.sql").write_text(
        "-- depends: 0002.accounts-name\nALTER TABLE accounts ADD COLUMN email text;\n")
    assert uncommitted(root, "migrations") == ["migrations/0003.accounts-email.sql"]
    with caplog.at_level(logging.WARNING, logger="commit-test"):
        run(root, DirectSteps(log=logging.getLogger("commit-test")), b, database, monkeypatch)
    warned = [r.getMessage() for r in caplog.records if "uncommitted" in r.getMessage()]
    assert len(warned) == 1 and "migrations/0003.accounts-email.sql" in warned[0] and b in warned[0]
    assert len(applied_ids(database)) == 3  # a terminal run applies the working tree, and says so
    assert git(root, "rev-parse", "HEAD") == b  # and never moves the person's checkout


def test_a_deployment_not_from_git_applies_its_files_as_they_are_and_says_so(
    tmp_path: Path, database: Connection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Code baked into an image (no pull step): nothing to check out; the given SHA is recorded, with a warning."""
    project = tmp_path / "baked"
    (project / "migrations").mkdir(parents=True)
    for name, text in A_MIGRATION.items():
        (project / "migrations" / name).write_text(text)
    steps = DeploymentSteps(log=logging.getLogger("commit-test"))
    with caplog.at_level(logging.WARNING, logger="commit-test"):
        run(project, steps, "abc1234", database, monkeypatch)
    assert recorded_shas(database) == ["abc1234"]
    assert any("is not a git checkout" in r.getMessage() for r in caplog.records)
