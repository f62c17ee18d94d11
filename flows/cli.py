"""`rds-migrations`: a thin command line over the same functions the flows call.

Exit codes: 0 success, 1 validation or migration failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before Prefect is imported: no telemetry, and time for the ephemeral API to start on a busy laptop.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from tasks.engine.connection import Connection  # noqa: E402
from tasks.engine.environments import Environment, load_environment  # noqa: E402
from tasks.engine.errors import EXIT_FAILED, EXIT_OK, RdsMigrationsError, UsageError  # noqa: E402
from tasks.engine.git import head_sha  # noqa: E402

DATABASE_URL_ENVIRONMENT = "database-url"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rds-migrations",
        description="Safe, observable PostgreSQL schema migrations for AWS RDS, orchestrated by Prefect.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run staging then production on an embedded local PostgreSQL")
    demo.add_argument("--reset", action="store_true", help="start from empty databases (drops the demo data)")

    def target_options(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--env", metavar="NAME", help="an environment in deployments/environments.toml")
        group.add_argument(
            "--database-url", metavar="URL",
            help="a plain PostgreSQL (or set DATABASE_URL): no snapshot, console notifications",
        )

    def migrations_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--migrations", default="migrations", metavar="DIR", help="default: migrations")

    validate = commands.add_parser("validate", help="static checks, lint, rehearsal (and plan with a database)")
    migrations_option(validate)
    validate.add_argument("--database-url", metavar="URL",
                          help="rehearse on this server (a scratch database is created) and plan against it")
    validate.add_argument("--env", metavar="NAME", default=None,
                          help="lint policy of this environment (default: production's rules)")
    validate.add_argument("--markdown", metavar="FILE", type=Path,
                          help="also write the report as markdown (e.g. $GITHUB_STEP_SUMMARY)")

    plan = commands.add_parser("plan", help="what is pending on a database (read-only)")
    target_options(plan)
    migrations_option(plan)

    run = commands.add_parser("run", help="run the staging or production flow (by the environment's tier)")
    target_options(run)
    migrations_option(run)
    run.add_argument("--git-sha", default=None, help="the commit being applied (default: git rev-parse HEAD)")
    run.add_argument("--dry-run", action="store_true", help="validate and plan only")
    run.add_argument("--target", metavar="VERSION", help="apply up to and including this migration")
    run.add_argument("--prefect", action="store_true",
                     help="run it as a Prefect flow even when no Prefect API is configured (Prefect's temporary "
                          "server); without it, and without PREFECT_API_URL, the same steps run directly")

    setup = commands.add_parser("setup-prefect", help="create the work pool and each environment's concurrency "
                                                      "limit on the Prefect server (idempotent)")
    setup.add_argument("environments", nargs="+", metavar="ENV", help="environments in the environments file")
    setup.add_argument("--work-pool", default="rds-migrations", help="default: rds-migrations")
    setup.add_argument("--type", dest="pool_type", default="process", help="work pool type (default: process)")
    setup.add_argument("--flow-run-command", default=None, metavar="COMMAND",
                       help="what a process worker starts each flow run with (default: 'python -m prefect.engine', "
                            "the worker's python; '' leaves Prefect's default, a supervisor process first)")

    resolve = commands.add_parser(
        "resolve", help="explain a dirty database (a non-transactional migration that did not finish), "
                        "or record how you resolved it by hand",
    )
    target_options(resolve)
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
    restore.add_argument("--prefect", action="store_true", help="run it as a Prefect flow (see run --prefect)")
    return parser


def _environment(args: argparse.Namespace) -> Environment:
    if getattr(args, "database_url", None):
        os.environ["DATABASE_URL"] = args.database_url
    if args.env:
        return load_environment(args.env)
    if os.environ.get("DATABASE_URL"):
        return load_environment(DATABASE_URL_ENVIRONMENT)
    raise UsageError("say which database: --env NAME, --database-url URL, or set DATABASE_URL")


# ---- commands --------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from tasks.engine.connection import connection_from_url
    from tasks.engine.embedded import embedded_server
    from tasks.engine.migrations.plan import plan
    from tasks.engine.migrations.rehearsal import rehearse
    from tasks.engine.migrations.report import with_plan, with_rehearsal
    from tasks.engine.migrations.validation import check_migrations

    policy = load_environment(args.env or "production").policy
    catalog, report = check_migrations(Path(args.migrations), Path.cwd(), policy)
    if report.ok:
        url = args.database_url or os.environ.get("DATABASE_URL")
        if url:
            connection = connection_from_url(url, "--database-url")
            report = with_plan(report, plan(connection, catalog, allow_out_of_order=policy.allow_out_of_order))
            server = connection
        else:
            local = embedded_server()
            local.start()
            server = local.connection()
        report = with_rehearsal(report, rehearse(catalog, server, policy))
    print(report.to_text())
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as out:
            out.write(report.to_markdown())
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_plan(args: argparse.Namespace) -> int:
    from tasks.engine.migrations.catalog import read_catalog
    from tasks.engine.migrations.plan import plan

    environment = _environment(args)
    catalog = read_catalog(Path(args.migrations), Path.cwd())
    if catalog.problems:
        print("\n".join(f"ERROR {p}" for p in catalog.problems))
        return EXIT_FAILED
    current = plan(_connection(environment), catalog, allow_out_of_order=environment.policy.allow_out_of_order,
                   environment=environment.name)
    print(f"{environment.name}: {len(current.applied)} applied, {len(current.pending)} pending")
    for migration_id in current.pending:
        print(f"  pending {migration_id}")
    for index in current.invalid_indexes:
        print(f"  WARNING {index}: the run will {index_action(environment)}")
    for problem in current.problems:
        print(f"  ERROR {problem}")
    return EXIT_FAILED if current.problems else EXIT_OK


def index_action(environment: Environment) -> str:
    if environment.policy.invalid_index == "drop_and_retry":
        return "drop it and build it again (policy.invalid_index)"
    return "refuse until it is dropped (policy.invalid_index)"


def cmd_resolve(args: argparse.Namespace) -> int:
    """Without MIGRATION_ID: explain what is dirty. With it: record the operator's resolution."""
    from tasks.engine.migrations.catalog import read_catalog
    from tasks.engine.migrations.resolve import explain_state, resolve_dirty

    marked = args.mark_applied or args.mark_not_applied
    if args.migration is None and marked:
        raise UsageError("name the migration to mark: resolve --env NAME MIGRATION_ID --mark-applied")
    if args.migration is not None and not marked:
        raise UsageError("say how it was resolved: --mark-applied (finished by hand) or --mark-not-applied "
                         "(undone by hand)")
    environment = _environment(args)
    catalog = read_catalog(Path(args.migrations), Path.cwd())
    connection = _connection(environment)
    if args.migration is None:
        clean, explanation = explain_state(connection, catalog, environment=environment.name)
        print(explanation)
        return EXIT_OK if clean else EXIT_FAILED
    print(resolve_dirty(connection, catalog, args.migration, mark_applied=args.mark_applied,
                        policy=environment.policy))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from flows.launch import prefect_wanted, run_direct, run_migration_flow

    environment = _environment(args)
    parameters = {"git_sha": args.git_sha or head_sha(), "dry_run": args.dry_run, "target": args.target,
                  "migrations_dir": args.migrations, "trigger": "cli"}
    if prefect_wanted(environment, asked=args.prefect):
        return run_migration_flow(environment, **parameters)  # type: ignore[arg-type]
    from tasks.engine.runs.migration import migrate_environment

    return run_direct(lambda steps: migrate_environment(environment.name, environment.tier, steps, **parameters),
                      environment.name)


