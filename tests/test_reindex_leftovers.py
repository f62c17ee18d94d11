"""What a failed `REINDEX ... CONCURRENTLY` leaves, found wherever PostgreSQL put it (the TOAST table's index
copy in pg_toast, the copies on a partitioned table's partitions) and only when this migration could have left
it: an INVALID `_ccnew` index that was there before its dirty mark is someone else's. Failures are made as in
test_concurrent_statements.py: a reader keeps its transaction open and the migration's lock_timeout is short."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import ResolveError
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog, read_catalog
from tasks.engine.migrations.resolve import explain_state, resolve_dirty
from tasks.engine.migrations.results import MigrationError
from tests.helpers import POLICY, applied_ids, dirty_state, write_migrations
from tests.test_concurrent_statements import SHORT_WAIT, reader_in_a_transaction

HALF_DONE = "half done, so not recorded as applied"


def invalid_copies(database: Connection) -> list[str]:
    """Every INVALID index REINDEX CONCURRENTLY names as its own (`_ccnew`, `_ccold`), schema-qualified, quoted."""
    with connected(database) as conn:
        return [row[0] for row in conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid AND c.relname ~ '_cc(new|old)' "
            "ORDER BY 1").fetchall()]


def quoted(name: str) -> str:
    schema, _, relname = name.partition(".")
    return f'"{schema}"."{relname}"'


def failed_reindex(tmp_path: Path, database: Connection, base: str, reindex: str, *read: str) -> tuple[Catalog, str]:
    """`base` applied, then `reindex` (a non-transactional migration) failed halfway while `read` was read: the
    catalog, and the failure's message."""
    files = {"0001.base.sql": base, "0002.reindex.sql": f"-- transactional: false\n{reindex}\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    apply_pending(database, catalog, POLICY, target="0001.base")
    with reader_in_a_transaction(database, *read), pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, SHORT_WAIT)
    return catalog, str(raised.value)


def finished_by_hand_then_marked_applied(database: Connection, catalog: Catalog, left: list[str]) -> None:
    """--mark-applied refuses, naming each copy with its DROP, until the operator drops them all."""
    with pytest.raises(ResolveError, match=HALF_DONE) as refused:
        resolve_dirty(database, catalog, "0002.reindex", mark_applied=True, policy=POLICY)
    drops = [f"DROP INDEX CONCURRENTLY IF EXISTS {quoted(name)};" for name in left]
    assert all(drop in str(refused.value) for drop in drops), str(refused.value)
    with connected(database) as conn:
        for drop in drops:
            conn.execute(drop)
    resolve_dirty(database, catalog, "0002.reindex", mark_applied=True, policy=POLICY)
    assert applied_ids(database) == ["0001.base", "0002.reindex"] and not set(left) & set(invalid_copies(database))


def test_a_failed_reindex_table_concurrently_names_the_copy_of_its_toast_index(
    tmp_path: Path, database: Connection
) -> None:
    """The TOAST index's copy is made in pg_toast, on the TOAST table: only the table's own indexes were looked
    at, so the failure was taken for an atomic one (no dirty mark) and the copy was never named."""
    catalog, message = failed_reindex(tmp_path, database, "CREATE TABLE t (id int, body text);\n",
                                      "REINDEX TABLE CONCURRENTLY t;", "t")
    left = invalid_copies(database)
    assert len(left) == 1 and left[0].startswith("pg_toast.pg_toast_")
    drop = f"DROP INDEX CONCURRENTLY IF EXISTS {quoted(left[0])};"
    assert f"left by REINDEX CONCURRENTLY: drop it with {drop}" in message and "marked dirty" in message
    assert dirty_state(database) == [("0002.reindex", "failed", 1)] and drop in explain_state(database, catalog)[1]
    finished_by_hand_then_marked_applied(database, catalog, left)


def test_a_failed_reindex_of_a_partitioned_table_names_the_copies_on_its_partitions(
    tmp_path: Path, database: Connection
) -> None:
    """Each partition is reindexed on its own and keeps its copies: the partitioned table has none of its own."""
    base = ("CREATE TABLE p (id int, c int) PARTITION BY RANGE (id);\n"
            "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);\n"
            "CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (10) TO (20);\n"
            "CREATE INDEX p_c ON p (c);\n")
    catalog, message = failed_reindex(tmp_path, database, base, "REINDEX TABLE CONCURRENTLY p;", "p")
    left = invalid_copies(database)
    assert left and all(name.startswith("public.p1_c_idx_cc") for name in left)
    assert all(f"DROP INDEX CONCURRENTLY IF EXISTS {quoted(name)};" in message for name in left)
    assert dirty_state(database) == [("0002.reindex", "failed", 1)]
    finished_by_hand_then_marked_applied(database, catalog, left)


OLD_AND_SCHEMA = {
    "0001.base.sql": "CREATE TABLE old (c int);\nCREATE INDEX old_c ON old (c);\nCREATE TABLE t (c int);\n"
                     "CREATE INDEX t_c ON t (c);\n",
    # REINDEX SCHEMA CONCURRENTLY skips INVALID indexes (a WARNING): an old leftover is left as it was.
    "0002.reindex.sql": "-- transactional: false\nREINDEX SCHEMA CONCURRENTLY public;\nSELECT 1 / 0;\n",
}


def old_leftover(tmp_path: Path, database: Connection) -> tuple[Catalog, str]:
    """0001.base applied, then an INVALID copy of old_c left by a REINDEX of someone else's, long before."""
    catalog = read_catalog(write_migrations(tmp_path, OLD_AND_SCHEMA), tmp_path)
    apply_pending(database, catalog, POLICY, target="0001.base")
    with reader_in_a_transaction(database, "old"), connected(database) as conn:
        conn.execute("SET lock_timeout = 300")
        with pytest.raises(Exception, match="lock timeout"):
            conn.execute("REINDEX INDEX CONCURRENTLY old_c")
    [left] = invalid_copies(database)
    assert left.startswith("public.old_c_cc")
    return catalog, left


