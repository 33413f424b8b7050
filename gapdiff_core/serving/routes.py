"""The service's endpoints on two routers: `open_routes` (liveness, readiness, metrics: no key) and
`keyed_routes`, whose router-level dependency checks the API key before any endpoint on it runs."""
from __future__ import annotations

import asyncio
import base64
import math

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..model.protector import MODES
from .dependencies import EngineDep, ServiceDep, require_api_key
from .schemas import BatchAnswer, ErrorBody, FailedImage, Health, NotReady, ProtectedImage, Readiness
from .service import FORMATS, ApiError, Protected
from .uploads import parse_form, request_options

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
    body = await service.read_body(request)
    fields, files = parse_form(request, body)
    if files:
        name, data = files[0]
    elif fields:
        raise ApiError(400, "no_image", "the multipart form has no file field; send the image as 'image'")
    else:
        name, data = "upload", body
    budget, mode, fmt = request_options(fields, budget, mode, format)
    result = await service.protect_one(engine, name, data, mode, budget, fmt)
    return Response(result.data, media_type=FORMATS[fmt], headers=_stat_headers(result))


@keyed_routes.post(BATCH_PATH, summary="Protect several images (multipart, one file field each)",
                   openapi_extra=_BATCH_BODY, response_model=BatchAnswer)
async def protect_batch(request: Request, service: ServiceDep, engine: EngineDep, budget: float | None = BudgetQuery,
                        mode: str | None = ModeQuery, format: str | None = FormatQuery) -> BatchAnswer:
    body = await service.read_body(request)
    fields, files = parse_form(request, body)
    if not files:
        raise ApiError(400, "no_image", "send the images as multipart/form-data file fields ('images')")
    if len(files) > service.settings.max_batch_images:
        raise ApiError(413, "too_many_images", f"{len(files)} images in one request; at most "
                                               f"{service.settings.max_batch_images} (split the batch)")
    budget, mode, fmt = request_options(fields, budget, mode, format)
    outcomes = await asyncio.gather(*(service.protect_one(engine, name, data, mode, budget, fmt)
                                      for name, data in files), return_exceptions=True)
    results: list[ProtectedImage | FailedImage] = []
    for (name, _), outcome in zip(files, outcomes):
        if isinstance(outcome, ApiError):
            service.metrics.errors.labels(outcome.kind).inc()
            results.append(FailedImage(name=name, status=outcome.status,
                                       error={"kind": outcome.kind, "message": outcome.message}))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append(ProtectedImage(
                name=name, format=fmt, image_base64=base64.b64encode(outcome.data).decode("ascii"),
                max_change=outcome.max_change, psnr=outcome.psnr if math.isfinite(outcome.psnr) else None,
                budget=outcome.budget, mode=outcome.mode, batch_size=outcome.batch_size, notes=outcome.notes,
                demo=outcome.demo))
    failed = sum(not r.ok for r in results)
    return BatchAnswer(protected=len(results) - failed, failed=failed, results=results)


def _stat_headers(result: Protected) -> dict[str, str]:
    headers = {"X-Gapdiff-Max-Change": f"{result.max_change:g}", "X-Gapdiff-PSNR": f"{result.psnr:.2f}",
               "X-Gapdiff-Budget": f"{result.budget:g}", "X-Gapdiff-Mode": result.mode,
               "X-Gapdiff-Batch-Size": str(result.batch_size), "X-Gapdiff-Demo": "true" if result.demo else "false"}
    if result.notes:
        headers["X-Gapdiff-Notes"] = "; ".join(result.notes).encode("ascii", "replace").decode("ascii")
    return headers
