"""The real app in headless Debian Chromium (Playwright): upload a photo, protect it, see the protected photo and
the amplified perturbation, download the PNG and check it against the core. Screenshot: test-artifacts/.

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
                              precision="fp32", max_file_size="5mb", max_photos=8, queue_size=16, share=False)
    blocks = app.serve(args, block=False)
    yield blocks.local_url, gen, photo, other
    blocks.close()


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


def test_protect_without_a_photo_shows_one_message_and_leaves_the_outputs(served):
    """The request is refused before it starts: one toast, and no result pane turns into an error."""
    url, *_ = served
    with _app_page(url) as page:
        page.locator("#gapdiff_protect").click()
        page.get_by_text("Upload one or more photos first.").first.wait_for()
        page.wait_for_timeout(500)  # let any per-pane error state render
        panes = ["#gapdiff_gallery", "#gapdiff_downloads", "#gapdiff_before", "#gapdiff_after",
                 "#gapdiff_perturbation", "#gapdiff_status", "#gapdiff_photo_stats"]
        flagged = [sel for sel in panes if "error" in page.locator(sel).first.inner_text().lower()
                   or page.locator(f"{sel} .error").count()]
        assert flagged == [], f"panes showing an error: {flagged}"
        assert page.get_by_text("Upload one or more photos first.").count() == 1


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


@contextlib.contextmanager
def _app_page(url, timeout_ms: int = 30_000):
    """The app open in headless Chromium, its demo generator listed."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.locator("#gapdiff_generator_info").get_by_text("DEMO generator").first.wait_for()
            yield page
        finally:
            browser.close()
