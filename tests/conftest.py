"""Shared fixtures: a real PostgreSQL server, the AWS API emulator (moto server), a Slack webhook sink,
and one Prefect test harness for the whole session. Every service is started here, by the tests."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from psycopg import sql
from pydantic import SecretStr

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_API_ENABLE_HTTP2", "false")

# Prefect configures logging (replacing handlers) the first time its main module is imported. Import it
# before any test adds a handler or pytest's log capture, so that no test loses them halfway.
import prefect.main  # noqa: E402, F401

from tasks.engine.connection import Connection, connected  # noqa: E402
from tasks.engine.embedded import LocalServer  # noqa: E402

# The canary: a password no log line, result, artifact, Slack message or exception may ever contain.
CANARY_PASSWORD = "canary-PW@x:/?#'\"-9f31c7"


# A test that needs any of these is an integration test: marked here, from its fixtures, so the mark can never
# disagree with what the test really starts (`pytest -m "not integration"` runs the unit tests alone).
SERVICE_FIXTURES = frozenset({"pg_server", "database", "moto_endpoint", "aws_endpoint", "slack_sink", "prefect_api"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the tool's own throwaway server lives for every run the tests start (a rehearsal may stand it in
    for the target's server): one per session, stopped and deleted at the end, never left running."""
    home = tmp_path_factory.mktemp("rds-migrations-home")
    previous = os.environ.get("RDS_MIGRATIONS_HOME")
    os.environ["RDS_MIGRATIONS_HOME"] = str(home)
    yield home
    LocalServer(home / "postgres").destroy()
    if previous is None:
        os.environ.pop("RDS_MIGRATIONS_HOME", None)
    else:
        os.environ["RDS_MIGRATIONS_HOME"] = previous


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A real PostgreSQL server with password (scram) auth; its superuser password is the canary."""
    base = Path(os.environ.get("RDS_MIGRATIONS_TEST_TMP") or tmp_path_factory.mktemp("pg"))
    server = LocalServer(base / f"data-{uuid.uuid4().hex[:6]}", password=SecretStr(CANARY_PASSWORD))
    server.start()
    yield server
    server.destroy()


def fresh_database(server: LocalServer) -> Iterator[Connection]:
    """A fresh, empty database on `server`, dropped afterwards: for a fixture to `yield from`."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    try:
        yield server.ensure_database(name)
    finally:
        server.drop_database(name)


@pytest.fixture
def database(pg_server: LocalServer) -> Iterator[Connection]:
    """A fresh, empty database on the test server, dropped afterwards."""
    yield from fresh_database(pg_server)


@pytest.fixture
def login(database: Connection):
    """A login role with a password and nothing else (a factory: `login(name_suffix)`); dropped afterwards
    with everything it owns."""
    made: list[str] = []

    def make(suffix: str, attributes: str = "") -> Connection:
        name, password = f"{suffix}_{database.dbname}", uuid.uuid4().hex
        with connected(database) as conn:
            conn.execute(sql.SQL(f"CREATE ROLE {{}} LOGIN {attributes} PASSWORD {{}}").format(
                sql.Identifier(name), sql.Literal(password)))
        made.append(name)
        return database.model_copy(update={"user": name, "password": SecretStr(password)})

    yield make
    drop_roles(database, made)


def drop_roles(database: Connection, roles: list[str]) -> None:
    """The roles, what they own in the test's database, and the databases they own (cached rehearsals)."""
    with connected(database.with_database("postgres")) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datdba IN (SELECT oid FROM pg_roles "
                                    "WHERE rolname = ANY(%s))", (roles,)).fetchall():
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    with connected(database) as conn:
        for role in roles:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# ---- AWS API emulator ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        os.environ[key] = value
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_endpoint(moto_endpoint: str) -> str:
    """The emulator, emptied before each test."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()
    return moto_endpoint


# ---- Slack webhook sink ----------------------------------------------------------------------------------


@dataclass
class SlackSink:
    """A local HTTP server that records what is posted to it, answering with `status`."""

    url: str
    messages: list[dict] = field(default_factory=list)
    status: int = 200

    def texts(self) -> list[str]:
        return [m.get("text", "") for m in self.messages]


@pytest.fixture
def slack_sink() -> Iterator[SlackSink]:
    sink = SlackSink(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                sink.messages.append(json.loads(body))
            except ValueError:
                sink.messages.append({"raw": body.decode("utf-8", "replace")})
            self.send_response(sink.status)
            self.end_headers()
            self.wfile.write(b"ok" if sink.status < 400 else b"no_service")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sink.url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret-webhook-token"
    yield sink
    server.shutdown()


# ---- Prefect ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One Prefect test harness (a temporary API server) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
