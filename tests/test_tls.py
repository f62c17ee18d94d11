"""TLS settings are honoured exactly (issue 10, item 4): what a URL or a secret asks for reaches every connection
a run opens (psycopg, the rehearsal's scratch database, pg_dump, pg_restore), anything else is refused, and an
environment's minimum raises a weaker sslmode.

The TLS server below takes TLS connections with a client certificate only, so a connection that lost any of its
settings on the way (sslmode, sslrootcert, sslcert, sslkey) is refused; a wrong root certificate shows that the
verification really happens where the settings say.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args
from urllib.parse import quote

import pytest
from pydantic import SecretStr

from tasks.engine.connection import SSL_MODES, Connection, connected, connection_from_url, parse_rds_secret
from tasks.engine.credentials import with_environment_tls
from tasks.engine.embedded import LocalServer, ServerTls
from tasks.engine.environments import Environment, PgDumpSnapshot, Policy, Rehearsal, Tls, load_environments
from tasks.engine.errors import (
    ConfigError,
    DatabaseUnreachable,
    EmbeddedServerError,
    RefreshError,
    SecretError,
    SnapshotError,
)
from tasks.engine.logs import Log
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.migrations.rehearsal import rehearse
from tasks.engine.snapshots.dumps import take_dump
from tasks.engine.snapshots.local_copies import LocalDatabases
from tasks.engine.snapshots.naming import snapshot_tags
from tasks.engine.snapshots.swap import LiveCopy, SwapPlan
from tests.conftest import CANARY_PASSWORD, fresh_database
from tests.helpers import PROJECT, cli, tables, url_of, write_migrations

integration = pytest.mark.integration  # the TLS server is this module's own, not one of conftest's services
ENCRYPTED = "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
MIGRATIONS = {
    "0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n",
    "0002.b.sql": "CREATE TABLE b (id bigint PRIMARY KEY);\n",
    "0002.b.rollback.sql": "DROP TABLE b;\n",
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ServerTls:
    return ServerTls.self_signed(tmp_path_factory.mktemp("tls") / "certs")


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The root certificate of another CA: verify-ca/verify-full against it must fail."""
    return str(ServerTls.self_signed(tmp_path_factory.mktemp("tls") / "other").directory / "ca.crt")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, certs: ServerTls) -> Iterator[LocalServer]:
    """A second PostgreSQL, TLS with a client certificate only; its superuser password is the canary too."""
    server = LocalServer(tmp_path_factory.mktemp("tls") / f"data-{uuid.uuid4().hex[:6]}",
                         password=SecretStr(CANARY_PASSWORD), tls=certs)
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def tls_database(tls_server: LocalServer) -> Iterator[Connection]:
    yield from fresh_database(tls_server)


def tls_url(connection: Connection, **tls: str) -> str:
    """The connection's URL with the given TLS parameters (by default its own) in the query string."""
    settings = tls or connection.tls()
    return url_of(connection) + "?" + "&".join(f"{key}={quote(value, safe='/')}" for key, value in settings.items())


def environment(**tls: str) -> Environment:
    return Environment.model_validate({"name": "tls-test", "tier": "staging", "credentials": {"kind": "url_env"},
                                       "snapshot": {"kind": "none"}, "notify": {"kind": "console"}, "tls": tls})


class Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


LOG: Log = Quiet()  # type: ignore[assignment]


# ---- parsing: kept, or refused by name ---------------------------------------------------------------------


def test_a_url_keeps_every_tls_setting_through_with_database_and_into_the_libpq_environment() -> None:
    url = ("postgresql://app:pw@db.internal/app?sslmode=verify-full&sslrootcert=/ca/root.pem&sslcert=/c/app.crt"
           "&sslkey=/c/app.key&sslcrl=/ca/crl.pem&sslnegotiation=direct")
    settings = {"sslmode": "verify-full", "sslrootcert": "/ca/root.pem", "sslcert": "/c/app.crt",
                "sslkey": "/c/app.key", "sslcrl": "/ca/crl.pem", "sslnegotiation": "direct"}
    connection = connection_from_url(url, "env:X")
    assert connection.tls() == settings
    assert connection.with_database("rdsm_rehearsal_x").tls() == settings  # the rehearsal's and the admin's
    env = connection.libpq_env()
    assert {env[k] for k in ("PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL",
                             "PGSSLNEGOTIATION")} == set(settings.values())
    assert "sslmode=verify-full" in connection.describe()
    plain = connection_from_url("postgresql://app:pw@db.internal/app", "env:X")
    assert plain.tls() == {} and not [k for k in plain.libpq_env() if k.startswith("PGSSL")]


