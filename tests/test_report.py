"""Reports from a synthetic protocol result: Markdown layout, self-contained HTML, SVG plots, labels."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from gapdiff_core.common.visualize import amplified_perturbation
from gapdiff_core.evaluation import STATISTICS, combine_metrics
from gapdiff_core.evaluation.report import (aggregate, html_report, jpeg_quality, markdown_report, svg_line_chart,
                                            write_reports)
from gapdiff_core.evaluation.report.rows import statistics_table

PROMPTS = ["a photo of sks person", "a dslr portrait of sks person"]
N_IMAGES = 40


def _entry(fdfr: float, ism: float, brisque: float) -> dict:
    """One prompt's summary (evaluation.summarize_metrics) of N_IMAGES images with these means: the first
    fdfr × N_IMAGES images have no face; BRISQUE alternates ±1 around its mean."""
    failed = round(fdfr * N_IMAGES)
    assert failed == pytest.approx(fdfr * N_IMAGES)
    face = [i >= failed for i in range(N_IMAGES)]
    per_image = {"fdfr": [0.0 if f else 1.0 for f in face], "ism": [ism if f else None for f in face],
                 "brisque": [brisque + (-1) ** i for i in range(N_IMAGES)],
                 "serfiq": [0.7 if f else None for f in face], "serfiq_q": [0.91 if f else None for f in face],
                 "qualityface": [0.8 if f else None for f in face], "face_brisque": [40.0 if f else None for f in face]}
    entry = {"per_image": per_image, "has_reference": True, "n_images": N_IMAGES, "n_faces": sum(face)}
    return {**combine_metrics([entry]), **entry}


def _results(tmp_path, budgets=(8.0,), transforms=("none", "jpeg:70", "jpeg:30"), demo=True) -> dict:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)
    Image.fromarray(clean).save(tmp_path / "clean.png")
    runs = []
    for method, budget in [("none", None)] + [(f"G @{b:g}", b) for b in budgets]:
        delta = 0 if budget is None else int(budget)
        prot = np.clip(clean.astype(int) + rng.integers(-delta, delta + 1, clean.shape), 0, 255).astype(np.uint8)
        pname = f"prot_{delta}.png"
        Image.fromarray(prot).save(tmp_path / pname)
        for t in transforms:
            q = jpeg_quality(t)
            gname = f"gen_{delta}_{q}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / gname)
            score = _entry(0.1 + delta / 80 + (100 - q) / 400, 0.6 - delta / 100, 20.0 + delta)
            runs.append({
                "identity": "p1", "method": method, "method_spec": "none" if budget is None else "G.safetensors",
                "method_kind": "none" if budget is None else "generator", "budget": budget, "transform": t,
                "method_is_demo": demo, "model_is_demo": demo, "base_model": "tiny (seed 0)",
                "fidelity": {"psnr_db": None if budget is None else 40 - delta, "ssim": 0.99,
                             "linf_grey_levels": float(delta), "backend": "torch"},
                "fidelity_after_transform": {"psnr_db": 30 + q / 10},
                "metrics": {p: json.loads(json.dumps(score)) for p in PROMPTS}, "mean": combine_metrics([score]),
                "identity_gain": {"gain": 0.5 - delta / 100, "clean_gain": 0.5, "relative": 1 - delta / 50},
                "backends": {"detector": "yunet", "embedder": "sface", "brisque": "brisque 0.0.x"},
                "images": {"clean": ["clean.png"], "protected": [pname], "transformed": [pname],
                           "references": ["clean.png"], "generated": {PROMPTS[0]: [gname], PROMPTS[1]: [gname]}},
            })
    return {"title": "gapdiff evaluation", "is_demo": demo, "prompts": PROMPTS, "runs": runs,
            "protocol": {"name": "custom", "settings": []},
            "reference_detection": {"per_identity": {"p1": {"n_photos": 4, "n_detected": 3, "rate": 0.75}},
                                    "n_photos": 4, "n_detected": 3, "rate": 0.75},
            "config": {"model": "tiny", "budgets": list(budgets), "methods": ["none", "G.safetensors"],
                       "transforms": list(transforms), "norm": "image", "official_mode": False, "seed": 0},
            "attack_config": {"preset": "tiny-lora", "mode": "lora", "max_train_steps": 2, "learning_rate": 5e-3,
                              "resolution": 32, "num_class_images": 1},
            "generation_config": {"images_per_prompt": 1, "steps": 1, "scheduler": "ddim", "guidance_scale": 7.5,
                                  "seed": 0},
            "timing": {"total_seconds": 1.0, "computed_seconds": {"attack": 0.5}},
            "environment": {"python": "3", "platform": "x", "packages": {"torch": "2"}}}


def test_markdown_has_paper_layout_and_demo_label(tmp_path):
    md = markdown_report(_results(tmp_path))
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:6] == ["Method", "Transform", "P1 FDFR↑", "P1 ISM↓", "P1 BRISQUE↑", "P1 SER-FIQ↓"]
    assert len(cols) == 2 + 4 * (len(PROMPTS) + 1)
    rows = [line for line in md.splitlines() if line.startswith("| G @8 |")]
    assert len(rows) == 12  # per prompt, summary, paired differences, PSNR
    iv = r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]"  # every number with its 95% interval
    per_prompt = re.search(rf"\| G @8 \| jpeg:30 \| 0\.375 {iv} \| 0\.520 \[0\.520, 0\.520\] \| 28\.000 {iv} \| "
                           rf"0\.437 {iv} \|", md)  # SER-FIQ 0.7 on 25 of 40 images, 0 on the rest
    lo, hi = map(float, per_prompt.groups()[:2])
    assert 0.2 < lo < 0.375 < hi < 0.55, per_prompt.group(0)
    # the summary: protocol ISM, ISM over detected faces, BRISQUE, SER-FIQ both ways and its raw q, the two face
    # diagnostics, the identity gain (n/a on a toy model, the relative gain on a real one)
    assert re.search(rf"\| none \| none \| 0\.100 {iv} \| 0\.600 \[0\.600, 0\.600\] \| 0\.600 \[0\.600, 0\.600\] \| "
                     rf"20\.000 {iv} \| 0\.630 {iv} \| 0\.700 \[0\.700, 0\.700\] \| 0\.9100 \[0\.9100, 0\.9100\] \| "
                     rf"0\.800 \[0\.800, 0\.800\] \| 40\.000 \[40\.000, 40\.000\] \| n/a \(toy model\) \|", md)
    # paired against none at the same transform: BRISQUE is +8 on every image, so its interval is exactly [+8, +8]
    assert "## Paired differences against none (same transform)" in md
    assert re.search(r"\| G @8 \| jpeg:30 \| \+0\.100 \[\+0\.\d{3}, \+0\.\d{3}\] \| -0\.080 \[-0\.080, -0\.080\] \| "
                     r"-0\.080 \[-0\.080, -0\.080\] \| \+8\.000 \[\+8\.000, \+8\.000\] \|", md)
    assert not re.search(r"^\| none \| [^|]+ \| [+-]", md, re.M)  # none has no difference against itself
    assert "DEMO ON A TOY MODEL" in md
    real = markdown_report(_results(tmp_path, demo=False))
    assert "DEMO" not in real and "n/a (toy model)" not in real
    assert re.search(r"^\| G @8 \| jpeg:30 \| .*\| 0\.840 \|$", real, re.M)  # the summary's last column: the gain
    assert re.search(r"^\| none \| none \| .*\| 1\.000 \|$", real, re.M)


def test_html_is_self_contained_with_images_and_plots(tmp_path):
    results = _results(tmp_path, budgets=(4.0, 8.0))
    page = html_report(results, tmp_path)
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:|[^"'d][^"']*\.(png|jpg|js|css))""", page)
    assert "<script" not in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) >= 6
    assert "vs JPEG quality" in page and "vs budget" in page and page.count("<svg") >= 10
    assert page.count("DEMO ON A TOY MODEL") >= 2
    assert "perturbation" in page


