"""fetch-secret: the environment's database credentials, read at run time (engine: tasks/engine/credentials.py).

The result is never persisted: the password lives in the `Connection`'s `SecretStr` only in memory.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.engine.connection import Connection
from tasks.engine.credentials import fetch_connection
from tasks.engine.environments import Environment
from tasks.retries import transient_retries


@task(
    name="fetch-secret",
    task_run_name="fetch-secret-{environment.name}",
    **transient_retries(retries=3, backoff_factor=2),
    persist_result=False,  # the password is never written to result storage
    cache_policy=NO_CACHE,
)
def fetch_secret(environment: Environment, secrets_manager: Any = None, create: bool = True) -> Connection:
    """Read the environment's database credentials.

    Args:
        environment: where the credentials come from.
        secrets_manager: a boto3 Secrets Manager client, for `secrets_manager` credentials.
        create: an embedded database that does not exist yet is created (False in a dry run).

    Example:
        connection = fetch_secret(staging, aws_client("secretsmanager", staging.aws))
    """
    connection = fetch_connection(environment, secrets_manager, create=create)
    get_run_logger().info("Credentials read from %s for %s", connection.source, connection.describe())
    return connection
