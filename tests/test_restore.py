"""The restore flow: one of an environment's snapshots restored to a NEW name and swapped in, the replaced copy
kept. The local kind against a real PostgreSQL (through the flow under Prefect), RDS instance and Aurora calls
over real HTTP to the AWS emulator."""

from __future__ import annotations

import json

import pytest

from tasks.engine.connection import connected
from tasks.engine.credentials import fetch_connection
from tasks.engine.errors import ConfigError, RefreshError
from tasks.engine.migrations.apply import apply_pending
from tasks.engine.migrations.catalog import read_catalog
from tasks.engine.snapshots.restore import restore_environment
from tests import test_refresh as shared
from tests.conftest import CANARY_PASSWORD, SlackSink
from tests.test_refresh import LOG, POLICY, PROJECT, STAMP1, T1, Aws, Local, fingerprint, no_sleep

# The fixtures of the refresh tests: the same two local databases, the same emulated AWS account.
local, flow_project, aws = shared.local, shared.flow_project, shared.aws

PRODUCTION_CREDENTIALS = shared.STAGING_CREDENTIALS.model_copy(update={"host": "app-production.example"})
RESTORED, OLD = f"app-production-restored-{STAMP1}", f"app-production-old-{STAMP1}"
SNAPSHOT = "rdsm-production-aaaaaaa-20261123t010000"


def production_environment(endpoint: str | None, snapshot: dict | None = None):
    _, production = shared.rds_environments(endpoint, production=snapshot)
    return production


def restore(aws: Aws, snapshot_id: str, snapshot: dict | None = None):
    return restore_environment(production_environment(aws.endpoint, snapshot), snapshot_id, PRODUCTION_CREDENTIALS,
                               now=T1, rds_client=aws.rds, log=LOG, sleep=no_sleep)


# ---- the local kind, through the flow ----------------------------------------------------------------------


def break_production(local: Local) -> None:
    """A bad deployment: the pending migrations applied, and data lost."""
    apply_pending(local.production, read_catalog(PROJECT / "migrations", PROJECT), POLICY)
    with connected(local.production) as conn:
        conn.execute("DELETE FROM users WHERE display_name = 'Bob Real'")


def test_restore_flow_swaps_the_dump_in_and_keeps_the_replaced_database(flow_project: Local) -> None:
    from flows.restore import restore_snapshot

    local = flow_project
    [dump] = [p.stem for p in local.snapshots.glob("*.dump")]
    before = fingerprint(local.production)
    break_production(local)
    broken = fingerprint(local.production)

    state = restore_snapshot(environment="prod-local", snapshot_id=dump, git_sha="abc1234", return_state=True)

    assert state.is_completed(), state.message
    result = state.result().result
    assert fingerprint(local.production) == before  # the data and history of the dump, unmasked
    assert result.old == f"{local.production.dbname}_old_" + result.old.rsplit("_old_", 1)[1]
    assert fingerprint(local.production.with_database(result.old)) == broken  # kept, for the post-mortem
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname, result.old])


@pytest.mark.parametrize("snapshot_id", ["../../etc/passwd", "rdsm-x;DROP DATABASE y"])
def test_restore_flow_refuses_a_bad_snapshot_id_and_says_so(flow_project: Local, slack_sink: SlackSink,
                                                             monkeypatch: pytest.MonkeyPatch, snapshot_id: str) -> None:
    from flows.restore import restore_snapshot

    local = flow_project
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", "restore")
    before = fingerprint(local.staging)

    state = restore_snapshot(environment="stage-local", snapshot_id=snapshot_id, return_state=True)

    assert state.is_failed()
    assert fingerprint(local.staging) == before
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname])
    [message] = slack_sink.texts()
    assert "Restore FAILED at step parameters" in message and "is not a snapshot identifier" in message
    assert "restore-snapshot/restore" in message and "environment=`stage-local`" in message
    assert f"snapshot_id=`&lt;refused: {len(snapshot_id)} characters, not repeated&gt;`" in message
    assert snapshot_id not in message and "prefect deployment run" not in message  # never repeated
    assert CANARY_PASSWORD not in json.dumps(slack_sink.messages)


