"""A failing migration's message travels (console, Slack, events, artifacts, the history's dirty marks): it never
carries the values of a row, which are personal data. PostgreSQL quotes them in the DETAIL of an integrity error
and in the text of a data error; the rest of what the server says stays."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.engine.connection import Connection, connected
from tasks.engine.errors import ROW_VALUES_LEFT_OUT
from tests.helpers import cli, url_of, write_migrations

CANARY = "+1555-CANARY-0199"  # a phone number in a row: no migration names it

USERS = ("CREATE TABLE users (id bigint PRIMARY KEY, phone text, locale text, email text NOT NULL "
         "CHECK (email LIKE '%@%'));\n")


def _run(project: Path, database: Connection) -> str:
    result = cli("run", "--database-url", url_of(database), "--json", cwd=project)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout + result.stderr


CHECK_FAILS = "UPDATE users SET email = 'not-an-email';\n"  # 23514: Failing row contains (1, +1555-CANARY-0199, ...)
NOT_NULL_FAILS = "UPDATE users SET email = NULL;\n"  # 23502: Failing row contains (...)
DUPLICATED = ("-- transactional: false\n"  # 23505: Key (phone)=(+1555-CANARY-0199) is duplicated.
              "CREATE UNIQUE INDEX CONCURRENTLY users_phone ON users (phone);\n")
NOT_A_NUMBER = ("-- squawk-ignore changing-column-type\n"  # 22P02: invalid input syntax for type bigint: "+1555..."
                "ALTER TABLE users ALTER COLUMN phone TYPE bigint USING phone::bigint;\n")


@pytest.mark.parametrize(("failing", "sqlstate"), [(CHECK_FAILS, "23514"), (NOT_NULL_FAILS, "23502"),
                                                   (DUPLICATED, "23505"), (NOT_A_NUMBER, "22P02")])
def test_a_failure_never_repeats_the_values_of_a_row(tmp_path: Path, database: Connection, failing: str,
                                                      sqlstate: str) -> None:
    write_migrations(tmp_path, {"0001.users.sql": USERS})
    assert cli("run", "--database-url", url_of(database), cwd=tmp_path).returncode == 0
    with connected(database) as conn:
        conn.execute("INSERT INTO users VALUES (1, %s, NULL, 'a@example.com'), (2, %s, NULL, 'b@example.com')",
                     (CANARY, CANARY))
    write_migrations(tmp_path, {"0002.fails.sql": failing})
    said = _run(tmp_path, database)
    # nor a piece of it; a duration such as 0.20199 s is not one
    assert CANARY not in said and not re.search(r"(?<![\d.])0199", said), said
    assert sqlstate in said and ROW_VALUES_LEFT_OUT in said  # what failed is said, and where to see the rest


def test_a_detail_without_a_row_is_kept(tmp_path: Path, database: Connection) -> None:
    """DROP TABLE of a table a view uses: the DETAIL names the view, which is what to do next."""
    write_migrations(tmp_path, {"0001.users.sql": USERS + "CREATE VIEW user_emails AS SELECT email FROM users;\n",
                                "0002.drop.sql": "-- squawk-ignore ban-drop-table\nDROP TABLE users;\n"})
    result = cli("run", "--database-url", url_of(database), "--json", cwd=tmp_path)
    assert result.returncode == 1
    failed = json.loads(result.stdout)
    assert "view user_emails depends on table users" in json.dumps(failed)
