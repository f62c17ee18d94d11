"""fetch-secret: RDS secrets from Secrets Manager over real HTTP to the AWS API emulator."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest
from pydantic import SecretStr

from tasks.engine.aws import aws_client
from tasks.engine.connection import connected, connection_from_url, parse_rds_secret
from tasks.engine.credentials import read_secrets_manager, read_url_from_env
from tasks.engine.environments import AwsSettings, SecretsManagerCredentials, UrlFromEnvCredentials
from tasks.engine.errors import ConfigError, DatabaseUnreachable, SecretError
from tasks.engine.server_binaries import free_port
from tests.conftest import CANARY_PASSWORD

GOOD = {"username": "app", "password": CANARY_PASSWORD, "host": "db.internal", "port": 5432, "dbname": "app"}


def put_secret(endpoint: str, name: str, **value: object) -> None:
    client = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=endpoint)
    client.create_secret(Name=name, **value)


def read(endpoint: str, name: str, make_client=aws_client):
    """Through the client the runs hand in: plain boto3 outside Prefect, or the prefect-aws block's."""
    client = make_client("secretsmanager", AwsSettings(region="eu-west-1", endpoint_url=endpoint))
    return read_secrets_manager(SecretsManagerCredentials(kind="secrets_manager", secret_id=name), client)


def test_reads_the_rds_secret_with_a_string_port(aws_endpoint: str) -> None:
    put_secret(aws_endpoint, "rds/app", SecretString=json.dumps({**GOOD, "port": "6543"}))
    connection = read(aws_endpoint, "rds/app")
    assert (connection.host, connection.port, connection.dbname, connection.user) == ("db.internal", 6543, "app", "app")
    assert connection.password.get_secret_value() == CANARY_PASSWORD
    assert CANARY_PASSWORD not in repr(connection) and CANARY_PASSWORD not in str(connection)
    assert CANARY_PASSWORD not in connection.model_dump_json()


def test_the_prefect_aws_block_client_reads_it_too(aws_endpoint: str) -> None:
    from tasks.aws import aws_client as block_client

    put_secret(aws_endpoint, "rds/block", SecretString=json.dumps(GOOD))
    assert read(aws_endpoint, "rds/block", block_client).password.get_secret_value() == CANARY_PASSWORD


def test_reads_secret_binary(aws_endpoint: str) -> None:
    put_secret(aws_endpoint, "rds/binary", SecretBinary=json.dumps(GOOD).encode())
    assert read(aws_endpoint, "rds/binary").port == 5432


def test_reads_only_awscurrent(aws_endpoint: str) -> None:
    put_secret(aws_endpoint, "rds/rotating", SecretString=json.dumps(GOOD))
    client = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=aws_endpoint)
    client.put_secret_value(SecretId="rds/rotating", SecretString=json.dumps({**GOOD, "host": "pending.internal"}),
                            VersionStages=["AWSPENDING"])
    assert read(aws_endpoint, "rds/rotating").host == "db.internal"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "host"}), "'host'"),
        (json.dumps({k: v for k, v in GOOD.items() if k not in ("password", "dbname")}), "'password', 'dbname'"),
        (json.dumps({**GOOD, "port": "five"}), "field 'port' must be a whole number"),
        (json.dumps({**GOOD, "port": 70000}), "field 'port' is out of range"),
        (json.dumps({**GOOD, "username": 42}), "field 'username' must be a string"),
    ],
)
def test_malformed_secrets_name_the_field_never_the_value(aws_endpoint: str, value: str, expected: str) -> None:
    put_secret(aws_endpoint, "rds/bad", SecretString=value)
    with pytest.raises(SecretError) as raised:
        read(aws_endpoint, "rds/bad")
    assert expected in str(raised.value)
    assert "secretsmanager:rds/bad" in str(raised.value)
    assert CANARY_PASSWORD not in str(raised.value)


def test_missing_secret_is_a_clear_aws_error(aws_endpoint: str) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        read(aws_endpoint, "rds/nothing-here")


def test_url_from_env_keeps_the_password_out_of_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import quote

    monkeypatch.setenv("APP_DB", f"postgresql://app:{quote(CANARY_PASSWORD, safe='')}@db:5433/app")
    connection = read_url_from_env(UrlFromEnvCredentials(kind="url_env", variable="APP_DB"))
    assert connection.password.get_secret_value() == CANARY_PASSWORD
    assert (connection.host, connection.port) == ("db", 5433)
    assert CANARY_PASSWORD not in repr(connection)
    with pytest.raises(ConfigError, match="APP_DB_MISSING is not set"):
        read_url_from_env(UrlFromEnvCredentials(kind="url_env", variable="APP_DB_MISSING"))


