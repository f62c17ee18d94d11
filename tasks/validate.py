"""validate: everything that can be known before touching the target, and a read-only plan against it.

1. static: file names, duplicate versions, `-- depends:`, orphan rollbacks, the directory itself (catalog);
2. lint: squawk, with the environment's policy deciding which findings block;
3. rehearsal: every migration applied on a throwaway database, the tail with rollback files rolled back and
   re-applied; it starts from nothing, or from a cached rehearsal database that holds the first migrations
   exactly as they are now (see "the rehearsal cache");
4. plan: what is pending on the target, and whether its history matches the files (read-only).
The result is one `ValidationReport`, rendered as markdown (Prefect artifact, GitHub step summary) and text.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg import sql

from tasks.catalog import Catalog, read_catalog
from tasks.environments import Environment, Policy
from tasks.lint import LintFinding, blocking, lint_files
from tasks.migrate import MigrationError, Plan, apply_pending, read_history, roll_back
from tasks.secrets import Connection, connected, connection_from_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RehearsalResult:
    where: str
    applied: int
    rolled_back: tuple[str, ...] = ()
    failure: str | None = None
    duration_seconds: float = 0.0
    reused: int = 0  # migrations not applied again: they came with a cached rehearsal database


@dataclass(frozen=True)
class ValidationReport:
    migrations_dir: str
    migrations: tuple[str, ...]
    problems: tuple[str, ...] = ()
    findings: tuple[LintFinding, ...] = ()
    lint_blocks_on: str = "error"
    rehearsal: RehearsalResult | None = None
    plan: Plan | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def blocking_findings(self) -> tuple[LintFinding, ...]:
        return tuple(blocking(list(self.findings), self.lint_blocks_on))  # type: ignore[arg-type]

    @property
    def errors(self) -> list[str]:
        errors = list(self.problems)
        errors += [f"{f.file}:{f.line}: {f.rule}: {f.message}" for f in self.blocking_findings]
        if self.rehearsal and self.rehearsal.failure:
            errors.append(f"rehearsal failed: {self.rehearsal.failure}")
        if self.plan:
            errors += list(self.plan.problems)
        return errors

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def pending(self) -> tuple[str, ...]:
        return self.plan.pending if self.plan else ()

    def to_text(self) -> str:
        lines = [f"{len(self.migrations)} migrations in {self.migrations_dir}"]
        lines += [f"  ERROR {p}" for p in self.problems]
        blocking_set = set(self.blocking_findings)
        for f in self.findings:
            level = "BLOCKS" if f in blocking_set else f.severity.upper()
            lines.append(f"  lint {level} {f.file}:{f.line} {f.rule}: {f.message}")
        if self.rehearsal:
            r = self.rehearsal
            status = f"FAILED: {r.failure}" if r.failure else "ok"
            lines.append(
                f"  rehearsal on {r.where}: applied {r.applied}, rolled back and re-applied "
                f"{len(r.rolled_back)} ({r.duration_seconds:.1f}s): {status}"
            )
        if self.plan:
            lines.append(f"  plan: {len(self.plan.applied)} applied, {len(self.plan.pending)} pending")
            lines += [f"    pending {m}" for m in self.plan.pending]
            lines += [f"  ERROR {p}" for p in self.plan.problems]
        lines.append("  result: " + ("ok" if self.ok else f"{len(self.errors)} error(s)"))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        status = "passed" if self.ok else "failed"
        out = [f"## Migration validation {status}", "",
               f"{len(self.migrations)} migrations in `{self.migrations_dir}`."]
        if self.errors:
            out += ["", "### Errors", ""] + [f"- {_md(e)}" for e in self.errors]
        if self.findings:
            out += ["", f"### Lint (squawk; blocking at `{self.lint_blocks_on}`)", "",
                    "| file | line | rule | severity | message |", "|---|---|---|---|---|"]
            out += [f"| {f.file} | {f.line} | {f.rule} | {f.severity} | {_md(f.message)} |" for f in self.findings]
        if self.rehearsal:
            r = self.rehearsal
            out += ["", "### Rehearsal", "",
                    f"On {r.where}: {r.applied} applied from scratch; rolled back and re-applied: "
                    f"{', '.join(r.rolled_back) or 'none (no rollback files at the tail)'}; "
                    f"{'**failed**: ' + _md(r.failure) if r.failure else 'ok'} ({r.duration_seconds:.1f}s)."]
        if self.plan:
            out += ["", "### Plan", "", f"{len(self.plan.applied)} applied; {len(self.plan.pending)} pending:"]
            out += [f"1. `{m}`" for m in self.plan.pending] or ["", "Nothing to apply."]
            if self.plan.beyond_target:
                out += ["", f"Held back by the target: {', '.join(self.plan.beyond_target)}"]
        return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class ValidationFailed(Exception):
    def __init__(self, report: ValidationReport) -> None:
        super().__init__("validation failed:\n" + "\n".join(f"  - {e}" for e in report.errors))
        self.report = report


# ---- 1 + 2: static checks and lint (no database) --------------------------------------------------------


def check_migrations(migrations_dir: Path, project_root: Path, policy: Policy) -> tuple[Catalog, ValidationReport]:
    started = time.monotonic()
    catalog = read_catalog(migrations_dir, project_root)
    static_done = time.monotonic()
    findings: list[LintFinding] = []
    if catalog.migrations:
        findings = lint_files(
            [m.path for m in catalog.migrations],
            transactional={m.path: m.transactional for m in catalog.migrations},
        )
    report = ValidationReport(
        migrations_dir=str(migrations_dir),
        migrations=catalog.ids,
        problems=tuple(str(p) for p in catalog.problems),
        findings=tuple(findings),
        lint_blocks_on=policy.lint_blocks_on,
        timings={"static": static_done - started, "lint": time.monotonic() - static_done},
    )
    return catalog, report


# ---- 3: rehearsal ---------------------------------------------------------------------------------------


def rehearsal_server(environment: Environment, target: Connection | None) -> Connection | None:
    """The server on which a throwaway rehearsal database is created, per the environment's setting."""
    kind = environment.rehearsal.kind
    if kind == "none":
        return None
    if kind == "url_env":
        url = os.environ.get(environment.rehearsal.variable)
        if not url:
            raise ValueError(f"rehearsal.kind is url_env but {environment.rehearsal.variable} is not set")
        return connection_from_url(url, f"env:{environment.rehearsal.variable}")
    if kind == "embedded" or target is None:
        from tasks.embedded import embedded_server

        server = embedded_server()
        server.start()
        return server.connection()
    return target


