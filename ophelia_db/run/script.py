"""Reading rendered SQL scripts: statements, transaction blocks, and non-transactional sections.

This module owns splitting the offline SQL Alembic renders into statements
(respecting quotes, dollar quotes and comments), following which revision
each statement belongs to (Alembic's ``-- Running upgrade A -> B`` comments)
and whether it runs inside ``BEGIN``/``COMMIT``, and marking the statements
that must run outside any transaction (``CREATE INDEX CONCURRENTLY``,
``VACUUM``, ...) as separate, clearly labelled sections of the script
``ophelia-db sql`` prints. ``lint`` reads scripts through it. Pure text, no
database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

_MARKER = re.compile(r"--\s*Running upgrade\s+(\S*)\s*->\s*(\S+)")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_NON_TRANSACTIONAL = re.compile(
    r"^(CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY|DROP\s+INDEX\s+CONCURRENTLY|REINDEX\b.*\bCONCURRENTLY\b"
    r"|VACUUM\b|CREATE\s+DATABASE|DROP\s+DATABASE|ALTER\s+SYSTEM|CREATE\s+TABLESPACE|DROP\s+TABLESPACE"
    r"|ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*\bCONCURRENTLY\b)",
    re.IGNORECASE | re.DOTALL,
)
_BEGIN = re.compile(r"^(BEGIN|START\s+TRANSACTION)\b", re.IGNORECASE)
_END = re.compile(r"^(COMMIT|END|ROLLBACK)\b", re.IGNORECASE)
_BOOKKEEPING = re.compile(
    r"^(CREATE\s+TABLE\s+public\.alembic_version\b|INSERT\s+INTO\s+public\.alembic_version\b"
    r"|UPDATE\s+public\.alembic_version\b|DELETE\s+FROM\s+public\.alembic_version\b"
    r"|DO\s+\$ophelia\$)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its text (comments stripped), where it is, and its context."""

    text: str
    start: int
    end: int
    line: int
    revision: str | None
    in_transaction: bool

    @property
    def normalised(self) -> str:
        return " ".join(self.text.split())

    @property
    def is_transaction_control(self) -> bool:
        head = self.normalised.rstrip(";").strip()
        return bool(_BEGIN.match(head) or _END.match(head))

    @property
    def is_bookkeeping(self) -> bool:
        """alembic_version writes and ophelia-db's register_migration blocks."""
        return bool(_BOOKKEEPING.match(self.normalised))

    @property
    def non_transactional(self) -> bool:
        return bool(_NON_TRANSACTIONAL.match(self.normalised))


def _scan(text: str) -> Iterator[tuple[str, int, int]]:
    """Yield ``("comment"|"statement", start, end)`` spans of ``text``."""
    i, n = 0, len(text)
    start: int | None = None
    while i < n:
        char = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            if start is None:
                yield "comment", i, end
            i = end
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            i = j
            continue
        if char.isspace() or (char == ";" and start is None):
            # An empty statement (Alembic adds ';' after SQL that already ends with one).
            i += 1
            continue
        if start is None:
            start = i
        if char in "'\"":
            escaped = char == "'" and i > 0 and text[i - 1] in "eE"
            j = i + 1
            while j < n:
                if escaped and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == char:
                    if j + 1 < n and text[j + 1] == char:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if char == "$":
            match = _DOLLAR.match(text, i)
            if match:
                close = text.find(match.group(0), match.end())
                i = n if close < 0 else close + len(match.group(0))
                continue
        if char == ";":
            yield "statement", start, i + 1
            start = None
        i += 1
    if start is not None:
        yield "statement", start, n


def statements(text: str) -> list[Statement]:
    """Split a rendered script into statements, each tagged with its revision and transaction state."""
    found: list[Statement] = []
    revision: str | None = None
    in_transaction = False
    for kind, start, end in _scan(text):
        chunk = text[start:end]
        if kind == "comment":
            marker = _MARKER.match(chunk)
            if marker:
                revision = marker.group(2)
                if found and found[-1].revision != revision and _BEGIN.match(found[-1].normalised):
                    # Alembic opens a revision's transaction just before naming the revision.
                    found[-1] = replace(found[-1], revision=revision)
            continue
        statement = Statement(
            text=chunk,
            start=start,
            end=end,
            line=text.count("\n", 0, start) + 1,
            revision=revision,
            in_transaction=in_transaction,
        )
        head = statement.normalised.rstrip(";").strip()
        if _BEGIN.match(head):
            in_transaction = True
        elif _END.match(head):
            in_transaction = False
        found.append(statement)
    return found


def mark_non_transactional(text: str) -> str:
    """Label the statements of ``text`` that run outside a transaction as separate sections.

    Statements between a ``COMMIT`` and the next ``BEGIN`` (an Alembic
    ``autocommit_block``) get a header and a footer saying to run them one at a
    time outside any transaction, in place, because later statements may need
    them. A statement that cannot run in a transaction but sits inside one gets
    a warning. A script without such statements is returned unchanged.
    """
    inserts: list[tuple[int, str]] = []
    sections: list[str] = []
    run: list[Statement] = []

    def close_run() -> None:
        if not run:
            return
        label = f"revision {run[0].revision}" if run[0].revision else "this script"
        sections.append(label)
        inserts.append((run[0].start, _header(label)))
        inserts.append((run[-1].end, f"\n-- ===== end of the non-transactional section of {label} =====\n"))
        run.clear()

    for statement in statements(text):
        if statement.is_transaction_control:
            close_run()
            continue
        if not statement.in_transaction:
            run.append(statement)
            continue
        close_run()
        if statement.non_transactional:
            inserts.append(
                (
                    statement.start,
                    "-- WARNING: the next statement cannot run inside a transaction, and this one is "
                    "inside one:\n-- it fails here; its revision must put it in an autocommit_block.\n",
                )
            )
    close_run()
    if not inserts:
        return text
    out, last = [], 0
    for position, note in sorted(inserts, key=lambda item: item[0]):
        out.append(text[last:position])
        out.append(note)
        last = position
    out.append(text[last:])
    summary = (
        f"-- This script has {len(sections)} non-transactional section(s) ({', '.join(sections)}), "
        "marked below.\n-- Run each of them outside any transaction, in order, then go on with the "
        "script.\n\n"
        if sections
        else ""
    )
    return summary + "".join(out)


def _header(label: str) -> str:
    rule = "-- " + "=" * 76
    return (
        f"{rule}\n"
        f"-- NON-TRANSACTIONAL SECTION of {label}: these statements cannot run inside a\n"
        "-- transaction. Run them one at a time, outside BEGIN/COMMIT (psql without -1 or\n"
        "-- --single-transaction; Supabase's SQL editor runs a paste in one transaction, where\n"
        "-- they fail). The revision's transaction resumes at the BEGIN after this section.\n"
        f"{rule}\n"
    )
