"""The state behind the service's endpoints: settings, the engine once loaded, the batcher, the metrics, and the
one request path every protected image goes through (`Service.protect_one`)."""
from __future__ import annotations

import asyncio
import hmac
import os
from dataclasses import dataclass

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batcher import Batcher, QueueFull
from .engine import Engine
from .settings import ServiceSettings

FORMATS = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}


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


@dataclass
class Protected:
    """One protected image, encoded, with what the answer reports about it."""

    name: str
    data: bytes
    format: str
    max_change: float
    psnr: float
    batch_size: int
    budget: float
    mode: str
    notes: list[str]
    demo: bool


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
        """ApiError 401 unless the request carries the API key (when one is set)."""
        if self.api_key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send it as 'X-API-Key: KEY' or "
                                                "'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"})

    def ready_engine(self) -> Engine:
        """The loaded engine; ApiError 503 while it loads or after it failed to."""
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

    async def protect_one(self, engine: Engine, name: str, data: bytes, mode: str | None, budget, fmt: str
                          ) -> Protected:
        """Decode, queue, protect and encode one image; raises ApiError."""
        from ..io import ImageError, encode_image, load_image
        from ..metrics.fidelity import change_stats

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
            protected, batch_size = await asyncio.wait_for(future, self.settings.timeout)
        except asyncio.TimeoutError as exc:
            raise ApiError(504, "timeout", f"{name}: not protected within {self.settings.timeout:g} s; the "
                                           "service is overloaded, retry later") from exc
        except (ValueError, RuntimeError) as exc:
            raise ApiError(500, "protection_failed", f"{name}: {exc}") from exc
        alpha = image.alpha if fmt != "jpg" else None
        encoded = await run_in_threadpool(encode_image, protected, alpha, format=fmt,
                                          metadata={"icc_profile": image.metadata.get("icc_profile")}, name=name)
        stats = change_stats(image.rgb, protected)
        self.metrics.images.inc()
        return Protected(name=name, data=encoded, format=fmt, max_change=stats.max_change, psnr=stats.psnr,
                         batch_size=batch_size, budget=key[2], mode=key[1], notes=image.notes,
                         demo=bool(engine.info.demo))


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body of {size:,} bytes is over the {limit:,} byte limit; "
                                           "send a smaller image")
