"""The `rds-migrations` console command, run as a user runs it (a subprocess), against real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tasks.engine.connection import Connection
from tests.conftest import CANARY_PASSWORD
from tests.helpers import cli, url_of, write_migrations

PROJECT = Path(__file__).parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))
    return tmp_path


def test_validate_the_sample_migrations_with_rehearsal_and_plan(project: Path, database: Connection) -> None:
    result = cli("validate", "--migrations", str(PROJECT / "migrations"), "--database-url", url_of(database),
                 cwd=PROJECT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rehearsal on" in result.stdout and ": ok" in result.stdout
    assert "pending 0001.create-users" in result.stdout


def test_validate_fails_with_exit_1_naming_both_duplicate_files(project: Path) -> None:
    write_migrations(project, {"001_init.sql": "SELECT 1;\n", "001_init.js": "x\n"})
    result = cli("validate", cwd=project)
    assert result.returncode == 1
    assert "001_init.js" in result.stdout and "001_init.sql" in result.stdout


def test_markdown_report_for_the_step_summary(project: Path, database: Connection) -> None:
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    result = cli("validate", "--database-url", url_of(database), "--markdown", "summary.md", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "## Migration validation passed" in (project / "summary.md").read_text()


def test_plan_then_run_then_nothing_pending(project: Path, database: Connection) -> None:
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n",
                               "0002.b.sql": "CREATE TABLE b (id bigint PRIMARY KEY);\n"})
    env = {"DATABASE_URL": url_of(database)}
    planned = cli("plan", cwd=project, env=env)
    assert planned.returncode == 0 and "2 pending" in planned.stdout
    ran = cli("run", "--git-sha", "abcdef1", cwd=project, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "0 pending" in cli("plan", cwd=project, env=env).stdout


def test_run_a_failing_migration_exits_1_and_names_it(project: Path, database: Connection) -> None:
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n",
                               "0002.b.sql": "INSERT INTO a VALUES (1), (1);\n"})
    result = cli("run", "--database-url", url_of(database), "--git-sha", "abcdef1", cwd=project)
    assert result.returncode == 1
    assert "0002.b" in result.stderr and "23505" in result.stderr


def test_usage_and_config_errors_exit_2(project: Path) -> None:
    assert cli("run", cwd=project).returncode == 2
    result = cli("plan", "--env", "no-such-env", cwd=project)
    assert result.returncode == 2 and "no environment named 'no-such-env'" in result.stderr
    assert cli("frobnicate", cwd=project).returncode == 2


def test_wrong_password_exits_1_without_the_password(project: Path, database: Connection) -> None:
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    wrong = database.model_copy(update={"password": type(database.password)(CANARY_PASSWORD + "x")})
    result = cli("plan", "--database-url", url_of(wrong), cwd=project)
    assert result.returncode == 1 and "password authentication failed" in result.stderr


def test_aws_out_of_reach_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """An AWS failure the steps do not name themselves (here: the endpoint refuses connections) is one line on
    stderr with exit 1, never a Python traceback."""
    environments = tmp_path / "environments.toml"
    environments.write_text(
        '[environments.aws-down]\ntier = "staging"\n'
        'aws = { region = "eu-west-1", endpoint_url = "http://127.0.0.1:9" }\n'
        'credentials = { kind = "secrets_manager", secret_id = "rds/down" }\n'
        'snapshot = { kind = "none" }\nnotify = { kind = "console" }\n')
    write_migrations(tmp_path, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    result = cli("run", "--env", "aws-down", cwd=tmp_path,
                 env={"RDS_MIGRATIONS_ENVIRONMENTS": str(environments), "AWS_ACCESS_KEY_ID": "testing",
                      "AWS_SECRET_ACCESS_KEY": "testing", "AWS_MAX_ATTEMPTS": "1"})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "127.0.0.1:9" in result.stderr


def test_ordinary_mistakes_with_files_are_one_line_never_a_traceback(project: Path, database: Connection) -> None:
    """A report file in a directory that is not there, RDS_MIGRATIONS_HOME that is a file, a slug too long for
    a file name: one line naming what to change, exit 2."""
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    markdown = cli("validate", "--database-url", url_of(database), "--markdown", str(project / "no" / "x.md"),
                   cwd=project)
    assert (markdown.returncode, markdown.stderr.splitlines()[-1]) == (
        2, f"rds-migrations: --markdown {project / 'no' / 'x.md'}: cannot write it (No such file or directory): "
           "name a file in a directory that exists, e.g. $GITHUB_STEP_SUMMARY")
    (project / "home-file").write_text("")
    home = cli("validate", cwd=project, env={"RDS_MIGRATIONS_HOME": str(project / "home-file")})
    assert home.returncode == 2 and "Traceback" not in home.stderr
    assert f"RDS_MIGRATIONS_HOME ({project / 'home-file'}) is a file, not a directory" in home.stderr
    long = cli("new", "a" + "b" * 300, cwd=project)
    assert long.returncode == 2 and "Traceback" not in long.stderr
    assert "the slug is 301 characters long: at most 120" in long.stderr


def test_plan_and_drift_behind_a_held_lock_say_so_instead_of_waiting(project: Path, database: Connection) -> None:
    """A DDL or a `LOCK TABLE` on a table they read (the history, a user table) no longer holds a read-only
    command for as long as it lasts: a short lock timeout, then who to look for."""
    from tasks.engine.connection import connected

    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    assert cli("run", "--database-url", url_of(database), cwd=project).returncode == 0
    for locked, command in (("_yoyo_migration", "plan"), ("a", "drift")):
        with connected(database, autocommit=False, application_name="test-blocker") as blocker:
            blocker.execute(f"LOCK TABLE {locked} IN ACCESS EXCLUSIVE MODE")
            result = cli(command, "--database-url", url_of(database), cwd=project)
        assert result.returncode == 1, (command, result.stdout + result.stderr)
        assert "SQLSTATE 55P03" in result.stderr and "pg_blocking_pids" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    # Under Prefect the same read is a transient failure: the rehearse-and-plan task tries it again later.
    import psycopg

    from tasks.engine.migrations.catalog import read_catalog
    from tasks.engine.migrations.plan import plan
    from tasks.engine.transient import is_transient

    with connected(database, autocommit=False, application_name="test-blocker") as blocker:
        blocker.execute("LOCK TABLE _yoyo_migration IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(psycopg.OperationalError) as raised:
            plan(database, read_catalog(project / "migrations", project))
    assert raised.value.sqlstate == "55P03" and is_transient(raised.value)


def test_a_bad_migration_parameter_is_named_as_the_command_calls_it(project: Path, database: Connection) -> None:
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    for command, flag, name in (("baseline", "--through", "through"), ("rollback", "--to", "to"),
                                ("run", "--target", "target")):
        result = cli(command, "--database-url", url_of(database), f"{flag}=-1", cwd=project)
        assert result.returncode == 2, (command, result.stderr[-500:])
        assert f"{name} (2 characters) is not a migration id or version number" in result.stderr, result.stderr


def test_a_migration_or_url_that_names_nothing_is_a_usage_error(project: Path, database: Connection) -> None:
    """`--target 9` (of one database or a fleet), `--to 9`, `--through 9` naming no file, and a `--database-url`
    libpq cannot read: the command line's mistakes, exit 2, named as the command line says them, nobody notified,
    and the database left as it was."""
    from tasks.engine.connection import connected

    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    for command, flag in (("run", "--target"), ("rollback", "--to"), ("baseline", "--through"),
                          ("run", "--dry-run --target")):
        result = cli(command, "--database-url", url_of(database), *flag.split(), "9", cwd=project)
        assert result.returncode == 2, (command, result.stdout + result.stderr)
        assert (f"rds-migrations: {flag.split()[-1]} '9' names no migration in migrations/ (a migration id or its "
                "version number; the newest is 0001.a") in result.stderr, result.stderr
        assert "FAILED" not in result.stderr and "Notification sent" not in result.stderr  # nobody else is told
    fleet_target = cli("run", "--database-url", url_of(database), "--database-url",
                       url_of(database.with_database("postgres")), "--target", "9", cwd=project)  # a fleet
    assert fleet_target.returncode == 2 and "--target '9' names no migration" in fleet_target.stderr
    assert "FAILED" not in fleet_target.stderr, fleet_target.stderr  # no fleet message either
    with connected(database) as conn:
        assert conn.execute("SELECT to_regclass('a'), to_regclass('_yoyo_migration')").fetchone() == (None, None)
    pasted = cli("run", "--database-url", url_of(database), "--target", "hunter2-Secret", cwd=project)
    assert pasted.returncode == 2 and "--target (14 characters, not repeated) names no migration" in pasted.stderr
    assert "hunter2" not in pasted.stdout + pasted.stderr  # what is not a version or an id may be a secret
    for url, said in ((url_of(database).replace(f":{database.port}/", ":port/"), "the port must be a number"),
                      (url_of(database) + "?dbname=other", "the URL's query string names dbname")):
        result = cli("plan", "--database-url", url, cwd=project)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith("rds-migrations: --database-url: ") and said in result.stderr, result.stderr
        from_environment = cli("plan", cwd=project, env={"DATABASE_URL": url})
        assert from_environment.returncode == 2 and "rds-migrations: DATABASE_URL: " in from_environment.stderr
    fleet = cli("run", "--database-url", url_of(database), "--database-url", "postgresql://a@b:x/c", cwd=project)
    assert fleet.returncode == 2 and "database URL #2: the port must be a number" in fleet.stderr, fleet.stderr
    twice = cli("run", "--database-url", url_of(database), "--database-url", url_of(database), cwd=project)
    assert twice.returncode == 2 and "database URL #2 names the same database as #1" in twice.stderr, twice.stderr


def test_drift_on_a_database_never_adopted_says_to_adopt_it(project: Path, database: Connection) -> None:
    """Knex migrated it; nothing of ours is there yet: its tables read as added by hand, and the report says
    what to do about that (`baseline --from knex`), as status and plan do."""
    from tasks.engine.connection import connected

    with connected(database) as conn:
        conn.execute("CREATE TABLE knex_migrations (id serial PRIMARY KEY, name varchar(255), batch integer, "
                     "migration_time timestamptz); CREATE TABLE knex_migrations_lock (index serial PRIMARY KEY, "
                     "is_locked integer); CREATE TABLE users (id bigint PRIMARY KEY)")
    write_migrations(project, {"0001.users.sql": "CREATE TABLE users (id bigint PRIMARY KEY);\n"})
    result = cli("drift", "--database-url", url_of(database), cwd=project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "public.users  not made by any migration" in result.stdout
    assert "note: this database has 1 table (users) and no migration history" in result.stdout, result.stdout
    assert "try `rds-migrations baseline --from knex`); until then, what is in it reads as drift" in result.stdout


def test_the_embedded_server_starts_in_a_directory_whose_name_has_a_space_and_a_quote(project: Path) -> None:
    """pg_ctl hands the server's options to a shell: a socket directory under "My Projects/" (or with a quote in
    its name) broke `make demo` with "invalid argument" (or a shell syntax error), and the message did not say
    which log to read."""
    import shutil
    import tempfile

    from tasks.engine.embedded import LocalServer

    home = Path(tempfile.mkdtemp(prefix="rdsm project's home ", dir="/tmp"))  # reachable by the server's user
    home.chmod(0o755)
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    try:
        result = cli("validate", cwd=project, env={"RDS_MIGRATIONS_HOME": str(home)})
        assert result.returncode == 0, result.stdout + result.stderr[-2000:]
        assert "rehearsal on" in result.stdout and (home / "postgres" / "PG_VERSION").exists()
    finally:
        LocalServer(home / "postgres").destroy()
        shutil.rmtree(home, ignore_errors=True)


def test_a_password_a_migration_spells_is_never_shown(project: Path, database: Connection) -> None:
    """`CREATE ROLE … PASSWORD '…'` failing (the role is there already) used to print the password twice, in the
    statement the failure names; it is starred, as a user mapping's and a connection string's are (cli() fails
    on the canary anywhere in the output)."""
    from psycopg import sql

    from tasks.engine.connection import connected
    from tasks.engine.migrations.statements import without_passwords

    role = f"reporting_{database.dbname}"
    with connected(database) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        literal = CANARY_PASSWORD.replace("'", "''")  # as SQL writes it
        write_migrations(project, {"0001.role.sql": f"CREATE ROLE {role} LOGIN PASSWORD '{literal}';\n"})
        result = cli("run", "--database-url", url_of(database), cwd=project)
        assert result.returncode == 1 and "42710" in result.stderr, result.stderr[-2000:]
        assert f"CREATE ROLE {role} LOGIN PASSWORD '**********'" in result.stderr
        assert literal not in result.stdout + result.stderr and "9f31c7" not in result.stdout + result.stderr
    finally:
        with connected(database) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    for spelled in (f"CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '{literal}')",
                    f"CREATE SUBSCRIPTION s CONNECTION 'host=x password={literal}' PUBLICATION p",
                    "ALTER ROLE x PASSWORD 'canary-9f31c7",  # a quote left open: still starred
                    "ALTER ROLE a PASSWORD U&'canary-9f31c7'", "CREATE ROLE a PASSWORD /* new */ 'canary-9f31c7'",
                    "SELECT dblink_connect('postgresql://app:canary-9f31c7@db/app')"):
        assert "9f31c7" not in without_passwords(spelled) and "**********" in without_passwords(spelled), spelled
    from tasks.engine.migrations.split import split  # an excerpt of a file the scanner stopped in, too

    assert "9f31c7" not in (split("CREATE USER MAPPING FOR a SERVER s OPTIONS (password 'canary-9f31c7';\n"
                                  "SELECT 1;\n").refusal or "9f31c7")


def test_hand_edited_inputs_are_one_line_never_a_traceback(project: Path, database: Connection) -> None:
    """An environments file that is not UTF-8, or a directory; a port out of range; a snapshot id that is not
    one: the input's mistakes, exit 2. A yoyo row written by hand with no time: `status` shows it."""
    from tasks.engine.connection import connected

    (project / "latin1.toml").write_bytes("[environments.caf\xe9]\ntier = 'staging'\n".encode("latin-1"))
    for path, said in ((project / "latin1.toml", "not valid UTF-8 (line 1): save it as UTF-8"),
                       (project, "cannot be read as the environments file")):
        result = cli("plan", "--env", "x", cwd=project, env={"RDS_MIGRATIONS_ENVIRONMENTS": str(path)})
        assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr, result.stderr
    port = cli("plan", "--database-url", url_of(database).replace(f":{database.port}/", ":99999/"), cwd=project)
    assert port.returncode == 2 and "the port must be a number from 1 to 65535" in port.stderr, port.stderr
    restore = cli("restore", "--env", "local", "--snapshot-id", "../../etc/passwd", cwd=project)
    assert restore.returncode == 2 and "is not a snapshot identifier" in restore.stderr, restore.stderr[-2000:]
    assert "Traceback" not in restore.stderr

    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint PRIMARY KEY);\n"})
    assert cli("run", "--database-url", url_of(database), cwd=project).returncode == 0
    with connected(database) as conn:
        conn.execute("UPDATE _yoyo_migration SET applied_at_utc = NULL")
    status = cli("status", "--database-url", url_of(database), cwd=project)
    assert status.returncode == 0 and "(no time)" in status.stdout and "0001.a" in status.stdout, status.stderr


