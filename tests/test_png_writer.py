"""The fast PNG encoder writes files any decoder reads back bit-exactly."""
import io
import zlib

import numpy as np
import pytest
from PIL import Image

from gapdiff_core.io import png_writer
from gapdiff_core.io.png_writer import encode_png


@pytest.fixture(params=["isal", "zlib"])
def deflate(request, monkeypatch):
    """Both deflate libraries: ISA-L (a dependency) and the zlib fallback."""
    if request.param == "isal":
        assert png_writer.deflate_lib.__name__ == "isal.isal_zlib"
    else:
        monkeypatch.setattr(png_writer, "deflate_lib", zlib)
        monkeypatch.setattr(png_writer, "MAX_LEVEL", 9)
    return request.param


@pytest.mark.parametrize("shape", [(1, 1, 3), (37, 53, 3), (300, 200, 4), (1030, 70, 3), (2100, 900, 3)])
@pytest.mark.parametrize("threads", [1, 3])
def test_round_trip_is_bit_exact(shape, threads, deflate):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_png(pixels, threads=threads)))
    assert image.mode == ("RGBA" if shape[2] == 4 else "RGB")
    assert np.array_equal(np.asarray(image), pixels)


def test_icc_profile_is_embedded_and_size_is_competitive(deflate):
    y, x = np.mgrid[0:400, 0:600]
    pixels = np.dstack([(x + y) % 256, (x * 2) % 256, y % 256]).astype(np.uint8)
    data = encode_png(pixels, icc_profile=b"profile bytes")
    image = Image.open(io.BytesIO(data))
    assert image.info["icc_profile"] == b"profile bytes"
    pillow = io.BytesIO()
    Image.fromarray(pixels).save(pillow, "PNG", compress_level=1)
    assert len(data) < 1.5 * len(pillow.getvalue())


def test_rejects_wrong_arrays():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="H x W x 3"):
        encode_png(np.zeros((4, 4), np.uint8))
