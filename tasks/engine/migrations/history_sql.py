"""The history tables and every statement that reads or writes them, kept as SQL. Table names are
placeholders (`{migration}`, `{history}`, ...) that `Ledger.open` fills in, schema-qualified, once per
session; `%(name)s` and `%s` are psycopg's parameters. yoyo's tables are created exactly as yoyo 9 does, so
`yoyo list` still reads them."""

from __future__ import annotations

import socket

HOSTNAME = socket.gethostname()[:255]  # for yoyo's log rows: read once, not once per migration

HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS {migration} (
    migration_hash VARCHAR(64), migration_id VARCHAR(255), applied_at_utc TIMESTAMP,
    PRIMARY KEY (migration_hash));
CREATE TABLE IF NOT EXISTS {log} (
    id VARCHAR(36), migration_hash VARCHAR(64), migration_id VARCHAR(255), operation VARCHAR(10),
    username VARCHAR(255), hostname VARCHAR(255), comment VARCHAR(255), created_at_utc TIMESTAMP,
    PRIMARY KEY (id));
CREATE TABLE IF NOT EXISTS {version} (version INT NOT NULL PRIMARY KEY, installed_at_utc TIMESTAMP);
INSERT INTO {version} (version, installed_at_utc)
    VALUES (2, now() AT TIME ZONE 'utc') ON CONFLICT (version) DO NOTHING;
CREATE TABLE IF NOT EXISTS {lock} (
    locked INT DEFAULT 1, ctime TIMESTAMP, pid INT NOT NULL, PRIMARY KEY (locked));
CREATE TABLE IF NOT EXISTS {history} (
    migration_id VARCHAR(255) PRIMARY KEY,
    checksum CHAR(64) NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    git_sha TEXT,
    flow_run_id TEXT,
    duration_ms INTEGER,
    transactional BOOLEAN NOT NULL DEFAULT true);
CREATE TABLE IF NOT EXISTS {dirty} (
    migration_id VARCHAR(255) PRIMARY KEY,
    state TEXT NOT NULL,                         -- running | failed | recording
    statement_number INTEGER NOT NULL DEFAULT 0, -- the statement being run, 1-based
    statement_count INTEGER NOT NULL,
    checksum CHAR(64) NOT NULL,
    sqlstate TEXT,
    message TEXT,
    git_sha TEXT,
    flow_run_id TEXT,
    backend_pid INTEGER NOT NULL DEFAULT pg_backend_pid(),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
-- statements 1..applied_through are applied (a failure inside the migration's own transaction undoes more).
-- invalid_before: the INVALID indexes ("oid name") there when the mark was written, none of them its leftover.
-- Added only where it is missing: ALTER TABLE needs the table's owner even when the column is there, and another
-- login with every right on the tables may run the tool.
DO $rdsm$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass({dirty_name})
                   AND attname = 'applied_through' AND NOT attisdropped) THEN
        ALTER TABLE {dirty} ADD COLUMN applied_through INTEGER;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass({dirty_name})
                   AND attname = 'invalid_before' AND NOT attisdropped) THEN
        BEGIN
            ALTER TABLE {dirty} ADD COLUMN invalid_before TEXT[];
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;  -- not the tables' owner: marks are written without it (every INVALID index counts)
        END;
    END IF;
END $rdsm$;
-- What `baseline` adopted: the schema as it was (pg_dump --schema-only, custom format) and the migrations it
-- recorded as applied without running them. Drift's reference is this schema plus the migrations since.
CREATE TABLE IF NOT EXISTS {baseline} (
    id SERIAL PRIMARY KEY,
    adopted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    adopted_by TEXT NOT NULL DEFAULT current_user,
    hostname TEXT,
    tool TEXT,                                   -- knex | flyway | golang-migrate | NULL (--through)
    through TEXT,                                -- the last migration recorded, or '0'
    migrations JSONB NOT NULL,                   -- the ids recorded as applied by this baseline
    git_sha TEXT,
    flow_run_id TEXT,
    schema_dump BYTEA NOT NULL);
