"""The state behind the service's endpoints: settings, the engine once loaded, the batcher, the metrics, the pixel
budgets (`Service.admit`), and the one request path every protected image goes through (`Service.protect_one`)."""
from __future__ import annotations

import asyncio
import gc
import hmac

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect

from .batcher import Batcher, QueueFull
from .engine import Engine, Job, Protected
from .settings import ServiceSettings, api_key

RELEASES = "gapdiff.releases"  # the scope key of what to run once a request's answer is sent (app.py runs them)

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


class Service:
    """State of one running app: settings, the engine (once loaded), the batcher and the metrics."""

    def __init__(self, settings: ServiceSettings, engine: Engine | None = None):
        self.settings, self.engine, self.metrics = settings, engine, Metrics()
        self.api_key = api_key(settings)
        self.batcher = Batcher(self._run_batch, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                               max_queue=settings.max_queue, max_weight=settings.max_batch_pixels,
                               observe_batch=self._observe_batch)
        self.load_error: str | None = None
        self.admitted_pixels = 0  # pixels of the requests admitted and not yet answered

    def _run_batch(self, key, images):
        return self.engine.run_batch(key, images)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    async def load(self) -> None:
        engine = self.engine
        if engine is None:
            try:
                engine = await asyncio.to_thread(Engine, self.settings)
            except Exception as exc:  # reported by /readyz; the process stays up for /healthz
                self.load_error = f"{type(exc).__name__}: {exc}"
        _freeze_startup_objects()  # before /readyz answers 200: its full collection takes ~80 ms
        self.engine = engine

    def check_key(self, request: Request) -> None:
        """ApiError 401 unless the request carries the API key (when one is set)."""
        if self.api_key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not hmac.compare_digest(given.encode("latin-1", "replace"), self.api_key.encode("latin-1")):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send it as 'X-API-Key: KEY' or "
                                                "'Authorization: Bearer KEY'", {"WWW-Authenticate": "Bearer"})

    def ready_engine(self) -> Engine:
        """The loaded engine; ApiError 503 while it loads or after it failed to."""
        if self.engine is None:
            why = f"the generator failed to load ({self.load_error})" if self.load_error else \
                "the generator is still loading"
            raise ApiError(503, "not_ready", why, {"Retry-After": "1"})
        return self.engine

    async def read_body(self, request: Request) -> bytearray:
        """The whole body, refused (413) as soon as it exceeds max_body_bytes, or (408) when it takes longer than
        body_timeout; a client that goes away mid-body ends the request without a traceback (400). It grows chunk
        by chunk: joining tens of MB at the end held the interpreter (and the event loop) for tens of ms."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        body = bytearray()

        async def receive():
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise _too_large(len(body) + len(chunk), limit)
                body.extend(chunk)

        try:
            await asyncio.wait_for(receive(), self.settings.body_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body was not received within "
                                                f"{self.settings.body_timeout:g} s ({len(body):,} bytes arrived)",
                           {"Connection": "close"}) from None
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected",
                           f"the client went away after {len(body):,} bytes of the body") from None
        return body

    def admit(self, request: Request, pixels: int) -> None:
        """Reserve `pixels` of the queue's pixel budget until the request's answer is sent: ApiError 413 over the
        budget of one request, 429 with Retry-After while the queue's budget has no room for them."""
        limits = self.settings
        if pixels > limits.max_request_pixels:
            raise ApiError(413, "too_many_pixels", f"the request's images have {pixels:,} pixels in all, over the "
                                                   f"{limits.max_request_pixels:,} pixel budget of one request; "
                                                   "send fewer or smaller images per request")
        if self.admitted_pixels + pixels > limits.max_queue_pixels:
            wait = self.batcher.retry_after()
            raise ApiError(429, "queue_full", f"the queue holds {self.admitted_pixels:,} pixels of images; with "
                                              f"these {pixels:,} it would be over its {limits.max_queue_pixels:,} "
                                              f"pixel budget; retry in {wait} s", {"Retry-After": str(wait)})
        self.admitted_pixels += pixels
        released = []

        def release():
            if not released:
                released.append(True)
                self.admitted_pixels -= pixels

        request.scope.setdefault(RELEASES, []).append(release)

    async def protect_one(self, engine: Engine, name: str, data: bytes, size: tuple[int, int], mode: str | None,
                          budget, fmt: str) -> Protected:
        """Queue, protect and encode one image whose header declared `size` (width, height; its pixels admitted);
        it is decoded when its batch runs. Raises ApiError."""
        from ..io import ImageError

        try:
            key = engine.key(size, mode, budget)
        except ValueError as exc:
            raise ApiError(422, "bad_parameter", str(exc)) from None
        try:
            engine.check_size(key, name)
        except ValueError as exc:
            raise ApiError(422, "bad_image", str(exc)) from None
        try:
            future = self.batcher.submit(key, Job(name, data, fmt), weight=size[0] * size[1])
        except QueueFull as exc:
            raise ApiError(429, "queue_full", str(exc), {"Retry-After": str(exc.retry_after)}) from None
        finally:
            self.metrics.queue_depth.set(self.batcher.depth)
        try:
            protected, _ = await asyncio.wait_for(future, self.settings.timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"{name}: not protected within {self.settings.timeout:g} s; the "
                                           "service is overloaded, retry later") from None
        except ImageError as exc:
            raise image_error(exc) from None
        except (ValueError, RuntimeError, MemoryError) as exc:
            raise ApiError(500, "protection_failed", f"{name}: {type(exc).__name__}: {exc}") from None
        self.metrics.images.inc()
        return protected


def image_error(exc) -> ApiError:
    """io's ImageError as the service answers it: 413 too_many_pixels, else 422 bad_image."""
    if exc.kind in ("pixel_limit", "decompression_bomb"):  # io's pixel limit, or Pillow's guard far above it
        return ApiError(413, "too_many_pixels", str(exc))
    return ApiError(422, "bad_image", str(exc))


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body of {size:,} bytes is over the {limit:,} byte limit; "
                                           "send a smaller image")


def _freeze_startup_objects() -> None:
    """Once the generator is loaded, and only if nothing in the process froze objects before: move every object
    alive then (the imported modules, the model) out of the cyclic garbage collector's reach. Its full
    collections, which run on whichever thread allocates, the event loop's included, then scan only what requests
    created: under the hostile load of `bench/serve.py --hostile` they paused the loop 30-80 ms (measured), the
    /healthz p99. Garbage that requests create is still collected."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
