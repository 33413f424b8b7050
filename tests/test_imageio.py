"""Bad-input corpus and round-trip tests for gapdiff_core.io (corpus generated in tmp_path)."""

import io
import struct
import sys
import threading
import types
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile

from gapdiff_core.io import (DEFAULT_MAX_PIXELS, ImageError, iter_image_paths, load_image, output_path_for,
                             prepare_output_folder, save_image, to_uint8)
from gapdiff_core.io.decode import _check_dimensions


def pattern(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width, height, bit_depth, color_type, rows: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def png16(samples: np.ndarray, color_type: int) -> bytes:
    """16-bit PNG from an HxWxC uint16 array; rows use the Sub filter to exercise unfiltering."""
    h, w = samples.shape[:2]
    rows = []
    for y in range(h):
        row = np.frombuffer(samples[y].astype(">u2").tobytes(), np.uint8)
        bpp = 2 * (samples.shape[2] if samples.ndim == 3 else 1)
        sub = row.copy()
        sub[bpp:] = (row[bpp:].astype(np.int16) - row[:-bpp]).astype(np.uint8)
        rows.append(b"\x01" + sub.tobytes())
    return raw_png(w, h, 16, color_type, b"".join(rows))


def exif_with_gps(orientation=None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    if orientation:
        exif[0x0112] = orientation
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}  # the GPS IFD (Pillow 10.0 drops edits of get_ifd's dict)
    return exif.tobytes()


def has_gps(path) -> bool:
    return bool(Image.open(path).getexif().get_ifd(0x8825))


# ---------------------------------------------------------------- bad inputs


def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg.*empty \(0 bytes\)"):
        load_image(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="nope.png: no such file or folder"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


def test_looping_and_dangling_symlinks_are_named_as_such(tmp_path):
    """A symbolic link that loops, or leads nowhere, is said to be one (both used to read "no such file")."""
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    for name in ("loop.png", "a.png"):
        with pytest.raises(ImageError, match=f"{name}: is a symbolic link that loops") as exc:
            load_image(tmp_path / name)
        assert exc.value.kind == "not_found" and "no such file" not in str(exc.value)
    with pytest.raises(ImageError, match="dangling.png: is a symbolic link to .*gone.png, which does not exist"):
        load_image(tmp_path / "dangling.png")
    found = iter_image_paths([tmp_path / "loop.png", tmp_path / "dangling.png", tmp_path / "missing.png"])
    assert found.paths == [] and [p.split(": ", 1)[1].split(";")[0] for p in found.problems] == [
        "is a symbolic link that loops (it leads back to itself)",
        f"is a symbolic link to {tmp_path / 'gone.png'}, which does not exist", "no such file or folder"]


def test_unrecognised_file_lists_the_formats_load_image_reads(tmp_path):
    """The list in the message is the one load_image decodes with: AVIF is in it wherever Pillow decodes AVIF."""
    from gapdiff_core.io import decode

    p = tmp_path / "noise.png"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ImageError) as exc:
        load_image(p)
    listed = str(exc.value).split("supported: ")[1].split(")")[0].split(", ")
    assert listed == [{"WEBP": "WebP"}.get(f, f) for f in decode.decode_formats() if f != "DIB"]
    assert ("AVIF" in listed) == ("AVIF" in Image.OPEN)  # listed wherever this Pillow decodes it


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, this is not a photo\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: is a text file"):
        load_image(p)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_jpeg_is_refused(tmp_path, keep):
    buf = io.BytesIO()
    Image.fromarray(pattern(64, 64)).save(buf, "JPEG")
    data = buf.getvalue()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match=r"cut\.jpg: image data is truncated"):
        load_image(p)


