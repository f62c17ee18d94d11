"""Which lint findings block a run: only those in migrations about to run, and not the lock and rewrite rules
on a table that an earlier statement of the same pending batch created (it is new and empty: nobody waits on
its locks, nothing is rewritten). The rest are reported as information, so a squawk upgrade that flags a
years-old migration never blocks production.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tasks.engine.migrations.catalog import Catalog, Migration
from tasks.engine.migrations.lint import LintFinding
from tasks.engine.migrations.statements import created_tables, touched_table

# Rules about locks held on, or rewrites of, the table a statement works on: moot on a table made in this batch.
LOCK_RULES = frozenset({
    "require-concurrent-index-creation", "require-concurrent-index-deletion", "adding-not-nullable-field",
    "adding-required-field", "adding-field-with-default", "changing-column-type", "constraint-missing-not-valid",
    "disallowed-unique-constraint", "adding-serial-primary-key-field", "ban-drop-not-null",
})


@dataclass(frozen=True)
class LintScope:
    """`pending`: the files of the migrations (and their rollback files) about to run; None when that is not
    known (no target database: every file is about to run). `new_table_lines`: (file, line) of statements
    working on a table an earlier statement of the pending batch created."""

    pending: frozenset[str] | None = None
    new_table_lines: frozenset[tuple[str, int]] = frozenset()
    later: frozenset[str] = frozenset()  # the files of pending migrations after the run's --target

    @classmethod
    def of(cls, catalog: Catalog, pending: Iterable[str] | None,
           findings: Iterable[LintFinding] = (), later: Iterable[str] = ()) -> LintScope:
        """The scope of the `pending` migrations. Statements are parsed only as far as `findings` of the lock
        and rewrite rules need: a batch without such findings costs no parse at all."""
        ids = list(catalog.ids) if pending is None else list(pending)
        by_id = {m.id: m for m in catalog.migrations}
        batch = [by_id[i] for i in ids if i in by_id]
        files = _files(batch)
        wanted = {(f.file, f.line) for f in findings if f.rule in LOCK_RULES and f.file in files}
        new_tables: set[str] = set()
        lines: set[tuple[str, int]] = set()
        for migration in batch:
            if not wanted:
                break
            for statement, (first, last) in zip(migration.statements, migration.spans, strict=False):
                span = {(migration.path.name, line) for line in range(first, last + 1)}
                if span & wanted:
                    wanted -= span
                    if _plain(touched_table(statement)) in new_tables:
                        lines |= span
                new_tables |= {_plain(name) for name in created_tables(statement)}
        beyond = _files(by_id[i] for i in later if i in by_id)
        return cls(None if pending is None else frozenset(files), frozenset(lines), frozenset(beyond))

    def why_not_blocking(self, finding: LintFinding) -> str | None:
        """Why a finding that the policy would block does not: it is in an applied migration, or it is a lock
        or rewrite rule on a table made in this batch; None when it blocks."""
        if self.pending is not None and finding.file not in self.pending:
            return "after the run's --target" if finding.file in self.later else "applied already"
        if finding.rule in LOCK_RULES and (finding.file, finding.line) in self.new_table_lines:
            return "a table created in this batch"
        return None


def _files(migrations: Iterable[Migration]) -> set[str]:
    """The files of `migrations`: each one's and its rollback file's name."""
    return {name for migration in migrations for name in (migration.path.name, f"{migration.id}.rollback.sql")}


def _plain(name: str | None) -> str | None:
    """`public.t` and `t` are the same table for this purpose (the default schema)."""
    return name.removeprefix("public.") if name else name
