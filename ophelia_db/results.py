"""Results of library calls, as plain data for renderers and Python callers.

This module owns the frozen result types (``StatusReport``, ``RunReport``,
``SyncReport``, ``HistoryReport``), their JSON records (DESIGN §3 shapes) and
the exit code each one implies. It imports nothing but ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ophelia_db.errors import ExitCode, combine_exit_codes

STATES_AT_HEAD = {"up-to-date"}
# status --check: states that only mean "not migrated yet" exit 1; a broken or
# unreachable instance keeps its own, more serious code.
_STATE_CODES = {
    "up-to-date": ExitCode.OK,
    "outdated": ExitCode.NOT_AT_HEAD,
    "unversioned": ExitCode.NOT_AT_HEAD,
    "ahead": ExitCode.INTEGRITY,
    "checksum-mismatch": ExitCode.INTEGRITY,
    "mirror-mismatch": ExitCode.INTEGRITY,
    "locked": ExitCode.LOCKED,
    "unreachable": ExitCode.UNREACHABLE,
    "error": ExitCode.USAGE,
}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass(frozen=True)
class InstanceStatus:
    name: str
    role: str
    state: str
    current: str | None = None
    pending: tuple[str, ...] = ()
    migrations_count: int | None = None
    updated_at: datetime | None = None
    error: str | None = None
    registry_status: str | None = None

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "state": self.state,
            "current": self.current,
            "pending": list(self.pending),
            "migrations_count": self.migrations_count,
            "updated_at": _iso(self.updated_at),
            "error": self.error,
        }
        if self.registry_status is not None:
            record["registry_status"] = self.registry_status
        return record

    @property
    def exit_code(self) -> int:
        return _STATE_CODES.get(self.state, ExitCode.INTERNAL)


@dataclass(frozen=True)
class StatusReport:
    head: str | None
    instances: tuple[InstanceStatus, ...]

    def as_record(self) -> dict[str, Any]:
        return {"head": self.head, "instances": [i.as_record() for i in self.instances]}

    def exit_code(self, check: bool = False) -> int:
        """0 when all are at head; with ``--check`` 1 when some are merely behind."""
        # Archived and suspended instances are left alone by `upgrade --all`: shown, not counted.
        codes = [i.exit_code for i in self.instances if i.registry_status not in ("archived", "suspended")]
        if not check:
            codes = [c for c in codes if c != ExitCode.NOT_AT_HEAD]
        if not codes:
            return ExitCode.OK
        worst = combine_exit_codes(codes)
        if worst == ExitCode.MIXED and all(c in (0, 1) for c in codes):
            return ExitCode.NOT_AT_HEAD
        return worst


@dataclass(frozen=True)
class InstanceResult:
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

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "result": self.result,
            "from": self.from_revision,
            "to": self.to_revision,
            "applied": list(self.applied),
            "duration_ms": self.duration_ms,
            "exit_code": int(self.exit_code),
            "error": self.error,
        }
        if self.reverted:
            record["reverted"] = list(self.reverted)
        return record


@dataclass(frozen=True)
class RunReport:
    """The outcome of ``upgrade``/``downgrade`` over a selection."""

    run_id: str
    target: str
    instances: tuple[InstanceResult, ...]
    hub_report: str = "ok"
    hub_error: str | None = None
    interrupted: int | None = None

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "run_id": self.run_id,
            "target": self.target,
            "instances": [i.as_record() for i in self.instances],
            "hub_report": self.hub_report,
        }
        if self.hub_error:
            record["hub_error"] = self.hub_error
        return record

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return self.interrupted
        code = combine_exit_codes([int(i.exit_code) for i in self.instances])
        if code == ExitCode.OK and self.hub_report != "ok":
            return ExitCode.MIXED
        return code


@dataclass(frozen=True)
class SyncReport:
    """The outcome of ``sync``: each instance's version as pushed to the hub."""

    instances: tuple[InstanceStatus, ...]
    hub_report: str
    hub_error: str | None = None

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "instances": [i.as_record() for i in self.instances],
            "hub_report": self.hub_report,
        }
        if self.hub_error:
            record["hub_error"] = self.hub_error
        return record

    @property
    def exit_code(self) -> int:
        if self.hub_report != "ok":
            return ExitCode.UNREACHABLE if self.hub_report == "failed" else ExitCode.MIXED
        codes = [ExitCode.UNREACHABLE if i.state == "unreachable" else ExitCode.OK for i in self.instances]
        return combine_exit_codes(codes)


@dataclass(frozen=True)
class HistoryEntry:
    version: str
    name: str
    state: str
    applied_at: datetime | None = None
    checksum: str | None = None
    execution_time_ms: int | None = None
    applied_by: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "state": self.state,
            "applied_at": _iso(self.applied_at),
            "checksum": self.checksum,
            "execution_time_ms": self.execution_time_ms,
            "applied_by": self.applied_by,
        }


@dataclass(frozen=True)
class HistoryReport:
    name: str
    current: str | None
    head: str | None
    entries: tuple[HistoryEntry, ...]

    def as_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current": self.current,
            "head": self.head,
            "migrations": [e.as_record() for e in self.entries],
        }