def test_truncated_jpeg_refused_even_if_global_flag_set(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(pattern(64, 64)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[:-200])
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageError, match="truncated"):
            load_image(p)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _truncated_photos(tmp_path):
    """A truncated file of each format whose decoder reads the file incrementally."""
    paths = []
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tif")):
        buf = io.BytesIO()
        Image.fromarray(pattern(64, 64)).save(buf, fmt)
        paths.append(tmp_path / f"cut.{suffix}")
        paths[-1].write_bytes(buf.getvalue()[: len(buf.getvalue()) * 9 // 10])
    return paths


class _RecordingModule(types.ModuleType):
    writes: list = []

    def __setattr__(self, name, value):
        if name == "LOAD_TRUNCATED_IMAGES":
            type(self).writes.append(value)
        super().__setattr__(name, value)


@pytest.mark.parametrize("host_flag", [False, True])
def test_pillows_global_truncation_flag_is_never_written(tmp_path, monkeypatch, host_flag):
    """Another thread of the host may read PIL.ImageFile.LOAD_TRUNCATED_IMAGES at any moment: loading (good or
    truncated files, whatever the host set) must not change it, even for an instant."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", host_flag)
    monkeypatch.setattr(_RecordingModule, "writes", [])
    monkeypatch.setattr(ImageFile, "__class__", _RecordingModule)
    good = tmp_path / "good.png"
    Image.fromarray(pattern()).save(good)
    load_image(good)
    for path in _truncated_photos(tmp_path):
        with pytest.raises(ImageError, match="truncated"):
            load_image(path)
    assert _RecordingModule.writes == [] and ImageFile.LOAD_TRUNCATED_IMAGES is host_flag


def test_host_threads_loading_truncated_images_are_not_disturbed(tmp_path, monkeypatch):
    """A host that set LOAD_TRUNCATED_IMAGES keeps getting its partial images from Pillow in its own thread while
    gapdiff refuses truncated files in another."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    cut = _truncated_photos(tmp_path)
    problems = []

    def host():
        for _ in range(30):
            for path in cut:
                try:
                    with Image.open(path) as im:
                        im.load()
                except OSError as exc:
                    problems.append(f"host load of {path.name} failed: {exc}")

    def ours():
        for _ in range(30):
            for path in cut:
                try:
                    load_image(path)
                    problems.append(f"gapdiff accepted truncated {path.name}")
                except ImageError:
                    pass

    threads = [threading.Thread(target=host), threading.Thread(target=ours)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert problems == []


def test_one_pixel_png_is_too_small(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(p)
    with pytest.raises(ImageError, match=r"dot\.png: image is 1x1 px, smaller than the 16 px"):
        load_image(p)


def test_bomb_header_refused_without_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(raw_png(30000, 30000, 8, 2, b"\x00" * 64))  # header only; data far too short
    tracemalloc.start()
    with pytest.raises(ImageError, match=r"bomb\.png: .*decompression bomb"):
        load_image(p)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20_000_000  # 30000x30000x3 would be 2.7 GB


def test_own_pixel_limit_checked_from_header(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(raw_png(2000, 2000, 8, 2, b"\x00" * 64))
    with pytest.raises(ImageError, match=r"big\.png: header declares 2000x2000 = 4,000,000 pixels"):
        load_image(p, max_pixels=1_000_000)


def test_default_limit_admits_phone_and_100mp_photos():
    _check_dimensions(Path("phone.jpg"), (4032, 3024), DEFAULT_MAX_PIXELS)
    _check_dimensions(Path("big.jpg"), (12240, 8160), DEFAULT_MAX_PIXELS)  # 100 MP
    with pytest.raises(ImageError):
        _check_dimensions(Path("bomb.png"), (30000, 30000), DEFAULT_MAX_PIXELS)


def test_batch_collects_exactly_the_bad_files(tmp_path):
    good = []
    for i in range(3):
        good.append(tmp_path / f"good{i}.png")
        Image.fromarray(pattern(seed=i)).save(good[-1])
    bad = [tmp_path / "empty.png", tmp_path / "text.jpg", tmp_path / "tiny.png"]
    bad[0].write_bytes(b"")
    bad[1].write_text("not an image")
    Image.new("RGB", (4, 4)).save(bad[2])
    failures = {}
    loaded = []
    for p in [good[0], bad[0], good[1], bad[1], bad[2], good[2]]:
        try:
            loaded.append(load_image(p).path)
        except ImageError as exc:
            failures[p] = str(exc)
    assert loaded == good
    assert set(failures) == set(bad)
    assert all(str(p) in msg for p, msg in failures.items())


def _bad_reads(folder: Path) -> dict:
    """kind -> (path, what load_image is called with beyond the path) for each way a read can fail."""
    folder.mkdir()
    cases = {"not_found": (folder / "nope.png", {}), "is_folder": (folder, {})}
    (folder / "empty: 1.jpg").write_bytes(b"")  # ': ' in the name: the message cannot be split on it
    cases["empty"] = (folder / "empty: 1.jpg", {})
    (folder / "notes.jpg").write_text("hello")
    cases["not_an_image"] = (folder / "notes.jpg", {})
    (folder / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    cases["unsupported_format"] = (folder / "phone.heic", {})
    (folder / "big.png").write_bytes(raw_png(2000, 2000, 8, 2, b"\x00" * 64))
    cases["pixel_limit"] = (folder / "big.png", {"max_pixels": 1_000_000})
    (folder / "bomb.png").write_bytes(raw_png(30000, 30000, 8, 2, b"\x00" * 64))
    cases["decompression_bomb"] = (folder / "bomb.png", {"max_pixels": 10**10})  # past Pillow's own guard
    Image.new("RGB", (4, 4)).save(folder / "dot.png")
    cases["too_small"] = (folder / "dot.png", {})
    buf = io.BytesIO()
    Image.fromarray(pattern(64, 64)).save(buf, "JPEG")
    (folder / "cut: a.jpg").write_bytes(buf.getvalue()[:-200])
    cases["truncated"] = (folder / "cut: a.jpg", {})
    return cases


def test_read_errors_carry_path_reason_and_kind(tmp_path):
    """Code reacts to `kind` and shows `reason` (never parsing the message, which a ': ' in a name would break);
    the message stays "PATH: REASON", and the attributes survive pickling (process pools, Ray)."""
    import pickle

    for kind, (path, options) in _bad_reads(tmp_path / "in").items():
        with pytest.raises(ImageError) as err:
            load_image(path, **options)
        exc = err.value
        assert (exc.kind, exc.path) == (kind, path), str(exc)
        assert str(exc) == f"{path}: {exc.reason}" and not exc.reason.startswith(path.name)
        copy = pickle.loads(pickle.dumps(exc))
        assert (type(copy), str(copy), copy.path, copy.reason, copy.kind) == (ImageError, str(exc), path,
                                                                               exc.reason, kind)
    with pytest.raises(ImageError) as err:
        load_image("upload: 1.png", data=b"")
    assert (err.value.kind, err.value.path, err.value.reason) == ("empty", Path("upload: 1.png"),
                                                                   "is empty (0 bytes); send the image file itself")


def test_write_errors_carry_path_reason_and_kind(tmp_path):
    rgb = pattern()
    save_image(tmp_path / "a.png", rgb)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.png").mkdir()
    cases = {
        "unsupported_format": lambda: save_image(tmp_path / "x.gifx", rgb),
        "bad_pixels": lambda: save_image(tmp_path / "c.png", np.zeros((24, 32), np.float32)),
        "jpeg_alpha": lambda: save_image(tmp_path / "b.jpg", rgb, np.zeros((24, 32), np.uint8)),
        "exists": lambda: save_image(tmp_path / "a.png", rgb),
        "input_overwrite": lambda: save_image(tmp_path / "a.png", rgb, overwrite=True,
                                              protect_paths=[tmp_path / "a.png"]),
        "is_folder": lambda: save_image(tmp_path / "dir.png", rgb, overwrite=True),
        "no_folder": lambda: save_image(tmp_path / "missing" / "d.png", rgb),
        "not_a_folder": lambda: prepare_output_folder(tmp_path / "file"),
    }
    for kind, write in cases.items():
        with pytest.raises(ImageError) as err:
            write()
        exc = err.value
        assert exc.kind == kind and str(exc) == f"{exc.path}: {exc.reason}", (kind, str(exc))


# ---------------------------------------------------------------- modes and formats


def test_16bit_grey_png_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 257, 32768, 65535] * 4] * 16, dtype=np.uint16)
    p = tmp_path / "g16.png"
    p.write_bytes(png16(grey[..., None], color_type=0))
    img = load_image(p)
    assert img.rgb[0, :4, 0].tolist() == [0, 1, 128, 255]
    assert (img.rgb[..., 0] == img.rgb[..., 2]).all()
    assert any("16-bit" in n for n in img.notes)


@pytest.mark.parametrize("channels,color_type", [(3, 2), (4, 6)])
def test_16bit_rgb_png_rounded_from_full_samples(tmp_path, channels, color_type):
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 65536, (16, 20, channels)).astype(np.uint16)
    samples[0, 0, :3] = [65535, 32768, 1999]  # 1999/257 = 7.78: high byte alone would give 7
    p = tmp_path / "c16.png"
    p.write_bytes(png16(samples, color_type))
    img = load_image(p)
    expected = np.rint(samples.astype(np.float64) / 257.0).astype(np.uint8)
    assert img.rgb[0, 0].tolist() == [255, 128, 8]
    np.testing.assert_array_equal(img.rgb, expected[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(img.alpha, expected[..., 3])
    assert "16-bit PNG reduced to 8 bits" in img.notes


def test_cmyk_jpeg_converted_with_note(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(p, quality=100)  # pure red ink
    img = load_image(p)
    assert img.rgb.shape == (32, 32, 3)
    r, g, b = img.rgb[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60
    assert any("CMYK converted to RGB" in n for n in img.notes)


def test_palette_png_transparency_becomes_alpha(tmp_path):
    im = Image.new("P", (20, 20), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (0, 0, 10, 20))
    p = tmp_path / "pal.png"
    im.save(p, transparency=1)
    img = load_image(p)
    assert img.alpha is not None
    assert (img.alpha[:, :10] == 0).all() and (img.alpha[:, 10:] == 255).all()
    assert img.rgb[0, 15].tolist() == [255, 0, 0]


def test_rgba_png_alpha_bit_exact_through_load_save(tmp_path):
    rgb = pattern(20, 30, seed=3)
    alpha = np.random.default_rng(4).integers(0, 256, (20, 30), dtype=np.uint8)
    alpha[0, :5] = 0  # fully transparent pixels keep their colour too
    src = tmp_path / "in.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src)
    img = load_image(src)
    out = save_image(tmp_path / "out.png", img.rgb, img.alpha, protect_paths=[src])
    back = np.asarray(Image.open(out))
    np.testing.assert_array_equal(back[..., 3], alpha)
    np.testing.assert_array_equal(back[..., :3], rgb)


def test_rgba_webp_keeps_colour_under_transparent_pixels(tmp_path):
    rgb = pattern(seed=12)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:8] = 0
    back = load_image(save_image(tmp_path / "a.webp", rgb, alpha))
    np.testing.assert_array_equal(back.rgb, rgb)
    np.testing.assert_array_equal(back.alpha, alpha)


def test_exif_orientation_6_rotates_pixels(tmp_path):
    stored = pattern(20, 40, seed=5)  # as stored: 40 wide, 20 high
    p = tmp_path / "rot.png"  # PNG keeps pixels exact; EXIF orientation applies the same as in JPEG
    Image.fromarray(stored).save(p, exif=exif_with_gps(orientation=6))
    img = load_image(p)
    assert img.rgb.shape == (40, 20, 3)
    np.testing.assert_array_equal(img.rgb, np.rot90(stored, -1))  # 90 degrees clockwise
    assert img.rgb[0, -1].tolist() == stored[0, 0].tolist()  # stored top-left -> displayed top-right
    assert "EXIF orientation 6 applied" in img.notes
    kept = Image.Exif()
    kept.load(img.metadata["exif"])
    assert 0x0112 not in kept  # pixels are upright now: re-writing must not rotate again


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_pixels_and_alpha_upright(tmp_path, orientation):
    """The 8 orientations of the EXIF 2.3 specification, applied to colour and alpha alike."""
    upright = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
               5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
               7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}[orientation]
    rgba = np.dstack([pattern(20, 36, seed=orientation), pattern(20, 36, seed=9)[..., 0]])
    p = tmp_path / "o.png"
    Image.fromarray(rgba, "RGBA").save(p, exif=exif_with_gps(orientation=orientation))
    img = load_image(p)
    np.testing.assert_array_equal(img.rgb, upright(rgba[..., :3]))
    np.testing.assert_array_equal(img.alpha, upright(rgba[..., 3]))
    kept = Image.Exif()
    kept.load(img.metadata["exif"])
    assert 0x0112 not in kept and kept[0x010F] == "PhoneMaker"


def test_exif_orientation_6_jpeg(tmp_path):
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :16] = 255  # white band on the stored left
    p = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(p, exif=exif_with_gps(orientation=6), quality=95)
    img = load_image(p)
    assert img.rgb.shape == (64, 32, 3)
    assert img.rgb[:12].mean() > 240 and img.rgb[20:].mean() < 15  # left band -> top after CW rotation


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), (v, 0, 0)) for v in (255, 0, 0)]
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = load_image(p)
    assert img.rgb[5, 5].tolist() == [255, 0, 0]
    assert "animated GIF: first frame of 3 used" in img.notes


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_greyscale(tmp_path, mode):
    grey = np.arange(400, dtype=np.uint8).reshape(20, 20)
    p = tmp_path / f"grey_{mode}.png"
    if mode == "L":
        Image.fromarray(grey, "L").save(p)
    else:
        Image.fromarray(np.dstack([grey, 255 - grey]), "LA").save(p)
    img = load_image(p)
    np.testing.assert_array_equal(img.rgb, np.repeat(grey[..., None], 3, axis=2))
    assert (img.alpha is None) == (mode == "L")
    if mode == "LA":
        np.testing.assert_array_equal(img.alpha, 255 - grey)


