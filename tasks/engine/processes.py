"""The programs this tool starts (pg_dump, pg_restore, squawk, git, the embedded server) and what they inherit."""

from __future__ import annotations

import os


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a program this tool starts (pg_dump, pg_restore, squawk, git, the embedded server):
    this process's without what holds a database password, `PGPASSWORD` and every variable whose value is a
    PostgreSQL URL (DATABASE_URL, an environment's `url_env` variable, a fleet's URLs), plus `extra`. A program
    that connects is given its own connection's settings (`Connection.libpq_env`); none inherits another's, and
    a server running as another user cannot be asked to read them from its environment."""
    kept = {key: value for key, value in os.environ.items()
            if key != "PGPASSWORD" and not value.lstrip().lower().startswith(("postgres://", "postgresql://"))}
    return {**kept, **extra}

