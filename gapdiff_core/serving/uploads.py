"""Reading an upload in memory: the multipart form (fields and files, never spooled to disk, its parts counted while
it is parsed) or a raw body, the pixel count each image's header declares, and the request's budget, mode and
format from the form or the query. The parsing functions are plain functions for a worker thread."""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

from python_multipart.multipart import FormParser, parse_options_header

from .service import FORMATS, ApiError, image_error

FORM_FIELDS = ("budget", "mode", "format")
MAX_FIELDS = 16  # form fields (not files) in one request: the three above, with room for what clients add


def parse_form(content_type: str, body: bytes, max_files: int) -> tuple[dict[str, str], list[tuple[str, bytes]]] \
        | None:
    """Fields and (filename, bytes) files of a multipart body, parsed in memory; None for a raw body. The parts
    are counted as they are parsed: ApiError 413 at the file past `max_files` or the field past MAX_FIELDS, before
    the rest of the body is parsed; 400 for a body that ends before its closing boundary."""
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        return None
    if not params.get(b"boundary"):
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    ended, field_count = [], [0]

    def on_field(field):
        field_count[0] += 1
        if field_count[0] > MAX_FIELDS:
            raise ApiError(413, "too_many_parts", f"more than {MAX_FIELDS} form fields in one request; send only "
                                                  f"{', '.join(FORM_FIELDS)} and the image files")
        fields[field.field_name.decode("utf-8", "replace")] = (field.value or b"").decode("utf-8", "replace")

    def on_file(file):
        if len(files) >= max_files:
            raise ApiError(413, "too_many_images", f"more than {max_files} images in one request; at most "
                                                   f"{max_files} (split the batch)")
        file.file_object.seek(0)
        name = (file.file_name or file.field_name or b"upload").decode("utf-8", "replace")
        files.append((os.path.basename(name) or "upload", file.file_object.read()))
        file.file_object.close()

    parser = FormParser("multipart/form-data", on_field, on_file, on_end=lambda: ended.append(True),
                        boundary=params[b"boundary"], config={"MAX_MEMORY_FILE_SIZE": len(body) + 1})  # no spool
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart body ({exc})") from exc
    if not ended:
        raise ApiError(400, "bad_multipart", f"the multipart body ends before its closing boundary (truncated after "
                                             f"{len(body):,} bytes, {len(files)} complete file(s)); send it whole")
    return fields, files


@dataclass
class Upload:
    """One image of a request: its name and bytes, and the size its header declares, or why it cannot be read."""

    name: str
    data: bytes
    size: tuple[int, int] = (0, 0)  # width, height
    error: ApiError | None = None

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1] if self.error is None else 0


def read_uploads(content_type: str, body: bytes, max_files: int, max_pixels: int) -> tuple[dict[str, str],
                                                                                             list[Upload]]:
    """The form fields and the images of a request (the multipart files, or the raw body), each with the size its
    header declares (nothing decoded). Runs in a worker thread."""
    form = parse_form(content_type, body, max_files)
    fields, files = form if form is not None else ({}, [("upload", body)])
    return fields, [_declared(name, data, max_pixels) for name, data in files]


def _declared(name: str, data: bytes, max_pixels: int) -> Upload:
    """The upload with the size its header declares, read without decoding a pixel; with its error (413 over
    `max_pixels`, else io.decode's message: such a file is decoded here, and fails at once)."""
    from PIL import Image

    from ..io import ImageError, load_image
    from ..io.decode import decode_formats

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=decode_formats()) as im:
                size = im.size
        if size[0] * size[1] <= max_pixels:
            return Upload(name, data, size)
    except Exception:
        pass
    try:
        load_image(name, max_pixels, data=data)
    except ImageError as exc:
        return Upload(name, data, error=image_error(exc))
    return Upload(name, data, error=ApiError(422, "bad_image", f"{name}: the header of this image cannot be read"))


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