def cmd_setup_prefect(args: argparse.Namespace) -> int:
    from flows.setup import FLOW_RUN_COMMAND, setup_prefect

    for name in args.environments:
        load_environment(name)  # a typo is a usage error, not a limit nobody uses
    command = FLOW_RUN_COMMAND if args.flow_run_command is None else args.flow_run_command
    print("\n".join(setup_prefect(args.environments, work_pool=args.work_pool, pool_type=args.pool_type,
                                  flow_run_command=command)))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import demo

    return demo(reset=args.reset)


def cmd_restore(args: argparse.Namespace) -> int:
    from flows.launch import prefect_wanted, run_direct, run_flow

    environment = load_environment(args.env)
    sha = args.git_sha or head_sha()
    if prefect_wanted(environment, asked=args.prefect):
        from flows.restore import restore_snapshot

        return run_flow(restore_snapshot, environment.name, environment=environment.name,
                        snapshot_id=args.snapshot_id, git_sha=sha)
    from tasks.engine.runs.refresh import restore_snapshot as run_restore

    return run_direct(lambda steps: run_restore(environment.name, args.snapshot_id, steps, git_sha=sha),
                      environment.name)


def _connection(environment: Environment) -> Connection:
    """The environment's credentials, read directly (read-only commands need no flow run). A named
    credentials block is a Prefect block, read through the Prefect API; otherwise the default chain."""
    from tasks.engine.runs.steps import DirectSteps

    make_client = None
    if environment.aws is not None and environment.aws.credentials_block:
        from tasks.aws import aws_client as make_client
    return DirectSteps(make_client=make_client).fetch_secret(environment)


COMMANDS = {"demo": cmd_demo, "validate": cmd_validate, "plan": cmd_plan, "run": cmd_run, "resolve": cmd_resolve,
            "setup-prefect": cmd_setup_prefect, "restore": cmd_restore}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RdsMigrationsError as exc:  # every failure a person should read; anything else is a bug
        print(f"rds-migrations: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
