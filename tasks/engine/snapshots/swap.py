"""Restore-and-swap, the one way a database is ever replaced (staging refresh, restore after a bad run):
the snapshot restored into a NEW name, made ready, then names swapped, so nothing is ever restored onto the
live name. Every name is checked before any call that creates, renames or deletes it (`SwapPlan.check`),
and a failure before the swap deletes only what this run created, leaving the live copy untouched.

The calls themselves are a `Backend`'s (backends.py): RDS instances, Aurora clusters, local databases.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psycopg
from botocore.exceptions import ClientError, WaiterError
from pydantic import SecretStr

from tasks.engine.aws import error_code
from tasks.engine.connection import Connection
from tasks.engine.environments import DATABASE_NAME, RDS_IDENTIFIER
from tasks.engine.errors import Interrupted, RefreshError, server_words
from tasks.engine.logs import Log
from tasks.engine.snapshots.naming import Snapshot, SnapshotKind, derived_name

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """The calls a restore-and-swap makes, one implementation per kind. Every write checks its names first
    against the `SwapPlan` it was made with."""

    def inspect(self) -> LiveCopy:
        """Read-only: the live copy's settings; refuses when it is missing or the new/old names are taken."""

    def create(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        """Start restoring `snapshot` into a new copy called `name`."""

    def finish_restore(self, snapshot: Snapshot, name: str, live: LiveCopy) -> None:
        """Until the new copy is usable (waited for, or filled from the dump)."""

    def reset_master_password(self, name: str, password: SecretStr) -> None:
        """The new copy's master password becomes the environment's own (the snapshot holds the source's)."""

    def connection_to(self, name: str, credentials: Connection) -> Connection:
        """How to reach the new copy with the environment's credentials."""

    def swap(self, plan: SwapPlan, live: LiveCopy) -> None:
        """live → old, new → live (taking on the live copy's deletion protection); on failure, put the live name
        back where it can, and say where things are. The replaced copy is marked so that no fleet takes it for
        the live one."""

    def delete(self, name: str) -> None:
        """Delete a copy this run made or replaced (checked against the plan)."""


@dataclass(frozen=True)
class SwapPlan:
    """The names one restore-and-swap touches, checked when the plan is made and again before every call.

    `pattern` and `protected` are the refresh's rules (what a staging name looks like; production's name);
    a restore has neither and relies on the derived names and the never-onto-the-live-name rule.
    """

    kind: SnapshotKind
    live: str  # the copy being replaced: renamed to `old` at the swap
    new: str  # restored from the snapshot, renamed to `live` at the swap
    old: str
    stamp: str  # the UTC time in the names
    keep_old: bool
    pattern: str | None = None
    protected: str | None = None

    def __post_init__(self) -> None:
        self.check(self.new, "create")
        self.check(self.live, "rename")
        self.check(self.old, "rename")
        self.check(self.new, "delete")  # a half-created copy is discarded on failure
        if not self.keep_old:
            self.check(self.old, "delete")

    @property
    def noun(self) -> str:
        return {"rds_instance": "DB instance", "aurora_cluster": "DB cluster", "pg_dump": "database"}[self.kind]

    def member(self, role: str) -> str:
        """An instance created inside a new Aurora cluster, e.g. `<live>-writer-<time>`."""
        return derived_name(self.live, role, self.stamp)

    def check(self, name: str, action: str, *, noun: str | None = None) -> str:
        """`name` when `action` ("create", "rename", "modify", "delete") may touch it; else `RefreshError`.

        `noun` is given for an Aurora cluster's member instances (another namespace than the live name's)."""
        problems = []
        valid = DATABASE_NAME if self.kind == "pg_dump" else RDS_IDENTIFIER
        if not valid.match(name):
            problems.append("it is not a valid name here")
        if self.pattern is not None and not re.fullmatch(self.pattern, name):
            problems.append(f"it does not match the staging pattern {self.pattern!r}")
        if self.protected and (name == self.protected or name.startswith((f"{self.protected}-",
                                                                           f"{self.protected}_"))):
            problems.append(f"it is, or is named after, the source {self.protected!r} (production)")
        if noun is None and action in ("create", "modify", "delete") and name == self.live:
            problems.append("it is the live name: nothing is restored onto, changed on or deleted from it")
        if problems:
            raise RefreshError(f"refusing to {action} {noun or self.noun} {name!r}: {'; '.join(problems)}")
        return name


@dataclass(frozen=True)
class LiveCopy:
    """What the new copy takes over from the live one it replaces."""

    settings: dict[str, Any]  # restore parameters: instance class, subnet group, security groups, ...
    master_username: str | None = None
    deletion_protection: bool = False  # set when the copy takes the live name (a copy still deletable before)
    arn: str | None = None  # the live copy's ARN (RDS), for the commands a message gives


@dataclass(frozen=True)
class SwapResult:
    """What a refresh or restore did; no secret in it."""

    action: Literal["refresh", "restore"]
    environment: str
    kind: SnapshotKind
    snapshot: Snapshot
    live: str
    new: str  # the restored copy's name before the swap
    old: str  # the replaced copy's name after the swap
    old_deleted: bool
    masking_files: tuple[str, ...] = ()
    duration_seconds: float = 0.0


def describe_error(exc: BaseException) -> str:
    """An error for people. A PostgreSQL error never with a row of it: production rows are personal data."""
    if isinstance(exc, psycopg.Error):
        return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate}): {server_words(exc) or 'no message'}"
    if isinstance(exc, WaiterError):
        response = exc.last_response or {}
        found = (response.get("DBInstances") or response.get("DBClusters") or [{}])[0]
        status = found.get("DBInstanceStatus") or found.get("Status") or "unknown"
        if "Max attempts exceeded" in str(exc):
            return f"still {status!r} at the end of the wait (refresh.max_wait_seconds)"
        return f"its status became {status!r}"
    return str(exc) or type(exc).__name__


