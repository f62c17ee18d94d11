"""A restore or refresh stopped partway, by Ctrl-C or by a cancellation (Prefect's TerminationSignal): the
half-made copy is deleted before the swap, and during the swap (two renames, minutes each on RDS) the error
says where each copy is and the command that puts the live name back. Over real HTTP to the AWS emulator,
the interrupt raised from botocore's own event hooks where a person's Ctrl-C lands."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prefect.exceptions import TerminationSignal

from tasks.engine.aws import aws_client
from tasks.engine.connection import Connection
from tasks.engine.errors import Interrupted
from tasks.engine.runs.refresh import restore_snapshot
from tasks.engine.runs.steps import DirectSteps
from tests import test_iam_roles
from tests import test_refresh as shared
from tests.test_refresh import NEW, OLD, Aws, rds_environments, rds_refresh

# The emulated account of the refresh tests (production, staging, two production snapshots), and production
# named by an environments file.
aws, production = shared.aws, test_iam_roles.production


def interrupt_at_rename(client, to: str) -> None:
    """KeyboardInterrupt when `client` is about to ask for a rename to `to`, once."""
    def hook(params: dict, **kwargs: object) -> None:
        if params.get("NewDBInstanceIdentifier") == to:
            client.meta.events.unregister("before-parameter-build.rds.ModifyDBInstance", hook)
            raise KeyboardInterrupt

    client.meta.events.register("before-parameter-build.rds.ModifyDBInstance", hook)


def stop_while_masking(signal: BaseException):
    def mask(connection: Connection, files: list[Path]) -> None:
        raise signal
    return mask


def test_ctrl_c_while_masking_deletes_the_new_copy_and_leaves_staging(aws: Aws) -> None:
    with pytest.raises(Interrupted) as stopped:
        rds_refresh(aws, *rds_environments(aws.endpoint), mask=stop_while_masking(KeyboardInterrupt()))

    message = str(stopped.value)
    assert message.startswith("interrupted (Ctrl-C) while restoring snapshot rdsm-production-")
    assert f"app-staging is untouched; the half-created DB instance {NEW} was deleted" in message
    assert aws.instances() == ["app-production", "app-staging"]  # no unmasked production copy left running


def test_a_cancellation_while_masking_deletes_the_new_copy_and_goes_on_as_a_cancellation(
        aws: Aws, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(TerminationSignal):
        rds_refresh(aws, *rds_environments(aws.endpoint), mask=stop_while_masking(TerminationSignal(15)))

    assert aws.instances() == ["app-production", "app-staging"]
    assert f"the half-created DB instance {NEW} was deleted" in caplog.text  # in the run's logs


def test_ctrl_c_between_the_two_renames_says_how_to_put_the_live_name_back(aws: Aws) -> None:
    [live] = aws.rds.describe_db_instances(DBInstanceIdentifier="app-staging")["DBInstances"]
    aws.rds.modify_db_instance(DBInstanceIdentifier="app-staging", DeletionProtection=True, ApplyImmediately=True)
    interrupt_at_rename(aws.rds, "app-staging")

    with pytest.raises(Interrupted) as stopped:
        rds_refresh(aws, *rds_environments(aws.endpoint))

    message = str(stopped.value)
    assert f"while renaming {NEW} to app-staging: app-staging is now named {OLD}" in message
    assert (f"rename it back with aws rds modify-db-instance --db-instance-identifier {OLD} "
            f"--new-db-instance-identifier app-staging --apply-immediately") in message
    assert (f"or finish the swap with aws rds modify-db-instance --db-instance-identifier {NEW} "
            f"--new-db-instance-identifier app-staging --apply-immediately --deletion-protection, then mark the "
            f"replaced copy with aws rds add-tags-to-resource --resource-name "
            f"{live['DBInstanceArn'].replace('app-staging', OLD)} --tags "
            f"Key=rds-migrations:replaced-by,Value=app-staging") in message
    assert aws.instances() == ["app-production", NEW, OLD]  # as the message says; nothing deleted
    aws.rds.modify_db_instance(DBInstanceIdentifier=OLD, NewDBInstanceIdentifier="app-staging",
                               ApplyImmediately=True)  # the command it gives, as boto3 sends it
    assert aws.instances() == ["app-production", "app-staging", NEW]


def test_ctrl_c_after_the_swap_says_the_swap_is_done(aws: Aws) -> None:
    """Stopped while the replaced copy is being marked: the copy in place is the new one, and the error says so
    (it said "nothing was replaced"), with the command that marks the old copy."""
    def marking(**kwargs: object) -> None:
        raise KeyboardInterrupt

    aws.rds.meta.events.register("before-call.rds.AddTagsToResource", marking)

    with pytest.raises(Interrupted) as stopped:
        rds_refresh(aws, *rds_environments(aws.endpoint))

    message = str(stopped.value)
    assert f"while tagging the replaced copy {OLD}: the swap is done: app-staging is the restored copy" in message
    assert "add-tags-to-resource" in message
    assert aws.instances() == ["app-production", "app-staging", OLD]


def test_ctrl_c_after_the_first_rename_was_asked_for_says_it_is_under_way(aws: Aws) -> None:
    asked: list[str] = []

    def rename(params: dict, **kwargs: object) -> None:
        if params.get("NewDBInstanceIdentifier") == OLD:
            asked.append(OLD)

    def waiting(**kwargs: object) -> None:  # the first look after RDS took the rename: the wait begins
        if asked == [OLD]:
            asked.append("stopped")
            raise KeyboardInterrupt

    aws.rds.meta.events.register("before-parameter-build.rds.ModifyDBInstance", rename)
    aws.rds.meta.events.register("before-call.rds.DescribeDBInstances", waiting)

    with pytest.raises(Interrupted) as stopped:
        rds_refresh(aws, *rds_environments(aws.endpoint))

    message = str(stopped.value)
    assert f"while renaming app-staging to {OLD}: app-staging is being renamed {OLD} (check it)" in message
    assert f"--db-instance-identifier {OLD} --new-db-instance-identifier app-staging" in message
    assert f"the ready copy {NEW} was kept" in message
    assert aws.instances() == ["app-production", NEW, OLD]


def test_a_restore_stopped_by_ctrl_c_is_announced_and_exits_130(
        aws: Aws, production: None, caplog: pytest.LogCaptureFixture) -> None:
    def client(service: str, settings):
        made = aws_client(service, settings)
        if service == "rds":
            interrupt_at_rename(made, "app-production")
        return made

    with caplog.at_level(logging.INFO), pytest.raises(Interrupted) as stopped:
        restore_snapshot("production", "rdsm-production-aaaaaaa-20261123t010000", DirectSteps(make_client=client),
                         git_sha="abc1234")

    assert stopped.value.exit_code == 130
    assert "app-production is now named app-production-old-" in str(stopped.value)
    assert "Restore FAILED" in caplog.text and "rename it back with aws rds modify-db-instance" in caplog.text


def test_a_restore_stopped_by_ctrl_c_before_anything_was_made_says_nothing_was_replaced(
        aws: Aws, production: None, caplog: pytest.LogCaptureFixture) -> None:
    def client(service: str, settings):
        made = aws_client(service, settings)
        made.meta.events.register("before-call.rds.DescribeDBSnapshots", lambda **kw: (_ for _ in ()).throw(
            KeyboardInterrupt()))
        return made

    with caplog.at_level(logging.INFO), pytest.raises(Interrupted) as stopped:
        restore_snapshot("production", "rdsm-production-aaaaaaa-20261123t010000", DirectSteps(make_client=client),
                         git_sha="abc1234")

    assert str(stopped.value) == "interrupted (Ctrl-C) at step restore: nothing was replaced"
    assert "Restore FAILED" in caplog.text
    assert aws.instances() == ["app-production", "app-staging"]