def test_a_rehearsal_failure_says_what_failed_not_how_to_resolve_the_scratch_database(
        project: Path, database: Connection) -> None:
    """A non-transactional migration failing halfway in the rehearsal left the scratch database dirty, and the
    run printed how to resolve that (`resolve --env NAME … --mark-applied`) although the target was never
    touched. It says what failed, and that the target was not touched."""
    write_migrations(project, {"0001.half.sql": ("-- transactional: false\nCREATE TABLE half (id bigint);\n"
                                                 "SELECT 1 / 0;\n")})
    result = cli("run", "--database-url", url_of(database), cwd=project)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "rehearsal failed: migration 0001.half failed (SQLSTATE 22012)" in result.stderr, result.stderr[-2000:]
    assert "--mark-applied" not in result.stderr and "marked dirty" not in result.stderr, result.stderr[-3000:]
    assert "the target was not touched" in result.stderr


def test_readmes_command_list_names_every_option_each_command_has_and_no_other() -> None:
    """README's "Command line" block is where a newcomer looks: it left out options the commands have
    (validate --env, resolve --database-url, rollback --git-sha, setup-prefect --fleet-limit...)."""
    import argparse
    import re

    from flows.cli import _parser

    subcommands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    has = {name: {s for a in sub._actions if a.help != argparse.SUPPRESS for s in a.option_strings} - {"-h", "--help"}
           for name, sub in subcommands.items()}
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Command line"):]
    block = block[block.index("```bash") + len("```bash"):]
    listed: dict[str, set[str]] = {}
    command = None
    for line in block[:block.index("```")].splitlines():
        started = re.match(r"uv run rds-migrations (\S+)", line)
        command = started.group(1) if started else command  # an indented line continues the command above
        listed.setdefault(str(command), set()).update(re.findall(r"--[a-z][a-z-]*", line.split("  #")[0]))
    assert {name: sorted(has[name] ^ listed.get(name, set())) for name in has
            if has[name] != listed.get(name, set())} == {}


