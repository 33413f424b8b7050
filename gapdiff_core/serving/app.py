"""The protection service as an ASGI app (FastAPI): `create_app(settings)`.

Endpoints (routes.py): POST /v1/protect (one image: the raw body, or a multipart file field), POST /v1/protect/batch
(several multipart files, JSON answer), GET /healthz, /readyz, /metrics (Prometheus), /docs (OpenAPI).
Everything stays in memory: uploads are read into bytes (never spooled to a temp file), answers are encoded in
memory. Errors are JSON `{"error": {"kind": ..., "message": ...}}` with a 4xx status for bad requests, and a 503
for a request still running when the server stops waiting for it (past uvicorn's graceful shutdown timeout).
"""
from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine
from .routes import BATCH_PATH, OPEN_PATHS, PROTECT_PATH, keyed_routes, open_routes
from .schemas import ErrorBody
from .service import RELEASES, ApiError, Service
from .settings import ServiceSettings

_ENDPOINTS = {PROTECT_PATH, BATCH_PATH, *OPEN_PATHS}


def create_app(settings: ServiceSettings, engine: Engine | None = None) -> FastAPI:
    """The service app. The generator loads in the background at startup (or `engine` is used as given);
    /readyz answers 200 once it is loaded."""
    service = Service(settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        loading = asyncio.create_task(service.load())
        yield
        await loading
        await service.batcher.stop()

    app = FastAPI(title="gapdiff protection service", version="1", lifespan=lifespan,
                  description="Protect face photos against DreamBooth-style deepfakes with a GAP-Diff generator "
                              "(one forward pass, dynamic batching). Budgets are L-infinity bounds in grey "
                              "levels on the 0-255 scale.")
    app.state.service = service
    app.include_router(open_routes)
    app.include_router(keyed_routes)

    app.add_middleware(_RequestLifetime, service=service)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error_response(service, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error_response(service, ApiError(422, "bad_parameter", problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(service, ApiError(exc.status_code, kind, f"{request.method} {request.url.path}: "
                                                                         f"{exc.detail}", exc.headers))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return _error_response(service, ApiError(500, "internal", f"{type(exc).__name__}: {exc}"))

    return app


def _error_response(service: Service, exc: ApiError) -> JSONResponse:
    service.metrics.errors.labels(exc.kind).inc()
    body = ErrorBody(error={"kind": exc.kind, "message": exc.message})
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=exc.headers)


class _RequestLifetime:
    """ASGI middleware around every HTTP request: counts it and its latency, releases what it reserved (its pixels)
    once its answer is sent or failed, and answers a request cancelled by the server's shutdown with the JSON
    error instead of the server's plain-text 500 and traceback."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), []
        releases = scope.setdefault(RELEASES, [])

        async def watched_send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except asyncio.CancelledError:
            if status:  # the answer had begun: nothing else can be sent
                raise
            stopped = ApiError(503, "shutting_down", "the service stopped before this request was done (past its "
                                                     "graceful shutdown timeout); retry", {"Retry-After": "1"})
            await _error_response(self.service, stopped)(scope, receive, watched_send)
        finally:
            for release in releases:
                release()
            endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
            self.service.metrics.requests.labels(endpoint, str(status[0] if status else 500)).inc()
            self.service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
