"""The instance's one session: its connection, its lock witness, Alembic over it when needed.

This module owns opening a migration's connections (the migration connection
and, at the same time, the pooler witness that fleet/lock.py checks against),
the SQLAlchemy connection Alembic online uses over the same session, and the
registry of open sessions that an interruption cancels from the main thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import Connection, connect, engine_for

_open_sessions: set[Session] = set()
_open_lock = threading.Lock()


def cancel_open_sessions() -> None:
    """Cancel the statement each open session is running (an interruption, from the main thread)."""
    with _open_lock:
        sessions = list(_open_sessions)
    for session in sessions:
        with suppress(Exception):
            session.conn.cancel_safe(timeout=5)


class Session:
    """The instance's one connection: psycopg for reads and batches, Alembic online over it if needed."""

    def __init__(self, target: Target) -> None:
        self.target = target
        # The lock's witness (fleet/lock.py) connects at the same time, not after:
        # a remote connection costs several round trips.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="witness") as side:
            opening = side.submit(connect, target, autocommit=True)
            try:
                self.conn = connect(target, autocommit=True)
            except BaseException:
                with suppress(Exception):
                    opening.result().close()
                raise
            try:
                self.witness: Connection | None = opening.result()
            except BaseException:
                self.conn.close()
                raise
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

    def take_witness(self) -> Connection | None:
        """The witness connection, handed over once (the lock closes it after use)."""
        witness, self.witness = self.witness, None
        return witness

    def __exit__(self, *_: object) -> None:
        if self.witness is not None:
            self.witness.close()
        with _open_lock:
            _open_sessions.discard(self)
        if self._alembic is not None:
            self._alembic.close()
        self.conn.close()
