"""The JSON answers of the service as pydantic models: what /openapi.json documents and what the endpoints return."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..model.protector import MODES, PRECISIONS
from .service import FORMATS


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    demo: bool = Field(description="a demo generator: its output is not protection")
    budget: float = Field(description="the service's budget (grey levels on the 0-255 scale), the most a request "
                                      "may ask for")
    mode: Literal[MODES]
    device: str
    precision: Literal[tuple(PRECISIONS)] = Field(description="the precision auto resolved to, or the one asked for")


class NotReady(BaseModel):
    status: Literal["loading", "failed"]
    error: str | None = Field(description="why the generator failed to load (null while it loads)")


class ErrorDetail(BaseModel):
    kind: str = Field(description="a short machine-readable kind, e.g. bad_image, queue_full, unauthorized")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ProtectedImage(BaseModel):
    name: str
    ok: Literal[True] = True
    format: Literal[tuple(FORMATS)]
    image_base64: str
    max_change: float = Field(description="largest change of any pixel, grey levels")
    psnr: float | None = Field(description="dB against the upload (null: no pixel changed)")
    budget: float
    mode: Literal[MODES]
    batch_size: int = Field(description="how many photos shared its forward pass")
    notes: list[str] = Field(description="what decoding changed, e.g. EXIF orientation applied")
    demo: bool = Field(description="a demo generator: its output is not protection")
    warning: str | None = Field(None, description="set when the returned file breaks the budget (JPEG), as the "
                                                  "X-Gapdiff-Warning header of /v1/protect")


class FailedImage(BaseModel):
    name: str
    ok: Literal[False] = False
    status: int = Field(description="the HTTP status this image alone would have got")
    error: ErrorDetail


class BatchAnswer(BaseModel):
    protected: int
    failed: int
    results: list[ProtectedImage | FailedImage] = Field(description="one per uploaded file, in upload order")
