"""lint: check SQL migrations with squawk before they run (part of the validate step).

squawk (the `squawk-cli` wheel) reports every rule at the same level, so the severity is ours:
`RULE_SEVERITY` names the rules whose statements block or rewrite a busy table, or break running clients,
as errors; every other rule is a warning; a file squawk cannot parse is an error. An environment's
`Policy.lint_blocks_on` then decides which findings stop a run (`blocking`).

How each file is linted follows how our runner executes it:
- the runner sets `lock_timeout` and `statement_timeout` for every session, so the timeout rules are off;
- yoyo wraps a transactional file in a transaction, so those files are linted with
  `--assume-in-transaction` (a `BEGIN`/`COMMIT` or a `CREATE INDEX CONCURRENTLY` in them is an error) and
  without `prefer-robust-stmts` (the transaction makes them atomic, a failed run leaves nothing behind);
- a `-- transactional: false` file runs statement by statement, so it must be rerunnable:
  `prefer-robust-stmts` (`IF NOT EXISTS` / `IF EXISTS`) stays on for it.

One check is ours, because squawk misses it and yoyo does not forgive it: a statement PostgreSQL refuses
inside a transaction block (`CREATE INDEX CONCURRENTLY` alone in its file, which squawk assumes a
migration tool runs outside a transaction; `DROP INDEX` / `REINDEX ... CONCURRENTLY`, `VACUUM`, ...) in a
transactional file is a `cannot-run-in-transaction` error. So is a file that is not UTF-8 (`not-utf8`). And
in a non-transactional file, `CREATE INDEX CONCURRENTLY` with no index name is an `unnamed-concurrent-index`
warning: the INVALID index a failed build leaves could not be found again by name.

Suppressing a finding is squawk's own mechanism, written in the migration where reviewers see it:

    -- squawk-ignore ban-drop-column                   (findings on the next line; a comma-separated list)
    alter table t drop column c;

    -- squawk-ignore-file ban-drop-table               (the whole file; with no rule name, every rule)

`squawk-ignore` covers the line that follows it, which may be inside a statement (a column of a
CREATE TABLE). An ignore comment naming an unknown rule is reported as `unused-ignore`. A `.squawk.toml`
is not read: the same files lint the same way on a laptop, in CI and in the flow. A file may still say
`-- squawk-disable-assume-in-transaction`, which makes squawk lint it as if it were not transactional;
reviewers should treat that comment like any other suppression.

Example:
    findings = lint_files(paths, transactional={p: is_transactional(p) for p in paths})
    for finding in blocking(findings, environment.policy.lint_blocks_on):
        print(finding)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pglast
import sqlparse
from pglast import ast

from tasks.engine.errors import LintError
from tasks.engine.migrations.split import read_text, split_migration, statement_slices
from tasks.engine.migrations.statements import may_be_refused_in_transaction, parsed, refused_in_transaction
from tasks.engine.processes import child_environment

Severity = Literal["error", "warning"]

# Statements that take a long ACCESS EXCLUSIVE (or write-blocking) lock, rewrite a table, break clients
# still running the previous release, or break how our runner wraps a file. Anything else is a warning.
RULE_SEVERITY: dict[str, Severity] = {
    "adding-field-with-default": "error",  # squawk flags only defaults that rewrite the table
    "adding-foreign-key-constraint": "error",
    "adding-not-nullable-field": "error",
    "adding-required-field": "error",
    "adding-serial-primary-key-field": "error",
    "ban-alter-domain-with-add-constraint": "error",
    "ban-char-field": "error",
    "ban-concurrent-index-creation-in-transaction": "error",
    "ban-create-domain-with-constraint": "error",
    "ban-drop-column": "error",
    "ban-drop-database": "error",
    "ban-drop-not-null": "error",
    "ban-drop-table": "error",
    "ban-truncate-cascade": "error",
    "ban-uncommitted-transaction": "error",
    "changing-column-type": "error",
    "constraint-missing-not-valid": "error",
    "disallowed-unique-constraint": "error",
    "renaming-column": "error",
    "renaming-table": "error",
    "require-concurrent-index-creation": "error",
    "require-concurrent-index-deletion": "error",
    "require-concurrent-partition-detach": "error",
    "require-concurrent-reindex": "error",
    "syntax-error": "error",
    "transaction-nesting": "error",
}
DEFAULT_SEVERITY: Severity = "warning"

# Our runner sets both timeouts for every session (Policy.lock_timeout_ms, statement_timeout_ms).
ALWAYS_EXCLUDED = ("require-lock-timeout", "require-statement-timeout", "require-timeout-settings")
# yoyo's transaction makes a transactional file atomic: a failed run leaves nothing to trip over.
# (squawk 2.70 already skips this rule with --assume-in-transaction; excluded so that stays true.)
EXCLUDED_IN_TRANSACTION = ("prefer-robust-stmts",)
# Our own rules (always errors). yoyo reads migrations as UTF-8; squawk aborts the whole run on such a file.
NOT_UTF8 = "not-utf8"
CANNOT_RUN_IN_TRANSACTION = "cannot-run-in-transaction"
UNNAMED_CONCURRENT_INDEX = "unnamed-concurrent-index"  # a warning
# squawk's rule for the one case it covers: where both fire, its finding is kept.
SQUAWK_CONCURRENTLY_RULE = "ban-concurrent-index-creation-in-transaction"
SQUAWK_CONCURRENTLY_STATEMENTS = ("CREATE INDEX CONCURRENTLY", "CREATE UNIQUE INDEX CONCURRENTLY")  # what it covers
# Lexer tokens that are not words of a statement.
_COMMENT_TOKENS = {"SQL_COMMENT", "C_COMMENT"}

SQUAWK_TIMEOUT_SECONDS = 300
_AWKWARD_NAME = re.compile(r"[*?\[\]{}!]|^-")


@dataclass(frozen=True)
class LintFinding:
    """One problem squawk found. `file` is the migration's file name; `line` counts from 1."""

    file: str
    line: int
    rule: str
    severity: Severity
    message: str
    help: str | None

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}: {self.severity}: {self.rule}: {self.message}"
        return f"{text} ({self.help})" if self.help else text


