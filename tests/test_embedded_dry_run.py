"""An embedded environment whose database does not exist yet: a dry run and the read-only commands create
nothing (they read an empty database in its place, as the run will start from it); the run creates it.
Through the command line, on the tool's own embedded server, as a newcomer's first commands go."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tasks.engine.connection import connected
from tasks.engine.embedded import embedded_server
from tasks.engine.errors import ConfigError
from tasks.engine.runs.rollback import roll_back_environment
from tasks.engine.runs.steps import DirectSteps
from tests.helpers import cli, write_migrations

pytestmark = pytest.mark.integration  # the embedded server


def databases_like(prefix: str) -> list[str]:
    with connected(embedded_server().connection()) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                           (prefix.replace("_", "\\_") + "%",))]


@pytest.fixture
def sandbox(tmp_path: Path):
    """A project with two migrations and an environments file naming an embedded database not created yet."""
    name = f"sandbox_{uuid.uuid4().hex[:8]}"
    write_migrations(tmp_path, {"0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
                                "0002.add-email.sql": "ALTER TABLE users ADD COLUMN email text;\n"})
    (tmp_path / "migrations" / "0002.add-email.rollback.sql").write_text("ALTER TABLE users DROP COLUMN email;\n")
    environments = tmp_path / "environments.toml"
    environments.write_text(f"""
[environments.sandbox]
tier = "staging"
credentials = {{ kind = "embedded", database = "{name}" }}
snapshot = {{ kind = "pg_dump" }}
notify = {{ kind = "console" }}
rehearsal = {{ kind = "target_server", start = "both" }}
policy = {{ snapshot_required = false, drift = "block" }}
""")
    yield tmp_path, name, {"RDS_MIGRATIONS_ENVIRONMENTS": str(environments)}
    server = embedded_server()
    if server.port is not None:
        server.drop_database(name)


def test_a_dry_run_and_read_only_commands_never_create_the_embedded_database(sandbox) -> None:
    project, name, env = sandbox
    dry = cli("run", "--env", "sandbox", "--dry-run", cwd=project, env=env)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-3000:]
    assert databases_like(name) == [] and databases_like("rdsm_rehearsal_") == []
    out = dry.stdout + dry.stderr
    assert f"The embedded database {name} does not exist yet" in out
    assert "0001.create-users" in out and "0002.add-email" in out and "DRY RUN" in out

    for command in (("plan",), ("status",), ("drift",), ("resolve",), ("rollback", "--to", "0", "--dry-run"),
                    ("baseline", "--through", "0001", "--dry-run")):
        result = cli(*command, "--env", "sandbox", cwd=project, env=env)
        refused = command[0] == "baseline"  # the empty database lacks what 0001 makes (baseline_replay.py)
        assert result.returncode == (1 if refused else 0), (command, result.stdout[-2000:] + result.stderr[-3000:])
        assert not refused or "table public.users: missing" in result.stderr, result.stderr[-3000:]
        if command[0] in ("plan", "status", "resolve"):  # they name the database the empty one stands in for
            assert "rdsm_rehearsal" not in result.stdout + result.stderr, command
        assert databases_like(name) == [], command
    plan = cli("plan", "--env", "sandbox", "--json", cwd=project, env=env)
    assert '"pending": [\n    "0001.create-users",\n    "0002.add-email"\n  ]' in plan.stdout, plan.stdout

    # A crash or cancel hook of such a run only reads: the database is "not known", still not made.
    from flows.hooks import read_known
    from tasks.engine.environments import load_environments
    from tasks.engine.runs.crash import EndedRun

    environment = load_environments(Path(env["RDS_MIGRATIONS_ENVIRONMENTS"]))["sandbox"]
    known = read_known(environment, EndedRun("cancelled", "", "migrate-staging", "run-1", {"git_sha": "abc1234"}))
    assert databases_like(name) == [] and "does not exist" in " ".join(known.unknown), known

    applied = cli("run", "--env", "sandbox", cwd=project, env=env)  # the run creates it, as before
    assert applied.returncode == 0, applied.stdout[-2000:] + applied.stderr[-3000:]
    assert databases_like(name) == [name]
    status = cli("status", "--env", "sandbox", "--json", cwd=project, env=env)
    assert status.returncode == 0 and '"0002.add-email"' in status.stdout and name in status.stdout
    assert databases_like("rdsm_rehearsal_") == []


def test_a_dry_run_of_an_embedded_fleet_creates_none_of_its_databases_and_one_database_commands_refuse_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"tenant_{uuid.uuid4().hex[:6]}_"
    write_migrations(tmp_path, {"0001.create-users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n",
                                "0001.create-users.rollback.sql": "DROP TABLE users;\n"})
    environments = tmp_path / "environments.toml"
    environments.write_text(f"""
