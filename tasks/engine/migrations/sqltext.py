"""Small helpers over SQL text: where a statement starts, whether it is only comments, how to quote a name
and how to show a long statement in one line. No parsing beyond comments and whitespace."""

from __future__ import annotations


def after_comments(statement: str) -> str:
    """`statement` from its first token on: leading whitespace, semicolons and comments skipped."""
    rest = statement
    while rest := rest.lstrip(" \t\r\n\f;"):
        if rest.startswith("--"):
            rest = rest.partition("\n")[2]
        elif rest.startswith("/*"):  # block comments nest in PostgreSQL
            depth, i = 1, 2
            while depth and i < len(rest):
                if rest.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif rest.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            rest = rest[i:]
        else:
            return rest
    return ""


def comment_only(statement: str) -> bool:
    """True when PostgreSQL finds no statement in `statement` (whitespace, comments, semicolons): the server
    sends no answer for it inside a message of several statements."""
    return not after_comments(statement)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def shorten(statement: str, limit: int = 300) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
