"""notify: announce any run's summary on Slack, through prefect-slack's `SlackWebhook` block, or on the
console (engine: tasks/engine/notify.py, tasks/engine/messages.py). Never fails the run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.engine.environments import ConsoleNotify, SlackNotify
from tasks.engine.logs import Log
from tasks.engine.messages import Summary
from tasks.engine.notify import SlackPost, deliver, slack_sdk_logs_redacted

if TYPE_CHECKING:  # imported where a Slack target is used: prefect-slack brings slack_sdk and aiohttp (~0.25 s)
    from prefect_slack import SlackWebhook


def slack_post(webhook: SlackWebhook) -> SlackPost:
    """Post through the block, with slack_sdk's log lines (which hold the webhook URL) redacted."""
    url = webhook.url.get_secret_value()

    def post(body: str, subject: str) -> None:
        with slack_sdk_logs_redacted(url):
            webhook.notify(body, subject, _sync=True)  # type: ignore[call-arg]

    return post


def slack_post_for(target: SlackNotify | ConsoleNotify, log: Log) -> SlackPost | None:
    """How to post to the target's Slack block (None for the console, or when the block cannot be loaded:
    `deliver` then writes the summary to the log instead)."""
    if not isinstance(target, SlackNotify):
        return None
    from prefect_slack import SlackWebhook

    try:
        return slack_post(SlackWebhook.load(target.webhook_block, _sync=True))  # type: ignore[call-arg]
    except Exception as exc:  # noqa: BLE001 - the block's absence must not change the outcome either
        log.warning("Slack webhook block %r could not be loaded (%s); the outcome is unchanged",
                    target.webhook_block, type(exc).__name__)
        return None


@task(name="notify", task_run_name="notify-{summary.environment}", persist_result=False, cache_policy=NO_CACHE)
def notify_task(target: SlackNotify | ConsoleNotify, summary: Summary) -> bool:
    """Announce a run's outcome; a failure to notify is logged and never fails the run.

    Args:
        target: the environment's `notify` setting (a Slack webhook block name, or the console).
        summary: what the run did (a migration run, a refresh, a restore).

    Returns:
        Whether a message was delivered.

    Example:
        ```python
        notify_task(environment.notify, summary)
        ```
    """
    log = get_run_logger()
    return deliver(target, summary, post=slack_post_for(target, log), log=log)
