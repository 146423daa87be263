"""`resolve`: the operator's decision about an interrupted non-transactional section (exit 6).

A revision's ``autocommit_block`` cannot be rolled back; when a run dies in it
the instance carries a marker (``run.mirror``) and every run refuses it until
someone looked. ``--retry`` drops what such a section leaves behind (indexes
left INVALID by an interrupted ``CREATE INDEX CONCURRENTLY``) and clears the
marker, so that the next upgrade runs the revision again; ``--applied`` says
its effects are all there and records the revision as applied, without running
it. Either way, under the migration lock, and logged like ``repair``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import connect, sql_identifier
from ophelia_db.fleet.lock import migration_lock
from ophelia_db.results import Record
from ophelia_db.run import marker, mirror
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.mirror import applied_by
from ophelia_db.run.state import read_state
from ophelia_db.trust.repair import log_repair


class Decision(StrEnum):
    RETRY = "retry"
    APPLIED = "applied"


@dataclass(frozen=True)
class Resolution(Record):
    instance: str
    revision: str
    decision: Decision
    dropped_indexes: tuple[str, ...] = ()
    performed_by: str = ""

    @property
    def exit_code(self) -> int:
        return 0


def resolve(
    target: Target,
    revision: str,
    decision: Decision,
    *,
    reason: str | None = None,
    chain: Chain | None = None,
    by: str | None = None,
) -> Resolution:
    """Record the decision about ``revision``'s interrupted section on ``target``."""
    chain = chain or chain_for()
    wanted = chain.resolve(revision)
    by = by or applied_by()
    with migration_lock(target), connect(target) as conn:
        state = read_state(conn)
        step = next((s for s in state.interrupted if s.revision == wanted), None)
        if step is None:
            marked = ", ".join(s.revision for s in state.interrupted) or "none"
            raise ConfigError(
                f"{target.name}: revision {wanted} has no interrupted non-transactional section "
                f"(interrupted here: {marked}); nothing was changed"
            )
        if decision == Decision.APPLIED and chain.between(state.revision, wanted) != [wanted]:
            raise ConfigError(
                f"{target.name}: the instance is at {state.revision or 'base'}, so {wanted} is not the next "
                "revision; --applied can only record the next one; nothing was changed"
            )
        with conn.transaction():
            if decision == Decision.RETRY:
                for index in step.invalid_indexes:
                    conn.execute(f"DROP INDEX IF EXISTS {sql_identifier(*index.split('.', 1))}")  # type: ignore[arg-type]
            else:
                _record_applied(conn, chain, wanted or "", target, by)
            marker.clear_nontransactional(conn)
            details = {"decision": str(decision), "reason": reason, "dropped": list(step.invalid_indexes)}
            log_repair(conn, by, f"resolve-{decision}", wanted, details)
    dropped = step.invalid_indexes if decision == Decision.RETRY else ()
    return Resolution(target.name, wanted or "", decision, dropped, by)


def _record_applied(conn: object, chain: Chain, revision: str, target: Target, by: str) -> None:
    mirror.stamp_alembic_version(conn, revision)
    mirror.add_history_row(conn, chain.get(revision), f"{by} (resolve: applied)")
    mirror.set_current_version(conn, revision, target.name)
