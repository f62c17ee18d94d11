"""What a run stopped by Ctrl-C claims: only what it did. One that never got the migration lock applied nothing,
whatever another run applied meanwhile; one whose history cannot be read says so and offers its restore. Real
PostgreSQL, a real second session holding the lock, real pg_dump snapshots, the real command line and a real
SIGINT."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tasks.engine.connection import Connection, connected
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.history import Ledger
from tasks.engine.migrations.session import ADVISORY_LOCK_KEY
from tests.helpers import applied_ids, ctrl_c, start_run, wait_until_seen, write_migrations
from tests.test_reports import SHA, dumped

# The run's migration session, polling for the lock another session holds (its last query is the poll).
POLLING_FOR_THE_LOCK = ("SELECT 1 FROM pg_stat_activity WHERE application_name = 'rds-migrations' "
                        "AND datname = current_database() AND pid <> pg_backend_pid() "
                        "AND query LIKE 'SELECT pg\\_try\\_advisory\\_lock(%'")


def start(tmp_path: Path, database: Connection, environments: Path) -> subprocess.Popen:
    """`rds-migrations run --env mine` on `database`, in the background."""
    return start_run(tmp_path, database, "--env", "mine", environments=environments, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)


def test_ctrl_c_while_waiting_for_the_migration_lock_claims_nothing_another_run_did(tmp_path: Path,
                                                                                    database: Connection) -> None:
    """Another run holds the migration lock and applies 0001.a while this run, its snapshot taken, waits for the
    lock; Ctrl-C then. This run applied nothing and has nothing of its own to restore. It read the history and
    claimed 0001.a as its own, with the restore commands of its snapshot, which would undo the other run's work."""
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                                "0002.b.sql": "CREATE TABLE b (id bigint);\n"})
    path = dumped(tmp_path)  # it waits for the lock far longer than the test takes
    path.write_text(path.read_text().replace("lock_timeout_ms = 2000", "lock_timeout_ms = 2000, "
                                             "migration_lock_wait_seconds = 600"), encoding="utf-8")
    with connected(database, autocommit=True) as other:  # the other run: it holds the lock
        Ledger.open(other).create_tables()
        other.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        running = start(tmp_path, database, path)
        try:
            wait_until_seen(database, POLLING_FOR_THE_LOCK, running, "the run never waited for the migration lock")
            first = read_catalog(tmp_path / "migrations", tmp_path).get("0001.a")
            other.execute("CREATE TABLE a (id bigint)")
            Ledger.open(other).record(first, SHA, "run-a", time.monotonic())  # the other run applies 0001.a
        finally:
            said = "".join(ctrl_c(running))

    assert "Traceback" not in said, said[-3000:]
    assert "applied:    none" in said and "rds-migrations restore" not in said, said[-3000:]
    assert "interrupted (Ctrl-C) at step migrate, before it got the migration lock: nothing was applied" in said, \
        said[-3000:]
    assert "the database was not changed, so there is nothing to restore" in said, said[-3000:]
    assert applied_ids(database) == ["0001.a"]  # the other run's, as the history says


SLEEP_ON_TARGET = "DO $$ BEGIN IF current_database() NOT LIKE 'rdsm\\_%' THEN PERFORM pg_sleep(60); END IF; END $$;\n"


def test_ctrl_c_when_the_history_cannot_be_read_says_so_and_offers_the_restore(tmp_path: Path,
                                                                               database: Connection) -> None:
    """Ctrl-C while 0002.slow runs on the target, after 0001.a was applied, at a moment the database takes no new
    connection (as when it is going away): what the run applied cannot be read. It says so, names the command
    that reads it, and offers its snapshot's restore: not knowing is not "nothing changed"."""
    from tests.helpers import SLEEPING

    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                                "0002.slow.sql": "CREATE TABLE b (id bigint);\n" + SLEEP_ON_TARGET})
    running = start(tmp_path, database, dumped(tmp_path))
    with connected(database.model_copy(update={"dbname": "postgres"}), autocommit=True) as admin:
        try:
            wait_until_seen(database, SLEEPING, running, "the migration on the target never started")
            # The sessions already there go on; any new one is refused (SQLSTATE 55000), a superuser's too.
            admin.execute(f'ALTER DATABASE "{database.dbname}" ALLOW_CONNECTIONS false')
        finally:
            said = "".join(ctrl_c(running))
            admin.execute(f'ALTER DATABASE "{database.dbname}" ALLOW_CONNECTIONS true')

    assert "Traceback" not in said, said[-3000:]
    assert ("interrupted (Ctrl-C) at step migrate: what it applied is not known here; "
            "`rds-migrations status --env mine` reads it from the history") in said, said[-3000:]
    assert "rds-migrations restore --env mine --snapshot-id rdsm-mine-" in said, said[-3000:]
    assert "nothing to restore" not in said, said[-3000:]
    # The summary does not make up what it could not read: neither "applied: none" nor the plan as still pending.
    assert ("  applied:    not known: the history could not be read (`rds-migrations status --env mine` reads it)"
            in said), said[-3000:]
    assert "  pending:    not known: the history could not be read" in said, said[-3000:]
    assert applied_ids(database) == ["0001.a"]  # 0002.slow was rolled back by the server
