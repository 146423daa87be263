"""`ophelia-db serve`: the hub as a service (fleet page, sync endpoint, metrics) on uvicorn."""

from __future__ import annotations

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
        err(f"serving {loaded.path} on http://{host}:{port}/ (Ctrl-C or SIGTERM stops it)")
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command()(serve)