def test_a_dump_of_another_environment_or_a_missing_one_is_refused(local: Local) -> None:
    staging_dump = shared.take_snapshot(local.environment("stage-local"), local.staging, git_sha="local",
                                        flow_run_id=None, trigger="test", now=T1, log=LOG)
    production = local.environment("prod-local")
    before = fingerprint(local.production)

    with pytest.raises(RefreshError, match="was taken of environment 'stage-local', not 'prod-local'"):
        restore_environment(production, staging_dump.identifier, fetch_connection(production), now=T1, log=LOG)
    with pytest.raises(RefreshError, match="no complete dump rdsm-prod-local-nope"):
        restore_environment(production, "rdsm-prod-local-nope", fetch_connection(production), now=T1, log=LOG)

    assert fingerprint(local.production) == before
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname])


def test_a_restored_database_keeps_its_owner_access_and_settings(local: Local) -> None:
    """A dump holds the objects in a database, not the database: restored, it used to belong to whoever ran the
    restore, be open to PUBLIC again and lose `ALTER DATABASE … SET` (a search_path naming `app`, say). The
    restored copy is made like the live one; the replaced copy keeps its own."""
    from psycopg import sql

    role = f"{local.production.dbname}_owner"
    production = local.environment("prod-local")
    name = sql.Identifier(local.production.dbname)
    with connected(local.production) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE pg_read_all_data").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, sql.Identifier(role)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(name, sql.Identifier(local.production.user)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = app, public").format(name))
        conn.execute(sql.SQL("ALTER DATABASE {} SET statement_timeout = '7s'").format(name))
        # The login's setting in that database (the owner-role pattern): `role` copied FROM CURRENT ran the
        # copy as that role, which may not alter the login.
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET role = {}").format(
            sql.Identifier(local.production.user), name, sql.Identifier(role)))

    def properties() -> tuple:
        with connected(local.production.with_database("postgres")) as conn:
            return conn.execute(
                "SELECT pg_get_userbyid(d.datdba), has_database_privilege('public', d.oid, 'CONNECT'), "
                "(SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0), "
                "(SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = "
                "(SELECT oid FROM pg_roles WHERE rolname = current_user)) "
                "FROM pg_database d WHERE datname = %s", (local.production.dbname,)).fetchone()

    before = properties()
    assert before == (role, False, ["search_path=app, public", "statement_timeout=7s"], [f"role={role}"])
    try:
        dump = local.dump_production(T1)
        restore_environment(production, dump.identifier, fetch_connection(production), now=T1, log=LOG)
        assert properties() == before
    finally:
        with connected(local.production.with_database("postgres")) as conn:
            for database in conn.execute("SELECT datname FROM pg_database WHERE datdba = "
                                         "(SELECT oid FROM pg_roles WHERE rolname = %s)", (role,)).fetchall():
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(database[0]), sql.Identifier(local.production.user)))
                conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET role").format(
                    sql.Identifier(local.production.user), sql.Identifier(database[0])))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_restored_database_keeps_its_objects_owners_and_grants(local: Local) -> None:
    """The dump's own database back: a table owned by the owner role and read by the application's role stays
    so. It used to be restored with --no-owner --no-privileges: the application was refused every table."""
    from psycopg import sql

    owner, reader = (sql.Identifier(f"{local.production.dbname}_{r}") for r in ("owner", "reader"))
    production = local.environment("prod-local")
    with connected(local.production) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN; CREATE ROLE {} NOLOGIN").format(owner, reader))
        conn.execute(sql.SQL("ALTER TABLE users OWNER TO {}; GRANT SELECT ON users TO {}").format(owner, reader))

    def roles() -> tuple:
        with connected(local.production) as conn:
            return conn.execute("SELECT tableowner, has_table_privilege(%s, 'users', 'SELECT'), "
                                "has_table_privilege(%s, 'accounts', 'SELECT') FROM pg_tables "
                                "WHERE tablename = 'users'", (f"{local.production.dbname}_reader",) * 2).fetchone()

    try:
        assert roles() == (f"{local.production.dbname}_owner", True, False)
        dump = local.dump_production(T1)
        restore_environment(production, dump.identifier, fetch_connection(production), now=T1, log=LOG)
        assert roles() == (f"{local.production.dbname}_owner", True, False)
    finally:
        for database in local.databases():
            with connected(local.production.with_database(database)) as conn:
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER; DROP OWNED BY {}, {}").format(
                    owner, owner, reader))
        with connected(local.production) as conn:
            conn.execute(sql.SQL("DROP ROLE {}, {}").format(owner, reader))


