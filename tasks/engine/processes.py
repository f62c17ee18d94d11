"""The programs this tool starts (pg_dump, pg_restore, squawk, git, the embedded server) and what they inherit."""

from __future__ import annotations

import os
import re


def child_environment(**extra: str) -> dict[str, str]:
    """The environment of a program this tool starts (pg_dump, pg_restore, squawk, git, the embedded server):
    this process's without what holds a database password, `PGPASSWORD` and every variable whose value is a
    PostgreSQL URL (DATABASE_URL, an environment's `url_env` variable, a fleet's URLs), plus `extra`. A program
    that connects is given its own connection's settings (`Connection.libpq_env`); none inherits another's, and
    a server running as another user cannot be asked to read them from its environment."""
    kept = {key: value for key, value in os.environ.items() if key != "PGPASSWORD" and not _holds_a_login(value)}
    return {**kept, **extra}


def server_environment() -> dict[str, str]:
    """The environment of the embedded server (and pg_ctl, initdb): what it needs to run (PATH, the locale, the
    time zone, a temporary directory), nothing else. It runs as another user, and its superuser (any migration
    rehearsed there) can read its environment: no AWS key, no Prefect API key, no URL."""
    return {key: value for key, value in os.environ.items()
            if key in ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR") or key.startswith("LC_")}


def _holds_a_login(value: str) -> bool:
    """A PostgreSQL URL, or a keyword string with a password (`host=db password=...`)."""
    start = value.lstrip().lower()
    return start.startswith(("postgres://", "postgresql://")) or re.search(r"(?i)\bpassword\s*=", value) is not None

