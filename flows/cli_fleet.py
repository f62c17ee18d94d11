"""`rds-migrations run` over a fleet: `--env NAME` of an environment with a fleet, or plain PostgreSQL URLs
(`--database-url` given several times, or `--database-urls FILE`, one per line) with no file to write.

The URLs go into environment variables of this process (RDS_MIGRATIONS_FLEET_URL_<n>), never onto a command line,
a parameter or a log line; a target is named by its database. Without a Prefect API the fleet runs here, in
threads (tasks/engine/runs/fleet.py); with one, as the migrate-fleet flow of this process (flows/fleet.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli_common import check_url, emit
from tasks.engine.environments import DATABASE_URL_ENVIRONMENT, Environment, load_environment
from tasks.engine.errors import EXIT_FAILED, EXIT_OK, ConfigError, RdsMigrationsError, UsageError
from tasks.engine.git import head_sha

if TYPE_CHECKING:  # the fleet's modules are imported when a fleet runs, not for every command's parser
    from tasks.engine.fleet.report import FleetReport

URL_VARIABLE = "RDS_MIGRATIONS_FLEET_URL_{n}"


def positive(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError("a whole number from 1 to 64")
    return int(value)


def add_fleet_arguments(parser: argparse.ArgumentParser, targets: argparse._MutuallyExclusiveGroup) -> None:
    """`--database-url` (repeatable) and `--database-urls FILE` into `targets` (the group that holds `--env`),
    and `--concurrency N`."""
    targets.add_argument(
        "--database-url",
        metavar="URL",
        action="append",
        help="a plain PostgreSQL (or set DATABASE_URL): no snapshot, console notifications; give it "
        "several times to migrate them all as a fleet",
    )
    targets.add_argument(
        "--database-urls",
        metavar="FILE",
        type=Path,
        help="a fleet of plain PostgreSQL databases: one URL per line (# comments allowed)",
    )
    parser.add_argument(
        "--concurrency",
        metavar="N",
        type=positive,
        help="targets migrated at once in a fleet run (default: the fleet's, or 4)",
    )


def is_fleet_run(args: argparse.Namespace) -> bool:
    """Whether `run` was asked for a fleet. A single `--database-url` is the one-database run, as before (it is
    put back as a plain string for it)."""
    urls = getattr(args, "database_url", None)
    if isinstance(urls, list) and len(urls) == 1:
        args.database_url = urls[0]
    if isinstance(args.database_url, list) or getattr(args, "database_urls", None) is not None:
        return True
    if not getattr(args, "env", None):
        return False
    try:
        return load_environment(args.env).fleet is not None
    except ConfigError:  # not an environment of the file: one fleet target (`<fleet>-<target>`), or a typo
        return False


def read_url_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"--database-urls {path}: cannot be read ({exc.strerror})") from None
    urls = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not urls:
        raise UsageError(f"--database-urls {path}: no URL in it (one per line)")
    return urls


def url_variables(urls: list[str]) -> list[str]:
    """Each URL into an environment variable of this process (read by the run, inherited by nothing we print)."""
    names = []
    for n, url in enumerate(urls, 1):
        name = URL_VARIABLE.format(n=n)
        os.environ[name] = url
        names.append(name)
    return names


def fleet_environment(args: argparse.Namespace) -> tuple[Environment, list[str] | None]:
    """The fleet asked for, with `--concurrency` applied; and the URL variables' names for a URL fleet."""
    from tasks.engine.fleet.targets import url_fleet

    if getattr(args, "env", None):
        environment = load_environment(args.env)
        fleet = environment.fleet
        if fleet is None:
            raise UsageError(f"environment {environment.name} names no fleet")
        if args.concurrency:
            environment = environment.model_copy(
                update={"fleet": fleet.model_copy(update={"concurrency": args.concurrency})}
            )
        return environment, None
    urls = args.database_url if isinstance(args.database_url, list) else read_url_file(args.database_urls)
    for position, url in enumerate(urls, 1):
        check_url(url, f"database URL #{position}")
    variables = url_variables(urls)
    return url_fleet(load_environment(DATABASE_URL_ENVIRONMENT), variables, args.concurrency), variables


def run_fleet(args: argparse.Namespace) -> int:
    """`rds-migrations run` over a fleet: the exit code; the per-target table (or with --json one document
    with a `targets` list) on stdout, the logs and the fleet's summary on stderr."""
    from flows.launch import prefect_wanted
    from tasks.engine.fleet.report import console_table

    environment, variables = fleet_environment(args)
    parameters = {
        "git_sha": args.git_sha or head_sha(),
        "dry_run": args.dry_run,
        "target": args.target,
        "migrations_dir": args.migrations,
        "trigger": "cli",
    }
    if prefect_wanted(environment, asked=args.prefect):
        code, report = run_fleet_flow(environment, variables, args.concurrency, parameters)
    else:
        code, report = run_fleet_direct(environment, parameters)
    document = report.to_json() if report is not None else {"outcome": "failed", "targets": []}
    emit(
        args,
        "run",
        {"environment": environment.name, "exit_code": code, **document},
        console_table(report) if report is not None else None,
    )
    return code


def run_fleet_direct(environment: Environment, parameters: dict) -> tuple[int, FleetReport | None]:
    from flows.launch import console_log
    from tasks.engine.runs.fleet import DirectFleetSteps, migrate_fleet
    from tasks.engine.runs.steps import DirectSteps

    try:
        return EXIT_OK, migrate_fleet(environment, DirectFleetSteps(DirectSteps(log=console_log())), **parameters)
    except RdsMigrationsError as exc:
        return failed(environment, exc)


def run_fleet_flow(
    environment: Environment, variables: list[str] | None, concurrency: int | None, parameters: dict
) -> tuple[int, FleetReport | None]:
    """The migrate-fleet flow in this process (in-process mode: a URL fleet's variables live here only)."""
    from flows.fleet import migrate_fleet_flow

    # Always named: a URL fleet's template is the `database-url` environment (no snapshot), never the flow's default.
    named = {"environment": environment.name, **({"url_variables": variables} if variables else {})}
    state = migrate_fleet_flow(return_state=True, **named, concurrency=concurrency, **parameters)
    if state.is_completed():
        return EXIT_OK, state.result()
    try:
        state.result()
    except RdsMigrationsError as exc:
        return failed(environment, exc)
    except Exception as exc:  # noqa: BLE001 - reported; the flow already notified
        print(f"rds-migrations: {environment.name}: {exc}", file=sys.stderr)
    return EXIT_FAILED, None


def failed(environment: Environment, exc: RdsMigrationsError) -> tuple[int, FleetReport | None]:
    """A fleet run's failure, printed in one line: its exit code, and the per-target report when there is one."""
    from tasks.engine.fleet.report import FleetFailed

    if isinstance(exc, FleetFailed):
        print(f"rds-migrations: {exc}", file=sys.stderr)
        return exc.exit_code, exc.report
    print(f"rds-migrations: {environment.name}: {exc}", file=sys.stderr)
    return exc.exit_code, None