def test_a_restore_by_a_user_who_may_not_give_every_grant_goes_on_without_the_grants(
        local: Local, caplog: pytest.LogCaptureFixture) -> None:
    """Not a superuser, the environment's user restores the objects as their owner with their grants; a grant it
    may not give (default privileges of an owner role it is not a member of) fails pg_restore, so the restore is
    made again without grants, and says so, rather than not at all."""
    import logging

    from psycopg import sql
    from pydantic import SecretStr

    from tasks.engine.snapshots.local_copies import LocalDatabases
    from tasks.engine.snapshots.swap import LiveCopy, SwapPlan

    live = local.production.dbname
    user, owner, reader = (f"{live}_{r}" for r in ("user", "owner", "reader"))
    with connected(local.production) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD 'restorer-PW-5e1'; CREATE ROLE {}; "
                             "CREATE ROLE {}").format(*map(sql.Identifier, (user, owner, reader))))
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT SELECT ON TABLES TO {}; "
                             "GRANT SELECT ON users TO {}").format(*map(sql.Identifier, (owner, reader, reader))))
    restorer = local.production.model_copy(update={"user": user, "password": SecretStr("restorer-PW-5e1")})
    plan = SwapPlan(kind="pg_dump", live=live, new=f"{live}_new", old=f"{live}_old", stamp="t", keep_old=True)
    try:
        dump = local.dump_production(T1)
        backend = LocalDatabases(restorer, plan, LOG, keep_roles=True)
        backend.create(dump, plan.new, LiveCopy({}))
        with caplog.at_level(logging.WARNING):
            backend.finish_restore(dump, plan.new, LiveCopy({}))
        assert "pg_restore with the objects' grants failed" in caplog.text and "without them" in caplog.text
        with connected(restorer.with_database(plan.new)) as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone()[0] > 0  # restored all the same
    finally:
        with connected(local.production.with_database("postgres")) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(plan.new)))
        with connected(local.production) as conn:
            conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE SELECT ON TABLES FROM {}").format(
                sql.Identifier(owner), sql.Identifier(reader)))
            for role in (user, owner, reader):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}, {}, {}").format(*map(sql.Identifier, (user, owner, reader))))


def test_a_user_who_may_not_create_databases_is_told_that_none_was_created(local: Local) -> None:
    """A CREATE DATABASE that fails leaves no half-made copy; the error said it "was deleted", because
    `DROP DATABASE IF EXISTS` succeeds on nothing."""
    from psycopg import sql
    from pydantic import SecretStr

    from tasks.engine.snapshots.local_copies import LocalDatabases
    from tasks.engine.snapshots.swap import LiveCopy, SwapPlan, replace_from_snapshot

    live = local.production.dbname
    user = f"{live}_nocreatedb"
    with connected(local.production) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'restorer-PW-5e2'").format(sql.Identifier(user)))
    restorer = local.production.model_copy(update={"user": user, "password": SecretStr("restorer-PW-5e2")})
    plan = SwapPlan(kind="pg_dump", live=live, new=f"{live}_new", old=f"{live}_old", stamp="t", keep_old=True)
    try:
        dump = local.dump_production(T1)
        before = local.databases()
        with pytest.raises(RefreshError) as raised:
            replace_from_snapshot(LocalDatabases(restorer, plan, LOG), plan, dump, LiveCopy({}), prepare=None,
                                  log=LOG)
        message = str(raised.value)
        assert "permission denied to create database" in message
        assert f"{live} is untouched; no database was created" in message and "deleted" not in message
        assert local.databases() == before
    finally:
        with connected(local.production) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))


# ---- RDS against the AWS emulator -----------------------------------------------------------------------------


