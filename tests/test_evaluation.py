"""The protocol runner end to end on the tiny model (32 px, a couple of steps): stages, cache, resume, methods."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gapdiff_core.evaluation import (PROTECTIONS, ProtocolConfig, ProtocolRunner, find_identities,
                                     register_protection, resolve_method)

SAMPLES = Path(__file__).resolve().parent.parent / "gapdiff_core" / "samples"
PROMPTS = ("a photo of sks person", "a dslr portrait of sks person")


def _small_copy(src: Path, dst: Path, side: int = 160) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side * 2))
        im.save(dst)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "obama"
    _small_copy(SAMPLES / "obama.jpg", root / "set_B" / "a.png")
    _small_copy(SAMPLES / "obama2.jpg", root / "set_B" / "b.png")
    _small_copy(SAMPLES / "obama3.jpg", root / "set_C" / "c.png", side=320)
    return root


@pytest.fixture(scope="module")
def generator_path(tmp_path_factory) -> Path:
    from gapdiff_core.checkpoint import GeneratorInfo, save_generator
    from gapdiff_core.generator import Generator

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gen") / "toy.safetensors"
    save_generator(Generator(ngf=4).eval(), path, GeneratorInfo(ngf=4, demo=True, provenance="test, random"))
    return path


def _config(generator_path, **kw) -> ProtocolConfig:
    base = dict(methods=["none", str(generator_path)], transforms=["none", "jpeg:50"], budgets=[8.0],
                resolution=32, prompts=PROMPTS, images_per_prompt=1, generation_steps=1, generation_batch_size=2,
                serfiq_T=4, attack_overrides=dict(max_train_steps=2, num_class_images=1, class_steps=1,
                                                  checkpointing_steps=0))
    return ProtocolConfig(**{**base, **kw})


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data, generator_path):
    """An interrupted run, then the resumed run: (out dir, results, stage counts of the resumed run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's small ops are fastest single-threaded on a busy CPU
    out = tmp_path_factory.mktemp("eval")
    cfg = _config(generator_path)

    def interrupt_at_first_generate(stage, key):
        if stage == "generate":
            raise Interrupt

    with pytest.raises(Interrupt):
        ProtocolRunner(data, out, cfg, on_compute=interrupt_at_first_generate, progress=False).run()
    counts = Counter()
    results = ProtocolRunner(data, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    yield out, results, counts
    torch.set_num_threads(threads)


def test_resume_after_interruption_skips_finished_stages(finished):
    _, results, counts = finished
    # rows: 2 methods × 2 transforms; the interrupted run finished protect(none), transform(none) and attack(none)
    assert counts == Counter(protect=1, transform=3, attack=3, generate=4, metrics=4)
    assert len(results["runs"]) == 4


def test_results_hold_protocol_metrics_per_prompt(finished):
    out, results, _ = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["is_demo"] and "NOT protection" in on_disk["demo_note"]
    for run in on_disk["runs"]:
        assert set(run["metrics"]) == set(PROMPTS)
        for m in run["metrics"].values():
            assert 0.0 <= m["fdfr"] <= 1.0 and m["n_images"] == 1
            assert m["brisque"] is not None
        assert set(run["mean"]) == {"fdfr", "ism", "brisque", "serfiq"}
        assert "detector" in run["backends"] and "embedder" in run["backends"]
        assert all((out / p).is_file() for ps in run["images"]["generated"].values() for p in ps)
    by = {(r["method_kind"], r["transform"]): r for r in on_disk["runs"]}
    # the clean photos are unchanged; the generator changes them within the budget
    assert by[("none", "none")]["fidelity"]["linf_grey_levels"] == 0.0
    prot = by[("generator", "none")]["fidelity"]
    assert 0 < prot["linf_grey_levels"] <= 8.0 + 1e-3 and 25 < prot["psnr_db"] < 80
    # JPEG changes the photos further
    assert by[("none", "jpeg:50")]["fidelity_after_transform"]["psnr_db"] < 60


def test_rerun_recomputes_nothing_and_deleted_stage_reruns_with_dependents(finished, data, generator_path):
    out, results, _ = finished
    cfg = _config(generator_path)
    counts = Counter()
    again = ProtocolRunner(data, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter()
    assert [r["mean"] for r in again["runs"]] == [r["mean"] for r in results["runs"]]

    run = results["runs"][3]
    shutil.rmtree(out / "cache" / "attack" / run["keys"]["attack"])
    counts.clear()
    ProtocolRunner(data, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter(attack=1, generate=1, metrics=1)

    shutil.rmtree(out / "cache" / "metrics" / run["keys"]["metrics"])
    counts.clear()
    ProtocolRunner(data, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter(metrics=1)

    # generating again from the cached attack (LoRA reloaded from disk) reproduces the same images
    first = results["runs"][0]
    folder = out / "cache" / "generate" / first["keys"]["generate"]
    before = _pngs(folder)
    shutil.rmtree(folder)
    counts.clear()
    ProtocolRunner(data, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter(generate=1, metrics=1)
    after = _pngs(folder)
    assert sorted(after) == sorted(before) and len(before) == 2
    for name, image in before.items():  # float reductions may differ in the last bit; the detector on these
        assert np.abs(after[name] - image).max() <= 2  # toy images is not stable enough to compare its numbers


def _pngs(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p), dtype=np.int16)
            for p in sorted(folder.rglob("*.png"))}


def test_changed_setting_recomputes_only_what_it_affects(finished, data, generator_path):
    out, _, _ = finished
    counts = Counter()
    cfg = _config(generator_path, methods=["none"], transforms=["none"], serfiq_T=3)
    ProtocolRunner(data, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter(metrics=1)


def test_find_identities_layouts(tmp_path, data):
    (ident,) = find_identities(data)
    assert [p.name for p in ident.attacked] == ["a.png", "b.png"] and [p.name for p in ident.references] == ["c.png"]
    multi = tmp_path / "multi"
    shutil.copytree(data, multi / "person1")
    shutil.copytree(data, multi / "person2")
    assert [i.name for i in find_identities(multi)] == ["person1", "person2"]
    plain = tmp_path / "plain"
    for name in ("1.png", "2.png", "3.png"):
        _small_copy(SAMPLES / "obama.jpg", plain / name, side=32)
    (ident,) = find_identities(plain)
    assert ident.layout == "plain-folder"
    assert [p.name for p in ident.attacked] == ["1.png", "2.png"] and [p.name for p in ident.references] == ["3.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos"):
        find_identities(tmp_path / "empty")


def test_registered_protection_is_a_method(tmp_path, data):
    calls = []

    def darken(arg, budget, config, model, cache_dir):
        def fn(photos, clean_set):
            calls.append(len(photos))
            return [(x - budget / 255).clamp(0, 1) for x in photos]
        return fn

    register_protection("darken", darken, "test method")
    try:
        m = resolve_method("darken", 4.0)
        assert m.kind == "darken" and m.budget == 4.0 and "darken" in m.label
        runner = ProtocolRunner(data, tmp_path / "o", ProtocolConfig(methods=["darken"], budgets=[4.0]),
                                progress=False)
        (ident,) = find_identities(data)
        rec, folder = runner.stage_protect(ident, m)
        assert calls == [2] and 3.5 < rec["fidelity"]["linf_grey_levels"] <= 4.0 + 1e-3  # the set in one call
        with pytest.raises(ValueError, match="unknown protection method"):
            resolve_method("nonexistent-method", 8.0)
    finally:
        PROTECTIONS.pop("darken")


def test_bad_config_fails_early(generator_path):
    with pytest.raises(ValueError, match="preset"):
        ProtocolConfig(attack_preset="nope")
    with pytest.raises(ValueError, match="transform"):
        ProtocolConfig(transforms=["sharpen"])
    with pytest.raises(FileNotFoundError):
        resolve_method("missing.safetensors", 8.0)


def test_protocol_run_writes_all_three_reports(finished):
    import re

    from gapdiff_core.report import write_reports

    out, results, _ = finished
    paths = write_reports(results, out)
    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert page.count('src="data:image/png;base64,') >= 8 and "<svg" in page and "JPEG quality" in page
    assert "DEMO ON A TOY MODEL" in page
    md = paths["md"].read_text(encoding="utf-8")
    assert "| none | jpeg:50 |" in md and "P2 SER-FIQ↓" in md and "DEMO" in md
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["environment"]["packages"]["torch"]


def test_iterative_protection_is_a_method_against_the_protocol_model(tmp_path, data):
    m = resolve_method("photoguard:tiny", 6.0)
    assert m.kind == "photoguard" and "iterative" in m.description
    config = ProtocolConfig(methods=["photoguard:tiny"], budgets=[6.0], resolution=64)
    runner = ProtocolRunner(data, tmp_path / "o", config, progress=False)
    (ident,) = find_identities(data)
    before = {k: v.clone() for k, v in runner.base.unet.state_dict().items()}
    rec, _ = runner.stage_protect(ident, m)
    assert 1 <= rec["fidelity"]["linf_grey_levels"] <= 6.0 + 1e-3
    assert runner._protectors[("photoguard", "tiny", 6.0)].method.surrogate is runner.base  # one model in memory
    aspl = runner._protector(resolve_method("aspl:tiny", 6.0))  # ASPL fine-tunes its surrogate: on a private copy
    aspl([torch.rand(1, 3, 64, 64)], [])
    assert all(torch.equal(v, runner.base.unet.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="schedule"):
        runner._protector(resolve_method("aspl:fast", 6.0))
