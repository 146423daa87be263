"""`repair`: the only deliberate changes to a recorded history, each one logged.

Two repairs exist: re-accepting a changed revision file's checksum, and
rebuilding the mirror (``schema_migrations``/``schema_version``) from
``alembic_version``. A repair is planned first (``plan_repair``), shown,
confirmed, then applied (``repair``) under the instance's migration lock
after checking that the plan still holds, in one transaction that also
writes who, when and what into the instance's ``ophelia_repairs`` table,
which this module owns (``adopt`` logs there too). It never runs a revision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from ophelia_db.errors import ConfigError, ExitCode, IntegrityRefusal
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import closed_to_api_roles, connect
from ophelia_db.fleet.lock import migration_lock
from ophelia_db.results import Record
from ophelia_db.run import mirror
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.mirror import applied_by
from ophelia_db.run.state import Finding, InstanceState, check, read_state

# The tool's own record of deliberate history changes. It is bookkeeping, like
# alembic_version: created by the tool on first use (not by a revision, so that
# it never moves the chain), closed to the API roles, and left out of schema
# snapshots (catalog.BOOKKEEPING_TABLES).
_CREATE_REPAIR_LOG = f"""DO $ophelia$
BEGIN
  IF to_regclass('public.ophelia_repairs') IS NOT NULL THEN RETURN; END IF;
  CREATE TABLE public.ophelia_repairs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    performed_at timestamptz NOT NULL DEFAULT now(),
    performed_by text NOT NULL,
    database_user text NOT NULL DEFAULT current_user,
    action text NOT NULL,
    revision text,
    details jsonb NOT NULL DEFAULT '{{}}'::jsonb
  );
  COMMENT ON TABLE public.ophelia_repairs IS
    'Deliberate history changes made by ophelia-db repair/adopt: who, when, what.';
  ALTER TABLE public.ophelia_repairs ENABLE ROW LEVEL SECURITY;
  -- The identity's sequence too: Supabase's default privileges open new
  -- sequences to the API roles, and nextval/setval must not work for them.
{closed_to_api_roles("TABLE public.ophelia_repairs", "SEQUENCE public.ophelia_repairs_id_seq")}
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    GRANT SELECT ON TABLE public.ophelia_repairs TO service_role;
    CREATE POLICY ophelia_repairs_service_role_select ON public.ophelia_repairs
      FOR SELECT TO service_role USING (true);
  END IF;
END $ophelia$"""

_LOG = """INSERT INTO public.ophelia_repairs (performed_by, action, revision, details)
VALUES (%(by)s, %(action)s, %(revision)s, %(details)s::jsonb)"""


@dataclass(frozen=True)
class RepairStep(Record):
    """One change a repair makes: ``action`` on ``revision``, from ``before`` to ``after``."""

    action: str
    revision: str | None
    description: str
    before: str | None = None
    after: str | None = None


@dataclass(frozen=True)
class RepairPlan(Record):
    """What ``repair`` would change on one instance, and what would still be wrong afterwards."""

    instance: str
    current: str | None
    steps: tuple[RepairStep, ...]
    remaining: tuple[Finding, ...] = ()
    applied: bool = False
    performed_by: str | None = None

    @property
    def exit_code(self) -> int:
        """4 while problems this repair does not cover remain, else 0."""
        return ExitCode.INTEGRITY if self.remaining else ExitCode.OK


@dataclass(frozen=True)
class RepairRequest:
    """What the operator asked for: checksums to re-accept and/or a mirror rebuild."""

    accept_checksums: tuple[str, ...] = ()
    rebuild_mirror: bool = False
    reason: str | None = None
    by: str = field(default_factory=applied_by)


def plan_repair(target: Target, request: RepairRequest, *, chain: Chain | None = None) -> RepairPlan:
    """Read the instance and say what ``repair`` would change; changes nothing."""
    chain = chain or chain_for()
    if not request.accept_checksums and not request.rebuild_mirror:
        raise ConfigError("say what to repair: --accept-checksum REV (repeatable) and/or --rebuild-mirror")
    with connect(target, autocommit=True) as conn:
        state = read_state(conn)
    return _plan(target, state, request, chain)


def _plan(target: Target, state: InstanceState, request: RepairRequest, chain: Chain) -> RepairPlan:
    found = check(state, chain, target.name)
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
    chain = chain or chain_for()
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
    revision = step.revision or ""
    if step.action == "accept-checksum":
        changed = mirror.accept_checksum(conn, revision, step.before, step.after)
    elif step.action == "add-history-row":
        changed = mirror.add_history_row(conn, chain.get(revision), f"{by} (repair: rebuilt mirror)")
    elif step.action == "remove-history-row":
        changed = mirror.remove_history_row(conn, revision)
    else:
        changed = mirror.set_current_version(conn, step.after)
    if changed != 1:
        # Raising inside the transaction rolls every step back.
        raise IntegrityRefusal(f"repair step '{step.description}' found the row changed; nothing was changed")


def log_repair(conn: Any, by: str, action: str, revision: str | None, details: dict[str, Any]) -> None:
    """Write one row of the instance's repair log, creating the log on first use."""
    conn.execute(_CREATE_REPAIR_LOG)
    conn.execute(
        _LOG,
        {"by": by[:200], "action": action, "revision": revision, "details": json.dumps(details, default=str)},
    )
