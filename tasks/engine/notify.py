"""notify's engine: tell people how a run went, on Slack or on the console. A notification never changes a
run's outcome: `deliver` catches everything, and logs only the exception type and Slack's error code,
because exception texts and slack_sdk's own log lines hold the webhook URL, and the URL is the credential.

Posting to Slack is handed in (`post`): the Prefect side posts through prefect-slack's `SlackWebhook` block.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

from tasks.engine.environments import ConsoleNotify, SlackNotify
from tasks.engine.logs import Log
from tasks.engine.messages import Summary

logger = logging.getLogger(__name__)
# (subject, body) → Slack; raises when Slack does not take it.
SlackPost = Callable[[str, str], None]


# Slack answers a failed webhook post with a short error code ("no_service", "invalid_token"); anything
# else in a response body (an HTML page from a proxy, say) may echo the URL and is not logged.
SLACK_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def should_notify(summary: Summary, on_noop: bool) -> bool:
    """Every run is announced except a run with nothing to do, which is announced only when `on_noop`."""
    return summary.outcome != "nothing-to-do" or on_noop


class _Redact(logging.Filter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "<slack webhook url>")
            record.msg, record.args = message, None
        return True


@contextmanager
def slack_sdk_logs_redacted(url: str) -> Iterator[None]:
    """slack_sdk logs the full webhook URL at INFO when it retries and at DEBUG on every post."""
    path = urlsplit(url).path
    token = path.rstrip("/").rsplit("/", 1)[-1]
    redact = _Redact([url, path if len(path) > 1 else "", token if len(token) >= 8 else ""])
    sdk_logger = logging.getLogger("slack_sdk.webhook.client")
    sdk_logger.addFilter(redact)
    try:
        yield
    finally:
        sdk_logger.removeFilter(redact)


def failure_detail(exc: Exception) -> str:
    """The exception type and, for an HTTP error answer, Slack's error code; never the exception text."""
    detail = type(exc).__name__
    if type(exc).__name__ == "NotificationError":
        # prefect-slack raises NotificationError(f"Failed to send message: {response.body}") on HTTP >= 400;
        # the HTTP status itself is not in it.
        body = str(exc).removeprefix("Failed to send message:").strip()
        if SLACK_ERROR_CODE.match(body):
            detail += f", Slack answered {body!r}"
    return detail



def deliver(target: SlackNotify | ConsoleNotify, summary: Summary, *, post: SlackPost | None = None,
            log: Log | None = None) -> bool:
    """Send the summary where the environment says. Returns whether a message was delivered.

    When Slack does not take the message, the plain-text summary goes to `log` instead, so the restore
    steps are still in the run's logs. Without `log`, the console summary is printed.
    """
    write: Callable[[str], object] = print if log is None else log.info
    log = logger if log is None else log
    if not should_notify(summary, target.on_noop):
        log.info("Nothing to do in %s; not notifying (on_noop is false)", summary.environment)
        return False
    if isinstance(target, ConsoleNotify):
        write(summary.console_text())
        return True
    if post is None:
        log.warning("No Slack webhook to post to; the summary follows:\n%s", summary.console_text())
        return False
    try:
        subject, body = summary.slack_message()
        post(body, subject)
    except Exception as exc:  # noqa: BLE001 - a notification never changes the outcome
        log.warning("Slack notification failed (%s); the outcome is unchanged", failure_detail(exc))
        log.warning("The summary that was not delivered to Slack:\n%s", summary.console_text())
        return False
    log.info("Slack notification sent for %s (%s)", summary.environment, summary.outcome)
    return True