def test_html_perturbation_image_maps_budget_to_full_range(tmp_path):
    """The report's amplified perturbation: grey (128) where nothing changed, +-budget at 255 / 0."""
    import base64
    import io

    page = html_report(_results(tmp_path), tmp_path)
    uri = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="perturbation ×16">', page).group(1)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB")).astype(int)
    clean = np.asarray(Image.open(tmp_path / "clean.png")).astype(int)
    diff = np.asarray(Image.open(tmp_path / "prot_8.png")).astype(int) - clean
    np.testing.assert_array_equal(shown, amplified_perturbation(clean, clean + diff, 8)[0])
    assert shown[diff == 0].min() == shown[diff == 0].max() == 128
    assert shown[diff == 8].min() == 255 and shown[diff == -8].max() == 0


def test_aggregate_averages_identities(tmp_path):
    results = _results(tmp_path)
    twin = json.loads(json.dumps(results["runs"][0]))
    twin["identity"] = "p2"
    for p in PROMPTS:
        twin["metrics"][p] = _entry(0.1, 0.2, 20.0)
    results["runs"].append(twin)
    row = next(r for r in aggregate(results) if r["method"] == "none" and r["transform"] == "none")
    assert row["identities"] == ["p1", "p2"] and row["mean"]["ism"] == pytest.approx(0.4)


