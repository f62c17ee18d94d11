"""A fleet in deployments/environments.toml: which databases an environment names, and the policy a fleet
run follows (how many at once, a canary wave, when to stop, how many snapshots to keep, where it runs).

The targets are a static list, or found at run time: RDS instances or Aurora clusters by tag, or N databases on
the embedded local server. The environment's own `credentials` and `snapshot` are the template each target's
copy is made from (targets.py); the fleet says only what differs per target.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The patterns of environments.py, repeated: it imports this module, so this one cannot import it back.
DATABASE_NAME = r"^[a-z_][a-z0-9_]{0,62}$"
ENV_VAR_NAME = r"^[A-Z_][A-Z0-9_]*$"
SECRET_ID = r"^[A-Za-z0-9/_+=.@:-]+$"
# A target's name: a database name, an RDS instance or cluster identifier, or a label for a URL.
TARGET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaticTarget(_Strict):
    """One database named in the file, with exactly one source of credentials: a Secrets Manager secret
    (`secret_id`), a URL in an environment variable (`url_env`, the variable's name), or a database on the
    embedded server (`database`). With an RDS snapshot kind, `name` is the instance or cluster identifier."""

    name: str = Field(pattern=TARGET_NAME.pattern)
    secret_id: str | None = Field(default=None, min_length=1, max_length=512, pattern=SECRET_ID)
    url_env: str | None = Field(default=None, pattern=ENV_VAR_NAME)
    database: str | None = Field(default=None, pattern=DATABASE_NAME)

    @model_validator(mode="after")
    def _one_source(self) -> StaticTarget:
        given = [key for key in ("secret_id", "url_env", "database") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"target {self.name}: give exactly one of secret_id, url_env, database "
                f"(given: {', '.join(given) or 'none'})"
            )
        return self


class TagDiscovery(_Strict):
    """Every RDS instance (or Aurora cluster) of the environment's region carrying all of `tags`, found at run
    time. Credentials per target: the secret `secret_pattern` names (`{target}` is the identifier), or the
    instance's RDS-managed master secret (`MasterUserSecret`, host and port from the instance's endpoint)."""

    kind: Literal["rds_instances", "aurora_clusters"]
    tags: dict[str, str] = Field(min_length=1)
    credentials: Literal["secret_pattern", "master_secret"] = "secret_pattern"
    secret_pattern: str = "rds/{target}/migrator"

    @field_validator("secret_pattern")
    @classmethod
    def _only_target(cls, value: str) -> str:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        if fields != {"target"} or not re.match(SECRET_ID, value.replace("{target}", "x")):
            raise ValueError("must hold {target} (and no other placeholder) in a Secrets Manager secret name")
        return value


class EmbeddedDiscovery(_Strict):
    """`databases` databases on the embedded local server, named by `name_pattern` (`{n}` counts from 1):
    the whole fleet path on a laptop."""

    kind: Literal["embedded"]
    databases: int = Field(ge=1, le=500)
    name_pattern: str = "tenant_{n:02d}"

    @model_validator(mode="after")
    def _names(self) -> EmbeddedDiscovery:
        try:
            names = [self.name_pattern.format(n=n) for n in range(1, self.databases + 1)]
        except (KeyError, IndexError, ValueError):
            raise ValueError("name_pattern: a database name with {n} in it, e.g. tenant_{n:02d}") from None
        if len(set(names)) != len(names) or not all(re.match(DATABASE_NAME, name) for name in names):
            raise ValueError("name_pattern: must give distinct database names (lowercase, digits, _) for each n")
        return self


Discovery = Annotated[TagDiscovery | EmbeddedDiscovery, Field(discriminator="kind")]


class Fleet(_Strict):
    """The targets (`targets` or `discover`, not both) and the fleet policy.

    - `concurrency`: targets migrated at once (one Prefect global concurrency limit bounds every fleet run too);
    - `canary`: the first N targets form a wave of their own; the rest start only when all of them succeeded;
    - `stop_after_failures`: once K targets failed no further target starts (absent: every target is tried);
    - `keep_snapshots`: after a target is migrated, keep its newest N pre-migration snapshots that this tool
      took and tagged, and delete older ones (absent: delete nothing);
    - `mode`: `in_process` (one machine, threads) or `distributed` (a flow run per target on the work pool).
    """

    targets: tuple[StaticTarget, ...] | None = None
    discover: Discovery | None = None
    concurrency: int = Field(default=4, ge=1, le=64)
    canary: int = Field(default=0, ge=0, le=100)
    stop_after_failures: int | None = Field(default=None, ge=1)
    keep_snapshots: int | None = Field(default=None, ge=1, le=100)
    mode: Literal["in_process", "distributed"] = "in_process"

    @model_validator(mode="after")
    def _one_way_to_name_targets(self) -> Fleet:
        if (self.targets is None) == (self.discover is None):
            raise ValueError("fleet: give either targets = [...] or discover = {...}, not both and not neither")
        if self.targets is not None:
            names = [t.name for t in self.targets]
            if not names:
                raise ValueError("fleet.targets: the list is empty")
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"fleet.targets: names given twice: {', '.join(repeated)}")
        return self
