"""The service's endpoints on two routers: `open_routes` (liveness, readiness, metrics: no key) and
`keyed_routes`, whose router-level dependency checks the API key before any endpoint on it runs."""
from __future__ import annotations

import asyncio
import base64
import math

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..model.protector import MODES
from .dependencies import EngineDep, ServiceDep, require_api_key
from .schemas import BatchAnswer, ErrorBody, FailedImage, Health, NotReady, ProtectedImage, Readiness
from .engine import Protected
from .service import FORMATS, ApiError
from .uploads import read_uploads, request_options

PROTECT_PATH, BATCH_PATH = "/v1/protect", "/v1/protect/batch"
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


def _form_schema(files: dict) -> dict:
    return {"type": "object", "properties": {
        **files, "budget": {"type": "number"}, "mode": {"type": "string", "enum": list(MODES)},
        "format": {"type": "string", "enum": list(FORMATS)}}}


_BINARY = {"type": "string", "format": "binary"}
_PROTECT_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": _BINARY}, "multipart/form-data": {"schema": _form_schema({"image": _BINARY})}}}}
_BATCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": _form_schema({"images": {"type": "array", "items": _BINARY}})}}}}
_ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 413, 422, 429, 503, 504)}

BudgetQuery = Query(None, description="grey levels on the 0-255 scale, 1 up to the service's budget")
ModeQuery = Query(None, json_schema_extra={"enum": list(MODES)})
FormatQuery = Query(None, json_schema_extra={"enum": list(FORMATS)})

open_routes = APIRouter()
keyed_routes = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)


@open_routes.get("/healthz", summary="Liveness: the process answers", response_model=Health)
async def healthz() -> Health:
    return Health()


@open_routes.get("/readyz", summary="Readiness: the generator is loaded", response_model=Readiness,
                 responses={503: {"model": NotReady}})
async def readyz(service: ServiceDep):
    if service.engine is None:
        answer = NotReady(status="failed" if service.load_error else "loading", error=service.load_error)
        return JSONResponse(answer.model_dump(), status_code=503)
    p = service.engine.protector
    return Readiness(demo=bool(service.engine.info.demo), budget=p.budget, mode=p.mode, device=str(p.device),
                     precision=p.precision)


@open_routes.get("/metrics", summary="Prometheus metrics", response_class=Response,
                 responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(service: ServiceDep):
    service.metrics.queue_depth.set(service.batcher.depth)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@keyed_routes.post(PROTECT_PATH, summary="Protect one image", openapi_extra=_PROTECT_BODY, response_class=Response,
                   responses={200: {"content": {t: {} for t in FORMATS.values()},
                                    "description": "The protected image; X-Gapdiff-* headers carry its stats"}})
async def protect(request: Request, service: ServiceDep, engine: EngineDep, budget: float | None = BudgetQuery,
                  mode: str | None = ModeQuery, format: str | None = FormatQuery):
    fields, uploads = await _uploads(request, service, 1)
    if not uploads:
        raise ApiError(400, "no_image", "the multipart form has no file field; send the image as 'image'")
    budget, mode, fmt = request_options(fields, budget, mode, format)
    upload, = uploads
    if upload.error is not None:
        raise upload.error
    service.admit(request, upload.pixels)
    result = await service.protect_one(engine, upload.name, upload.data, upload.size, mode, budget, fmt)
    return Response(result.data, media_type=FORMATS[fmt], headers=_stat_headers(result))


@keyed_routes.post(BATCH_PATH, summary="Protect several images (multipart, one file field each)",
                   openapi_extra=_BATCH_BODY, response_model=BatchAnswer)
async def protect_batch(request: Request, service: ServiceDep, engine: EngineDep, budget: float | None = BudgetQuery,
                        mode: str | None = ModeQuery, format: str | None = FormatQuery):
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(400, "no_image", "send the images as multipart/form-data file fields ('images')")
    fields, uploads = await _uploads(request, service, service.settings.max_batch_images)
    if not uploads:
        raise ApiError(400, "no_image", "send the images as multipart/form-data file fields ('images')")
    budget, mode, fmt = request_options(fields, budget, mode, format)
    service.admit(request, sum(upload.pixels for upload in uploads))
    outcomes = await asyncio.gather(*(service.protect_one(engine, u.name, u.data, u.size, mode, budget, fmt)
                                      for u in uploads if u.error is None), return_exceptions=True)
    outcomes = iter(outcomes)
    outcomes = [upload.error or next(outcomes) for upload in uploads]
    for outcome in outcomes:
        if isinstance(outcome, ApiError):
            service.metrics.errors.labels(outcome.kind).inc()
        elif isinstance(outcome, BaseException):
            raise outcome
    answer = await run_in_threadpool(_batch_answer, [u.name for u in uploads], outcomes, fmt)
    return Response(answer, media_type="application/json")


async def _uploads(request: Request, service: ServiceDep, max_files: int):
    """The form fields and the uploads of a request, parsed and their headers read in a worker thread."""
    body = await service.read_body(request)
    try:
        return await run_in_threadpool(read_uploads, request.headers.get("content-type", ""), body, max_files,
                                       service.settings.max_pixels)
    except ApiError as exc:
        if exc.kind == "too_many_images" and max_files == 1:
            raise ApiError(400, "one_image_only", f"{PROTECT_PATH} takes one image and this form has several files; "
                                                  f"send them to {BATCH_PATH}, or one per request") from None
        raise


def _batch_answer(names: list[str], outcomes: list, fmt: str) -> bytes:
    """The batch's JSON answer (images in base64), built in a worker thread: large answers take seconds."""
    results: list[ProtectedImage | FailedImage] = []
    for name, outcome in zip(names, outcomes):
        if isinstance(outcome, ApiError):
            results.append(FailedImage(name=name, status=outcome.status,
                                       error={"kind": outcome.kind, "message": outcome.message}))
        else:
            results.append(ProtectedImage(
                name=name, format=fmt, image_base64=base64.b64encode(outcome.data).decode("ascii"),
                max_change=outcome.max_change, psnr=outcome.psnr if math.isfinite(outcome.psnr) else None,
                budget=outcome.budget, mode=outcome.mode, batch_size=outcome.batch_size, notes=outcome.notes,
                demo=outcome.demo, warning=outcome.warning))
    failed = sum(not r.ok for r in results)
    return BatchAnswer(protected=len(results) - failed, failed=failed, results=results).model_dump_json().encode()


def _stat_headers(result: Protected) -> dict[str, str]:
    headers = {"X-Gapdiff-Max-Change": f"{result.max_change:g}", "X-Gapdiff-PSNR": f"{result.psnr:.2f}",
               "X-Gapdiff-Budget": f"{result.budget:g}", "X-Gapdiff-Mode": result.mode,
               "X-Gapdiff-Batch-Size": str(result.batch_size), "X-Gapdiff-Demo": "true" if result.demo else "false"}
    if result.notes:
        headers["X-Gapdiff-Notes"] = _ascii("; ".join(result.notes))
    if result.warning:
        headers["X-Gapdiff-Warning"] = _ascii(result.warning)
    return headers


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")
