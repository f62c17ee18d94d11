"""A migration file's text into its directives and statements, as PostgreSQL's own scanner splits them, with
nothing of the text left out unseen.

yoyo's format is kept (leading-comment directives `-- depends:` and `-- transactional:`), but not its splitter:
sqlparse reads `\\'` as an escaped quote where PostgreSQL does not, and takes 20 s for a 10 MB file of INSERTs.
pglast's scanner splits exactly where the server will (dollar quotes, E'' strings, nested comments). It also
stops quietly: at a NUL byte, after a parenthesis left open, or at a last word after the last `;`, and what it
does not return the server would never see. So the text between the statements it returns is read again, and
anything there but comments and semicolons is refused, with its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pglast
import sqlparse
from pglast.parser import scan
from yoyo.migrations import parse_metadata_from_sql_comments

from tasks.engine.migrations.sqltext import after_comments, shorten
from tasks.engine.migrations.statements import without_passwords

_TRIVIA = {"SQL_COMMENT", "C_COMMENT", "ASCII_59"}  # what may stand between statements: comments and `;`
_LINE_STARTS_WITH_BACKSLASH = re.compile(r"^[ \t]*\\", re.MULTILINE)  # a psql meta-command may start there


@dataclass(frozen=True)
class SplitText:
    directives: dict[str, str]
    statements: list[str]
    scanned: bool  # PostgreSQL's scanner read the text (False: a quote or comment left open; split by sqlparse)
    refusal: str | None = None  # why the text cannot be run as split (its line and what is there), in words


def read_text(path: Path) -> str:
    """A migration file's text as yoyo reads it (UTF-8), without a byte order mark."""
    return text_of(path.read_bytes())


def text_of(raw: bytes) -> str:
    """`read_text` of bytes already read (the catalog keeps them for the checksum)."""
    return raw.decode("utf-8").removeprefix("\ufeff")


def split_migration(text: str) -> tuple[dict[str, str], list[str]]:
    """(directives, statements); see `split`."""
    found = split(text)
    return found.directives, found.statements


def split(text: str) -> SplitText:
    """The directives, the statements as PostgreSQL's scanner splits them, and what of the text no statement
    holds. A text the scanner cannot read (an unclosed quote) is split by sqlparse, and the server then says
    what is wrong."""
    header = after_comments(text)
    directives, _, _ = parse_metadata_from_sql_comments(text[: len(text) - len(header)])
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        return SplitText(directives, [], True, f"line {line} holds a NUL byte (\\0), which no SQL text may hold: "
                                                "remove it (is the file UTF-16? save it as UTF-8)")
    try:
        slices = statement_slices(text)
    except pglast.parser.ParseError:
        statements = [s for s in sqlparse.split(text) if s.strip()]
        if statements:
            statements[0] = parse_metadata_from_sql_comments(statements[0])[2]
        return SplitText(directives, statements, False)
    statements = [text[piece] for piece in slices]
    if statements:  # the first statement carries the file's leading comments: the directives
        statements[0] = statements[0][len(statements[0]) - len(after_comments(statements[0])):]
    return SplitText(directives, [s for s in statements if s.strip()], True,
                     _psql_command(text) or _unread(text, slices))


def statement_slices(text: str) -> list[slice]:
    """Where each statement of `text` is, as PostgreSQL's scanner splits it (a `BEGIN ATOMIC` body kept
    whole); `pglast.parser.ParseError` when the scanner cannot read the text (an unclosed quote)."""
    return _atomic_bodies_kept(text) or list(pglast.split(_ascii_stand_in(text), with_parser=False,
                                                          only_slices=True))


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_NON_ASCII_DOLLAR_TAG = re.compile(r"\$[^$\s]*[^\x00-\x7f][^$\s]*\$")


def _ascii_stand_in(text: str) -> str:
    """`text` with each non-ASCII character stood in for by `z`. pglast's split maps its scanner's byte offsets
    back to characters slowly when there are many (2.4 s for a 10 MB backfill holding 4,902 accented names; 0.3 s
    without). The scanner reads a non-ASCII character, as it reads `z`, as a letter of the identifier, string or
    comment it is in (or starts an identifier): one letter for one, so the statements and every offset are the
    same. Not where a dollar-quote tag may hold one (`$é$` and `$è$` would then read as one tag)."""
    if text.isascii() or _NON_ASCII_DOLLAR_TAG.search(text):
        return text
    return _NON_ASCII.sub(lambda found: "z" * len(found.group()), text)


def _atomic_bodies_kept(text: str) -> list[slice] | None:
    """A SQL-standard function body (`BEGIN ATOMIC … ; … END`, PostgreSQL 14+) holds semicolons the scanner
    would cut at: such a file is split by the parser, which knows where the body ends (None when it has none,
    or the parser cannot read the file: then the scanner's split stands, and the server names the error)."""
    if "atomic" not in text.lower():
        return None
    tokens = [token.name for token in scan(text)]
    if not any(a == "BEGIN_P" and b == "ATOMIC" for a, b in zip(tokens, tokens[1:], strict=False)):
        return None
    try:
        return list(pglast.split(text, with_parser=True, only_slices=True))
    except pglast.parser.ParseError:
        return None


def _psql_command(text: str) -> str | None:
    """A line that starts with a backslash outside any string or comment: a psql meta-command (`\\set`,
    `\\connect`, `\\i`), which only psql understands; the server would read it as part of the next statement."""
    if not _LINE_STARTS_WITH_BACKSLASH.search(text):
        return None
    for token in scan(text):
        if token.name == "ASCII_92" and not text[text.rfind("\n", 0, token.start) + 1:token.start].strip():
            line = text.count("\n", 0, token.start) + 1
            command = text[token.start:].split(None, 1)[0]
            return (f"line {line}: `{command}` is a psql meta-command, not SQL: the tool sends the file to the server, "
                    "not to psql; remove it, or write what it does in SQL")
    return None


def _unread(text: str, slices: list[slice]) -> str | None:
    """Where the text outside every statement holds more than comments and semicolons, in words."""
    ends = [0, *(piece.stop for piece in slices)]
    starts = [*(piece.start for piece in slices), len(text)]
    for gap_start, gap_end in zip(ends, starts, strict=True):
        gap = text[gap_start:gap_end]
        if not gap.strip(" \t\r\n\f;"):  # most gaps: a `;` and a line break
            continue
        try:
            tokens = [token for token in scan(gap) if token.name not in _TRIVIA]
        except pglast.parser.ParseError:
            tokens = [None]
        if tokens:
            offset = gap_start + (len(gap) - len(gap.lstrip(" \t\r\n\f;")))
            line = text.count("\n", 0, offset) + 1
            excerpt = shorten(without_passwords(text[offset:offset + 2000]), 60)  # it is shown, and sent
            return (f"line {line}: text no statement holds ({excerpt!r}): PostgreSQL's scanner "
                    "stopped before it, so it would never run. Is a parenthesis or a quote left open above it, or "
                    "a `;` missing?")
    return None
