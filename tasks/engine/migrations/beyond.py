"""What migrations do beyond their database (roles, databases, server settings...), read in one pass over their
statements: where a rehearsal may run, and what it undoes afterwards on the server it ran on (scratch.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pglast import ast

from tasks.engine.migrations.catalog import Migration
from tasks.engine.migrations.statements import cluster_wide, parsed

# What a migration makes beyond its database: the field of Beyond that names it, the statement, and the name it
# gives it ("*": ALTER SYSTEM RESET ALL).
MADE = {"roles": (ast.CreateRoleStmt, "CREATE ROLE", lambda node: node.role),
        "databases": (ast.CreatedbStmt, "CREATE DATABASE", lambda node: node.dbname),
        "settings": (ast.AlterSystemStmt, "ALTER SYSTEM", lambda node: (node.setstmt.name or "*").lower())}


@dataclass(frozen=True)
class Beyond:
    """Each statement that changes the server ("<id> (<what>)", once each), whether one alters a database, and the
    roles (not copied from the target before replaying them), databases and server settings the migrations make,
    by name; on a rehearsal's server all are undone afterwards."""

    reaching: tuple[str, ...] = ()
    alters_databases: bool = False
    roles: frozenset[str] = frozenset()
    databases: frozenset[str] = frozenset()
    settings: frozenset[str] = frozenset()

    @classmethod
    def of(cls, migrations: Iterable[Migration]) -> Beyond:
        reaching: dict[str, str] = {}
        made: dict[str, set[str]] = {field: set() for field in MADE}
        for migration in migrations:
            for statement in migration.statements:
                if (what := cluster_wide(statement)) is None:
                    continue
                reaching.setdefault(f"{migration.id} ({what})", what)
                for field, (kind, words, name) in MADE.items():
                    if what == words:  # parsed again only for the few statements that make something
                        made[field] |= {name(node) for node in parsed(statement) or () if isinstance(node, kind)}
        return cls(tuple(reaching), any(what.startswith("ALTER DATABASE") for what in reaching.values()),
                   **{field: frozenset(names) for field, names in made.items()})
