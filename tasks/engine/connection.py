"""How to reach one database: `Connection`, with the password in a `SecretStr`, opened with keyword arguments.

The password never reaches a log line, a Prefect result, an exception text or a URL: `Connection` has no URL
form, its `repr` hides the password, and connection errors are redacted before they are raised.

The libpq TLS settings a URL or a secret asks for travel with the `Connection` to every connection a run opens
(psycopg's, and pg_dump's and pg_restore's through `libpq_env()`); any other parameter is refused, never dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal
from urllib.parse import parse_qsl

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, SecretStr

from tasks.engine.errors import DatabaseUnreachable, SecretError, redact

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # weakest first
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_NEGOTIATIONS = ("postgres", "direct")
# The TLS settings a Connection carries (libpq keyword -> the variable libpq client programs read it from).
# Not `sslpassword`: a secret that would have to travel in an environment variable. The others are refused.
TLS_SETTINGS = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "sslnegotiation": "PGSSLNEGOTIATION",
}
QUOTE_PASSWORD = "a password with @, :, /, ? or # must be URL-quoted (/ is %2F, @ is %40)"


class Connection(BaseModel):
    """How to reach one database. `password` is a `SecretStr`: it prints as `**********`."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    dbname: str
    user: str
    password: SecretStr = SecretStr("")
    source: str = ""  # where these came from, for messages: "secretsmanager:<id>", "env:DATABASE_URL"
    # TLS, as libpq names it; None is libpq's default (sslmode prefer, or what PGSSLMODE etc. say).
    sslmode: SslMode | None = None
    sslrootcert: str | None = None  # the CA file the server's certificate is checked against ("system": the OS's)
    sslcert: str | None = None
    sslkey: str | None = None
    sslcrl: str | None = None
    sslnegotiation: Literal["postgres", "direct"] | None = None
    # An empty scratch database standing in for an embedded database not created yet (scratch.empty_if_missing):
    # the name messages give.
    stands_for: str | None = None

    def describe(self) -> str:
        if self.stands_for is not None:
            return f"{self.user}@{self.host}:{self.port}/{self.stands_for} (not created yet: read as empty)"
        where = f"{self.user}@{self.host}:{self.port}/{self.dbname}"
        return f"{where} (sslmode={self.sslmode})" if self.sslmode else where

    def tls(self) -> dict[str, str]:
        """The TLS settings given, by libpq keyword."""
        return {key: value for key in TLS_SETTINGS if (value := getattr(self, key)) is not None}

    def with_database(self, dbname: str) -> Connection:
        return self.model_copy(update={"dbname": dbname, "stands_for": None})

    def connect(self, *, autocommit: bool = True, application_name: str = "rds-migrations",
                prepare_threshold: int | None = 5) -> psycopg.Connection:
        """Open a psycopg connection with keyword arguments. Errors never carry the password."""
        password = self.password.get_secret_value()
        try:
            return psycopg.connect(
                host=self.host,
                port=self.port,
                dbname=self.dbname,
                user=self.user,
                password=password or None,
                autocommit=autocommit,
                application_name=application_name,
                # Migration files are read as UTF-8: the server converts to the database's encoding (a character
                # it cannot store is the statement's error, 22P05), whatever client_encoding its settings give.
                client_encoding="UTF8",
                connect_timeout=10,
                prepare_threshold=prepare_threshold,
                **self.tls(),
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachable(self.describe(), redact(str(exc), password), _sqlstate(exc)) from None

    def libpq_env(self) -> dict[str, str]:
        """Environment for libpq client programs (pg_dump, pg_restore, psql): no password on a command line."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": self.dbname,
            "PGUSER": self.user,
        }
        if self.password.get_secret_value():
            env["PGPASSWORD"] = self.password.get_secret_value()
        env.update({TLS_SETTINGS[key]: value for key, value in self.tls().items()})
        return env


def _sqlstate(exc: psycopg.Error) -> str | None:
    return exc.sqlstate or (exc.diag.sqlstate if exc.diag else None)


@contextmanager
def connected(connection: Connection, **kwargs: object) -> Iterator[psycopg.Connection]:
    conn = connection.connect(**kwargs)  # type: ignore[arg-type]
    try:
        yield conn
    finally:
        conn.close()


# ---- reading a connection from text ----------------------------------------------------------------------

RDS_SECRET_FIELDS = ("username", "password", "host", "port", "dbname")


def _tls_settings(given: Mapping[str, object], source: str) -> dict[str, str]:
    """The TLS settings among `given`, checked; errors name the setting, never its value."""
    found = {key: given[key] for key in TLS_SETTINGS if key in given}
    for key, value in found.items():
        if not isinstance(value, str) or not value:
            raise SecretError(f"{source}: {key} must be a non-empty string")
    if found.get("sslmode", SSL_MODES[0]) not in SSL_MODES:
        raise SecretError(f"{source}: sslmode must be one of {', '.join(SSL_MODES)}")
    if found.get("sslnegotiation", SSL_NEGOTIATIONS[0]) not in SSL_NEGOTIATIONS:
        raise SecretError(f"{source}: sslnegotiation must be one of {', '.join(SSL_NEGOTIATIONS)}")
    return {key: str(value) for key, value in found.items()}


def parse_rds_secret(secret: str | bytes, source: str) -> Connection:
    """Turn an RDS secret's JSON into a `Connection`; errors name the field, never its value."""
    try:
        data = json.loads(secret)
    except (ValueError, UnicodeDecodeError):
        raise SecretError(f"{source}: the secret is not valid JSON (expected an RDS secret object)") from None
    if not isinstance(data, dict):
        raise SecretError(f"{source}: the secret is JSON but not an object (expected {', '.join(RDS_SECRET_FIELDS)})")
    missing = [f for f in RDS_SECRET_FIELDS if f not in data or data[f] in (None, "")]
    if missing:
        raise SecretError(f"{source}: the secret has no {', '.join(repr(f) for f in missing)} field")
    for field in ("username", "password", "host", "dbname"):
        if not isinstance(data[field], str):
            raise SecretError(f"{source}: field {field!r} must be a string, got {type(data[field]).__name__}")
    port = data["port"]
    if isinstance(port, bool) or not isinstance(port, int | str) or not str(port).isdigit():
        raise SecretError(f"{source}: field 'port' must be a whole number (a number or a string of digits)")
    if not 0 < int(port) < 65536:
        raise SecretError(f"{source}: field 'port' is out of range (1-65535)")
    # An RDS secret holds no TLS settings; one that does is honoured like a URL's, and an ssl field we do not
    # carry is refused rather than ignored. Other extra fields (engine, dbInstanceIdentifier...) are RDS's own.
    unsupported = sorted(f for f in data if f.lower().startswith("ssl") and f not in TLS_SETTINGS)
    if unsupported:
        raise SecretError(f"{source}: unsupported field {', '.join(map(repr, unsupported))} (TLS fields: "
                          f"{', '.join(TLS_SETTINGS)})")
    return Connection(
        host=data["host"],
        port=int(port),
        dbname=data["dbname"],
        user=data["username"],
        password=SecretStr(data["password"]),
        source=source,
        **_tls_settings(data, source),
    )


def connection_from_url(url: str, source: str = "url") -> Connection:
    """Parse a libpq URL or keyword string; the password goes straight into a `SecretStr`."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        # libpq names a parameter it does not know: say which (a name, never a value), else say nothing of it.
        named = re.match(r'invalid (?:URI query parameter:|connection option) "([a-z_]{1,40})"', str(exc))
        unknown_name = f": unsupported URL parameter {named[1]}" if named else ""
        raise SecretError(f"{source}: not a valid PostgreSQL URL (postgresql://user:pass@host:port/dbname)"
                          f"{unknown_name}") from None
    unknown = set(params) - {"host", "port", "dbname", "user", "password", *TLS_SETTINGS}
    if unknown:
        raise SecretError(f"{source}: unsupported URL parameters: {', '.join(sorted(unknown))} (TLS parameters: "
                          f"{', '.join(TLS_SETTINGS)})")
    if url.lstrip().lower().startswith(("postgres://", "postgresql://")):
        # libpq lets ?dbname= or ?password= quietly replace what the URL itself says: one place for each. What
        # the URL itself says is read by libpq too (Python's URL parser refuses passwords libpq takes, "[" say).
        base, _, query = url.strip().partition("?")
        try:
            given = conninfo_to_dict(base)
        except psycopg.ProgrammingError:  # not read apart from its query: the URL as a whole was, and stands
            given = {}
        if "@" in base.partition("://")[2].partition("/")[2]:  # a password's unquoted "/" ended the host early:
            # its tail (and the real host) would be read as the database name, and printed as one
            raise SecretError(f"{source}: the URL's database name holds an @: {QUOTE_PASSWORD}")
        again = sorted({key for key, _ in parse_qsl(query, keep_blank_values=True) if given.get(key)})
        if again:
            raise SecretError(f"{source}: the URL's query string names {', '.join(again)}, which the URL itself "
                              "gives already (postgresql://user:password@host:port/dbname): write each once")
    if "@" in str(params.get("host") or ""):
        raise SecretError(f"{source}: the URL's host holds an @: {QUOTE_PASSWORD}")
    port = str(params.get("port") or 5432)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SecretError(f"{source}: the port must be a number from 1 to 65535")
    return Connection(
        host=str(params.get("host") or "localhost"),
        port=int(port),
        dbname=str(params.get("dbname") or params.get("user") or "postgres"),
        user=str(params.get("user") or "postgres"),
        password=SecretStr(str(params.get("password") or "")),
        source=source,
        **_tls_settings(params, source),
    )