def rehearse(catalog: Catalog, server: Connection, policy: Policy,
             log: logging.Logger | logging.LoggerAdapter = logger, *, cache: bool = True) -> RehearsalResult:
    """Apply everything on a new database, roll back the tail that has rollback files, re-apply; drop it.

    With `cache` (the default), the database is not built from nothing when a database holding the first k
    migrations, exactly as they are now, is cached on the server: that database is taken (renamed, not copied)
    and only the rest is applied. The tail is rolled back and re-applied as without the cache, so the checks
    are the same; only the starting point differs. Afterwards the database is cached again under the state it
    ends in (see "the rehearsal cache" below).

    Example:
        result = rehearse(catalog, server, environment.policy)   # result.reused: migrations not re-applied
    """
    started = time.monotonic()
    name = f"rdsm_rehearsal_{uuid.uuid4().hex[:12]}"
    # The rehearsal must not wait on anything for long: no other session uses this database.
    rehearsal_policy = policy.model_copy(update={"migration_lock_wait_seconds": 0, "lock_timeout_retries": 0})
    keys = rehearsal_keys(catalog, server.user) if cache else []
    reused = take_cached(server, catalog, keys, name, log) if keys else 0
    if not reused:
        with connected(server) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    where = f"{server.host}:{server.port} (temporary database {name}"
    where += f", from a cached database holding the first {reused} migrations)" if reused else ")"
    scratch = server.with_database(name)
    rolled_back: list[str] = []
    failure: MigrationError | None = None
    finished = False  # the rehearsal ran to its end or to a migration's failure (not to another exception)
    try:
        apply_pending(scratch, catalog, rehearsal_policy, git_sha="rehearsal", log=log)
        tail = []
        for migration in reversed(catalog.migrations):
            if not migration.has_rollback:
                break
            tail.append(migration)
        for migration in tail:
            roll_back(scratch, migration, rehearsal_policy)
            rolled_back.append(migration.id)
        if tail:
            apply_pending(scratch, catalog, rehearsal_policy, git_sha="rehearsal", log=log)
        finished = True
    except MigrationError as exc:
        failure, finished = exc, True
    finally:
        # Worth keeping: the end of a rehearsal that passed, or the state before a transactional migration that
        # failed while applying (rolled back, so the database holds exactly the migrations before it).
        keep = bool(keys) and finished and (
            failure is None
            or (not rolled_back and failure.report.failed is not None and failure.report.failed.transactional)
        )
        if not (keep and put_cached(server, catalog, keys, name, log)):
            with connected(server) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return RehearsalResult(
        where=where,
        applied=len(catalog.migrations),
        rolled_back=tuple(rolled_back),
        failure=str(failure) if failure else None,
        duration_seconds=time.monotonic() - started,
        reused=reused,
    )