def test_svg_chart_draws_each_series():
    svg = svg_line_chart({"a": [(30, 0.1), (70, 0.2), (100, 0.4)], "b": [(30, None), (70, 0.3)]},
                         "FDFR vs JPEG quality", "JPEG quality", "FDFR", xtick_labels={100: "none"})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 4 and ">none<" in svg
    assert "no data" in svg_line_chart({"a": [(1, None)]}, "t", "x", "y")


def test_write_reports_writes_three_files(tmp_path, fsynced):
    paths = write_reports(_results(tmp_path), tmp_path / "out", base_dir=tmp_path)
    assert all(fsynced.has(p) for p in paths.values())  # each written atomically: fsynced, then renamed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json", "report.md"]
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["runs"]
    assert paths["md"].read_text(encoding="utf-8").startswith("# ")
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_bare_jpeg_is_plotted_at_the_quality_it_runs_at():
    import torch

    from gapdiff_core.preprocess import parse
    from gapdiff_core.preprocess.codecs import jpeg

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    q = jpeg_quality("jpeg")
    assert torch.equal(parse("jpeg")(x), jpeg(x, q))
    assert not torch.equal(jpeg(x, q), jpeg(x, 75 if q != 75 else 70))
    assert jpeg_quality("jpeg:30") == 30 and jpeg_quality("none") == 100 and jpeg_quality("blur") is None
    assert jpeg_quality("JPEG:quality=75,subsampling=4:2:0") == 75  # any spelling of the plotted transform
    # not points of the JPEG-quality line: other subsampling, a chain ending in JPEG, a preset built on it
    assert [jpeg_quality(s) for s in ("jpeg:75,subsampling=444", "resize:64|jpeg:75", "platform:instagram")] == [
        None, None, None]


def test_html_thumbnails_decode_16_bit_photos_like_the_rest_of_the_tool(tmp_path):
    import base64
    import io

    results = _results(tmp_path)
    grey16 = np.full((40, 32), 0x8000, dtype=np.uint16)  # mid grey in 16 bits; 8-bit clipping would give white
    Image.fromarray(grey16).save(tmp_path / "clean.png")
    page = html_report(results, tmp_path)
    uri = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="clean #1"', page).group(1)
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"))
    assert abs(int(thumb.mean()) - 128) <= 1


def test_html_names_an_unreadable_photo_and_still_renders(tmp_path):
    results = _results(tmp_path)
    (tmp_path / "clean.png").write_bytes(b"not an image")
    page = html_report(results, tmp_path)
    assert "unreadable image" in page and "clean.png" in page and "vs JPEG quality" in page


def test_ism_across_identities_counts_a_faceless_identity_as_zero(tmp_path):
    results = _results(tmp_path)
    twin = json.loads(json.dumps(results["runs"][0]))
    twin["identity"] = "p2"
    for p in PROMPTS:
        twin["metrics"][p] = _entry(1.0, 0.0, 20.0)  # no face in any image
    results["runs"].append(twin)
    row = next(r for r in aggregate(results) if r["method"] == "none" and r["transform"] == "none")
    assert row["mean"]["ism"] == pytest.approx(0.3)  # (0.6 + 0) / 2 identities, as full_ism_fdfr.py
    assert row["mean"]["ism_detected"] == pytest.approx(0.6) and row["mean"]["serfiq_detected"] == pytest.approx(0.7)
    assert row["mean"]["serfiq"] == pytest.approx(0.63 / 2) and row["per_prompt"][PROMPTS[0]]["ism"] == pytest.approx(0.3)
    assert row["mean"]["qualityface"] == pytest.approx(0.8)  # a diagnostic: over the detected faces only
    # two identities, one without faces: resampling identities spans [0, 0.6] for ISM
    assert row["interval"]["ism"]["lo"] == 0.0 and row["interval"]["ism"]["hi"] == pytest.approx(0.6)