-- The schema the applied migrations make, remembered for a state of history (drift's reference, read fast).
CREATE TABLE IF NOT EXISTS {schema} (
    state_key TEXT PRIMARY KEY,
    snapshot JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now());
"""

# The yoyo rows and our checksum row, in one statement (one round trip, inside the migration's transaction).
# The time is the clock's, not the transaction's start: migrations sent in one message share that, and their
# order is read from it. Without a duration given, the server's: from the migration's own BEGIN (the starting
# state sets rdsm.started, as epoch seconds whatever DateStyle a migration left), else from the message.
RECORD_SQL = """
WITH migration AS (
    INSERT INTO {migration} (migration_hash, migration_id, applied_at_utc)
    VALUES (%(hash)s, %(id)s, clock_timestamp() AT TIME ZONE 'utc') RETURNING 1
), log AS (
    INSERT INTO {log} (id, migration_hash, migration_id, operation, username, hostname, comment,
                           created_at_utc)
    VALUES (%(log_id)s, %(hash)s, %(id)s, %(operation)s, current_user, %(hostname)s, %(comment)s,
            clock_timestamp() AT TIME ZONE 'utc') RETURNING 1
)
INSERT INTO {history} (migration_id, checksum, applied_at, git_sha, flow_run_id, duration_ms, transactional)
VALUES (%(id)s, %(checksum)s, clock_timestamp(), %(git_sha)s, %(run_id)s,
        COALESCE(%(duration_ms)s, (1000 * (extract(epoch FROM clock_timestamp()) - COALESCE(
            NULLIF(current_setting('rdsm.started', true), '')::numeric,
            extract(epoch FROM statement_timestamp()))))::int),
        %(transactional)s)
ON CONFLICT (migration_id) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = EXCLUDED.applied_at,
    git_sha = EXCLUDED.git_sha, flow_run_id = EXCLUDED.flow_run_id, duration_ms = EXCLUDED.duration_ms
RETURNING duration_ms
"""

RECORD_PARAMETERS = ("hash", "id", "log_id", "operation", "hostname", "comment", "checksum", "git_sha", "run_id",
                     "duration_ms", "transactional")

# The same statement prepared once per apply session: a migration's message then carries only `EXECUTE` and
# the server skips parsing and planning the three inserts every time.
PREPARE_RECORD_SQL = "PREPARE rdsm_record AS " + RECORD_SQL % {
    name: f"${number}" for number, name in enumerate(RECORD_PARAMETERS, 1)}

EXECUTE_RECORD_SQL = "EXECUTE rdsm_record ({})".format(", ".join(f"%({name})s" for name in RECORD_PARAMETERS))

MARK_DIRTY_SQL = """
INSERT INTO {dirty} (migration_id, state, statement_count, checksum, git_sha, flow_run_id, invalid_before)
VALUES (%(id)s, 'running', %(count)s, %(checksum)s, %(git_sha)s, %(run_id)s, ARRAY(
    SELECT i.indexrelid::text || ' ' || c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE NOT i.indisvalid))
"""
# Where the table has no invalid_before column (made by an earlier version, and this login may not add it).
MARK_DIRTY_PLAIN_SQL = """
INSERT INTO {dirty} (migration_id, state, statement_count, checksum, git_sha, flow_run_id)
VALUES (%(id)s, 'running', %(count)s, %(checksum)s, %(git_sha)s, %(run_id)s)
"""
HAS_INVALID_BEFORE_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass({dirty_name})
               AND attname = 'invalid_before' AND NOT attisdropped)
"""

PROGRESS_SQL = """
UPDATE {dirty} SET state = %s, statement_number = %s, sqlstate = %s, message = %s,
    applied_through = %s, updated_at = now()
WHERE migration_id = %s
"""

CLEAR_DIRTY_SQL = "DELETE FROM {dirty} WHERE migration_id = %s"
# Read through to_jsonb: the column may not be there (a table an earlier version made): then NULL.
INVALID_BEFORE_SQL = "SELECT to_jsonb(d) -> 'invalid_before' FROM {dirty} d WHERE migration_id = %s"

# A mark whose session still holds the migration lock belongs to a run in progress, not to a dead one.
DIRTY_SQL = """
SELECT d.migration_id, d.state, d.statement_number, d.statement_count, d.checksum, d.sqlstate, d.message,
       d.flow_run_id, d.started_at, d.applied_through, to_jsonb(d) -> 'invalid_before'
FROM {dirty} d
WHERE NOT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.pid = d.backend_pid AND l.locktype = 'advisory' AND l.granted
      AND ((l.classid::bigint << 32) | l.objid::bigint) = %s)
ORDER BY d.started_at
"""
READ_APPLIED_SQL = "SELECT migration_id FROM {migration} ORDER BY applied_at_utc, migration_id"
READ_CHECKSUMS_SQL = "SELECT migration_id, checksum FROM {history}"
RECORD_UNVERIFIED_SQL = """
INSERT INTO {history} (migration_id, checksum, transactional, git_sha) VALUES (%s, %s, %s, 'adopted')
ON CONFLICT (migration_id) DO NOTHING
"""
# An operator's word (resolve --mark-applied) that the file is the one applied, its checksum row having been
# deleted by hand: the row again, as resolve's (not a baseline's adoption), and a log row saying it was marked.
RECORD_MARKED_CHECKSUM_SQL = """
WITH log AS (
    INSERT INTO {log} (id, migration_hash, migration_id, operation, username, hostname, comment, created_at_utc)
    VALUES (%(log_id)s, %(hash)s, %(id)s, 'mark', current_user, %(hostname)s, 'rds-migrations resolve --mark-applied',
            clock_timestamp() AT TIME ZONE 'utc') RETURNING 1
)
INSERT INTO {history} (migration_id, checksum, transactional, git_sha)
VALUES (%(id)s, %(checksum)s, %(transactional)s, 'resolved')
ON CONFLICT (migration_id) DO NOTHING
"""
# Our tables exist where yoyo's do: found by the name yoyo gives them, wherever the session looks first.
SCHEMA_SQL = """
SELECT coalesce(
    (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relname = '_yoyo_migration' AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)),
    (SELECT min(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relname = '_yoyo_migration' AND c.relkind IN ('r', 'p')
     HAVING count(*) = 1),
    current_schema(),
    'public')
"""

# A rollback: yoyo's row goes, a log row says so, and our checksum row goes.
UNRECORD_SQL = """
WITH migration AS (
    DELETE FROM {migration} WHERE migration_hash = %(hash)s RETURNING 1
), log AS (
    INSERT INTO {log} (id, migration_hash, migration_id, operation, username, hostname, comment,
                           created_at_utc)
    VALUES (%(log_id)s, %(hash)s, %(id)s, 'rollback', current_user, %(hostname)s, 'rds-migrations',
            now() AT TIME ZONE 'utc') RETURNING 1
)
DELETE FROM {history} WHERE migration_id = %(id)s
"""
# The newest log row of each migration, among `%s` (ids): yoyo's own rows have no comment, ours say so.
LATEST_LOG_SQL = """
SELECT DISTINCT ON (migration_id) migration_id, operation, coalesce(comment, '') LIKE 'rds-migrations%%'
FROM {log} WHERE migration_id = ANY(%s) ORDER BY migration_id, created_at_utc DESC
"""
# An operator's word that a migration whose history was edited by hand is not applied: both rows go.
FORGET_SQL = UNRECORD_SQL.replace("'rollback'", "'unmark'").replace(
    "'rds-migrations'", "'rds-migrations resolve --mark-not-applied'")
UNMARK_LOG_SQL = """
INSERT INTO {log} (id, migration_hash, migration_id, operation, username, hostname, comment, created_at_utc)
VALUES (%s, %s, %s, 'unmark', current_user, %s, 'rds-migrations resolve --mark-not-applied', now() AT TIME ZONE 'utc')
"""


BASELINE_SQL = """
INSERT INTO {baseline} (hostname, tool, through, migrations, git_sha, flow_run_id, schema_dump)
VALUES (%(hostname)s, %(tool)s, %(through)s, %(migrations)s, %(git_sha)s, %(run_id)s, %(dump)s)
"""
READ_BASELINE_SQL = "SELECT id, migrations, schema_dump FROM {baseline} ORDER BY id DESC LIMIT 1"
REMEMBER_SCHEMA_SQL = """
INSERT INTO {schema} (state_key, snapshot) VALUES (%s, %s)
ON CONFLICT (state_key) DO UPDATE SET snapshot = EXCLUDED.snapshot, recorded_at = now()
"""
READ_SCHEMA_SQL = "SELECT snapshot FROM {schema} WHERE state_key = %s"

# Status (read-only): every applied migration with the log row that recorded it (its apply, its mark by resolve,
# or its baseline; the newest, as a rollback and a new apply log again), and our row beside it when there is one.
READ_RECORDED_SQL = """
SELECT m.migration_id, m.applied_at_utc, l.operation, l.username, l.hostname, l.comment
FROM {migration} m
LEFT JOIN (
    SELECT DISTINCT ON (migration_hash) migration_hash, operation, username, hostname, comment
    FROM {log} WHERE operation IN ('apply', 'mark', 'baseline')
    ORDER BY migration_hash, created_at_utc DESC, id DESC
) l ON l.migration_hash = m.migration_hash
ORDER BY m.applied_at_utc, m.migration_id
"""
READ_RECORDED_NO_LOG_SQL = """
SELECT migration_id, applied_at_utc, NULL, NULL, NULL, NULL FROM {migration} ORDER BY applied_at_utc, migration_id
"""
READ_HISTORY_ROWS_SQL = "SELECT migration_id, checksum, git_sha, flow_run_id, duration_ms, transactional FROM {history}"
# What one run recorded as applied (its flow run's id on our history rows), in the order it applied them.
READ_APPLIED_BY_RUN_SQL = "SELECT migration_id FROM {history} WHERE flow_run_id = %s ORDER BY applied_at, migration_id"
