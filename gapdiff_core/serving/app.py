"""The protection service as an ASGI app (FastAPI): `create_app(settings)`.

Endpoints: POST /v1/protect (one image: the raw body, or a multipart file field), POST /v1/protect/batch
(several multipart files, JSON answer), GET /healthz, /readyz, /metrics (Prometheus), /docs (OpenAPI).
Everything stays in memory: uploads are read into bytes (never spooled to a temp file), answers are encoded in
memory. Errors are JSON `{"error": {"kind": ..., "message": ...}}` with a 4xx status for bad requests.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import math
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from python_multipart.multipart import FormParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Batcher, QueueFull
from .engine import Engine, ServiceSettings

FORMATS = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
PROTECT_PATH, BATCH_PATH = "/v1/protect", "/v1/protect/batch"
_BODY_DOC = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "string", "format": "binary"},
        "budget": {"type": "number"}, "mode": {"type": "string", "enum": ["working", "native"]},
        "format": {"type": "string", "enum": list(FORMATS)}}}}}}}
_BATCH_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "budget": {"type": "number"}, "mode": {"type": "string", "enum": ["working", "native"]},
        "format": {"type": "string", "enum": list(FORMATS)}}}}}}}


class ApiError(Exception):
    """A request the service answers with a JSON error: HTTP status, a short kind and a message."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("gapdiff_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("gapdiff_request_seconds", "Request latency (receive to answer)", ["endpoint"],
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.batch_size = Histogram("gapdiff_batch_size", "Images per generator batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.batch_seconds = Histogram("gapdiff_batch_seconds", "Duration of one generator batch",
                                       registry=self.registry)
        self.queue_depth = Gauge("gapdiff_queue_depth", "Requests waiting for a batch", registry=self.registry)
        self.errors = Counter("gapdiff_errors", "Failed requests by kind", ["kind"], registry=self.registry)
        self.images = Counter("gapdiff_images_protected", "Images protected", registry=self.registry)


class Service:
    """State of one running app: settings, the engine (once loaded), the batcher and the metrics."""

    def __init__(self, settings: ServiceSettings, engine: Engine | None = None):
        self.settings, self.engine, self.metrics = settings, engine, Metrics()
        self.api_key = os.environ.get(settings.api_key_env) or None
        self.batcher = Batcher(self._run_batch, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                               max_queue=settings.max_queue, observe_batch=self._observe_batch)
        self.load_error: str | None = None

    def _run_batch(self, key, images):
        return self.engine.run_batch(key, images)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    async def load(self) -> None:
        if self.engine is None:
            try:
                self.engine = await asyncio.to_thread(Engine, self.settings)
            except Exception as exc:  # reported by /readyz; the process stays up for /healthz
                self.load_error = f"{type(exc).__name__}: {exc}"

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send it as 'X-API-Key: KEY' or "
                                                "'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"})

    def check_ready(self) -> Engine:
        if self.engine is None:
            why = f"the generator failed to load ({self.load_error})" if self.load_error else \
                "the generator is still loading"
            raise ApiError(503, "not_ready", why, {"Retry-After": "1"})
        return self.engine

    async def read_body(self, request: Request) -> bytes:
        """The whole body, refused (413) as soon as it exceeds max_body_bytes."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def protect_one(self, name: str, data: bytes, mode: str | None, budget: float | None, fmt: str) -> dict:
        """Decode, queue, protect and encode one image; raises ApiError."""
        from ..io import ImageError, encode_image, load_image
        from ..metrics.fidelity import change_stats

        engine = self.check_ready()
        try:
            image = await run_in_threadpool(load_image, name, self.settings.max_pixels, data=data)
        except ImageError as exc:
            if exc.kind in ("pixel_limit", "decompression_bomb"):  # io's pixel limit, or Pillow's guard far above it
                raise ApiError(413, "too_many_pixels", str(exc)) from exc
            raise ApiError(422, "bad_image", str(exc)) from exc
        try:
            key = engine.key(image.rgb, mode, budget)
        except ValueError as exc:
            raise ApiError(422, "bad_parameter", str(exc)) from exc
        try:
            engine.check_size(key, name)
        except ValueError as exc:
            raise ApiError(422, "bad_image", str(exc)) from exc
        try:
            future = self.batcher.submit(key, image.rgb)
        except QueueFull as exc:
            raise ApiError(429, "queue_full", str(exc), {"Retry-After": str(exc.retry_after)}) from exc
        finally:
            self.metrics.queue_depth.set(self.batcher.depth)
        try:
            protected, batch_size = await asyncio.wait_for(future, self.settings.timeout_s)
        except asyncio.TimeoutError as exc:
            raise ApiError(504, "timeout", f"{name}: not protected within {self.settings.timeout_s:g} s; the "
                                           "service is overloaded, retry later") from exc
        except (ValueError, RuntimeError) as exc:
            raise ApiError(500, "protection_failed", f"{name}: {exc}") from exc
        alpha = image.alpha if fmt != "jpg" else None
        encoded = await run_in_threadpool(encode_image, protected, alpha, format=fmt,
                                          metadata={"icc_profile": image.metadata.get("icc_profile")}, name=name)
        stats = change_stats(image.rgb, protected)
        self.metrics.images.inc()
        return {"name": name, "data": encoded, "format": fmt, "max_change": stats.max_change, "psnr": stats.psnr,
                "batch_size": batch_size, "budget": key[2], "mode": key[1], "notes": image.notes,
                "demo": bool(engine.info.demo)}


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

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = request.url.path if request.url.path in _ENDPOINTS else "other"
        service.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

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

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the generator is loaded")
    async def readyz():
        if service.engine is None:
            return JSONResponse({"status": "failed" if service.load_error else "loading",
                                 "error": service.load_error}, status_code=503)
        info = service.engine.info
        p = service.engine.protector
        return {"status": "ready", "demo": bool(info.demo), "budget": p.budget, "mode": p.mode,
                "device": str(p.device), "precision": p.precision}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        service.metrics.queue_depth.set(service.batcher.depth)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(PROTECT_PATH, summary="Protect one image", openapi_extra=_BODY_DOC, response_class=Response,
              responses={200: {"content": {t: {} for t in FORMATS.values()},
                               "description": "The protected image; X-Gapdiff-* headers carry its stats"}})
    async def protect(request: Request, budget: float | None = None, mode: str | None = None,
                      format: str | None = None):
        service.check_key(request)
        body = await service.read_body(request)
        fields, files = _parse(request, body)
        if files:
            name, data = files[0]
        elif fields:
            raise ApiError(400, "no_image", "the multipart form has no file field; send the image as 'image'")
        else:
            name, data = "upload", body
        budget, mode, fmt = _options(fields, budget, mode, format)
        result = await service.protect_one(name, data, mode, budget, fmt)
        return Response(result["data"], media_type=FORMATS[fmt], headers=_stat_headers(result))

    @app.post(BATCH_PATH, summary="Protect several images (multipart, one file field each)", openapi_extra=_BATCH_DOC)
    async def protect_batch(request: Request, budget: float | None = None, mode: str | None = None,
                            format: str | None = None):
        service.check_key(request)
        body = await service.read_body(request)
        fields, files = _parse(request, body)
        if not files:
            raise ApiError(400, "no_image", "send the images as multipart/form-data file fields ('images')")
        if len(files) > settings.max_batch_images:
            raise ApiError(413, "too_many_images", f"{len(files)} images in one request; at most "
                                                   f"{settings.max_batch_images} (split the batch)")
        budget, mode, fmt = _options(fields, budget, mode, format)
        outcomes = await asyncio.gather(*(service.protect_one(name, data, mode, budget, fmt) for name, data in files),
                                        return_exceptions=True)
        results = []
        for (name, _), outcome in zip(files, outcomes):
            if isinstance(outcome, ApiError):
                service.metrics.errors.labels(outcome.kind).inc()
                results.append({"name": name, "ok": False, "status": outcome.status,
                                "error": {"kind": outcome.kind, "message": outcome.message}})
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append({"name": name, "ok": True, "format": fmt, "image_base64":
                                base64.b64encode(outcome["data"]).decode("ascii"),
                                **{k: _json_number(outcome[k]) for k in ("max_change", "psnr", "budget")},
                                "mode": outcome["mode"], "batch_size": outcome["batch_size"],
                                "notes": outcome["notes"], "demo": outcome["demo"]})
        failed = sum(not r["ok"] for r in results)
        return {"protected": len(results) - failed, "failed": failed, "results": results}

    return app


_ENDPOINTS = {PROTECT_PATH, BATCH_PATH, "/healthz", "/readyz", "/metrics"}


def _error_response(service: Service, exc: ApiError) -> JSONResponse:
    service.metrics.errors.labels(exc.kind).inc()
    return JSONResponse({"error": {"kind": exc.kind, "message": exc.message}}, status_code=exc.status,
                        headers=exc.headers)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body of {size:,} bytes is over the {limit:,} byte limit; "
                                           "send a smaller image")


def _parse(request: Request, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """Fields and (filename, bytes) files of a multipart body, parsed in memory; ({}, []) for a raw body."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        return {}, []
    if not params.get(b"boundary"):
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []

    def on_field(field):
        fields[field.field_name.decode("utf-8", "replace")] = (field.value or b"").decode("utf-8", "replace")

    def on_file(file):
        file.file_object.seek(0)
        name = (file.file_name or file.field_name or b"upload").decode("utf-8", "replace")
        files.append((os.path.basename(name) or "upload", file.file_object.read()))

    parser = FormParser("multipart/form-data", on_field, on_file, boundary=params[b"boundary"],
                        config={"MAX_MEMORY_FILE_SIZE": len(body) + 1})  # never spooled to disk
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart body ({exc})") from exc
    return fields, files