def squawk_binary() -> Path:
    """The squawk executable: the one installed beside this Python (the venv's bin), else the one on PATH."""
    name = "squawk.exe" if os.name == "nt" else "squawk"
    beside = Path(sys.executable).parent / name  # not resolved: a venv's python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("squawk")
    if found:
        return Path(found)
    raise LintError(
        f"squawk not found (looked beside {sys.executable} and on PATH): install the squawk-cli package "
        "(`uv sync` installs it with this project)"
    )


def is_transactional(path: Path) -> bool:
    """Whether yoyo runs this migration in a transaction: its `-- transactional:` header, true by default.

    A rollback file (`NNNN.slug.rollback.sql`) runs the way its migration does, as in yoyo.
    """
    path = Path(path)
    source = path
    if path.name.endswith(".rollback.sql"):
        source = path.with_name(path.name.removesuffix(".rollback.sql") + ".sql")
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such migration file")
    directives, _ = split_migration(read_text(source))
    value = directives.get("transactional", "true").strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{source.name}: `-- transactional: {value}` must be `true` or `false`")
    return value == "true"


def lint_files(
    paths: list[Path], *, transactional: dict[Path, bool], pg_version: str | None = None
) -> list[LintFinding]:
    """Lint migration files with squawk: one squawk run for the transactional files, one for the rest.

    Args:
        paths: the migration files (apply and rollback files alike).
        transactional: for each path, whether yoyo runs it in a transaction (see `is_transactional`).
        pg_version: the target's PostgreSQL version ("15", "16.4"), for version-dependent rules.

    Returns:
        The findings, in the order of `paths`, then by line.

    Example:
        findings = lint_files([Path("migrations/0001.create-users.sql")],
                              transactional={Path("migrations/0001.create-users.sql"): True})
    """
    unique = list(dict.fromkeys(Path(p) for p in paths))
    unknown = [p.name for p in unique if p not in transactional]
    if unknown:
        raise ValueError(f"transactional is not given for: {', '.join(unknown)}")
    findings: list[LintFinding] = []
    readable: dict[Path, bytes] = {}
    for path in unique:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise LintError(f"{path}: cannot read the migration file: {exc.strerror}") from None
        try:
            content.decode("utf-8")
            readable[path] = content
        except UnicodeDecodeError as exc:
            line = content[: exc.start].count(b"\n") + 1
            findings.append(
                LintFinding(
                    path.name, line, NOT_UTF8, "error", "the file is not valid UTF-8", "save it as UTF-8"
                )
            )
    binary = squawk_binary() if readable else None
    for in_transaction in (True, False):
        batch = {p: content for p, content in readable.items() if transactional[p] is in_transaction}
        if batch and binary:
            found = _run_squawk(binary, batch, in_transaction=in_transaction, pg_version=pg_version)
            if in_transaction:
                found += _cannot_run_in_transaction(batch, already=found)
            else:
                found += _unnamed_concurrent_indexes(batch)
            findings += found
    order = {path.name: i for i, path in enumerate(unique)}
    return sorted(findings, key=lambda f: (order.get(f.file, len(order)), f.line, f.rule))


