"""Finding a fleet's RDS instances or Aurora clusters by tag, through the boto3 RDS client handed in.

`describe_db_instances` / `describe_db_clusters` have no tag filter, but every page carries each resource's
`TagList`: the pages are read to the end and filtered here. Only PostgreSQL engines are taken; anything else
that carries the tags is logged and left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tasks.engine.aws import error_code
from tasks.engine.errors import ConfigError
from tasks.engine.fleet.config import TagDiscovery
from tasks.engine.logs import Log
from tasks.engine.snapshots.rds import CLUSTER, INSTANCE, REPLACED_TAG

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Discovered:
    """An instance or cluster that carries the fleet's tags; where to reach it and its managed secret."""

    name: str  # DBInstanceIdentifier / DBClusterIdentifier
    engine: str
    host: str | None
    port: int | None
    dbname: str | None
    master_secret_arn: str | None  # MasterUserSecret.SecretArn, when RDS manages the master password


def _tags(resource: dict) -> dict[str, str]:
    return {tag["Key"]: tag.get("Value", "") for tag in resource.get("TagList", [])}


def _discovered(kind: str, resource: dict) -> Discovered:
    if kind == "rds_instances":
        endpoint = resource.get("Endpoint") or {}
        host, port, dbname = endpoint.get("Address"), endpoint.get("Port"), resource.get("DBName")
        name = resource[INSTANCE.param]
    else:
        host, port, dbname = resource.get("Endpoint"), resource.get("Port"), resource.get("DatabaseName")
        name = resource[CLUSTER.param]
    return Discovered(
        name=name,
        engine=str(resource.get("Engine", "")),
        host=host,
        port=int(port) if port else None,
        dbname=dbname,
        master_secret_arn=(resource.get("MasterUserSecret") or {}).get("SecretArn"),
    )


def _described(api: Any, rds: Any) -> list[dict]:
    """Every instance or cluster of the region (all pages); an AWS refusal is a configuration error naming it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return [resource for page in rds.get_paginator(api.describe).paginate() for resource in page[api.key]]
    except ClientError as exc:
        code = error_code(exc)
        raise ConfigError(f"discovering the fleet: RDS refused {api.describe} ({code}): the role must be allowed "
                          f"to describe {api.noun}s (deployments/iam/migrate-fleet.json)") from None
    except BotoCoreError as exc:
        raise ConfigError(f"discovering the fleet: RDS could not be asked ({type(exc).__name__}: {exc})") from None


def discover(discovery: TagDiscovery, rds: Any, log: Log = logger) -> list[Discovered]:
    """Every PostgreSQL instance or cluster carrying all of `discovery.tags`, by identifier."""
    api = INSTANCE if discovery.kind == "rds_instances" else CLUSTER
    found: list[Discovered] = []
    for resource in _described(api, rds):
        tags = _tags(resource)
        if any(tags.get(key) != value for key, value in discovery.tags.items()):
            continue
        if REPLACED_TAG in tags:  # the old copy a restore kept: it carries the live one's tags
            log.info("%s %s was replaced by a restore (it is tagged %s=%s): left out", api.noun,
                     resource.get(api.param), REPLACED_TAG, tags[REPLACED_TAG])
            continue
        if discovery.kind == "rds_instances" and resource.get("DBClusterIdentifier"):
            continue  # an Aurora cluster's member: the cluster is the target, not its instances
        item = _discovered(discovery.kind, resource)
        if "postgres" not in item.engine:
            log.warning(
                "%s %s carries the fleet's tags but runs %s, not PostgreSQL: left out",
                api.noun,
                item.name,
                item.engine or "an unknown engine",
            )
            continue
        found.append(item)
    log.info(
        "Discovered %d %s(s) tagged %s",
        len(found),
        api.noun,
        ", ".join(f"{k}={v}" for k, v in sorted(discovery.tags.items())),
    )
    return sorted(found, key=lambda d: d.name)