def _options(fields: dict[str, str], budget, mode, fmt) -> tuple[float | None, str | None, str]:
    """budget, mode and format from the form fields, else the query (the form wins)."""
    if "budget" in fields:
        try:
            budget = float(fields["budget"])
        except ValueError:
            raise ApiError(422, "bad_parameter", f"budget must be a number, not {fields['budget']!r}") from None
    if budget is not None and not math.isfinite(budget):
        raise ApiError(422, "bad_parameter", f"budget must be a finite number, not {budget}")
    mode = fields.get("mode", mode)
    fmt = (fields.get("format", fmt) or "png").lower()
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in FORMATS:
        raise ApiError(422, "bad_parameter", f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return budget, mode, fmt


def _stat_headers(result: dict[str, Any]) -> dict[str, str]:
    headers = {"X-Gapdiff-Max-Change": f"{result['max_change']:g}", "X-Gapdiff-PSNR": f"{result['psnr']:.2f}",
               "X-Gapdiff-Budget": f"{result['budget']:g}", "X-Gapdiff-Mode": result["mode"],
               "X-Gapdiff-Batch-Size": str(result["batch_size"]),
               "X-Gapdiff-Demo": "true" if result["demo"] else "false"}
    if result["notes"]:
        headers["X-Gapdiff-Notes"] = "; ".join(result["notes"]).encode("ascii", "replace").decode("ascii")
    return headers


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None
