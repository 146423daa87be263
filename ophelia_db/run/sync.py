"""`sync`: re-read each instance's version and schema fingerprint and push them to the hub."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet.catalog import fingerprint_of
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.hub import HubReporter, RegistryUpdate
from ophelia_db.results import (
    SyncReport,
)
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.status import PROBE_THREADS, probe_all, status_of


def sync(fleet: Fleet, targets: list[Target], *, chain: Chain | None = None) -> SyncReport:
    """Re-read each instance's version and push it to the hub registry."""
    chain = chain or chain_for()
    states = probe_all(targets)
    reachable = [t for t in targets if not isinstance(states[t.name], OpheliaError)]
    fingerprints = _fingerprints(reachable)
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
    return SyncReport(instances=tuple(rows), hub_report=reporter.state, hub_error=reporter.error)


def _fingerprints(targets: list[Target]) -> dict[str, str | None]:
    """Each reachable instance's schema fingerprint (``drift``'s), read concurrently."""

    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(targets))) as pool:
        return dict(zip((t.name for t in targets), pool.map(fingerprint_of, targets), strict=True))
