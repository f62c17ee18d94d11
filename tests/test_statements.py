"""What a statement does, read with PostgreSQL's own lexer and parser (tasks/engine/migrations/statements.py):
what reaches beyond one database, what cannot run inside a transaction block, and which index a `CREATE INDEX
CONCURRENTLY` builds. (Where a rehearsal runs because of the first: tests/test_rehearsal_place.py.)"""

from __future__ import annotations

import pytest

from tasks.engine.migrations.statements import (
    cluster_wide,
    concurrent_index,
    may_be_refused_in_transaction,
    named_schemas,
    refused_in_transaction,
)


@pytest.mark.parametrize(("statement", "words"), [
    ("CREATE ROLE app NOLOGIN", "CREATE ROLE"),
    ("create user app password 'x'", "CREATE ROLE"),
    ("CREATE GROUP readers", "CREATE ROLE"),
    ("ALTER ROLE app SET search_path = app", "ALTER ROLE"),
    ("ALTER USER app WITH CONNECTION LIMIT 5", "ALTER ROLE"),
    ("DROP ROLE IF EXISTS app", "DROP ROLE"),
    ("GRANT readers TO app", "GRANT/REVOKE role membership"),  # no keyword: the parse decides
    ("REVOKE readers FROM app", "GRANT/REVOKE role membership"),
    ("CREATE TABLESPACE fast LOCATION '/ssd'", "CREATE TABLESPACE"),
    ("ALTER TABLESPACE fast SET (random_page_cost = 1)", "ALTER TABLESPACE"),
    ("CREATE DATABASE other", "CREATE DATABASE"),
    ("ALTER DATABASE app SET timezone = 'UTC'", "ALTER DATABASE"),
    ("ALTER DATABASE app RENAME TO app2", "ALTER DATABASE ... RENAME"),
    ("ALTER DATABASE app OWNER TO owner", "ALTER DATABASE ... OWNER"),
    ("alter system set work_mem = '64MB'", "ALTER SYSTEM"),
    ("COMMENT ON ROLE app IS 'the application'", "COMMENT/SECURITY LABEL ON ROLE"),
    ("SECURITY LABEL FOR selinux ON DATABASE app IS 'x'", "COMMENT/SECURITY LABEL ON DATABASE"),
    ("CREATE TABLE roles (id bigint, role text, \"database\" text, user_id bigint)", None),  # parsed: not one
    ("CREATE TABLE t (id bigint DEFAULT 1, owner text DEFAULT current_user)", None),
    ("GRANT SELECT ON users TO readers", None),
    ("ALTER TABLE users OWNER TO app", None),
    ("COMMENT ON TABLE users IS 'every user, role and database'", None),
    ("CREATE USER MAPPING FOR app SERVER remote", None),
    ("CREATE TABLE t (note text DEFAULT 'unterminated", None),  # unreadable: left to the server
])
def test_what_reaches_beyond_one_database_is_found_by_the_parser(statement: str, words: str | None) -> None:
    assert cluster_wide(statement) == words


@pytest.mark.parametrize(("statement", "words"), [
    ("CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_idx ON users (email)", "CREATE INDEX CONCURRENTLY"),
    ("create unique index\n  concurrently u ON t (x)", "CREATE UNIQUE INDEX CONCURRENTLY"),
    ("DROP INDEX CONCURRENTLY IF EXISTS app.users_email_idx", "DROP INDEX CONCURRENTLY"),
    ("REINDEX INDEX CONCURRENTLY users_email_key", "REINDEX INDEX CONCURRENTLY"),
    ("REINDEX (VERBOSE, CONCURRENTLY) TABLE users", "REINDEX TABLE CONCURRENTLY"),
    ("REINDEX DATABASE app", "REINDEX DATABASE"),
    ("REINDEX SCHEMA public", "REINDEX SCHEMA"),
    ("ALTER DATABASE app SET TABLESPACE fast", "ALTER DATABASE ... SET TABLESPACE"),
    ("CLUSTER", "CLUSTER"),
    ("CLUSTER VERBOSE", "CLUSTER"),
    ("DISCARD ALL", "DISCARD ALL"),
    ("REINDEX SYSTEM app", "REINDEX SYSTEM"),
    ("ALTER TABLE events DETACH PARTITION events_2020 CONCURRENTLY", "ALTER TABLE ... DETACH PARTITION CONCURRENTLY"),
    ("VACUUM (ANALYZE) users", "VACUUM"),
    ("vacuum full", "VACUUM"),
    ("CREATE DATABASE reports", "CREATE DATABASE"),
    ("DROP DATABASE IF EXISTS reports", "DROP DATABASE"),
    ("ALTER SYSTEM SET work_mem = '64MB'", "ALTER SYSTEM"),
    ("CREATE TABLESPACE fast LOCATION '/ssd'", "CREATE TABLESPACE"),
    ("DROP TABLESPACE fast", "DROP TABLESPACE"),
    # Run inside one, or only look alike:
    ("REINDEX TABLE users", None),
    ("CLUSTER users USING users_pkey", None),
    ("DISCARD PLANS", None),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY monthly_totals", None),
    ("ANALYZE users", None),
    ("ALTER TABLE events DETACH PARTITION events_2020", None),
    ("CREATE INDEX users_email_idx ON users (email)", None),
    ("CREATE TABLE database (system text, concurrently text)", None),
    ("SELECT 'DROP INDEX CONCURRENTLY x'", None),
    ("-- CREATE INDEX CONCURRENTLY i ON t (x)\nCREATE INDEX i ON t (x)", None),
    ("DO $$ BEGIN EXECUTE 'VACUUM users'; END $$", None),
    ("ALTER DATABASE app SET work_mem = '8MB'", None),
    ("CREATE INDEX CONCURRENTLY i ON t (x", None),  # unreadable: left to the server
])
def test_what_cannot_run_in_a_transaction_block_is_found_by_the_parser(statement: str, words: str | None) -> None:
    assert refused_in_transaction(statement) == words
    assert may_be_refused_in_transaction(statement) or words is None  # lint's text search never skips one


