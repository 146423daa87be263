"""Exit codes and the exception family that carries them.

This module owns the one table of exit codes (docs/design.md §3) and the root
exception, ``OpheliaError``. Every user-facing failure in the library is a
subclass carrying its exit code; the CLI translates them in one place.
Anything that is not an ``OpheliaError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from ophelia_db.redaction import redact


class ExitCode(IntEnum):
    """Process exit codes, as documented in docs/design.md §3."""

    OK = 0
    NOT_AT_HEAD = 1
    USAGE = 2
    LOCKED = 3
    INTEGRITY = 4
    REVISION_FAILED = 5
    NEEDS_ATTENTION = 6
    MIXED = 7
    UNREACHABLE = 8
    INTERNAL = 70
    SIGINT = 130
    SIGTERM = 143


class OpheliaError(Exception):
    """Root of every expected failure; its message is redacted on creation."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(OpheliaError):
    """Usage or configuration refused (bad flag, bad fleet.toml, unknown instance)."""

    exit_code = ExitCode.USAGE


class ClusterError(OpheliaError):
    """The embedded local PostgreSQL cannot be created, started or stopped."""

    exit_code = ExitCode.USAGE


class LockedError(OpheliaError):
    """Another runner holds the instance's migration lock, or lock retries ran out."""

    exit_code = ExitCode.LOCKED


class IntegrityRefusal(OpheliaError):
    """The database's history does not match the code; nothing was changed."""

    exit_code = ExitCode.INTEGRITY


class NeedsAttention(OpheliaError):
    """A non-transactional step was interrupted and needs an operator."""

    exit_code = ExitCode.NEEDS_ATTENTION


class UnreachableError(OpheliaError):
    """An instance or the hub cannot be reached, or authentication/TLS failed."""

    exit_code = ExitCode.UNREACHABLE


def combine_exit_codes(codes: Sequence[int], *, findings: bool = False) -> int:
    """The one rule for a command over several instances (docs/design.md §3).

    One instance → its code; all succeeded → 0; all failed the same way → that
    code; anything else → 7. For the checks (``status --check``, ``drift``)
    ``findings`` makes "some are fine, the others merely behind or drifted" 1,
    which is what those commands report.
    """
    if not codes or all(code == ExitCode.OK for code in codes):
        return ExitCode.OK
    if findings and all(code in (ExitCode.OK, ExitCode.NOT_AT_HEAD) for code in codes):
        return ExitCode.NOT_AT_HEAD
    distinct = set(codes)
    if len(distinct) == 1:
        return codes[0]
    return ExitCode.MIXED
