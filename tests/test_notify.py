"""notify: message content; Slack failures never raise nor leak the webhook URL (real HTTP to a sink)."""

from __future__ import annotations

import logging
import socket
import uuid
from dataclasses import replace

import pytest
from prefect import flow
from prefect_slack import SlackWebhook

from tasks.engine.environments import ConsoleNotify, SlackNotify
from tasks.engine.messages import RunSummary, render_console, render_message
from tasks.engine.notify import deliver, should_notify
from tasks.notify import notify_task, slack_post
from tests.conftest import CANARY_PASSWORD

SHA = "3f9c2a1b7d4e5f60718293a4b5c6d7e8f9012345"
ARN = "arn:aws:rds:eu-west-1:123456789012:snapshot:orders-prod-pre-3f9c2a1"
TOKEN = "secret-webhook-token"

SUCCEEDED = RunSummary(
    environment="orders-prod",
    tier="production",
    git_sha=SHA,
    trigger="github",
    outcome="succeeded",
    failed_step=None,
    error=None,
    applied=("0007.add-customer-email", "0008.index-orders-created"),
    failed_migration=None,
    pending=(),
    snapshot_id="orders-prod-pre-3f9c2a1",
    snapshot_location=ARN,
    restore_steps=(),
    duration_seconds=83.4,
    run_url="http://127.0.0.1:4200/runs/flow-run/6d1f0c2e",
)
FAILED = replace(
    SUCCEEDED,
    outcome="failed",
    failed_step="migrate",
    error='0009.orders-status-enum: ERROR: column "status" contains null values (SQLSTATE 23502)',
    applied=("0007.add-customer-email", "0008.index-orders-created"),
    failed_migration="0009.orders-status-enum",
    pending=("0009.orders-status-enum", "0010.drop-legacy-flag"),
    restore_steps=(
        "aws rds restore-db-instance-from-db-snapshot --db-instance-identifier orders-prod-restored "
        "--db-snapshot-identifier orders-prod-pre-3f9c2a1",
        "aws rds modify-db-instance --db-instance-identifier orders-prod --new-db-instance-identifier "
        "orders-prod-old --apply-immediately",
    ),
)


def text_of(summary: RunSummary) -> str:
    subject, body = render_message(summary)
    return f"{subject}\n{body}"


# ---- content -----------------------------------------------------------------------------------------------


def test_success_message_names_environment_sha_applied_snapshot_and_run() -> None:
    subject, body = render_message(SUCCEEDED)
    assert "SUCCEEDED" in subject and "orders-prod" in subject
    for expected in (
        "orders-prod",
        "production",
        "`3f9c2a1`",
        SHA,
        "github",
        "0007.add-customer-email",
        "0008.index-orders-created",
        "orders-prod-pre-3f9c2a1",
        ARN,
        "1m 23s",
        "<http://127.0.0.1:4200/runs/flow-run/6d1f0c2e|",
    ):
        assert expected in body, expected
    assert "restore" not in body.lower()


def test_failure_message_names_step_migration_error_and_restore_steps() -> None:
    subject, body = render_message(FAILED)
    assert "FAILED at step migrate" in subject
    assert "*Failed migration:* `0009.orders-status-enum`" in body
    assert 'column "status" contains null values (SQLSTATE 23502)' in body
    assert "never onto the live name" in body
    for step in FAILED.restore_steps:
        assert step in body
    assert body.index("never onto the live name") < body.index("restore-db-instance-from-db-snapshot")


def test_failure_without_snapshot_says_no_snapshot_and_where_the_database_stands() -> None:
    body = render_message(replace(FAILED, snapshot_id=None, snapshot_location=None, restore_steps=()))[1]
    assert "No snapshot was taken" in body
    assert "as it was before 0009.orders-status-enum" in body
    assert "never onto the live name" not in body

    before_migrate = replace(
        FAILED,
        failed_step="fetch-secret",
        applied=(),
        failed_migration=None,
        snapshot_id=None,
        snapshot_location=None,
        restore_steps=(),
        error="secretsmanager:orders-prod: the secret has no 'host' field",
    )
    assert "no migration was applied: the database was not changed" in render_console(before_migrate)


