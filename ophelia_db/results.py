"""Results of library calls, as plain data for renderers and Python callers.

This module owns the frozen result types (``StatusReport``, ``RunReport``,
``SyncReport``, ``HistoryReport``), their JSON records (docs/design.md §3 shapes) and
the exit code each one implies. It imports nothing but ``errors``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, ClassVar, Protocol

from ophelia_db.errors import ExitCode, OpheliaError, combine_exit_codes


class State(StrEnum):
    """Where an instance stands against the chain (``status``, docs/design.md §3)."""

    UP_TO_DATE = "up-to-date"
    OUTDATED = "outdated"
    UNVERSIONED = "unversioned"
    AHEAD = "ahead"
    CHECKSUM_MISMATCH = "checksum-mismatch"
    MIRROR_MISMATCH = "mirror-mismatch"
    LOCKED = "locked"
    UNREACHABLE = "unreachable"
    ERROR = "error"
    NEEDS_ATTENTION = "needs-attention"


class Outcome(StrEnum):
    """What a run did to an instance (``upgrade``/``downgrade``, docs/design.md §3)."""

    OK = "ok"
    NOOP = "noop"
    PLANNED = "planned"
    FAILED = "failed"
    REFUSED = "refused"
    LOCKED = "locked"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"


# Outcomes that count as success: nothing is wrong with the instance.
SUCCESSFUL = frozenset({Outcome.OK, Outcome.NOOP, Outcome.PLANNED, Outcome.SKIPPED})
_OUTCOME_OF_CODE = {
    ExitCode.USAGE: Outcome.REFUSED,
    ExitCode.LOCKED: Outcome.LOCKED,
    ExitCode.INTEGRITY: Outcome.REFUSED,
    ExitCode.REVISION_FAILED: Outcome.FAILED,
    ExitCode.NEEDS_ATTENTION: Outcome.FAILED,
    ExitCode.UNREACHABLE: Outcome.UNREACHABLE,
}


class Named(Protocol):
    """What a result needs of a fleet member (``fleet.config.Target`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


def ms_since(started: float | None) -> int:
    return int((time.monotonic() - started) * 1000) if started is not None else 0


# status --check: states that only mean "not migrated yet" exit 1; a broken or
# unreachable instance keeps its own, more serious code.
_STATE_CODES: dict[str, ExitCode] = {
    State.UP_TO_DATE: ExitCode.OK,
    State.OUTDATED: ExitCode.NOT_AT_HEAD,
    State.UNVERSIONED: ExitCode.NOT_AT_HEAD,
    State.AHEAD: ExitCode.INTEGRITY,
    State.CHECKSUM_MISMATCH: ExitCode.INTEGRITY,
    State.MIRROR_MISMATCH: ExitCode.INTEGRITY,
    State.LOCKED: ExitCode.LOCKED,
    State.UNREACHABLE: ExitCode.UNREACHABLE,
    State.ERROR: ExitCode.USAGE,
    State.NEEDS_ATTENTION: ExitCode.NEEDS_ATTENTION,
}


def state_exit_code(state: str) -> int:
    """The exit code an instance in ``state`` gives ``status --check`` and a refused run."""
    return _STATE_CODES.get(state, ExitCode.INTERNAL)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def jsonable(value: Any) -> Any:
    """A result field as JSON: records nested, tuples as lists, datetimes in ISO 8601, enums by value."""
    if hasattr(value, "as_record"):
        return value.as_record()
    if isinstance(value, tuple | list):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


class Record:
    """A result dataclass whose JSON record is derived from its fields, in their order.

    ``json_names`` renames fields, ``json_hidden`` leaves fields out, and
    ``json_omit_empty`` leaves a field out when it is empty or ``None``, and
    ``json_extra`` appends properties; the records keep the shapes documented
    in docs/design.md §3.
    """

    json_names: ClassVar[dict[str, str]] = {}
    json_hidden: ClassVar[frozenset[str]] = frozenset()
    json_omit_empty: ClassVar[frozenset[str]] = frozenset()
    json_extra: ClassVar[tuple[str, ...]] = ()

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for item in fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if item.name in self.json_hidden or (item.name in self.json_omit_empty and not value):
                continue
            record[self.json_names.get(item.name, item.name)] = jsonable(value)
        for name in self.json_extra:
            record[name] = jsonable(getattr(self, name))
        return record


@dataclass(frozen=True)
class InstanceStatus(Record):
    json_omit_empty: ClassVar[frozenset[str]] = frozenset({"registry_status", "registry_version"})

    name: str
    role: str
    state: str
    current: str | None = None
    pending: tuple[str, ...] = ()
    migrations_count: int | None = None
    updated_at: datetime | None = None
    error: str | None = None
    registry_status: str | None = None
    # The version the hub registry holds for it, when that is not what the instance itself says
    # (a missed report, an out-of-band change): `sync` writes the live one.
    registry_version: str | None = None

    @property
    def registry_disagrees(self) -> bool:
        return self.registry_version is not None

    @property
    def exit_code(self) -> int:
        return (
            _STATE_CODES.get(State(self.state), ExitCode.INTERNAL)
            if self.state in _STATE_CODES
            else ExitCode.INTERNAL
        )


@dataclass(frozen=True)
class StatusReport(Record):
    head: str | None
    instances: tuple[InstanceStatus, ...]

    def exit_code(self, check: bool = False) -> int:
        """0 when all are at head; with ``--check`` 1 when some are merely behind."""
        # Archived and suspended instances are left alone by `upgrade --all`: shown, not counted.
        # Archived and suspended instances are left alone by `upgrade --all`: shown, not counted.
        # A registry that disagrees is shown too; `instances --check` is the check that counts it.
        codes = [i.exit_code for i in self.instances if i.registry_status not in ("archived", "suspended")]
        if not check:
            codes = [c for c in codes if c != ExitCode.NOT_AT_HEAD]
        return combine_exit_codes(codes, findings=True)


@dataclass(frozen=True)
class InstanceResult(Record):
    json_names: ClassVar[dict[str, str]] = {"from_revision": "from", "to_revision": "to"}
    json_hidden: ClassVar[frozenset[str]] = frozenset(
        {"migrations_count", "updated_at", "schema_fingerprint"}
    )
    json_omit_empty: ClassVar[frozenset[str]] = frozenset({"reverted"})

    name: str
    role: str
    result: str
    from_revision: str | None = None
    to_revision: str | None = None
    applied: tuple[str, ...] = ()
    duration_ms: int = 0
    exit_code: int = ExitCode.OK
    error: str | None = None
    migrations_count: int | None = None
    updated_at: datetime | None = None
    reverted: tuple[str, ...] = ()
    schema_fingerprint: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == ExitCode.OK

    @classmethod
    def of(
        cls, target: Named, result: Outcome, *, started: float | None = None, **fields: Any
    ) -> InstanceResult:
        return cls(name=target.name, role=target.role, result=result, duration_ms=ms_since(started), **fields)

    @classmethod
    def from_error(
        cls, target: Named, error: OpheliaError, started: float | None = None, **known: Any
    ) -> InstanceResult:
        """An expected error as this instance's result."""
        outcome = _OUTCOME_OF_CODE.get(ExitCode(error.exit_code), Outcome.FAILED)
        return cls.of(
            target, outcome, started=started, exit_code=error.exit_code, error=error.message, **known
        )

    @classmethod
    def refused(
        cls,
        target: Named,
        problem: str,
        started: float | None = None,
        code: int = ExitCode.INTEGRITY,
        **known: Any,
    ) -> InstanceResult:
        return cls.of(
            target,
            Outcome.REFUSED,
            started=started,
            exit_code=code,
            error=f"{target.name}: {problem}; nothing was changed",
            **known,
        )

    @classmethod
    def skipped(cls, target: Named, why: str, code: int = ExitCode.MIXED) -> InstanceResult:
        return cls.of(target, Outcome.SKIPPED, exit_code=code, error=why)


@dataclass(frozen=True)
class RunReport(Record):
    """The outcome of ``upgrade``/``downgrade`` over a selection."""

    json_hidden: ClassVar[frozenset[str]] = frozenset({"interrupted", "inactive", "dry_run"})
    json_omit_empty: ClassVar[frozenset[str]] = frozenset({"hub_error", "journal_local"})

    run_id: str
    target: str
    instances: tuple[InstanceResult, ...]
    hub_report: str = "ok"
    hub_error: str | None = None
    interrupted: int | None = None
    # Instances left out because the hub marks them archived or suspended.
    inactive: tuple[str, ...] = ()
    dry_run: bool = False
    # The local journal file, when the hub could not take the run's journal (`sync` pushes it).
    journal_local: str | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return self.interrupted
        code = combine_exit_codes([int(i.exit_code) for i in self.instances])
        if code == ExitCode.OK and self.hub_report != "ok":
            return ExitCode.MIXED
        return code


@dataclass(frozen=True)
class SyncReport(Record):
    """The outcome of ``sync``: each instance's version as pushed to the hub."""

    json_omit_empty: ClassVar[frozenset[str]] = frozenset({"hub_error", "journals_pushed"})

    instances: tuple[InstanceStatus, ...]
    hub_report: str
    hub_error: str | None = None
    # Runs whose locally kept journal this sync pushed to the hub.
    journals_pushed: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        if self.hub_report == "failed":
            return ExitCode.UNREACHABLE  # pushing to the hub is what sync is for
        codes = [ExitCode.UNREACHABLE if i.state == "unreachable" else ExitCode.OK for i in self.instances]
        if self.hub_report != "ok":
            codes.append(ExitCode.UNREACHABLE)
        return combine_exit_codes(codes)


@dataclass(frozen=True)
class HistoryEntry(Record):
    version: str
    name: str
    state: str
    applied_at: datetime | None = None
    checksum: str | None = None
    execution_time_ms: int | None = None
    applied_by: str | None = None


@dataclass(frozen=True)
class HistoryReport(Record):
    json_names: ClassVar[dict[str, str]] = {"entries": "migrations"}

    name: str
    current: str | None
    head: str | None
    entries: tuple[HistoryEntry, ...]


# The run journal (`runs`, `runs show`).


@dataclass(frozen=True)
class JournalEntry(Record):
    """One instance's line of a run, as the journal holds it."""

    json_names: ClassVar[dict[str, str]] = {"from_revision": "from", "to_revision": "to"}

    instance: str
    state: str
    shard: int = 1
    wave: int = 1
    from_revision: str | None = None
    to_revision: str | None = None
    applied: tuple[str, ...] = ()
    duration_ms: int | None = None
    exit_code: int | None = None
    error: str | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class JournalShard(Record):
    """One shard of a run: ``finished``, ``unfinished`` (running, or stopped) or ``never-started``."""

    shard: int
    state: str
    started_by: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class JournalRun(Record):
    """A run of the journal: what it was, who ran it, how it stands (``ok``, ``failed``, ``unfinished``)."""

    run_id: str
    command: str
    target: str
    outcome: str
    started_at: datetime | None
    finished_at: datetime | None = None
    started_by: str | None = None
    git_sha: str | None = None
    ci_job_url: str | None = None
    shard_count: int = 1
    resumes: str | None = None
    counts: dict[str, int] | None = None
    source: str = "hub"


@dataclass(frozen=True)
class RunsReport(Record):
    """`runs`: the recent runs, newest first; ``local`` names journals the hub has not got yet."""

    runs: tuple[JournalRun, ...]
    local: tuple[str, ...] = ()
    exit_code: int = ExitCode.OK


@dataclass(frozen=True)
class RunDetail(Record):
    """`runs show RUN`: a run across all its shards, per instance."""

    run: JournalRun
    shards: tuple[JournalShard, ...]
    instances: tuple[JournalEntry, ...]
    exit_code: int = ExitCode.OK
