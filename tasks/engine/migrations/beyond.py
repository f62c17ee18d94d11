"""What migrations do beyond their database (roles, databases, server settings...), read in one pass over their
statements: where a rehearsal may run, and what it undoes afterwards on the server it ran on (scratch.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pglast import ast

from tasks.engine.migrations.catalog import Migration
from tasks.engine.migrations.statements import cluster_wide, parsed

# What a migration makes beyond its database, and the name it gives it ("*": ALTER SYSTEM RESET ALL).
MADE = {ast.CreateRoleStmt: ("CREATE ROLE", lambda node: node.role),
        ast.CreatedbStmt: ("CREATE DATABASE", lambda node: node.dbname),
        ast.AlterSystemStmt: ("ALTER SYSTEM", lambda node: (node.setstmt.name or "*").lower())}


@dataclass(frozen=True)
class Beyond:
    """Each statement that changes the server ("<id> (<what>)", once each), whether one alters a database, and the
    roles (not copied from the target before replaying them), databases and server settings the migrations make,
    by name (`MADE`'s kinds); on a rehearsal's server all are undone afterwards."""

    reaching: tuple[str, ...]
    alters_databases: bool
    made: dict[type, frozenset[str]]

    @classmethod
    def of(cls, migrations: Iterable[Migration]) -> Beyond:
        reaching: dict[str, str] = {}
        made: dict[type, set[str]] = {kind: set() for kind in MADE}
        for migration in migrations:
            for statement in migration.statements:
                if (what := cluster_wide(statement)) is None:
                    continue
                reaching.setdefault(f"{migration.id} ({what})", what)
                for kind, (words, name) in MADE.items():
                    if what == words:  # parsed again only for the few statements that make something
                        made[kind] |= {name(node) for node in parsed(statement) or () if isinstance(node, kind)}
        return cls(tuple(reaching), any(what.startswith("ALTER DATABASE") for what in reaching.values()),
                   {kind: frozenset(names) for kind, names in made.items()})
