"""Statements that commit in phases (`DROP INDEX CONCURRENTLY`, `REINDEX ... CONCURRENTLY`, `ALTER TABLE ...
DETACH PARTITION ... CONCURRENTLY`), failing on a real PostgreSQL after their first phase committed: the
database is left dirty, never recorded as if nothing happened, and what they left half done is named with the
command that finishes or clears it. The failure is made by a reader holding its transaction open (every such
statement waits for older transactions between its phases) and a short lock_timeout: no timing involved."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import DirtyDatabase, ResolveError
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import Catalog, read_catalog
from tasks.engine.migrations.plan import plan
from tasks.engine.migrations.resolve import explain_state, resolve_dirty
from tasks.engine.migrations.results import MigrationError
from tasks.engine.migrations.rollback import RollbackError, roll_back_to
from tests.helpers import POLICY, applied_ids, dirty_state, write_migrations

SHORT_WAIT = POLICY.model_copy(update={"lock_timeout_ms": 300})


def applied(tmp_path: Path, database: Connection, files: dict[str, str]) -> Catalog:
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    assert not catalog.problems
    apply_pending(database, catalog, POLICY)
    return catalog


@contextmanager
def reader_in_a_transaction(database: Connection, *tables: str) -> Iterator[None]:
    """A session that read `tables` and keeps its transaction open until the block ends."""
    reader = database.connect(autocommit=False)
    try:
        for table in tables:
            reader.execute(f"SELECT * FROM {table}")
        yield
    finally:
        reader.close()


def indexes(database: Connection, table: str) -> dict[str, bool]:
    with connected(database) as conn:
        return dict(conn.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON "
                                 "c.oid = i.indexrelid WHERE i.indrelid = %s::regclass", (table,)).fetchall())


INDEXED = {
    "0001.base.sql": "CREATE TABLE t (id int, c int);\n",
    "0002.idx.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY t_c ON t (c);\n",
    "0002.idx.rollback.sql": "DROP INDEX CONCURRENTLY t_c;\n",
}


def test_a_rollback_whose_drop_index_concurrently_stops_halfway_is_dirty_and_names_the_index(
    tmp_path: Path, database: Connection
) -> None:
    """It used to say "nothing was undone; 0002.idx stays applied" and record the migration again, over an index
    the failed DROP had already made INVALID; resolve then said the database was clean."""
    catalog = applied(tmp_path, database, INDEXED)
    with reader_in_a_transaction(database, "t"), pytest.raises(RollbackError) as raised:
        roll_back_to(database, catalog, SHORT_WAIT, "1", environment="staging")
    failed = raised.value.report.failed
    assert failed is not None and failed.dirty and failed.sqlstate == "55P03" and failed.commits_inside
    finish = 'DROP INDEX CONCURRENTLY IF EXISTS "public"."t_c";'
    message = str(raised.value)
    assert f'INVALID index "public"."t_c", half dropped: finish it with {finish}' in message
    assert "stays applied" not in message and "0002.idx is no longer recorded as applied" in message
    assert indexes(database, "t") == {"t_c": False}
    assert applied_ids(database) == ["0001.base"] and dirty_state(database) == [("0002.idx", "failed", 1)]

    clean, text = explain_state(database, catalog, environment="staging")
    assert not clean and "1. FAILED: DROP INDEX CONCURRENTLY t_c [left: INVALID index " in text and finish in text
    assert any("dirty" in problem for problem in plan(database, catalog).problems)

    with connected(database) as conn:  # the operator finishes the rollback as told
        conn.execute(finish)
    resolve_dirty(database, catalog, "0002.idx", mark_applied=False, policy=POLICY)
    assert explain_state(database, catalog)[0] and indexes(database, "t") == {}


def test_a_failed_reindex_concurrently_leaves_the_database_dirty_naming_its_invalid_copy(
    tmp_path: Path, database: Connection
) -> None:
    """It was taken for one atomic statement: no mark, the INVALID copy unnamed, and the next run recorded the
    migration with it still there (every write maintains it)."""
    files = {"0001.base.sql": "CREATE TABLE t (id int, c int);\nCREATE INDEX t_c ON t (c);\n",
             "0002.reindex.sql": "-- transactional: false\nREINDEX INDEX CONCURRENTLY t_c;\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    apply_pending(database, catalog, POLICY, target="0001.base")
    with reader_in_a_transaction(database, "t"), pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, SHORT_WAIT)
    left = [name for name, valid in indexes(database, "t").items() if not valid]
    assert len(left) == 1 and left[0].startswith("t_c_cc")  # _ccnew or _ccold: where the wait stopped it
    drop = f'DROP INDEX CONCURRENTLY IF EXISTS "public"."{left[0]}";'
    message = str(raised.value)
    assert f'left by REINDEX CONCURRENTLY: drop it with {drop}' in message and "marked dirty" in message
    assert dirty_state(database) == [("0002.reindex", "failed", 1)] and applied_ids(database) == ["0001.base"]
    clean, text = explain_state(database, catalog)
    assert not clean and drop in text
    with pytest.raises(DirtyDatabase):  # the next run refuses: it is dirty
        apply_pending(database, catalog, POLICY)
    assert applied_ids(database) == ["0001.base"]


def test_a_failed_detach_partition_concurrently_is_dirty_and_names_the_finalize_command(
    tmp_path: Path, database: Connection
) -> None:
    """It left the partition pending detach with no mark; every later run failed `55000 partition "p1" already
    pending detach`, with no word of FINALIZE."""
    files = {"0001.base.sql": ("CREATE TABLE p (id int) PARTITION BY RANGE (id);\n"
                               "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);\n"),
             "0002.detach.sql": "-- transactional: false\nALTER TABLE p DETACH PARTITION p1 CONCURRENTLY;\n"}
    catalog = read_catalog(write_migrations(tmp_path, files), tmp_path)
    apply_pending(database, catalog, POLICY, target="0001.base")
    with reader_in_a_transaction(database, "p"), pytest.raises(MigrationError) as raised:
        apply_pending(database, catalog, SHORT_WAIT)
    finalize = 'ALTER TABLE "public"."p" DETACH PARTITION "public"."p1" FINALIZE;'
    assert f'partition "public"."p1" is pending detach from "public"."p": finish it with {finalize}' \
        in str(raised.value)
    assert dirty_state(database) == [("0002.detach", "failed", 1)]
    assert finalize in explain_state(database, catalog)[1]

    half_done = "half done, so not recorded as applied: partition .* FINALIZE; then mark it applied"
    with pytest.raises(ResolveError, match=half_done):
        resolve_dirty(database, catalog, "0002.detach", mark_applied=True, policy=POLICY)
    with connected(database) as conn:  # the operator finishes it as told, then records it
        conn.execute(finalize)
        assert conn.execute("SELECT count(*) FROM pg_inherits").fetchone() == (0,)
    resolve_dirty(database, catalog, "0002.detach", mark_applied=True, policy=POLICY)
    assert applied_ids(database) == ["0001.base", "0002.detach"] and explain_state(database, catalog)[0]


def test_a_concurrent_drop_that_committed_nothing_is_still_one_atomic_statement(
    tmp_path: Path, database: Connection
) -> None:
    """No index of that name: none of its phases committed, so the migration stays applied and nothing is dirty."""
    files = {**INDEXED, "0002.idx.rollback.sql": "DROP INDEX CONCURRENTLY no_such_index;\n"}
    catalog = applied(tmp_path, database, files)
    with pytest.raises(RollbackError) as raised:
        roll_back_to(database, catalog, POLICY, "1")
    assert "nothing was undone; 0002.idx stays applied" in str(raised.value) and dirty_state(database) == []
