"""Which failures are worth retrying: AWS throttling and 5xx, and a database that refused or was not there.

Never retried: a failing migration, a bad or missing secret, wrong credentials, a lint or history error.
"""

from __future__ import annotations

import psycopg
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

TRANSIENT_AWS_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "ServiceUnavailable", "InternalFailure",
    "InternalServiceError", "InternalError",
})
# Connection failures: the server is starting, restarting or unreachable for now.
TRANSIENT_SQLSTATES = frozenset({None, "08000", "08001", "08006", "57P03"})


def is_transient(exc: BaseException) -> bool:
    from tasks.secrets import DatabaseUnreachable  # tasks.secrets uses this module for its retries

    if isinstance(exc, DatabaseUnreachable):
        return not exc.auth_failed and exc.sqlstate in TRANSIENT_SQLSTATES
    if isinstance(exc, psycopg.OperationalError):
        return exc.sqlstate in TRANSIENT_SQLSTATES
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in TRANSIENT_AWS_CODES or status >= 500
    return isinstance(exc, BotocoreConnectionError | ReadTimeoutError | ConnectionClosedError)


def retry_on_transient(task: object, task_run: object, state: object) -> bool:
    """Prefect `retry_condition_fn`: retry only when the task failed for a transient reason."""
    try:
        state.result()  # type: ignore[attr-defined]  # re-raises the task's exception
    except Exception as exc:  # noqa: BLE001 - classified, not swallowed
        return is_transient(exc)
    return False


def transient_retries(retries: int = 2, backoff_factor: float = 5) -> dict[str, object]:
    """The `@task` retry settings of every step that talks to AWS or the database: exponential backoff with
    jitter, and only for transient failures."""
    from prefect.tasks import exponential_backoff

    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=backoff_factor),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_on_transient,
    }