def test_run_to_a_target_says_what_is_pending_after_it_on_the_first_run_and_every_run_after(
        project: Path, database: Connection) -> None:
    """The first `run --target 0001` said `pending: 0002.b, 0003.c`; the same command again said `pending: none`
    (its plan counts only up to the target) while `status` said 2 pending. Both say the same now, as does a dry
    run, with what the target holds back named as such."""
    write_migrations(project, {"0001.a.sql": "CREATE TABLE a (id bigint);\n",
                               "0002.b.sql": "-- depends: 0001.a\nALTER TABLE a ADD COLUMN b text;\n",
                               "0003.c.sql": "-- depends: 0002.b\nALTER TABLE a ADD COLUMN c text;\n"})
    url = ("--database-url", url_of(database))
    said = "  pending:    0002.b, 0003.c (after the target 0001)"
    first = cli("run", *url, "--target", "0001", cwd=project)
    assert first.returncode == 0 and said in first.stderr.splitlines(), first.stderr[-3000:]
    again = cli("run", *url, "--target", "0001", cwd=project)
    assert again.returncode == 0 and "NOTHING TO DO" in again.stderr, again.stderr[-3000:]
    assert said in again.stderr.splitlines() and "pending:    none" not in again.stderr
    document = json.loads(cli("run", *url, "--target", "0001", "--json", cwd=project).stdout)
    assert (document["pending"], document["beyond_target"]) == (["0002.b", "0003.c"], ["0002.b", "0003.c"])
    dry = cli("run", *url, "--target", "0002", "--dry-run", cwd=project)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "  would apply: 0002.b; still pending: 0003.c (after the target 0002)" in dry.stderr.splitlines()
    assert "1 applied, 2 pending" in cli("status", *url, cwd=project).stdout