def test_an_old_unrelated_reindex_leftover_does_not_block_marking_a_reindex_schema_applied(
    tmp_path: Path, database: Connection
) -> None:
    """Any INVALID `_ccnew` in the schema counted as the migration's: --mark-applied refused for good, naming an
    index that was there before it began (and dropping it is not the operator's call)."""
    catalog, old = old_leftover(tmp_path, database)
    with pytest.raises(MigrationError):  # the REINDEX ran in full; the statement after it failed
        apply_pending(database, catalog, POLICY)
    assert dirty_state(database) == [("0002.reindex", "failed", 2)]
    assert quoted(old) not in explain_state(database, catalog)[1]
    resolve_dirty(database, catalog, "0002.reindex", mark_applied=True, policy=POLICY)
    assert applied_ids(database) == ["0001.base", "0002.reindex"] and invalid_copies(database) == [old]


def test_a_reindex_schema_leftover_of_the_migration_still_blocks_beside_an_old_one(
    tmp_path: Path, database: Connection
) -> None:
    """The copy the failed REINDEX SCHEMA left is its own: named, and --mark-applied refuses until it is dropped;
    the old one is neither named nor in the way."""
    catalog, old = old_leftover(tmp_path, database)
    with reader_in_a_transaction(database, "t"), pytest.raises(MigrationError):
        apply_pending(database, catalog, SHORT_WAIT)
    assert dirty_state(database) == [("0002.reindex", "failed", 1)]
    ours = [name for name in invalid_copies(database) if name != old]
    assert len(ours) == 1 and ours[0].startswith("public.t_c_cc")
    with pytest.raises(ResolveError, match=HALF_DONE) as refused:
        resolve_dirty(database, catalog, "0002.reindex", mark_applied=True, policy=POLICY)
    assert quoted(ours[0]) in str(refused.value) and quoted(old) not in str(refused.value)
    finished_by_hand_then_marked_applied(database, catalog, ours)


def test_a_reindex_schema_that_made_no_copy_leaves_no_mark_beside_an_old_leftover(
    tmp_path: Path, database: Connection
) -> None:
    """REINDEX SCHEMA fails waiting for its lock on t, before it made any copy of t's index: nothing of it is half
    done, so its failure is a plain one and no dirty mark stays. The old leftover counted as its own when the
    failure was read: the message named it and the migration was left dirty for somebody else's index."""
    catalog, old = old_leftover(tmp_path, database)
    holder = database.connect(autocommit=False)
    try:
        holder.execute("LOCK TABLE t IN SHARE UPDATE EXCLUSIVE MODE")
        with pytest.raises(MigrationError) as raised:
            apply_pending(database, catalog, SHORT_WAIT)
    finally:
        holder.close()
    assert "lock timeout" in str(raised.value) and quoted(old) not in str(raised.value)
    assert dirty_state(database) == []
    assert applied_ids(database) == ["0001.base"] and invalid_copies(database) == [old]


def test_a_toast_copy_only_a_superuser_may_drop_does_not_stop_a_login_marking_the_migration(
    tmp_path: Path, database: Connection, login
) -> None:
    """A login that is not a superuser (RDS's master user is not) may not use the pg_toast schema, so it cannot
    drop the copy of a TOAST index a failed REINDEX left there: --mark-applied refused for good, naming a DROP
    that login could never run. The copy is named with who may drop it, and marking goes ahead."""
    migrator = login("owner")
    with connected(database) as conn:
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{migrator.user}"')
    catalog, message = failed_reindex(tmp_path, migrator, "CREATE TABLE t (id int, body text);\n",
                                      "REINDEX TABLE CONCURRENTLY t;", "t")
    [left] = invalid_copies(database)
    assert left.startswith("pg_toast.pg_toast_") and "cannot drop it: only a superuser may" in message, message
    with connected(migrator) as conn, pytest.raises(Exception, match="permission denied for schema pg_toast"):
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quoted(left)}")  # what the message used to ask for
    outcome = resolve_dirty(migrator, catalog, "0002.reindex", mark_applied=True, policy=POLICY)
    assert "still there" in outcome and quoted(left) in outcome, outcome
    assert applied_ids(database) == ["0001.base", "0002.reindex"] and dirty_state(database) == []


def test_mark_not_applied_refuses_while_what_the_migration_left_would_outlive_its_next_run(
    tmp_path: Path, database: Connection
) -> None:
    """--mark-not-applied did not look at what the migration left: the next run's REINDEX skips an INVALID TOAST
    index, so the copy stayed for good behind a history that said applied. It refuses, naming the DROP, until
    the copy is gone; then the next run applies the migration in full."""
    catalog, _ = failed_reindex(tmp_path, database, "CREATE TABLE t (id int, body text);\n",
                                "REINDEX TABLE CONCURRENTLY t;", "t")
    [left] = invalid_copies(database)
    drop = f"DROP INDEX CONCURRENTLY IF EXISTS {quoted(left)};"
    with pytest.raises(ResolveError, match="half done, so not recorded as not applied") as refused:
        resolve_dirty(database, catalog, "0002.reindex", mark_applied=False, policy=POLICY)
    assert drop in str(refused.value) and dirty_state(database) == [("0002.reindex", "failed", 1)]
    with connected(database) as conn:
        conn.execute(drop)
    resolve_dirty(database, catalog, "0002.reindex", mark_applied=False, policy=POLICY)
    apply_pending(database, catalog, POLICY)
    assert applied_ids(database) == ["0001.base", "0002.reindex"] and invalid_copies(database) == []
