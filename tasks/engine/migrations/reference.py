"""Drift's reference: the schema the applied migrations make, and the live schema held against it.

The reference is remembered in the target's own tables for each state of its history (after a baseline,
and after every run that found no drift), so a check reads two schemas and compares them. When it is not
remembered, it is built: on a scratch database (scratch.py), the schema a baseline adopted (if any) is
restored and the migrations applied since are replayed; nothing is written to the target.

Without a baseline, the replay starts where the target's migrations started: with the target's search_path,
the schemas on it that no migration makes (an `app` schema a DBA made first), and no `public` schema when
the target has none and no migration drops it. Otherwise every table of such a database would show as
missing from `public` and unexpected in `app`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

from tasks.engine.connection import Connection, connected
from tasks.engine.environments import Policy
from tasks.engine.errors import DriftReferenceUnavailable
from tasks.engine.logs import Log
from tasks.engine.migrations.adopt import census, ignored_tables
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.drift import DriftReport, compare, explained_by_pending
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.results import MigrationError
from tasks.engine.migrations.schema import SchemaSnapshot, read_schema
from tasks.engine.migrations.schema_copy import restore_schema
from tasks.engine.migrations.scratch import Place, StartingPoint, create_scratch, scratch_database
from tasks.engine.migrations.session import session

logger = logging.getLogger(__name__)


def state_key(applied: Iterable[Migration], baseline_id: int | None) -> str:
    """A name for a state of history: the baseline it started from and every migration applied since, each
    with its content checksum, in order."""
    digest = hashlib.sha256(f"rds-migrations schema v1\0baseline={baseline_id}".encode())
    for migration in applied:
        digest.update(f"\0{migration.id}\0{migration.checksum}".encode())
    return digest.hexdigest()[:32]


def current_state_key(conn_ledger: Ledger, catalog: Catalog) -> str:
    """The key of the state the database's history is in now (migrations in the directory's order)."""
    applied = set(conn_ledger.read().applied)
    baseline = conn_ledger.baseline()
    return state_key([m for m in catalog.migrations if m.id in applied], baseline.id if baseline else None)


def expected_schema(target: Connection, catalog: Catalog, place: Place, policy: Policy,
                    log: Log = logger, *, pending: Iterable[str] = ()) -> tuple[SchemaSnapshot, str]:
    """(the schema the target's applied migrations make, where it came from). Reads only on the target.
    With `pending`: the schema those make on top of them (always rebuilt: no run has left it yet)."""
    also = set(pending)
    with session(target, read_only=True) as conn:
        start = StartingPoint.of(conn)
        ledger = Ledger.open(conn)
        applied = set(ledger.read().applied)
        baseline = ledger.baseline()
        migrations = [m for m in catalog.migrations if m.id in applied or m.id in also]
        remembered = None if also else ledger.remembered_schema(
            state_key(migrations, baseline.id if baseline else None))
        adopted_schema = None if baseline is None or remembered is not None else ledger.remembered_schema(
            state_key([m for m in catalog.migrations if m.id in set(baseline.migrations)], baseline.id))
    if remembered is not None:
        return SchemaSnapshot.from_json(remembered), "remembered after the last run"
    adopted = set(baseline.migrations) if baseline else set()
    replay = Catalog(catalog.directory, tuple(migrations))
    # The replay must not stop at anything a real run would refuse: it rebuilds what was applied, as applied.
    replay_policy = policy.model_copy(update={"allow_out_of_order": True, "migration_lock_wait_seconds": 0,
                                              "lock_timeout_retries": 0})
    with scratch_database(place, log) as name:
        scratch = create_scratch(place, name, log)
        if baseline is not None:
            restore_schema(baseline.schema_dump, scratch)
            start.prepare(scratch, (), log)  # the dump holds the schemas, not the database's search_path
        else:
            start.prepare(scratch, migrations, log)
        with session(scratch) as conn:
            scratch_ledger = Ledger.open(conn)
            scratch_ledger.create_tables()
            scratch_ledger.record_applied([m for m in migrations if m.id in adopted], "drift", None,
                                          operation="mark", comment="rds-migrations drift: adopted by a baseline")
        try:
            apply_pending(scratch, replay, replay_policy, git_sha="drift", log=log)
        except MigrationError as exc:  # not the target's: its report must not read as this run's
            raise DriftReferenceUnavailable(
                f"drift's reference could not be rebuilt on a scratch database ({place.where}), the target was not "
                f"touched: {exc}") from None
        with connected(scratch) as conn:
            snapshot = read_schema(conn, ignore=ignored_tables(conn))  # an older baseline's dump may hold them
    if adopted_schema is not None:
        snapshot = _with_invalid_indexes(snapshot, SchemaSnapshot.from_json(adopted_schema))
    how = "the adopted schema and the migrations since" if baseline else "the applied migrations"
    return snapshot, f"rebuilt from {how} on {place.where}"


def _with_invalid_indexes(rebuilt: SchemaSnapshot, adopted: SchemaSnapshot) -> SchemaSnapshot:
    """The INVALID indexes the database held when it was adopted (a failed `CREATE INDEX CONCURRENTLY` of
    before), on tables still there: pg_dump leaves them out, so a reference rebuilt from the baseline's dump
    lacked them and the live one read as "added by hand"."""
    have = rebuilt.by_key()
    back = [obj for obj in adopted.objects if obj.kind == "index" and obj.definition.get("valid") is False
            and obj.key not in have and ("table", obj.parent) in have]
    return rebuilt.with_objects(back) if back else rebuilt


def check_drift(target: Connection, catalog: Catalog, place: Place, policy: Policy, log: Log = logger, *,
                pending: tuple[str, ...] = (), pending_place: Callable[[], Place] | None = None
                ) -> tuple[DriftReport, str]:
    """The live schema compared with the expected one; (the report, where the expected one came from). With
    `pending`, a drift is then held against what those migrations make too (drift.explained_by_pending), on
    `pending_place()`: chosen only then, as it must suit them (scratch.choose_place may start a server)."""
    expected, source = expected_schema(target, catalog, place, policy, log)
    with session(target, read_only=True) as conn:
        live = read_schema(conn, ignore=ignored_tables(conn))
        drift = compare(expected, live)
        unadopted = census(conn).refusal() if drift.drifted else None
    if unadopted:  # a database another tool or a person migrated: its tables read as added by hand until then
        drift = replace(drift, notes=(*drift.notes, f"{unadopted}; until then, what is in it reads as drift"))
    if not (drift.drifted and pending and pending_place):
        return drift, source
    try:
        after, _ = expected_schema(target, catalog, pending_place(), policy, log, pending=pending)
    except DriftReferenceUnavailable as exc:  # a pending migration fails: the drift stands, and why is said
        return replace(drift, notes=(*drift.notes, f"whether the pending migrations account for it is not known: "
                                                   f"{exc}")), source
    return explained_by_pending(drift, after, live), source


def remember_live_schema(target: Connection, catalog: Catalog) -> None:
    """After a run that found no drift: the live schema is what the migrations make, for the new state."""
    with session(target) as conn:
        ledger = Ledger.open(conn)
        if ledger.exists()["schema"]:
            ledger.remember_schema(current_state_key(ledger, catalog),
                                   read_schema(conn, ignore=ignored_tables(conn)).to_json())
