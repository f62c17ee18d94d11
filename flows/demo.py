"""`make demo`: the whole pipeline on the embedded default, with no AWS account and no Slack.

A throwaway local PostgreSQL (in .rds-migrations/), a staging and a production database on it, the staging
flow then the production flow under Prefect's ephemeral API, local pg_dump snapshots and console
notifications. Run it twice: the second run applies nothing and takes no snapshot.
"""

from __future__ import annotations

from flows.launch import run_migration_flow
from tasks.engine.embedded import embedded_server
from tasks.engine.environments import load_environment
from tasks.engine.git import head_sha
from tasks.engine.snapshots.dumps import dump_directory

STAGING, PRODUCTION = "local", "local-production"


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)), flush=True)


def demo(reset: bool = False) -> int:
    server = embedded_server()
    _banner("embedded PostgreSQL")
    port = server.start()
    print(f"server: {server.bindir.parent.name} binaries, data in {server.data_dir}, 127.0.0.1:{port}")
    environments = {name: load_environment(name) for name in (STAGING, PRODUCTION)}
    if reset:
        for environment in environments.values():
            server.drop_database(environment.credentials.database)  # type: ignore[union-attr]
        for dump in dump_directory(environments[PRODUCTION].snapshot).glob("*"):  # type: ignore[arg-type]
            dump.unlink()
        print("reset: demo databases dropped, local snapshots deleted")
    sha = head_sha()
    codes = []
    try:
        for name in (STAGING, PRODUCTION):
            environment = environments[name]
            _banner(f"{environment.tier} flow on environment '{name}' (git {sha[:12]})")
            codes.append(run_migration_flow(environment, git_sha=sha, dry_run=False, target=None,
                                            migrations_dir="migrations", trigger="demo")[0])
    finally:
        server.stop()
    _banner("snapshots")
    dumps = sorted(dump_directory(environments[PRODUCTION].snapshot).glob("*.dump"))  # type: ignore[arg-type]
    for dump in dumps:
        print(f"  {dump}  ({dump.stat().st_size:,} bytes)")
    if not dumps:
        print("  none")
    print("\nRun `make demo` again: nothing is pending, so no snapshot is taken and nothing is applied.")
    print("`uv run rds-migrations demo --reset` starts over from empty databases.")
    return max(codes) if codes else 1
