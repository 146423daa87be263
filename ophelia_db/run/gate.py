"""`gate --requires REV`: may the app version that needs revision REV be deployed?

Yes (exit 0) when every active instance is at or past REV; otherwise no
(exit 1), naming each instance below it and why: behind, being migrated
(locked), unreachable, or at a revision this code does not know. It reads the
live instances (the truth), or with ``from_registry`` only the hub registry
(one query, for a cheap pre-deploy check that trusts the reports).
Archived and suspended instances are left out, as ``upgrade --all`` leaves them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ophelia_db.errors import ExitCode, UnreachableError
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.hub import RegistryRow, registry_rows
from ophelia_db.results import InstanceStatus, Record
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.status import status

_INACTIVE = ("archived", "suspended")


@dataclass(frozen=True)
class GateInstance(Record):
    """One instance against the gate: at or past the required revision, or why not."""

    name: str
    passed: bool
    current: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class GateReport(Record):
    """`gate --requires REV`: 0 when every active instance is at or past ``revision``, else 1."""

    requires: str
    revision: str | None
    source: str
    instances: tuple[GateInstance, ...]

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if all(i.passed for i in self.instances) else ExitCode.NOT_AT_HEAD


def gate(
    fleet: Fleet,
    targets: list[Target],
    *,
    requires: str,
    from_registry: bool = False,
    chain: Chain | None = None,
) -> GateReport:
    """Tell whether every active selected instance is at or past ``requires`` (an id or ``head``)."""
    chain = chain or chain_for()
    revision = chain.resolve(requires)
    if from_registry:
        registry = registry_rows(fleet.hub)
        if registry is None:
            raise UnreachableError(
                f"{fleet.hub.name}: cannot read the hub registry; check the hub, or gate on the live "
                "instances (without --from-registry)"
            )
        rows = [_from_registry(t, registry.get(t.name), revision, chain) for t in targets]
        source = "registry"
    else:
        report = status(fleet, targets, chain=chain)
        rows = [_from_live(row, revision, chain) for row in report.instances]
        source = "live"
    kept = tuple(row for row in rows if row is not None)
    return GateReport(requires=requires, revision=revision, source=source, instances=kept)


def _verdict(name: str, current: str | None, revision: str | None, chain: Chain) -> GateInstance:
    if current is not None and not chain.knows(current):
        why = f"at {current}, which this code does not know (ahead of it, or from another chain)"
        return GateInstance(name, False, current, why)
    if revision is None or (current is not None and not chain.is_after(revision, current)):
        return GateInstance(name, True, current)
    return GateInstance(name, False, current, f"behind: at {current or 'base'}, needs {revision}")


def _from_live(row: InstanceStatus, revision: str | None, chain: Chain) -> GateInstance | None:
    if row.registry_status in _INACTIVE:
        return None
    if row.state in ("unreachable", "error"):
        return GateInstance(row.name, False, None, f"{row.state}: {row.error}")
    verdict = _verdict(row.name, row.current, revision, chain)
    if not verdict.passed and row.state == "locked":
        return GateInstance(row.name, False, row.current, f"{verdict.reason}; being migrated (locked)")
    return verdict


def _from_registry(
    target: Target, row: RegistryRow | None, revision: str | None, chain: Chain
) -> GateInstance | None:
    if row is None:
        return GateInstance(target.name, False, None, "not in the hub registry")
    if row.status in _INACTIVE:
        return None
    verdict = _verdict(target.name, row.schema_version, revision, chain)
    if not verdict.passed:
        return GateInstance(target.name, False, row.schema_version, f"{verdict.reason} (per the registry)")
    return verdict