@pytest.mark.parametrize("suffix,fmt", [(".webp", "WEBP"), (".tif", "TIFF"), (".bmp", "BMP")])
def test_other_formats(tmp_path, suffix, fmt):
    rgb = pattern(seed=6)
    p = tmp_path / f"img{suffix}"
    Image.fromarray(rgb).save(p, **({"lossless": True} if fmt == "WEBP" else {}))
    img = load_image(p)
    assert img.format == fmt
    np.testing.assert_array_equal(img.rgb, rgb)


def test_tensor_and_to_uint8_rounding():
    t = torch.tensor([0.0, 0.49 / 255, 0.51 / 255, 1.49 / 255, 1.51 / 255, 254.5 / 255 + 1e-6, 1.0, 1.2])
    t = t.view(1, 1, 1, 8).expand(1, 3, 1, 8)
    out = to_uint8(t)
    assert out.shape == (1, 8, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 0, 1, 1, 2, 255, 255, 255]
    rgb = pattern(seed=7)
    np.testing.assert_array_equal(to_uint8(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255), rgb)
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(2, 3, 4, 4))


def test_loaded_tensor(tmp_path):
    rgb = pattern(seed=8)
    p = tmp_path / "a.png"
    Image.fromarray(rgb).save(p)
    t = load_image(p).tensor()
    assert t.shape == (1, 3, 24, 32) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    np.testing.assert_array_equal(to_uint8(t), rgb)


