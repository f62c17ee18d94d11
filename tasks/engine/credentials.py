"""fetch-secret's engine: the database credentials of an environment, read at run time.

Sources: an RDS secret in AWS Secrets Manager (only the `AWSCURRENT` version, through a boto3 client that is
handed in), a URL in an environment variable, or the embedded local server.
"""

from __future__ import annotations

import os
from typing import Any

from tasks.engine.connection import Connection, connection_from_url, parse_rds_secret
from tasks.engine.environments import (
    EmbeddedCredentials,
    Environment,
    SecretsManagerCredentials,
    UrlFromEnvCredentials,
)
from tasks.engine.errors import SecretError
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


def read_url_from_env(credentials: UrlFromEnvCredentials) -> Connection:
    source = f"env:{credentials.variable}"
    url = os.environ.get(credentials.variable)
    if not url:
        raise SecretError(f"{source}: environment variable {credentials.variable} is not set")
    return connection_from_url(url, source)


def read_embedded(credentials: EmbeddedCredentials) -> Connection:
    from tasks.engine.embedded import ensure_embedded_database  # starts a server: only when asked for

    return ensure_embedded_database(credentials.database)


def fetch_connection(environment: Environment, secrets_manager: Any = None) -> Connection:
    """The environment's credentials. `secrets_manager` is a boto3 Secrets Manager client, needed only for
    `secrets_manager` credentials. AWS errors that a retry cannot mend become a `SecretError` naming the
    secret and what to do; throttling and 5xx are raised as they are, for the caller to retry."""
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
            code = str(exc.response.get("Error", {}).get("Code", "unknown"))
            meaning = SECRET_READ_ERRORS.get(code, "Secrets Manager refused to return it")
            raise SecretError(
                f"secretsmanager:{credentials.secret_id} in {environment.aws.region}: {meaning} ({code})"
            ) from None
    if isinstance(credentials, UrlFromEnvCredentials):
        return read_url_from_env(credentials)
    return read_embedded(credentials)
