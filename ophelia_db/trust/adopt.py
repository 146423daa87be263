"""Adopting hand-migrated instances and finding schema drift, by comparing catalogs with references.

This module owns ``adopt`` — for a database that has the chain's schema but no
``alembic_version``: find the newest revision whose reference schema the live
schema matches exactly, show the evidence, and only when asked stamp it
(``alembic_version`` plus baseline history rows, applied_by
``ophelia-db adopt (baseline) …``) under the migration lock, never running a
revision's DDL — and ``drift``: compare each instance's live schema with the
reference of the revision it records and group instances by schema
fingerprint. References come from ``reference.build_references``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from ophelia_db.errors import ConfigError, ExitCode, IntegrityRefusal, OpheliaError
from ophelia_db.fleet.catalog import Difference, Snapshot, diff, snapshot
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import connect, migration_lock
from ophelia_db.run.chain import Chain, ChainSpec
from ophelia_db.run.instance import chain_for
from ophelia_db.run.mirror import InstanceState, applied_by, read_state
from ophelia_db.trust.reference import BASE, References
from ophelia_db.trust.validate import failures_code, log_repair

BASELINE_MARK = "ophelia-db adopt (baseline)"
_SHOWN = 3

# Alembic's own version table, as Alembic creates it, closed to the API roles as
# revision 0002 closes it on instances migrated by runs.
_STAMP_TABLE = """CREATE TABLE IF NOT EXISTS public.alembic_version (
  version_num varchar(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"""
_HARDEN = """DO $ophelia$
BEGIN
  REVOKE ALL ON TABLE public.alembic_version FROM PUBLIC;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
    REVOKE ALL ON TABLE public.alembic_version FROM anon;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE ALL ON TABLE public.alembic_version FROM authenticated;
  END IF;
  ALTER TABLE public.alembic_version ENABLE ROW LEVEL SECURITY;
END $ophelia$"""
_HAS_MIRROR = """SELECT to_regclass('public.schema_migrations') IS NOT NULL
  AND to_regclass('public.schema_version') IS NOT NULL"""


@dataclass(frozen=True)
class AdoptionPlan:
    """What adoption found on one instance and what stamping would write.

    ``revision`` is the revision to stamp (``None``: the database holds none
    of the chain's objects, so there is nothing to adopt). ``matched`` says
    the live schema equals that revision's reference; otherwise
    ``differences`` lists why, and stamping needs ``--at``.
    """

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
    def exit_code(self) -> int:
        return ExitCode.OK if self.matched or self.forced else ExitCode.INTEGRITY

    def as_record(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "revision": self.revision,
            "matched": self.matched,
            "forced": self.forced,
            "fingerprint": self.fingerprint,
            "differences": [d.as_record() for d in self.differences],
            "evidence": list(self.evidence),
            "add_history_rows": list(self.add_rows),
            "remove_history_rows": list(self.remove_rows),
            "stamped": self.stamped,
        }


def plan_adoption(
    target: Target, references: References, *, at: str | None = None, chain: Chain | None = None
) -> AdoptionPlan:
    """Compare the live schema with every revision's reference; changes nothing."""
    chain = chain or chain_for(ChainSpec.default())
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
            f"not at {following}: {len(found[following])} differences, e.g. {shown}"
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
    chain = chain or chain_for(ChainSpec.default())
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
    conn.execute(_STAMP_TABLE)
    conn.execute(_HARDEN)
    conn.execute("DELETE FROM public.alembic_version")
    conn.execute("INSERT INTO public.alembic_version (version_num) VALUES (%s)", (revision,))
    if conn.execute(_HAS_MIRROR).fetchone()[0]:
        mark = f"{BASELINE_MARK} {by}"[:200]
        for version in chain.applied_through(revision):
            rev = chain.get(version)
            conn.execute(
                "INSERT INTO public.schema_migrations (version, name, checksum, applied_by) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (version) DO NOTHING",
                (rev.id, rev.name, rev.checksum, mark),
            )
        for version in plan.remove_rows:
            conn.execute("DELETE FROM public.schema_migrations WHERE version = %s", (version,))
        conn.execute(
            "INSERT INTO public.schema_version (id, current_version, updated_at, instance_id) "
            "VALUES (1, %s, now(), %s) ON CONFLICT (id) DO UPDATE SET "
            "current_version = EXCLUDED.current_version, updated_at = EXCLUDED.updated_at, "
            "instance_id = COALESCE(schema_version.instance_id, EXCLUDED.instance_id)",
            (revision, target.name),
        )
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


# --- drift ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceDrift:
    """``state``: ``identical``, ``drifted``, ``ahead``, ``unreachable`` or ``error``."""

    name: str
    role: str
    state: str
    revision: str | None = None
    fingerprint: str | None = None
    differences: tuple[Difference, ...] = ()
    error: str | None = None
    exit_code: int = ExitCode.OK

    def as_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "state": self.state,
            "revision": self.revision,
            "fingerprint": self.fingerprint,
            "differences": [d.as_record() for d in self.differences],
            "error": self.error,
            "exit_code": self.exit_code,
        }


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
        return failures_code([r.exit_code for r in self.instances])

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
    chain = chain or chain_for(ChainSpec.default())
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
