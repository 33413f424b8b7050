"""Reading an upload in memory: the multipart form (fields and files, never spooled to disk) or a raw body, and the
request's budget, mode and format from the form or the query."""
from __future__ import annotations

import os

from fastapi import Request
from python_multipart.multipart import FormParser, parse_options_header

from .service import FORMATS, ApiError


def parse_form(request: Request, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
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


def request_options(fields: dict[str, str], budget, mode: str | None, fmt: str | None):
    """budget, mode and format from the form fields, else the query (the form wins). The budget and mode are
    checked by the engine (common.budget's rule, and at most the service's budget); the format here."""
    budget = fields.get("budget", budget)
    mode = fields.get("mode", mode)
    fmt = (fields.get("format", fmt) or "png").lower()
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in FORMATS:
        raise ApiError(422, "bad_parameter", f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return budget, mode, fmt