# ---- the rehearsal cache ----------------------------------------------------------------------------------
# A rehearsal of 1 new migration on top of 1,000 should not re-apply the 1,000. Copying a cached template
# (`CREATE DATABASE ... TEMPLATE`) is O(tables) too: 1.5-2.6 s for 1,000 small tables here, against 4-5 s to
# apply them (BENCHMARKS.md). So the rehearsal database itself is cached: renamed away when a rehearsal ends,
# renamed back when the next one starts (a rename is a catalog update). Its name holds the key of the state
# it is in, `rdsm_rc_<saved at, epoch ms>_<key>`; it refuses connections while cached; the newest
# REHEARSAL_CACHE_KEPT per server and role are kept. A state is consumed when it is used: after 1,000 + 1
# is rehearsed, editing that one new migration rebuilds from nothing.

REHEARSAL_CACHE_KEPT = 2
_CACHED = re.compile(r"^rdsm_rc_(?P<saved>\d{13})_(?P<key>[0-9a-f]{32})$")


def rehearsal_keys(catalog: Catalog, role: str) -> list[str]:
    """`keys[k - 1]` names the database state after the catalog's first k migrations, applied by `role`.

    A hash chain over each migration's id and content checksum: an edit, a rename, a reordering or a removal
    changes the key of that migration and of every one after it, so those states are rebuilt.
    """
    digest = hashlib.sha256(f"rds-migrations rehearsal v1\0{role}".encode())
    keys = []
    for migration in catalog.migrations:
        digest.update(f"\0{migration.id}\0{migration.checksum}".encode())
        keys.append(digest.hexdigest()[:32])
    return keys


def _cached_databases(conn: psycopg.Connection) -> list[tuple[str, int, str]]:
    """(name, saved at, key) of the cached rehearsal databases this role owns, newest first."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'rdsm\\_rc\\_%' "
        "AND datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user) ORDER BY oid DESC"
    ).fetchall()
    found = [(row[0], _CACHED.match(row[0])) for row in rows]
    # Newest first by the time in the name; sorted() is stable, so the newer database wins a tie.
    return sorted(((name, int(m["saved"]), m["key"]) for name, m in found if m), key=lambda c: -c[1])


def _held_state(connection: Connection, catalog: Catalog) -> int | None:
    """How many of the catalog's first migrations the database holds, if it holds exactly those, unchanged."""
    with connected(connection) as conn:
        history = read_history(conn)
    count = len(history.applied)
    expected = catalog.migrations[:count]
    if history.dirty or set(history.applied) != {m.id for m in expected}:
        return None
    if any(history.checksums.get(m.id) != m.checksum for m in expected):
        return None
    return count