def test_long_lists_are_truncated_and_slack_control_characters_escaped() -> None:
    pending = tuple(f"{n:04d}.step" for n in range(1, 26))
    body = render_message(replace(FAILED, pending=pending, error="syntax error at or near <EOF> & more"))[1]
    assert "0010.step" in body and "0011.step" not in body
    assert "… and 15 more" in body
    assert "&lt;EOF&gt; &amp; more" in body


def test_console_rendering_is_plain_text_with_the_same_facts() -> None:
    text = render_console(FAILED)
    assert "*" not in text and "`" not in text.split("error:")[0]
    for expected in (
        "orders-prod",
        "3f9c2a1",
        "0009.orders-status-enum",
        "never onto the live name",
        *FAILED.restore_steps,
    ):
        assert expected in text



def test_what_a_target_holds_back_is_named_apart_in_slack_and_on_the_console() -> None:
    """A failed `run --target 0009`: the failed migration is pending, the one after the target too, said apart."""
    failed = replace(FAILED, target="0009", beyond_target=("0010.drop-legacy-flag",))
    body = render_message(failed)[1]
    assert "*Pending (2):* `0009.orders-status-enum`; `0010.drop-legacy-flag` (after the target `0009`)" in body
    assert ("  pending:    0009.orders-status-enum; 0010.drop-legacy-flag (after the target 0009)"
            in render_console(failed).splitlines())

@pytest.mark.parametrize(
    ("outcome", "on_noop", "expected"),
    [
        ("nothing-to-do", False, False),
        ("nothing-to-do", True, True),
        ("failed", False, True),
        ("succeeded", False, True),
        ("dry-run", False, True),
    ],
)
def test_should_notify_skips_no_op_runs_unless_asked(outcome: str, on_noop: bool, expected: bool) -> None:
    assert should_notify(replace(SUCCEEDED, outcome=outcome), on_noop) is expected  # type: ignore[arg-type]


def test_canary_never_reaches_the_message() -> None:
    redacted = replace(FAILED, error="cannot connect to admin@db:5432/orders: password=********** rejected")
    assert CANARY_PASSWORD not in text_of(redacted) + render_console(redacted)


# ---- delivery over real HTTP -------------------------------------------------------------------------------

SLACK = SlackNotify(kind="slack", webhook_block="orders-prod-slack")


def send_slack(webhook: SlackWebhook, summary: RunSummary) -> bool:
    """The production path: the notify task's poster through the block, handed to the engine's deliver."""
    return deliver(SLACK, summary, post=slack_post(webhook), log=logging.getLogger("test"))


