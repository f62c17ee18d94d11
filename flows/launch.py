"""Running a pipeline from the command line: as a Prefect flow in this process (the configured Prefect API,
or Prefect's temporary one), or straight through the engine when no Prefect API is asked for, with the
same steps, checks, notifications and exit codes; and turning the outcome into an exit code."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from tasks.engine.environments import Environment
from tasks.engine.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, RdsMigrationsError


def migration_flow(environment: Environment) -> Any:
    """The staging or production flow, by the environment's tier."""
    from flows.production import production
    from flows.staging import staging

    return production if environment.tier == "production" else staging


def run_flow(flow: Any, label: str, **parameters: object) -> tuple[int, Any]:
    """Run `flow` with `parameters`: (exit code, its result, else what it did before it failed, else None).
    Its failure is printed (without a traceback) as `label: message`."""
    state = flow(return_state=True, **parameters)
    if state.is_completed():
        return EXIT_OK, state.result()
    try:
        state.result()
    except RdsMigrationsError as exc:
        return _failed(exc, label), exc.result
    except Exception as exc:  # noqa: BLE001 - reported; the flow already notified
        print(f"rds-migrations: {label}: {exc}", file=sys.stderr)
    return EXIT_FAILED, None


def run_migration_flow(environment: Environment, **parameters: object) -> tuple[int, Any]:
    """Run the environment's staging or production flow in this process."""
    return run_flow(migration_flow(environment), environment.name, environment=environment.name, **parameters)


def _failed(exc: RdsMigrationsError, label: str) -> int:
    from flows.cli_common import failed_with

    where = "" if exc.exit_code == EXIT_USAGE else f"{label}: "
    print(f"rds-migrations: {where}{exc}", file=sys.stderr)
    failed_with(f"{where}{exc}")
    return exc.exit_code


def prefect_wanted(environment: Environment, *, asked: bool = False) -> bool:
    """Whether a command line run goes through Prefect: when asked (`--prefect`), when a Prefect API is
    configured (its runs are then recorded there), or when the environment names Prefect blocks (AWS
    credentials, a Slack webhook), which only a Prefect API can load."""
    needs_blocks = (environment.aws is not None and environment.aws.credentials_block is not None) \
        or environment.notify.kind == "slack"
    return asked or bool(os.environ.get("PREFECT_API_URL")) or needs_blocks


def console_log() -> logging.Logger:
    """The engine's log lines on stderr, as the flow's would be printed: stdout stays for results."""
    log = logging.getLogger("rds_migrations")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(message)s",
                                               datefmt="%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def run_direct(run: Callable[[Any], object], label: str) -> tuple[int, Any]:
    """Run a pipeline with `DirectSteps` (no Prefect): (exit code, its result, else what it did before it
    failed, else None). Its failure is printed as `label: message`."""
    from tasks.engine.runs.steps import DirectSteps

    try:
        return EXIT_OK, run(DirectSteps(log=console_log()))
    except RdsMigrationsError as exc:
        return _failed(exc, label), exc.result
