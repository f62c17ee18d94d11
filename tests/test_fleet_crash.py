"""A fleet run killed (kill -9) while a target migrates: its crash hook still sends the fleet's ONE message,
naming each target and how far it got, from Prefect's task runs and each target's database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.engine.connection import connected
from tasks.engine.environments import Environment
from tasks.engine.fleet.crash import TargetSeen, fleet_crash_report, target_after
from tasks.engine.fleet.targets import fleet_targets
from tasks.engine.migrations.dirty import DirtyMigration
from tasks.engine.runs.crash import EndedRun, KnownState
from tests.conftest import CANARY_PASSWORD, SlackSink
from tests.helpers import PROJECT, applied_ids, url_of, write_migrations
from tests.test_fleet_prefect import project  # noqa: F401 - the fixture: environments file, Slack block, cwd

# Sleeps on one target's database only (the rehearsal's and the other targets' go straight on).
SLOW = ("CREATE TABLE slow (id bigint);\n"
        "DO $$ BEGIN IF current_database() = '{database}' THEN PERFORM pg_sleep(60); END IF; END $$;\n")
FLEET_RUN = """
import sys
from flows.fleet import migrate_fleet_flow
migrate_fleet_flow(environment="database-url", url_variables=sys.argv[1:], git_sha="abc1234", concurrency=1)
"""


def test_a_fleet_run_killed_mid_target_is_reported_target_by_target(
    project: Path, pg_server, slack_sink: SlackSink, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Crashed

    from flows.fleet import migrate_fleet_flow
    from flows.fleet_hooks import report_fleet_cancellation, report_fleet_crash

    assert migrate_fleet_flow.on_crashed_hooks == [report_fleet_crash]
    assert migrate_fleet_flow.on_cancellation_hooks == [report_fleet_cancellation]
    done, slow, unstarted = (pg_server.ensure_database(f"k_{uuid.uuid4().hex[:8]}") for _ in range(3))
    variables = []
    for n, database in enumerate((done, slow, unstarted), 1):
        monkeypatch.setenv(f"FLEET_CRASH_URL_{n}", url_of(database))
        variables.append(f"FLEET_CRASH_URL_{n}")
    write_migrations(project, {"0001.create-notes.sql": "CREATE TABLE notes (id bigint);\n",
                               "0002.slow.sql": SLOW.format(database=slow.dbname)})

    log = project / "fleet-run.log"
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PREFECT_API_URL": PREFECT_API_URL.value()}
    with log.open("w") as errors, connected(slow, application_name="test-watcher") as watcher:
        process = subprocess.Popen([sys.executable, "-c", FLEET_RUN, *variables], cwd=project, env=env,
                                   stdout=subprocess.DEVNULL, stderr=errors)
        deadline, sleeping = time.monotonic() + 120, None
        while sleeping is None:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            sleeping = watcher.execute("SELECT application_name FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                                       "AND datname = current_database()").fetchone()
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        watcher.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        sleeping)  # the server ends a dead client's session only when it next talks to it
    flow_run_id = sleeping[0].removeprefix("rds-migrations run ")

    with get_client(sync_client=True) as client:  # what the worker does for a run whose process died
        client.set_flow_run_state(flow_run_id, Crashed(message="Process exited with status code: -9"), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    report_fleet_crash(migrate_fleet_flow, flow_run, flow_run.state)

    [message] = slack_sink.texts()
    assert "Fleet migration FAILED at step targets (run crashed)" in message
    assert "3 targets: 1 succeeded, 1 interrupted, 1 skipped" in message
    assert "status code: -9" in message
    assert f"{done.dbname}: succeeded; applied by this run: 0001.create-notes, 0002.slow" in message
    assert f"{slow.dbname}: interrupted; applied by this run: 0001.create-notes. The run stopped while this target " \
           "was being migrated" in message and "the server rolled back" in message
    assert f"{unstarted.dbname}: skipped; applied by this run: nothing. It had not started" in message
    assert "the targets listed above" in message and "fleet-targets-" not in message  # no table was published
    assert CANARY_PASSWORD not in message and "postgresql://" not in message
    assert applied_ids(done) == ["0001.create-notes", "0002.slow"]
    assert applied_ids(slow) == ["0001.create-notes"] and applied_ids(unstarted) == []


TENANTS = Environment.model_validate({
    "name": "tenants", "tier": "staging", "credentials": {"kind": "embedded", "database": "t_01"},
    "snapshot": {"kind": "none"}, "notify": {"kind": "console"},
    "fleet": {"discover": {"kind": "embedded", "databases": 7, "name_pattern": "t_{n:02d}"}}})


def test_a_target_after_a_stopped_fleet_run() -> None:
    """Each way a target can be found: its own flow run still going (distributed), dirty, failed, completed. What
    a row says to do names the target's own environment, never the fleet (whose credentials are a template's)."""
    a, b, c, d, e, f, g = fleet_targets(TENANTS)
    nothing = KnownState()
    going = target_after(a, TargetSeen("RUNNING", flow_run_id="f-1", flow_run_state="RUNNING"), nothing, "f-1")
    assert going.outcome == "interrupted" and "Its own flow run f-1 is still running" in (going.error or "")
    assert "rolled back" not in (going.error or "")  # that run is not over: nothing was rolled back yet
    mark = DirtyMigration("0002.nt", "running", 2, 3, "c", None, None, "run-1", None, None)
    dirty = target_after(b, TargetSeen("RUNNING"), KnownState(("0001.a",), (mark,)), "run-1")
    assert (dirty.target, dirty.outcome, dirty.failed_migration, dirty.applied) == ("t_02", "failed", "0002.nt",
                                                                                   ("0001.a",))
    assert "rds-migrations resolve --env tenants-t-02 0002.nt" in (dirty.error or "")
    tagged = target_after(replace(b, found_by_tag=True), TargetSeen("RUNNING"), KnownState((), (mark,)), "run-1")
    assert "rds-migrations resolve --database-url URL-OF-t_02 0002.nt" in (tagged.error or "")  # no --env finds it
    failed = target_after(c, TargetSeen("FAILED", "target c failed at migrate: boom"), nothing, "run-1")
    assert failed.outcome == "failed" and failed.error == "target c failed at migrate: boom"
    assert target_after(d, TargetSeen("COMPLETED"), nothing, "run-1").outcome == "nothing-to-do"
    assert target_after(d, TargetSeen("COMPLETED"), nothing, "run-1", dry_run=True).outcome == "dry-run"
    # The fleet run died while it waited for a target's own flow run, which ended by itself since.
    later = TargetSeen("RUNNING", flow_run_id="f-2", flow_run_state="FAILED", flow_run_message="boom at migrate")
    assert (target_after(f, later, nothing, "f-2").outcome,
            target_after(f, later, nothing, "f-2").error) == ("failed", "boom at migrate")
    done = replace(later, flow_run_state="COMPLETED", flow_run_message="")
    assert target_after(g, done, KnownState(("0001.a",)), "f-2").outcome == "succeeded"
    unread = target_after(e, TargetSeen(), KnownState(unknown=("what e's database says (x)",)), "run-1")
    assert unread.outcome == "skipped" and "Not known: what e's database says (x)." in (unread.error or "")

def test_a_stopped_fleet_runs_report_names_failed_and_interrupted_targets_as_commands_take_them() -> None:
    """As the fleet's own summary does (row 199): `t_02 (--env tenants-t-02)`, the environment a command on
    that target alone takes, never the bare target name (`--env t_02` finds nothing)."""
    a, b, c = fleet_targets(TENANTS)[:3]
    results = (target_after(a, TargetSeen("COMPLETED"), KnownState(("0001.a",)), "run-1"),
               target_after(b, TargetSeen("FAILED", "target t_02 failed at migrate: boom"), KnownState(), "run-1"),
               target_after(c, TargetSeen("RUNNING"), KnownState(("0001.a",)), "run-1"))
    ended = EndedRun(ending="crashed", reason="Process exited with status code: -9", flow_name="migrate-fleet",
                     flow_run_id="run-1", parameters={"environment": "tenants", "git_sha": "abc1234"}, step="targets")

    text = fleet_crash_report(ended, "staging", results, named_as={t.name: t.named_as for t in (a, b, c)}
                              ).console_text()

    assert "Failed:    t_02 (--env tenants-t-02)" in text, text
    assert "Interrupted: t_03 (--env tenants-t-03)" in text
    assert "- t_02 (--env tenants-t-02): failed; applied by this run: nothing. target t_02 failed" in text
    assert "- t_03 (--env tenants-t-03): interrupted; applied by this run: 0001.a." in text
    assert "- t_01: succeeded; applied by this run: 0001.a" in text


SHARDS = """
[environments.shards]
tier = "staging"
credentials = {{ kind = "url_env", variable = "SHARD_A_URL" }}
snapshot = {{ kind = "none" }}
notify = {{ kind = "slack", webhook_block = "slack-fleet" }}
[environments.shards.fleet]
targets = [{{ name = "shard_a", url_env = "SHARD_A_URL" }}, {{ name = "shard_b", url_env = "SHARD_B_URL" }}]
"""


def test_the_fleet_crash_hook_names_an_interrupted_target_as_a_command_takes_it(
    project: Path, pg_server, slack_sink: SlackSink, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A fleet of targets named in the file: the crash hook's message names the one that was running (its task
    run, in Prefect) with the environment a command on it alone takes, `shard_b (--env shards-shard-b)`, as the
    fleet's own summary does; the bare `shard_b` would send `--env shard_b` nowhere."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    from flows.fleet import migrate_fleet_flow
    from flows.fleet_hooks import report_fleet_crash
    from tasks.fleet import fleet_target

    environments = project / "environments.toml"
    environments.write_text(environments.read_text() + SHARDS.format())
    for name in ("SHARD_A_URL", "SHARD_B_URL"):
        monkeypatch.setenv(name, url_of(pg_server.ensure_database(f"s_{uuid.uuid4().hex[:8]}")))
    with get_client(sync_client=True) as client:  # the fleet run, stopped while shard_b migrated
        flow_run = client.create_flow_run(migrate_fleet_flow, parameters={"environment": "shards",
                                                                          "git_sha": "abc1234"}, state=Running())
        client.create_task_run(fleet_target, flow_run.id, "shard_b", name="target-shard_b", state=Running())
        client.set_flow_run_state(flow_run.id, Crashed(message="Process exited with status code: -9"), force=True)
        flow_run = client.read_flow_run(flow_run.id)

    report_fleet_crash(migrate_fleet_flow, flow_run, flow_run.state)

    [message] = slack_sink.texts()
    assert "2 targets: 1 interrupted, 1 skipped" in message, message
    assert "shard_b (--env shards-shard-b): interrupted; applied by this run: nothing" in message, message
    assert "shard_a: skipped" in message, message
    assert CANARY_PASSWORD not in message and "postgresql://" not in message
