"""The real app in headless Debian Chromium (Playwright): upload a photo, protect it, see the protected photo and
the amplified perturbation, download the PNG and check it against the core; and the page as a person sees it at
1280×800 and 390×844 (empty, one photo, four photos, every error path of Protect), each screenshot checked for
what should be seen: whole photos inside the gallery, one DEMO warning, no stale status. Screenshots:
test-artifacts/.

Skipped only when Chromium or Playwright is missing outside CI; with CI=true it must run.
"""
import argparse
import contextlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gapdiff_core as gc
from gapdiff_core.model.checkpoint import GeneratorInfo
from gapdiff_core.io import load_image, to_uint8

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SAMPLE = Path(gc.__file__).parent / "samples" / "obama.jpg"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IN_CI = os.environ.get("CI", "").lower() == "true"
BUDGET = 8
MAX_PHOTOS = 8
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
WARNING_START = "DEMO generator: it protects nothing real"  # the DEMO warning's first words, as the page reads
pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the app extra is installed by make setup
    sync_playwright = None

if not IN_CI and (CHROMIUM is None or sync_playwright is None):
    pytest.skip("needs Debian's chromium and the playwright package (runs in CI)", allow_module_level=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from gapdiff_core.ui import app

    models = tmp_path_factory.mktemp("models")
    torch.manual_seed(1)
    gen = gc.save_generator(gc.Generator(ngf=8), models / "browser_demo.safetensors",
                            GeneratorInfo(ngf=8, demo=True, working_resolution=256, provenance="browser test"))
    photo = tmp_path_factory.mktemp("photos") / "face.jpg"
    Image.open(SAMPLE).convert("RGB").resize((128, 160)).save(photo, quality=95)
    other = photo.with_name("other.jpg")
    Image.open(SAMPLE).convert("RGB").resize((96, 96)).save(other, quality=95)
    args = argparse.Namespace(host="127.0.0.1", port=0, models_dir=str(models), budget=float(BUDGET), device="cpu",
                              precision="fp32", max_file_size="5mb", max_photos=MAX_PHOTOS, queue_size=16,
                              share=False)
    blocks = app.serve(args, block=False)
    yield blocks.local_url, gen, photo, other
    blocks.close()


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    """Four photos of different sizes and aspect ratios (tall, square, wide, very wide), a broken one, and more
    photos than the server accepts in one request."""
    folder = tmp_path_factory.mktemp("set")
    sizes = ((160, 300), (140, 140), (240, 150), (320, 120))
    four = []
    for i, size in enumerate(sizes):
        four.append(folder / f"photo{i + 1}.png")
        Image.open(SAMPLE).convert("RGB").resize(size).save(four[-1])
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    too_many = [four[i % 4] for i in range(MAX_PHOTOS + 1)]
    not_a_generator = folder / "notes.safetensors"
    not_a_generator.write_bytes(b"not a checkpoint")
    return {"four": four, "broken": broken, "too_many": too_many, "checkpoint": not_a_generator}


def test_protect_in_the_browser_and_download(served, tmp_path):
    assert CHROMIUM is not None, "CI=true but Debian's chromium is not installed (.ci/run installs it)"
    assert sync_playwright is not None, "CI=true but playwright is not installed (the app extra)"
    url, gen, photo, other = served
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600}, accept_downloads=True)
            page.set_default_timeout(30_000)
            page.goto(url)
            page.locator("#gapdiff_generator_info").get_by_text("DEMO generator").first.wait_for()
            page.locator("#gapdiff_photos input[type=file]").set_input_files([str(photo), str(other)])
            page.locator("#gapdiff_photos").get_by_text("other").first.wait_for()
            page.locator("#gapdiff_protect").click()
            page.locator("#gapdiff_status").get_by_text("Protected 2 photo").first.wait_for()
            page.locator("#gapdiff_gallery img").first.wait_for(state="visible")
            page.locator("#gapdiff_perturbation img").first.wait_for(state="visible")
            page.locator("#gapdiff_after img").first.wait_for(state="visible")
            assert "DEMO" in page.locator("#gapdiff_status").inner_text()
            page.wait_for_function("() => [...document.querySelectorAll('#gapdiff_gallery img, #gapdiff_perturbation img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            stats = page.locator("#gapdiff_photo_stats")
            assert stats.inner_text().startswith("DEMO output")
            page.locator("#gapdiff_gallery img").nth(1).click()  # picking the other photo keeps the demo label
            stats.get_by_text("other").first.wait_for()
            assert stats.inner_text().startswith("DEMO output")
            page.locator("#gapdiff_perturbation").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser_protect.png"), full_page=True)

            link = page.locator('#gapdiff_downloads a[download="01_face_protected_DEMO.png"]').first
            with page.expect_download() as info:
                link.click()
            saved = tmp_path / info.value.suggested_filename
            info.value.save_as(saved)
        finally:
            browser.close()

    data = saved.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and not im.getexif()
        downloaded = np.asarray(im.convert("RGB"))
    original = load_image(photo)
    assert np.abs(downloaded.astype(int) - original.rgb.astype(int)).max() <= BUDGET
    core = gc.Protector(gc.load_generator(gen), budget=BUDGET, mode="working", device="cpu", precision="fp32")
    np.testing.assert_array_equal(downloaded, to_uint8(core(original.tensor())))


def test_robustness_tab_shows_per_transform_verdicts_in_the_browser(served):
    """The Robustness tab as a person uses it: two photos, the tiny demo surrogate, the default transforms plus a
    typed chain; the table names every transform, labels the verdicts as a toy-model demo, and shows the measures."""
    url, _, photo, other = served
    ARTIFACTS.mkdir(exist_ok=True)
    with _app_page(url, timeout_ms=120_000) as page:
        page.get_by_role("tab", name="Robustness").click()
        page.locator("#gapdiff_rb_clean input[type=file]").set_input_files([str(photo), str(other)])
        page.locator("#gapdiff_rb_clean").get_by_text("other").first.wait_for()
        page.locator("#gapdiff_surrogate").get_by_text("tiny built-in model (DEMO)").click()
        page.locator("#gapdiff_rb_specs textarea").fill("resize:64|jpeg:60")
        page.locator("#gapdiff_rb_run").click()
        table = page.locator("#gapdiff_rb_matrix table")
        table.wait_for()
        text = page.locator("#gapdiff_rb_matrix").inner_text()
        for name in ("jpeg:75", "platform:instagram", "platform:whatsapp", "resize:64|jpeg:60"):
            assert name in text, (name, text)
        assert "n/a (toy model)" in text and "DEMO" in text
        assert "effect kept" in text and "random noise" in text and "PSNR" in text
        rows = table.locator("tbody tr")
        assert rows.count() == 5  # the reference and four transforms: the chain's '|' does not split its row
        chain = table.locator("tbody tr", has_text="resize:64|jpeg:60")
        assert chain.locator("td").count() == 6 and "toy model" in chain.locator("td").nth(1).inner_text()
        page.locator("#gapdiff_rb_matrix").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "browser_robustness.png"), full_page=True)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_the_page_as_a_person_sees_it(served, photo_set, viewport):
    """Empty state, one photo, four photos: compact before any result, every protected photo whole inside the
    gallery, the DEMO warning exactly once, the status saying what happened, Cancel active only while work runs."""
    url, *_ = served
    ARTIFACTS.mkdir(exist_ok=True)
    with _app_page(url, VIEWPORTS[viewport]) as page:
        cancel_disabled = "document.querySelector('#gapdiff_cancel')?.disabled === true"  # null until Gradio renders it
        page.wait_for_function(cancel_disabled, timeout=5000)
        assert not page.locator("#gapdiff_gallery").is_visible() and not page.locator("#gapdiff_before").is_visible()
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height <= 2.2 * VIEWPORTS[viewport]["height"], f"empty page is {height} px tall"
        _assert_one_warning(page)
        page.screenshot(path=str(ARTIFACTS / f"browser_{viewport}_empty.png"), full_page=True)

        for count, name in ((1, "one_photo"), (4, "four_photos")):
            _upload(page, photo_set["four"][:count])
            _wait_loaded(page, "#gapdiff_thumbs img")
            assert len(_photos_inside(page, "#gapdiff_thumbs", smallest=40)) == count  # the uploads, whole
            page.locator("#gapdiff_protect").click()
            page.locator("#gapdiff_status").get_by_text(f"Protected {count} photo").wait_for()
            _wait_loaded(page, "#gapdiff_gallery img")
            page.wait_for_function(cancel_disabled, timeout=5000)  # set by the event that follows the result
            page.locator("#gapdiff_gallery").scroll_into_view_if_needed()
            boxes = _photos_inside(page, "#gapdiff_gallery")
            assert len(boxes) == count, boxes
            _assert_one_warning(page)
            assert "Protecting" not in page.locator("#gapdiff_status").inner_text()
            page.screenshot(path=str(ARTIFACTS / f"browser_{viewport}_{name}.png"), full_page=True)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_every_protect_error_is_one_message_and_no_stale_status(served, photo_set, viewport):
    """Each way a Protect request fails, after a successful one: one message naming the problem, the status and
    the last results cleared (nothing stale beside the error), one DEMO warning, Cancel inactive. The uploaded
    checkpoint's description replaces the dropdown's at once."""
    url, *_ = served
    ARTIFACTS.mkdir(exist_ok=True)
    errors = (("no_photo", [], "Upload one or more photos first."),
              ("broken_photo", [photo_set["broken"]], "No photo could be protected"),
              ("too_many_photos", photo_set["too_many"], f"at most {MAX_PHOTOS} at a time"),
              ("bad_checkpoint", photo_set["four"][:1], "Could not load the generator notes.safetensors"))
    with _app_page(url, VIEWPORTS[viewport]) as page:
        for name, files, message in errors:
            _upload(page, [photo_set["four"][1]])
            page.locator("#gapdiff_protect").click()
            page.locator("#gapdiff_status").get_by_text("Protected 1 photo").wait_for()
            if name == "bad_checkpoint":
                page.locator("#gapdiff_checkpoint input[type=file]").set_input_files([str(photo_set["checkpoint"])])
                info = page.locator("#gapdiff_generator_info")
                info.get_by_text("notes.safetensors").first.wait_for()
                assert "gapdiff-gradio" not in info.inner_text()  # named, not located on the server
            _upload(page, files)
            page.locator("#gapdiff_protect").click()
            page.get_by_text(message).first.wait_for()
            page.wait_for_timeout(300)  # anything that would still change (a late status) shows by now
            page.screenshot(path=str(ARTIFACTS / f"browser_{viewport}_error_{name}.png"), full_page=True)
            assert page.get_by_text(message).count() == 1, name
            assert "gapdiff-gradio" not in page.locator("body").inner_text(), name  # no server-side upload path
            status = page.locator("#gapdiff_status").inner_text().strip()
            # the last results and status are gone; Gradio marks the pane that showed the progress "Error"
            assert status in ("", "Error") and not page.locator("#gapdiff_gallery").is_visible(), (name, status)
            page.wait_for_function("document.querySelector('#gapdiff_cancel')?.disabled === true", timeout=5000)
            _assert_one_warning(page, 0 if name == "bad_checkpoint" else 1)  # the upload is no demo generator
            _close_toasts(page)


