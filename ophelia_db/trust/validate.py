"""Trusting an instance's history: ``validate``, explicit ``repair``, and the repair log.

This module owns the full integrity check of an instance against the chain —
every applied revision's recorded checksum against its file (each mismatch
named with the revision, the file and both checksums), a revision unknown to
the code (``ahead``), several heads, and every way the mirror
(``schema_migrations``/``schema_version``) can disagree with
``alembic_version`` — and the only two ways to change a history on purpose:
re-accepting a changed file's checksum and rebuilding the mirror from
``alembic_version``. A repair is planned first (``plan_repair``), shown, then
applied (``repair``) under the instance's migration lock after checking that
the plan still holds, in one transaction that also writes who, when and what
into the instance's ``ophelia_repairs`` table. The chain's single head is
checked when the chain loads (``Chain.load`` refuses several heads). It never
runs a revision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ophelia_db.errors import ConfigError, ExitCode, IntegrityRefusal, OpheliaError
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.connections import connect, migration_lock
from ophelia_db.run.chain import Chain, ChainSpec
from ophelia_db.run.instance import chain_for
from ophelia_db.run.mirror import InstanceState, applied_by, read_state

# The tool's own record of deliberate history changes. It is bookkeeping, like
# alembic_version: created by the tool on first use (not by a revision, so that
# it never moves the chain), closed to the API roles, and left out of schema
# snapshots (catalog.BOOKKEEPING_TABLES).
_CREATE_REPAIR_LOG = """DO $ophelia$
BEGIN
  IF to_regclass('public.ophelia_repairs') IS NOT NULL THEN RETURN; END IF;
  CREATE TABLE public.ophelia_repairs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    performed_at timestamptz NOT NULL DEFAULT now(),
    performed_by text NOT NULL,
    database_user text NOT NULL DEFAULT current_user,
    action text NOT NULL,
    revision text,
    details jsonb NOT NULL DEFAULT '{}'::jsonb
  );
  COMMENT ON TABLE public.ophelia_repairs IS
    'Deliberate history changes made by ophelia-db repair/adopt: who, when, what.';
  ALTER TABLE public.ophelia_repairs ENABLE ROW LEVEL SECURITY;
  REVOKE ALL ON TABLE public.ophelia_repairs FROM PUBLIC;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
    REVOKE ALL ON TABLE public.ophelia_repairs FROM anon;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE ALL ON TABLE public.ophelia_repairs FROM authenticated;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    GRANT SELECT ON TABLE public.ophelia_repairs TO service_role;
    CREATE POLICY ophelia_repairs_service_role_select ON public.ophelia_repairs
      FOR SELECT TO service_role USING (true);
  END IF;
END $ophelia$"""

_LOG = """INSERT INTO public.ophelia_repairs (performed_by, action, revision, details)
VALUES (%(by)s, %(action)s, %(revision)s, %(details)s::jsonb)"""


@dataclass(frozen=True)
class Finding:
    """One integrity problem of one instance, in DESIGN §3's state words."""

    kind: str
    message: str
    revision: str | None = None
    file: str | None = None
    file_checksum: str | None = None
    recorded_checksum: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "revision": self.revision,
            "file": self.file,
            "file_checksum": self.file_checksum,
            "recorded_checksum": self.recorded_checksum,
        }


@dataclass(frozen=True)
class InstanceValidation:
    """``state`` is ``valid``, the first finding's kind, ``unreachable`` or ``error``."""

    name: str
    role: str
    state: str
    current: str | None = None
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    exit_code: int = ExitCode.OK

    def as_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "state": self.state,
            "current": self.current,
            "findings": [f.as_record() for f in self.findings],
            "error": self.error,
            "exit_code": self.exit_code,
        }