[environments.tenants]
tier = "staging"
credentials = {{ kind = "embedded", database = "{prefix}01" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "console" }}
rehearsal = {{ kind = "target_server" }}
policy = {{ snapshot_required = false }}

[environments.tenants.fleet]
discover = {{ kind = "embedded", databases = 3, name_pattern = "{prefix}{{n:02d}}" }}
concurrency = 2

[environments.tagged]
tier = "staging"
aws = {{ region = "eu-west-1" }}
credentials = {{ kind = "secrets_manager", secret_id = "rds/tenants/migrator" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "console" }}
rehearsal = {{ kind = "target_server" }}

[environments.tagged.fleet.discover]
kind = "rds_instances"
tags = {{ app = "tenants" }}
credentials = "secret_pattern"
secret_pattern = "rds/{{target}}/migrator"
""")
    env = {"RDS_MIGRATIONS_ENVIRONMENTS": str(environments)}
    try:
        dry = cli("run", "--env", "tenants", "--dry-run", cwd=tmp_path, env=env)
        assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-3000:]
        assert databases_like(prefix) == [] and databases_like("rdsm_rehearsal_") == []
        assert dry.stdout.count("dry-run") + dry.stderr.count("dry-run") >= 3, dry.stdout + dry.stderr[-2000:]
        applied = cli("run", "--env", "tenants", cwd=tmp_path, env=env)
        assert applied.returncode == 0, applied.stdout[-2000:] + applied.stderr[-3000:]
        assert databases_like(prefix) == [f"{prefix}01", f"{prefix}02", f"{prefix}03"]
        # A command on one database, given the fleet, refuses it: its credentials are the targets' template.
        for name, names in (("tenants", "--env tenants-"), ("tagged", "--database-url URL")):
            for command in (("status",), ("resolve",), ("plan",), ("rollback", "--to", "0", "--dry-run")):
                refused = cli(*command, "--env", name, cwd=tmp_path, env=env)
                assert refused.returncode == 2, (command, refused.stdout + refused.stderr[-2000:])
                assert f"{name} is a fleet of databases" in refused.stderr and names in refused.stderr, command
                assert "Traceback" not in refused.stderr
        # One target, as the messages name it, is one database to every command (and every flow).
        one = "tenants-" + prefix.replace("_", "-") + "02"
        for command in (("run", "--dry-run"), ("rollback", "--to", "0", "--dry-run"), ("status",)):
            result = cli(*command, "--env", one, cwd=tmp_path, env=env)
            assert result.returncode == 0, (command, result.stdout + result.stderr[-2000:])
        monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(environments))
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError, match="tenants is a fleet of databases"):  # a flow given the fleet's name
            roll_back_environment("tenants", DirectSteps(), to="0", dry_run=True)
        assert roll_back_environment(one, DirectSteps(), to="0", dry_run=True).applied == ("0001.create-users",)
    finally:
        for n in (1, 2, 3):
            embedded_server().drop_database(f"{prefix}{n:02d}")


def test_a_refresh_never_creates_the_embedded_source_it_dumps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source not created yet is an error at the snapshot step: made empty to be dumped, it would have
    replaced staging with nothing (a masking that tolerates empty tables passes)."""
    from tasks.engine.errors import RdsMigrationsError
    from tasks.engine.runs.refresh import refresh_staging
    from tests.helpers import PROJECT

    tag = uuid.uuid4().hex[:8]
    environments = tmp_path / "environments.toml"
    environments.write_text(f"""
[environments.source]
tier = "production"
credentials = {{ kind = "embedded", database = "rdsm_{tag}_prod" }}
snapshot = {{ kind = "pg_dump", directory = "{tmp_path / 'dumps'}" }}
notify = {{ kind = "console" }}

[environments.stage]
tier = "staging"
credentials = {{ kind = "embedded", database = "rdsm_{tag}_staging" }}
snapshot = {{ kind = "pg_dump", directory = "{tmp_path / 'dumps'}" }}
notify = {{ kind = "console" }}
policy = {{ snapshot_required = false }}
refresh = {{ source_environment = "source", use_fresh_snapshot = true }}
""")
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(environments))
    monkeypatch.chdir(PROJECT)
    try:
        with pytest.raises(RdsMigrationsError) as refused:
            refresh_staging("stage", DirectSteps(project_root=PROJECT), git_sha="abc1234", trigger="manual")
        assert f"rdsm_{tag}_prod" in str(refused.value), refused.value
        assert databases_like(f"rdsm_{tag}_") == [f"rdsm_{tag}_staging"]  # the source was never made
        assert not list((tmp_path / "dumps").glob("*"))
    finally:
        server = embedded_server()
        for name in ("prod", "staging") if server.port is not None else ():
            server.drop_database(f"rdsm_{tag}_{name}")
