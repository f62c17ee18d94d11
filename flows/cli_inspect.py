"""The commands that read: validate, plan, drift, status. None of them writes to the target database;
`validate` rehearses on a scratch database of the server it is given, or of the embedded one."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from flows.cli_common import catalog_of, connection_of, emit, environment_of
from tasks.engine.environments import Environment, load_environment
from tasks.engine.errors import EXIT_FAILED, EXIT_OK, UsageError


def cmd_validate(args: argparse.Namespace) -> int:
    from tasks.engine.connection import Connection, connection_from_url
    from tasks.engine.embedded import embedded_server
    from tasks.engine.migrations.plan import plan
    from tasks.engine.migrations.rehearsal import rehearse
    from tasks.engine.migrations.report import with_plan, with_rehearsal
    from tasks.engine.migrations.scratch import Place, choose_place
    from tasks.engine.migrations.validation import check_migrations

    policy = load_environment(args.env or "production").policy
    catalog, report = check_migrations(Path(args.migrations), Path.cwd(), policy)
    url = args.database_url or os.environ.get("DATABASE_URL")
    server = None
    if report.static_ok and url:
        server = connection_from_url(url, "--database-url")
        report = with_plan(report, plan(server, catalog, allow_out_of_order=policy.allow_out_of_order), catalog)
    if report.ok:
        if server is None:
            local = embedded_server()
            local.start()
            place: Place | Connection = local.connection()
        else:  # as a run would: what would change the target's server itself is rehearsed elsewhere
            place = choose_place(server, server, catalog.migrations, dry_run=False)
        report = with_rehearsal(report, rehearse(catalog, place, policy))
    if args.markdown:
        try:
            with args.markdown.open("a", encoding="utf-8") as out:
                out.write(report.to_markdown())
        except OSError as exc:
            raise UsageError(f"--markdown {args.markdown}: cannot write it ({exc.strerror or exc}): name a file in a "
                             "directory that exists, e.g. $GITHUB_STEP_SUMMARY") from None
    emit(args, "validate", report.to_json(), report.to_text() + ("" if report.ok else "\n" + report.how_to_proceed()))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_plan(args: argparse.Namespace) -> int:
    from tasks.engine.migrations.plan import plan
    from tasks.engine.migrations.status import remembered_drift

    environment = environment_of(args)
    catalog = catalog_of(args)
    if catalog.problems:
        emit(args, "plan", {"environment": environment.name, "problems": [str(p) for p in catalog.problems]},
             "\n".join(f"ERROR {p}" for p in catalog.problems))
        return EXIT_FAILED
    policy = environment.policy
    with connection_of(environment) as connection:
        current = plan(connection, catalog, allow_out_of_order=policy.allow_out_of_order, environment=environment.name)
        # Drift as `status` reads it (against the schema remembered after the last run: cheap), which the run checks.
        summary, drifted = remembered_drift(connection, catalog, environment.name) if policy.drift != "ignore" \
            else (None, None)
    lines = [f"{environment.name}: {len(current.applied)} applied, {len(current.pending)} pending"]
    lines += [f"  pending {migration_id}" for migration_id in current.pending]
    lines += [f"  WARNING {index}: the run will {index_action(environment)}" for index in current.invalid_indexes]
    lines += [f"  ERROR {problem}" for problem in current.problems]
    refused = bool(drifted and policy.drift == "block" and not current.pending)
    if drifted:
        then = ("the run will refuse" if refused else "the run will refuse unless a pending migration makes the "
                "same change" if policy.drift == "block" else "the run will warn and go on")
        lines.append(f"  {'ERROR' if refused else 'WARNING'} drift: {summary} (policy.drift = {policy.drift}: "
                     f"{then})")
    found = {"drift": {"checked": drifted is not None, "drifted": drifted, "summary": summary}} if summary else {}
    emit(args, "plan", {"environment": environment.name, **current.to_json(), **found}, "\n".join(lines))
    return EXIT_FAILED if current.problems or refused else EXIT_OK


def index_action(environment: Environment) -> str:
    if environment.policy.invalid_index == "drop_and_retry":
        return "drop it and build it again (policy.invalid_index)"
    return "refuse until it is dropped (policy.invalid_index)"


def cmd_drift(args: argparse.Namespace) -> int:
    """Exit 0 when the live schema is what the applied migrations make, 1 when it drifted."""
    from tasks.engine.runs.steps import environment_drift

    environment = environment_of(args)
    catalog = catalog_of(args)
    with connection_of(environment) as connection:
        drift, source = environment_drift(environment, connection, catalog, _log())
    emit(args, "drift", {"environment": environment.name, "expected_from": source, **drift.to_json()},
         f"{environment.name} (expected schema: {source})\n{drift.to_text()}")
    return EXIT_FAILED if drift.drifted else EXIT_OK


def _log():  # noqa: ANN202 - a logging.Logger
    from flows.launch import console_log

    return console_log()


def cmd_status(args: argparse.Namespace) -> int:
    """Read-only: what the history holds, pending, dirty marks, the lock and drift when cheap. Exit 0."""
    import sys

    from tasks.engine.migrations.status import read_status

    environment = environment_of(args)
    with connection_of(environment) as connection:
        status = read_status(connection, catalog_of(args), environment=environment.name,
                             allow_out_of_order=environment.policy.allow_out_of_order,
                             drift_blocks=environment.policy.drift == "block")
    emit(args, "status", status.to_json(), status.to_text(color=sys.stdout.isatty()))
    return EXIT_OK