def replace_from_snapshot(backend: Backend, plan: SwapPlan, snapshot: Snapshot, live: LiveCopy, *,
                          prepare: Callable[[str], None] | None, log: Log = logger) -> bool:
    """Restore `snapshot` into `plan.new`, `prepare` it, swap names, delete `plan.old` unless kept.

    A failure before the swap deletes the new copy (only when this run created it) and leaves `plan.live`
    untouched. Returns whether the old copy was deleted.
    """
    noun, created = plan.noun, None
    try:  # Ctrl-C or a cancellation too (BaseException): the half-made copy never outlives the run that made it
        log.info("Restoring snapshot %s into a new %s %s; %s stays untouched until the swap",
                 snapshot.identifier, noun, plan.new, plan.live)
        created = False  # asked for: stopped while asking, the copy may exist all the same
        backend.create(snapshot, plan.new, live)
        created = True
        backend.finish_restore(snapshot, plan.new, live)
        if prepare is not None:
            prepare(plan.new)
    except BaseException as exc:  # noqa: BLE001 - the new copy is cleaned up, then the failure is raised
        left = f"no {noun} was created" if created is None else _discard(backend, plan, log, surely=created)
        raise ended_in(exc, f"restoring snapshot {snapshot.identifier} into {noun} {plan.new}",
                       f"{plan.live} is untouched; {left}", log) from None

    log.info("Swapping names: %s → %s, %s → %s", plan.live, plan.old, plan.new, plan.live)
    backend.swap(plan, live)
    if plan.keep_old:
        log.info("Kept the replaced %s as %s", noun, plan.old)
        return False
    try:
        backend.delete(plan.old)
    except BaseException as exc:  # noqa: BLE001 - the swap is done; a leftover copy is reported, not fatal
        if not isinstance(exc, Exception):
            raise ended_in(exc, f"deleting the replaced {noun} {plan.old}", f"the swap is done: {plan.live} is the "
                           f"restored copy; {plan.old} may be left: delete it by hand", log) from None
        log.warning("%s %s was replaced, but the old copy %s could not be deleted (%s): delete it by hand",
                    noun, plan.live, plan.old, describe_error(exc))
        return False
    log.info("Deleted the replaced %s %s", noun, plan.old)
    return True


def ended_in(exc: BaseException, doing: str, state: str, log: Log) -> BaseException:
    """What a restore-and-swap raises when `exc` stopped it while `doing`, leaving things as `state` says: a
    failure becomes a RefreshError; Ctrl-C becomes Interrupted (announced, exit 130); a cancellation (Prefect's
    TerminationSignal) or an exit goes on as it was, the state logged first for the run's logs."""
    if isinstance(exc, Exception):
        return RefreshError(f"{doing} failed: {describe_error(exc)}; {state}")
    log.error("Stopped while %s: %s", doing, state)
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(f"interrupted (Ctrl-C) while {doing}: {state}")
    return exc


def _discard(backend: Backend, plan: SwapPlan, log: Log, *, surely: bool = True) -> str:
    """Delete the new copy; `surely` False: it was being asked for when the run stopped, and may not exist."""
    try:
        backend.delete(plan.new)
    except Exception as exc:  # noqa: BLE001 - reported in the error being raised
        if not surely and (isinstance(exc, psycopg.errors.InvalidCatalogName)
                           or isinstance(exc, ClientError) and "NotFound" in error_code(exc)):
            return f"no {plan.noun} was created"
        log.error("Could not delete the half-created %s %s: %s", plan.noun, plan.new, describe_error(exc))
        return f"the half-created {plan.noun} {plan.new} could NOT be deleted ({describe_error(exc)}): delete it"
    return f"the half-created {plan.noun} {plan.new} was deleted"
