"""`sync`: re-read each instance's version and schema fingerprint and push them to the hub,
with the run journals kept locally while the hub was away."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet import journal
from ophelia_db.fleet.catalog import fingerprint_of
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.connections import connect, describe_error, sqlstate_of
from ophelia_db.fleet.hub import RegistryUpdate
from ophelia_db.fleet.hub_writer import HubReporter
from ophelia_db.results import (
    SyncReport,
)
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.status import probe_all, status_of

if TYPE_CHECKING:
    from psycopg import Connection

    from ophelia_db.run.state import InstanceState


def sync(fleet: Fleet, targets: list[Target], *, chain: Chain | None = None) -> SyncReport:
    """Re-read each instance's version and push it to the hub registry."""
    chain = chain or chain_for()
    fingerprints: dict[str, str | None] = {}

    def read_fingerprint(target: Target, _state: InstanceState, conn: Connection) -> bool:
        # On the probe's own connection: one connection per instance, not two.
        fingerprints[target.name] = fingerprint_of(target, conn)
        return False  # the probe closes it

    states = probe_all(targets, per_host=fleet.defaults.per_host, keep=read_fingerprint)
    reporter = HubReporter(fleet.hub)
    rows = []
    for target in targets:
        state = states[target.name]
        row = status_of(target, state, chain)
        rows.append(row)
        if isinstance(state, OpheliaError):
            update = RegistryUpdate(
                target=target, run_status="unreachable", version_known=False, error=state.message
            )
        else:
            update = RegistryUpdate(
                target=target,
                run_status="sync",
                version_known=True,
                schema_version=state.revision,
                schema_updated_at=state.updated_at,
                migrations_count=state.migrations_count,
                error=row.error,
                schema_fingerprint=fingerprints.get(target.name),
            )
        reporter.report(update)
    reporter.close()
    hub_state, hub_error = reporter.state, reporter.error
    pushed: list[str] = []
    if hub_state == "ok":
        try:
            pushed = push_local_journals(fleet)
        except OpheliaError as exc:
            hub_state, hub_error = "pending", exc.message
    return SyncReport(
        instances=tuple(rows), hub_report=hub_state, hub_error=hub_error, journals_pushed=tuple(pushed)
    )


def push_local_journals(fleet: Fleet) -> list[str]:
    """Push the run journals kept next to the fleet file (the hub was away) to the hub; their run ids."""
    paths = journal.local_journals(fleet.path)
    if not paths:
        return []
    pushed = []
    with connect(fleet.hub, autocommit=True) as conn:
        if not journal.has_journal(conn):
            raise OpheliaError(
                f"{fleet.hub.name}: {len(paths)} run journal(s) kept locally, but the hub has no journal "
                f"yet; run `ophelia-db upgrade --instance {fleet.hub.name}`, then sync again"
            )
        for path in paths:
            try:
                journal.replay(conn, path)
            except Exception as exc:
                if sqlstate_of(exc) is None:
                    raise
                raise OpheliaError(
                    f"{fleet.hub.name}: cannot push the local journal {path.name}: {describe_error(exc)}"
                ) from None
            pushed.append(path.stem)
    return pushed
