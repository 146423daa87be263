"""The hub as a service: the API in-process (Starlette's test client over real PostgreSQL),
a real uvicorn server for load and signals, and a real headless Chromium for the pages.

``served_fleet`` migrates a hub and two instances; inst2's community is called
``<script>alert(1)</script>`` so that every page proves it escapes HTML, and
inst1's vault holds a secret no page may show.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ophelia_db.fleet.config import Fleet, load_fleet
from tests.helpers import OPHELIA_DB, FleetDbs, clean_env, execute, invoke, write_fleet

XSS = "<script>alert(1)</script>"
SECRET = "s3cr3t-vault-value"


@dataclass
class ServedFleet:
    path: Path
    fleet: Fleet
    hub: str
    urls: dict[str, str]
    run_id: str


@pytest.fixture
def served_fleet(tmp_path: Path, fleet_dbs: FleetDbs) -> ServedFleet:
    hub, urls = fleet_dbs(2)
    path = write_fleet(tmp_path, hub, urls, tags={"inst1": ["canary"], "inst2": []})
    text = path.read_text(encoding="utf-8").replace('community_name = "Inst2"', f'community_name = "{XSS}"')
    path.write_text(text, encoding="utf-8")
    done = invoke(["upgrade", "--all", "--json", "--fleet", str(path)])
    assert done.exit_code == 0, done.stdout + done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    execute(
        urls["inst1"],
        "INSERT INTO public.instance_config (key, value, is_secret) VALUES ('SMTP_PASSWORD', %s, true), "
        "('COMMUNITY_NAME', '\"Inst1\"', false)",
        (f'"{SECRET}"',),
    )
    return ServedFleet(path, load_fleet(path), hub, urls, run_id)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    base: str

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


def start_server(fleet_path: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [*OPHELIA_DB, "serve", "--port", str(port), *args],
        env=clean_env({"OPHELIA_FLEET": str(fleet_path), **(env or {})}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"serve exited {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            if server.get("/healthz")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError("serve did not answer /healthz within 30 s")


@pytest.fixture
def server_factory() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(timeout=30)


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def chromium() -> tuple[str, str]:
    found = chromium_paths()
    if found is None:
        reason = "Chromium and ChromeDriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    return found