def test_send_slack_posts_subject_and_body(slack_sink, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert send_slack(SlackWebhook(url=slack_sink.url), FAILED) is True
    assert slack_sink.texts() == [text_of(FAILED)]
    assert slack_sink.url not in caplog.text and TOKEN not in caplog.text  # slack_sdk logs the URL at DEBUG


@pytest.mark.parametrize("status", [404, 500])
def test_slack_http_error_returns_false_without_leaking_the_url(
    slack_sink, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    slack_sink.status = status
    caplog.set_level(logging.DEBUG)
    assert send_slack(SlackWebhook(url=slack_sink.url), FAILED) is False
    assert len(slack_sink.messages) == 1
    assert "Slack notification failed (NotificationError, Slack answered 'no_service')" in caplog.text
    assert slack_sink.url not in caplog.text and TOKEN not in caplog.text


def test_slack_down_returns_false_without_leaking_the_url(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/T000/B000/{TOKEN}"
    caplog.set_level(logging.DEBUG)  # slack_sdk logs "Going to retry the same request: POST <url>" at INFO
    assert send_slack(SlackWebhook(url=url), FAILED) is False
    assert "Slack notification failed (URLError)" in caplog.text
    assert url not in caplog.text and TOKEN not in caplog.text


def test_undelivered_summary_goes_to_the_log(slack_sink, caplog: pytest.LogCaptureFixture) -> None:
    slack_sink.status = 404
    caplog.set_level(logging.INFO)
    target = SlackNotify(kind="slack", webhook_block="orders-prod-slack")
    delivered = deliver(target, FAILED, post=slack_post(SlackWebhook(url=slack_sink.url)),
                        log=logging.getLogger("test"))
    assert delivered is False
    assert FAILED.restore_steps[0] in caplog.text


def test_console_target_prints_and_honours_on_noop(capsys: pytest.CaptureFixture[str]) -> None:
    noop = replace(SUCCEEDED, outcome="nothing-to-do", applied=(), snapshot_id=None, snapshot_location=None)
    assert deliver(ConsoleNotify(kind="console", on_noop=False), noop) is False
    assert capsys.readouterr().out == ""
    assert deliver(ConsoleNotify(kind="console"), FAILED) is True
    assert "Schema migrations FAILED at step migrate on orders-prod" in capsys.readouterr().out


# ---- the Prefect task --------------------------------------------------------------------------------------


def test_notify_task_loads_the_block_and_posts(prefect_api, slack_sink) -> None:
    name = f"notify-test-{uuid.uuid4().hex[:8]}"
    SlackWebhook(url=slack_sink.url).save(name)

    @flow
    def announce(target: SlackNotify) -> tuple[bool, bool]:
        missing = SlackNotify(kind="slack", webhook_block="no-such-block")
        return notify_task(target, SUCCEEDED), notify_task(missing, FAILED)

    delivered, missing_delivered = announce(SlackNotify(kind="slack", webhook_block=name))
    assert (delivered, missing_delivered) == (True, False)
    assert slack_sink.texts() == [text_of(SUCCEEDED)]


def test_a_refresh_whose_migration_history_could_not_be_read_says_not_known() -> None:
    """The refresh's migrate step ended without knowing what it applied (its history could not be read): the message
    says so, never "Migrated: none", which is what a refresh that applied nothing says."""
    from datetime import UTC, datetime

    from tasks.engine.messages import RefreshSummary
    from tasks.engine.snapshots.naming import Snapshot
    from tasks.engine.snapshots.swap import SwapResult

    snapshot = Snapshot("rds_instance", "rdsm-production-abc1234-20261201t000000", "app-production", True,
                        "arn:aws:rds:eu-west-1:1:snapshot:x", datetime(2026, 12, 1, tzinfo=UTC))
    result = SwapResult("refresh", "staging", "rds_instance", snapshot, "app-staging", "app-staging-new",
                        "app-staging-old", True)
    summary = RefreshSummary("refresh", "staging", "staging", "failed", "migrate", "the history could not be read",
                             result, None, None, "refresh-staging", (), 1.0, None)
    for text in (summary.console_text(), summary.slack_message()[1]):
        assert "not known: the history could not be read" in migrated_line(text), text
        assert "rds-migrations status --env staging" in migrated_line(text), text  # the database it could not read
    assert migrated_line(replace(summary, applied=()).console_text()).endswith("none")


def migrated_line(text: str) -> str:
    [line] = [line for line in text.splitlines() if "Migrated" in line]
    return line


def test_a_run_refused_for_its_parameters_offers_no_run_again() -> None:
    """A restore asked of a deployment for another environment than the one it runs is refused at step parameters:
    the message offered to run it again with the same parameters, which are refused the same way."""
    from tasks.engine.messages import RefreshSummary

    refused = RefreshSummary("restore", "staging", "staging", "failed", "parameters",
                             "deployment restore-snapshot/restore-production runs environment production only",
                             None, None, "restore-snapshot/restore-production", "restore-snapshot",
                             (("environment", "staging"), ("snapshot_id", "rdsm-staging-x")), 1.0, None)
    assert refused.rerun_command() is None and "Run again" not in refused.console_text()
    failed_later = replace(refused, failed_step="restore", error="the restore failed")
    assert failed_later.rerun_command() == ("prefect deployment run restore-snapshot/restore-production "
                                            "--param environment=staging --param snapshot_id=rdsm-staging-x")
    assert "Run again" in failed_later.console_text()
