"""AWS clients for the flows, through prefect-aws `AwsCredentials`, with botocore's standard retry mode.

A saved `AwsCredentials` block is used when the environment names one (a role per environment); otherwise
the default credential chain. `endpoint_url` points at an AWS API emulator in tests. The flow makes the
clients and hands them to the tasks (tasks never build credentials).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.engine.aws import BOTOCORE_RETRIES
from tasks.engine.environments import AwsSettings
from tasks.engine.errors import ConfigError

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials


def aws_credentials(aws: AwsSettings) -> AwsCredentials:
    # Imported here: prefect-aws takes 0.5 s to import (aiobotocore, aiohttp), which every flow run would pay
    # while loading its flow, a run against a database URL or an embedded server included (the GitHub check).
    from prefect_aws import AwsClientParameters, AwsCredentials

    parameters = AwsClientParameters(endpoint_url=aws.endpoint_url, config=BOTOCORE_RETRIES)
    if aws.credentials_block:
        try:
            credentials = AwsCredentials.load(aws.credentials_block, _sync=True)  # type: ignore[call-arg]
        except ValueError as exc:  # Prefect's words for a block that was never saved on this server
            if "Unable to find block document" not in str(exc):
                raise
            raise ConfigError(
                f"the AWS credentials block {aws.credentials_block!r} (the environment's aws.credentials_block) is "
                "not saved on this Prefect server: save it once, e.g. `AwsCredentials(region_name=...).save("
                f"{aws.credentials_block!r})` (README: Running it under Prefect), or run against a database URL "
                "with --database-url"
            ) from None
        return credentials.model_copy(
            update={"region_name": credentials.region_name or aws.region, "aws_client_parameters": parameters}
        )
    return AwsCredentials(region_name=aws.region, aws_client_parameters=parameters)


def aws_client(service: str, aws: AwsSettings) -> Any:
    return aws_credentials(aws).get_client(service)
