"""The hub writer of a run: the registry reports and the run journal, sent from a thread of its own.

This module owns the one hub connection a run writes on and the order of its
writes; the statements belong to ``hub`` (the registry) and ``journal``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet import journal
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import Connection, connect, describe_error, sqlstate_of
from ophelia_db.fleet.hub import RegistryUpdate, registry_writes, statuses_and_journal
from ophelia_db.fleet.journal import LocalJournal


class HubReporter:
    """Writes a run's registry reports and journal to the hub, from a thread of its own, on one connection.

    What the run hands over while a write is on its way goes in the next one, in
    one pipelined round trip: the run never waits for the hub, and each instance's
    lines reach it as soon as its result is known. After the first failure it stops
    trying: the registry is left to ``sync``, the journal goes to ``local``.
    """

    def __init__(self, hub: Target) -> None:
        self.hub = hub
        self.state = "ok"
        self.error: str | None = None
        # Whether the hub has the journal tables (revision 0005); None until asked.
        self.journal_ready: bool | None = None
        # Where the journal goes while the hub cannot take it (``keep_locally``); a run's only.
        self._local: LocalJournal | None = None
        self._conn: Connection | None = None
        # Each entry goes in one write, whatever else the writer finds with it.
        self._queue: queue.SimpleQueue[list[tuple[str, Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Reports held back by ``deferred`` (the thread holding them, and what it holds).
        self._deferring: int | None = None
        self._held: list[tuple[str, Any]] = []
        self._held_lock = threading.Lock()
        self._ahead: threading.Thread | None = None
        self._read: tuple[dict[str, str] | None, BaseException | None] | None = None

    def keep_locally(self, local: LocalJournal) -> None:
        """Where the journal goes while the hub cannot take it (set before the first write)."""
        assert self._thread is None, "set before the writes start"
        self._local = local

    def read_ahead(self) -> None:
        """Connect and read the registry's lifecycle statuses from now on, in a thread of its own.

        The CLI starts this as soon as the fleet is loaded, so that the hub's round
        trips (start-up and the read: three, 60-240 ms away) overlap the loading of
        the run instead of preceding the first probe.
        """
        if self._ahead is None and self._read is None:
            self._ahead = threading.Thread(target=self._read_statuses, name="hub-ahead", daemon=True)
            self._ahead.start()

    def registry_statuses(self) -> dict[str, str] | None:
        """The registry's lifecycle statuses, on the connection the reports will use (one per run)."""
        assert self._thread is None, "read before the writes start"
        if self._ahead is None and self._read is None:
            self._read_statuses()
        self._join_ahead()
        assert self._read is not None
        statuses, failure = self._read
        if failure is not None:
            raise failure
        return statuses

    def _read_statuses(self) -> None:
        try:
            if self._conn is None:
                self._conn = connect(self.hub, autocommit=True)
            statuses, self.journal_ready = statuses_and_journal(self._conn)
            self._read = (statuses, None)
        except OpheliaError as exc:
            # Not tried again by the writer: a hub that does not answer costs one connect_timeout.
            self._fail("pending", exc.message)
            self._read = (None, None)
        except BaseException as exc:  # handed to the caller's thread by registry_statuses
            self._read = (None, exc)

    def _join_ahead(self) -> None:
        ahead = self._ahead  # joined by the caller's thread or the writer's, whichever asks first
        if ahead is not None:
            ahead.join()

    def report(self, update: RegistryUpdate) -> None:
        self._put("registry", update)

    def record(self, *operations: journal.Operation) -> None:
        """Add journal operations, to go in one write; they reach the hub (or the local journal) in order."""
        self._put_all([("journal", operation) for operation in operations])

    def record_with_next(self, *operations: journal.Operation) -> None:
        """Add journal operations that go with the next write (or at ``close``) rather than in one
        of their own. For the run's start: its first result, or its first instance started, takes
        it along, so a run with nothing to do reaches the hub in one write, not two, and a run
        with work loses nothing (the run never waits for the hub). Its times are the client's,
        taken now."""
        with self._held_lock:
            self._held.extend(("journal", operation) for operation in operations)

    def recheck_journal(self) -> None:
        """Ask again whether the hub has its journal (the run just migrated the hub)."""
        self._put("recheck", None)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold back what this thread reports in the block: it goes with the next report, or at
        ``close``. For results settled all at once with nothing to wait for (a wave with no work):
        a no-op run's results and its journal's end then reach the hub in one round trip."""
        with self._held_lock:
            self._deferring = threading.get_ident()
        try:
            yield
        finally:
            with self._held_lock:
                self._deferring = None

    def close(self) -> None:
        """Send what is left; ``state``/``error`` then say how the reports went."""
        try:
            self._join_ahead()
            with self._held_lock:
                held, self._held = self._held, []
            if held or self._thread is not None:
                self._put_all([*held, ("stop", None)])
                assert self._thread is not None
                self._thread.join()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _put(self, kind: str, item: Any) -> None:
        self._put_all([(kind, item)])

    def _put_all(self, entries: list[tuple[str, Any]]) -> None:
        """Hand ``entries`` to the writer, to go in one write (with what it holds back, first)."""
        with self._held_lock:
            if self._deferring == threading.get_ident():
                self._held.extend(entries)
                return
            entry, self._held = [*self._held, *entries], []
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="hub-writer", daemon=True)
                self._thread.start()
            self._queue.put(entry)

    def _loop(self) -> None:
        self._join_ahead()  # the connection is the writer's once the read ahead is over
        while True:
            items = self._queue.get()
            with suppress(queue.Empty):
                while True:
                    items.extend(self._queue.get_nowait())
            try:
                self._write(items)
            except Exception as exc:  # a bug of ours: the run goes on, the reports say so
                self._fail("failed", f"{self.hub.name}: internal error while reporting: {type(exc).__name__}")
            if any(kind == "stop" for kind, _ in items):
                return

    def _write(self, items: list[tuple[str, Any]]) -> None:
        # A hub without its journal may have just got it (the run migrated the hub): asked again
        # on a recheck and at the end, never once it is known to be there.
        recheck = any(kind in ("recheck", "stop") for kind, _ in items)
        if self.state == "ok" and self._connected():
            unknown = self.journal_ready is None
            if unknown or (recheck and not self.journal_ready):
                self._ask_journal()
        updates: list[RegistryUpdate] = []
        sent: list[journal.Operation] = []
        kept: list[journal.Operation] = []
        for kind, item in items:
            if kind == "registry" and self.state == "ok":
                updates.append(item)
            elif kind == "journal" and self.state == "ok" and self.journal_ready:
                sent.append(item)
            elif kind == "journal":
                kept.append(item)
        # Two tables with no link between them: each keeps its own order.
        statements = registry_writes(updates) + journal.statements(sent)
        if self._local is not None:
            self._local.append(kept)
            if self.state == "ok" and self.journal_ready:
                self._push_local()
        if statements and self.state == "ok":
            self._send(statements)
            if self.state != "ok" and self._local is not None:
                # Lost with the hub: kept locally, replayed by `sync` (every write is an upsert).
                self._local.append(sent)

    @property
    def kept_locally(self) -> Path | None:
        """The local journal file, when the hub did not take the whole journal."""
        return self._local.path if self._local is not None and self._local.path.exists() else None

    def _connected(self) -> bool:
        if self._conn is not None:
            return True
        try:
            self._conn = connect(self.hub, autocommit=True)
            return True
        except OpheliaError as exc:
            self._fail("pending", exc.message)
            return False

    def _ask_journal(self) -> None:
        assert self._conn is not None
        try:
            self.journal_ready = journal.has_journal(self._conn)
        except Exception as exc:
            self._server_error(exc)

    def _push_local(self) -> None:
        """Send the journal kept locally so far (the hub had none, or a recheck found it)."""
        if self._local is None or not self._local.path.exists():
            return
        assert self._conn is not None
        try:
            journal.replay(self._conn, self._local.path)
        except Exception as exc:
            self._server_error(exc)

    def _send(self, statements: list[tuple[str, dict[str, Any]]]) -> None:
        assert self._conn is not None
        try:
            with self._conn.pipeline(), self._conn.cursor() as cursor:
                for sql, params in statements:
                    cursor.execute(sql.encode(), params)
        except Exception as exc:
            self._server_error(exc)

    def _server_error(self, exc: Exception) -> None:
        if sqlstate_of(exc) is None and not isinstance(exc, psycopg.Error):
            raise exc
        state = "pending" if self._conn is None or self._conn.closed else "failed"
        self._fail(state, f"{self.hub.name}: cannot write instance_registry: {describe_error(exc)}")

    def _fail(self, state: str, message: str) -> None:
        if self.state != "ok":
            return
        self.state = state
        self.error = f"{message}; run `ophelia-db sync --all` once the hub is back"
