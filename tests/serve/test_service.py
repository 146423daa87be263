"""`ophelia-db serve` as a real uvicorn server: a burst of page loads costs the fleet one probe per
instance (connections counted by a proxy in front of each), SIGTERM stops it cleanly, and a port
in use is one line and exit 2."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from urllib.parse import urlsplit, urlunsplit

from bench.latency_proxy import LatencyProxy
from tests.helpers import run_cli, write_fleet
from tests.serve.conftest import ServedFleet, Server, start_server


def test_a_burst_of_requests_probes_each_instance_once(
    served_fleet: ServedFleet, server_factory: list[Server]
) -> None:
    with ExitStack() as stack:
        proxied = {}
        proxies = {}
        for name, url in served_fleet.urls.items():
            direct = urlsplit(url)
            proxy = stack.enter_context(LatencyProxy(direct.hostname or "127.0.0.1", direct.port or 5432))
            proxies[name] = proxy
            proxied[name] = urlunsplit(direct._replace(netloc=f"{direct.username}@127.0.0.1:{proxy.port}"))
        directory = served_fleet.path.parent / "proxied"
        directory.mkdir()
        path = write_fleet(directory, served_fleet.hub, proxied)
        server = start_server(path, "--cache-seconds", "600")
        server_factory.append(server)

        paths = ["/", "/metrics", "/instances/inst1", "/api/status"] * 50
        with ThreadPoolExecutor(max_workers=20) as clients:
            answers = list(clients.map(server.get, paths))

    assert [status for status, _ in answers] == [200] * 200
    assert all("inst1" in body for _, body in answers)
    # One probe each; inst1's page adds its history and its vault, read once too.
    assert proxies["inst1"].connections == 3, proxies["inst1"].counts
    assert proxies["inst2"].connections == 1, f"{proxies['inst2'].counts} (a probe per request: 150)"


def test_sigterm_stops_the_server_cleanly(served_fleet: ServedFleet, server_factory: list[Server]) -> None:
    server = start_server(served_fleet.path)
    server_factory.append(server)
    assert server.get("/")[0] == 200
    server.process.send_signal(signal.SIGTERM)
    # uvicorn finishes what is in flight, then lets the signal end the process: a shell sees 143.
    assert server.process.wait(timeout=30) == -signal.SIGTERM
    _, stderr = server.process.communicate(timeout=5)
    assert "Traceback" not in stderr and "SIGTERM stops it" in stderr


def test_a_port_in_use_is_refused_in_one_line_with_exit_2(
    served_fleet: ServedFleet, server_factory: list[Server]
) -> None:
    # uvicorn, left to bind, logs the error and exits 3, which is a held migration lock here.
    server = start_server(served_fleet.path)
    server_factory.append(server)
    port = server.base.rsplit(":", 1)[1]
    second = run_cli(["serve", "--port", port], fleet=served_fleet.path)
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another --port"
    )
    assert "ERROR" not in second.stderr and "Traceback" not in second.stderr
    assert server.get("/healthz")[0] == 200