def blocking(
    findings: Iterable[LintFinding], lint_blocks_on: Literal["error", "warning", "never"]
) -> list[LintFinding]:
    """The findings that stop a run under an environment's `Policy.lint_blocks_on`."""
    if lint_blocks_on == "never":
        return []
    if lint_blocks_on == "warning":
        return list(findings)
    if lint_blocks_on == "error":
        return [f for f in findings if f.severity == "error"]
    raise ValueError(f"lint_blocks_on must be 'error', 'warning' or 'never', not {lint_blocks_on!r}")


def _cannot_run_in_transaction(files: dict[Path, bytes], *, already: list[LintFinding]) -> list[LintFinding]:
    """Statements of transactional files that PostgreSQL refuses inside a transaction block."""
    # squawk's rule covers CREATE INDEX CONCURRENTLY only: another statement on the same line is still ours.
    reported = {(f.file, f.line) for f in already if f.rule == SQUAWK_CONCURRENTLY_RULE}
    findings = []
    for path, content in files.items():
        text = content.decode("utf-8")
        if not may_be_refused_in_transaction(text):
            continue
        for line, what in _statements_needing_no_transaction(text):
            if not (what in SQUAWK_CONCURRENTLY_STATEMENTS and (path.name, line) in reported):
                findings.append(
                    LintFinding(
                        path.name,
                        line,
                        CANNOT_RUN_IN_TRANSACTION,
                        "error",
                        f"`{what}` cannot run inside a transaction block, and yoyo runs this file in one",
                        "Move it to a migration of its own with a `-- transactional: false` header.",
                    )
                )
    return findings


def _unnamed_concurrent_indexes(files: dict[Path, bytes]) -> list[LintFinding]:
    """`CREATE INDEX CONCURRENTLY ON …` with no name, in a non-transactional file: when the build fails, the
    INVALID index it leaves has a name the server chose, so the next run cannot find it (to drop it or refuse),
    and builds a second one beside it."""
    findings = []
    for path, content in files.items():
        text = content.decode("utf-8")
        if "concurrently" not in text.lower():
            continue
        for statement, start in _statements_at(text):
            if any(isinstance(node, ast.IndexStmt) and node.concurrent and not node.idxname
                   for node in parsed(statement) or ()):
                findings.append(LintFinding(
                    path.name, text.count("\n", 0, start) + 1, UNNAMED_CONCURRENT_INDEX, "warning",
                    "`CREATE INDEX CONCURRENTLY` without an index name: if the build fails, the INVALID index it "
                    "leaves is named by the server, and the next run can neither find it nor drop it",
                    "Name the index: CREATE INDEX CONCURRENTLY IF NOT EXISTS <name> ON …"))
    return findings