def _upload(page, files) -> None:
    """Replace the photos to protect with `files` (none: clear them), and wait for their thumbnails."""
    clear = page.locator("#gapdiff_photos button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
        page.locator("#gapdiff_thumbs").wait_for(state="hidden")
    if files:
        page.locator("#gapdiff_photos input[type=file]").set_input_files([str(f) for f in files])
        page.wait_for_function(f"document.querySelectorAll('#gapdiff_thumbs img').length === {len(files)}")


def _assert_one_warning(page, expected: int = 1) -> None:
    text = page.locator("body").inner_text()
    assert text.count(WARNING_START) == expected, f"the DEMO warning shows {text.count(WARNING_START)} times"


def _wait_loaded(page, selector: str) -> None:
    page.wait_for_function(f"[...document.querySelectorAll({selector!r})].every(i => i.complete && i.naturalWidth > 0)")


def _photos_inside(page, selector: str, smallest: int = 60) -> list:
    """The boxes of the photos shown in the gallery, each asserted to lie whole inside the gallery's box and to be
    drawn at a size a person can see (object-fit contain: the box holds the whole photo)."""
    boxes = page.evaluate("""sel => {
        const g = document.querySelector(sel).getBoundingClientRect();
        return [...document.querySelectorAll(sel + ' img')].filter(i => i.offsetParent !== null).map(i => {
            const r = i.getBoundingClientRect();
            return {x: r.x, y: r.y, w: r.width, h: r.height, fit: getComputedStyle(i).objectFit,
                    gx: g.x, gy: g.y, gw: g.width, gh: g.height}; }); }""", selector)
    for b in boxes:
        assert b["fit"] == "contain" and b["w"] >= smallest and b["h"] >= smallest, b
        assert b["x"] >= b["gx"] - 1 and b["y"] >= b["gy"] - 1, b
        assert b["x"] + b["w"] <= b["gx"] + b["gw"] + 1 and b["y"] + b["h"] <= b["gy"] + b["gh"] + 1, b
    return boxes


def _close_toasts(page) -> None:
    for button in page.locator(".toast-close").all():
        button.click()


@contextlib.contextmanager
def _app_page(url, viewport=None, timeout_ms: int = 30_000):
    """The app open in headless Chromium, its demo generator listed."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1280, "height": 1600})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.locator("#gapdiff_generator_info").get_by_text("DEMO generator").first.wait_for()
            yield page
        finally:
            browser.close()