@dataclass(frozen=True)
class ValidationReport:
    head: str | None
    instances: tuple[InstanceValidation, ...]

    def as_record(self) -> dict[str, Any]:
        return {"head": self.head, "instances": [i.as_record() for i in self.instances]}

    @property
    def exit_code(self) -> int:
        """0 when every instance is valid; else the failures' common code (4 for integrity), or 7."""
        return failures_code([i.exit_code for i in self.instances])


def failures_code(codes: list[int]) -> int:
    """A check's exit code: 0 when nothing failed, the failures' code when they agree, else 7."""
    failed = {code for code in codes if code != ExitCode.OK}
    if not failed:
        return ExitCode.OK
    return failed.pop() if len(failed) == 1 else ExitCode.MIXED


def check(state: InstanceState, chain: Chain) -> list[Finding]:
    """Every integrity problem of ``state`` against ``chain`` (``classify`` stops at the first)."""
    if len(state.heads) > 1:
        return [Finding("error", f"alembic_version holds several heads: {', '.join(state.heads)}")]
    revision = state.revision
    if revision is not None and not chain.knows(revision):
        return [
            Finding(
                "ahead",
                f"the database is at revision {revision}, which this code does not know "
                "(deploy the newer code, or check you are using the right repository)",
                revision=revision,
            )
        ]
    findings = [
        Finding(
            "checksum-mismatch",
            f"revision {version} was applied from a file that has changed since: "
            f"{chain.get(version).path.name} is {chain.get(version).checksum}, "
            f"the database recorded {recorded}",
            revision=version,
            file=str(chain.get(version).path),
            file_checksum=chain.get(version).checksum,
            recorded_checksum=recorded,
        )
        for version, recorded in state.history
        if recorded and chain.knows(version) and chain.get(version).checksum != recorded
    ]
    return findings + _mirror_findings(state, chain)


def _mirror_findings(state: InstanceState, chain: Chain) -> list[Finding]:
    if not state.has_mirror:
        return []
    revision = state.revision
    if revision is None and not state.history and state.current_version is None:
        return []
    findings = []
    if state.current_version != revision:
        findings.append(
            Finding(
                "mirror-mismatch",
                f"schema_version says {state.current_version or 'nothing'} but alembic_version says "
                f"{revision or 'nothing'}",
                revision=revision,
            )
        )
    recorded = {version for version, _ in state.history}
    expected = chain.applied_through(revision)
    for version in expected:
        if version not in recorded:
            findings.append(
                Finding(
                    "mirror-mismatch",
                    f"schema_migrations has no row for revision {version}, which alembic_version "
                    f"({revision}) says is applied",
                    revision=version,
                )
            )
    for version in sorted(recorded - set(expected)):
        findings.append(
            Finding(
                "mirror-mismatch",
                f"schema_migrations has a row for revision {version}, which alembic_version "
                f"({revision or 'nothing'}) says is not applied",
                revision=version,
            )
        )
    return findings


def validate_one(target: Target, state: InstanceState | OpheliaError, chain: Chain) -> InstanceValidation:
    if isinstance(state, OpheliaError):
        kind = "unreachable" if state.exit_code == ExitCode.UNREACHABLE else "error"
        return InstanceValidation(
            target.name, target.role, kind, error=state.message, exit_code=state.exit_code
        )
    findings = tuple(check(state, chain))
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
    from ophelia_db.run import probe_all

    chain = chain or chain_for(ChainSpec.default())
    states = probe_all(targets)
    rows = tuple(validate_one(t, states[t.name], chain) for t in targets)
    return ValidationReport(head=chain.head, instances=rows)


# --- repair -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairStep:
    """One change a repair makes: ``action`` on ``revision``, from ``before`` to ``after``."""

    action: str
    revision: str | None
    description: str
    before: str | None = None
    after: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "revision": self.revision,
            "description": self.description,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True)
