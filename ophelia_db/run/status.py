"""`status` and `history`: where each instance stands against the chain, read without Alembic.

This module owns reading every selected instance's state concurrently (one
round trip each, in threads) and classifying it; `upgrade` and `sync` reuse
``probe_all``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.connections import Connection, connect
from ophelia_db.fleet.hosts import PER_HOST, HostSlots
from ophelia_db.fleet.hub import RegistryRow, registry_rows
from ophelia_db.results import (
    HistoryEntry,
    HistoryReport,
    InstanceStatus,
    StatusReport,
)
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.state import REFUSED_STATES, InstanceState, classify, read_state

# Probes wait on the network: many at once, ``per_host`` of one server at most.
PROBE_THREADS = 64
Look = InstanceState | OpheliaError
Result = TypeVar("Result")
StateSeen = Callable[[Target, Look], None]
# Whether to keep a probe's connection open (for its migration): True hands it over.
Keep = Callable[[Target, "InstanceState", Connection], bool]


def probe(target: Target, keep: Keep | None = None) -> InstanceState | OpheliaError:
    """``target``'s state, read on a connection of its own; ``keep`` may keep that connection open."""
    try:
        conn = connect(target, autocommit=True)
    except OpheliaError as error:
        return error
    kept = False
    try:
        state = read_state(conn)
        kept = keep is not None and keep(target, state, conn)
        return state
    except OpheliaError as error:
        return error
    finally:
        if not kept:
            conn.close()


def probe_all(
    targets: list[Target],
    *,
    per_host: int = PER_HOST,
    on_state: StateSeen | None = None,
    keep: Keep | None = None,
    slots: HostSlots | None = None,
    daemon: bool = False,
) -> dict[str, InstanceState | OpheliaError]:
    """Read every target's state concurrently, ``per_host`` of one server at once; failures are values.

    ``on_state`` hears of each state as it is read (from the probing thread), so
    that a caller can start what the first answers call for before the last one.
    A connection ``keep`` keeps goes on holding its server's slot in ``slots``
    (the caller's, then): it is the caller's to give back. ``daemon``: in
    threads the process does not wait for at exit (a look nobody waits for).
    """
    slots = slots or HostSlots(per_host)

    def probe_one(target: Target) -> InstanceState | OpheliaError:
        handed_over = False

        def keeping(target: Target, state: InstanceState, conn: Connection) -> bool:
            nonlocal handed_over
            handed_over = keep is not None and keep(target, state, conn)
            return handed_over

        slots.take(target)
        try:
            state = probe(target, keeping if keep is not None else None)
        finally:
            if not handed_over:
                slots.give_back(target)
        if on_state is not None:
            on_state(target, state)
        return state

    if len(targets) <= 1:
        return {t.name: probe_one(t) for t in targets}
    workers = min(PROBE_THREADS, len(targets))
    if daemon:
        return dict(zip((t.name for t in targets), _in_daemons(probe_one, targets, workers), strict=True))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip((t.name for t in targets), pool.map(probe_one, targets), strict=True))


def _in_daemons(work: Callable[[Target], Look], targets: list[Target], workers: int) -> list[Look]:
    """``work`` over ``targets`` in ``workers`` daemon threads; the results in order.

    A pool's threads are joined when the interpreter exits: a look at an instance
    the run left out, hanging on connect, would hold the command's exit for up to
    ``connect_timeout``. A daemon thread is not waited for.
    """
    results: list[Future[Look]] = [Future() for _ in targets]
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(targets)):
        todo.put(index)

    def worker() -> None:
        while True:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            _settle(results[index], lambda: work(targets[index]))  # noqa: B023 (called at once)

    for _ in range(workers):
        threading.Thread(target=worker, name="look", daemon=True).start()
    return [result.result() for result in results]


def in_daemon(call: Callable[[], Result], name: str) -> Future[Result]:
    """``call`` in a daemon thread (see ``_in_daemons``); its result in the future returned."""
    future: Future[Result] = Future()
    threading.Thread(target=_settle, args=(future, call), name=name, daemon=True).start()
    return future


def _settle(future: Future[Result], call: Callable[[], Result]) -> None:
    try:
        future.set_result(call())
    except BaseException as exc:  # a bug of ours: raised where the future is waited for
        future.set_exception(exc)


def status_of(target: Target, state: InstanceState | OpheliaError, chain: Chain) -> InstanceStatus:
    if isinstance(state, OpheliaError):
        kind = "unreachable" if state.exit_code == ExitCode.UNREACHABLE else "error"
        return InstanceStatus(name=target.name, role=target.role, state=kind, error=state.message)
    verdict = classify(state, chain, name=target.name)
    name = verdict.state
    if state.locked and name not in REFUSED_STATES:
        name = "locked" if name != "up-to-date" else name
    return InstanceStatus(
        name=target.name,
        role=target.role,
        state=name,
        current=state.revision,
        pending=verdict.pending,
        migrations_count=state.migrations_count if state.has_mirror else None,
        updated_at=state.updated_at,
        error=verdict.problem,
    )


def status(fleet: Fleet, targets: list[Target], *, chain: Chain | None = None) -> StatusReport:
    """Tell where each selected instance stands against the chain's head and the hub registry.

    Three sources are compared: the code's head, each instance's live version
    and what the hub registry says of it; a registry row whose version is not
    the live one is shown (``registry_version``) until ``sync`` fixes it.
    """
    chain = chain or chain_for()
    with ThreadPoolExecutor(max_workers=1) as side:
        # The hub's registry is read while the instances are probed.
        registry_read = side.submit(registry_rows, fleet.hub)
        states = probe_all(targets, per_host=fleet.defaults.per_host)
        registry = registry_read.result() or {}
    return StatusReport(
        head=chain.head,
        instances=tuple(reconciled(status_of(t, states[t.name], chain), registry) for t in targets),
    )


def reconciled(row: InstanceStatus, registry: dict[str, RegistryRow]) -> InstanceStatus:
    """``row`` with what the hub registry says of it: its lifecycle, and its version if that differs."""
    known = registry.get(row.name)
    if known is None:
        return row
    if known.status != "active":
        row = replace(row, registry_status=known.status)
    live_read = row.state not in ("unreachable", "error")
    if live_read and known.schema_version != row.current:
        row = replace(row, registry_version=known.schema_version or "none")
    return row


_HISTORY_SQL = """SELECT version, name, applied_at, checksum, execution_time_ms, applied_by
FROM public.schema_migrations ORDER BY id"""


def history(target: Target, *, chain: Chain | None = None) -> HistoryReport:
    """List an instance's applied revisions (from its mirror) and the pending ones."""
    chain = chain or chain_for()
    with connect(target, autocommit=True) as conn:
        state = read_state(conn)
        rows = conn.execute(_HISTORY_SQL).fetchall() if state.has_mirror else []
    entries = []
    recorded = set()
    for version, name, applied_at, checksum, ms, by in rows:
        recorded.add(version)
        if not chain.knows(version):
            entry_state = "unknown"
        elif checksum and chain.get(version).checksum != checksum:
            entry_state = "checksum-mismatch"
        else:
            entry_state = "applied"
        entries.append(HistoryEntry(version, name, entry_state, applied_at, checksum, ms, by))
    verdict = classify(state, chain)
    for version in verdict.pending:
        if version not in recorded:
            entries.append(HistoryEntry(version, chain.get(version).name, "pending"))
    return HistoryReport(name=target.name, current=state.revision, head=chain.head, entries=tuple(entries))
