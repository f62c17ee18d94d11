"""The commands that change a database, a server or the migrations directory: run, rollback, baseline,
resolve, restore, new, setup-prefect, demo.
Each goes straight through the engine unless a Prefect API is asked for (flows/launch.py decides)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from flows.cli_common import catalog_of, connection_of, emit, environment_of
from tasks.engine.environments import Environment
from tasks.engine.errors import EXIT_FAILED, EXIT_OK, ConfigError, UsageError
from tasks.engine.fleet.targets import environment_named, one_database_environment
from tasks.engine.git import head_sha


def cmd_run(args: argparse.Namespace) -> int:
    from flows.cli_fleet import is_fleet_run, run_fleet
    from flows.launch import prefect_wanted, run_direct, run_migration_flow

    if is_fleet_run(args):
        return run_fleet(args)

    environment = environment_of(args)
    parameters = {"git_sha": args.git_sha or head_sha(), "dry_run": args.dry_run, "target": args.target,
                  "migrations_dir": args.migrations, "trigger": "cli"}
    if prefect_wanted(environment, asked=args.prefect):
        code, summary = run_migration_flow(environment, **parameters)  # type: ignore[arg-type]
    else:
        from tasks.engine.runs.migration import migrate_environment

        code, summary = run_direct(
            lambda steps: migrate_environment(environment.name, environment.tier, steps, **parameters),
            environment.name)
    emit(args, "run", {"environment": environment.name, "exit_code": code,
                       **(summary.to_json() if summary is not None else {"outcome": "failed"})}, None)
    return code


def cmd_baseline(args: argparse.Namespace) -> int:
    environment = environment_of(args)
    code, report = _flow_or_engine(args, environment, "flows.adoption:baseline",
                                   "tasks.engine.runs.adoption:adopt_environment",
                                   through=args.through, tool=args.tool, history_schema=args.schema,
                                   migrations_dir=args.migrations,
                                   git_sha=args.git_sha or head_sha(), dry_run=args.dry_run,
                                   accept_differences=args.accept_differences)
    emit(args, "baseline", {"environment": environment.name, "exit_code": code,
                            **(report.to_json() if report is not None else {})},
         report.to_text() if report is not None else None)
    return code


def cmd_rollback(args: argparse.Namespace) -> int:
    environment = environment_of(args)
    code, report = _flow_or_engine(args, environment, "flows.rollback:rollback",
                                   "tasks.engine.runs.rollback:roll_back_environment",
                                   to=args.to, git_sha=args.git_sha or head_sha(), dry_run=args.dry_run,
                                   migrations_dir=args.migrations, trigger="cli")
    emit(args, "rollback", {"environment": environment.name, "exit_code": code,
                            **(report.to_json() if report is not None else {"rolled_back": []})},
         report.to_text() if report is not None else None)
    return code


def _flow_or_engine(args: argparse.Namespace, environment: Environment, flow: str, pipeline: str,
                    **parameters: object) -> tuple[int, Any]:
    """The flow (`module:name`) when Prefect is wanted, else the pipeline (`module:name`, called with the
    environment's name and DirectSteps); both imported only then, so the other path costs nothing."""
    from flows.launch import prefect_wanted, run_direct, run_flow

    def load(where: str) -> Any:
        module, name = where.split(":")
        return getattr(importlib.import_module(module), name)

    if prefect_wanted(environment, asked=args.prefect):
        return run_flow(load(flow), environment.name, environment=environment.name, **parameters)
    run = load(pipeline)
    return run_direct(lambda steps: run(environment.name, steps, **parameters), environment.name)


def cmd_new(args: argparse.Namespace) -> int:
    from tasks.engine.migrations.hints import migrations_flag
    from tasks.engine.migrations.new import new_migration

    written = new_migration(Path(args.migrations), Path.cwd(), args.slug,
                            transactional=not args.non_transactional, with_rollback=args.with_rollback)
    for path in written:
        print(path.relative_to(Path.cwd().resolve()))
    print("next: write the change where the DO block is (and delete it), then run rds-migrations validate"
          f"{migrations_flag(Path(args.migrations))}", file=sys.stderr)
    return EXIT_OK


def cmd_resolve(args: argparse.Namespace) -> int:
    """Without MIGRATION_ID: explain what is dirty. With it: record the operator's resolution."""
    from tasks.engine.migrations.resolve import explain_state, resolve_dirty

    marked = args.mark_applied or args.mark_not_applied
    if args.migration is None and marked:
        raise UsageError("name the migration to mark: resolve --env NAME MIGRATION_ID --mark-applied")
    if args.migration is not None and not marked:
        raise UsageError("say how it was resolved: --mark-applied (finished by hand) or --mark-not-applied "
                         "(undone by hand)")
    environment = environment_of(args)
    catalog = catalog_of(args)
    with connection_of(environment) as connection:
        if args.migration is None:
            clean, explanation = explain_state(connection, catalog, environment=environment.name)
            print(explanation)
            return EXIT_OK if clean else EXIT_FAILED
        print(resolve_dirty(connection, catalog, args.migration, mark_applied=args.mark_applied,
                            policy=environment.policy))
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from flows.launch import prefect_wanted, run_direct, run_flow

    environment = one_database_environment(args.env)
    sha = args.git_sha or head_sha()
    if prefect_wanted(environment, asked=args.prefect):
        from flows.restore import restore_snapshot

        return run_flow(restore_snapshot, environment.name, environment=environment.name,
                        snapshot_id=args.snapshot_id, git_sha=sha)[0]
    from tasks.engine.runs.refresh import restore_snapshot as run_restore

    return run_direct(lambda steps: run_restore(environment.name, args.snapshot_id, steps, git_sha=sha),
                      environment.name)[0]


def cmd_setup_prefect(args: argparse.Namespace) -> int:
    import httpx
    from prefect.settings import PREFECT_API_URL

    from flows.setup import FLOW_RUN_COMMAND, setup_prefect
    from flows.trigger_api import check_api_url, shown_url

    for name in args.environments:
        environment_named(name)  # a typo is a usage error, not a limit nobody uses; a fleet's target is one
    api = PREFECT_API_URL.value()  # as Prefect reads it: the environment, then the active profile
    if api:
        check_api_url(api)
    else:  # Prefect would start a temporary server, set it up, throw it away and say "created"
        raise ConfigError("setup-prefect sets up a Prefect server, and none is named: set PREFECT_API_URL (and "
                          "PREFECT_API_KEY for Prefect Cloud), e.g. PREFECT_API_URL=http://127.0.0.1:4200/api; "
                          "nothing was created")
    command = FLOW_RUN_COMMAND if args.flow_run_command is None else args.flow_run_command
    try:
        done = setup_prefect(args.environments, work_pool=args.work_pool, pool_type=args.pool_type,
                             flow_run_command=command, alerts_block=args.alerts_block,
                             crash_report_seconds=args.crash_report_seconds, pending_seconds=args.pending_seconds,
                             heartbeat_seconds=args.heartbeat_seconds, fleet_limit=args.fleet_limit)
    except httpx.HTTPStatusError as exc:  # a wrong key (401), a URL that is not the API (404)
        raise ConfigError(f"the Prefect API at {shown_url(api)} answered {exc.response.status_code} to "
                          f"{exc.request.method} {exc.request.url.path}: check PREFECT_API_URL and PREFECT_API_KEY"
                          ) from None
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the Prefect API at {shown_url(api)} ({type(exc).__name__}): is "
                          "PREFECT_API_URL right and the server up?") from None
    print("\n".join(done))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import demo

    return demo(reset=args.reset)