# ---------------------------------------------------------------- saving


def test_png_round_trip_bit_exact(tmp_path):
    rgb = pattern(33, 17, seed=9)
    out = save_image(tmp_path / "x.png", rgb)
    np.testing.assert_array_equal(load_image(out).rgb, rgb)


def test_lossless_webp_and_tiff_round_trip(tmp_path):
    rgb = pattern(seed=10)
    for name in ("x.webp", "x.tif"):
        np.testing.assert_array_equal(load_image(save_image(tmp_path / name, rgb)).rgb, rgb)


def test_no_suffix_means_png_and_unknown_suffix_refused(tmp_path):
    out = save_image(tmp_path / "plain", pattern())
    assert out.name == "plain.png" and Image.open(out).format == "PNG"
    with pytest.raises(ImageError, match=r"\.gifx"):
        save_image(tmp_path / "x.gifx", pattern())


def test_jpeg_with_alpha_refused(tmp_path):
    rgb = pattern()
    with pytest.raises(ImageError, match="JPEG cannot store transparency"):
        save_image(tmp_path / "x.jpg", rgb, np.full(rgb.shape[:2], 255, np.uint8))
    assert not (tmp_path / "x.jpg").exists()


def test_metadata_stripped_by_default_and_kept_on_request(tmp_path):
    src = tmp_path / "gps.jpg"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pattern(seed=11)).save(src, exif=exif_with_gps(), icc_profile=icc,
                                           xmp=b"<x:xmpmeta>secret</x:xmpmeta>")
    assert has_gps(src)
    img = load_image(src)
    assert {"exif", "icc_profile", "xmp"} <= set(img.metadata)
    for name in ("stripped.jpg", "stripped.png", "stripped.webp"):
        out = save_image(tmp_path / name, img.rgb, metadata=img.metadata)
        with Image.open(out) as im:
            assert not im.getexif() and not has_gps(out)
            assert not (im.info.get("xmp") or im.info.get("XML:com.adobe.xmp"))
            assert im.info.get("icc_profile") == icc  # colour profile kept on purpose
        assert b"secret" not in out.read_bytes() and b"PhoneMaker" not in out.read_bytes()
    for name in ("kept.jpg", "kept.png"):
        out = save_image(tmp_path / name, img.rgb, keep_metadata=True, metadata=img.metadata)
        assert has_gps(out)
        assert Image.open(out).getexif()[0x010F] == "PhoneMaker"
        assert b"secret" in out.read_bytes()