def test_every_report_states_protocol_norm_and_detector_floor(tmp_path):
    results = _results(tmp_path)
    md = markdown_report(results)
    assert "## Protocol: custom settings" in md and "--protocol paper" in md
    assert "face detection on the clean reference photos (the detector's floor): 3/4 detected (rate 0.750" in md
    assert "protection function (generator methods): image: per-image statistics" in md
    settings = [{"setting": "scheduler", "protocol": "pndm", "ran": "pndm", "matches": True},
                {"setting": "face_quality", "protocol": "not in the paper", "ran": "QualityFace", "matches": None}]
    results["protocol"] = {"name": "paper", "settings": settings}
    assert "all match." in markdown_report(results)  # a diagnostic the paper has not is not a departure
    settings += [{"setting": "images_per_prompt", "protocol": 30, "ran": 2, "matches": False},
                 {"setting": "budget.metacloak", "protocol": "11 (MetaCloak)", "ran": "8", "matches": False}]
    results["config"].update(norm="running")
    md = markdown_report(results)
    assert "## Protocol: paper (2 differ)" in md and "all match" not in md
    assert "**2 of 4 rows differ (images per prompt, budget (grey levels): metacloak)" in md
    assert "| scheduler | pndm | pndm | ✓ |" in md and "| images per prompt | 30 | 2 | ✗ differs |" in md
    assert "| face-quality backbone | not in the paper | QualityFace | — not in the paper |" in md
    assert "| budget (grey levels): metacloak | 11 (MetaCloak) | 8 | ✗ differs |" in md
    assert "protection function (generator methods): running: running statistics" in md
    page = html_report(results, tmp_path)
    assert "Protocol: paper (2 differ)" in page and "identity gain" in page and "3/4 detected" in page


def test_headings_arrows_and_missing_values_are_the_directions_modules(tmp_path):
    """Every report and the demo's summary lines take labels, arrows and formats from metrics.directions: a
    missing value prints n/a there as everywhere (the reports printed an en dash)."""
    from gapdiff_core.commands.demo import summary_lines
    from gapdiff_core.metrics.directions import METRICS

    results = _results(tmp_path, demo=False)
    for run in results["runs"]:
        run["identity_gain"]["relative"] = None
    md = markdown_report(results)
    summary = next(line for line in md.splitlines() if line.startswith("| Method | Transform | FDFR↑ | ISM↓ |"))
    assert summary.endswith("| QualityFace↓ | face-box BRISQUE↑ | identity gain↓ |")
    assert re.search(r"^\| none \| none \| 0\.100 \[[^|]+\] \|.* \| 40\.000 \[40\.000, 40\.000\] \| n/a \|$", md, re.M)
    assert "–" not in md.replace("0–255", "") and "<td><b>n/a</b></td>" in html_report(results, tmp_path)
    lines = summary_lines(results)
    assert lines[0].startswith("mean over prompts (FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓ QualityFace↓ face-box BRISQUE↑: ")
    assert all(f"{METRICS['identity_gain'].label} n/a |" in line for line in lines[1:7])
    assert "| FDFR 0.375 ISM 0.520 BRISQUE 28.00 SER-FIQ 0.437 QualityFace 0.800 face-box BRISQUE 40.00 |" in lines[6]


def test_every_metric_has_an_interval_and_every_method_its_paired_difference(tmp_path):
    """What results.json keeps (statistics_table) and the reports print: each statistic with its 95% interval,
    overall and per prompt; each method but none its difference against none at the same transform."""
    results = _results(tmp_path, budgets=(4.0, 8.0))
    table = statistics_table(results)
    assert len(table) == 9 and json.loads(json.dumps(table)) == table
    for row in table:
        for stats in [row["interval"], *row["per_prompt_interval"].values()]:
            assert set(stats) == set(STATISTICS)
            assert all(v["lo"] is not None and v["lo"] <= v["value"] <= v["hi"] for v in stats.values()), row
        if row["method"] == "none":
            assert row["vs_none"] is None
        else:
            assert set(row["vs_none"]) == set(STATISTICS) and row["vs_none"]["brisque"]["value"] == row["budget"]
    assert statistics_table(results) == table  # seeded: the same intervals every time
    page = html_report(results, tmp_path)
    assert "Paired differences against none (same transform)" in page and "+4.000 [+4.000, +4.000]" in page


def test_identity_gain_interval_is_over_identities_and_their_photos():
    from gapdiff_core.evaluation.report.rows import gain_interval

    def run(name, photos, clean):
        return {"identity": name, "identity_gain": {"per_photo_gain": photos, "clean_gain": clean}}

    # two identities whose photos agree: the resamples are all-a (0.5), all-b (1.0) or mixed (0.75)
    assert gain_interval([run("b", [2.0, 2.0], 2.0), run("a", [0.5, 0.5], 1.0)]) == {"value": 0.75, "lo": 0.5,
                                                                                      "hi": 1.0}
    spread = gain_interval([run("a", [0.2, 1.8], 2.0)])  # one identity: only its photos vary (0.1 or 0.9 each)
    assert spread["value"] == pytest.approx(0.5) and spread["lo"] == pytest.approx(0.1) and spread["hi"] == \
        pytest.approx(0.9)
    assert gain_interval([run("a", [0.5], 0.0)]) is None  # the clean attack learnt nothing: no ratio
