"""How many instances of one database server a run works on at once (``[defaults] per_host``).

Instances are many, servers fewer: several instances may share a PostgreSQL
server, or a pooler's front door, whose ``max_connections`` the whole fleet's
``jobs`` must not exhaust. A server is its URL's first host and port, as libpq
will reach it; probes and migrations both take one of its slots.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import Defaults, Target
from ophelia_db.fleet.urls import parse

PER_HOST = Defaults().per_host


def server_of(target: Target) -> str:
    """``host:port`` of the server ``target`` connects to first (its own name when its URL is missing)."""
    try:
        host, port = parse(target.dsn()).effective_endpoints()[0]
    except ConfigError:
        return f"(no URL: {target.name})"
    return f"{host}:{port}"


class HostSlots:
    """At most ``per_host`` instances of one server at once, across the threads of a run."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._freed = threading.Condition(self._lock)
        self._servers: dict[str, str] = {}

    def server(self, target: Target) -> str:
        with self._lock:
            found = self._servers.get(target.name)
        if found is None:
            found = server_of(target)
            with self._lock:
                self._servers[target.name] = found
        return found

    def try_take(self, target: Target) -> bool:
        """Take a slot of ``target``'s server if one is free; never waits."""
        server = self.server(target)
        with self._lock:
            if self._held.get(server, 0) >= self.per_host:
                return False
            self._held[server] = self._held.get(server, 0) + 1
            return True

    def give_back(self, target: Target) -> None:
        server = self.server(target)
        with self._lock:
            self._held[server] -= 1
            self._freed.notify_all()

    def take(self, target: Target) -> None:
        """Take a slot of ``target``'s server, waiting for one if they are all taken."""
        server = self.server(target)
        with self._lock:
            while self._held.get(server, 0) >= self.per_host:
                self._freed.wait()
            self._held[server] = self._held.get(server, 0) + 1

    @contextmanager
    def slot(self, target: Target) -> Iterator[None]:
        """Hold a slot of ``target``'s server for the block."""
        self.take(target)
        try:
            yield
        finally:
            self.give_back(target)
