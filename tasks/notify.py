"""notify: tell people how a run went — Slack through prefect-slack's `SlackWebhook`, or the console.

The message carries what was applied, what failed and why, what is still pending, and where a snapshot
exists its id and the steps to restore it. A notification failure never changes the migration outcome:
`send_slack` catches everything and logs only the exception type and Slack's error code, because the
exception texts and slack_sdk's own log lines hold the webhook URL, and the URL is the credential.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from prefect import get_run_logger, task
from prefect.blocks.abstract import NotificationError
from prefect.cache_policies import NO_CACHE

from tasks.environments import ConsoleNotify, SlackNotify

if TYPE_CHECKING:  # imported where a Slack target is used: prefect-slack brings slack_sdk and aiohttp (~0.25 s)
    from prefect_slack import SlackWebhook

Log = logging.Logger | logging.LoggerAdapter  # get_run_logger() returns an adapter
logger = logging.getLogger(__name__)

MAX_LISTED = 10  # migration ids shown per list before "… and N more"
MAX_ERROR_CHARS = 2_000  # Slack accepts 40,000 characters; an error longer than this is noise
RESTORE_HEADING = "To restore (to a new instance, then swap names — never onto the live name)"
STATUS = {
    "succeeded": "SUCCEEDED",
    "failed": "FAILED",
    "nothing-to-do": "NOTHING TO DO",
    "dry-run": "DRY RUN",
}
# Slack answers a failed webhook post with a short error code ("no_service", "invalid_token"); anything
# else in a response body (an HTML page from a proxy, say) may echo the URL and is not logged.
SLACK_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class RunSummary:
    """What one pipeline run did, for people. Every text in it is already free of secrets."""

    environment: str
    tier: str  # "staging" | "production"
    git_sha: str
    trigger: str  # "ui", "github", "schedule", "cli", ...
    outcome: Literal["succeeded", "failed", "nothing-to-do", "dry-run"]
    failed_step: str | None  # "validate" | "fetch-secret" | "snapshot" | "migrate" | None
    error: str | None  # already secret-free error text
    applied: tuple[str, ...]  # migration ids applied in this run
    failed_migration: str | None
    pending: tuple[str, ...]  # still pending after the run
    snapshot_id: str | None
    snapshot_location: str | None  # ARN or dump path
    restore_steps: tuple[str, ...]  # shell commands (restore to a NEW name, then swap) when a snapshot exists
    duration_seconds: float
    run_url: str | None  # Prefect UI link to the flow run


# ---- rendering ---------------------------------------------------------------------------------------------


def mrkdwn(text: str) -> str:
    """Slack reads &, < and > as control characters, even inside code spans."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _listed(ids: Sequence[str], quote: Callable[[str], str]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(quote(i) for i in ids[:MAX_LISTED])
    rest = len(ids) - MAX_LISTED
    return f"{shown} … and {rest} more" if rest > 0 else shown


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _short_sha(sha: str) -> str:
    return sha[:7] if re.fullmatch(r"[0-9a-f]{8,64}", sha) else sha


def _error_text(error: str) -> str:
    error = error.strip()
    if len(error) > MAX_ERROR_CHARS:
        return error[:MAX_ERROR_CHARS] + f" … ({len(error) - MAX_ERROR_CHARS} more characters)"
    return error


def _outcome_line(summary: RunSummary) -> str:
    status = STATUS.get(summary.outcome, summary.outcome.upper())
    if summary.outcome == "failed" and summary.failed_step:
        return f"{status} at step {summary.failed_step}"
    return status


def _no_snapshot_note(summary: RunSummary) -> str | None:
    """On a failure without a snapshot, say what state the database is in, from the fields alone."""
    if summary.outcome != "failed" or summary.snapshot_id:
        return None
    if summary.applied:
        kept = f"the {len(summary.applied)} migration(s) applied in this run are in place"
    else:
        kept = "no migration was applied in this run"
    if summary.failed_migration:
        return (
            f"No snapshot was taken, so there is nothing to restore from; {kept}. "
            f"{summary.failed_migration} ran in its own transaction and was rolled back, so the database is "
            f"as it was before {summary.failed_migration} (unless it is marked `-- transactional: false`: "
            "then check for partial changes, such as an INVALID index, before re-running)."
        )
    if summary.applied:
        return f"No snapshot was taken, so there is nothing to restore from; {kept}."
    return "No snapshot was taken and no migration was applied: the database was not changed."


def render_message(summary: RunSummary) -> tuple[str, str]:
    """(subject, body) for a Slack message in mrkdwn."""
    m = mrkdwn

    def code(text: str) -> str:
        return f"`{m(text)}`"

    subject = (
        f"*Schema migrations {_outcome_line(summary)}* on {code(summary.environment)} ({m(summary.tier)})"
    )
    short = _short_sha(summary.git_sha)
    sha = code(short) + (f" ({m(summary.git_sha)})" if short != summary.git_sha else "")
    applied_label = "Would apply" if summary.outcome == "dry-run" else "Pending"
    lines = [
        f"*Environment:* {code(summary.environment)} ({m(summary.tier)})",
        f"*Git SHA:* {sha}",
        f"*Trigger:* {m(summary.trigger)}",
        f"*Outcome:* {m(_outcome_line(summary))}",
        f"*Applied ({len(summary.applied)}):* {_listed(summary.applied, code)}",
    ]
    if summary.failed_migration:
        lines.append(f"*Failed migration:* {code(summary.failed_migration)}")
    lines.append(f"*{applied_label} ({len(summary.pending)}):* {_listed(summary.pending, code)}")
    if summary.snapshot_id:
        where = f" at {code(summary.snapshot_location)}" if summary.snapshot_location else ""
        lines.append(f"*Snapshot:* {code(summary.snapshot_id)}{where}")
    lines.append(f"*Duration:* {format_duration(summary.duration_seconds)}")
    if summary.run_url:
        url = summary.run_url.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
        lines.append(f"*Run:* <{url}|Prefect flow run>")
    if summary.outcome == "failed":
        if summary.error:
            lines += ["*Error:*", f"```{m(_error_text(summary.error))}```"]
        if summary.snapshot_id and summary.restore_steps:
            lines += [f"*{RESTORE_HEADING}:*", "```" + "\n".join(m(s) for s in summary.restore_steps) + "```"]
        note = _no_snapshot_note(summary)
        if note:
            lines.append(m(note))
    return subject, "\n".join(lines)