def test_a_usage_error_under_json_still_prints_one_json_document_and_never_a_urls_password(
        capsys: pytest.CaptureFixture[str]) -> None:
    """argparse refuses before any command runs (exit 2): a script reading stdout still gets its document, and a
    URL pasted where argparse quotes what it refuses is repeated without its password, on stderr too."""
    from flows.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["baseline", "--database-url", "postgresql://app@127.0.0.1:1/app", "--json"])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2 and json.loads(out) == {
        "schema_version": 1, "command": "baseline", "exit_code": 2,
        "error": "rds-migrations baseline: one of the arguments --through --from is required"}, out + err
    assert "one of the arguments --through --from is required" in err

    password = quote(CANARY_PASSWORD, safe="")
    with pytest.raises(SystemExit):
        main(["status", f"postgresql://app:{password}@127.0.0.1:1/app", "--json"])
    out, err = capsys.readouterr()
    assert json.loads(out)["error"] == "rds-migrations: unrecognized arguments: postgresql://app:**********@127.0.0.1:1/app"
    assert CANARY_PASSWORD not in out + err and password not in out + err and "unrecognized arguments" in err

    with pytest.raises(SystemExit) as stopped:  # without --json: stderr only, as argparse does
        main(["baseline", "--database-url", "postgresql://app@127.0.0.1:1/app"])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2 and out == "" and "--through --from is required" in err