def test_an_unset_url_variable_is_a_configuration_error_with_the_next_step(tmp_path: Path) -> None:
    """An environment whose `url_env` variable is not set ended `environment variable MINE_URL is not set`, exit 1
    (a failed run): it is configuration (exit 2), named with its environment and what to do next."""
    from tests.helpers import cli, shipped_environments_and, write_migrations

    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint);\n"})
    environments = shipped_environments_and(tmp_path, """
[environments.mine]
tier = "staging"
credentials = { kind = "url_env", variable = "MINE_URL" }
snapshot = { kind = "none" }
notify = { kind = "console" }
""")
    env = {key: value for key, value in os.environ.items() if key != "MINE_URL"}
    planned = cli("plan", "--env", "mine", cwd=tmp_path, env={**env, "RDS_MIGRATIONS_ENVIRONMENTS": str(environments)})
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert "environment mine: MINE_URL is not set" in planned.stderr
    assert "export MINE_URL=postgresql://" in planned.stderr and "--database-url URL" in planned.stderr


def test_a_bad_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(SecretError) as raised:
        connection_from_url(f"postgresql://u:{CANARY_PASSWORD}@h/d?bogus=1", "env:X")
    assert CANARY_PASSWORD not in str(raised.value)


def test_parse_rejects_boolean_port() -> None:
    with pytest.raises(SecretError, match="port"):
        parse_rds_secret(json.dumps({**GOOD, "port": True}), "s")