class RepairPlan:
    """What ``repair`` would change on one instance, and what would still be wrong afterwards."""

    instance: str
    current: str | None
    steps: tuple[RepairStep, ...]
    remaining: tuple[Finding, ...] = ()
    applied: bool = False
    performed_by: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "current": self.current,
            "steps": [s.as_record() for s in self.steps],
            "remaining": [f.as_record() for f in self.remaining],
            "applied": self.applied,
            "performed_by": self.performed_by,
        }


@dataclass(frozen=True)
class RepairRequest:
    """What the operator asked for: checksums to re-accept and/or a mirror rebuild."""

    accept_checksums: tuple[str, ...] = ()
    rebuild_mirror: bool = False
    reason: str | None = None
    by: str = field(default_factory=applied_by)


def plan_repair(target: Target, request: RepairRequest, *, chain: Chain | None = None) -> RepairPlan:
    """Read the instance and say what ``repair`` would change; changes nothing."""
    chain = chain or chain_for(ChainSpec.default())
    if not request.accept_checksums and not request.rebuild_mirror:
        raise ConfigError("say what to repair: --accept-checksum REV (repeatable) and/or --rebuild-mirror")
    with connect(target, autocommit=True) as conn:
        state = read_state(conn)
    return _plan(target, state, request, chain)


def _plan(target: Target, state: InstanceState, request: RepairRequest, chain: Chain) -> RepairPlan:
    found = check(state, chain)
    if any(f.kind in ("ahead", "error") for f in found):
        problem = next(f for f in found if f.kind in ("ahead", "error"))
        raise IntegrityRefusal(
            f"{target.name}: {problem.message}; repair cannot fix that; nothing was changed"
        )
    steps: list[RepairStep] = []
    for wanted in request.accept_checksums:
        steps.extend(_accept_steps(target, state, chain, wanted))
    if request.rebuild_mirror:
        steps.extend(_rebuild_steps(target, state, chain))
    after = _simulate(state, steps)
    return RepairPlan(
        instance=target.name,
        current=state.revision,
        steps=tuple(steps),
        remaining=tuple(check(after, chain)),
    )


def _accept_steps(target: Target, state: InstanceState, chain: Chain, wanted: str) -> list[RepairStep]:
    revision = chain.resolve(wanted)
    if revision is None:
        raise ConfigError("--accept-checksum needs a revision, not 'base'")
    recorded = dict(state.history)
    if revision not in recorded:
        raise ConfigError(
            f"{target.name}: schema_migrations has no row for revision {revision}, so there is no "
            "checksum to accept (--rebuild-mirror adds missing rows)"
        )
    rev = chain.get(revision)
    if recorded[revision] == rev.checksum:
        return []
    return [
        RepairStep(
            "accept-checksum",
            revision,
            f"record {rev.path.name}'s current checksum for revision {revision}, accepting the edit",
            before=recorded[revision],
            after=rev.checksum,
        )
    ]


def _rebuild_steps(target: Target, state: InstanceState, chain: Chain) -> list[RepairStep]:
    revision = state.revision
    if revision is None:
        raise IntegrityRefusal(
            f"{target.name}: there is no alembic_version to rebuild the mirror from; if the schema is "
            f"there, run `ophelia-db adopt --instance {target.name}`; nothing was changed"
        )
    if not state.has_mirror:
        raise IntegrityRefusal(
            f"{target.name}: alembic_version says {revision} but schema_migrations/schema_version do not "
            f"exist; the schema does not match its revision (see `ophelia-db drift --instance "
            f"{target.name}`); nothing was changed"
        )
    steps: list[RepairStep] = []
    recorded = {version for version, _ in state.history}
    expected = chain.applied_through(revision)
    for version in expected:
        if version not in recorded:
            rev = chain.get(version)
            steps.append(
                RepairStep(
                    "add-history-row",
                    version,
                    f"add the missing schema_migrations row for {version} ({rev.path.name})",
                    after=rev.checksum,
                )
            )
    for version, checksum in state.history:
        if version not in expected:
            steps.append(
                RepairStep(
                    "remove-history-row",
                    version,
                    f"remove the schema_migrations row for {version}, which alembic_version says is "
                    "not applied",
                    before=checksum,
                )
            )
    if state.current_version != revision:
        steps.append(
            RepairStep(
                "set-current-version",
                revision,
                f"set schema_version.current_version to {revision} (alembic_version)",
                before=state.current_version,
                after=revision,
            )
        )
    return steps


