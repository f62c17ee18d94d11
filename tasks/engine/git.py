"""Commits: what a git SHA looks like, and which commit a local run applies.

A run is pinned to its commit: the SHA goes into the history rows, the snapshot's name and tags and the
notification. A label ("unknown", "local") stands where no commit is known; it pins nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

GIT_SHA = re.compile(r"^[0-9a-f]{7,40}$")  # a commit id: 7-40 lowercase hex digits
GIT_LABEL = re.compile(r"^[a-z][a-z0-9-]{0,39}$")  # "unknown", "local", "refresh": never reused as a commit
# What a flow's `git_sha` parameter may be: a commit id, or one of the two labels a person may give.
GIT_SHA_PARAMETER = re.compile(rf"^(?:{GIT_SHA.pattern[1:-1]}|unknown|local)$")


def is_commit(git_sha: str) -> bool:
    return bool(GIT_SHA.match(git_sha))


def head_sha(directory: Path | None = None) -> str:
    """The checked-out commit of the repository around `directory` (default: here), or "local"."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=directory)
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "local"