def test_no_program_the_tool_starts_inherits_a_database_url_or_password(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded server runs as another user and a superuser of it can read its environment
    (`pg_read_binary_file('/proc/<pid>/environ')`): it, pg_dump, squawk and git get none of the run's URLs."""
    from tasks.engine.embedded import LocalServer
    from tasks.engine.processes import child_environment

    url = f"postgresql://app:{quote(CANARY_PASSWORD, safe='')}@db.internal:5432/app"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("STAGING_DB", f"  {url.replace('postgresql', 'POSTGRES', 1)}")  # a url_env variable
    monkeypatch.setenv("PGPASSWORD", CANARY_PASSWORD)
    monkeypatch.setenv("KEYWORDS_DB", f"host=db user=app password='{CANARY_PASSWORD}' dbname=app")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-canary-key")  # pg_dump may keep it; the server may not
    inherited = child_environment(PGCONNECT_TIMEOUT="2")
    assert {"DATABASE_URL", "STAGING_DB", "PGPASSWORD", "KEYWORDS_DB"}.isdisjoint(inherited)
    assert inherited["PGCONNECT_TIMEOUT"] == "2" and inherited["PATH"] == os.environ["PATH"]
    server = LocalServer(tmp_path / "postgres")
    server.start()
    try:
        postmaster = int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
        environ = Path(f"/proc/{postmaster}/environ").read_bytes().decode(errors="replace")
        # Nor can another local user log in as its superuser: a password made for it, readable by us alone.
        assert server.password_file.stat().st_mode & 0o777 == 0o600
        with connected(server.connection()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        without = server.connection().model_copy(update={"password": SecretStr("")})
        with pytest.raises(DatabaseUnreachable, match="password"), connected(without):
            pass
    finally:
        server.destroy()
    assert "PATH=" in environ and "aws-canary-key" not in environ and "AWS_" not in environ
    assert quote(CANARY_PASSWORD, safe="") not in environ and CANARY_PASSWORD not in environ
    assert not server.password_file.exists()  # a throwaway server's password goes with it


@pytest.mark.parametrize("form", [
    CANARY_PASSWORD, CANARY_PASSWORD.replace("'", "''"), quote(CANARY_PASSWORD, safe=""),
    CANARY_PASSWORD.replace("\\", "\\\\").replace("'", "\\'"),
])
def test_a_password_is_redacted_in_every_form_sql_and_urls_write_it(form: str) -> None:
    from tasks.engine.errors import redact

    assert redact(f"statement 2 of 2: CREATE ROLE x PASSWORD '{form}'", CANARY_PASSWORD) == \
        "statement 2 of 2: CREATE ROLE x PASSWORD '**********'"


def test_an_aws_credentials_block_never_saved_is_a_config_error_naming_it(prefect_api: None) -> None:
    """The shipped staging and production environments name blocks: a person who has not saved them gets one
    line saying which and how (exit 2), not Prefect's ValueError and a traceback."""
    from tasks.aws import aws_client
    from tasks.engine.errors import ConfigError

    settings = AwsSettings(region="eu-west-1", credentials_block="aws-never-saved")
    with pytest.raises(ConfigError, match="the AWS credentials block 'aws-never-saved'") as raised:
        aws_client("secretsmanager", settings)
    assert raised.value.exit_code == 2 and "--database-url" in str(raised.value)


def test_a_password_file_someone_else_could_read_or_plant_is_refused(tmp_path: Path) -> None:
    """The embedded server's data may live under /tmp at a name easy to guess: a password file there that is
    not this user's alone was not made by us, and is not used."""
    from tasks.engine.embedded import LocalServer
    from tasks.engine.errors import EmbeddedServerError

    server = LocalServer(tmp_path / "postgres")
    try:
        made = server._secret(make=True)
        assert made is not None and server.password_file.stat().st_mode & 0o777 == 0o600
        assert server._secret(make=True) == made  # made once, read after
        assert LocalServer(tmp_path / "postgres")._secret() == made  # as a later command reads it
        server.password_file.chmod(0o644)
        with pytest.raises(EmbeddedServerError, match="is not this user's alone"):
            LocalServer(tmp_path / "postgres")._secret()
    finally:
        server.destroy()


def test_an_embedded_server_an_earlier_version_made_without_a_password_gets_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Earlier versions made the embedded server with `initdb --auth=trust`: any local user could log in over
    TCP as its superuser. Started by this version, it gets a password (kept as a new server's is) and asks for
    it; what it holds stays."""
    from tasks.engine.embedded import LocalServer

    server = LocalServer(tmp_path / "postgres")
    try:
        server._prepare_directory()  # as the earlier version made it
        server._run("initdb", "-D", str(server.data_dir), "-U", "postgres", "-E", "UTF8", "--locale=C", "--auth=trust")
        assert not server.password_file.exists()
        server._start(free_port())
        with connected(server.connection()) as conn:  # trusted: no password at all
            conn.execute("CREATE TABLE kept (id int)")
        server.stop()

        later = LocalServer(tmp_path / "postgres")  # the next command, by this version
        with caplog.at_level(logging.WARNING, logger="tasks.engine.embedded"):
            later.start()
        assert "made by an earlier version" in caplog.text and str(later.password_file) in caplog.text
        assert later.password_file.stat().st_mode & 0o777 == 0o600
        without = later.connection().model_copy(update={"password": SecretStr("")})
        deadline = time.monotonic() + 30  # `pg_ctl reload` signals the server; it rereads pg_hba.conf soon after
        while True:
            try:
                with connected(without):
                    assert time.monotonic() < deadline, "still let in without a password"
                    time.sleep(0.1)
            except DatabaseUnreachable as refused:
                assert "password" in str(refused)
                break
        with connected(later.connection()) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
            assert conn.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = "
                                "'postgres'").fetchone() == (True,)
        assert "trust" not in [line.split()[-1] for line in (later.data_dir / "pg_hba.conf").read_text().splitlines()
                               if line.startswith("host")]
        later.start()  # once only: already asking, nothing more to do
        assert caplog.text.count("made by an earlier version") == 1
    finally:
        server.destroy()


@pytest.mark.parametrize(("line", "upgraded"), [
    ("host all all 127.0.0.1/32 trust", "host all all 127.0.0.1/32 scram-sha-256"),
    ("host all all ::1/128 trust  # IPv6", "host all all ::1/128 scram-sha-256"),
    ("hostssl all all 127.0.0.1 255.255.255.255 trust", "hostssl all all 127.0.0.1 255.255.255.255 scram-sha-256"),
    ("host all all ::1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff trust",
     "host all all ::1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff scram-sha-256"),
    ('host "app#1" all 127.0.0.1/32 trust', 'host "app#1" all 127.0.0.1/32 scram-sha-256'),
    ('host all "ops team" samehost trust', 'host all "ops team" samehost scram-sha-256'),
    ("# host all all 127.0.0.1/32 trust", None),
    ("local all all trust", None),
    ("host all all 127.0.0.1/32 md5  # trust", None),
])
def test_the_upgrade_asks_a_password_on_every_tcp_trust_line_and_leaves_the_rest(line: str, upgraded: str | None
                                                                                 ) -> None:
    """pg_hba.conf as a person may have edited it: a netmask (IPv4 or IPv6) after the address, a quoted field
    holding `#` or a space, comments. Only a TCP line's `trust` method changes."""
    from tasks.engine.embedded import _asking

    assert _asking(line) == (upgraded or line)