def test_rds_restore_calls_in_order_restore_then_rename_and_keep(aws: Aws) -> None:
    """Production comes back as it was: its settings and tags (a fleet's `app` tag included), and its deletion
    protection from the moment it takes the live name. The replaced copy is marked, so that a fleet found by
    tag does not migrate it as a target."""
    from tasks.engine.fleet.config import TagDiscovery
    from tasks.engine.fleet.discovery import discover

    [live] = aws.rds.describe_db_instances(DBInstanceIdentifier="app-production")["DBInstances"]
    aws.rds.modify_db_instance(DBInstanceIdentifier="app-production", DeletionProtection=True, MultiAZ=True,
                               ApplyImmediately=True)
    aws.rds.add_tags_to_resource(ResourceName=live["DBInstanceArn"], Tags=[{"Key": "app", "Value": "tenants"}])
    aws.calls.clear()

    result = restore(aws, SNAPSHOT)

    assert aws.writes() == [
        ("RestoreDBInstanceFromDBSnapshot", {
            "DBInstanceIdentifier": RESTORED, "DBSnapshotIdentifier": SNAPSHOT,
            "DBInstanceClass": "db.r6g.large",  # production's own settings, not staging's
            "VpcSecurityGroupIds": [g["VpcSecurityGroupId"] for g in live["VpcSecurityGroups"]],
            "DBParameterGroupName": live["DBParameterGroups"][0]["DBParameterGroupName"], "Port": 5432,
            "MultiAZ": True, "EnableIAMDatabaseAuthentication": False, "CopyTagsToSnapshot": False,
            "Tags": [{"Key": "app", "Value": "tenants"},
                     {"Key": "rds-migrations:managed-by", "Value": "rds-migrations"},
                     {"Key": "rds-migrations:restored-from", "Value": SNAPSHOT}]}),
        ("ModifyDBInstance", {"DBInstanceIdentifier": "app-production", "NewDBInstanceIdentifier": OLD,
                              "ApplyImmediately": True}),
        ("ModifyDBInstance", {"DBInstanceIdentifier": RESTORED, "NewDBInstanceIdentifier": "app-production",
                              "ApplyImmediately": True, "DeletionProtection": True}),
        ("AddTagsToResource", {"ResourceName": live["DBInstanceArn"].replace("app-production", OLD),
                               "Tags": [{"Key": "rds-migrations:replaced-by", "Value": "app-production"}]}),
    ]  # no password reset, nothing deleted
    assert aws.instances() == ["app-production", OLD, "app-staging"]
    assert (result.live, result.new, result.old, result.old_deleted) == ("app-production", RESTORED, OLD, False)
    [restored] = aws.rds.describe_db_instances(DBInstanceIdentifier="app-production")["DBInstances"]
    assert restored["DeletionProtection"] and restored["MultiAZ"]
    fleet = discover(TagDiscovery(kind="rds_instances", tags={"app": "tenants"}, credentials="master_secret"),
                     aws.rds)
    assert [target.name for target in fleet] == ["app-production"]  # not the replaced copy, which is tagged too


def test_an_aurora_restore_adds_a_writer_and_swaps_cluster_names(aws: Aws) -> None:
    aws.rds.create_db_cluster(DBClusterIdentifier="app-production", Engine="aurora-postgresql",
                              MasterUsername="app", MasterUserPassword="production-PW-1")
    aws.rds.create_db_instance(DBInstanceIdentifier="app-production-1", DBClusterIdentifier="app-production",
                               Engine="aurora-postgresql", DBInstanceClass="db.r6g.xlarge")
    aws.rds.create_db_cluster_snapshot(DBClusterSnapshotIdentifier=SNAPSHOT, DBClusterIdentifier="app-production")
    [live] = aws.rds.describe_db_clusters(DBClusterIdentifier="app-production")["DBClusters"]
    aws.calls.clear()

    restore(aws, SNAPSHOT, {"kind": "aurora_cluster", "cluster_id": "app-production"})

    assert [(op, {k: v for k, v in params.items() if k != "Tags"}) for op, params in aws.writes()] == [
        ("RestoreDBClusterFromSnapshot", {"DBClusterIdentifier": RESTORED, "SnapshotIdentifier": SNAPSHOT,
                                          "Engine": "aurora-postgresql", "EngineVersion": live["EngineVersion"],
                                          "DBSubnetGroupName": live["DBSubnetGroup"],
                                          "DBClusterParameterGroupName": live["DBClusterParameterGroup"],
                                          "Port": 5432, "EnableIAMDatabaseAuthentication": False,
                                          "CopyTagsToSnapshot": False}),
        ("CreateDBInstance", {"DBInstanceIdentifier": f"app-production-writer-{STAMP1}",
                              "DBClusterIdentifier": RESTORED, "DBInstanceClass": "db.r6g.xlarge",
                              "Engine": "aurora-postgresql"}),
        ("ModifyDBCluster", {"DBClusterIdentifier": "app-production", "NewDBClusterIdentifier": OLD,
                             "ApplyImmediately": True}),
        ("ModifyDBCluster", {"DBClusterIdentifier": RESTORED, "NewDBClusterIdentifier": "app-production",
                             "ApplyImmediately": True}),
        ("AddTagsToResource", {"ResourceName": live["DBClusterArn"].replace("app-production", OLD)}),  # marked
    ]


