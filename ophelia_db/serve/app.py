"""The hub as a service: the fleet page, an instance's and a run's pages, the seed's sync endpoint,
``/api/status``, ``/healthz`` and ``/metrics``, as one Starlette application.

Read-only but for one endpoint: ``POST /api/sync-schema-version`` (the seed's
HTTP function, kept for its callers) re-reads instances and updates their hub
rows, and only with the bearer token of ``OPHELIA_SERVE_TOKEN``, compared in
constant time; without a configured token it is disabled and says so. Pages
are server-rendered Jinja2 templates with autoescaping (a community called
``<script>`` shows as text); the stylesheet ships in the package. Every error
is a short, redacted answer, never a traceback. The endpoints are plain
functions: Starlette runs them in its thread pool, where the blocking
database reads belong.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet.config import Fleet
from ophelia_db.redaction import redact
from ophelia_db.run.chain import Chain
from ophelia_db.serve import pages
from ophelia_db.serve.metrics import metrics_text
from ophelia_db.serve.view import FleetView

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
_MAX_BODY = 64 * 1024


def create_app(
    fleet: Fleet, *, token: str | None = None, cache_seconds: float = 5.0, chain: Chain | None = None
) -> Starlette:
    """The service for ``fleet``; ``token`` enables the sync endpoint."""
    view = FleetView(fleet, cache_seconds=cache_seconds, chain=chain)
    # Autoescaping on every template: a community name is data, never markup.
    loader = jinja2.FileSystemLoader(str(HERE / "templates"))
    templates = Jinja2Templates(env=jinja2.Environment(loader=loader, autoescape=True))

    def fleet_page(request: Request) -> Response:
        context = pages.fleet_context(view.snapshot(), request.query_params)
        return templates.TemplateResponse(request, "fleet.html", context)

    def instance_page(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in {m.name for m in fleet.members}:
            raise HTTPException(404, f"no instance '{name}' in the fleet")
        context = pages.instance_context(fleet, fleet.get(name), view)
        return templates.TemplateResponse(request, "instance.html", context)

    def run_page(request: Request) -> Response:
        context = pages.run_context(fleet, request.path_params["run_id"])
        return templates.TemplateResponse(request, "run.html", context)

    def api_status(request: Request) -> Response:
        return JSONResponse(view.snapshot().report.as_record())

    def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    def metrics(request: Request) -> Response:
        return Response(metrics_text(view), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def sync_schema_version(request: Request) -> Response:
        refused = _refuse_token(request, token)
        if refused is not None:
            return refused
        body = await request.body()
        wanted = _sync_request(body)

        # The sync is blocking database work: off the event loop, like the other endpoints.
        answer, status = await run_in_threadpool(pages.sync_answer, fleet, wanted)
        view.invalidate()
        return JSONResponse(answer, status_code=status)

    routes = [
        Route("/", fleet_page),
        Route("/instances/{name}", instance_page),
        Route("/runs/{run_id}", run_page),
        Route("/api/status", api_status),
        Route("/api/sync-schema-version", sync_schema_version, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    handlers: dict[Any, Any] = {HTTPException: _http_error, OpheliaError: _known_error, Exception: _bug}
    return Starlette(routes=routes, exception_handlers=handlers)


def _refuse_token(request: Request, token: str | None) -> Response | None:
    if not token:
        return JSONResponse(
            {"error": "this endpoint is disabled: start `ophelia-db serve` with OPHELIA_SERVE_TOKEN set"},
            status_code=503,
        )
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        return JSONResponse(
            {"error": "a valid bearer token is required (Authorization: Bearer <token>)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None


def _sync_request(body: bytes) -> str | None:
    """The subdomain asked for, or ``None`` for ``{"all": true}``; a bad body is a 400."""
    if len(body) > _MAX_BODY:
        raise HTTPException(413, "the request body is too large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, 'expected a JSON body: {"subdomain": "corte"} or {"all": true}') from None
    if isinstance(data, dict) and data.get("all") is True:
        return None
    if isinstance(data, dict) and isinstance(data.get("subdomain"), str) and data["subdomain"]:
        return str(data["subdomain"])
    raise HTTPException(400, 'expected {"subdomain": "corte"} or {"all": true}')


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = redact(str(exc.detail))
    if _wants_json(request):
        return JSONResponse({"error": detail}, status_code=exc.status_code)
    return PlainTextResponse(detail, status_code=exc.status_code)


async def _known_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpheliaError)
    status = 404 if isinstance(exc, ConfigError) else 502
    message = redact(exc.message)
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(message, status_code=status)


async def _bug(request: Request, exc: Exception) -> Response:
    # The traceback goes to the server's log, redacted; the client gets one line.
    log.error("internal error on %s: %s", request.url.path, redact(f"{type(exc).__name__}: {exc}"))
    return PlainTextResponse("internal error (a bug of ophelia-db); see the server log", status_code=500)
