"""The shared Gradio UI: its logic (lossless outputs bit-identical to the core, demo labels, readable errors), the
Blocks builder, and the running app on loopback (downloads, errors, ten concurrent requests)."""
import argparse
import io
import logging
import os
import stat
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gapdiff_core as gc
from gapdiff_core.model.checkpoint import GeneratorInfo
from gapdiff_core.common.budget import BudgetError, check_budget
from gapdiff_core.common.visualize import amplified_perturbation
from gapdiff_core.io import load_image, to_uint8
from gapdiff_core.metrics.directions import METRICS
from gapdiff_core.metrics.robustness import denoising_effect
from gapdiff_core.ui import evaluate_tab, generators, protect_tab, robustness_tab, robustness_text, settings, uploads
from gapdiff_core.ui.settings import UIError

SAMPLE = Path(gc.__file__).parent / "samples" / "obama.jpg"
BUDGET = 8


def make_models(folder: Path) -> Path:
    """A demo generator and a non-demo one (ngf=8, random weights, small working resolution for speed)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gc.save_generator(gc.Generator(ngf=8), folder / "tiny_demo.safetensors",
                      GeneratorInfo(ngf=8, demo=True, working_resolution=256, provenance="test"))
    gc.save_generator(gc.Generator(ngf=8), folder / "tiny_real.safetensors",
                      GeneratorInfo(ngf=8, demo=False, working_resolution=256, provenance="test"))
    return folder


def make_photo(path: Path, size=(96, 120)) -> Path:
    """A small face photo carrying EXIF with a GPS block, to check it is stripped."""
    im = Image.open(SAMPLE).convert("RGB").resize(size)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    im.save(path, quality=95, exif=exif)
    return path


def core_result(gen_path: Path, photo: Path, budget=BUDGET) -> np.ndarray:
    x = load_image(photo).tensor()
    p = gc.Protector(gc.load_generator(gen_path), budget=budget, mode="working", device="cpu", precision="fp32")
    return to_uint8(p(x))


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        assert not im.getexif() and "exif" not in im.info
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_photo(tmp_path_factory.mktemp("photos") / "face one.jpg")


def test_generators_listed_with_demo_label(models, tmp_path):
    (models / "notes.txt").write_text("not a model")
    entries = {e.path.name: e for e in generators.list_generators(models)}
    assert set(entries) == {"tiny_demo.safetensors", "tiny_real.safetensors"}
    assert "DEMO" in entries["tiny_demo.safetensors"].choice and entries["tiny_demo.safetensors"].demo
    assert "DEMO" not in entries["tiny_real.safetensors"].choice
    assert "DEMO" in generators.describe_generator(entries["tiny_demo.safetensors"].info)
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    broken = generators.list_generators(tmp_path)
    assert broken[0].error and "unreadable" in broken[0].choice
    with pytest.raises(UIError, match="broken.safetensors"):
        generators.resolve_generator(broken[0].choice, None, tmp_path)
    with pytest.raises(UIError, match="No generator selected"):
        generators.resolve_generator(None, None, tmp_path)


def test_protect_photo_is_lossless_core_result_within_budget(models, photo, tmp_path):
    gen = models / "tiny_demo.safetensors"
    protector = generators.get_protector(gen, BUDGET, "working", "cpu", "fp32")
    r = protect_tab.protect_photo(protector, str(photo), tmp_path, 0, demo=True)
    assert r.protected_png.name == "01_face_one_protected_DEMO.png"
    out = png_pixels(r.protected_png.read_bytes())
    np.testing.assert_array_equal(out, core_result(gen, photo))
    orig = load_image(photo).rgb.astype(int)
    assert np.abs(out.astype(int) - orig).max() <= BUDGET
    assert r.max_change <= BUDGET and r.psnr_db > 30 and 0.9 < r.ssim <= 1
    np.testing.assert_array_equal(png_pixels(r.original_png.read_bytes()), orig)
    vis = png_pixels(r.perturbation_png.read_bytes())
    np.testing.assert_array_equal(vis, amplified_perturbation(orig, out, BUDGET)[0])
    zpath = protect_tab.zip_outputs([r], tmp_path, demo=True)
    assert zpath.name.endswith("_DEMO.zip")
    with zipfile.ZipFile(zpath) as zf:
        assert zf.namelist() == [r.protected_png.name]
        assert zf.read(r.protected_png.name) == r.protected_png.read_bytes()


def test_protector_cache_reloads_changed_file_and_checks_options(models, tmp_path):
    gen = tmp_path / "g.safetensors"
    gc.save_generator(gc.Generator(ngf=8), gen, GeneratorInfo(ngf=8, working_resolution=256))
    a = generators.get_protector(gen, 4, "working", "cpu", "fp32")
    assert generators.get_protector(gen, 4, "working", "cpu", "fp32") is a
    assert generators.get_protector(gen, 6, "working", "cpu", "fp32").budget == 6
    gc.save_generator(gc.Generator(ngf=8), gen, GeneratorInfo(ngf=8, working_resolution=256, demo=True))
    assert generators.get_protector(gen, 4, "working", "cpu", "fp32").info.demo
    with pytest.raises(UIError, match="Mode"):
        generators.get_protector(gen, 4, "fast", "cpu", "fp32")


@pytest.mark.parametrize("budget", [0, 0.5, 256, float("nan"), "eight"])
def test_protector_budget_follows_the_one_budget_rule(models, budget):
    """The UI checks the budget with common.budget.check_budget before anything is loaded: the message states
    the rule (the UI's own check accepted 0.5, which then failed inside the Protector as a load error)."""
    with pytest.raises(UIError) as err:
        generators.get_protector(models / "tiny_real.safetensors", budget, "working", "cpu", "fp32")
    with pytest.raises(BudgetError) as rule:
        check_budget(budget, "The budget")
    assert str(err.value) == f"{rule.value}."


def _counting_loads(monkeypatch) -> list:
    loads, real_load = [], generators.load_generator

    def load(path, *args, **kwargs):
        loads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(generators, "load_generator", load)
    return loads


def test_budget_changes_reuse_the_loaded_generator(tmp_path, photo, monkeypatch):
    """Budgets 8, 4, 6 (and another mode) load the checkpoint once, and each gives the pixels of a fresh Protector
    at that budget; the old cache loaded the checkpoint (73 M parameters for the official one) on every change."""
    gen = tmp_path / "g.safetensors"
    gc.save_generator(gc.Generator(ngf=8), gen, GeneratorInfo(ngf=8, working_resolution=256))
    loads = _counting_loads(monkeypatch)
    rgb = load_image(photo).rgb
    for budget, mode in ((8, "working"), (4, "working"), (6, "working"), (6, "native"), (8, "working")):
        protector = generators.get_protector(gen, budget, mode, "cpu", "fp32")
        assert (protector.budget, protector.mode) == (budget, mode)
        fresh = gc.Protector(gc.load_generator(gen), budget=budget, mode=mode, device="cpu", precision="fp32")
        np.testing.assert_array_equal(protector.protect_uint8(rgb), fresh.protect_uint8(rgb))
    assert loads == ["g.safetensors"]


def test_a_budget_above_the_probed_one_loads_once_more_and_is_kept(tmp_path, monkeypatch):
    """With `auto` precision kept at a reduced precision (the probe is forced to keep it here), the Protector
    refuses budgets above the one it was probed at: the UI loads the generator once at the larger budget and
    serves every smaller budget from that one."""
    from gapdiff_core.model import protector as protector_module

    def keep(self, generator):
        self.precision_note = "auto: kept (test)"

    monkeypatch.setattr(protector_module, "default_precision", lambda device: "bf16")
    monkeypatch.setattr(protector_module.Protector, "_keep_reduced_precision_only_if_close", keep)
    gen = tmp_path / "g.safetensors"
    gc.save_generator(gc.Generator(ngf=8), gen, GeneratorInfo(ngf=8, working_resolution=256))
    loads = _counting_loads(monkeypatch)
    used = [generators.get_protector(gen, b, "working", "cpu", "auto") for b in (8, 16, 12, 8, 16)]
    assert [p.budget for p in used] == [8, 16, 12, 8, 16] and all(p.precision == "bf16" for p in used)
    assert loads == ["g.safetensors"] * 2


def test_unreadable_photo_is_a_readable_error(models, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello")
    protector = generators.get_protector(models / "tiny_real.safetensors", BUDGET, "working", "cpu", "fp32")
    with pytest.raises(UIError) as err:
        protect_tab.protect_photo(protector, str(bad), tmp_path, 0, demo=False)
    assert str(err.value).startswith("notes.jpg: ") and "Traceback" not in str(err.value)


def test_photo_error_names_the_upload_once_whatever_its_name(models, tmp_path):
    """The reason comes from ImageError.reason, not from splitting its message: a ': ' in a file name (legal on
    Linux and macOS) once made the UI repeat part of the name as if it were the problem."""
    protector = generators.get_protector(models / "tiny_real.safetensors", BUDGET, "working", "cpu", "fp32")
    bad = tmp_path / "holiday: day 1.jpg"
    bad.write_text("hello")
    with pytest.raises(UIError) as err:
        protect_tab.protect_photo(protector, str(bad), tmp_path, 0, demo=False)
    assert str(err.value) == ("holiday: day 1.jpg: is a text file, not an image; check that the right file was "
                              "given")


def test_summary_labels_demo_and_lists_failures(models, photo, tmp_path):
    protector = generators.get_protector(models / "tiny_demo.safetensors", BUDGET, "working", "cpu", "fp32")
    r = protect_tab.protect_photo(protector, str(photo), tmp_path, 0, demo=True)
    text = protect_tab.summary_markdown([r], ["x.jpg: broken"], BUDGET, protector.info)
    assert "DEMO" in text and "x.jpg: broken" in text and "face one.jpg" in text


def test_zip_is_written_atomically(models, photo, tmp_path):
    """The zip goes through io.atomic: a failure while it is written (here a protected PNG that vanished) leaves no
    half-written zip behind; the direct zipfile write left a truncated one that the app would have offered."""
    protector = generators.get_protector(models / "tiny_real.safetensors", BUDGET, "working", "cpu", "fp32")
    good = protect_tab.protect_photo(protector, str(photo), tmp_path, 0, demo=False)
    gone = protect_tab.protect_photo(protector, str(photo), tmp_path, 1, demo=False)
    gone.protected_png.unlink()
    with pytest.raises(FileNotFoundError):
        protect_tab.zip_outputs([good, gone], tmp_path, demo=False)
    assert not (tmp_path / "gapdiff_protected.zip").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gapdiff-")]


def test_robustness_measures_what_survives_jpeg(models, photo, tmp_path):
    protector = generators.get_protector(models / "tiny_real.safetensors", 16, "working", "cpu", "fp32")
    r = robustness_tab.robustness_check(str(photo), None, 50, tmp_path, protector)
    assert "% as strong**: the perturbation's average size" in r.markdown and "**Similarity " in r.markdown
    assert "energy kept" not in r.markdown and "max change" not in r.markdown
    # every number of the comparison comes with its sentence: one bullet each, none bare
    bullets = [line for line in r.markdown.splitlines() if line.startswith("- **")]
    assert len(bullets) == 4 and all(len(b.split("**: ", 1)[-1].split()) >= 8 for b in bullets), bullets
    assert png_pixels(r.clean_jpeg_png.read_bytes()).shape == (120, 96, 3)
    from gapdiff_core.preprocess.real import jpeg
    expected = to_uint8(jpeg(load_image(photo).tensor(), 50))
    np.testing.assert_array_equal(png_pixels(r.clean_jpeg_png.read_bytes()), expected)
    other = tmp_path / "small.png"
    Image.new("RGB", (40, 40)).save(other)
    with pytest.raises(UIError, match="matching pair"):
        robustness_tab.robustness_check(str(photo), str(other), 50, tmp_path)


class SmallSurrogate:
    """The Surrogate interface the measure uses (encode_images, encode_prompt, predict, scheduler) on a few
    convolutions and diffusers' real DDPM scheduler; `load_surrogate("tiny")` is slower to build."""

    resolution, device, dtype, is_demo, name = 32, torch.device("cpu"), torch.float32, True, "small test model"

    def __init__(self):
        from diffusers import DDPMScheduler

        torch.manual_seed(0)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.vae = torch.nn.Conv2d(3, 4, 4, stride=4)
        self.unet = torch.nn.Conv2d(4, 4, 3, padding=1)

    def encode_images(self, x01, sample=True):
        z = self.vae(x01 * 2 - 1)
        return z + 0.1 * torch.randn_like(z) if sample else z

    def encode_prompt(self, prompts):
        return torch.zeros(len(prompts), 77, 8)

    def predict(self, noisy, t, emb):
        return self.unet(noisy)


def test_denoising_effect_is_deterministic_and_responds_to_the_image():
    pytest.importorskip("diffusers")
    sur = SmallSurrogate()
    x = load_image(SAMPLE).tensor()
    torch.manual_seed(123)
    a = denoising_effect(sur, x)
    after = torch.rand(1)  # the measure leaves the global RNG as it was
    torch.manual_seed(123)
    assert denoising_effect(sur, x) == a and torch.equal(torch.rand(1), after)
    assert a > 0 and denoising_effect(sur, torch.rand_like(x)) != a


def test_robustness_tab_offers_presets_and_reads_typed_specs():
    labels = robustness_tab.preset_choices(False)
    assert [robustness_tab.PRESETS[x] for x in labels] == ["jpeg:75", "platform:instagram", "platform:facebook",
                                                          "platform:x", "platform:whatsapp", "gauss:1"]
    assert robustness_tab.preset_choices(True) == list(robustness_tab.PRESETS)  # diffpure only with a surrogate
    assert set(robustness_tab.DEFAULT_PRESETS) <= set(labels)
    diffpure = robustness_tab.preset_choices(True)[-1]
    chosen, skipped = robustness_tab.chosen_transforms(
        [labels[0], diffpure], "webp:80; resize:64 | jpeg:75\n\n JPEG:75 \nimpress:steps=2", surrogate_chosen=False)
    assert [t.spec for t in chosen] == ["jpeg:75", "webp:80", "resize:64|jpeg:75"]  # jpeg:75 once
    assert skipped == ["diffpure:0.1,steps=10", "impress:2"]  # normalised specs
    chosen, skipped = robustness_tab.chosen_transforms([diffpure], "", surrogate_chosen=True)
    assert [t.spec for t in chosen] == ["diffpure:0.1,steps=10"] and not skipped
    with pytest.raises(UIError, match=r"'jpeg:120'.*quality must be in \[1, 100\].*Write transforms like"):
        robustness_tab.chosen_transforms([], "webp:80\njpeg:120", surrogate_chosen=True)
    with pytest.raises(UIError, match="Unknown transform choice"):
        robustness_tab.chosen_transforms(["jpeg:75"], "", surrogate_chosen=True)


def brightness(photo: torch.Tensor) -> float:
    """A stand-in measure that sees only the mean brightness (fast and exact; the tab's own is the surrogate's)."""
    return float(photo.mean())


class Brighten:
    """A stand-in protector that brightens every pixel by 4 grey levels: a known effect under `brightness`."""

    budget, info = 4.0, GeneratorInfo(ngf=8, demo=False)

    def __call__(self, x):
        return (x + 4 / 255).clamp(0, 1).mul(255).round().div(255)


def test_survival_table_puts_the_verdict_in_words_first_then_the_matrix_numbers():
    from gapdiff_core.evaluation.robustness_matrix import VERDICTS
    from gapdiff_core.evaluation.robustness_report import interval_text, percent_text
    from gapdiff_core.preprocess import parse

    g = torch.Generator().manual_seed(0)
    faces = [(torch.rand(1, 3, 40, 40, generator=g) * 0.6 + 0.2).mul(255).round().div(255) for _ in range(8)]
    steps = []
    matrix, method = robustness_tab.measure_survival(
        faces, [parse("jpeg:90"), parse("quantize:2")], None, protector=Brighten(), measure=brightness,
        progress=lambda done, total, _: steps.append((done, total)))
    assert method == "gap-diff" and steps[-1] == (24, 24)
    assert [m.name for m in matrix.methods] == ["gap-diff", "none", "random-noise"]
    assert matrix.methods[2].budget == 4.0  # the control has the protection's budget
    text = robustness_text.survival_markdown(matrix, method, ["diffpure:0.1,steps=10"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert list(rows)[1:] == ["no change (reference)", "`jpeg:90`", "`quantize:2`"]
    assert rows["`jpeg:90`"][0] == "**survives**"  # +4 grey levels keep their mean brightness through JPEG 90
    for spec, name in (("none", "no change (reference)"), ("jpeg:90", "`jpeg:90`"), ("quantize:2", "`quantize:2`")):
        cell = matrix.cell("gap-diff", spec)
        word = VERDICTS[cell.verdict].split(" (")[0]
        assert rows[name] == [f"**{word}**", interval_text(cell.effect), percent_text(cell.share),
                              interval_text(matrix.cell("random-noise", spec).effect), rows[name][4]]
        assert rows[name][4] in ("identical", f"{cell.psnr.mean:.4g}")
    header = next(line for line in text.splitlines() if line.startswith("| transform |"))
    explained = [line for line in text.splitlines() if line.startswith("- *")]
    assert [c.strip() for c in header.split("|")[2:-1]] == [line[3:].split("*:")[0] for line in explained]
    assert "What each number means" in text and "Not measured, they need a surrogate: `diffpure:0.1,steps=10`" in text
    assert "survives (the effect kept is clearly above the random-noise control" in text
    matrix.toy = True
    toy = robustness_text.survival_markdown(matrix, method)
    assert "| `jpeg:90` | **n/a (toy model)** |" in toy and "DEMO on a toy model" in toy
    assert "the demo readings would be `none`: survives, `jpeg:90`: survives" in toy


def test_survival_of_an_uploaded_pair_uses_its_own_largest_change_for_the_noise_control():
    from gapdiff_core.preprocess import parse

    clean = torch.full((1, 3, 24, 24), 100 / 255)
    protected = clean.clone()
    protected[..., :4, :4] += 6 / 255
    matrix, method = robustness_tab.measure_survival([clean], [parse("jpeg:90")], None, protected=protected,
                                                     measure=brightness)
    assert method == "your protected photo" and matrix.methods[2].budget == 6.0
    assert "**uncertain**" in robustness_text.survival_markdown(matrix, method)  # one photo: no interval
    with pytest.raises(UIError, match="one clean photo of the same size"):
        robustness_tab.measure_survival([clean, clean], [parse("jpeg:90")], None, protected=protected,
                                        measure=brightness)


def test_robustness_tab_measures_the_chosen_transforms_on_the_tiny_surrogate(models, photo, tmp_path):
    """The whole tab function, as the button runs it: presets and typed specs, the tiny (toy) surrogate."""
    pytest.importorskip("diffusers")
    from gapdiff_core.ui import build_ui

    robustness = _ui_fn(build_ui(settings.UISettings(models_dir=models, device="cpu", precision="fp32")),
                        "robustness")
    shown = []
    table, clean_jpeg, prot_jpeg, pert, report, _ = robustness(
        [str(photo)], None, 75, "tiny built-in model (DEMO)", "", "tiny_real.safetensors", None, 8, "working",
        [robustness_tab.preset_choices(True)[0]], "webp:80", progress=lambda value, desc=None: shown.append(desc))
    assert "| `jpeg:75` | **n/a (toy model)** |" in table and "| `webp:80` | **n/a (toy model)** |" in table
    assert "DEMO on a toy model" in table and "What each number means" in table
    assert any(d and d.startswith("Measuring: 3 of 3") for d in shown)
    assert Path(clean_jpeg).is_file() and "After JPEG at quality 75" in report
    table, *_ = robustness([str(photo)], None, 75, "none", "", "tiny_real.safetensors", None, 8, "working",
                           list(robustness_tab.DEFAULT_PRESETS), "", progress=lambda *a, **k: None)
    assert table == robustness_text.NO_SURROGATE


def test_evaluate_tab_reports_the_face_diagnostics_and_detector():
    """A readable table (short values and backend names, no sentences in it) with each backend described once
    below it; QualityFace and the face-box BRISQUE as two separate diagnostics."""
    text = evaluate_tab.evaluate_uploads([str(SAMPLE)], [str(SAMPLE.with_name("obama2.jpg"))])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    quality, box = rows[METRICS["qualityface"].label], rows[METRICS["face_brisque"].label]
    assert 0 < float(quality[0]) <= 1 and quality[1] == "lower ↓" and quality[2] == "qualityface"
    assert box[1] == "higher ↑" and box[2] == "face brisque"
    assert float(rows["FDFR"][0]) == 0 and rows["FDFR"][1] == "higher ↑" and rows["FDFR"][2] == "detector"
    assert rows["ISM"][2] == "embedder" and rows["SER-FIQ"][2] == "serfiq"
    assert all(len(cell) <= 16 for name, row in rows.items() if name != "metric" for cell in row), rows
    for name in ("retinaface-mobilenet", "QualityFace MobileNetV2"):
        assert text.count(name) == 1, name
    assert "- **detector**: retinaface-mobilenet: RetinaFace" in text


def test_builder_builds_blocks_with_api(models):
    import gradio as gr

    from gapdiff_core.ui import build_ui

    blocks = build_ui(lambda: settings.UISettings(models_dir=models))
    assert isinstance(blocks, gr.Blocks)
    names = {getattr(d, "api_name", None) for d in blocks.fns.values()} if isinstance(blocks.fns, dict) else \
        {d.api_name for d in blocks.fns}
    assert {"protect", "robustness", "evaluate", "list_generators"} <= names
    presets = next(c for c in blocks.blocks.values() if getattr(c, "elem_id", None) == "gapdiff_rb_presets")
    offered = [c[0] if isinstance(c, (tuple, list)) else c for c in presets.choices]
    assert offered == robustness_tab.preset_choices(False)  # diffpure appears once a surrogate is chosen
    assert list(presets.value) == list(robustness_tab.DEFAULT_PRESETS)


# ---------------------------------------------------------------- the running app on loopback


@pytest.fixture(scope="module")
def app_url(models):
    pytest.importorskip("gradio")
    from gapdiff_core.ui import app

    args = argparse.Namespace(host="127.0.0.1", port=0, models_dir=str(models), budget=8.0, device="cpu",
                              precision="fp32", max_file_size="2mb", max_photos=8, queue_size=64, share=False)
    blocks = app.serve(args, block=False)
    yield blocks.local_url
    blocks.close()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _protect_args(photo, choice="tiny_demo.safetensors" + generators.DEMO_TAG):
    from gradio_client import handle_file

    return ([handle_file(str(photo))], choice, None, BUDGET, "working")


def test_app_serves_loopback_downloads_bit_identical(app_url, models, photo):
    assert app_url.startswith("http://127.0.0.1:")
    result = _client(app_url).predict(*_protect_args(photo), api_name="/protect")
    gallery, files, before, after, pert, status, photo_md = result[:7]
    expected = core_result(models / "tiny_demo.safetensors", photo)
    png, zpath = files
    assert Path(png).name.endswith("_DEMO.png") and "DEMO" in status and "DEMO" in gallery[0]["caption"]
    np.testing.assert_array_equal(png_pixels(Path(png).read_bytes()), expected)
    np.testing.assert_array_equal(png_pixels(Path(gallery[0]["image"]).read_bytes()), expected)
    np.testing.assert_array_equal(png_pixels(Path(after).read_bytes()), expected)
    with zipfile.ZipFile(zpath) as zf:
        assert zf.read(zf.namelist()[0]) == Path(png).read_bytes()


def test_app_errors_are_messages_not_tracebacks(app_url, tmp_path):
    from gradio_client.exceptions import AppError

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 50)
    with pytest.raises(AppError) as err:
        _client(app_url).predict(*_protect_args(bad), api_name="/protect")
    msg = str(err.value)
    assert "broken.png" in msg and "Traceback" not in msg and 'File "' not in msg
    with pytest.raises(AppError) as err:  # Gradio's own choice validation, or ours
        _client(app_url).predict(*_protect_args(bad, choice="gone.safetensors"), api_name="/protect")
    assert "gone.safetensors" in str(err.value) and "Traceback" not in str(err.value)


def test_ten_concurrent_protect_requests_while_server_stays_responsive(app_url, models, photo):
    expected = core_result(models / "tiny_demo.safetensors", photo)
    clients = [_client(app_url) for _ in range(3)]
    jobs = [clients[i % 3].submit(*_protect_args(photo), api_name="/protect") for i in range(10)]
    t0 = time.perf_counter()
    with urllib.request.urlopen(app_url.rstrip("/") + "/config", timeout=30) as resp:
        assert resp.status == 200 and b"gapdiff" in resp.read()
    light_s = time.perf_counter() - t0
    pending_at_light_answer = sum(not j.done() for j in jobs)
    results = [j.result(timeout=120) for j in jobs]
    assert len(results) == 10
    for r in results:
        np.testing.assert_array_equal(png_pixels(Path(r[1][0]).read_bytes()), expected)
    assert light_s < 10, f"a light request took {light_s:.1f} s under load"
    assert pending_at_light_answer > 0, "the load had finished before the light request answered"


# ---------------------------------------------------------------- limits and failures a user can cause


def _ui_fn(blocks, api_name):
    fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    return next(f for f in fns if f.api_name == api_name).fn


def test_bad_checkpoints_are_named_and_skipped_at_start_and_refused_when_chosen(models, tmp_path, monkeypatch,
                                                                                capsys, zip_bomb_pth):
    """A zip-bomb .pth is refused from its archive directory, never unpacked, both when the folder is listed and
    when it is loaded; a file that raises anything else while its metadata is read (here a MemoryError) costs one
    entry too."""
    import shutil

    from gapdiff_core.ui import app

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(models / "tiny_real.safetensors", folder / "good.safetensors")
    zip_bomb_pth(folder / "bomb.pth")
    (folder / "odd.pth").write_bytes(b"PK\x03\x04 pretend")
    real_read_info = generators.read_info

    def read_info(path):
        if Path(path).name == "odd.pth":
            raise MemoryError("archive expands past memory")
        return real_read_info(path)

    def unpack(*args, **kwargs):
        raise AssertionError("torch.load ran on a zip bomb")

    monkeypatch.setattr(generators, "read_info", read_info)
    monkeypatch.setattr(torch, "load", unpack)
    args = argparse.Namespace(host="127.0.0.1", port=0, models_dir=str(folder), budget=8.0, device="cpu",
                              precision="fp32", max_file_size="2mb", max_photos=8, queue_size=4, share=False)
    blocks = app.create_app(args)
    err = capsys.readouterr().err
    assert "skipped bomb.pth" in err and "zip bomb" in err
    assert "skipped odd.pth" in err and "MemoryError" in err
    choices = {e.choice: e for e in generators.list_generators(folder)}
    assert set(choices) == {"good.safetensors", "bomb.pth  [unreadable]", "odd.pth  [unreadable]"}
    assert choices["odd.pth  [unreadable]"].error.startswith("odd.pth: ")
    with pytest.raises(UIError, match="zip bomb"):
        generators.resolve_generator("bomb.pth  [unreadable]", None, folder)
    with pytest.raises(UIError, match=r"Could not load the generator bomb\.pth: .*zip bomb"):
        generators.get_protector(folder / "bomb.pth", BUDGET, "working", "cpu", "fp32")
    assert _ui_fn(blocks, "list_generators") is not None


def test_listing_generators_reads_no_weights(models, tmp_path, monkeypatch):
    """Listing a models folder reads each checkpoint's header (checkpoint.read_info), never its weights: the
    official generator has 73 M parameters, and the UI lists the folder at start and on every Refresh."""
    from gapdiff_core.model import checkpoint

    folder = tmp_path / "models"
    make_models(folder)
    torch.manual_seed(1)
    torch.save({"generator." + k: v for k, v in gc.Generator(ngf=8).state_dict().items()}, folder / "official.pth")
    real_load, mmaps = torch.load, []

    def forbidden(*args, **kwargs):
        raise AssertionError("listing read the weights")

    def load(*args, **kwargs):
        mmaps.append(kwargs.get("mmap"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(generators, "load_generator", forbidden)
    monkeypatch.setattr(checkpoint, "read_safetensors", forbidden)
    monkeypatch.setattr(checkpoint, "Generator", forbidden)
    monkeypatch.setattr(torch, "load", load)
    entries = {e.path.name: e for e in generators.list_generators(folder)}
    assert {name: (e.error, e.info.ngf, e.demo) for name, e in entries.items()} == {
        "official.pth": ("", 8, False), "tiny_demo.safetensors": ("", 8, True), "tiny_real.safetensors": ("", 8, False)}
    assert entries["tiny_demo.safetensors"].choice == "tiny_demo.safetensors" + generators.DEMO_TAG
    assert mmaps == [True]  # the .pth state dict is memory-mapped, its tensors unread


def test_port_in_use_is_a_message_not_a_traceback(models, capsys):
    import socket

    from gapdiff_core.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mask = os.umask(0o022)
        os.umask(mask)
        try:
            assert main(["app", "--port", str(port), "--models-dir", str(models), "--device", "cpu"]) == 2
        finally:
            os.umask(mask)  # `gapdiff app` makes its own process private; this one is pytest's
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err and "Traceback" not in err


def test_out_of_memory_is_recognised_by_type_and_by_text_only_for_plain_runtime_errors():
    """MemoryError and torch's OutOfMemoryError by type (whatever their text); the "out of memory" text only on a
    plain RuntimeError (Apple MPS raises one), not in any other exception's message."""
    import gradio as gr

    from gapdiff_core.ui import errors

    def shown(exc: Exception) -> str:
        @errors.readable
        def handler():
            raise exc

        with pytest.raises(gr.Error) as err:
            handler()
        return err.value.message

    for exc in (MemoryError(), torch.OutOfMemoryError("Tried to allocate 2.00 GiB"),
                RuntimeError("MPS backend out of memory (MPS allocated: 8.89 GB, max allowed: 9.07 GB)")):
        assert shown(exc).startswith("Out of memory: use fewer or smaller photos"), exc
    for exc in (RuntimeError("shapes do not match"), KeyError("out of memory.png")):
        assert shown(exc).startswith(f"Unexpected error ({type(exc).__name__}: "), exc


def test_robustness_surrogate_path_reveals_nothing_outside_the_models_folder(models, photo, tmp_path):
    import gradio as gr

    from gapdiff_core.ui import build_ui

    inside = models / "my-surrogate"
    inside.mkdir(exist_ok=True)
    s = settings.UISettings(models_dir=models)
    assert robustness_tab.resolve_surrogate_path("my-surrogate", s) == inside.resolve()
    outside = tmp_path / "secret"
    outside.mkdir()
    answers = set()
    for probe in (str(outside), str(tmp_path / "missing"), "/", "../" + outside.name, str(models / ".." / "x"),
                  "", "bad\x00name"):
        with pytest.raises(UIError) as err:
            robustness_tab.resolve_surrogate_path(probe, s)
        answers.add(str(err.value).replace(repr(probe), "<name>"))
    assert len(answers) == 1  # an existing folder and a missing one get the same answer
    robustness = _ui_fn(build_ui(s), "robustness")
    texts = set()
    for probe in (str(outside), str(tmp_path / "missing")):
        with pytest.raises(gr.Error) as err:
            robustness(str(photo), str(photo), 75, "local model (path below)", probe, None, None, 8, "working")
        texts.add(str(err.value).replace(repr(probe), "<name>"))
    assert len(texts) == 1


def test_robustness_without_diffusers_says_so_and_still_compares(models, photo, tmp_path, monkeypatch):
    """A host whose diffusers cannot import: the surrogate option explains itself, the JPEG comparison works."""
    import builtins

    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name == "diffusers" or name.startswith("diffusers.") or name.endswith("diffusion"):
            raise RuntimeError("Failed to import diffusers.models: cannot import name 'resolve_revision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(robustness_tab, "_SURROGATES", {})
    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(UIError, match="needs diffusers.*resolve_revision.*surrogate 'none'"):
        robustness_tab.load_surrogate_cached("tiny")
    monkeypatch.setattr(builtins, "__import__", real_import)
    r = robustness_tab.robustness_check(str(photo), str(photo), 60, tmp_path)
    assert "% as strong**" in r.markdown


def test_evaluate_and_protect_limit_photos_and_pixels(models, photo, tmp_path):
    s = settings.UISettings(models_dir=models, max_photos=2, max_pixels=10_000)
    with pytest.raises(UIError, match="3 generated photos uploaded; at most 2"):
        evaluate_tab.evaluate_uploads([str(photo)] * 3, None, s)
    with pytest.raises(UIError, match="3 reference photos uploaded; at most 2"):
        evaluate_tab.evaluate_uploads([str(photo)], [str(photo)] * 3, s)
    with pytest.raises(UIError, match="3 photos uploaded; at most 2"):
        generators.check_protect_request([str(photo)] * 3, "tiny_real.safetensors", None, s)
    protector = generators.get_protector(models / "tiny_real.safetensors", BUDGET, "working", "cpu", "fp32")
    with pytest.raises(UIError, match=r"face one.jpg: larger than this server's limit of 0.01 megapixels"):
        protect_tab.protect_photo(protector, str(photo), tmp_path, 0, False, max_pixels=s.max_pixels)
    with pytest.raises(UIError, match="0.01 megapixels"):
        robustness_tab.robustness_check(str(photo), None, 75, tmp_path, protector, max_pixels=s.max_pixels)


def test_outputs_and_uploads_stay_private(models, tmp_path, monkeypatch):
    import stat
    import tempfile

    from gapdiff_core.ui import app

    root = tmp_path / "gapdiff-ui"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    monkeypatch.setattr(uploads, "OUTPUT_ROOT", root)
    out = uploads.new_output_dir()
    assert out.parent == root and stat.S_IMODE(root.stat().st_mode) == 0o700
    monkeypatch.setenv("GRADIO_TEMP_DIR", "")
    monkeypatch.delenv("GRADIO_TEMP_DIR")  # restored afterwards to what it was
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = argparse.Namespace(host="127.0.0.1", port=0, models_dir=str(models), budget=8.0, device="cpu",
                              precision="fp32", max_file_size="2mb", max_photos=8, queue_size=4, share=False)
    app.create_app(args)
    cache = Path(app.os.environ["GRADIO_TEMP_DIR"])
    assert cache.parent == tmp_path and stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_compat_warns_once_about_each_keyword_it_drops(monkeypatch):
    """A keyword the installed Gradio lacks is dropped (the component is still built with the rest), but not
    silently: one warning names the component and the keyword."""
    gr = pytest.importorskip("gradio")
    from gapdiff_core.ui import compat

    monkeypatch.setattr(compat, "_WARNED", set())
    with gr.Blocks(), pytest.warns(UserWarning) as caught:
        button = compat.make(gr.Button, value="Go", no_such_option=1)
        compat.make(gr.Button, value="Again", no_such_option=2)  # same component and keyword: no second warning
        compat.make(gr.Textbox, label="t", no_such_option=3)
        compat.listen(button.click, lambda: None, no_such_listener_option=True)
    ours = sorted(str(w.message) for w in caught if str(w.message).startswith("gapdiff:"))
    assert len(ours) == 3, ours
    assert "gr.Button has no option 'no_such_option'" in ours[0]
    assert "gr.Button.click has no option 'no_such_listener_option'" in ours[1]
    assert "gr.Textbox has no option 'no_such_option'" in ours[2]
    assert button.value == "Go"


# ---------------------------------------------------------------- what a person reads, and getting started


def test_page_text_says_each_thing_once_and_never_contradicts_itself(models, photo, tmp_path):
    """The DEMO warning is in the generator's description only (the results carry a DEMO label, not the warning
    again); an untrained demo generator is not called trained; an uploaded checkpoint is described at once."""
    from gapdiff_core.commands.demo_assets import untrained_generator

    _, untrained = untrained_generator(ngf=8)
    text = generators.describe_generator(untrained)
    assert text.count(generators.DEMO_WARNING) == 1 and "untrained" in text
    assert "trained on a toy model" not in text and "trained against a toy model" not in text
    protector = generators.get_protector(models / "tiny_demo.safetensors", BUDGET, "working", "cpu", "fp32")
    r = protect_tab.protect_photo(protector, str(photo), tmp_path, 0, demo=True)
    summary = protect_tab.summary_markdown([r], [], BUDGET, protector.info)
    details = protect_tab.photo_markdown(protect_tab.result_dict(r, True))
    assert "DEMO" in summary and details.startswith("DEMO output")
    assert "⚠️" not in summary + details and generators.DEMO_WARNING not in summary + details
    empty = tmp_path / "empty_models"
    empty.mkdir()
    assert generators.describe_choice(None, None, empty).startswith("No generator found")
    uploaded = generators.describe_choice(None, str(models / "tiny_real.safetensors"), empty)
    assert uploaded.startswith("Uploaded checkpoint.") and "ngf=8" in uploaded and "No generator" not in uploaded
    bad = tmp_path / "notes.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert generators.describe_choice(None, str(bad), empty).startswith("notes.safetensors: ")


def test_protect_reports_real_progress_through_loading_and_each_photo(models, photo, tmp_path):
    """The progress bar moves: loading the generator, then each photo's stages, always forward, ending at 1."""
    from gapdiff_core.ui import build_ui

    protect = _ui_fn(build_ui(settings.UISettings(models_dir=models, device="cpu", precision="fp32")), "protect")
    seen = []
    second = make_photo(tmp_path / "second.jpg", size=(64, 80))
    out = protect([str(photo), str(second)], "tiny_real.safetensors", None, BUDGET, "working",
                  progress=lambda value, desc=None: seen.append((value, desc)))
    values = [v for v, _ in seen]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    descs = [d for _, d in seen]
    assert descs[0] == "Loading the generator"
    for i in (1, 2):
        assert [d.split(": ", 1)[1] for d in descs if d.startswith(f"Photo {i} of 2")] == [
            "reading", "protecting", "writing the PNGs", "measuring the change"]
    assert len(set(values)) >= 9 and "Protected 2 photo(s) at a budget" in out[5]


def test_a_user_mistake_logs_one_line_and_its_traceback_only_at_debug_level(caplog):
    """A message for the user is one INFO line in the log and Gradio is told not to print its traceback; the
    traceback is there at DEBUG level. An unexpected error still logs its traceback."""
    import gradio as gr

    from gapdiff_core.ui import errors

    @errors.readable
    def mistake():
        raise UIError("Upload one or more photos first.")

    @errors.readable
    def bug():
        raise KeyError("oops")

    with caplog.at_level(logging.INFO, logger="gapdiff.ui"), pytest.raises(gr.Error) as err:
        mistake()
    assert err.value.print_exception is False and err.value.message == "Upload one or more photos first."
    assert [r.levelno for r in caplog.records] == [logging.INFO] and not caplog.records[0].exc_info
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="gapdiff.ui"), pytest.raises(gr.Error):
        mistake()
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.DEBUG] and caplog.records[1].exc_info
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gapdiff.ui"), pytest.raises(gr.Error) as err:
        bug()
    assert caplog.records[-1].levelno == logging.ERROR and caplog.records[-1].exc_info
    assert err.value.print_exception is False  # logged once, by us


def test_app_demo_makes_or_reuses_the_demo_models_and_opens_with_them(tmp_path, monkeypatch, capsys):
    """`gapdiff app --demo`: the demo generator in the models folder, the tiny surrogate in checkpoints/ beside it
    (where the Robustness tab looks), the page opening on the demo generator; a second start reuses both."""
    import gapdiff_core.training as training
    from gapdiff_core.cli import build_parser
    from gapdiff_core.commands import app as app_command
    from gapdiff_core.ui import app, build_ui

    def fake_training(out_path, minutes=1.0, **kw):
        fake_training.calls += 1
        return gc.save_generator(gc.Generator(ngf=4).eval(), out_path, GeneratorInfo(ngf=4, demo=True,
                                                                                    provenance="test"))
    fake_training.calls = 0
    monkeypatch.setattr(training, "train_demo_generator", fake_training)
    models = tmp_path / "models" / "gapdiff"
    make_models(models)  # other generators come first in the listing
    args = build_parser().parse_args(["app", "--demo", "--models-dir", str(models), "--device", "cpu"])
    assert app_command.prepare_demo(args) == "gapdiff_demo_generator.safetensors"
    surrogate = tmp_path / "models" / "checkpoints" / "gapdiff_demo_tiny_sd.safetensors"
    assert (models / "gapdiff_demo_generator.safetensors").is_file() and surrogate.is_file()
    assert app_command.prepare_demo(args) == "gapdiff_demo_generator.safetensors"
    assert fake_training.calls == 1 and "using" in capsys.readouterr().err
    s = settings.UISettings(models_dir=str(models), surrogate_dirs=(str(models), str(app.surrogates_dir(args))),
                            preferred_generator="gapdiff_demo_generator.safetensors")
    assert robustness_tab.resolve_surrogate_path(surrogate.name, s) == surrogate.resolve()
    blocks = build_ui(s)
    dropdown = next(c for c in blocks.blocks.values() if getattr(c, "elem_id", None) == "gapdiff_generator")
    assert dropdown.value.startswith("gapdiff_demo_generator.safetensors")


def test_the_app_process_keeps_uploads_and_outputs_private_and_starts_quietly(models, photo, tmp_path):
    """The real `gapdiff app` process: one start-up line (no Gradio show_api warning, no share=True hint);
    the uploaded original and every output under folders 0700 and files 0600; a user's mistake leaves no
    traceback in its log."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("GRADIO_TEMP_DIR", None)
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gapdiff_core.cli", "app", "--port", "0", "--models-dir",
                                 str(models), "--device", "cpu", "--precision", "fp32"], stdout=out, stderr=out,
                                env=env)
    try:
        deadline = time.time() + 120
        while "gapdiff app: open " not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        url = log.read_text().split("gapdiff app: open ", 1)[1].split()[0]
        client = Client(url, verbose=False)
        client.predict(*_protect_args(photo, "tiny_real.safetensors"), api_name="/protect")
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 50)
        with pytest.raises(AppError, match="broken.png"):
            client.predict(*_protect_args(bad, "tiny_real.safetensors"), api_name="/protect")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "show_api" not in text and "share=True" not in text and "Traceback" not in text, text
    written = [p for root in tmp_path.glob("gapdiff-*") for p in [root, *root.rglob("*")]]
    assert any(p.name == photo.name for p in written) and any(p.name.endswith("_protected.png") for p in written)
    loose = [f"{p} {stat.S_IMODE(p.stat().st_mode):o}" for p in written
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)]
    assert loose == []
