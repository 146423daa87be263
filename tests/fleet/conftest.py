"""fleet.toml, URLs, redaction, the hub registry, and the migration lock behind real poolers.

``pgbouncer`` starts a real PgBouncer (Debian's ``pgbouncer`` package) in front of
the session cluster; the session cluster and database factories come from
``tests/conftest.py``, shared helpers from ``tests/helpers.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ophelia_db.local.binaries import free_port
from ophelia_db.local.cluster import LocalCluster
from tests.helpers import make_state_dir

Pgbouncer = Callable[..., int]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def pgbouncer(pg_cluster: LocalCluster) -> Iterator[Pgbouncer]:
    """Factory: start PgBouncer in ``mode`` with ``pool_size`` server connections; returns its port."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary is None:
        reason = "pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the pooler tests: {reason}")
        pytest.skip(reason)
    started: list[subprocess.Popen[bytes]] = []
    folders: list[Path] = []

    def start(mode: str, pool_size: int = 2) -> int:
        folder = make_state_dir()
        folders.append(folder)
        port = free_port()
        (folder / "users.txt").write_text('"postgres" ""\n')
        (folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={pg_cluster.host} port={pg_cluster.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
            f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 50\n"
            f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        if os.geteuid() == 0:
            for name in ("users.txt", "pgbouncer.ini"):
                shutil.chown(folder / name, "postgres", "postgres")
        # PgBouncer refuses to run as root; -u drops to the server's OS user.
        user = ["-u", "postgres"] if os.geteuid() == 0 else []
        process = subprocess.Popen([binary, *user, str(folder / "pgbouncer.ini")])
        started.append(process)
        deadline = time.monotonic() + 15
        while not _listening(port):
            assert process.poll() is None, (folder / "pgbouncer.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "pgbouncer did not start listening"
            time.sleep(0.05)
        return port

    yield start
    for process in started:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