@pytest.mark.parametrize(("query", "named"), [
    ("sslpassword=x", "sslpassword"),        # a secret of its own: not carried, and not dropped either
    ("sslcompression=1", "sslcompression"),
    ("sslsni=0", "sslsni"),
    ("sslfoo=1", "sslfoo"),                  # unknown to libpq itself
    ("sslmode=verify_full", "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("sslmode=", "sslmode must be a non-empty string"),
    ("sslmode=require&sslnegotiation=fast", "sslnegotiation must be one of postgres, direct"),
])
def test_an_unknown_or_unsupported_url_parameter_is_refused_by_name_without_the_password(query: str,
                                                                                          named: str) -> None:
    with pytest.raises(SecretError) as raised:
        connection_from_url(f"postgresql://app:{quote(CANARY_PASSWORD, safe='')}@db/app?{query}", "env:X")
    assert named in str(raised.value) and "env:X" in str(raised.value)
    assert CANARY_PASSWORD not in str(raised.value) and quote(CANARY_PASSWORD, safe="") not in str(raised.value)


@pytest.mark.parametrize(("url", "named"), [
    ("postgresql://app:{pw}@db/app?dbname=other", "names dbname, which the URL itself gives already"),
    ("postgresql://app:{pw}@db/app?sslmode=require&password=other", "names password, which the URL itself"),
    ("postgresql://app:{pw}@db:5433/app?port=6543", "names port, which the URL itself gives already"),
    ("postgresql://app:{pw}@db/app?user=root", "names user, which the URL itself gives already"),
    ("postgresql://app:pw@{pw}@db/app", "the URL's host holds an @: a password with @, :, /, ? or # must be"),
])
def test_a_url_that_says_one_thing_twice_or_holds_an_unquoted_at_is_refused(url: str, named: str) -> None:
    """libpq lets the query string replace the database or the password the URL names, and reads a password's
    unquoted @ as the start of the host (which an error would then print): both refused, naming no value."""
    with pytest.raises(SecretError, match=re.escape(named)) as raised:
        connection_from_url(url.format(pw=quote(CANARY_PASSWORD, safe="") if "pw@" not in url else "secret-part"),
                            "env:X")
    assert CANARY_PASSWORD not in str(raised.value) and "secret-part" not in str(raised.value)
    assert connection_from_url("postgresql:///app?host=/var/run/postgresql", "env:X").host == "/var/run/postgresql"
    bracketed = connection_from_url("postgresql://app:p[se]cret@db/app?sslmode=require", "env:X")  # libpq takes it
    assert bracketed.password.get_secret_value() == "p[se]cret" and bracketed.host == "db"


def test_an_rds_secret_may_carry_tls_fields_and_an_ssl_field_it_cannot_honour_is_refused() -> None:
    secret = {"username": "app", "password": CANARY_PASSWORD, "host": "db", "port": 5432, "dbname": "app",
              "engine": "postgres", "dbInstanceIdentifier": "app-production"}  # RDS's own extra fields: ignored
    assert parse_rds_secret(json.dumps(secret), "s").tls() == {}
    with_tls = parse_rds_secret(json.dumps({**secret, "sslmode": "verify-full", "sslrootcert": "/ca.pem"}), "s")
    assert with_tls.tls() == {"sslmode": "verify-full", "sslrootcert": "/ca.pem"}
    for field, expected in (("sslpassword", "unsupported field 'sslpassword'"), ("sslMode", "'sslMode'"),
                            ("sslmode", "sslmode must be one of")):
        with pytest.raises(SecretError) as raised:
            parse_rds_secret(json.dumps({**secret, field: "verify-fully"}), "secretsmanager:rds/x")
        assert expected in str(raised.value) and CANARY_PASSWORD not in str(raised.value)


# ---- an environment's minimum -------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "minimum", "used"), [
    (None, "require", "require"),            # an RDS secret says nothing: libpq's prefer, raised
    ("disable", "require", "require"),       # an explicit weaker mode is raised too, never refused
    ("prefer", "verify-full", "verify-full"),
    ("require", "verify-ca", "verify-ca"),
    ("verify-full", "require", "verify-full"),  # a stronger mode is kept: the minimum never lowers one
    ("verify-ca", "verify-ca", "verify-ca"),
])
def test_the_environment_minimum_raises_a_weaker_sslmode_and_never_lowers_one(
    asked: str | None, minimum: str, used: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    root = tmp_path / "bundle.pem"
    root.write_text("a CA bundle\n")
    connection = Connection(host="db", port=5432, dbname="app", user="app", sslmode=asked)
    raised = with_environment_tls(connection, environment(min_sslmode=minimum, root_cert=str(root)))
    assert raised.sslmode == used
    assert raised.sslrootcert == (str(root) if used.startswith("verify") else None)  # only where it verifies


def test_the_minimum_counts_what_pgsslmode_asks_and_a_url_root_certificate_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, own = tmp_path / "bundle.pem", tmp_path / "own.pem"
    bundle.write_text("x\n")
    own.write_text("y\n")
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    unset = Connection(host="db", port=5432, dbname="app", user="app")
    assert with_environment_tls(unset, environment(min_sslmode="require")).sslmode == "verify-full"
    asked = unset.model_copy(update={"sslmode": "verify-ca", "sslrootcert": str(own)})
    assert with_environment_tls(asked, environment(min_sslmode="verify-ca", root_cert=str(bundle))).sslrootcert \
        == str(own)
    assert with_environment_tls(unset, environment()) == unset  # no minimum: the connection as it was read


def test_a_missing_root_certificate_is_an_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "rds" / "global-bundle.pem"
    connection = Connection(host="db", port=5432, dbname="app", user="app", source="env:DATABASE_URL")
    with pytest.raises(ConfigError) as raised:
        with_environment_tls(connection, environment(min_sslmode="verify-full", root_cert=str(missing)))
    assert f"environment tls-test: tls.root_cert {missing} does not exist" in str(raised.value)
    assert raised.value.exit_code == 2
    asked = connection.model_copy(update={"sslmode": "verify-ca", "sslrootcert": str(missing)})
    with pytest.raises(ConfigError, match=f"env:DATABASE_URL: sslrootcert {missing} does not exist"):
        with_environment_tls(asked, environment())


def test_the_shipped_rds_environments_require_verify_full_against_the_rds_bundle() -> None:
    shipped = load_environments(PROJECT / "deployments/environments.toml")
    for name in ("staging", "production"):
        assert shipped[name].tls == Tls(min_sslmode="verify-full", root_cert=Path("/etc/ssl/rds/global-bundle.pem"))
    for name in ("local", "local-production", "database-url"):
        assert shipped[name].tls.min_sslmode is None  # libpq's default, unless the URL asks
    assert get_args(get_args(Tls.model_fields["min_sslmode"].annotation)[0]) == SSL_MODES  # one order of modes


# ---- real PostgreSQL: psycopg ------------------------------------------------------------------------------


@integration
def test_verify_full_with_the_right_root_certificate_connects_encrypted(tls_database: Connection) -> None:
    connection = connection_from_url(tls_url(tls_database), "env:X")
    with connected(connection) as conn:
        assert conn.execute(ENCRYPTED).fetchone() == (True, "/CN=postgres")


@integration
def test_a_wrong_root_certificate_is_refused(tls_database: Connection, wrong_ca: str) -> None:
    connection = connection_from_url(tls_url(tls_database, **{**tls_database.tls(), "sslrootcert": wrong_ca}), "X")
    with pytest.raises(DatabaseUnreachable) as raised:
        connection.connect()
    assert "certificate verify failed" in str(raised.value) and CANARY_PASSWORD not in str(raised.value)


def test_sslmode_require_against_a_server_without_tls_is_refused_not_plain(database: Connection) -> None:
    connection = connection_from_url(url_of(database) + "?sslmode=require", "env:X")
    with pytest.raises(DatabaseUnreachable, match="server does not support SSL"):
        connection.connect()


@integration
def test_sslnegotiation_reaches_libpq(tls_database: Connection) -> None:
    with connected(tls_database.model_copy(update={"sslnegotiation": "postgres"})) as conn:
        version = int(conn.execute("SHOW server_version_num").fetchone()[0])
    if version >= 170000:
        pytest.skip("this server takes direct TLS: nothing to tell the two negotiations apart")
    with pytest.raises(DatabaseUnreachable):  # a server before 17 does not answer a direct TLS handshake
        tls_database.model_copy(update={"sslnegotiation": "direct"}).connect()


# ---- real PostgreSQL: the rehearsal's scratch database, pg_dump and pg_restore --------------------------------


@integration
def test_the_rehearsal_scratch_database_is_reached_with_the_same_tls(tls_database: Connection, tmp_path: Path,
                                                                     wrong_ca: str) -> None:
    write_migrations(tmp_path, MIGRATIONS)
    catalog = read_catalog(Path("migrations"), tmp_path)
    # Created, applied, rolled back, applied again and dropped: every session needed the client certificate.
    result = rehearse(catalog, tls_database, Policy(), cache=False)
    assert result.failure is None and result.rolled_back == ("0002.b",)
    with pytest.raises(DatabaseUnreachable, match="certificate verify failed"):
        rehearse(catalog, tls_database.model_copy(update={"sslrootcert": wrong_ca}), Policy(), cache=False)


def dump(connection: Connection, directory: Path) -> object:
    """A new dump (each in its own directory: a dump of the same commit would be reused, with no connection)."""
    tags = snapshot_tags("tls-test", "abcdef1", None, "test")
    return take_dump(PgDumpSnapshot(kind="pg_dump", directory=directory / uuid.uuid4().hex[:8]), connection,
                     f"rdsm-tls-test-{uuid.uuid4().hex[:8]}", tags, datetime.now(UTC), LOG)


@integration
def test_pg_dump_honours_the_tls_settings(tls_database: Connection, database: Connection, tmp_path: Path,
                                          wrong_ca: str) -> None:
    with connected(tls_database) as conn:
        conn.execute("CREATE TABLE kept (id bigint PRIMARY KEY)")
    taken = dump(tls_database, tmp_path)  # refused by the server unless pg_dump used the client certificate
    assert Path(taken.location).stat().st_size > 0  # type: ignore[attr-defined]
    with pytest.raises(SnapshotError) as wrong:
        dump(tls_database.model_copy(update={"sslrootcert": wrong_ca}), tmp_path)
    assert "certificate verify failed" in str(wrong.value) and CANARY_PASSWORD not in str(wrong.value)
    with pytest.raises(SnapshotError, match="server does not support SSL"):  # not a plain dump instead
        dump(connection_from_url(url_of(database) + "?sslmode=require", "env:X"), tmp_path)


@integration
def test_pg_dump_with_libpqs_default_sslmode_uses_tls_as_psycopg_does(tls_database: Connection, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No TLS setting in the connection: libpq's `prefer`, which psycopg meets with TLS (the client certificate
    in PGSSLCERT and PGSSLKEY). The server takes TLS connections only, so a dump by a client built without SSL
    (pgserver's, the newest here) would be refused, not taken in the clear."""
    settings = tls_database.tls()
    monkeypatch.delenv("PGSSLMODE", raising=False)
    for key, variable in (("sslrootcert", "PGSSLROOTCERT"), ("sslcert", "PGSSLCERT"), ("sslkey", "PGSSLKEY")):
        monkeypatch.setenv(variable, settings[key])
    default = tls_database.model_copy(update=dict.fromkeys(settings))
    assert default.tls() == {}
    with connected(default) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    assert Path(dump(default, tmp_path).location).stat().st_size > 0  # type: ignore[attr-defined]
    monkeypatch.setenv("PGSSLMODE", "require")  # the environment's mode counts where the URL names none
    assert Path(dump(default, tmp_path).location).stat().st_size > 0  # type: ignore[attr-defined]


def test_sslrootcert_system_is_given_only_to_a_client_that_knows_it() -> None:
    """libpq before 16 reads "system" as a file name: such a client is never chosen for it. Which clients know
    it is read from their versions and whether they have SSL, not from the probe being tested."""
    from tasks.engine.clients import _clients, client_binary
    from tasks.engine.server_binaries import program_version

    def has_ssl(binary: Path) -> bool:
        done = subprocess.run([str(binary.with_name("pg_dump")), "--dbname=host=/nonexistent sslmode=require"],
                              capture_output=True, text=True)
        return "not compiled in" not in done.stderr

    knows = [b for b in _clients("pg_dump") if program_version(b.parent, b.name)[0] >= 16 and has_ssl(b)]
    tls = {"sslmode": "verify-full", "sslrootcert": "system"}
    if knows:
        assert client_binary("pg_dump", tls) == knows[0]
    else:  # this machine: the system's client is 15, pgserver's 16 has no SSL
        with pytest.raises(EmbeddedServerError, match="sslrootcert=system needs libpq 16 or later"):
            client_binary("pg_dump", tls)


def test_pg_dump_and_pg_restore_are_new_enough_for_the_server_and_the_archive() -> None:
    """Built with SSL comes second to new enough: pg_dump refuses a newer server, pg_restore a newer archive."""
    from tasks.engine.clients import _clients, client_binary
    from tasks.engine.server_binaries import program_version

    newest = max(program_version(b.parent, b.name)[0] for b in _clients("pg_dump"))
    chosen = client_binary("pg_dump", {"sslmode": "prefer"}, at_least=newest)
    assert program_version(chosen.parent, "pg_dump")[0] == newest
    restore = client_binary("pg_restore", {"sslmode": "prefer"}, at_least=newest)
    assert program_version(restore.parent, "pg_restore")[0] == newest


def test_the_rehearsal_server_of_url_env_is_held_to_the_environments_tls_minimum(
        database: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.engine.migrations.rehearsal import rehearsal_server

    monkeypatch.setenv("TLS_TEST_REHEARSAL", url_of(database))
    raised = environment(min_sslmode="require").model_copy(
        update={"rehearsal": Rehearsal(kind="url_env", variable="TLS_TEST_REHEARSAL")})
    server = rehearsal_server(raised, None)
    assert server is not None and server.sslmode == "require"
    with pytest.raises(DatabaseUnreachable, match="server does not support SSL"), connected(server):
        pass  # refused, not plain instead


@integration
def test_pg_restore_honours_the_tls_settings(tls_server: LocalServer, tls_database: Connection, tmp_path: Path,
                                             wrong_ca: str) -> None:
    with connected(tls_database) as conn:
        conn.execute("CREATE TABLE restored (id bigint PRIMARY KEY)")
    taken = dump(tls_database, tmp_path)
    live = tls_database.dbname
    plan = SwapPlan(kind="pg_dump", live=live, new=f"{live}_new", old=f"{live}_old", stamp="t", keep_old=True)
    try:
        LocalDatabases(tls_database, plan, LOG).create(taken, plan.new, LiveCopy({}))  # type: ignore[arg-type]
        wrong = LocalDatabases(tls_database.model_copy(update={"sslrootcert": wrong_ca}), plan, LOG)
        with pytest.raises(RefreshError, match="certificate verify failed"):
            wrong.finish_restore(taken, plan.new, LiveCopy({}))  # type: ignore[arg-type]
        LocalDatabases(tls_database, plan, LOG).finish_restore(taken, plan.new, LiveCopy({}))  # type: ignore[arg-type]
        assert tables(tls_database.with_database(plan.new)) == {"restored"}
    finally:
        tls_server.drop_database(plan.new)


# ---- the command line -------------------------------------------------------------------------------------


@integration
def test_run_with_a_verify_full_database_url_succeeds_on_the_tls_server_and_fails_with_a_wrong_root_cert(
    tls_server: LocalServer, tls_database: Connection, tmp_path: Path, wrong_ca: str
) -> None:
    write_migrations(tmp_path, MIGRATIONS)
    wrong_target = tls_server.ensure_database(f"t_{uuid.uuid4().hex[:10]}")
    try:
        refused = cli("run", "--database-url", tls_url(wrong_target, **{**wrong_target.tls(), "sslrootcert": wrong_ca}),
                      "--git-sha", "abcdef1", cwd=tmp_path)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "certificate verify failed" in refused.stderr
        assert tables(wrong_target) == set()
    finally:
        tls_server.drop_database(wrong_target.dbname)
    ran = cli("run", "--database-url", tls_url(tls_database), "--git-sha", "abcdef1", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert {"a", "b"} <= tables(tls_database)


def test_run_with_sslmode_require_against_a_server_without_tls_fails_instead_of_going_plain(
    database: Connection, tmp_path: Path
) -> None:
    write_migrations(tmp_path, MIGRATIONS)
    result = cli("run", "--database-url", url_of(database) + "?sslmode=require", "--git-sha", "abcdef1", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "server does not support SSL" in result.stderr
    assert tables(database) == set()


def test_an_unsupported_url_parameter_is_refused_by_name_through_the_command_line(database: Connection,
                                                                                   tmp_path: Path) -> None:
    write_migrations(tmp_path, MIGRATIONS)
    url = url_of(database) + f"?sslmode=require&sslpassword={quote(CANARY_PASSWORD, safe='')}"
    result = cli("run", "--database-url", url, "--git-sha", "abcdef1", cwd=tmp_path)  # cli() checks the canary
    assert result.returncode == 2, result.stdout + result.stderr  # the command line's mistake: nothing touched
    assert "unsupported URL parameters: sslpassword" in result.stderr
    assert quote(CANARY_PASSWORD, safe="") not in result.stdout + result.stderr


def environments_file(directory: Path, tls: str, snapshot: str = '{ kind = "none" }',
                      rehearsal: str = '{ kind = "target_server" }') -> Path:
    path = directory / "environments.toml"
    path.write_text(f"""
[environments.tls-test]
tier = "staging"
credentials = {{ kind = "url_env", variable = "TLS_TEST_URL" }}
snapshot = {snapshot}
notify = {{ kind = "console" }}
rehearsal = {rehearsal}
tls = {tls}
""", encoding="utf-8")
    return path


@integration
def test_an_environment_minimum_raises_a_weaker_sslmode_through_the_command_line(
    database: Connection, tls_database: Connection, tmp_path: Path, wrong_ca: str
) -> None:
    write_migrations(tmp_path, MIGRATIONS)

    def plan(url: str, tls: str) -> tuple[int, str]:
        env = {"RDS_MIGRATIONS_ENVIRONMENTS": str(environments_file(tmp_path, tls)), "TLS_TEST_URL": url}
        result = cli("plan", "--env", "tls-test", cwd=tmp_path, env=env)
        return result.returncode, result.stdout + result.stderr

    # prefer, raised to require: a server without TLS is refused instead of used in plain text.
    code, out = plan(url_of(database) + "?sslmode=prefer", '{ min_sslmode = "require" }')
    assert code == 1 and "server does not support SSL" in out, out
    # require (no root certificate), raised to verify-full against the environment's root_cert.
    asked = tls_url(tls_database, sslmode="require", sslcert=tls_database.sslcert or "",
                    sslkey=tls_database.sslkey or "")
    code, out = plan(asked, f'{{ min_sslmode = "verify-full", root_cert = "{wrong_ca}" }}')
    assert code == 1 and "certificate verify failed" in out, out
    code, out = plan(asked, f'{{ min_sslmode = "verify-full", root_cert = "{tls_database.sslrootcert}" }}')
    assert code == 0 and "2 pending" in out, out
    missing = tmp_path / "no-such-bundle.pem"
    code, out = plan(asked, f'{{ min_sslmode = "verify-full", root_cert = "{missing}" }}')
    assert code == 2 and f"tls.root_cert {missing} does not exist" in out, out


@integration
def test_a_run_with_a_pg_dump_snapshot_dumps_over_tls_through_the_command_line(tls_database: Connection,
                                                                               tmp_path: Path) -> None:
    write_migrations(tmp_path, MIGRATIONS)
    dumps = tmp_path / "dumps"
    env = {"RDS_MIGRATIONS_ENVIRONMENTS": str(environments_file(tmp_path, "{}", f'{{ kind = "pg_dump", directory = '
                                                                              f'"{dumps}" }}')),
           "TLS_TEST_URL": tls_url(tls_database)}
    result = cli("run", "--env", "tls-test", "--git-sha", "abcdef1", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(dumps.glob("*.dump"))) == 1 and {"a", "b"} <= tables(tls_database)


@integration
def test_a_rehearsal_on_the_target_schema_dumps_it_over_tls(tls_database: Connection, tmp_path: Path) -> None:
    """The second run rehearses what is pending on a copy of the target's schema: pg_dump --schema-only of the
    target and pg_restore into the scratch database, both over the target's TLS."""
    write_migrations(tmp_path, {"0001.a.sql": MIGRATIONS["0001.a.sql"]})
    env = {"RDS_MIGRATIONS_ENVIRONMENTS": str(environments_file(
               tmp_path, "{}", rehearsal='{ kind = "target_server", start = "target_schema", cache = false }')),
           "TLS_TEST_URL": tls_url(tls_database)}
    first = cli("run", "--env", "tls-test", "--git-sha", "abcdef1", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    write_migrations(tmp_path, MIGRATIONS)
    second = cli("run", "--env", "tls-test", "--git-sha", "abcdef2", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert {"a", "b"} <= tables(tls_database)
