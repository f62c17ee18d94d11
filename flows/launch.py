"""Running a flow in this process (Prefect's ephemeral API when no server is configured) and turning its
final state into an exit code, for the command line and the demo."""

from __future__ import annotations

import sys
from typing import Any

from tasks.engine.environments import Environment
from tasks.engine.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, RdsMigrationsError


def migration_flow(environment: Environment) -> Any:
    """The staging or production flow, by the environment's tier."""
    from flows.production import production
    from flows.staging import staging

    return production if environment.tier == "production" else staging


def run_flow(flow: Any, label: str, **parameters: object) -> int:
    """Run `flow` with `parameters`; its failure is printed (without a traceback) as `label: message`."""
    state = flow(return_state=True, **parameters)
    if state.is_completed():
        return EXIT_OK
    try:
        state.result()
    except RdsMigrationsError as exc:
        where = "" if exc.exit_code == EXIT_USAGE else f"{label}: "
        print(f"rds-migrations: {where}{exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - reported; the flow already notified
        print(f"rds-migrations: {label}: {exc}", file=sys.stderr)
    return EXIT_FAILED


def run_migration_flow(environment: Environment, **parameters: object) -> int:
    """Run the environment's staging or production flow in this process."""
    return run_flow(migration_flow(environment), environment.name, environment=environment.name, **parameters)
