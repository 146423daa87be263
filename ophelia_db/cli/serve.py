"""`ophelia-db serve`: the hub as a service (fleet page, sync endpoint, metrics) on uvicorn."""

from __future__ import annotations

import errno
import socket
from typing import Annotated

import typer

from ophelia_db._lazy import lazy_module
from ophelia_db.cli.options import FleetOpt, errors, fleet_at
from ophelia_db.cli.render import err
from ophelia_db.errors import ConfigError

settings = lazy_module("ophelia_db.settings")


def serve(
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="Port to listen on.")
    ] = 8080,
    cache_seconds: Annotated[
        float,
        typer.Option(
            "--cache-seconds",
            metavar="S",
            min=0,
            help="How long a probe of the fleet is reused by the pages.",
        ),
    ] = 5.0,
    fleet: FleetOpt = None,
) -> None:
    """Serve the fleet page, instance and run pages, /api/status, /metrics and the seed's
    POST /api/sync-schema-version (enabled by OPHELIA_SERVE_TOKEN); stops cleanly on SIGTERM.

    Example: ophelia-db serve --port 8080
    """
    with errors():
        loaded = fleet_at(fleet)
        token = settings.environment_settings().serve_token
        # Imported here: the web stack is loaded only by the command that serves.
        import uvicorn

        from ophelia_db.serve import create_app

        app = create_app(loaded, token=token, cache_seconds=cache_seconds)
        if host not in ("127.0.0.1", "localhost", "::1"):
            err(f"warning: listening on {host}: the fleet page is readable by whoever reaches it")
        if not token:
            err("note: POST /api/sync-schema-version is disabled; set OPHELIA_SERVE_TOKEN to enable it")
        listening = _listen(host, port)
        err(f"serving {loaded.path} on http://{_address(host, port)}/ (Ctrl-C or SIGTERM stops it)")
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.run(sockets=[listening])


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here: uvicorn, left to bind it, logs a port in use and exits
    with its own code 3, which is ours for a held migration lock."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        # create_server appends the address to the reason: the message names it already.
        reason = str(exc.strerror or exc).split(" (while attempting to bind")[0]
        hint = "; choose another --port" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {_address(host, port)}: {reason}{hint}") from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command()(serve)