@pytest.mark.parametrize("kind", ["rds_instance", "aurora_cluster"])
def test_a_restore_s_budget_counts_exactly_the_waits_it_makes(aws: Aws, monkeypatch: pytest.MonkeyPatch,
                                                             kind: str) -> None:
    """A restore's run budget counted a refresh's waits (5 for an instance, 6 for a cluster), though a restore
    sets no password and deletes nothing: it counts each wait for RDS the restore really makes, every one of
    them at most the environment's wait (RDS's own waiters against the emulator, counted as they are made)."""
    from tasks.engine.environments import RESTORE_WAIT_SECONDS
    from tasks.engine.runs.budget import deadline_parts

    snapshot = None
    if kind == "aurora_cluster":
        aws.rds.create_db_cluster(DBClusterIdentifier="app-production", Engine="aurora-postgresql",
                                  MasterUsername="app", MasterUserPassword="production-PW-1")
        aws.rds.create_db_instance(DBInstanceIdentifier="app-production-1", DBClusterIdentifier="app-production",
                                   Engine="aurora-postgresql", DBInstanceClass="db.r6g.xlarge")
        aws.rds.create_db_cluster_snapshot(DBClusterSnapshotIdentifier=SNAPSHOT, DBClusterIdentifier="app-production")
        snapshot = {"kind": "aurora_cluster", "cluster_id": "app-production"}
    waits: list[str] = []
    get_waiter = aws.rds.get_waiter
    monkeypatch.setattr(aws.rds, "get_waiter", lambda name: waits.append(name) or get_waiter(name))

    restore(aws, SNAPSHOT, snapshot)

    assert waits == (["db_instance_available"] * 3 if kind == "rds_instance" else
                     ["db_cluster_available", "db_instance_available", "db_cluster_available",
                      "db_cluster_available"]), waits
    budget = deadline_parts(production_environment(aws.endpoint, snapshot), "restore")
    assert budget["restore and swap waits"] == len(waits) * RESTORE_WAIT_SECONDS


def test_a_snapshot_of_another_instance_is_refused_before_any_write(aws: Aws) -> None:
    aws.rds.create_db_snapshot(DBSnapshotIdentifier="rdsm-staging-aaaaaaa-20261123t010000",
                               DBInstanceIdentifier="app-staging")
    aws.calls.clear()
    for snapshot_id, error in (("rdsm-staging-aaaaaaa-20261123t010000", "was taken of app-staging, not app-production"),
                               ("rdsm-production-nope", "no available snapshot rdsm-production-nope")):
        with pytest.raises(RefreshError, match=error):
            restore(aws, snapshot_id)
    assert aws.writes() == []
    assert aws.instances() == ["app-production", "app-staging"]


@pytest.mark.parametrize("snapshot_id", ["arn:aws:rds:eu-west-1:1:snapshot:x", "rdsm--x", "rdsm-x-", "x y", "",
                                         "rds:", "a" * 300, "1abc", "-rf", "rdsm-x.dump", "../rdsm-x"])
def test_a_bad_snapshot_id_is_refused_before_any_call(aws: Aws, snapshot_id: str) -> None:
    with pytest.raises(ConfigError, match="is not a snapshot identifier"):  # the input's mistake: exit 2
        restore(aws, snapshot_id)
    assert aws.calls == []


def test_an_automated_snapshot_id_is_accepted(aws: Aws) -> None:
    [automated] = aws.rds.describe_db_snapshots(DBInstanceIdentifier="app-production",
                                                SnapshotType="automated")["DBSnapshots"]
    result = restore(aws, automated["DBSnapshotIdentifier"])
    assert result.snapshot.identifier.startswith("rds:app-production-")
    assert aws.instances() == ["app-production", OLD, "app-staging"]


def test_the_restore_command_a_failure_notification_names_brings_production_back(flow_project: Local) -> None:
    import shlex

    from flows.cli import main
    from tasks.engine.messages import restore_commands

    local = flow_project
    [dump] = [p.stem for p in local.snapshots.glob("*.dump")]
    before = fingerprint(local.production)
    break_production(local)

    command = restore_commands("prod-local", dump)[0]  # as the message shows it
    assert main(shlex.split(command)[1:]) == 0

    assert fingerprint(local.production) == before
    [old] = [d for d in local.databases() if "_old_" in d]  # the replaced copy is kept
    assert local.databases() == sorted([local.production.dbname, local.staging.dbname, old])
