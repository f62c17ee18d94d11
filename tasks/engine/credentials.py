"""fetch-secret's engine: the database credentials of an environment, read at run time.

Sources: an RDS secret in AWS Secrets Manager (only the `AWSCURRENT` version, through a boto3 client that is
handed in), a URL in an environment variable, or the embedded local server. The environment's TLS minimum is
applied to what was read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tasks.engine.aws import error_code
from tasks.engine.connection import SSL_MODES, Connection, connection_from_url, parse_rds_secret
from tasks.engine.environments import (
    EmbeddedCredentials,
    Environment,
    SecretsManagerCredentials,
    UrlFromEnvCredentials,
)
from tasks.engine.errors import ConfigError, SecretError
from tasks.engine.transient import is_transient

# Secrets Manager errors that no retry mends: what each means for the person running the migration.
SECRET_READ_ERRORS = {
    "ResourceNotFoundException": "no such secret (check credentials.secret_id and aws.region)",
    "AccessDeniedException": "access denied: the role needs secretsmanager:GetSecretValue on this secret",
    "DecryptionFailure": "Secrets Manager cannot decrypt it: the role needs kms:Decrypt on the secret's KMS key, "
                         "and the key must be enabled",
    "InvalidRequestException": "it cannot be read now (deleted, or scheduled for deletion?)",
    "InvalidParameterException": "the request was refused (check credentials.secret_id)",
}


def read_secrets_manager(credentials: SecretsManagerCredentials, secrets_manager: Any) -> Connection:
    """The `AWSCURRENT` version of an RDS secret, read with a Secrets Manager client."""
    answer = secrets_manager.get_secret_value(SecretId=credentials.secret_id, VersionStage="AWSCURRENT")
    value = answer["SecretString"] if "SecretString" in answer else answer["SecretBinary"]
    return parse_rds_secret(value, f"secretsmanager:{credentials.secret_id}")


def read_url_from_env(credentials: UrlFromEnvCredentials, environment: str | None = None) -> Connection:
    """The URL in the variable `credentials` names. Unset, it is configuration to mend before anything runs."""
    source, variable = f"env:{credentials.variable}", credentials.variable
    url = os.environ.get(variable)
    if not url:
        where = f"environment {environment}" if environment else source
        raise ConfigError(f"{where}: {variable} is not set (its credentials are read from it): set it where the "
                          f"command runs (`export {variable}=postgresql://USER@HOST:5432/DBNAME`), or name the "
                          "database with --database-url URL instead")
    return connection_from_url(url, source)


def read_embedded(credentials: EmbeddedCredentials, *, create: bool = True) -> Connection:
    """The embedded server's database (the server started when it is not running); with `create`, the database
    is created when it does not exist yet. Without (a dry run, a read-only command), it is not: the caller reads
    an empty database in its place (`scratch.empty_if_missing`)."""
    from tasks.engine.embedded import embedded_server  # starts a server: only when asked for

    server = embedded_server()
    server.start()
    return server.ensure_database(credentials.database) if create else server.connection(credentials.database)


def fetch_connection(environment: Environment, secrets_manager: Any = None, *, create: bool = True) -> Connection:
    """The environment's credentials, under its TLS minimum. `secrets_manager` is a boto3 Secrets Manager
    client, needed only for `secrets_manager` credentials. AWS errors that a retry cannot mend become a
    `SecretError` naming the secret and what to do; throttling and 5xx are raised as they are, for the caller
    to retry. `create`: an embedded database that does not exist yet is created (not in a dry run)."""
    return with_environment_tls(_read_connection(environment, secrets_manager, create), environment)


def with_environment_tls(connection: Connection, environment: Environment) -> Connection:
    """`connection` under the environment's `tls`: a weaker sslmode (or none) raised to `min_sslmode`, and a
    verifying mode given `root_cert` when the URL or secret names no root certificate, which must exist."""
    tls = environment.tls
    update: dict[str, str] = {}
    if tls.min_sslmode is not None:
        # What libpq would use otherwise: the URL's or secret's mode, else PGSSLMODE, else its default.
        asked = connection.sslmode or os.environ.get("PGSSLMODE") or "prefer"
        asked = asked if asked in SSL_MODES else "prefer"
        update["sslmode"] = max(asked, tls.min_sslmode, key=SSL_MODES.index)
    mode = update.get("sslmode", connection.sslmode)
    if mode not in ("verify-ca", "verify-full"):
        return connection.model_copy(update=update)
    if connection.sslrootcert is None and tls.root_cert is not None:
        update["sslrootcert"] = str(tls.root_cert)
    root = update.get("sslrootcert", connection.sslrootcert)
    if root is not None and root != "system" and not Path(root).is_file():
        checks = f"does not exist: sslmode {mode} checks the server's certificate against it"
        if "sslrootcert" not in update:
            raise ConfigError(f"{connection.source}: sslrootcert {root} {checks}")
        raise ConfigError(f"environment {environment.name}: tls.root_cert {root} {checks}; put the CA bundle there "
                          "(RDS: https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem) or point "
                          "tls.root_cert at it")
    return connection.model_copy(update=update)


def secret_refusal(exc: Any) -> str:
    """What Secrets Manager's refusal (a botocore `ClientError`) means, and what to do, with its code."""
    code = error_code(exc)
    return f"{SECRET_READ_ERRORS.get(code, 'Secrets Manager refused to return it')} ({code})"


def _read_connection(environment: Environment, secrets_manager: Any, create: bool) -> Connection:
    from botocore.exceptions import ClientError

    credentials = environment.credentials
    if isinstance(credentials, SecretsManagerCredentials):
        assert environment.aws is not None  # checked when the environment was loaded
        if secrets_manager is None:
            raise SecretError(f"secretsmanager:{credentials.secret_id}: no Secrets Manager client was given")
        try:
            return read_secrets_manager(credentials, secrets_manager)
        except ClientError as exc:
            if is_transient(exc):
                raise
            raise SecretError(f"secretsmanager:{credentials.secret_id} in {environment.aws.region}: "
                              f"{secret_refusal(exc)}") from None
    if isinstance(credentials, UrlFromEnvCredentials):
        return read_url_from_env(credentials, environment.name)
    return read_embedded(credentials, create=create)
