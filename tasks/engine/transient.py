"""Which failures are worth retrying: AWS throttling and 5xx, a database that refused or was not there, and a
read that waited its while behind another session's lock.

Never retried: a failing migration, a bad or missing secret, wrong credentials, a lint or history error.
"""

from __future__ import annotations

import psycopg
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from tasks.engine.errors import DatabaseUnreachable

TRANSIENT_AWS_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "ServiceUnavailable", "InternalFailure",
    "InternalServiceError", "InternalError",
})
# Connection failures: the server is starting, restarting or unreachable for now.
TRANSIENT_SQLSTATES = frozenset({None, "08000", "08001", "08006", "57P03"})
# ...except what TLS refuses: a certificate, a host name, a server without TLS do not change on a retry.
NOT_TRANSIENT_TEXTS = ("certificate verify failed", "does not support SSL", "root certificate file",
                       "does not match host name", "requires a valid client certificate", "SSL support is not")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DatabaseUnreachable):
        refused_by_tls = any(text in str(exc) for text in NOT_TRANSIENT_TEXTS)
        return not exc.auth_failed and not refused_by_tls and exc.sqlstate in TRANSIENT_SQLSTATES
    if isinstance(exc, psycopg.OperationalError):
        # 55P03 here is the tool's own statement (a read, after session.READ_TIMEOUTS; the history tables' set-up)
        # that waited its while for another session's lock, and changed nothing: a migration's own lock timeout
        # is its failure, handled where it is applied, and never reaches a retry.
        return exc.sqlstate in TRANSIENT_SQLSTATES or exc.sqlstate == "55P03"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in TRANSIENT_AWS_CODES or status >= 500
    return isinstance(exc, BotocoreConnectionError | ReadTimeoutError | ConnectionClosedError)