def take_cached(server: Connection, catalog: Catalog, keys: list[str], name: str,
                log: logging.Logger | logging.LoggerAdapter) -> int:
    """Rename the cached database holding the longest prefix of the catalog to `name`; how many it holds (0: none)."""
    position = {key: index + 1 for index, key in enumerate(keys)}
    try:
        with connected(server) as conn:
            cached = [(position[key], database) for database, _, key in _cached_databases(conn) if key in position]
            if not cached:
                return 0
            count, database = max(cached)
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(database),
                                                                          sql.Identifier(name)))
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        if _held_state(server.with_database(name), catalog) == count:
            log.info("Rehearsal starts from a cached database holding the first %d migrations", count)
            return count
        log.warning("Cached rehearsal database %s does not hold what its name says; rebuilding", database)
    except psycopg.Error as exc:  # taken by a concurrent rehearsal, or not ours to alter: build from nothing
        log.warning("Rehearsal cache not used (%s)", (exc.diag.message_primary or type(exc).__name__))
    with connected(server) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return 0


def put_cached(server: Connection, catalog: Catalog, keys: list[str], name: str,
               log: logging.Logger | logging.LoggerAdapter) -> bool:
    """Cache the rehearsal database under the state it holds; drop the oldest beyond the kept number."""
    try:
        count = _held_state(server.with_database(name), catalog)
        if not count:
            return False
        cached = f"rdsm_rc_{time.time_ns() // 1_000_000:013d}_{keys[count - 1]}"
        comment = f"rds-migrations rehearsal cache: the first {count} migrations, to {catalog.migrations[count - 1].id}"
        with connected(server) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(cached)))
    except psycopg.Error as exc:
        log.warning("Rehearsal database not cached (%s)", exc.diag.message_primary or type(exc).__name__)
        return False
    try:
        with connected(server) as conn:
            # While cached, nobody connects to it: it cannot change, and nothing holds up the next rename.
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(cached)))
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(cached), sql.Literal(comment)))
            for database, _, _ in _cached_databases(conn)[REHEARSAL_CACHE_KEPT:]:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:  # a concurrent rehearsal took or dropped one; the cache stays usable
        log.warning("Rehearsal cache not tidied (%s)", exc.diag.message_primary or type(exc).__name__)
    return True


def with_rehearsal(report: ValidationReport, rehearsal: RehearsalResult | None) -> ValidationReport:
    return replace(report, rehearsal=rehearsal)


def with_plan(report: ValidationReport, plan: Plan) -> ValidationReport:
    return replace(report, plan=plan)


# ---- the Prefect tasks -----------------------------------------------------------------------------------

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.migrate import plan as read_plan  # noqa: E402
from tasks.transient import transient_retries  # noqa: E402


@task(name="validate", persist_result=False, cache_policy=NO_CACHE)
def validate(migrations_dir: Path, project_root: Path, policy: Policy) -> tuple[Catalog, ValidationReport]:
    """Static checks and lint, before anything touches AWS or the database.

    Example:
        catalog, report = validate(Path("migrations"), Path.cwd(), environment.policy)
    """
    catalog, report = check_migrations(migrations_dir, project_root, policy)
    get_run_logger().info("Static checks and lint:\n%s", report.to_text())
    if not report.ok:
        raise ValidationFailed(report)
    return catalog, report


@task(
    name="rehearse-and-plan",
    **transient_retries(retries=2, backoff_factor=5),
    persist_result=False,
    cache_policy=NO_CACHE,
)
def rehearse_and_plan(environment: Environment, catalog: Catalog, report: ValidationReport,
                      connection: Connection, target: str | None = None) -> ValidationReport:
    """Plan against the target (read-only) and, when something is pending, rehearse on a throwaway database."""
    log = get_run_logger()
    current = read_plan(connection, catalog, target=target, allow_out_of_order=environment.policy.allow_out_of_order,
                        environment=environment.name)
    report = with_plan(report, current)
    if current.pending and not current.problems:
        server = rehearsal_server(environment, connection)
        if server is not None:
            rehearsal = rehearse(catalog, server, environment.policy, cache=environment.rehearsal.cache)
            report = with_rehearsal(report, rehearsal)
    log.info("Plan:\n%s", report.to_text())
    if not report.ok:
        raise ValidationFailed(report)
    return report
