"""`adopt`: stamp a hand-migrated database with the revision its schema matches.

For a database that has the chain's schema but no
``alembic_version``: find the newest revision whose reference schema the live
schema matches exactly, show the evidence, and only when asked stamp it
(``alembic_version`` plus baseline history rows, applied_by
``ophelia-db adopt (baseline) …``) under the migration lock, never running a
revision's DDL. References come from ``reference.build_references``; the stamp
itself is written by ``run.mirror`` and logged by ``repair.log_repair``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ophelia_db.errors import ConfigError, ExitCode, IntegrityRefusal
from ophelia_db.fleet.catalog import Difference, Snapshot, diff, snapshot
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import connect
from ophelia_db.fleet.lock import migration_lock
from ophelia_db.results import Record
from ophelia_db.run import mirror
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.mirror import applied_by
from ophelia_db.run.state import InstanceState, read_state
from ophelia_db.trust.reference import BASE, References
from ophelia_db.trust.repair import log_repair

BASELINE_MARK = "ophelia-db adopt (baseline)"
_SHOWN = 3


@dataclass(frozen=True)
class AdoptionPlan(Record):
    """What adoption found on one instance and what stamping would write.

    ``revision`` is the revision to stamp (``None``: the database holds none
    of the chain's objects, so there is nothing to adopt). ``matched`` says
    the live schema equals that revision's reference; otherwise
    ``differences`` lists why, and stamping needs ``--at``.
    """

    json_names: ClassVar[dict[str, str]] = {
        "add_rows": "add_history_rows",
        "remove_rows": "remove_history_rows",
    }

    instance: str
    revision: str | None
    matched: bool
    forced: bool
    fingerprint: str
    differences: tuple[Difference, ...]
    evidence: tuple[str, ...]
    add_rows: tuple[str, ...] = ()
    remove_rows: tuple[str, ...] = ()
    stamped: bool = False

    @property
    def stampable(self) -> bool:
        return self.revision is not None and (self.matched or self.forced)

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if self.matched or self.forced else ExitCode.INTEGRITY


def examine(
    target: Target, references: References, *, at: str | None = None, stamp: bool = False
) -> AdoptionPlan:
    """Plan the adoption of ``target`` and, with ``stamp``, stamp it when the plan allows."""
    plan = plan_adoption(target, references, at=at)
    return adopt(target, plan, references) if stamp and plan.stampable else plan


def plan_adoption(
    target: Target, references: References, *, at: str | None = None, chain: Chain | None = None
) -> AdoptionPlan:
    """Compare the live schema with every revision's reference; changes nothing."""
    chain = chain or chain_for()
    forced_revision = chain.resolve(at) if at is not None else None
    if at is not None and forced_revision is None:
        raise ConfigError("--at base would stamp nothing; run upgrade instead")
    with connect(target, autocommit=True) as conn:
        state = read_state(conn)
        live = snapshot(conn)
    _refuse_versioned(target, state)
    return _plan(target, state, live, references, chain, forced_revision)


def _refuse_versioned(target: Target, state: InstanceState) -> None:
    if state.heads:
        raise ConfigError(
            f"{target.name} already has alembic_version at {', '.join(state.heads)}; adopt is for "
            f"databases without one (see `ophelia-db validate --instance {target.name}` and `drift`)"
        )


def _plan(
    target: Target,
    state: InstanceState,
    live: Snapshot,
    references: References,
    chain: Chain,
    forced: str | None,
) -> AdoptionPlan:
    found = {revision: diff(references.snapshots[revision], live) for revision in references.order}
    exact = [revision for revision in references.order if not found[revision]]
    evidence = [f"live schema fingerprint {live.fingerprint} ({_counts(live)})"]
    if forced is not None:
        chosen: str | None = forced
        matched = not found[forced]
        evidence.append(
            f"--at {forced}: the live schema "
            + (
                "matches its reference exactly"
                if matched
                else f"differs from its reference in {len(found[forced])} ways"
            )
        )
    elif exact:
        chosen = None if exact[-1] == BASE else exact[-1]
        matched = True
        evidence.extend(_match_evidence(chosen, exact, found, references))
    else:
        closest = min(references.order, key=lambda r: (len(found[r]), -references.order.index(r)))
        chosen = None if closest == BASE else closest
        matched = False
        evidence.append(
            f"no revision matches exactly; the closest is {closest} with {len(found[closest])} "
            "differences (listed below); fix them, or force a revision with --at REV"
        )
    differences = tuple(found[chosen or BASE])
    expected = chain.applied_through(chosen)
    recorded = [version for version, _ in state.history]
    return AdoptionPlan(
        instance=target.name,
        revision=chosen,
        matched=matched,
        forced=forced is not None,
        fingerprint=live.fingerprint,
        differences=differences,
        evidence=tuple(evidence),
        add_rows=tuple(v for v in expected if v not in recorded) if state.has_mirror else (),
        remove_rows=tuple(v for v in recorded if v not in expected),
    )


def _counts(shot: Snapshot) -> str:
    counts = shot.counts()
    plurals = {
        "table": "tables",
        "column": "columns",
        "index": "indexes",
        "function": "functions",
        "policy": "policies",
        "grant": "grants",
    }
    return ", ".join(f"{counts[c]} {word}" for c, word in plurals.items())


def _match_evidence(
    chosen: str | None, exact: list[str], found: dict[str, list[Difference]], references: References
) -> list[str]:
    label = chosen or BASE
    lines = [f"matches the reference schema of {label} exactly ({_counts(references.snapshots[label])})"]
    if chosen is None:
        lines.append("the database holds none of the chain's objects: nothing to adopt; run upgrade")
    same = [r for r in exact if r != label]
    if same:
        lines.append(
            f"warning: {', '.join(same)} leave(s) the same schema as {label}; adopting at the newest "
            f"assumes {label} ran (use --at to choose another)"
        )
    position = references.order.index(label)
    if position + 1 < len(references.order):
        following = references.order[position + 1]
        shown = "; ".join(d.describe() for d in found[following][:_SHOWN])
        more = len(found[following]) - _SHOWN
        lines.append(
            f"not at {following}: {len(found[following])} difference(s), e.g. {shown}"
            + (f" (and {more} more)" if more > 0 else "")
        )
    return lines


def adopt(
    target: Target,
    plan: AdoptionPlan,
    references: References,
    *,
    chain: Chain | None = None,
    by: str | None = None,
) -> AdoptionPlan:
    """Stamp the planned revision: alembic_version, baseline history rows, the repair log.

    Runs under the migration lock and only if the live schema is still the one
    that was planned on (same fingerprint); no revision's DDL is run.
    """
    chain = chain or chain_for()
    if plan.revision is None:
        return plan
    if not (plan.matched or plan.forced):
        raise IntegrityRefusal(
            f"{target.name}: the live schema matches no revision exactly; nothing was stamped "
            "(use --at REV to force one after reading the differences)"
        )
    by = by or applied_by()
    with migration_lock(target), connect(target) as conn:
        state = read_state(conn)
        _refuse_versioned(target, state)
        live = snapshot(conn)
        if live.fingerprint != plan.fingerprint:
            raise IntegrityRefusal(
                f"{target.name}: the schema changed since it was compared (fingerprint {live.fingerprint}, "
                f"was {plan.fingerprint}); nothing was stamped; run adopt again"
            )
        with conn.transaction():
            _stamp(conn, target, plan, chain, by)
    return replace(plan, stamped=True)


def _stamp(conn: Any, target: Target, plan: AdoptionPlan, chain: Chain, by: str) -> None:
    revision = plan.revision
    assert revision is not None
    mirror.stamp_alembic_version(conn, revision)
    if mirror.has_mirror(conn):
        mark = f"{BASELINE_MARK} {by}"
        for version in chain.applied_through(revision):
            mirror.add_history_row(conn, chain.get(version), mark)
        for version in plan.remove_rows:
            mirror.remove_history_row(conn, version)
        mirror.set_current_version(conn, revision, target.name)
    log_repair(
        conn,
        by,
        "adopt",
        revision,
        {
            "matched": plan.matched,
            "forced": plan.forced,
            "fingerprint": plan.fingerprint,
            "added_history_rows": list(plan.add_rows),
            "removed_history_rows": list(plan.remove_rows),
            "differences": [d.describe() for d in plan.differences[:100]],
        },
    )
