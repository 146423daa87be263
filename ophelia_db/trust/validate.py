"""`validate`: every instance's history against the chain, read-only.

Each applied revision's recorded checksum against its file (each mismatch
named with the revision, the file and both checksums), a revision unknown to
the code (``ahead``), several heads, and every way the mirror can disagree
with ``alembic_version``: the findings of ``run.state.check``, the one
integrity checker that ``status`` and ``upgrade`` use too. It never changes
anything; ``repair`` does, on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

from ophelia_db.errors import ExitCode, OpheliaError, combine_exit_codes
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.results import Record
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.state import Finding, InstanceState, check
from ophelia_db.run.status import probe_all


@dataclass(frozen=True)
class InstanceValidation(Record):
    """``state`` is ``valid``, the first finding's kind, ``unreachable`` or ``error``."""

    name: str
    role: str
    state: str
    current: str | None = None
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    exit_code: int = ExitCode.OK


@dataclass(frozen=True)
class ValidationReport(Record):
    head: str | None
    instances: tuple[InstanceValidation, ...]

    @property
    def exit_code(self) -> int:
        """0 when every instance is valid; else the failures' common code (4 for integrity), or 7."""
        return combine_exit_codes([i.exit_code for i in self.instances])


def validate_one(target: Target, state: InstanceState | OpheliaError, chain: Chain) -> InstanceValidation:
    if isinstance(state, OpheliaError):
        kind = "unreachable" if state.exit_code == ExitCode.UNREACHABLE else "error"
        return InstanceValidation(
            target.name, target.role, kind, error=state.message, exit_code=state.exit_code
        )
    findings = tuple(check(state, chain, target.name))
    if not findings:
        return InstanceValidation(target.name, target.role, "valid", current=state.revision)
    return InstanceValidation(
        target.name,
        target.role,
        findings[0].kind,
        current=state.revision,
        findings=findings,
        exit_code=ExitCode.INTEGRITY,
    )


def validate(fleet: Fleet, targets: list[Target], *, chain: Chain | None = None) -> ValidationReport:
    """Check each target's history against the chain; read-only, one round trip per instance."""
    chain = chain or chain_for()
    states = probe_all(targets, per_host=fleet.defaults.per_host)
    rows = tuple(validate_one(t, states[t.name], chain) for t in targets)
    return ValidationReport(head=chain.head, instances=rows)