def _statements_at(text: str) -> list[tuple[str, int]]:
    """(statement, where it starts in `text`) as the catalog splits the file (split.statement_slices); a file the
    lexer cannot read (an unclosed quote) is split as split.split does, by sqlparse."""
    try:
        return [(text[piece], piece.start) for piece in statement_slices(text)]
    except pglast.parser.ParseError:
        found, position = [], 0
        for statement in sqlparse.split(text):
            start = text.find(statement, position)
            if start >= 0:
                found.append((statement, start))
                position = start + len(statement)
        return found


def _statements_needing_no_transaction(text: str) -> list[tuple[int, str]]:
    """(line, what) of each statement PostgreSQL cannot run inside a transaction block, read by its own lexer
    and parser (statements.refused_in_transaction). The line is CONCURRENTLY's where the statement has it (where
    squawk reports its own rule), else the statement's first word's. Statements are split as the catalog splits
    them (`_statements_at`). A statement the parser cannot read is left to squawk, which reports the syntax
    error, and to the server."""
    found = []
    for statement, start in _statements_at(text):
        what = refused_in_transaction(statement)
        if what is None:
            continue
        words = [t for t in pglast.parser.scan(statement) if t.name not in _COMMENT_TOKENS]
        at = next((t.start for t in words if t.name == "CONCURRENTLY"), words[0].start)
        found.append((text.count("\n", 0, start + at) + 1, what))
    return found


def _run_squawk(
    binary: Path, files: dict[Path, bytes], *, in_transaction: bool, pg_version: str | None
) -> list[LintFinding]:
    excluded = ALWAYS_EXCLUDED + (EXCLUDED_IN_TRANSACTION if in_transaction else ())
    command = [
        str(binary),
        "--reporter=json",
        f"--config={os.devnull}",  # no .squawk.toml found by walking up from the working directory
        "--assume-in-transaction" if in_transaction else "--no-assume-in-transaction",
        f"--exclude={','.join(excluded)}",
    ]
    if pg_version:
        command.append(f"--pg-version={pg_version}")
    # squawk is given short paths relative to the files' common directory, which it reports back as given.
    # It reads its arguments as glob patterns, so a name holding a glob character (or looking like an
    # option) is linted as a copy under a plain name instead.
    absolute = {path: os.path.abspath(path) for path in files}
    base = os.path.commonpath([os.path.dirname(name) for name in absolute.values()])
    with tempfile.TemporaryDirectory(prefix="rds-migrations-lint-") as workdir:
        names: dict[str, Path] = {}
        for i, (path, content) in enumerate(files.items()):
            name = os.path.relpath(absolute[path], base)
            if _AWKWARD_NAME.search(name):
                name = os.path.join(workdir, f"{i:06d}.sql")
                Path(name).write_bytes(content)
            names[os.path.normpath(name)] = path
        try:
            done = subprocess.run(
                [*command, *names],
                cwd=base,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=SQUAWK_TIMEOUT_SECONDS,
                env=child_environment(),
            )
        except subprocess.TimeoutExpired:
            raise LintError(f"squawk did not finish within {SQUAWK_TIMEOUT_SECONDS} s") from None
        except OSError as exc:
            raise LintError(f"cannot run {binary}: {exc.strerror}") from None
    # Exit status 1 means "found something" as well as some failures: the JSON on stdout decides.
    try:
        reported = json.loads(done.stdout) if done.returncode in (0, 1) else None
    except ValueError:
        reported = None
    if not isinstance(reported, list):
        detail = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise LintError(f"squawk failed (exit status {done.returncode}): {detail}")
    return [_finding(item, names) for item in reported]


def _finding(item: dict, names: dict[str, Path]) -> LintFinding:
    rule = str(item.get("rule_name") or "unknown")
    level = str(item.get("level", ""))
    severity: Severity = "error" if level.lower() == "error" else RULE_SEVERITY.get(rule, DEFAULT_SEVERITY)
    reported_file = str(item.get("file", ""))
    path = names.get(os.path.normpath(reported_file)) if reported_file else None
    return LintFinding(
        file=path.name if path else reported_file,
        line=int(item.get("line", 0)) + 1,  # squawk counts lines from 0
        rule=rule,
        severity=severity,
        message=str(item.get("message", "")),
        help=item.get("help") or None,
    )
