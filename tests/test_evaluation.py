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

from gapdiff_core.evaluation import (PROTECTIONS, STATISTICS, ProtocolConfig, ProtocolRunner, find_identities,
                                     register_protection, resolve_method)

PROMPTS = ("a photo of sks person", "a dslr portrait of sks person")


def _config(toy_generator_file, **kw) -> ProtocolConfig:
    base = dict(methods=["none", str(toy_generator_file)], transforms=["none", "jpeg:50"], budgets=[8.0],
                resolution=32, prompts=PROMPTS, images_per_prompt=1, generation_steps=1, generation_batch_size=2,
                serfiq_T=4, attack_overrides=dict(max_train_steps=2, num_class_images=1, class_steps=1,
                                                  checkpointing_steps=0))
    return ProtocolConfig(**{**base, **kw})


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory, identity_folder, toy_generator_file):
    """An interrupted run, then the resumed run: (out dir, results, stage counts of the resumed run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's small ops are fastest single-threaded on a busy CPU
    out = tmp_path_factory.mktemp("eval")
    cfg = _config(toy_generator_file)

    def interrupt_at_first_generate(stage, key):
        if stage == "generate":
            raise Interrupt

    with pytest.raises(Interrupt):
        ProtocolRunner(identity_folder, out, cfg, on_compute=interrupt_at_first_generate, progress=False).run()
    counts = Counter()
    results = ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    yield out, results, counts
    torch.set_num_threads(threads)


def test_resume_after_interruption_skips_finished_stages(finished):
    _, results, counts = finished
    # rows: 2 methods × 2 transforms; the interrupted run finished protect, transform, attack and identity of none
    assert counts == Counter(protect=1, transform=3, attack=3, identity=3, generate=4, metrics=4)
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
        assert set(run["mean"]) == set(STATISTICS)
        assert "detector" in run["backends"] and "embedder" in run["backends"]
        assert all((out / p).is_file() for ps in run["images"]["generated"].values() for p in ps)
    by = {(r["method_kind"], r["transform"]): r for r in on_disk["runs"]}
    # the clean photos are unchanged; the generator changes them within the budget
    assert by[("none", "none")]["fidelity"]["linf_grey_levels"] == 0.0
    prot = by[("gap-diff", "none")]["fidelity"]
    assert 0 < prot["linf_grey_levels"] <= 8.0 + 1e-3 and 25 < prot["psnr_db"] < 80
    # JPEG changes the photos further
    assert by[("none", "jpeg:50")]["fidelity_after_transform"]["psnr_db"] < 60
    # the detector's floor on the clean reference photo, and the protection function, are in every result
    assert on_disk["reference_detection"]["n_photos"] == 1 and on_disk["config"]["norm"] == "image"
    assert on_disk["protocol"] == {"name": "custom", "settings": []}
    assert on_disk["directions"]["ism"] == on_disk["directions"]["serfiq"] == "lower = stronger protection"
    assert on_disk["directions"]["fdfr"] == "higher = stronger protection"
    assert on_disk["directions"]["identity_gain"] == "lower = stronger protection"
    # every statistic with its 95% interval; every method its paired difference against none at the same transform
    stats = {(s["method"], s["transform"]): s for s in on_disk["statistics"]}
    assert set(stats) == {(r["method"], r["transform"]) for r in on_disk["runs"]}
    for (method, _), s in stats.items():
        assert set(s["interval"]) == set(STATISTICS)
        assert all(set(v) == {"value", "lo", "hi"} for v in s["interval"].values())
        assert s["interval"]["fdfr"]["lo"] is not None and s["per_prompt_interval"].keys() == set(PROMPTS)
        assert (s["vs_none"] is None) == (method == "none") and (method == "none" or "fdfr" in s["vs_none"])


def test_recorded_fidelity_is_change_stats_of_the_saved_pngs(tmp_path, identity_folder, toy_generator_file):
    """PSNR and largest change of the protect and transform stages: exactly metrics.fidelity.change_stats of the
    8-bit PNGs they wrote against the clean photos (the runner measured float tensors before)."""
    from gapdiff_core.io import load_image
    from gapdiff_core.metrics.fidelity import change_stats, ssim_uint8

    runner = ProtocolRunner(identity_folder, tmp_path / "o", _config(toy_generator_file), progress=False)
    (ident,) = find_identities(identity_folder)
    protect = runner.stage_protect(ident, resolve_method(str(toy_generator_file), 8.0))
    for rec, folder in (protect, runner.stage_transform(protect, "jpeg:50")):
        pairs = [(load_image(c).rgb, load_image(folder / n).rgb) for c, n in zip(ident.attacked, rec["files"])]
        stats = [change_stats(clean, written) for clean, written in pairs]
        fid = rec["fidelity"]
        assert len(pairs) == 2 and fid["per_image_psnr_db"] == [s.psnr for s in stats]
        assert fid["linf_grey_levels"] == max(s.max_change for s in stats) > 0
        assert fid["psnr_db"] == sum(s.psnr for s in stats) / 2
        assert fid["ssim"] == pytest.approx(sum(ssim_uint8(w, c) for c, w in pairs) / 2, abs=1e-12)
    assert protect[0]["fidelity"]["linf_grey_levels"] <= 8


def test_identity_gain_is_relative_to_the_clean_attack_at_the_same_transform(finished, identity_folder,
                                                                             toy_generator_file):
    from gapdiff_core.attack import CLASS_PROMPT, instance_loss

    out, results, _ = finished
    by = {(r["method_kind"], r["transform"]): r for r in results["runs"]}
    for run in results["runs"]:
        ig, clean = run["identity_gain"], by[("none", run["transform"])]["identity_gain"]
        assert ig["clean_gain"] == clean["gain"]  # the clean attack through this run's transform, not "none"
        assert ig["relative"] == (pytest.approx(ig["gain"] / ig["clean_gain"]) if ig["clean_gain"] > 0 else None)
    assert by[("gap-diff", "jpeg:50")]["identity_gain"]["clean_gain"] != by[("none", "none")]["identity_gain"]["gain"]
    # the gain is the attacked model's DreamBooth loss on set_C with the class prompt minus with the instance prompt
    runner = ProtocolRunner(identity_folder, out, _config(toy_generator_file), progress=False)
    rec = runner.cache.load("attack", by[("gap-diff", "jpeg:50")]["keys"]["attack"])
    attacked = runner._reload_attacked(rec, runner.cache.folder("attack", rec["key"]))
    (ident,) = find_identities(identity_folder)
    refs = [str(p) for p in ident.references]
    inst = instance_loss(attacked, refs, resolution=32, samples=8, seed=0)
    cls = instance_loss(attacked, refs, CLASS_PROMPT, resolution=32, samples=8, seed=0)
    ig = by[("gap-diff", "jpeg:50")]["identity_gain"]
    assert ig["instance_error"] == pytest.approx(inst, rel=1e-4) and ig["class_error"] == pytest.approx(cls, rel=1e-4)
    assert ig["gain"] == pytest.approx(cls - inst, abs=1e-6)


def test_gain_reference_is_computed_when_none_is_not_run(finished, identity_folder, toy_generator_file):
    out, results, _ = finished
    counts = Counter()
    cfg = _config(toy_generator_file, methods=[str(toy_generator_file)], transforms=["jpeg:50"])
    again = ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter()  # the clean attack (none | jpeg:50) came from the cache, not from the rows
    (run,) = again["runs"]
    before = next(r for r in results["runs"] if r["method_kind"] == "gap-diff" and r["transform"] == "jpeg:50")
    assert run["identity_gain"] == before["identity_gain"]


def test_rerun_recomputes_nothing_and_deleted_stage_reruns_with_dependents(finished, identity_folder, toy_generator_file):
    out, results, _ = finished
    cfg = _config(toy_generator_file)
    counts = Counter()
    again = ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter()
    assert [r["mean"] for r in again["runs"]] == [r["mean"] for r in results["runs"]]

    run = results["runs"][3]
    shutil.rmtree(out / "cache" / "attack" / run["keys"]["attack"])
    counts.clear()
    ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter(attack=1, identity=1, generate=1, metrics=1)

    shutil.rmtree(out / "cache" / "metrics" / run["keys"]["metrics"])
    counts.clear()
    ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter(metrics=1)

    # generating again from the cached attack (LoRA reloaded from disk) reproduces the same images
    first = results["runs"][0]
    folder = out / "cache" / "generate" / first["keys"]["generate"]
    before = _pngs(folder)
    shutil.rmtree(folder)
    counts.clear()
    ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter(generate=1, metrics=1)
    after = _pngs(folder)
    assert sorted(after) == sorted(before) and len(before) == 2
    for name, image in before.items():  # float reductions may differ in the last bit; the detector on these
        assert np.abs(after[name] - image).max() <= 2  # toy images is not stable enough to compare its numbers


def _pngs(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p), dtype=np.int16)
            for p in sorted(folder.rglob("*.png"))}


def test_changed_setting_recomputes_only_what_it_affects(finished, identity_folder, toy_generator_file):
    out, _, _ = finished
    counts = Counter()
    cfg = _config(toy_generator_file, methods=["none"], transforms=["none"], serfiq_T=3)
    ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False).run()
    assert counts == Counter(metrics=1)


def test_find_identities_layouts(tmp_path, identity_folder):
    (ident,) = find_identities(identity_folder)
    assert [p.name for p in ident.attacked] == ["a.png", "b.png"] and [p.name for p in ident.references] == ["c.png"]
    multi = tmp_path / "multi"
    shutil.copytree(identity_folder, multi / "person1")
    shutil.copytree(identity_folder, multi / "person2")
    assert [i.name for i in find_identities(multi)] == ["person1", "person2"]
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("1.png", "2.png", "3.png"):
        shutil.copyfile(identity_folder / "set_B" / "a.png", plain / name)
    (plain / "notes.txt").write_text("not a photo")
    (ident,) = find_identities(plain)
    assert ident.layout == "plain-folder"
    assert [p.name for p in ident.attacked] == ["1.png", "2.png"] and [p.name for p in ident.references] == ["3.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos"):
        find_identities(tmp_path / "empty")


def test_registered_protection_is_a_method(tmp_path, identity_folder):
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
        runner = ProtocolRunner(identity_folder, tmp_path / "o", ProtocolConfig(methods=["darken"], budgets=[4.0]),
                                progress=False)
        (ident,) = find_identities(identity_folder)
        rec, folder = runner.stage_protect(ident, m)
        assert calls == [2] and 3.5 < rec["fidelity"]["linf_grey_levels"] <= 4.0 + 1e-3  # the set in one call
        with pytest.raises(ValueError, match="unknown protection method"):
            resolve_method("nonexistent-method", 8.0)
    finally:
        PROTECTIONS.pop("darken")


def test_method_specs_resolve_through_the_one_registry(toy_generator_file):
    path = str(toy_generator_file)
    specs = [resolve_method(s, 8.0) for s in (path, f"generator:{path}", f"gap-diff:{path}")]
    assert {m.kind for m in specs} == {"gap-diff"} and specs[0].is_demo
    assert len({m.fingerprint for m in specs}) == 1  # one protect stage, whatever the spelling
    assert resolve_method("anti-dreambooth:tiny", 8.0).fingerprint == resolve_method("aspl:tiny", 8.0).fingerprint
    assert resolve_method("NONE", 8.0).budget is None
    with pytest.raises(ValueError, match="needs a generator checkpoint"):
        resolve_method("generator", 8.0)
    with pytest.raises(ValueError, match="closed source"):
        resolve_method("glaze", 8.0)


def test_bad_config_fails_early(toy_generator_file):
    with pytest.raises(ValueError, match="preset"):
        ProtocolConfig(attack_preset="nope")
    with pytest.raises(ValueError, match="transform"):
        ProtocolConfig(transforms=["sharpen"])
    with pytest.raises(FileNotFoundError):
        resolve_method("missing.safetensors", 8.0)


def test_budgets_follow_the_one_budget_rule_and_errors_name_the_method():
    from gapdiff_core.common.budget import BudgetError

    # below 1 grey level an iterative method floors its budget to 0 and changes nothing: refused, as everywhere
    for bad in (0.5, 0, 256, float("nan"), "eight"):
        with pytest.raises(BudgetError, match=r"budget of method 'photoguard:tiny' must be .*, not"):
            ProtocolConfig(methods=["none", "photoguard:tiny"], budgets=[8, bad])
    with pytest.raises(BudgetError, match=r"must be 1-255 grey levels on the 0-255 scale .*, not 0\.5"):
        ProtocolConfig(methods=["photoguard:tiny"], budgets=[0.5])
    assert ProtocolConfig(methods=["photoguard:tiny"], budgets=["1", 255]).budgets == [1.0, 255.0]
    assert ProtocolConfig().budgets == [8.0]


def test_protocol_run_writes_all_three_reports(finished):
    import re

    from gapdiff_core.evaluation.report import write_reports

    out, results, _ = finished
    paths = write_reports(results, out)
    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert page.count('src="data:image/png;base64,') >= 8 and "<svg" in page and "JPEG quality" in page
    assert "DEMO ON A TOY MODEL" in page
    md = paths["md"].read_text(encoding="utf-8")
    assert "| none | jpeg:50 |" in md and "P2 SER-FIQ↓" in md and "DEMO" in md
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["environment"]["packages"]["torch"]


def test_iterative_protection_is_a_method_against_the_protocol_model(tmp_path, identity_folder):
    m = resolve_method("photoguard:tiny", 6.0)
    assert m.kind == "photoguard" and "iterative" in m.description
    config = ProtocolConfig(methods=["photoguard:tiny"], budgets=[6.0], resolution=64)
    runner = ProtocolRunner(identity_folder, tmp_path / "o", config, progress=False)
    (ident,) = find_identities(identity_folder)
    before = {k: v.clone() for k, v in runner.base.unet.state_dict().items()}
    rec, _ = runner.stage_protect(ident, m)
    assert 1 <= rec["fidelity"]["linf_grey_levels"] <= 6.0 + 1e-3
    assert runner._protectors[("photoguard", "tiny", 6.0)].method.surrogate is runner.base  # one model in memory
    aspl = runner._protector(resolve_method("aspl:tiny", 6.0))  # ASPL fine-tunes its surrogate: on a private copy
    aspl([torch.rand(1, 3, 64, 64)], [])
    assert all(torch.equal(v, runner.base.unet.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="schedule"):
        runner._protector(resolve_method("aspl:fast", 6.0))


def test_combine_metrics_averages_as_the_official_scripts():
    from gapdiff_core.evaluation import combine_metrics

    def entry(found, ism, q):  # found: a face in each image?; ism, q: every found face's values
        per_image = {"fdfr": [0.0 if f else 1.0 for f in found], "ism": None if ism is None else [ism if f else None for f in found],
                     "brisque": [30.0] * len(found), "serfiq": [q if f else None for f in found],
                     "serfiq_q": [None] * len(found), "qualityface": [None] * len(found),
                     "face_brisque": [None] * len(found)}
        return {"per_image": per_image, "has_reference": ism is not None, "n_images": len(found),
                "n_faces": sum(found)}

    # identity 1: 3 of 4 faces found, ISM 0.6; identity 2: no face found
    m = combine_metrics([entry([True, True, True, False], 0.6, 0.6), entry([False] * 4, 0.0, 0.0)])
    assert m["fdfr"] == pytest.approx(0.625)
    assert m["ism"] == pytest.approx(0.3)  # the faceless identity counts 0 and still counts (full_ism_fdfr.py)
    assert m["ism_detected"] == pytest.approx(0.6) and m["serfiq_detected"] == pytest.approx(0.6)
    assert m["serfiq"] == pytest.approx(0.225)
    # detected-face means are pooled over faces, not over entries
    m = combine_metrics([entry([True] * 4, 0.2, 0.2), entry([True, False, False, False], 0.8, 0.8)])
    assert m["ism_detected"] == pytest.approx((0.2 * 4 + 0.8) / 5) and m["ism"] == pytest.approx(0.5)
    assert combine_metrics([entry([False] * 4, None, 0.0)])["ism"] is None  # no reference: no ISM


def test_paper_protocol_holds_the_papers_settings(tmp_path, identity_folder):
    from gapdiff_core.attack import PAPER_PROMPTS
    from gapdiff_core.evaluation import protocol_config

    cfg = protocol_config("paper")
    assert (cfg.images_per_prompt, cfg.generation_steps, cfg.scheduler, cfg.guidance_scale) == (30, 100, "pndm", 7.5)
    assert cfg.prompts == PAPER_PROMPTS and len(cfg.prompts) == 4 and cfg.generation_batch_size == 6
    assert cfg.budgets == [8.0] and cfg.transforms == ["none", "jpeg:70"] and cfg.protocol == "paper"
    runner = ProtocolRunner(identity_folder, tmp_path, cfg, progress=False)
    a, g = runner.attack_config(), runner.generation_config()
    assert (a.preset, a.mode, a.resolution, a.learning_rate, a.max_train_steps) == (
        "paper-full", "full", 512, 5e-7, 1000)
    assert (a.num_class_images, a.train_batch_size, a.train_text_encoder, a.prior_loss_weight) == (200, 2, True, 1.0)
    assert (g.images_per_prompt, g.steps, g.scheduler, g.guidance_scale, g.resolution) == (30, 100, "pndm", 7.5, 512)
    with pytest.raises(ValueError, match="protocol"):
        protocol_config("nope")


def test_paper_protocol_runs_on_the_tiny_model_and_the_report_shows_what_ran(tmp_path, identity_folder):
    from gapdiff_core.evaluation import protocol_config
    from gapdiff_core.evaluation.report import markdown_report, write_reports

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # CPU-cheap overrides; the report must show them as departures from the paper
        cfg = protocol_config("paper", model="tiny", methods=["none"], transforms=["none"], resolution=32,
                              images_per_prompt=1, generation_steps=3, serfiq_T=4,
                              attack_overrides=dict(max_train_steps=2, num_class_images=1, class_steps=1,
                                                    checkpointing_steps=0, mixed_precision="no"))
        results = ProtocolRunner(identity_folder, tmp_path, cfg, progress=False).run()
    finally:
        torch.set_num_threads(threads)
    settings = {s["setting"]: s for s in results["protocol"]["settings"]}
    assert results["protocol"]["name"] == "paper"
    assert settings["scheduler"]["ran"] == "pndm" and settings["scheduler"]["matches"]
    assert settings["prompts"]["matches"] and settings["guidance_scale"]["matches"]
    assert settings["attack_preset"]["matches"] and settings["attack.train_text_encoder"]["matches"]
    assert not settings["images_per_prompt"]["matches"] and settings["images_per_prompt"]["ran"] == 1
    assert not settings["resolution"]["matches"] and settings["resolution"]["ran"] == 32
    assert not settings["attack.num_class_images"]["matches"] and not settings["attack.max_train_steps"]["matches"]
    assert not settings["attack.mixed_precision"]["matches"]  # fp32 here: bf16 attention needs AVX-512 on a CPU
    assert results["generation_config"]["scheduler"] == "pndm" and results["generation_config"]["steps"] == 3
    # the components behind the numbers: the tiny model, the bundled face backends, generated class images, and
    # fp32 sampling on a CPU all differ from the paper's
    for key in ("model", "detector", "embedder", "serfiq", "class_images", "generation_precision"):
        assert settings[key]["matches"] is False, key
    assert "toy model" in settings["model"]["ran"] and "SD 1.x" in settings["model"]["ran"]
    assert settings["generation_precision"]["ran"] == "fp32 (fp16 needs CUDA)"
    assert results["generation_config"]["autocast"] == "no"
    assert settings["face_quality"]["matches"] is None  # a diagnostic the paper has not: listed, not counted
    assert settings["generator_precision"]["matches"] and settings["reference_numerics"]["ran"] == "released"
    off = sum(s["matches"] is False for s in results["protocol"]["settings"])
    md = markdown_report(results)
    assert f"## Protocol: paper ({off} differ)" in md and off >= 13 and "all match" not in md
    assert f"**{off} of {len(settings)} rows differ (" in md
    assert "| images per prompt | 30 | 1 | ✗ differs |" in md and "| scheduler | pndm | pndm | ✓ |" in md
    assert "| sampling steps | 100 | 3 | ✗ differs |" in md and "| CFG scale | 7.5 | 7.5 | ✓ |" in md
    assert "| attack: class images | 200 | 1 | ✗ differs |" in md
    assert "| attack preset | paper-full | paper-full | ✓ |" in md
    assert "| face embedder (ISM) | ArcFace | sface | ✗ differs |" in md
    assert "| diffusion model | SD 2.1-base (SD 2.x, 512 px, ε-prediction) | tiny (seed 0) (SD 1.x" in md
    assert "— not in the paper |" in md
    assert "identity gain" in md and "n/a (toy model)" in md and "face detection on the clean reference photos" in md
    assert "the function the authors ran at inference (batch 1, train-mode BatchNorm), dropout off" in md
    page = write_reports(results, tmp_path)["html"].read_text(encoding="utf-8")
    assert "Protocol: paper" in page and "✗ differs" in page


def test_published_budgets_class_images_numerics_and_noise_control_run_end_to_end(tmp_path, identity_folder):
    from gapdiff_core.evaluation import protocol_config
    from gapdiff_core.evaluation.report import markdown_report
    from gapdiff_core.io import save_image, to_uint8

    g = torch.Generator().manual_seed(2)
    (tmp_path / "cls").mkdir()
    for i in range(3):
        save_image(tmp_path / "cls" / f"{i}.png", to_uint8(torch.rand(1, 3, 40, 40, generator=g)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = protocol_config("paper", model="tiny", methods=["none", "metacloak:tiny"], transforms=["none"],
                              resolution=32, images_per_prompt=1, generation_steps=1, serfiq_T=4,
                              class_images=str(tmp_path / "cls"), prompts=PROMPTS[:1],
                              attack_overrides=dict(max_train_steps=1, num_class_images=2, checkpointing_steps=0,
                                                    mixed_precision="no"))
        runner = ProtocolRunner(identity_folder, tmp_path / "out", cfg, progress=False)
        results = runner.run()
    finally:
        torch.set_num_threads(threads)
    # MetaCloak at its published 11 grey levels, and the random-noise control at the same budget
    assert {(r["method_kind"], r["budget"]) for r in results["runs"]} == {
        ("none", None), ("metacloak", 11.0), ("random-noise", 11.0)}
    by = {r["method_kind"]: r for r in results["runs"]}
    assert by["metacloak"]["fidelity"]["linf_grey_levels"] <= 11 and by["random-noise"]["fidelity"][
        "linf_grey_levels"] == 11
    settings = {s["setting"]: s for s in results["protocol"]["settings"]}
    assert settings["budget.metacloak"]["matches"] and settings["budget.metacloak"]["ran"] == "11"
    assert "budget.random-noise" not in settings and "budget.none" not in settings
    assert settings["class_images"]["ran"] == (
        "folder cls (3 images; sampler not stated in the folder (no readable info.json))")
    assert settings["class_images"]["matches"] is None  # a folder cannot be checked against the authors' set
    # the class images came from the folder: none was generated, for the attack or for MetaCloak
    assert not list((tmp_path / "out" / "cache").rglob("class-images"))
    protect = runner.cache.load("protect", by["metacloak"]["keys"]["protect"])["config"]
    assert protect["reference_numerics"] == "released" and protect["class_images"]
    md = markdown_report(results)
    assert "| budget (grey levels): metacloak | 11 (MetaCloak script/methods_config.sh" in md
    assert "| metacloak:tiny @11 | none |" in md and "| random-noise @11 | none |" in md
    # --budget equalises: every method at the budgets given
    equal = ProtocolRunner(identity_folder, tmp_path / "o2", protocol_config(
        "paper", methods=["none", "metacloak:tiny", "aspl"], budgets=[8.0], published_budgets=False),
        progress=False).methods()
    assert [(m.kind, m.budget) for m in equal] == [("none", None), ("metacloak", 8.0), ("aspl", 8.0),
                                                   ("random-noise", 8.0)]


def test_generation_precision_is_fp16_only_on_cuda(tmp_path, identity_folder):
    from gapdiff_core.evaluation.components import generation_precision

    def autocast(**kw):
        return ProtocolRunner(identity_folder, tmp_path, ProtocolConfig(**kw), progress=False).generation_config(
            ).autocast

    assert autocast() == "no" and autocast(generation_precision="bf16") == "bf16"
    assert autocast(generation_precision="fp16") == "no"  # a CPU: fp32, and the protocol table says so
    assert generation_precision(ProtocolConfig(generation_precision="fp16", device="cuda")) == "fp16"
    with pytest.raises(ValueError, match="generation precision"):
        ProtocolConfig(generation_precision="int8")
    with pytest.raises(FileNotFoundError, match="class images folder"):
        ProtocolConfig(class_images=str(tmp_path / "missing"))


def test_face_rows_match_the_paper_only_with_its_detector_upscale_and_embedder():
    from gapdiff_core.evaluation.components import face_rows

    def matches(**kw):
        return {r["setting"]: r["matches"] for r in face_rows(ProtocolConfig(**kw))}

    assert matches()["detector"] is False and matches()["embedder"] is False
    paper = matches(detector="retinaface-r50", embedder="arcface-r100", detect_upscale=1024)
    assert paper["detector"] is True and paper["embedder"] is True
    assert matches(detector="retinaface-r50", embedder="arcface-r100")["detector"] is False  # no 1024 upscaling
    rows = {r["setting"]: r["ran"] for r in face_rows(ProtocolConfig(detect_upscale=1024))}
    assert rows["detector"] == "retinaface-mobilenet upscaled to a 1024 px short side"


def test_class_images_row_states_the_sampler_a_folder_records(tmp_path):
    from gapdiff_core.attack import preset
    from gapdiff_core.evaluation.components import class_images_row

    (tmp_path / "cls").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cls" / "0.png")
    (tmp_path / "cls" / "info.json").write_text(json.dumps(
        {"scheduler": "pndm", "steps": 50, "guidance_scale": 7.5, "model_name": "SD 2.1-base"}))
    row = class_images_row(None, preset("tiny-lora", class_data_dir=str(tmp_path / "cls")))
    assert row["ran"] == "folder cls (1 images; PNDM 50 steps, CFG 7.5, by SD 2.1-base)" and row["matches"] is None
    generated = class_images_row(None, preset("tiny-lora"))
    assert generated["ran"] == "generated by the protocol's model: DDIM 10 steps, CFG 7.5, fp32"
    assert generated["matches"] is False


def test_norm_and_official_mode_reach_the_generator_and_the_report(tmp_path, identity_folder, toy_generator_file):
    from gapdiff_core.evaluation.report import run_facts

    (ident,) = find_identities(identity_folder)
    m = resolve_method(str(toy_generator_file), 8.0)
    outs = {}
    for norm, official in (("image", False), ("running", False), ("image", True)):
        runner = ProtocolRunner(identity_folder, tmp_path, ProtocolConfig(methods=[str(toy_generator_file)], norm=norm,
                                                               official_mode=official), progress=False)
        rec, folder = runner.stage_protect(ident, m)
        outs[(norm, official)] = (rec["key"], _pngs(folder))
    keys = {k: v[0] for k, v in outs.items()}
    assert len(set(keys.values())) == 3  # each protection function is its own cache entry
    image, running = outs[("image", False)][1], outs[("running", False)][1]
    assert any(np.abs(image[n] - running[n]).max() > 0 for n in image)  # and computes something else
    results = {"config": ProtocolConfig(norm="running").to_dict()}
    assert "running" in dict(run_facts(results))["protection function (generator methods)"]
    assert "official" in dict(run_facts({"config": ProtocolConfig(official_mode=True, seed=3).to_dict()}))[
        "protection function (generator methods)"]
    with pytest.raises(ValueError, match="norm"):
        ProtocolConfig(norm="batch")


def test_cli_protocol_paper_sets_the_paper_and_given_flags_override_it():
    from gapdiff_core.cli import build_parser
    from gapdiff_core.commands.evaluate import build_config

    parse = build_parser().parse_args
    cfg = build_config(parse(["evaluate", "data", "--protocol", "paper", "--images-per-prompt", "2",
                              "--norm", "running"]))
    assert (cfg.protocol, cfg.attack_preset, cfg.images_per_prompt, cfg.norm) == ("paper", "paper-full", 2, "running")
    assert (cfg.generation_steps, cfg.scheduler, cfg.guidance_scale, cfg.resolution) == (100, "pndm", 7.5, 512)
    cfg = build_config(parse(["evaluate", "data"]))
    assert (cfg.protocol, cfg.attack_preset, cfg.images_per_prompt, cfg.generation_steps, cfg.scheduler) == (
        "custom", "tiny-lora", 4, 30, "ddim")
    assert cfg.detector == "retinaface-mobilenet"
    assert build_config(parse(["evaluate", "data", "--detector", "yunet"])).detector == "yunet"
    cfg = build_config(parse(["evaluate", "data", "--model", "sd/", "--official-mode", "--seed", "5",
                              "--num-class-images", "3"]))
    assert cfg.attack_preset == "lora" and cfg.official_mode and cfg.seed == 5
    assert cfg.attack_overrides == {"num_class_images": 3} and cfg.class_images is None
    assert (cfg.reference_numerics, cfg.generation_precision, cfg.generator_precision, cfg.published_budgets,
            cfg.noise_control) == ("corrected", "fp32", "auto", False, False)
    cfg = build_config(parse(["evaluate", "data", "--protocol", "paper", "--class-images", ".", "--reference-numerics",
                              "corrected", "--generation-precision", "bf16", "--generator-precision", "fp16"]))
    assert (cfg.class_images, cfg.reference_numerics, cfg.generation_precision, cfg.generator_precision) == (
        ".", "corrected", "bf16", "fp16")
    assert cfg.published_budgets and cfg.noise_control  # the paper protocol's
    cfg = build_config(parse(["evaluate", "data", "--protocol", "paper", "--budget", "8"]))
    assert not cfg.published_budgets and cfg.budgets == [8.0] and cfg.reference_numerics == "released"
    assert build_config(parse(["evaluate", "data", "--noise-control"])).noise_control


# ---------------------------------------------------------------- every registry transform, per transform
CHAIN, PURIFY = "resize:64|jpeg:75", "diffpure:0.1,sampler=ddim,steps=2"


@pytest.fixture(scope="module")
def per_transform(finished, identity_folder, toy_generator_file):
    """The finished run's methods with a chain and a purification besides none, on its cache: (out dir, results,
    stage counts)."""
    out, _, _ = finished
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    counts = Counter()
    cfg = _config(toy_generator_file, transforms=["none", CHAIN, PURIFY])
    runner = ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False)
    results = runner.run()
    torch.set_num_threads(threads)
    return out, results, counts


def test_every_registry_transform_runs_the_full_protocol(per_transform):
    from gapdiff_core.evaluation.report import aggregate, markdown_report

    out, results, counts = per_transform
    # only the new transforms' cells were computed: the protect stages and the 'none' cells came from the cache
    assert counts == Counter(transform=4, attack=4, identity=4, generate=4, metrics=4)
    assert Counter(r["transform"] for r in results["runs"]) == Counter({"none": 2, CHAIN: 2, PURIFY: 2})
    for run in results["runs"]:
        assert set(run["metrics"]) == set(PROMPTS)
        for m in run["metrics"].values():
            assert 0.0 <= m["fdfr"] <= 1.0 and m["brisque"] is not None and "ism" in m and "qualityface" in m
        assert {"fdfr", "ism", "brisque", "qualityface"} <= set(run["mean"]) and run["mean"]["brisque"] is not None
    chain = next(r for r in results["runs"] if r["transform"] == CHAIN)
    sizes = [Image.open(out / p).size for p in chain["images"]["transformed"]]
    assert [min(s) for s in sizes] == [64, 64]  # resize:64 ran (the short side), then JPEG 75
    assert chain["fidelity_after_transform"]["note"] == "sizes changed by the transform"
    rows = {(r["method"], r["transform"]) for r in aggregate(results)}
    assert len(rows) == 6 and {t for _, t in rows} == {"none", CHAIN, PURIFY}
    md = markdown_report(results)
    assert "| none | resize:64\\|jpeg:75 |" in md and f"| none | {PURIFY} |" in md  # a chain stays one cell


def test_a_purification_runs_through_the_protocol_model_seeded_per_photo(per_transform, identity_folder,
                                                                         toy_generator_file):
    from gapdiff_core.evaluation.stages import transform_seed
    from gapdiff_core.io import load_image
    from gapdiff_core.preprocess import parse

    out, _, _ = per_transform
    runner = ProtocolRunner(identity_folder, out, _config(toy_generator_file), progress=False)
    (ident,) = find_identities(identity_folder)
    prec, pfolder = runner.stage_protect(ident, resolve_method("none", None))
    rec, folder = runner.stage_transform((prec, pfolder), PURIFY)  # from the cache
    assert rec["config"]["model"] == "tiny" and rec["config"]["transform"] == PURIFY
    t = parse(PURIFY)
    seeds = [transform_seed(0, digest, t.spec) for digest in prec["config"]["photos"]]
    assert len(set(seeds)) == 2  # each photo its own stream
    for name, seed in zip(prec["files"], seeds):
        x = load_image(pfolder / name).tensor()
        written = load_image(folder / name).tensor()
        assert not torch.equal(written, x)  # purified through the surrogate
        assert torch.equal(t(x, seed=seed, surrogate=runner.base), written)  # that seed: deterministic
        assert not torch.equal(t(x, seed=seed + 1, surrogate=runner.base), written)


def test_transform_stage_is_keyed_by_the_normalised_spec(tmp_path, identity_folder, toy_generator_file):
    counts = Counter()
    runner = ProtocolRunner(identity_folder, tmp_path, _config(toy_generator_file),
                            on_compute=lambda s, k: counts.update([s]), progress=False)
    (ident,) = find_identities(identity_folder)
    prot = runner.stage_protect(ident, resolve_method("none", None))
    key = runner.stage_transform(prot, "jpeg:75")[0]["key"]
    assert runner.stage_transform(prot, "JPEG:quality=75")[0]["key"] == key  # the same transform, loaded
    other = runner.stage_transform(prot, "jpeg:75,subsampling=444")[0]
    assert other["key"] != key and other["config"]["transform"] == "jpeg:75,subsampling=444"
    assert counts == Counter(protect=1, transform=2)
    assert runner._base is None  # a transform without the surrogate never loads the model


def test_config_and_cli_take_every_registry_spec_and_name_a_bad_one(tmp_path, capsys, identity_folder):
    from gapdiff_core.cli import main
    from gapdiff_core.preprocess import TransformSpecError, available

    cfg = ProtocolConfig(transforms=["JPEG:75", "jpeg:75", "Platform:Instagram", CHAIN, PURIFY,
                                     "noisy-upscale:0.05,upscaler=Models/X4"])
    assert cfg.transforms == ["jpeg:75", "platform:instagram", CHAIN, PURIFY, "noisy-upscale:0.05,upscaler=Models/X4"]
    with pytest.raises(TransformSpecError, match=r"'resize:64\|jpeg:101': quality must be in \[1, 100\]"):
        ProtocolConfig(transforms=["none", "resize:64|jpeg:101"])
    out = tmp_path / "out"
    assert main(["evaluate", str(identity_folder), "--out", str(out), "--transform", "jpeg:75",
                 "--transform", "gridpure:stride=300", "--no-progress"]) == 2
    assert "'gridpure:stride=300'" in capsys.readouterr().err and not out.exists()  # before any work
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert all(i.usage in text for i in available())  # the registry's list


def test_cached_stage_files_are_checked_against_their_recorded_hashes(tmp_path):
    """A finished stage records a hash of each of its files; a stage whose files were replaced, truncated or
    removed, or that records none, is not loaded: a note, its folder removed, so it is computed afresh."""
    from gapdiff_core.evaluation.cache import StageCache

    notes = []
    cache = StageCache(tmp_path, log=notes.append)

    def finished_stage(key: str) -> Path:
        cache.start("transform", key)
        folder = cache.folder("transform", key)
        (folder / "sub").mkdir()
        (folder / "a.png").write_bytes(b"protected photo")
        (folder / "sub" / "b.png").write_bytes(b"another")
        cache.finish("transform", key, {"k": key}, {"files": ["a.png"]})
        return folder

    folder = finished_stage("intact")
    assert cache.load("transform", "intact")["content"].keys() == {"a.png", "sub/b.png"} and notes == []
    damage = {"replaced": lambda f: (f / "a.png").write_bytes(b"the unprotected photo"),
              "truncated": lambda f: (f / "sub" / "b.png").write_bytes(b"ano"),
              "missing": lambda f: (f / "a.png").unlink()}
    for key, harm in damage.items():
        folder = finished_stage(key)
        harm(folder)
        assert cache.load("transform", key) is None
        assert not folder.exists()  # recomputed from scratch, never on top of the damaged files
        assert key in notes[-1] and "computing it again" in notes[-1]
    folder = finished_stage("old")
    record = json.loads((folder / "stage.json").read_text())
    del record["content"]
    (folder / "stage.json").write_text(json.dumps(record))
    assert cache.load("transform", "old") is None and "no record of its files' content" in notes[-1]


def test_a_tampered_or_truncated_cache_file_recomputes_its_stage_and_dependents(finished, identity_folder,
                                                                              toy_generator_file):
    """A cached transform PNG replaced by the unprotected photo used to be trusted (results silently differed from
    a fresh run); a truncated protected PNG stopped the run. Both now recompute their stage and those after it."""
    out, results, _ = finished
    cfg = _config(toy_generator_file)
    run = next(r for r in results["runs"] if r["transform"] == "jpeg:50" and r["method_kind"] == "gap-diff")
    transformed = out / run["images"]["transformed"][0]
    kept = transformed.read_bytes()
    shutil.copyfile(identity_folder / "set_B" / "a.png", transformed)
    counts, notes = Counter(), []
    ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False,
                   log=notes.append).run()
    assert counts == Counter(transform=1, attack=1, identity=1, generate=1, metrics=1)
    assert transformed.read_bytes() == kept  # the same transform, computed again
    assert any("cached transform stage" in n and "changed or damaged file" in n for n in notes), notes
    protected = out / run["images"]["protected"][0]
    protected.write_bytes(protected.read_bytes()[:100])
    counts.clear()
    ProtocolRunner(identity_folder, out, cfg, on_compute=lambda s, k: counts.update([s]), progress=False,
                   log=notes.append).run()
    assert counts["protect"] == 1 and counts["metrics"] == 2  # both transforms of that method, after it


def test_an_output_or_cache_path_that_is_a_file_is_a_clear_error(tmp_path, identity_folder, monkeypatch, capsys):
    """It used to end in a traceback once the reports were written; now the run does not start."""
    import gapdiff_core.evaluation as evaluation
    from gapdiff_core.cli import main

    monkeypatch.setattr(evaluation, "ProtocolRunner", lambda *a, **k: pytest.fail("the run started"))
    (tmp_path / "taken").write_text("x")
    for flag in ("--out", "--cache"):
        assert main(["evaluate", str(identity_folder), flag, str(tmp_path / "taken"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{flag} {tmp_path / 'taken'} is a file; give a folder" in err and "Traceback" not in err, err


def test_set_folders_match_ignoring_case_and_what_is_skipped_or_stands_in_is_warned(tmp_path, identity_folder):
    """bob/Set_B used to be left out silently next to alice/set_B; now it is bob's set_B. A subfolder without
    set_B is skipped with a warning, and so is a set_B that stands in for a missing or empty set_C."""
    from gapdiff_core.evaluation.inputs import scan_inputs

    data = tmp_path / "data"
    shutil.copytree(identity_folder, data / "alice")
    shutil.copytree(identity_folder / "set_B", data / "Bob" / "Set_B")
    (data / "Bob" / "SET_C").mkdir()  # empty
    shutil.copytree(identity_folder / "set_B", data / "carol")  # photos, but not in a set_B
    (data / ".hidden").mkdir()
    found = scan_inputs(data)
    assert [(i.name, len(i.attacked), len(i.references)) for i in found.identities] == [("Bob", 2, 2),
                                                                                      ("alice", 2, 1)]
    bob = found.identities[0]
    assert bob.references == bob.attacked and "set_B as reference" in bob.layout
    assert found.warnings == [
        "Bob: set_C holds no photos; set_B (the photos that are protected and attacked) stands in as the clean "
        "reference, so ISM and the identity-learning gap compare the attacked model with its own training photos",
        "carol: skipped, no set_B folder (the Anti-DreamBooth layout: carol/set_B with the photos to protect, set_C "
        "with clean references)"]
    assert [i.name for i in find_identities(data)] == ["Bob", "alice"]
    (data / "Bob" / "set_b").mkdir()
    with pytest.raises(ValueError, match="Set_B and set_b differ only in case"):
        scan_inputs(data)


def test_input_warnings_are_printed_and_in_the_results(finished, tmp_path, identity_folder, toy_generator_file):
    """The runner prints each input warning and lists them under ``warnings`` in results.json (and so report.json)."""
    out, _, _ = finished
    data = tmp_path / "data"
    shutil.copytree(identity_folder, data / "alice")
    shutil.copytree(identity_folder / "set_B", data / "bob" / "set_B")
    (data / "carol").mkdir()
    notes = []
    cfg = _config(toy_generator_file, methods=["none"], transforms=["none"])
    results = ProtocolRunner(data, tmp_path / "run", cfg, cache_dir=out / "cache", progress=False,
                             log=notes.append).run()
    assert [w.split(":")[0] for w in results["warnings"]] == ["bob", "carol"]
    assert [f"warning: {w}" for w in results["warnings"]] == [n for n in notes if n.startswith("warning: ")]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["warnings"] == results["warnings"]
    assert sorted({r["identity"] for r in results["runs"]}) == ["alice", "bob"]
