"""A TCP forwarder that makes a local PostgreSQL look remote, and counts round trips.

Each chunk read from one side is written to the other ``rtt / 2`` seconds later,
in order, so every request/response exchange costs one ``rtt`` as it would to a
database 20–80 ms away. The proxy also counts, per connection, the client's
*turns*: a turn starts each time the client sends after the server has spoken
(or for the first time). A turn is one network round trip whatever the number of
statements it carries, so pipelined or batched statements count once — which is
what latency charges for.

It runs its asyncio loop on a daemon thread, so a benchmark or a test can use it
from synchronous code::

    with LatencyProxy("127.0.0.1", 5432, rtt=0.02) as proxy:
        url = f"postgresql://u@127.0.0.1:{proxy.port}/db"
        ...
        proxy.round_trips  # turns over all connections so far
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

CHUNK = 65536
# The protocol's Terminate message: a client closing its connection.
TERMINATE = b"X\x00\x00\x00\x04"


@dataclass
class Counts:
    """What went through the proxy: connections opened and client turns over all of them."""

    connections: int = 0
    round_trips: int = 0
    per_connection: list[int] = field(default_factory=list)
    # Connections open at once: now, and the most there were (a connection is closed
    # from the moment its client says Terminate or hangs up).
    open_now: int = 0
    peak_open: int = 0


class LatencyProxy:
    """Forward ``127.0.0.1:<port>`` to ``host:port``, delaying each direction by ``rtt / 2``."""

    def __init__(self, host: str, port: int, *, rtt: float = 0.0, record: bool = False) -> None:
        self.upstream = (host, port)
        self.rtt = rtt
        # With ``record``, the first bytes of every turn are kept, to see what each round trip carried.
        self.record = record
        self.turns: list[bytes] = []
        self.port = 0
        self.counts = Counts()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="latency-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def round_trips(self) -> int:
        with self._lock:
            return self.counts.round_trips

    @property
    def connections(self) -> int:
        with self._lock:
            return self.counts.connections

    def reset(self) -> None:
        with self._lock:
            self.counts = Counts()
            self.turns = []

    def start(self) -> LatencyProxy:
        self._thread.start()
        self._ready.wait()
        return self

    def stop(self) -> None:
        """Close the listener and every forwarded connection, then end the loop."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        counts = self.counts
        with self._lock:
            counts.connections += 1
            counts.per_connection.append(0)
            index = len(counts.per_connection) - 1
            counts.open_now += 1
            counts.peak_open = max(counts.peak_open, counts.open_now)
        # True when the server spoke last: the client's next bytes open a new turn.
        turn = {"server_spoke": True, "open": True}

        def closed() -> None:
            with self._lock:
                if turn["open"]:
                    turn["open"] = False
                    counts.open_now -= 1

        def client_sent(data: bytes) -> None:
            if data.endswith(TERMINATE) or not data:
                closed()
            if data == TERMINATE or not data:
                return  # the client leaves: nothing to wait for, not a round trip
            if turn["server_spoke"]:
                turn["server_spoke"] = False
                with self._lock:
                    counts.round_trips += 1
                    counts.per_connection[index] += 1
                    if self.record:
                        self.turns.append(data[:160])

        def server_sent(data: bytes) -> None:
            turn["server_spoke"] = True

        await asyncio.gather(
            self._pipe(client_reader, server_writer, client_sent),
            self._pipe(server_reader, client_writer, server_sent),
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_read: Callable[[bytes], None]
    ) -> None:
        """Copy one direction, each chunk delivered ``rtt / 2`` after it was read, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                on_read(data)
                queue.put_nowait((loop.time() + self.rtt / 2, data))
                if not data:
                    break
            await delivery
        except (ConnectionError, OSError):
            delivery.cancel()
        finally:
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()
