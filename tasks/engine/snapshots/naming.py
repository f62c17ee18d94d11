"""Snapshots: the `Snapshot` value, and how snapshots and the copies made from them are named and tagged.

Every pre-migration snapshot is named `rdsm-<environment>-<short sha>-<utc time>` and tagged with the
environment, the full git SHA, the flow run, the trigger and the history it was taken at, so a re-run of the
same commit on a database whose history has not moved since reuses the snapshot it already took, and nothing
this tool did not take is ever touched.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from tasks.engine.environments import RDS_IDENTIFIER
from tasks.engine.git import GIT_LABEL, GIT_SHA

SnapshotKind = Literal["rds_instance", "aurora_cluster", "pg_dump"]

NAME_PREFIX = "rdsm"
TAG_PREFIX = "rds-migrations:"
MANAGED_BY = "rds-migrations"
TIMESTAMP_FORMAT = "%Y%m%dt%H%M%S"
MAX_IDENTIFIER = 63


@dataclass(frozen=True)
class Snapshot:
    """A snapshot taken (or reused) before migrating; the next steps report it and say how to restore it."""

    kind: SnapshotKind
    identifier: str  # DB snapshot id / cluster snapshot id / dump file name without `.dump`
    source: str  # instance id / cluster id / database name
    reused: bool  # True when an earlier snapshot for the same git SHA was reused
    location: str  # snapshot ARN or the dump file's absolute path
    created_at: datetime


def check_git_sha(git_sha: str) -> str:
    """The SHA as given when it is a hex commit id or a plain label; anything else is refused (it ends up in
    names, tags and file names)."""
    if GIT_SHA.match(git_sha) or GIT_LABEL.match(git_sha):
        return git_sha
    raise ValueError(
        f"git_sha {git_sha[:80]!r} is neither a commit id (7-40 lowercase hex digits) nor a label such as "
        "'local' (lowercase letters, digits and hyphens)"
    )


def _hyphenated(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def snapshot_identifier(environment_name: str, git_sha: str, when: datetime) -> str:
    """`rdsm-<environment>-<sha7>-<yyyymmddthhmmss>`, valid for DB and cluster snapshots (<= 63 characters,
    a letter first, single hyphens). The environment part is shortened when it does not fit."""
    sha = _hyphenated(check_git_sha(git_sha)[:7])
    stamp = utc(when).strftime(TIMESTAMP_FORMAT)
    room = MAX_IDENTIFIER - len(f"{NAME_PREFIX}--{sha}-{stamp}")
    environment = _hyphenated(environment_name)[:room].strip("-")
    identifier = "-".join(part for part in (NAME_PREFIX, environment, sha, stamp) if part)
    if not RDS_IDENTIFIER.match(identifier):  # a guard: the parts above cannot produce this
        raise ValueError(f"cannot build a valid snapshot identifier from {environment_name!r}")
    return identifier


def tag_value(value: str | None) -> str:
    # RDS tag values: 1-256 of letters, digits, spaces and _.:/=+-@, not starting with aws: or rds:.
    cleaned = re.sub(r"[^\w .:/=+@-]", "_", value or "")[:256] or "none"
    return "_" + cleaned[1:] if cleaned.lower().startswith(("aws:", "rds:")) else cleaned


HISTORY_TAG = f"{TAG_PREFIX}history"
UNKNOWN_HISTORY = "unknown"


def snapshot_tags(
    environment_name: str, git_sha: str, flow_run_id: str | None, trigger: str,
    applied: Sequence[str] | None = None,
) -> dict[str, str]:
    return {
        f"{TAG_PREFIX}environment": environment_name,
        f"{TAG_PREFIX}git-sha": git_sha,
        f"{TAG_PREFIX}flow-run-id": tag_value(flow_run_id),
        f"{TAG_PREFIX}trigger": tag_value(trigger),
        f"{TAG_PREFIX}managed-by": MANAGED_BY,
        HISTORY_TAG: history_mark(applied),
    }


def history_mark(applied: Sequence[str] | None) -> str:
    """The history a snapshot was taken at, in a tag's few characters: how many migrations were applied, and a
    digest of their ids in order. A snapshot is reused only at the same mark: restoring one taken before other
    migrations were applied would undo them too."""
    if applied is None:
        return UNKNOWN_HISTORY
    return f"{len(applied)}-{hashlib.sha256(chr(10).join(applied).encode()).hexdigest()[:16]}"


def utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def minutes_old(created: datetime, now: datetime) -> int:
    """How long before `now` a snapshot was taken, in whole minutes (for the log of a reused one)."""
    return max(0, int((now - created).total_seconds() // 60))


def derived_name(base: str, middle: str, suffix: str, *, limit: int = MAX_IDENTIFIER, sep: str = "-") -> str:
    """`<base><sep><middle><sep><suffix>` within `limit` characters, shortening the base."""
    tail = f"{sep}{middle}{sep}{suffix}"
    return base[: limit - len(tail)].rstrip("-_") + tail



def stamp(now: datetime | None = None) -> str:
    """The UTC time as it stands in the names of snapshots and restored copies."""
    return utc(now or datetime.now(UTC)).strftime(TIMESTAMP_FORMAT)
