"""Commits: what a git SHA looks like, and which commit a local run applies.

A run is pinned to its commit: the SHA goes into the history rows, the snapshot's name and tags and the
notification. A label ("unknown", "local") stands where no commit is known; it pins nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tasks.engine.errors import CommitUnavailable
from tasks.engine.processes import child_environment

GIT_SHA = re.compile(r"^[0-9a-f]{7,40}$")  # a commit id: 7-40 lowercase hex digits
GIT_LABEL = re.compile(r"^[a-z][a-z0-9-]{0,39}$")  # "unknown", "local", "refresh": never reused as a commit
# What a flow's `git_sha` parameter may be: a commit id, or one of the two labels a person may give.
URL_CREDENTIALS = re.compile(r"://[^/@\s]+@")  # https://token@host/...: never repeated in an error
GIT_SHA_PARAMETER = re.compile(rf"^(?:{GIT_SHA.pattern[1:-1]}|unknown|local)$")


def is_commit(git_sha: str) -> bool:
    return bool(GIT_SHA.match(git_sha))


def head_sha(directory: Path | None = None) -> str:
    """The checked-out commit of the repository around `directory` (default: here), or "local"."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=directory, env=child_environment())
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "local"


def _git(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=timeout,
                          env=child_environment())


def is_checkout(root: Path) -> bool:
    return _git(root, "rev-parse", "--is-inside-work-tree").stdout.strip() == "true"


def check_out(root: Path, git_sha: str) -> str:
    """Make the checkout at `root` hold exactly `git_sha` (fetched from `origin` when the clone lacks it, as a
    deployment's shallow clone of the branch does), detached; its full id. `CommitUnavailable` naming the SHA
    when it cannot be: nothing has read migrations/ yet."""
    if not is_commit(git_sha):
        raise CommitUnavailable(f"git_sha {git_sha!r} is not a commit id: a deployment run applies a commit's "
                                "migrations/, so give its SHA (40 hex digits)")
    if not is_checkout(root):
        raise CommitUnavailable(f"commit {git_sha} was asked for, but {root} is not a git checkout: the deployment's "
                                "pull step (prefect.yaml) must clone the repository")
    if _git(root, "cat-file", "-e", f"{git_sha}^{{commit}}").returncode != 0:
        if len(git_sha) < 40:
            raise CommitUnavailable(f"commit {git_sha} is not in the clone, and an abbreviated SHA cannot be fetched: "
                                    "give the full 40-digit SHA (nothing was read or changed)")
        fetched = _git(root, "fetch", "--quiet", "--depth", "1", "origin", git_sha)
        if fetched.returncode != 0:
            raise CommitUnavailable(f"commit {git_sha} cannot be fetched from origin ({_first_line(fetched.stderr)}): "
                                    "push it, or run with the SHA of a pushed commit; nothing was read or changed")
    checked = _git(root, "checkout", "--quiet", "--detach", git_sha)
    if checked.returncode != 0:
        raise CommitUnavailable(f"commit {git_sha} cannot be checked out ({_first_line(checked.stderr)}); nothing "
                                "was read or changed")
    return _git(root, "rev-parse", "HEAD").stdout.strip()


def uncommitted(root: Path, directory: str) -> list[str]:
    """The files under `directory` whose content is not the checked-out commit's (changed, new or deleted)."""
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", directory)
    return [line[3:] for line in status.stdout.splitlines() if line.strip()] if status.returncode == 0 else []


def _first_line(text: str) -> str:
    """git's first complaint, with any credentials in a URL it names blanked out."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return URL_CREDENTIALS.sub("://***@", lines[0])[:200] if lines else "no reason given"