def render_console(summary: RunSummary) -> str:
    """Plain text for the terminal, with the same content as the Slack message."""
    sha = _short_sha(summary.git_sha)
    lines = [
        f"Schema migrations {_outcome_line(summary)} on {summary.environment} ({summary.tier})",
        f"  git SHA:    {sha}" + (f" ({summary.git_sha})" if sha != summary.git_sha else ""),
        f"  trigger:    {summary.trigger}",
        f"  applied:    {_listed(summary.applied, str)}",
    ]
    if summary.failed_migration:
        lines.append(f"  failed:     {summary.failed_migration}")
    label = "would apply" if summary.outcome == "dry-run" else "pending"
    lines.append(f"  {label + ':':<11} {_listed(summary.pending, str)}")
    if summary.snapshot_id:
        where = f" at {summary.snapshot_location}" if summary.snapshot_location else ""
        lines.append(f"  snapshot:   {summary.snapshot_id}{where}")
    lines.append(f"  duration:   {format_duration(summary.duration_seconds)}")
    if summary.run_url:
        lines.append(f"  run:        {summary.run_url}")
    if summary.outcome == "failed":
        if summary.error:
            lines += ["  error:", *(f"    {line}" for line in _error_text(summary.error).splitlines())]
        if summary.snapshot_id and summary.restore_steps:
            lines += [f"  {RESTORE_HEADING}:", *(f"    {step}" for step in summary.restore_steps)]
        note = _no_snapshot_note(summary)
        if note:
            lines.append(f"  {note}")
    return "\n".join(lines)


# ---- sending -----------------------------------------------------------------------------------------------


def should_notify(summary: RunSummary, on_noop: bool) -> bool:
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
    if isinstance(exc, NotificationError):
        # prefect-slack raises NotificationError(f"Failed to send message: {response.body}") on HTTP >= 400;
        # the HTTP status itself is not in it.
        body = str(exc).removeprefix("Failed to send message:").strip()
        if SLACK_ERROR_CODE.match(body):
            detail += f", Slack answered {body!r}"
    return detail


def send_slack(webhook: SlackWebhook, summary: RunSummary, log: Log) -> bool:
    """Post the summary through the webhook block. Returns whether Slack accepted it; never raises."""
    url = webhook.url.get_secret_value()
    try:
        subject, body = render_message(summary)
        with slack_sdk_logs_redacted(url):
            webhook.notify(body, subject, _sync=True)  # type: ignore[call-arg]
    except Exception as exc:  # noqa: BLE001 - a notification never changes the migration outcome
        log.warning(
            "Slack notification failed (%s); the migration outcome is unchanged", failure_detail(exc)
        )
        return False
    log.info("Slack notification sent for %s (%s)", summary.environment, summary.outcome)
    return True


def send_console(summary: RunSummary, write: Callable[[str], object] = print) -> None:
    write(render_console(summary))


def notify(
    target: SlackNotify | ConsoleNotify,
    summary: RunSummary,
    *,
    webhook: SlackWebhook | None = None,
    log: Log | None = None,
) -> bool:
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
        send_console(summary, write)
        return True
    if webhook is None:
        log.warning("No Slack webhook to post to; the summary follows:\n%s", render_console(summary))
        return False
    if send_slack(webhook, summary, log):
        return True
    log.warning("The summary that was not delivered to Slack:\n%s", render_console(summary))
    return False


# ---- Prefect task ------------------------------------------------------------------------------------------


@task(name="notify", persist_result=False, cache_policy=NO_CACHE)
def notify_task(target: SlackNotify | ConsoleNotify, summary: RunSummary) -> bool:
    """Announce a run's outcome; a failure to notify is logged and never fails the run.

    Args:
        target: the environment's `notify` setting (a Slack webhook block name, or the console).
        summary: what the run did.

    Returns:
        Whether a message was delivered.

    Example:
        ```python
        notify_task(environment.notify, summary, wait_for=[allow_failure(applied)])
        ```
    """
    logger = get_run_logger()
    webhook: SlackWebhook | None = None
    if isinstance(target, SlackNotify):
        from prefect_slack import SlackWebhook

        try:
            webhook = SlackWebhook.load(target.webhook_block, _sync=True)  # type: ignore[call-arg]
        except Exception as exc:  # noqa: BLE001 - the block's absence must not change the outcome either
            logger.warning(
                "Slack webhook block %r could not be loaded (%s); the migration outcome is unchanged",
                target.webhook_block,
                type(exc).__name__,
            )
    return notify(target, summary, webhook=webhook, log=logger)
