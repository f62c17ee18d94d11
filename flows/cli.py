"""`rds-migrations`: a thin command line over the same functions the flows call. This module only parses
arguments and turns the one error root into a message and an exit code; the commands are in cli_inspect.py
(reading) and cli_change.py (changing).

Exit codes: 0 success, 1 validation or migration failed (or drift found), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Before Prefect is imported: no telemetry, and time for the ephemeral API to start on a busy laptop.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from flows import trigger as trigger_command  # noqa: E402
from tasks.engine.errors import (  # noqa: E402
    EXIT_FAILED,
    EXIT_OK,
    DatabaseRefused,
    RdsMigrationsError,
    UsageError,
    redact,
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("rds-migrations")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with its usage errors never repeating a URL's password (argparse quotes a value it
    refuses: a URL pasted into the wrong place), and kept: under --json, main() prints them as the one JSON
    document a script reads from stdout (argparse prints them on stderr and exits 2)."""

    said: str | None = None
    argv: list[str] = []

    def error(self, message: str):  # type: ignore[override] - argparse's NoReturn: it exits
        passwords = [password for word in _Parser.argv if "://" in word
                     for password in _passwords(word.partition("=")[2] if word.startswith("-") else word)]
        _Parser.said = f"{self.prog}: {redact(message, *passwords)}"
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {redact(message, *passwords)}\n")


def _passwords(url: str) -> tuple[str, ...]:
    """A URL's password as written (URL-quoted) and as it is."""
    try:
        password = urlsplit(url).password or ""
    except ValueError:  # not a URL after all (an unclosed "[" of an IPv6 host): nothing to take from it
        return ()
    return password, unquote(password)


