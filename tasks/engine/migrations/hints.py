"""The commands a message tells an operator to run: named as the run named its database (`--env NAME`, or
`--database-url URL`, whose URL is never repeated), and resolving a dirty mark the right way round."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from tasks.engine.environments import DATABASE_URL_ENVIRONMENT


def where_flag(environment: str | None, migrations: Path | None = None) -> str:
    """How a command names the database `environment` is, for the commands a message suggests: `--env NAME`,
    or `--database-url URL` for a run given a URL (one, or each of a fleet of URLs: `database-url-<target>`),
    whose URL is never repeated; with `--migrations DIR` when the run's directory is not `migrations`."""
    if not environment:
        flag = "--env NAME"
    elif environment == DATABASE_URL_ENVIRONMENT:
        flag = "--database-url URL"
    elif environment.startswith(f"{DATABASE_URL_ENVIRONMENT}-"):
        flag = f"--database-url URL-OF-{environment.removeprefix(DATABASE_URL_ENVIRONMENT + '-')}"
    else:
        flag = f"--env {environment}"
    return f"{flag}{migrations_flag(migrations)}"


def migrations_flag(migrations: Path | None) -> str:
    """` --migrations DIR` for a command about the directory `migrations`, when it is not `migrations`; else ""."""
    # As the command line names it, from where it runs (a directory outside it is refused by validation).
    shown = os.path.relpath(migrations) if migrations is not None else "migrations"
    if shown == "migrations" or shown.startswith(".."):
        return ""
    return f" --migrations {shlex.quote(shown)}"


def resolve_hint(migration_id: str, environment: str | None, *, rolling_back: bool = False,
                 migrations: Path | None = None) -> str:
    """What an operator runs to get a dirty database going again (documented in RELIABILITY.md). A mark a
    rollback left (`rolling_back`) is resolved the other way round: finishing the rollback is --mark-not-applied."""
    where = where_flag(environment, migrations)
    if rolling_back:
        return (f"see what it left with `rds-migrations resolve {where}`; then either finish the rollback by hand "
                f"(the rest of {migration_id}.rollback.sql) and run `rds-migrations resolve {where} {migration_id} "
                f"--mark-not-applied`, or redo what it undid and run `rds-migrations resolve {where} {migration_id} "
                "--mark-applied`")
    return (
        f"see what it left with `rds-migrations resolve {where}`; then either finish it by hand and run "
        f"`rds-migrations resolve {where} {migration_id} --mark-applied`, or undo it by hand and run "
        f"`rds-migrations resolve {where} {migration_id} --mark-not-applied` (it then runs again)"
    )
