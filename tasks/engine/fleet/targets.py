"""A fleet resolved into its targets, each a single-target copy of the environment that the one-database
pipeline runs unchanged: its own name (`<environment>-<target>`, which names its snapshots, their tags and
its Prefect artifacts), its own credentials and its own snapshot identifier.

The environment's `credentials` are the template: a static target or a discovered one puts its own source in
(a secret, a URL variable, an embedded database). Its `snapshot` kind applies to every target, with the
target's identifier as the instance or cluster to snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from pydantic import SecretStr

from tasks.engine.connection import Connection, connection_from_url
from tasks.engine.credentials import fetch_connection, secret_refusal, with_environment_tls
from tasks.engine.environments import (
    DATABASE_URL_ENVIRONMENT,
    ENVIRONMENT_NAME,
    RDS_IDENTIFIER,
    AuroraClusterSnapshot,
    EmbeddedCredentials,
    Environment,
    RdsInstanceSnapshot,
    SecretsManagerCredentials,
    UrlFromEnvCredentials,
    environments_file,
    load_environment,
    load_environments,
)
from tasks.engine.errors import ConfigError, SecretError
from tasks.engine.fleet.config import EmbeddedDiscovery, Fleet, StaticTarget, TagDiscovery
from tasks.engine.fleet.discovery import Discovered, discover
from tasks.engine.logs import Log

logger = logging.getLogger(__name__)
NAME_ROOM = 34  # what a snapshot identifier `rdsm-<name>-<sha7>-<time>` leaves for the name (naming.py)
# A secret's ARN, as RDS names its managed ones (`rds!db-...`): refused by the file's secret_id pattern.
SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]+$")


@dataclass(frozen=True)
class Endpoint:
    """Where a discovered instance listens: RDS-managed master secrets hold only a user name and password."""

    host: str
    port: int
    dbname: str


@dataclass(frozen=True)
class Target:
    """One database of a fleet: its name (a database, an instance or cluster id, a URL's label) and the
    single-target environment the pipeline runs with."""

    name: str
    environment: Environment
    endpoint: Endpoint | None = None  # set when its credentials are an RDS-managed master secret
    found_by_tag: bool = False  # a command on it alone names it by URL: `--env <fleet>-<target>` cannot find it

    @property
    def named_as(self) -> str:
        """The environment name a command on this target alone is suggested with (hints.where_flag): its own,
        or, found by tag, a URL environment's (`--database-url URL-OF-<target>`)."""
        return f"{DATABASE_URL_ENVIRONMENT}-{self.name}" if self.found_by_tag else self.environment.name


def target_environment_name(environment: str, target: str) -> str:
    """`<environment>-<target>` in lowercase and single hyphens; shortened with a hash when it would not fit in
    a snapshot identifier, so two targets never share a name."""
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", f"{environment}-{target}".lower())).strip("-")
    if len(name) <= NAME_ROOM:
        return name
    digest = hashlib.sha256(f"{environment}/{target}".encode()).hexdigest()[:6]
    return f"{name[: NAME_ROOM - 7].rstrip('-')}-{digest}"


def single_target(environment: Environment, name: str, credentials: Any, endpoint: Endpoint | None = None) -> Target:
    """The environment as if it named only `name`: the fleet removed, the target's credentials and snapshot
    identifier put in (copied, not validated again: every part was validated on its own)."""
    snapshot = environment.snapshot
    if isinstance(snapshot, RdsInstanceSnapshot | AuroraClusterSnapshot):
        if not RDS_IDENTIFIER.match(name):
            raise ConfigError(
                f"environment {environment.name}: target {name} is not an RDS identifier, and "
                f"snapshot.kind {snapshot.kind!r} snapshots each target under its own name"
            )
        key = "instance_id" if isinstance(snapshot, RdsInstanceSnapshot) else "cluster_id"
        snapshot = snapshot.model_copy(update={key: name})
    copy = environment.model_copy(
        update={
            "name": target_environment_name(environment.name, name),
            "credentials": credentials,
            "snapshot": snapshot,
            "fleet": None,
        }
    )
    return Target(name=name, environment=copy, endpoint=endpoint)


def _static(environment: Environment, target: StaticTarget) -> Target:
    if target.secret_id is not None:
        if environment.aws is None:
            raise ConfigError(
                f"environment {environment.name}: target {target.name} reads a Secrets Manager "
                "secret: the environment needs an [aws] section"
            )
        credentials: Any = SecretsManagerCredentials(kind="secrets_manager", secret_id=target.secret_id)
    elif target.url_env is not None:
        credentials = UrlFromEnvCredentials(kind="url_env", variable=target.url_env)
    else:
        credentials = EmbeddedCredentials(kind="embedded", database=str(target.database))
    return single_target(environment, target.name, credentials)


def _discovered(environment: Environment, discovery: TagDiscovery, found: Discovered) -> Target:
    return replace(_discovered_target(environment, discovery, found), found_by_tag=True)


def _discovered_target(environment: Environment, discovery: TagDiscovery, found: Discovered) -> Target:
    if discovery.credentials == "secret_pattern":
        secret_id = discovery.secret_pattern.format(target=found.name)
        return single_target(
            environment, found.name, SecretsManagerCredentials(kind="secrets_manager", secret_id=secret_id)
        )
    if not found.master_secret_arn or not SECRET_ARN.match(found.master_secret_arn):
        raise ConfigError(
            f"environment {environment.name}: {found.name} has no RDS-managed master secret "
            '(MasterUserSecret); use credentials = "secret_pattern" for it'
        )
    if not (found.host and found.port):
        raise ConfigError(f"environment {environment.name}: {found.name} has no endpoint yet (being created?)")
    # The ARN passes the secret_id check only as a constructed value: RDS's names hold a `!`.
    credentials = SecretsManagerCredentials.model_construct(kind="secrets_manager", secret_id=found.master_secret_arn)
    return single_target(
        environment,
        found.name,
        credentials,
        Endpoint(host=found.host, port=found.port, dbname=found.dbname or "postgres"),
    )


def fleet_targets(environment: Environment, rds: Any = None, log: Log = logger) -> list[Target]:
    """The environment's targets in fleet order (the file's order, or by name when discovered). `rds` is a
    boto3 RDS client, needed for discovery by tag."""
    fleet = environment.fleet
    if fleet is None:
        raise ConfigError(f"environment {environment.name} names no fleet (add fleet = {{ ... }} to it)")
    if fleet.targets is not None:
        return [_static(environment, target) for target in fleet.targets]
    discovery = fleet.discover
    if isinstance(discovery, EmbeddedDiscovery):
        return [
            single_target(environment, name, EmbeddedCredentials(kind="embedded", database=name))
            for name in (discovery.name_pattern.format(n=n) for n in range(1, discovery.databases + 1))
        ]
    assert discovery is not None  # the model says targets or discover
    if environment.aws is None or rds is None:
        raise ConfigError(f"environment {environment.name}: discovery by tag needs an [aws] section and an RDS client")
    return [_discovered(environment, discovery, found) for found in discover(discovery, rds, log)]


def fleet_target(environment: Environment, name: str, rds: Any = None, log: Log = logger) -> Target:
    """One target of the fleet by name (a distributed run's flow run per target); it must still be in it."""
    for target in fleet_targets(environment, rds, log):
        if target.name == name:
            return target
    raise ConfigError(f"environment {environment.name}: no target named {name} in its fleet (any more)")


def target_environment(name: str) -> Environment | None:
    """The environment of one fleet target as its messages name it (`<fleet>-<target>`, e.g. in "resolve --env
    prod-fleet-tenant7"), for a command on that target alone; None when no fleet of the file has it. A target
    found by tag is not looked for (listing them needs AWS, and their master secrets an endpoint): the error
    says to name that database with --database-url."""
    for environment in load_environments(environments_file()).values():
        if environment.fleet is None:
            continue
        if environment.fleet.discover is not None and not isinstance(environment.fleet.discover, EmbeddedDiscovery) \
                and name.startswith(f"{environment.name}-"):
            raise ConfigError(f"{name} names a target of fleet {environment.name}, whose targets are found by tag "
                              "in AWS: name that database with --database-url URL (resolve, status, plan and drift "
                              "take it)")
        for target in fleet_targets(environment) if environment.fleet.targets is not None or isinstance(
                environment.fleet.discover, EmbeddedDiscovery) else ():
            if target.environment.name == name and target.endpoint is None:
                return target.environment
    return None


def environment_named(name: str) -> Environment:
    """One of the file's environments, or one target of a fleet as the fleet's messages name it
    (`<fleet>-<target>`); `ConfigError` when neither has that name."""
    try:
        return load_environment(name)
    except ConfigError as exc:
        found = target_environment(name)
        if found is None:
            meant = _hyphenated(name)
            if meant is not None:  # only a name of the file is echoed: the one given may be a pasted secret
                raise ConfigError(f"{exc}; did you mean {meant}?") from None
            raise
        return found


def _hyphenated(name: str) -> str | None:
    """`name` with its underscores as hyphens (`local-fleet-tenant_03`: a target named as its database is) when
    that is an environment of the file or a target of one of its fleets; else None."""
    meant = name.lower().replace("_", "-")
    if meant == name or not ENVIRONMENT_NAME.match(meant):
        return None
    try:
        return meant if meant in load_environments(environments_file()) or target_environment(meant) else None
    except ConfigError:  # a fleet found by tag claims it, or the file is broken: the plain error says enough
        return None


def one_database_environment(name: str) -> Environment:
    """The environment of a command on one database (a run, rollback, baseline, restore, status, plan, drift,
    resolve): `environment_named`, refused when it is a fleet, whose credentials are only the template its
    targets are made from."""
    environment = environment_named(name)
    refuse_fleet(environment)
    return environment


def refuse_fleet(environment: Environment) -> None:
    """`ConfigError` (exit 2) naming the targets to choose from, when `environment` is a fleet."""
    fleet = environment.fleet
    if fleet is None:
        return
    if fleet.targets is None and not isinstance(fleet.discover, EmbeddedDiscovery):
        how = "name that database with --database-url URL (this fleet's targets are found by tag in AWS)"
    else:
        names = [target.environment.name for target in fleet_targets(environment)]
        more = f" (its targets: {', '.join(names[:5])}{', …' if len(names) > 5 else ''})" if len(names) > 1 else ""
        how = f"name one of its databases: --env {names[0]}{more}"
    raise ConfigError(f"{environment.name} is a fleet of databases, and this works on one: {how}. Only a run "
                      "(the migrate-fleet flow) takes the whole fleet")


def read_master_secret(target: Target, secrets_manager: Any) -> Connection:
    """An RDS-managed master secret (`username`, `password` only), completed with the instance's endpoint."""
    assert target.endpoint is not None and isinstance(target.environment.credentials, SecretsManagerCredentials)
    secret_id = target.environment.credentials.secret_id
    source = f"secretsmanager:{secret_id}"
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = secrets_manager.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    except ClientError as exc:
        raise SecretError(f"{source} ({target.name}'s master secret): {secret_refusal(exc)}") from None
    except BotoCoreError as exc:
        raise SecretError(f"{source}: Secrets Manager could not be asked ({type(exc).__name__})") from None
    try:
        data = json.loads(answer.get("SecretString") or "")
        user, password = data["username"], data["password"]
    except (ValueError, TypeError, KeyError):
        raise SecretError(f"{source}: not an RDS master secret (a JSON object with username and password)") from None
    if not isinstance(user, str) or not isinstance(password, str):
        raise SecretError(f"{source}: username and password must be strings")
    return Connection(
        host=target.endpoint.host,
        port=target.endpoint.port,
        dbname=target.endpoint.dbname,
        user=user,
        password=SecretStr(password),
        source=source,
    )


def target_connection(target: Target, secrets_manager: Any = None, *, create: bool = True) -> Connection:
    """The target's credentials under its environment's TLS minimum: its secret, URL or embedded database read
    as a one-database run reads them (`create`: see fetch_connection), or an RDS-managed master secret completed
    with its endpoint."""
    if target.endpoint is None:
        return fetch_connection(target.environment, secrets_manager, create=create)
    return with_environment_tls(read_master_secret(target, secrets_manager), target.environment)


def url_target_name(dbname: str, host: str, port: int, taken: set[str]) -> str:
    """A URL's target: its database name, with the server added when two URLs name the same database."""
    base = re.sub(r"[^A-Za-z0-9_-]", "-", dbname)[:40]
    base = base if re.match(r"^[A-Za-z]", base) else f"db-{base}"
    name = base
    if name in taken:
        name = re.sub(r"[^A-Za-z0-9_-]", "-", f"{base}-{host}-{port}")[:63]
    counter = 2
    while name in taken:
        name, counter = f"{base[:55]}-{counter}", counter + 1
    taken.add(name)
    return name


def url_fleet(environment: Environment, variables: list[str], concurrency: int | None = None) -> Environment:
    """A fleet of plain PostgreSQL URLs, each held in an environment variable (only the variables' names travel:
    a password never reaches a parameter, a log line or an argument list). `environment` is the template, the
    `database-url` environment of the file."""
    taken: set[str] = set()
    targets = []
    seen: dict[tuple[str, int, str], int] = {}
    for position, variable in enumerate(variables, 1):
        url = os.environ.get(variable)
        if not url:
            raise ConfigError(f"database URL #{position}: environment variable {variable} is not set")
        connection = connection_from_url(url, f"database URL #{position}")
        where = (connection.host.lower(), connection.port, connection.dbname)  # host names ignore case
        if where in seen:  # one database migrated twice at once: two snapshots, two rows, one lock
            raise ConfigError(f"database URL #{position} names the same database as #{seen[where]} "
                              f"({connection.dbname} on {connection.host}:{connection.port}): give each once")
        seen[where] = position
        name = url_target_name(connection.dbname, connection.host, connection.port, taken)
        targets.append(StaticTarget(name=name, url_env=variable))
    fleet = Fleet(targets=tuple(targets), concurrency=concurrency or min(len(targets), 4))
    return environment.model_copy(update={"fleet": fleet})


def fleet_to_run(
    environment: str, url_variables: list[str] | None, concurrency: int | None, mode: str | None
) -> Environment:
    """The fleet to run: a named environment, or plain URLs whose environment variables (names only) hold them,
    with the run's overrides."""
    if url_variables:
        if mode == "distributed":
            raise ConfigError(
                "a fleet of URLs runs in_process only: its URLs live in this process's environment, "
                "which no other worker has (name the targets in the environments file instead)"
            )
        found = url_fleet(load_environment(environment), url_variables, concurrency)
    else:
        found = load_environment(environment)
    if found.fleet is None:
        raise ConfigError(f"environment {found.name} names no fleet")
    update = {key: value for key, value in (("concurrency", concurrency), ("mode", mode)) if value is not None}
    return found.model_copy(update={"fleet": found.fleet.model_copy(update=update)}) if update else found