def test_atomic_write_leaves_no_temp_files(tmp_path):
    save_image(tmp_path / "a.png", pattern())
    save_image(tmp_path / "a.png", pattern(seed=1), overwrite=True)
    with pytest.raises(ImageError):
        save_image(tmp_path / "b.jpg", pattern(), np.zeros((24, 32), np.uint8))
    with pytest.raises(ImageError):
        save_image(tmp_path / "c.png", np.zeros((24, 32), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    np.testing.assert_array_equal(load_image(tmp_path / "a.png").rgb, pattern(seed=1))


def test_overwrite_refused_unless_asked(tmp_path):
    target = tmp_path / "a.png"
    save_image(target, pattern(seed=1))
    with pytest.raises(ImageError) as exc:  # the command-line option first: most people meet this in a shell
        save_image(target, pattern(seed=2))
    assert str(exc.value).endswith("a.png: already exists; choose another output, or replace it with --overwrite "
                                   "(overwrite=True from Python)"), exc.value
    with pytest.raises(ImageError, match="already exists"):
        save_image(target, pattern(seed=2))
    np.testing.assert_array_equal(load_image(target).rgb, pattern(seed=1))
    save_image(target, pattern(seed=2), overwrite=True)
    np.testing.assert_array_equal(load_image(target).rgb, pattern(seed=2))


def test_input_path_protected_even_with_overwrite(tmp_path, monkeypatch):
    src = tmp_path / "face.png"
    Image.fromarray(pattern(seed=1)).save(src)
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    for dest in (src, Path("face.png"), tmp_path / "sub" / ".." / "face.png"):
        with pytest.raises(ImageError, match="refusing to write over the input image"):
            save_image(dest, pattern(seed=2), overwrite=True, protect_paths=[src])
    (tmp_path / "link.png").symlink_to(src)
    with pytest.raises(ImageError, match="refusing to write over the input image"):
        save_image(tmp_path / "link.png", pattern(seed=2), overwrite=True, protect_paths=["face.png"])
    assert src.read_bytes() == before


# ---------------------------------------------------------------- batches and output names


def test_iter_image_paths_reports_bad_entries(tmp_path):
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    for name in ("dir/b.png", "dir/a.JPG", "dir/notes.txt", "dir/.hidden.png", "dir/sub/c.webp", "x.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "emptydir").mkdir()
    found = iter_image_paths([tmp_path / "x.jpg", tmp_path / "dir", tmp_path / "missing.png",
                              str(tmp_path / "dir" / "*.png"), str(tmp_path / "*.gif"), tmp_path / "emptydir"])
    assert found.paths == [tmp_path / "x.jpg", tmp_path / "dir" / "a.JPG", tmp_path / "dir" / "b.png"]
    assert len(found.problems) == 3
    assert "missing.png: no such file" in found.problems[0]
    assert "*.gif: no image file matches" in found.problems[1]
    assert "emptydir: folder contains no images" in found.problems[2]
    assert found.root == tmp_path  # x.jpg's folder and dir/ have tmp_path in common
    paths, problems, root = iter_image_paths([tmp_path / "dir"], recursive=True)
    assert [p.name for p in paths] == ["a.JPG", "b.png", "c.webp"] and problems == [] and root == tmp_path / "dir"
    found = iter_image_paths([str(tmp_path / "d*" / "**" / "*.webp")], recursive=True)
    assert found.paths == [tmp_path / "dir" / "sub" / "c.webp"] and found.root == tmp_path
    assert iter_image_paths([tmp_path / "dir" / "a.JPG", tmp_path / "dir" / "b.png"]).root == tmp_path / "dir"
    assert iter_image_paths([tmp_path / "dir", tmp_path / "emptydir"]).root == tmp_path / "dir"


def test_output_path_for_avoids_collisions(tmp_path):
    a_jpg = output_path_for(tmp_path / "a.jpg", tmp_path / "out")
    a_png = output_path_for(tmp_path / "a.png", tmp_path / "out")
    assert a_jpg != a_png and a_jpg.parent == a_png.parent == tmp_path / "out"
    assert a_jpg.name == "a_jpg.png"
    assert output_path_for("a.jpg", "out", suffix=".webp", tag="_protected").name == "a_jpg_protected.webp"
    x = output_path_for(tmp_path / "x" / "a.jpg", tmp_path / "out", root=tmp_path)
    y = output_path_for(tmp_path / "y" / "a.jpg", tmp_path / "out", root=tmp_path)
    assert x == tmp_path / "out" / "x" / "a_jpg.png" and y == tmp_path / "out" / "y" / "a_jpg.png"
