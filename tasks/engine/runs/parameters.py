"""Run parameters reach SQL, AWS identifiers, file names and messages: allow-lists, not escaping. A value
that is refused is never repeated (it may be a secret pasted into the wrong field), and a parameter that
holds a credential stops the run: the Prefect API stores flow parameters in plain text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.engine.errors import ConfigError, SecretError, UsageError
from tasks.engine.git import GIT_SHA_PARAMETER

if TYPE_CHECKING:  # only named here: `rds-migrations trigger` reads the pin check without psycopg or pydantic
    from tasks.engine.connection import Connection
    from tasks.engine.runs.kinds import RunKind
    from tasks.engine.runs.steps import Steps

TRIGGER = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


# A URL carrying a password, or a libpq keyword string with one: never a flow parameter.
CREDENTIAL = re.compile(r"://[^/\s@]*:[^/\s@]*@|\b(password|passwd|pwd)\s*=", re.IGNORECASE)


def check_parameters(git_sha: str, trigger: str, target: str | None, migrations_dir: str, *,
                     target_name: str = "target") -> None:
    """Parameters reach SQL, AWS identifiers and messages: allow-lists, not escaping. `target_name`: what the
    command calls its migration parameter (`through` for a baseline, `to` for a rollback)."""
    given = {"git_sha": git_sha, "trigger": trigger, target_name: target, "migrations_dir": migrations_dir}
    for name, value in given.items():
        if value is not None and CREDENTIAL.search(value):
            raise ConfigError(
                f"parameter {name} looks like a credential (a URL or keyword string with a password): it was not "
                "used and is not repeated here. The Prefect API stores flow parameters in plain text: rotate "
                "that secret; the environment says where credentials come from"
            )
    # A refused value is never repeated: it may be a secret pasted into the wrong field.
    if not GIT_SHA_PARAMETER.match(git_sha):
        raise ConfigError(f"git_sha ({len(git_sha)} characters) is not a hex commit SHA (7-40 lowercase hex) "
                          "or 'unknown'")
    if not TRIGGER.match(trigger):
        raise ConfigError(f"trigger ({len(trigger)} characters) must be lowercase letters, digits and hyphens")
    if target is not None and not TARGET.match(target):
        raise ConfigError(f"{target_name} ({len(target)} characters) is not a migration id or version number")
    if Path(migrations_dir).is_absolute() or ".." in Path(migrations_dir).parts:
        raise ConfigError("migrations_dir must be a relative path inside the project (no '..')")


# The kinds of run whose flow runs only the environment its deployment sets (check_deployment_environment): one
# deployment per environment, each with that environment's AWS role. A migration's flow checks the tier instead;
# a refresh and a fleet take their environment as a parameter.
PINNED_KINDS: frozenset[RunKind] = frozenset({"rollback", "baseline", "drift-check", "restore"})


def check_deployment_environment(environment: str, steps: Steps) -> None:
    """A deployment that sets `environment` runs with that environment's AWS role (deployments/prefect.ecs.yaml):
    a run of it for another environment would read and snapshot with the wrong role. Refused before anything.
    `environment` is a name the environments file knows (checked first), so it may be repeated."""
    pinned = steps.pinned_environment()
    if pinned is None or environment == pinned:
        return
    refuse_other_environment(steps.run_info().deployment, pinned, environment, instead=(
        f"Run {environment}'s own deployment of this flow, or the rds-migrations command with --env {environment} "
        "from a terminal"))


def refuse_other_environment(deployment: str | None, pinned: str | None, environment: str, *, instead: str) -> None:
    """`ConfigError` when `deployment`, which runs `pinned` only, is asked for another `environment` (a name,
    checked by the caller); `instead`: what to run. The flow's check, and `rds-migrations trigger`'s before it
    creates a flow run."""
    if pinned is None or environment == pinned:
        return
    raise ConfigError(f"deployment {deployment} runs environment {pinned} only (it has {pinned}'s AWS role); this "
                      f"run asked for {environment}: nothing was done. {instead}")


SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


def check_schema(schema: str | None, tool: str | None) -> None:
    """A baseline's `history_schema`: a schema name, and only with a tool whose history is read."""
    if schema is None:
        return
    if tool is None:
        raise UsageError("--schema (history_schema) names where another tool's history is: give it with --from")
    if not SCHEMA.match(schema):  # never repeated: it may be a secret pasted into the wrong field
        raise ConfigError(f"history_schema ({len(schema)} characters) is not a schema name (letters, digits, _, $, -)")


def refuse_password_in_parameters(connection: Connection, parameters: dict[str, str | None]) -> None:
    """A parameter holding the database password has leaked it into the Prefect API: stop, and say so."""
    password = connection.password.get_secret_value()
    if len(password) < 8:  # too short to tell apart from ordinary values (and the embedded server has none)
        return
    for name, value in parameters.items():
        if value and password in value:
            raise SecretError(
                f"parameter {name} contains the database password read from {connection.source}: nothing was run. "
                "The Prefect API stores flow parameters in plain text: rotate the password now"
            )
