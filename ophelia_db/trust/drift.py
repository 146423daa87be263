"""`drift`: each instance's live schema against the reference of the revision it records.

Instances are grouped by schema fingerprint ("47 identical, 3 differ"), so
that a fleet's outliers stand out. References come from
``reference.build_references``; catalogs are compared by ``fleet.catalog``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ophelia_db.errors import ExitCode, OpheliaError, combine_exit_codes
from ophelia_db.fleet.catalog import Difference, Snapshot, diff, snapshot
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import connect
from ophelia_db.results import Record
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.state import InstanceState, read_state
from ophelia_db.trust.reference import References


@dataclass(frozen=True)
class InstanceDrift(Record):
    """``state``: ``identical``, ``drifted``, ``ahead``, ``unreachable`` or ``error``."""

    name: str
    role: str
    state: str
    revision: str | None = None
    fingerprint: str | None = None
    differences: tuple[Difference, ...] = ()
    error: str | None = None
    exit_code: int = ExitCode.OK


@dataclass(frozen=True)
class FingerprintGroup:
    fingerprint: str
    instances: tuple[str, ...]
    revision: str | None
    identical: bool

    def as_record(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "revision": self.revision,
            "identical_to_reference": self.identical,
            "instances": list(self.instances),
        }


@dataclass(frozen=True)
class DriftReport:
    instances: tuple[InstanceDrift, ...]

    @property
    def groups(self) -> tuple[FingerprintGroup, ...]:
        by_print: dict[str, list[InstanceDrift]] = {}
        for row in self.instances:
            if row.fingerprint:
                by_print.setdefault(row.fingerprint, []).append(row)
        groups = [
            FingerprintGroup(
                fingerprint=fp,
                instances=tuple(r.name for r in rows),
                revision=rows[0].revision,
                identical=all(r.state == "identical" for r in rows),
            )
            for fp, rows in by_print.items()
        ]
        return tuple(sorted(groups, key=lambda g: (-len(g.instances), g.fingerprint)))

    @property
    def summary(self) -> str:
        same = sum(1 for r in self.instances if r.state == "identical")
        differ = sum(1 for r in self.instances if r.state == "drifted")
        others = len(self.instances) - same - differ
        return f"{same} identical, {differ} differ" + (f", {others} not compared" if others else "")

    @property
    def exit_code(self) -> int:
        """0 when none drift; 1 when some drift (and nothing worse); a failure's code otherwise."""
        return combine_exit_codes([r.exit_code for r in self.instances], findings=True)

    def as_record(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "instances": [r.as_record() for r in self.instances],
            "groups": [g.as_record() for g in self.groups],
        }


def drift(
    targets: list[Target],
    references: References | Callable[[], References],
    *,
    chain: Chain | None = None,
    threads: int = 8,
) -> DriftReport:
    """Compare each target's live schema with the reference for the revision it records.

    ``references`` may be a callable, so they are built only when some
    instance could be reached.
    """
    chain = chain or chain_for()
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(targets)))) as pool:
        reads = list(pool.map(_read_live, targets))
    refs: References | None = None
    rows = []
    for target, read in zip(targets, reads, strict=True):
        if isinstance(read, OpheliaError):
            kind = "unreachable" if read.exit_code == ExitCode.UNREACHABLE else "error"
            rows.append(
                InstanceDrift(target.name, target.role, kind, error=read.message, exit_code=read.exit_code)
            )
            continue
        state, live = read
        revision = state.revision
        if len(state.heads) > 1 or (revision is not None and not chain.knows(revision)):
            rows.append(
                InstanceDrift(
                    target.name,
                    target.role,
                    "ahead" if len(state.heads) == 1 else "error",
                    revision=revision,
                    fingerprint=live.fingerprint,
                    error=f"revision {', '.join(state.heads)} is unknown to this code: "
                    "there is no reference to compare with",
                    exit_code=ExitCode.INTEGRITY,
                )
            )
            continue
        if refs is None:
            refs = references() if callable(references) else references
        differences = tuple(diff(refs.of(revision), live))
        rows.append(
            InstanceDrift(
                target.name,
                target.role,
                "drifted" if differences else "identical",
                revision=revision,
                fingerprint=live.fingerprint,
                differences=differences,
                exit_code=ExitCode.NOT_AT_HEAD if differences else ExitCode.OK,
            )
        )
    return DriftReport(instances=tuple(rows))


def _read_live(target: Target) -> tuple[InstanceState, Snapshot] | OpheliaError:
    try:
        with connect(target, autocommit=True) as conn:
            return read_state(conn), snapshot(conn)
    except OpheliaError as error:
        return error
