"""AWS clients for the flows, through prefect-aws `AwsCredentials`, with botocore's standard retry mode.

A saved `AwsCredentials` block is used when the environment names one (a role per environment); otherwise
the default credential chain. `endpoint_url` points at an AWS API emulator in tests. The flow makes the
clients and hands them to the tasks (tasks never build credentials).
"""

from __future__ import annotations

from typing import Any

from prefect_aws import AwsClientParameters, AwsCredentials

from tasks.engine.aws import BOTOCORE_RETRIES
from tasks.engine.environments import AwsSettings


def aws_credentials(aws: AwsSettings) -> AwsCredentials:
    parameters = AwsClientParameters(endpoint_url=aws.endpoint_url, config=BOTOCORE_RETRIES)
    if aws.credentials_block:
        credentials = AwsCredentials.load(aws.credentials_block, _sync=True)  # type: ignore[call-arg]
        return credentials.model_copy(
            update={"region_name": credentials.region_name or aws.region, "aws_client_parameters": parameters}
        )
    return AwsCredentials(region_name=aws.region, aws_client_parameters=parameters)


def aws_client(service: str, aws: AwsSettings) -> Any:
    return aws_credentials(aws).get_client(service)
