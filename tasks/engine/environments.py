"""Environments: how to reach, snapshot and notify each database, and the policy it runs under.

Read from `deployments/environments.toml` (or the file named by `RDS_MIGRATIONS_ENVIRONMENTS`). The file
holds names and identifiers only, never a secret value: credentials come from Secrets Manager, from an
environment variable holding a URL, or from the embedded local server.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.engine.errors import ConfigError
from tasks.engine.fleet.config import Fleet

DEFAULT_ENVIRONMENTS_FILE = Path("deployments/environments.toml")
# The environment a `--database-url URL` command uses (its URL read from DATABASE_URL); a fleet of URLs names
# its targets `database-url-<target>`.
DATABASE_URL_ENVIRONMENT = "database-url"
ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
# RDS identifiers: a letter first, then letters, digits and single hyphens, no trailing hyphen.
RDS_IDENTIFIER = re.compile(r"^[A-Za-z](?!.*--)[A-Za-z0-9-]{0,62}(?<!-)$")


def _rds_identifier(value: str) -> str:
    if not RDS_IDENTIFIER.match(value):
        raise ValueError(
            "not a valid RDS identifier (a letter first, then letters, digits and single hyphens, "
            "no trailing hyphen, at most 63 characters)"
        )
    return value


RdsIdentifier = Annotated[str, AfterValidator(_rds_identifier)]
DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
ENV_VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- where credentials come from --------------------------------------------------------------------------


class AwsSettings(_Strict):
    """How to reach AWS for this environment: region, and the prefect-aws credentials block (a role)."""

    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    credentials_block: str | None = Field(default=None, pattern=BLOCK_NAME.pattern)
    endpoint_url: str | None = None  # an AWS API emulator in tests; never set in production


class SecretsManagerCredentials(_Strict):
    """An RDS-style secret in AWS Secrets Manager (JSON: username, password, host, port, dbname)."""

    kind: Literal["secrets_manager"]
    secret_id: str = Field(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9/_+=.@:-]+$")


class UrlFromEnvCredentials(_Strict):
    """A libpq URL read at run time from an environment variable (the variable's name is all this holds)."""

    kind: Literal["url_env"]
    variable: str = Field(default="DATABASE_URL", pattern=ENV_VAR_NAME.pattern)


class EmbeddedCredentials(_Strict):
    """A database on the throwaway local PostgreSQL server the tool starts itself."""

    kind: Literal["embedded"]
    database: str = Field(pattern=DATABASE_NAME.pattern)


Credentials = Annotated[
    SecretsManagerCredentials | UrlFromEnvCredentials | EmbeddedCredentials, Field(discriminator="kind")
]

# ---- how to snapshot ---------------------------------------------------------------------------------------


class RdsInstanceSnapshot(_Strict):
    kind: Literal["rds_instance"]
    instance_id: RdsIdentifier
    max_wait_seconds: int = Field(default=3600, ge=30, le=6 * 3600)


class AuroraClusterSnapshot(_Strict):
    kind: Literal["aurora_cluster"]
    cluster_id: RdsIdentifier
    max_wait_seconds: int = Field(default=3600, ge=30, le=6 * 3600)


class PgDumpSnapshot(_Strict):
    kind: Literal["pg_dump"]
    directory: Path | None = None  # default: <RDS_MIGRATIONS_HOME>/snapshots; relative paths: the working dir


class NoSnapshot(_Strict):
    kind: Literal["none"]


Snapshotting = Annotated[
    RdsInstanceSnapshot | AuroraClusterSnapshot | PgDumpSnapshot | NoSnapshot, Field(discriminator="kind")
]

# ---- how to notify -----------------------------------------------------------------------------------------


class SlackNotify(_Strict):
    kind: Literal["slack"]
    webhook_block: str = Field(pattern=BLOCK_NAME.pattern)
    on_noop: bool = False


class ConsoleNotify(_Strict):
    kind: Literal["console"]
    on_noop: bool = True


Notification = Annotated[SlackNotify | ConsoleNotify, Field(discriminator="kind")]

# ---- where the rehearsal runs ------------------------------------------------------------------------------


class Rehearsal(_Strict):
    """Where migrations are rehearsed from scratch before they touch the target.

    - `target_server`: a temporary database created and dropped on the target's own server
      (same version and extensions as the target; no lock on the real database);
    - `embedded`: the throwaway local server the tool starts;
    - `url_env`: a scratch server whose URL is in an environment variable (a CI service container);
    - `none`: skip the rehearsal (not allowed where the policy requires it).
    """

    kind: Literal["target_server", "embedded", "url_env", "none"] = "target_server"
    variable: str = Field(default="REHEARSAL_DATABASE_URL", pattern=ENV_VAR_NAME.pattern)
    # What the rehearsal starts from: an empty database with every migration applied (the directory must build
    # a database on its own: pull requests), a copy of the target's schema with only what is pending applied
    # (what will really happen, tables no migration made included), or both.
    start: Literal["empty", "target_schema", "both"] = "empty"
    # Keep the last rehearsed schema (at most 2 databases named rdsm_rc_*, closed to connections) so the next
    # rehearsal applies only what is new. Off where those may not stay, e.g. on a production server.
    cache: bool = True


# ---- TLS --------------------------------------------------------------------------------------------------


class Tls(_Strict):
    """The least TLS this environment's connections use, applied to the credentials read for it.

    An `sslmode` weaker than `min_sslmode` in the URL or the secret (or none: libpq's `prefer`) is raised to it,
    never refused: the run is only ever stricter than asked. With `verify-ca` or `verify-full`, `root_cert` is the
    CA bundle the server's certificate is checked against when the URL or secret names none; it must exist. For
    RDS: https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem.
    """

    min_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    root_cert: Path | None = None


# ---- policy -----------------------------------------------------------------------------------------------


class Policy(_Strict):
    snapshot_required: bool = False
    # A re-run for the same commit at the same history reuses the snapshot taken for it, when it is at most this
    # old (0: never): a snapshot is restored with every write made since it was taken lost.
    snapshot_reuse_minutes: int = Field(default=60, ge=0, le=7 * 24 * 60)
    rehearsal_required: bool = True
    lint_blocks_on: Literal["error", "warning", "never"] = "error"
    lock_timeout_ms: int = Field(default=2_000, ge=1, le=600_000)
    statement_timeout_ms: int = Field(default=15 * 60_000, ge=1, le=24 * 3600_000)
    migration_lock_wait_seconds: float = Field(default=60, ge=0, le=3600)
    # A lock timeout (55P03) rolls a transactional migration back; it is retried this many times.
    lock_timeout_retries: int = Field(default=5, ge=0, le=50)
    lock_retry_base_delay_seconds: float = Field(default=1.0, ge=0, le=60)
    lock_retry_max_delay_seconds: float = Field(default=30.0, ge=0, le=600)
    allow_out_of_order: bool = False
    # Up to this many consecutive transactional migrations in one message, each still in its own transaction
    # (together.py). 1: one message a migration. Migrations sent together share `now()` (the message's arrival):
    # with `shared_now = "never"`, after the first of a message only those that cannot read the clock go with it
    # (clock.py: DDL that stores its expressions), so no migration can tell; "accepted": any may (the team's
    # call, for migrations that never compare times). See README "Performance".
    migrations_per_message: int = Field(default=20, ge=1, le=100)
    shared_now: Literal["never", "accepted"] = "never"
    # An INVALID index left by a failed CREATE INDEX CONCURRENTLY of a pending migration: drop it and build it
    # again, or refuse the run with the DROP command to run.
    invalid_index: Literal["drop_and_retry", "refuse"] = "refuse"
    # The live schema against what the applied migrations make, before anything is written: "block" refuses a
    # run on a drifted database, "warn" says so and runs, "ignore" does not look.
    drift: Literal["ignore", "warn", "block"] = "ignore"
    # Production only: pause after the plan until a person approves (Prefect UI or one API call).
    approval_required: bool = False
    approval_timeout_seconds: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    # How long a run may take once started, after which its flow stops itself, notifies and fails; the GitHub
    # check's deadline is this plus a start margin. Default: the sum of the waits above (runs/budget.py).
    run_budget_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _timeouts_ordered(self) -> Policy:
        if self.lock_timeout_ms > self.statement_timeout_ms:
            raise ValueError(
                f"lock_timeout_ms ({self.lock_timeout_ms}) must not exceed statement_timeout_ms "
                f"({self.statement_timeout_ms})"
            )
        return self


# ---- staging refresh ---------------------------------------------------------------------------------------


RESTORE_WAIT_SECONDS = 4 * 3600  # each wait of a restore and swap (a restore of a large instance takes hours)


class Refresh(_Strict):
    """Refresh this staging environment from a snapshot of `source_environment` (production), masked first.

    Every name the refresh creates, renames or deletes (RDS instance and cluster identifiers, or database
    names for the local kind) must match `identifier_pattern` in full and must never be the source's own
    name nor start with it and a hyphen or an underscore.
    """

    source_environment: str = Field(pattern=ENVIRONMENT_NAME.pattern)
    identifier_pattern: str = r"^[a-z0-9_-]*staging[a-z0-9_-]*$"
    keep_old: bool = False  # keep the replaced copy (renamed <id>-old-<time>) instead of deleting it
    masking_dir: Path = Path("deployments/masking")  # *.sql run in name order, in one transaction
    use_fresh_snapshot: bool = False  # snapshot the source now instead of using its newest snapshot
    max_wait_seconds: int = Field(default=RESTORE_WAIT_SECONDS, ge=60, le=24 * 3600)  # per restore / rename wait

    @field_validator("identifier_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("masking_dir")
    @classmethod
    def _inside_project(cls, value: Path) -> Path:
        if value.is_absolute() or ".." in value.parts:
            raise ValueError("must be a relative path inside the project")
        return value


class Environment(_Strict):
    name: str = Field(pattern=ENVIRONMENT_NAME.pattern)
    tier: Literal["staging", "production"]
    description: str = ""
    aws: AwsSettings | None = None
    credentials: Credentials
    snapshot: Snapshotting
    notify: Notification
    rehearsal: Rehearsal = Rehearsal()
    tls: Tls = Tls()
    policy: Policy = Policy()
    refresh: Refresh | None = None
    # Many databases in one run (tasks/engine/fleet/): `credentials` and `snapshot` above are then the template
    # each target's copy is made from, its own credentials and identifiers put in.
    fleet: Fleet | None = None

    @model_validator(mode="after")
    def _refresh_is_possible(self) -> Environment:
        if self.refresh is None:
            return self
        if self.tier != "staging":
            raise ValueError(f"refresh: only a tier 'staging' environment can be refreshed, not tier {self.tier!r}")
        if self.refresh.source_environment == self.name:
            raise ValueError("refresh.source_environment: an environment cannot be refreshed from itself")
        if self.snapshot.kind == "rds_instance":
            live: str | None = self.snapshot.instance_id
        elif self.snapshot.kind == "aurora_cluster":
            live = self.snapshot.cluster_id
        elif self.snapshot.kind == "pg_dump":  # the local kind: a database name, known now when embedded
            live = self.credentials.database if isinstance(self.credentials, EmbeddedCredentials) else None
        else:
            raise ValueError("refresh: snapshot.kind 'none' says nothing to refresh (rds_instance, "
                             "aurora_cluster or pg_dump)")
        if live is not None and not re.fullmatch(self.refresh.identifier_pattern, live):
            raise ValueError(f"refresh.identifier_pattern: {live!r}, the database this refresh replaces, "
                             "does not match it")
        return self

    @model_validator(mode="after")
    def _policy_is_satisfiable(self) -> Environment:
        needs_aws = self.credentials.kind == "secrets_manager" or self.snapshot.kind in (
            "rds_instance",
            "aurora_cluster",
        )
        if needs_aws and self.aws is None:
            raise ValueError("an [aws] section (region, credentials_block) is needed for Secrets Manager and RDS")
        if self.policy.snapshot_required and self.snapshot.kind == "none":
            raise ValueError("policy.snapshot_required is true but snapshot.kind is 'none'")
        if self.policy.rehearsal_required and self.rehearsal.kind == "none":
            raise ValueError("policy.rehearsal_required is true but rehearsal.kind is 'none'")
        return self


class EnvironmentsFile(_Strict):
    environments: dict[str, Environment]

    @field_validator("environments", mode="before")
    @classmethod
    def _name_from_key(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: ({"name": k, **v} if isinstance(v, dict) else v) for k, v in value.items()}
        return value


def environments_file(project_root: Path | None = None) -> Path:
    configured = os.environ.get("RDS_MIGRATIONS_ENVIRONMENTS")
    path = Path(configured) if configured else DEFAULT_ENVIRONMENTS_FILE
    return path if path.is_absolute() else (project_root or Path.cwd()) / path


def load_environments(path: Path) -> dict[str, Environment]:
    """Parse and check an environments file; every problem names the file and the field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: environments file not found") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not valid UTF-8 (line {line}): save it as UTF-8") from None
    except OSError as exc:  # a directory, a file not readable
        raise ConfigError(f"{path}: cannot be read as the environments file ({exc.strerror}): name a TOML file "
                          "(RDS_MIGRATIONS_ENVIRONMENTS)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return EnvironmentsFile.model_validate(raw).environments
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {_said(err)}"
                             for err in exc.errors(include_input=False))
        raise ConfigError(f"{path}: {problems}") from None


def _said(error: dict) -> str:
    """pydantic's words, but a key no model has is named as a setting with the nearest known one."""
    if error["type"] != "extra_forbidden":
        return str(error["msg"])
    near = difflib.get_close_matches(str(error["loc"][-1]), sorted(_settings(EnvironmentsFile)), n=1, cutoff=0.75)
    return "not a setting here" + (f" (did you mean {near[0]}?)" if near else "")


def _settings(model: type[BaseModel], found: set[str] | None = None) -> set[str]:
    """Every key of the environments file: the fields of `model` and of the models they hold."""
    found = set() if found is None else found
    for name, field in model.model_fields.items():
        found.add(field.alias or name)
        pending = [field.annotation]
        while pending:
            kind = pending.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel) and kind.__name__ not in found:
                found.add(kind.__name__)  # visited (a class name is never a key: they are CamelCase)
                _settings(kind, found)
            pending += get_args(kind)
    return found


def load_environment(name: str, path: Path | None = None) -> Environment:
    path = path or environments_file()
    if not ENVIRONMENT_NAME.match(name):
        # Not echoed: a value pasted into the wrong field may be a secret.
        raise ConfigError(
            f"the environment name given ({len(name)} characters) is not valid: lowercase letters, digits, hyphens"
        )
    environments = load_environments(path)
    if name not in environments:
        near = difflib.get_close_matches(name, sorted(environments), n=1, cutoff=0.75)
        guess = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(f"{path}: no environment named {name!r} ({guess}known: {', '.join(sorted(environments))})")
    return environments[name]
