"""Fleets without Prefect: the configuration, the waves and stop rules, an embedded fleet of 20 databases with
one that fails (the other 19 migrated, the failed one left as before its failing migration), a canary that stops
the rest, and `rds-migrations run` over plain PostgreSQL URLs (--json; the password never in any output)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.engine.connection import connected
from tasks.engine.embedded import embedded_home, embedded_server
from tasks.engine.environments import Environment
from tasks.engine.fleet.config import Fleet
from tasks.engine.fleet.report import FleetFailed, FleetReport, TargetResult
from tasks.engine.fleet.targets import fleet_targets, target_environment_name
from tasks.engine.fleet.waves import StopRule, after_wave, plan_waves
from tasks.engine.runs.fleet import DirectFleetSteps, migrate_fleet
from tasks.engine.runs.steps import DirectSteps
from tests.conftest import CANARY_PASSWORD
from tests.helpers import PROJECT, a_bug_when_applying, applied_ids, cli, url_of, write_migrations

FIRST = {"0001.create-notes.sql": "CREATE TABLE notes (id bigint PRIMARY KEY, body text);\n"}
# 0002 creates `widgets`: the target that already has one (made by hand) fails there, after `gadgets` was made in
# the same transaction, which must be rolled back with it.
NEXT = {
    **FIRST,
    "0002.create-widgets.sql": "CREATE TABLE gadgets (id bigint PRIMARY KEY);\n"
    "CREATE TABLE widgets (id bigint PRIMARY KEY, name text);\n",
    "0003.create-tags.sql": "CREATE TABLE tags (id bigint PRIMARY KEY);\n",
}


def embedded_fleet(prefix: str, databases: int, **policy: object) -> Environment:
    return Environment.model_validate(
        {
            "name": "fleet-test",
            "tier": "staging",
            "credentials": {"kind": "embedded", "database": "unused"},
            "snapshot": {"kind": "pg_dump"},
            "notify": {"kind": "console"},
            "fleet": {
                "discover": {"kind": "embedded", "databases": databases, "name_pattern": prefix + "_{n:02d}"},
                **policy,
            },
        }
    )


def run(environment: Environment, project: Path, log: logging.Logger | None = None) -> FleetReport:
    return migrate_fleet(environment, DirectFleetSteps(DirectSteps(log=log)), git_sha="abc1234", project_root=project)


def tables_of(database: str) -> set[str]:
    with connected(embedded_server().connection(database)) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


# ---- configuration and the pure parts --------------------------------------------------------------------------


def test_a_fleet_names_its_targets_one_way_and_each_target_one_source() -> None:
    with pytest.raises(ValidationError, match="either targets"):
        Fleet()
    with pytest.raises(ValidationError, match="either targets"):
        Fleet(targets=[{"name": "a", "database": "a"}], discover={"kind": "embedded", "databases": 2})
    with pytest.raises(ValidationError, match="exactly one of"):
        Fleet(targets=[{"name": "a", "database": "a", "url_env": "A_URL"}])
    with pytest.raises(ValidationError, match="given twice"):
        Fleet(targets=[{"name": "a", "database": "a"}, {"name": "a", "database": "b"}])
    with pytest.raises(ValidationError, match="target"):
        Fleet(discover={"kind": "rds_instances", "tags": {"app": "x"}, "secret_pattern": "rds/{name}/migrator"})
    with pytest.raises(ValidationError, match="distinct"):
        Fleet(discover={"kind": "embedded", "databases": 3, "name_pattern": "same"})


def test_each_target_is_a_single_target_copy_with_its_own_name_credentials_and_snapshot() -> None:
    environment = Environment.model_validate(
        {
            "name": "tenants",
            "tier": "staging",
            "aws": {"region": "eu-west-1"},
            "credentials": {"kind": "secrets_manager", "secret_id": "rds/template"},
            "snapshot": {"kind": "rds_instance", "instance_id": "template"},
            "notify": {"kind": "console"},
            "fleet": {
                "targets": [
                    {"name": "tenant-a", "secret_id": "rds/tenant-a/migrator"},
                    {"name": "tenant-b", "url_env": "TENANT_B_URL"},
                ]
            },
        }
    )
    a, b = fleet_targets(environment)
    assert (a.environment.name, a.environment.credentials.secret_id) == ("tenants-tenant-a", "rds/tenant-a/migrator")
    assert a.environment.snapshot.instance_id == "tenant-a" and b.environment.snapshot.instance_id == "tenant-b"
    assert b.environment.credentials.variable == "TENANT_B_URL" and a.environment.fleet is None
    long = target_environment_name("tenants", "a-very-long-tenant-identifier-number-00001")
    other = target_environment_name("tenants", "a-very-long-tenant-identifier-number-00002")
    assert len(long) <= 34 and long != other


def test_waves_put_the_canary_first_and_a_failed_canary_stops_the_rest() -> None:
    waves = plan_waves(list("abcdef"), canary=2)
    assert [(w.name, w.targets) for w in waves] == [("canary", ("a", "b")), ("rest", ("c", "d", "e", "f"))]
    assert [w.name for w in plan_waves(list("ab"), canary=5)] == ["rest"]
    good, bad = TargetResult("a", "succeeded"), TargetResult("b", "failed")
    assert after_wave(waves[0], [good, TargetResult("b", "nothing-to-do")]) is None
    assert "canary" in after_wave(waves[0], [good, bad]) and after_wave(waves[1], [bad]) is None
    rule = StopRule(2)
    rule.record(bad)
    assert rule.reason is None
    rule.record(bad)
    assert "stop_after_failures is 2" in rule.reason
    assert StopRule(None).reason is None


# ---- an embedded fleet -------------------------------------------------------------------------------------------


def test_a_fleet_of_20_migrates_19_and_names_the_one_that_failed_left_as_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"f20_{uuid.uuid4().hex[:6]}"
    environment = embedded_fleet(prefix, 20, concurrency=6)
    write_migrations(tmp_path, FIRST)
    first = run(environment, tmp_path)
    assert first.counts == {"succeeded": 20}
    broken = f"{prefix}_07"
    with connected(embedded_server().connection(broken)) as conn:  # made by hand, with a row someone needs
        conn.execute("CREATE TABLE widgets (id bigint PRIMARY KEY, colour text)")
        conn.execute("INSERT INTO widgets VALUES (1, 'blue')")
    write_migrations(tmp_path, NEXT)
    caplog.clear()  # the first run's summary too is captured when an earlier test left the logger at INFO

    with caplog.at_level(logging.INFO, logger="rds_migrations"), pytest.raises(FleetFailed) as failed:
        run(environment, tmp_path, logging.getLogger("rds_migrations"))

    report = failed.value.report
    assert report.counts == {"succeeded": 19, "failed": 1} and report.outcome == "failed"
    assert [r.target for r in report.failed] == [broken] and broken in str(failed.value)
    failure = report.failed[0]
    assert failure.failed_step == "migrate" and failure.failed_migration == "0002.create-widgets"
    assert failure.applied == () and failure.pending == ("0002.create-widgets", "0003.create-tags")
    assert failure.snapshot is not None and "42P07" in failure.error  # duplicate_table
    # Left as before its failing migration: 0001 only, gadgets rolled back, the hand-made table and row intact.
    assert applied_ids(embedded_server().connection(broken)) == ["0001.create-notes"]
    assert {"notes", "widgets"} <= tables_of(broken) and not {"gadgets", "tags"} & tables_of(broken)
    with connected(embedded_server().connection(broken)) as conn:
        assert conn.execute("SELECT id, colour FROM widgets").fetchall() == [(1, "blue")]
    for n in (1, 6, 8, 20):
        assert applied_ids(embedded_server().connection(f"{prefix}_{n:02d}")) == sorted(name[:-4] for name in NEXT)
    # ONE summary for the fleet, naming the failed target.
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Fleet migration")]
    assert len(summaries) == 1
    assert "FAILED" in summaries[0] and "19 succeeded, 1 failed" in summaries[0] and broken in summaries[0]


def test_targets_already_at_head_cost_a_plan_and_nothing_else(tmp_path: Path) -> None:
    prefix = f"fh_{uuid.uuid4().hex[:6]}"
    environment = embedded_fleet(prefix, 4, concurrency=2)
    write_migrations(tmp_path, FIRST)
    run(environment, tmp_path)
    dumps = embedded_home() / "snapshots"
    taken = sorted(dumps.glob(f"rdsm-fleet-test-{prefix.replace('_', '-')}-*.dump"))
    assert len(taken) == 4  # one per target, each under its own name

    again = run(environment, tmp_path)

    assert again.outcome == "nothing-to-do" and all(r.snapshot is None for r in again.results)
    assert sorted(dumps.glob(f"rdsm-fleet-test-{prefix.replace('_', '-')}-*.dump")) == taken


def test_a_failed_canary_stops_the_rest_and_stop_after_failures_stops_early(tmp_path: Path) -> None:
    prefix = f"fc_{uuid.uuid4().hex[:6]}"
    environment = embedded_fleet(prefix, 4, canary=1, concurrency=2)
    write_migrations(tmp_path, FIRST)
    run(environment, tmp_path)
    for n in (1, 3, 4):
        with connected(embedded_server().connection(f"{prefix}_{n:02d}")) as conn:
            conn.execute("CREATE TABLE widgets (id bigint PRIMARY KEY)")
    write_migrations(tmp_path, NEXT)

    with pytest.raises(FleetFailed) as failed:
        run(environment, tmp_path)
    report = failed.value.report
    assert [(r.target[-2:], r.outcome) for r in report.results] == [
        ("01", "failed"),
        ("02", "skipped"),
        ("03", "skipped"),
        ("04", "skipped"),
    ]
    assert "canary" in report.stopped and "canary" in report.results[1].error
    assert applied_ids(embedded_server().connection(f"{prefix}_02")) == ["0001.create-notes"]  # never started

    serial = embedded_fleet(prefix, 4, concurrency=1, stop_after_failures=1)
    with pytest.raises(FleetFailed) as failed:
        run(serial, tmp_path)
    assert [r.outcome for r in failed.value.report.results] == ["failed", "skipped", "skipped", "skipped"]
    assert "stop_after_failures is 1" in failed.value.report.stopped


def test_a_fleet_without_stop_rules_tries_every_target(tmp_path: Path) -> None:
    prefix = f"fa_{uuid.uuid4().hex[:6]}"
    environment = embedded_fleet(prefix, 3, concurrency=1)
    write_migrations(tmp_path, {"0001.bad.sql": "CREATE TABLE t (id bigint PRIMARY KEY);\n"})
    run(environment, tmp_path)
    with connected(embedded_server().connection(f"{prefix}_01")) as conn:
        conn.execute("CREATE TABLE u (id bigint)")
    write_migrations(tmp_path, {"0002.u.sql": "CREATE TABLE u (id bigint PRIMARY KEY);\n"})
    with pytest.raises(FleetFailed) as failed:
        run(environment, tmp_path)
    assert [r.outcome for r in failed.value.report.results] == ["failed", "succeeded", "succeeded"]


# ---- the command line over plain PostgreSQL URLs ------------------------------------------------------------------

WIRED = (
    "--database-urls"
    in subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--help"], cwd=PROJECT, capture_output=True, text=True
    ).stdout
)


@pytest.mark.skipif(not WIRED, reason="`run` has no fleet options yet (flows/cli.py wiring)")
def test_run_over_several_urls_prints_one_json_document_and_never_the_password(tmp_path: Path, pg_server) -> None:
    write_migrations(tmp_path, NEXT)
    databases = [pg_server.ensure_database(f"u_{uuid.uuid4().hex[:8]}") for _ in range(3)]
    with connected(databases[1]) as conn:
        conn.execute("CREATE TABLE notes (id bigint)")  # no history: adopt it first, the plan says
    urls = [url_of(d) for d in databases]

    done = cli(
        "run",
        "--database-url",
        urls[0],
        "--database-url",
        urls[1],
        "--database-url",
        urls[2],
        "--concurrency",
        "2",
        "--git-sha",
        "abc1234",
        "--json",
        cwd=tmp_path,
    )

    assert done.returncode == 1, done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert document["outcome"] == "failed" and document["counts"] == {"succeeded": 2, "failed": 1}
    by_name = {t["target"]: t for t in document["targets"]}
    assert set(by_name) == {d.dbname for d in databases}
    assert by_name[databases[0].dbname]["applied"] == sorted(name[:-4] for name in NEXT)
    assert by_name[databases[1].dbname]["outcome"] == "failed" and by_name[databases[1].dbname]["error"]
    assert by_name[databases[1].dbname]["pending"] == sorted(name[:-4] for name in NEXT)  # refused at its plan
    assert set(document["targets"][0]) >= {"target", "outcome", "applied", "pending", "error"}

    listed = tmp_path / "urls.txt"
    listed.write_text("# tenants\n" + "\n".join([urls[0], urls[2]]) + "\n")
    again = cli("run", "--database-urls", str(listed), "--git-sha", "abc1234", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing-to-do" in again.stdout and CANARY_PASSWORD not in again.stdout + again.stderr

    # Without --json: why the failed target failed, on one line (not "validation failed:" alone), and where
    # to look without Prefect (the table printed above, not a flow run's artifacts).
    broken = cli("run", "--database-url", urls[1], "--database-url", urls[0], "--git-sha", "abc1234", cwd=tmp_path)
    assert broken.returncode == 1
    out = broken.stdout + broken.stderr
    assert f"First:     {databases[1].dbname}: validation failed: - this database has 1 table (notes)" in out, out
    assert "Look at:   the per-target table below" in out and "artifacts" not in out



def test_each_targets_log_lines_name_it(tmp_path: Path, pg_server) -> None:
    """Targets run side by side: a line such as "Applying 0001... (1 of 2)" says whose it is."""
    write_migrations(tmp_path, NEXT)
    databases = [pg_server.ensure_database(f"n_{uuid.uuid4().hex[:8]}") for _ in range(2)]
    urls = [arg for d in databases for arg in ("--database-url", url_of(d))]
    done = cli("run", *urls, "--concurrency", "2", "--git-sha", "abc1234", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    names = tuple(f"{d.dbname}: " for d in databases)
    lines = [line.split(" | ", 2)[2] for line in done.stderr.splitlines() if line.count(" | ") >= 2]
    lines = lines[next(i for i, line in enumerate(lines) if "Plan:" in line):]  # after the fleet's one rehearsal
    per_target = [line for line in lines if any(word in line for word in ("Applying ", "Applied ", "Plan:"))]
    assert len(per_target) >= 2 * len(databases), done.stderr[-3000:]
    assert all(line.startswith(names) for line in per_target), per_target
    for name in names:  # each target's own lines, not one target's twice
        assert any(line.startswith(name + "Applied ") for line in per_target), per_target

# ---- names a person can type back, and what is not known ---------------------------------------------------------

NAMED_FLEET = """
[environments.fleet-names]
tier = "staging"
credentials = {{ kind = "embedded", database = "unused" }}
snapshot = {{ kind = "pg_dump" }}
notify = {{ kind = "console" }}
[environments.fleet-names.fleet]
discover = {{ kind = "embedded", databases = 3, name_pattern = "{prefix}_{{n:02d}}" }}
canary = 1
concurrency = 1
"""


def test_a_failed_canarys_summary_names_targets_as_commands_take_them_and_unstarted_ones_pending_as_unknown(
    tmp_path: Path,
) -> None:
    """The summary said `Failed: tenant_03` where commands take `--env <fleet>-tenant-03`, pointed at "the
    per-target table above" printed below it, and the table gave targets a failed canary left unstarted
    `pending 0`; `status --env <fleet>-tenant_03` was refused with no hint of the name it meant."""
    prefix = f"fn_{uuid.uuid4().hex[:6]}"
    environments = tmp_path / "environments.toml"
    environments.write_text(NAMED_FLEET.format(prefix=prefix))
    env = {"RDS_MIGRATIONS_ENVIRONMENTS": str(environments)}
    write_migrations(tmp_path, FIRST)
    assert cli("run", "--env", "fleet-names", "--git-sha", "abc1234", cwd=tmp_path, env=env).returncode == 0
    canary = f"{prefix}_01"
    with connected(embedded_server().connection(canary)) as conn:
        conn.execute("CREATE TABLE widgets (id bigint PRIMARY KEY)")
    write_migrations(tmp_path, NEXT)

    merged = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--env", "fleet-names", "--git-sha", "abc1234"],
                            cwd=tmp_path, env={**os.environ, **env, "PYTHONPATH": str(PROJECT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)

    out = merged.stdout
    assert merged.returncode == 1, out[-3000:]
    typed = target_environment_name("fleet-names", canary)
    assert typed == f"fleet-names-{prefix.replace('_', '-')}-01"
    assert f"Failed:    {canary} (--env {typed})" in out and f"First:     {canary} (--env {typed}): " in out
    assert f"failed: {canary} (--env {typed})" in out  # the one-line error the command ends with
    assert "Look at:   the per-target table below" in out
    table = out[out.index("target  "):]
    assert out.index("Look at:") < out.index("target  ")  # the table does come after the summary
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:] if line.startswith(prefix)}
    assert rows[canary][1:4] == ["failed", "0", "2"]
    for n in (2, 3):  # never started: nothing applied, what is pending there not read
        assert rows[f"{prefix}_{n:02d}"][1:4] == ["skipped", "0", "unknown"]

    refused = cli("status", "--env", f"fleet-names-{canary}", cwd=tmp_path, env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(f"did you mean {typed}?"), refused.stderr
    status = cli("status", "--env", typed, "--json", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout)["pending"] == ["0002.create-widgets", "0003.create-tags"]


def test_a_target_that_did_not_start_has_no_pending_count_in_the_table_artifact_or_json() -> None:
    """A skipped or interrupted target's pending was never read: `null` in JSON, "not known" in the table
    artifact (they said [] and 0, as if nothing were pending there)."""
    report = FleetReport("fleet", "staging", "abc1234", "cli", (
        TargetResult("a", "failed", pending=("0002.x",)), TargetResult("b", "skipped", error="the canary failed"),
        TargetResult("c", "interrupted", applied=("0001.y",))), named_as={"a": "fleet-a"})
    assert [t["pending"] for t in report.to_json()["targets"]] == [["0002.x"], None, None]
    assert [row["pending"] for row in report.rows()] == [1, "not known", "not known"]
    assert "Failed:    a (--env fleet-a)" in report.console_text()
    url_fleet = report.with_(named_as={"a": "database-url-a"})  # named by its URL: no --env to offer
    assert "Failed:    a\n" in url_fleet.console_text()


def test_a_target_that_failed_before_its_plan_has_pending_not_known(tmp_path: Path, pg_server) -> None:
    """A target whose database cannot be reached fails before its plan: what is pending there was never read, so
    it is null in JSON and "unknown" in the table, as for a target that did not start (it said [] and 0)."""
    write_migrations(tmp_path, FIRST)
    reached = pg_server.ensure_database(f"u_{uuid.uuid4().hex[:8]}")
    missing = f"u_{uuid.uuid4().hex[:8]}"  # no such database on the server
    urls = [url_of(reached), url_of(reached).rsplit("/", 1)[0] + "/" + missing]
    flags = [flag for url in urls for flag in ("--database-url", url)]

    as_json = cli("run", *flags, "--git-sha", "abc1234", "--json", cwd=tmp_path)
    as_table = cli("run", *flags, "--git-sha", "abc1234", cwd=tmp_path)

    assert as_json.returncode == 1, as_json.stderr[-2000:]
    by_name = {t["target"]: t for t in json.loads(as_json.stdout)["targets"]}
    assert by_name[missing]["outcome"] == "failed" and by_name[missing]["failed_step"] == "plan", by_name[missing]
    assert by_name[missing]["pending"] is None
    assert by_name[reached.dbname]["pending"] == [] and by_name[reached.dbname]["applied"] == ["0001.create-notes"]
    row = next(line.split() for line in as_table.stdout.splitlines() if line.startswith(missing))
    assert row[1:4] == ["failed", "0", "unknown"], as_table.stdout[-2000:]
    assert CANARY_PASSWORD not in as_json.stdout + as_json.stderr + as_table.stdout + as_table.stderr


SHARDS = """
[environments.shards]
tier = "staging"
credentials = { kind = "url_env", variable = "SHARD_A_URL" }
snapshot = { kind = "none" }
rehearsal = { kind = "none" }
notify = { kind = "console" }
policy = { snapshot_required = false, rehearsal_required = false }
[environments.shards.fleet]
targets = [{ name = "shard_a", url_env = "SHARD_A_URL" }]
"""


def test_a_target_failing_while_migrating_but_not_by_a_migration_says_what_its_history_holds(
        tmp_path: Path, pg_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A target's migrate step ends in an error that is not a migration's failure (a bug at 0003, injected: see
    a_bug_when_applying): what the target applied is read from its history, 0001 and 0002, and 0003 is still
    pending. It said none was applied and all three were pending."""
    from flows.cli import main

    (tmp_path / "environments.toml").write_text(SHARDS, encoding="utf-8")
    write_migrations(tmp_path, {"0001.t.sql": "CREATE TABLE t (s text);\n", "0002.u.sql": "CREATE TABLE u (s text);\n",
                                "0003.w.sql": "-- transactional: false\nCREATE TABLE w (s text);\n"})
    shard = pg_server.ensure_database(f"s_{uuid.uuid4().hex[:8]}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHARD_A_URL", url_of(shard))
    monkeypatch.setenv("RDS_MIGRATIONS_ENVIRONMENTS", str(tmp_path / "environments.toml"))
    a_bug_when_applying(monkeypatch, "0003.w")

    code = main(["run", "--env", "shards", "--git-sha", "abc1234", "--json"])

    out, err = capsys.readouterr()
    assert code == 1 and applied_ids(shard) == ["0001.t", "0002.u"], err[-3000:]
    [target] = json.loads(out)["targets"]
    assert (target["outcome"], target["failed_step"]) == ("failed", "migrate"), target
    assert target["applied"] == ["0001.t", "0002.u"] and target["pending"] == ["0003.w"], target
