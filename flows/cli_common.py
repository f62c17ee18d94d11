"""What every command of `rds-migrations` shares: which database a command is about, its credentials, the
migrations directory, and one way of printing a result (text for a person, or exactly one JSON document on
stdout with a `schema_version` for a machine; logs always go to stderr)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.engine.connection import Connection, connection_from_url
from tasks.engine.environments import DATABASE_URL_ENVIRONMENT, Environment, load_environment
from tasks.engine.errors import SecretError, UsageError
from tasks.engine.migrations.catalog import Catalog, read_catalog

JSON_SCHEMA_VERSION = 1


def environment_of(args: argparse.Namespace) -> Environment:
    """`--env NAME`, or `--database-url URL` (kept in DATABASE_URL, off the process list for children): the one
    database a command other than `run` works on."""
    if getattr(args, "database_url", None):
        check_url(args.database_url, "--database-url")
        os.environ["DATABASE_URL"] = args.database_url
    if getattr(args, "env", None):
        from tasks.engine.fleet.targets import one_database_environment

        return one_database_environment(args.env)
    if os.environ.get("DATABASE_URL"):
        check_url(os.environ["DATABASE_URL"], "DATABASE_URL")
        return load_environment(DATABASE_URL_ENVIRONMENT)
    raise UsageError("say which database: --env NAME, --database-url URL, or set DATABASE_URL")


def check_url(url: str, source: str) -> None:
    """A URL given on the command line (or in DATABASE_URL for it) that libpq cannot read, or reads otherwise
    than it says, is the user's mistake: refused before anything starts, naming where it came from."""
    try:
        connection_from_url(url, source)
    except SecretError as exc:  # its text names the part, never a value
        raise UsageError(str(exc)) from None


@contextmanager
def connection_of(environment: Environment) -> Iterator[Connection]:
    """The environment's credentials, read directly (these commands need no flow run), for a command that
    only reads or repairs: an embedded database that does not exist yet is not created; an empty one stands
    in for it. A named credentials block is a Prefect block, read through the Prefect API; otherwise the
    default chain."""
    from tasks.engine.migrations.scratch import empty_if_missing
    from tasks.engine.runs.steps import DirectSteps

    make_client = None
    if environment.aws is not None and environment.aws.credentials_block:
        from tasks.aws import aws_client as make_client
    with empty_if_missing(environment, DirectSteps(make_client=make_client).fetch_secret(environment, create=False)) \
            as connection:
        yield connection


def catalog_of(args: argparse.Namespace) -> Catalog:
    return read_catalog(Path(args.migrations), Path.cwd())


_emitted: list[str] = []  # the commands whose result was printed (one JSON document per command run)


_failures: list[str] = []  # what a command's failure said on stderr (flows/launch.py), for its JSON document


def forget_emitted() -> None:
    _emitted.clear()
    _failures.clear()


def failed_with(message: str) -> None:
    """A command's failure, as stderr said it: its JSON document (printed after) carries it as `error`."""
    _failures.append(message)


def emit(args: argparse.Namespace, command: str, document: dict[str, Any], text: str | None) -> None:
    """The result: `text` for a person, or with --json one JSON document (`schema_version`, `command`, ...)."""
    _emitted.append(command)
    if getattr(args, "json", False):
        if document.get("exit_code") and "error" not in document and _failures:  # what stderr said, once
            document = {**document, "error": _failures[-1]}
        print(json.dumps({"schema_version": JSON_SCHEMA_VERSION, "command": command, **document}, indent=2,
                         default=str))
    elif text is not None:
        print(text)


def emit_failure(args: argparse.Namespace, message: str, exit_code: int) -> None:
    """With --json, a command that failed before it printed its result still prints one JSON document: the
    exit code and the error (what stderr says, on one line), so a script reading stdout is never left empty."""
    if getattr(args, "json", False) and not _emitted:
        print(json.dumps({"schema_version": JSON_SCHEMA_VERSION, "command": args.command, "exit_code": exit_code,
                          "error": message}, indent=2))
