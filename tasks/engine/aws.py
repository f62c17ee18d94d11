"""AWS clients without Prefect: boto3 with botocore's standard retry mode and the environment's endpoint.

The Prefect side makes its clients from a prefect-aws `AwsCredentials` block (tasks/aws.py) when the
environment names one; this is the default credential chain, for runs that have no Prefect API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.engine.environments import AwsSettings, Environment

# botocore retries throttling and 5xx with backoff itself; Prefect task retries sit on top of this.
BOTOCORE_RETRIES = {"retries": {"mode": "standard", "max_attempts": 5}}


def error_code(exc: Any) -> str:
    """The error code AWS answered a botocore `ClientError` with ("unknown" when it gave none)."""
    return str(exc.response.get("Error", {}).get("Code", "unknown"))


def aws_client(service: str, aws: AwsSettings) -> Any:
    """A boto3 client for `service` in the environment's region, from the default credential chain."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session(region_name=aws.region).client(
        service, endpoint_url=aws.endpoint_url, config=Config(**BOTOCORE_RETRIES))


class AwsClients:
    """One client per service and environment for a run, made on first use by `make` (the default chain
    here; a prefect-aws block's on the Prefect side). None for an environment without AWS."""

    def __init__(self, make: Callable[[str, AwsSettings], Any] = aws_client) -> None:
        self.make = make
        self._made: dict[tuple[str, str], Any] = {}

    def get(self, service: str, environment: Environment) -> Any:
        if environment.aws is None:
            return None
        key = (service, environment.name)
        if key not in self._made:
            self._made[key] = self.make(service, environment.aws)
        return self._made[key]