def _simulate(state: InstanceState, steps: list[RepairStep]) -> InstanceState:
    from dataclasses import replace

    history = dict(state.history)
    current = state.current_version
    for step in steps:
        if step.action in ("accept-checksum", "add-history-row"):
            history[step.revision or ""] = step.after
        elif step.action == "remove-history-row":
            history.pop(step.revision or "", None)
        elif step.action == "set-current-version":
            current = step.after
    return replace(state, history=tuple(history.items()), current_version=current)


def repair(
    target: Target, plan: RepairPlan, request: RepairRequest, *, chain: Chain | None = None
) -> RepairPlan:
    """Apply ``plan`` under the migration lock, if the instance still needs exactly that.

    The state is read again under the lock; a plan that no longer matches is
    refused (exit 4) so that what the operator confirmed is what happens.
    """
    chain = chain or chain_for(ChainSpec.default())
    if not plan.steps:
        return plan
    with migration_lock(target), connect(target) as conn:
        state = read_state(conn)
        fresh = _plan(target, state, request, chain)
        if fresh.steps != plan.steps:
            raise IntegrityRefusal(
                f"{target.name}: the instance changed since the plan was shown; nothing was changed; "
                "run the repair again to see the new plan"
            )
        with conn.transaction():
            for step in plan.steps:
                _apply(conn, chain, step, request.by)
            for step in plan.steps:
                log_repair(
                    conn,
                    request.by,
                    step.action,
                    step.revision,
                    {
                        "description": step.description,
                        "before": step.before,
                        "after": step.after,
                        "reason": request.reason,
                    },
                )
    return RepairPlan(
        instance=plan.instance,
        current=plan.current,
        steps=plan.steps,
        remaining=plan.remaining,
        applied=True,
        performed_by=request.by,
    )


def _apply(conn: Any, chain: Chain, step: RepairStep, by: str) -> None:
    if step.action == "accept-checksum":
        cursor = conn.execute(
            "UPDATE public.schema_migrations SET checksum = %s WHERE version = %s "
            "AND checksum IS NOT DISTINCT FROM %s",
            (step.after, step.revision, step.before),
        )
    elif step.action == "add-history-row":
        rev = chain.get(step.revision or "")
        cursor = conn.execute(
            "INSERT INTO public.schema_migrations (version, name, checksum, applied_by) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (version) DO NOTHING",
            (rev.id, rev.name, rev.checksum, f"{by} (repair: rebuilt mirror)"[:200]),
        )
    elif step.action == "remove-history-row":
        cursor = conn.execute("DELETE FROM public.schema_migrations WHERE version = %s", (step.revision,))
    else:
        cursor = conn.execute(
            "INSERT INTO public.schema_version (id, current_version, updated_at) VALUES (1, %s, now()) "
            "ON CONFLICT (id) DO UPDATE SET current_version = EXCLUDED.current_version, "
            "updated_at = EXCLUDED.updated_at",
            (step.after,),
        )
    if cursor.rowcount != 1:
        # Raising inside the transaction rolls every step back.
        raise IntegrityRefusal(f"repair step '{step.description}' found the row changed; nothing was changed")


def log_repair(conn: Any, by: str, action: str, revision: str | None, details: dict[str, Any]) -> None:
    """Write one row of the instance's repair log, creating the log on first use."""
    conn.execute(_CREATE_REPAIR_LOG)
    conn.execute(
        _LOG,
        {"by": by[:200], "action": action, "revision": revision, "details": json.dumps(details, default=str)},
    )