def _parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: `rds-migrations trigger` (the GitHub check) starts without them.
    from flows import cli_fleet, completion

    parser = _Parser(
        prog="rds-migrations",
        description="Safe, observable PostgreSQL schema migrations for AWS RDS, orchestrated by Prefect.",
    )
    parser.add_argument("--version", action="version", version=f"rds-migrations {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser("demo", help="run staging then production on an embedded local PostgreSQL")
    demo.add_argument("--reset", action="store_true", help="start from empty databases (drops the demo data)")

    def target_options(p: argparse.ArgumentParser, url_help: str = "a plain PostgreSQL (or set DATABASE_URL): no "
                                                                    "snapshot, console notifications") -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--env", metavar="NAME", help="an environment in deployments/environments.toml")
        group.add_argument("--database-url", metavar="URL", help=url_help)

    reads_url = "a plain PostgreSQL, only read (or set DATABASE_URL, which keeps the password off the command line)"

    def migrations_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--migrations", default="migrations", metavar="DIR", help="default: migrations")

    def json_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true",
                       help="print exactly one JSON document on stdout (with a schema_version); logs go to stderr")

    def prefect_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--prefect", action="store_true",
                       help="run it as a Prefect flow even when no Prefect API is configured (Prefect's temporary "
                            "server); without it, and without PREFECT_API_URL, the same steps run directly")

    validate = commands.add_parser("validate", help="static checks, lint, rehearsal (and plan with a database)")
    migrations_option(validate)
    validate.add_argument("--database-url", metavar="URL",
                          help="rehearse on this server (a scratch database is created) and plan against it")
    validate.add_argument("--env", metavar="NAME", default=None,
                          help="lint policy of this environment (default: production's rules)")
    validate.add_argument("--markdown", metavar="FILE", type=Path,
                          help="also write the report as markdown (e.g. $GITHUB_STEP_SUMMARY)")
    json_option(validate)

    plan = commands.add_parser("plan", help="what is pending on a database (read-only)")
    target_options(plan, reads_url)
    migrations_option(plan)
    json_option(plan)

    drift = commands.add_parser("drift", help="the live schema against what the applied migrations make "
                                              "(exit 1 when it drifted)")
    target_options(drift, reads_url)
    migrations_option(drift)
    json_option(drift)

    status = commands.add_parser("status", help="what the database's history holds: applied (when, by whom, "
                                                "from which commit and flow run), pending, dirty, the lock, drift")
    target_options(status, reads_url)
    migrations_option(status)
    json_option(status)

    run = commands.add_parser("run", help="run the staging or production flow (by the environment's tier), or a "
                                          "fleet of databases (an environment with a fleet, or several URLs)")
    run_targets = run.add_mutually_exclusive_group()
    run_targets.add_argument("--env", metavar="NAME", help="an environment in deployments/environments.toml")
    cli_fleet.add_fleet_arguments(run, run_targets)
    migrations_option(run)
    run.add_argument("--git-sha", default=None, help="the commit being applied (default: git rev-parse HEAD)")
    run.add_argument("--dry-run", action="store_true", help="validate and plan only")
    run.add_argument("--target", metavar="VERSION", help="apply up to and including this migration")
    prefect_option(run)
    json_option(run)

    baseline = commands.add_parser(
        "baseline", help="adopt a database another tool or a person migrated: record what it holds as applied, "
                         "without running it")
    target_options(baseline)
    migrations_option(baseline)
    what = baseline.add_mutually_exclusive_group(required=True)
    what.add_argument("--through", metavar="VERSION",
                      help="every migration up to and including VERSION is already applied (0: none)")
    what.add_argument("--from", dest="tool", choices=["knex", "flyway", "golang-migrate"],
                      help="read that tool's history and map it onto the migrations directory")
    baseline.add_argument("--schema", metavar="SCHEMA",
                          help="with --from: the schema holding that tool's history, when it is in several")
    baseline.add_argument("--dry-run", action="store_true", help="show the mapping; write nothing")
    baseline.add_argument("--accept-differences", action="store_true",
                          help="adopt even where the migrations recorded do not build the database's schema (replayed "
                               "on a scratch database): the differences are recorded as a warning, not a refusal")
    baseline.add_argument("--git-sha", default=None, help="the commit recorded (default: git rev-parse HEAD)")
    prefect_option(baseline)
    json_option(baseline)

    setup = commands.add_parser("setup-prefect", help="create the work pool, each environment's concurrency "
                                                      "limit, the fleet's and the automations (idempotent)")
    setup.add_argument("environments", nargs="+", metavar="ENV", help="environments in the environments file")
    setup.add_argument("--work-pool", default="rds-migrations", help="default: rds-migrations")
    setup.add_argument("--type", dest="pool_type", default="process", help="work pool type (default: process)")
    setup.add_argument("--flow-run-command", default=None, metavar="COMMAND",
                       help="what a process worker starts each flow run with (default: 'python -m prefect.engine', "
                            "the worker's python; '' leaves Prefect's default, a supervisor process first)")
    setup.add_argument("--alerts-block", default=None, metavar="NAME",
                       help="the prefect-slack SlackWebhook block the automations alert (default: the one the "
                            "environments notify)")
    setup.add_argument("--crash-report-seconds", type=int, default=300, metavar="S",
                       help="alert when a crashed run was not reported by its hook within S (default 300)")
    setup.add_argument("--pending-seconds", type=int, default=900, metavar="S",
                       help="alert when a run stays Pending for S (default 900)")
    setup.add_argument("--heartbeat-seconds", type=int, default=600, metavar="S",
                       help="mark a run Crashed after S without a heartbeat (default 600; runs beat every 180)")
    setup.add_argument("--fleet-limit", type=int, default=8, metavar="N",
                       help="slots of rds-migrations-fleet: targets migrated at once across every fleet run "
                            "(default 8; an existing limit is left as it is)")

    resolve = commands.add_parser(
        "resolve", help="explain a dirty database (a non-transactional migration that did not finish), "
                        "or record how you resolved it by hand",
    )
    target_options(resolve, "a plain PostgreSQL (or set DATABASE_URL): the database whose dirty mark is explained "
                            "or, with --mark-*, resolved in its history")
    migrations_option(resolve)
    resolve.add_argument("migration", nargs="?", metavar="MIGRATION_ID", help="the dirty migration")
    how = resolve.add_mutually_exclusive_group()
    how.add_argument("--mark-applied", action="store_true",
                     help="you finished it by hand: record it as applied")
    how.add_argument("--mark-not-applied", action="store_true",
                     help="you undid it by hand: it stays pending and runs again")
    restore = commands.add_parser(
        "restore", help="restore one of an environment's snapshots to a NEW name, then swap names (the "
                        "replaced copy is kept)",
    )
    restore.add_argument("--env", metavar="NAME", required=True, help="the environment whose database is replaced")
    restore.add_argument("--snapshot-id", required=True, metavar="ID",
                         help="the snapshot (RDS snapshot id, or a local dump's name without .dump)")
    restore.add_argument("--git-sha", default=None, help="the commit the restored database should match")
    prefect_option(restore)

    rollback = commands.add_parser(
        "rollback", help="undo the applied migrations after a version, newest first, through the same safe pipeline "
                         "as a run (every one of them needs a rollback file)")
    target_options(rollback)
    migrations_option(rollback)
    rollback.add_argument("--to", required=True, metavar="VERSION",
                          help="the migration id or version number to go back to (0: undo every migration)")
    rollback.add_argument("--git-sha", default=None, help="the commit being used (default: git rev-parse HEAD)")
    rollback.add_argument("--dry-run", action="store_true", help="validate and plan only")
    prefect_option(rollback)
    json_option(rollback)

    new = commands.add_parser("new", help="write the next migration file: numbered, depending on the head, from a "
                                          "template that no rehearsal or run gets past until it is written")
    new.add_argument("slug", metavar="SLUG",
                     help="what it changes, in lowercase words and hyphens (add-users-nickname)")
    migrations_option(new)
    new.add_argument("--non-transactional", action="store_true",
                     help="for what cannot run in a transaction (CREATE INDEX CONCURRENTLY): -- transactional: false")
    new.add_argument("--with-rollback", action="store_true", help="also write NNNN.slug.rollback.sql")

    trigger = commands.add_parser(
        "trigger", help="run a deployment through the Prefect API and follow it (the GitHub check): its logs; exit 0 "
                        "Completed, 1 failed or still running at the deadline (never cancelled), 2 bad input")
    trigger_command.add_arguments(trigger)

    shells = commands.add_parser("completion", help="print the bash or zsh completion script (install: see "
                                                    "rds-migrations completion --help)",
                                 description=completion.HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    shells.add_argument("shell", nargs="?", choices=["bash", "zsh"], help="the shell to complete in")
    shells.add_argument("--list-environments", action="store_true", help=argparse.SUPPRESS)  # asked by the scripts
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    from flows import completion

    if args.list_environments:  # at each TAB: the names, and never an error
        print("\n".join(completion.environment_names()))
        return EXIT_OK
    if args.shell is None:
        raise UsageError("say which shell: rds-migrations completion bash, or rds-migrations completion zsh")
    print(completion.script(args.shell, _parser()), end="")
    return EXIT_OK


def cmd_trigger(args: argparse.Namespace) -> int:
    return trigger_command.run(args)


def command_table() -> dict[str, Callable[[argparse.Namespace], int]]:
    from flows import cli_change, cli_inspect

    return {"demo": cli_change.cmd_demo, "validate": cli_inspect.cmd_validate, "plan": cli_inspect.cmd_plan,
            "drift": cli_inspect.cmd_drift,
            "status": cli_inspect.cmd_status, "run": cli_change.cmd_run, "baseline": cli_change.cmd_baseline,
            "resolve": cli_change.cmd_resolve, "setup-prefect": cli_change.cmd_setup_prefect,
            "restore": cli_change.cmd_restore, "rollback": cli_change.cmd_rollback, "new": cli_change.cmd_new,
            "completion": cmd_completion, "trigger": cmd_trigger}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["trigger"]:  # the GitHub check starts fast: the standard library and httpx, no Prefect
        return trigger_command.main(argv[1:])
    _Parser.said, _Parser.argv = None, argv
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # a usage error (exit 2), --help or --version (exit 0)
        if stop.code == 2 and "--json" in argv and _Parser.said:
            from flows.cli_common import emit_failure, forget_emitted

            forget_emitted()
            command = next((word for word in argv if not word.startswith("-")), None)
            emit_failure(argparse.Namespace(command=command, json=True), _Parser.said, 2)
        raise
    common = sys.modules.get("flows.cli_common")  # not imported for nothing: completion runs at each TAB
    if common is not None:
        common.forget_emitted()  # one JSON document per command run, also when main() runs again in one process
    try:
        return command_table()[args.command](args)
    except RdsMigrationsError as exc:  # every failure a person should read; anything else is a bug
        return _failed(args, str(exc), exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C where no pipeline said more (a read-only command, a prompt)
        return _failed(args, "interrupted (Ctrl-C)", 130)
    except OSError as exc:  # the machine said no (a file, a directory, a permission): its words, and the file
        where = f": {exc.filename}" if exc.filename else ""
        return _failed(args, f"{exc.strerror or exc}{where}", EXIT_FAILED)
    except Exception as exc:
        if type(exc).__module__.startswith("psycopg"):  # a refusal no step explained, in any command
            return _failed(args, str(DatabaseRefused.of(exc)), EXIT_FAILED)
        if not type(exc).__module__.startswith("botocore"):
            raise
        # AWS itself (no credentials, an endpoint out of reach, a refusal the steps did not name): botocore's
        # texts name the operation and the error code, never a secret.
        return _failed(args, f"AWS: {exc}", EXIT_FAILED)


def _failed(args: argparse.Namespace, message: str, exit_code: int) -> int:
    print(f"rds-migrations: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        from flows.cli_common import emit_failure

        emit_failure(args, message, exit_code)
    return exit_code


def program() -> int:
    """The `rds-migrations` program: `main`, then an exit without the garbage collector walking every object
    of the run once more as Python shuts down (0.1 s of a second-long command; nothing is left to free)."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(program())


