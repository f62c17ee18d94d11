"""A database URL whose password holds an unquoted `/`: libpq ends the host at the `/`, so the password's tail
(and the real host) become the database name. Refused before any connection, naming no part of the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.engine.connection import connection_from_url
from tasks.engine.errors import SecretError
from tests.helpers import cli

QUOTE_IT = "a password with @, :, /, ? or # must be URL-quoted (/ is %2F, @ is %40)"


@pytest.mark.parametrize("url", [
    "postgresql://app:Tr0ub4dor@3/horse-staple@db.internal:5432/app",  # @ then /: the host became "3"
    "postgresql://app:Ab/Cd+horse-staple==@db.internal:5432/app",      # / alone (base64): the port became "Ab"
    "postgres://app:x/horse-staple@db.internal/app?sslmode=require",
])
def test_a_password_with_an_unquoted_slash_is_refused_naming_no_part_of_it(url: str) -> None:
    with pytest.raises(SecretError) as raised:
        connection_from_url(url, "env:DATABASE_URL")
    said = str(raised.value)
    assert said.startswith("env:DATABASE_URL: ") and QUOTE_IT in said, said
    assert "horse" not in said and "staple" not in said, said
    quoted = connection_from_url("postgresql://app:Tr0ub4dor%403%2Fhorse@db.internal:5432/app", "env:X")
    assert (quoted.host, quoted.dbname) == ("db.internal", "app")
    assert quoted.password.get_secret_value() == "Tr0ub4dor@3/horse"
    assert connection_from_url("postgresql://app:pw@db/we%40rd", "env:X").dbname == "we@rd"  # a quoted @ is a name


def test_the_command_line_refuses_it_before_connecting_and_never_prints_the_password(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001.a.sql").write_text("CREATE TABLE a (id bigint);\n")
    url = "postgresql://app:Tr0ub4dor@3/horse-staple@127.0.0.1:1/app"
    for args, env in ((("status", "--database-url", url), {}), (("run",), {"DATABASE_URL": url})):
        result = cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert QUOTE_IT in result.stderr and "cannot connect" not in result.stderr, result.stderr
        assert "horse" not in result.stdout + result.stderr and "Tr0ub4dor" not in result.stdout + result.stderr