@pytest.mark.parametrize(("statement", "index"), [
    ("CREATE INDEX CONCURRENTLY users_email_idx ON users (email)", ("users_email_idx", '"users"')),
    ("create unique index concurrently if not exists Users_Email ON App.Users (email)",
     ("users_email", '"app"."users"')),  # unquoted names fold to lower case, as the server stores them
    ('CREATE INDEX CONCURRENTLY "Odd ""Name""" ON ONLY "My Schema"."My Table" (x)',
     ('Odd "Name"', '"My Schema"."My Table"')),
    ("/* build it */ CREATE INDEX\n  CONCURRENTLY i\n  ON t USING gin (doc)", ("i", '"t"')),
    ("CREATE INDEX CONCURRENTLY ON users (email)", None),  # unnamed: cannot be found again by name
    ("CREATE INDEX users_email_idx ON users (email)", None),
    ("DROP INDEX CONCURRENTLY users_email_idx", None),
    ("SELECT 'CREATE INDEX CONCURRENTLY i ON t (x)'", None),
])
def test_the_index_a_concurrent_build_names_is_read_by_the_parser(statement: str,
                                                                  index: tuple[str, str] | None) -> None:
    assert concurrent_index(statement) == index


@pytest.mark.parametrize(("statement", "schemas"), [
    ("CREATE SCHEMA app", {"app"}),
    ('create schema if not exists "App" authorization owner', {"App"}),
    ("CREATE SCHEMA AUTHORIZATION joe", {"joe"}),  # named after the role
    ("DROP SCHEMA IF EXISTS public, legacy CASCADE", {"public", "legacy"}),
    ("-- CREATE SCHEMA no\nCREATE TABLE app.t (id int)", set()),
    ("DROP TABLE app.t", set()),
    ("SELECT 'CREATE SCHEMA x'", set()),
])
def test_the_schemas_a_statement_creates_or_drops_are_read_by_the_parser(statement: str, schemas: set[str]) -> None:
    assert named_schemas(statement) == schemas


@pytest.mark.parametrize("text", [
    "CREATE TABLE café (nom text DEFAULT 'été');\n-- a comment: déjà vu; still a comment\nINSERT INTO café VALUES "
    "('naïve; not a statement end');\n",
    "SELECT E'\\é12; still the string', U&'d\\0061t\\+000061 é;'; /* nested /* é; */ é; */ SELECT 1;\n",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$ SELECT 'é; x' $body$;\nSELECT\u00a0f();\n",
    "SELECT $é$ one; $è$ still one $é$; SELECT 2;\n",  # tags with non-ASCII letters: split as written
    "SELECT 'plain ascii'; SELECT 2;\n",
])
def test_statements_are_split_where_the_scanner_splits_them_whatever_characters_they_hold(text: str) -> None:
    """Non-ASCII characters are stood in for by ASCII letters before pglast splits (it maps offsets slowly when
    there are many): the statements found are exactly those PostgreSQL's scanner finds in the text as written."""
    import pglast

    from tasks.engine.migrations.split import statement_slices

    assert statement_slices(text) == list(pglast.split(text, with_parser=False, only_slices=True))
