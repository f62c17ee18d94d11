"""fetch-secret: database credentials at run time, held in a `SecretStr`, opened with keyword arguments.

Sources: an RDS secret in AWS Secrets Manager (only the `AWSCURRENT` version), a URL in an environment
variable, or the embedded local server. The password never reaches a log line, a Prefect result, an
exception text or a URL: `Connection` has no URL form and its `repr` hides the password.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, SecretStr

from tasks.environments import (
    AwsSettings,
    EmbeddedCredentials,
    Environment,
    SecretsManagerCredentials,
    UrlFromEnvCredentials,
)


class SecretError(Exception):
    """The credentials could not be read or are malformed. The text names the field, never a value."""


class Connection(BaseModel):
    """How to reach one database. `password` is a `SecretStr`: it prints as `**********`."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    dbname: str
    user: str
    password: SecretStr = SecretStr("")
    source: str = ""  # where these came from, for messages: "secretsmanager:<id>", "env:DATABASE_URL"

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def with_database(self, dbname: str) -> Connection:
        return self.model_copy(update={"dbname": dbname})

    def connect(self, *, autocommit: bool = True, application_name: str = "rds-migrations") -> psycopg.Connection:
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
                connect_timeout=10,
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachable(self, redact(str(exc), password), _sqlstate(exc)) from None

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
        return env


class DatabaseUnreachable(Exception):
    """Connecting failed. Transient when the server refused or was not there; not when auth failed."""

    def __init__(self, connection: Connection, detail: str, sqlstate: str | None) -> None:
        # libpq reports a refused password at connect time as text, without the SQLSTATE: name it anyway.
        if sqlstate is None and "password authentication failed" in detail:
            sqlstate = "28P01"
        self.sqlstate = sqlstate
        self.auth_failed = sqlstate in {"28P01", "28000"}
        super().__init__(f"cannot connect to {connection.describe()}: {detail.strip()}")


def _sqlstate(exc: psycopg.Error) -> str | None:
    return exc.sqlstate or (exc.diag.sqlstate if exc.diag else None)


def redact(text: str, *secrets: str) -> str:
    # A secret of one to three characters is no secret, and starring every "p" in a message would both
    # garble it and give the password away.
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "**********")
    return text


@contextmanager
def connected(connection: Connection, **kwargs: object) -> Iterator[psycopg.Connection]:
    conn = connection.connect(**kwargs)  # type: ignore[arg-type]
    try:
        yield conn
    finally:
        conn.close()


# ---- the three sources -----------------------------------------------------------------------------------

RDS_SECRET_FIELDS = ("username", "password", "host", "port", "dbname")


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
    return Connection(
        host=data["host"],
        port=int(port),
        dbname=data["dbname"],
        user=data["username"],
        password=SecretStr(data["password"]),
        source=source,
    )


def read_secrets_manager(credentials: SecretsManagerCredentials, aws: AwsSettings) -> Connection:
    """Read the `AWSCURRENT` version of an RDS secret through prefect-aws's `AwsSecret` block."""
    from prefect_aws.secrets_manager import AwsSecret

    from tasks.aws import aws_credentials

    secret = AwsSecret(aws_credentials=aws_credentials(aws), secret_name=credentials.secret_id)
    value = secret.read_secret(version_stage="AWSCURRENT", _sync=True)  # type: ignore[call-arg]
    return parse_rds_secret(value, f"secretsmanager:{credentials.secret_id}")


def read_url_from_env(credentials: UrlFromEnvCredentials) -> Connection:
    source = f"env:{credentials.variable}"
    url = os.environ.get(credentials.variable)
    if not url:
        raise SecretError(f"{source}: environment variable {credentials.variable} is not set")
    return connection_from_url(url, source)


def connection_from_url(url: str, source: str = "url") -> Connection:
    """Parse a libpq URL or keyword string; the password goes straight into a `SecretStr`."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise SecretError(f"{source}: not a valid PostgreSQL URL (postgresql://user:pass@host:port/dbname)") from None
    unknown = set(params) - {"host", "port", "dbname", "user", "password", "sslmode"}
    if unknown:
        raise SecretError(f"{source}: unsupported URL parameters: {', '.join(sorted(unknown))}")
    port = str(params.get("port") or 5432)
    if not port.isdigit():
        raise SecretError(f"{source}: the port must be a number")
    return Connection(
        host=str(params.get("host") or "localhost"),
        port=int(port),
        dbname=str(params.get("dbname") or params.get("user") or "postgres"),
        user=str(params.get("user") or "postgres"),
        password=SecretStr(str(params.get("password") or "")),
        source=source,
    )


def read_embedded(credentials: EmbeddedCredentials) -> Connection:
    from tasks.embedded import ensure_embedded_database

    return ensure_embedded_database(credentials.database)


# Secrets Manager errors that no retry mends: what each means for the person running the migration.
SECRET_READ_ERRORS = {
    "ResourceNotFoundException": "no such secret (check credentials.secret_id and aws.region)",
    "AccessDeniedException": "access denied: the role needs secretsmanager:GetSecretValue on this secret",
    "DecryptionFailure": "Secrets Manager cannot decrypt it: the role needs kms:Decrypt on the secret's KMS key, "
                         "and the key must be enabled",
    "InvalidRequestException": "it cannot be read now (deleted, or scheduled for deletion?)",
    "InvalidParameterException": "the request was refused (check credentials.secret_id)",
}


def fetch_connection(environment: Environment) -> Connection:
    """The engine behind the fetch-secret task. AWS errors that a retry cannot mend become a `SecretError`
    naming the secret and what to do; throttling and 5xx are raised as they are, for the task to retry."""
    from botocore.exceptions import ClientError

    from tasks.transient import is_transient

    credentials = environment.credentials
    if isinstance(credentials, SecretsManagerCredentials):
        assert environment.aws is not None  # checked when the environment was loaded
        try:
            return read_secrets_manager(credentials, environment.aws)
        except ClientError as exc:
            if is_transient(exc):
                raise
            code = str(exc.response.get("Error", {}).get("Code", "unknown"))
            meaning = SECRET_READ_ERRORS.get(code, "Secrets Manager refused to return it")
            raise SecretError(
                f"secretsmanager:{credentials.secret_id} in {environment.aws.region}: {meaning} ({code})"
            ) from None
    if isinstance(credentials, UrlFromEnvCredentials):
        return read_url_from_env(credentials)
    return read_embedded(credentials)


# ---- the Prefect task ------------------------------------------------------------------------------------

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.transient import transient_retries  # noqa: E402


@task(
    name="fetch-secret",
    **transient_retries(retries=3, backoff_factor=2),
    persist_result=False,  # the password is never written to result storage
    cache_policy=NO_CACHE,
)
def fetch_secret(environment: Environment) -> Connection:
    """Read the environment's database credentials.

    Example:
        connection = fetch_secret(load_environment("staging"))
    """
    connection = fetch_connection(environment)
    get_run_logger().info("Credentials read from %s for %s", connection.source, connection.describe())
    return connection
