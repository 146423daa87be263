"""The instance's one session: its connection, its lock witness, Alembic over it when needed.

This module owns opening a migration's connections (the migration connection,
or the first look's kept for it, and, at the same time, the pooler witness that
fleet/lock.py checks against), the SQLAlchemy connection Alembic online uses
over the same session, and the registry of open sessions that an interruption
cancels from the main thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import Connection, connect, engine_for, still_open
from ophelia_db.fleet.hosts import HostSlots

_open_sessions: set[Session] = set()
_open_lock = threading.Lock()


def cancel_open_sessions() -> None:
    """Cancel the statement each open session is running (an interruption, from the main thread)."""
    with _open_lock:
        sessions = list(_open_sessions)
    for session in sessions:
        with suppress(Exception):
            session.conn.cancel_safe(timeout=5)


# Idle connections a run keeps open for their migrations, at most (unless ``jobs`` is larger):
# each costs the runner a socket and some tens of kilobytes, and its server one idle backend.
KEPT_LIMIT = 256


class KeptLooks:
    """First-look connections kept open for their instance's migration.

    A remote connection costs several round trips (six with TLS and SCRAM),
    and a backend the server's CPU: the instance a probe found work for is
    migrated on the probe's own connection when there is room: ``limit`` in
    all (``KEPT_LIMIT``, or the run's ``jobs`` if larger: more than ``jobs``,
    since every look ends before the first wave starts), and, per server, once
    the looks still to end there (``expect``) fit in its slots beside those
    kept: a look kept earlier would hold a slot the others wait for, and the
    last ``per_host`` looks to end are kept all the same. A kept connection
    keeps its slot of ``slots`` until its migration ends (or ``close``).
    """

    def __init__(self, limit: int, slots: HostSlots) -> None:
        self.limit = limit
        self.slots = slots
        self._kept: dict[str, tuple[Target, Connection]] = {}
        self._per_server: dict[str, int] = {}
        # Per server, the instances whose looks have not ended yet (each will need a slot).
        self._looking: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def expect(self, targets: Collection[Target]) -> None:
        """``targets`` are about to be looked at: each look ends in ``offer`` or ``looked``."""
        for target in targets:
            server = self.slots.server(target)
            with self._lock:
                self._looking.setdefault(server, set()).add(target.name)

    def looked(self, target: Target) -> None:
        """``target``'s look ended without an offer (it failed, or found nothing to do)."""
        server = self.slots.server(target)
        with self._lock:
            self._looking.get(server, set()).discard(target.name)

    def offer(self, target: Target, conn: Connection, *, ahead: bool = False) -> bool:
        """Keep ``conn`` (and its slot) for ``target`` if there is room; ``False``: the caller closes it.

        ``ahead``: the hub's, whose migration comes before all others: kept whenever the limit
        allows (its slot is back once it is migrated; an instance's look may wait for it until then).
        """
        server = self.slots.server(target)
        with self._lock:
            looking = self._looking.get(server, set())
            looking.discard(target.name)
            on_server = self._per_server.get(server, 0)
            # Kept, they and the looks still to end all fit: no look waits for a slot.
            fits = on_server + 1 + len(looking) <= self.slots.per_host
            if len(self._kept) >= self.limit or not (fits or ahead):
                return False
            self._kept[target.name] = (target, conn)
            self._per_server[server] = on_server + 1
            return True

    def holds(self, target: Target) -> bool:
        with self._lock:
            return target.name in self._kept

    def take(self, target: Target) -> Connection | None:
        """``target``'s kept connection, if any: the caller then owns it and its slot."""
        with self._lock:
            found = self._kept.pop(target.name, None)
        return found[1] if found else None

    def drop_all_but(self, names: Collection[str]) -> None:
        """Close the kept connections of instances not in ``names`` (the run left them out)."""
        with self._lock:
            left = [kept for name, kept in self._kept.items() if name not in names]
            for target, _ in left:
                del self._kept[target.name]
                self._per_server[self.slots.server(target)] -= 1
        self._closed(left)

    def close(self) -> None:
        """Close what no migration took (instances run by worker processes, or not started)."""
        with self._lock:
            left, self._kept = list(self._kept.values()), {}
        self._closed(left)

    def _closed(self, left: list[tuple[Target, Connection]]) -> None:
        for target, conn in left:
            with suppress(Exception):
                conn.close()
            self.slots.give_back(target)


class Session:
    """The instance's one connection: psycopg for reads and batches, Alembic online over it if needed."""

    def __init__(self, target: Target, kept: Connection | None = None, *, direct: bool = False) -> None:
        self.target = target
        # The lock's witness (fleet/lock.py) connects at the same time, not after:
        # a remote connection costs several round trips. It is needed only once
        # the session token is set, so that round trip is hidden behind it too.
        # ``direct``: the first look found PostgreSQL itself there, which needs no
        # witness (fleet/lock.py opens one after all if this session is not).
        self._side: ThreadPoolExecutor | None = None
        self._witness: Future[Connection] | None = None
        if not direct:
            self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="witness")
            self._witness = self._side.submit(connect, target, autocommit=True)
        if kept is not None and not still_open(kept):
            with suppress(Exception):
                kept.close()
            kept = None
        try:
            self.conn = kept if kept is not None else connect(target, autocommit=True)
        except BaseException:
            self._close_witness()
            raise
        # The first look showed this very connection to be PostgreSQL itself (fleet/lock.py).
        self.proven_direct = direct and kept is not None and self.conn is kept
        self._alembic: Any = None
        with _open_lock:
            _open_sessions.add(self)

    def alembic_connection(self) -> Any:
        """A SQLAlchemy connection over ``conn``, for Alembic online; made on first use."""
        if self._alembic is None:
            # SQLAlchemy and Alembic own the transactions from here on.
            self.conn.autocommit = False
            self._alembic = engine_for(self.target, self.conn).connect()
        return self._alembic

    def __enter__(self) -> Session:
        return self

    def take_witness(self) -> Callable[[], Connection] | None:
        """The witness connection, handed over once: waits for it (the lock closes it after use)."""
        opening, self._witness = self._witness, None
        return opening.result if opening is not None else None

    def _close_witness(self) -> None:
        opening, self._witness = self._witness, None
        if opening is not None:
            with suppress(Exception):
                opening.result().close()
        if self._side is not None:
            self._side.shutdown(wait=True)

    def __exit__(self, *_: object) -> None:
        self._close_witness()
        with _open_lock:
            _open_sessions.discard(self)
        if self._alembic is not None:
            self._alembic.close()
        self.conn.close()
