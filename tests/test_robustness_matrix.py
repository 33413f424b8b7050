"""The robustness matrix (evaluation/robustness_matrix.py), its report and `gapdiff robustness`."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gapdiff_core.cli import main
from gapdiff_core.diffusion import Surrogate
from gapdiff_core.evaluation.robustness_matrix import (
    DenoisingMeasure, Interval, MatrixMethod, bootstrap_resamples, gap_diff_method, mean_interval, none_method,
    random_noise_method, ratio_interval, robustness_matrix, verdict)
from gapdiff_core.evaluation.robustness_report import matrix_json, robustness_html
from gapdiff_core.preprocess import parse
from gapdiff_core.samples import SAMPLES_DIR


# ---------------------------------------------------------------- the bootstrap
def test_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    # 200 seeded trials of 40 photos each: a 95% interval covering at 90% or more (measured 94.5% over 1000 trials of
    # 30; the percentile bootstrap undercovers with very few photos: 87.6% with 8)
    rng = np.random.default_rng(7)
    covered = sum(
        iv.low <= 1.5 <= iv.high
        for iv in (mean_interval(rng.normal(1.5, 1.0, 40), bootstrap_resamples(40, 1000, seed)) for seed in range(200)))
    assert covered >= 180


def test_bootstrap_interval_shrinks_with_more_photos():
    rng = np.random.default_rng(3)

    def width(n):
        return np.mean([(lambda iv: iv.high - iv.low)(mean_interval(rng.normal(0, 1, n), bootstrap_resamples(n, 500, s)))
                        for s in range(20)])
    assert width(10) > 2 * width(80)  # ~ 1 / sqrt(n): ratio about 2.8


def test_ratio_interval_uses_the_same_resamples_and_is_undefined_without_an_effect():
    resamples = bootstrap_resamples(6, 300, 0)
    den = np.array([1.0, 2.0, 3.0, 1.5, 2.5, 0.5])
    assert ratio_interval(den / 2, den, resamples) == Interval(0.5, 0.5, 0.5)
    assert np.isnan(ratio_interval(den, -den, resamples).mean)


def test_verdicts_follow_the_intervals():
    above, zero, low_share, high_share = Interval(1, .5, 1.5), Interval(0, -1, 1), Interval(.3, .1, .5), Interval(.9, .6, 1.1)
    assert verdict("protection", 8, above, high_share, above) == "survives"
    assert verdict("protection", 8, above, low_share, above) == "weakened"
    assert verdict("protection", 8, zero, low_share, above) == "removed"
    assert verdict("protection", 8, zero, low_share, zero) == "no-effect"
    assert verdict("protection", 1, above, high_share, above) == "one-photo"
    assert verdict("control", 8, zero, low_share, zero) == "control"


# ---------------------------------------------------------------- the matrix with a measure of known behaviour
class FlatGrey:
    """A transform that destroys the image: every pixel mid-grey."""

    spec, name, needs_surrogate = "flat-grey", "flat-grey", False

    def __call__(self, images, seed=0, surrogate=None):
        return torch.full_like(images, 128 / 255)


def brightness(photo: torch.Tensor) -> float:
    """A 'surrogate' that sees only the mean brightness: it cannot tell ±noise from the clean photo."""
    return float(photo.mean())


def photos(n: int, side: int = 48) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(1, 3, side, side, generator=g) * 0.6 + 0.2).mul(255).round().div(255) for _ in range(n)]


BRIGHTEN = MatrixMethod("brighten", lambda x, seed: (x + 4 / 255).clamp(0, 1).mul(255).round().div(255))


def test_known_effect_is_detected_noise_and_none_are_zero_and_a_destroying_transform_keeps_nothing():
    m = robustness_matrix(photos(8), [BRIGHTEN, none_method(), random_noise_method(4)], ["jpeg:90", FlatGrey()],
                          measure=brightness, budget=4, resamples=500)
    assert m.transforms == ["none", "jpeg:90", "flat-grey"]
    known = m.cell("brighten", "none")
    assert known.effect.mean == pytest.approx(4 / 255, abs=1e-6) and known.effect.low > 0
    assert known.share == Interval(1.0, 1.0, 1.0)  # the identity transform retains 100%
    assert known.verdict == "survives"
    assert m.cell("brighten", "jpeg:90").share.mean == pytest.approx(1.0, abs=0.1)  # JPEG keeps the mean
    assert m.cell("none", "none").effect == Interval(0.0, 0.0, 0.0)
    noise = m.cell("random-noise", "none").effect
    assert abs(noise.mean) < 5e-4 and noise.low < 2e-4 and noise.high > -2e-4
    grey = m.cell("brighten", "flat-grey")
    assert grey.effect == Interval(0.0, 0.0, 0.0) and grey.share.mean == 0.0
    assert grey.verdict == "removed" and grey.psnr.mean == float("inf")
    assert m.cell("random-noise", "jpeg:90").verdict == "control"
    assert m.errors["brighten"]["none"] == pytest.approx([brightness(p) + 4 / 255 for p in photos(8)], abs=1e-6)


def test_a_photo_that_fails_is_skipped_and_every_cell_uses_the_same_photos(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    good = tmp_path / "good.png"
    Image.fromarray((photos(1)[0][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(good)
    m = robustness_matrix([good, bad, photos(1)[0]], [BRIGHTEN, random_noise_method(4)], ["jpeg:80"],
                          measure=brightness, resamples=200)
    assert list(m.skipped) == [str(bad)] and "broken.png" in m.skipped[str(bad)]
    assert m.photos == [str(good), "photo 2"]
    assert all(len(v) == 2 for per_method in m.errors.values() for v in per_method.values())


def test_progress_and_a_size_changing_transform(tmp_path):
    calls = []
    m = robustness_matrix(photos(2, side=64), [BRIGHTEN], ["resize:32"], measure=brightness, resamples=200,
                          progress=lambda done, total, _: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert m.cell("brighten", "resize:32").effect.mean == pytest.approx(4 / 255, abs=2e-3)
    assert m.examples[1].clean.shape[:2] == (32, 32)


# ---------------------------------------------------------------- the tiny surrogate
@pytest.fixture(scope="module")
def tiny():
    return Surrogate.tiny()


def test_on_the_tiny_surrogate_a_flat_grey_transform_keeps_nothing_and_verdicts_are_toy(
        tiny, saturated_generator_file):
    measure = DenoisingMeasure(tiny, timesteps=2, resolution=64)
    gap = gap_diff_method(saturated_generator_file)
    m = robustness_matrix(photos(3, side=64), [gap, random_noise_method(gap.budget)], [FlatGrey()],
                          surrogate=tiny, measure=measure, resamples=200)
    before, after = m.cell("gap-diff", "none"), m.cell("gap-diff", "flat-grey")
    # the random toy model denoises this demo generator's photos better than the clean ones: a negative effect,
    # so there is no share to retain
    assert before.effect.high < 0 and np.isnan(before.share.mean) and np.isnan(after.share.mean)
    assert after.effect == Interval(0.0, 0.0, 0.0) and after.verdict == "no-effect"
    assert m.toy and m.verdict_text(before).startswith("n/a (toy model); demo reading:")
    assert m.settings["timesteps"] == [250, 750] and m.settings["resolution"] == 64


# ---------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def small_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robustness_photos")
    for name in ("obama.jpg", "obama2.jpg"):
        with Image.open(SAMPLES_DIR / name) as im:
            im = im.convert("RGB")
            im.thumbnail((96, 96))
            im.save(folder / name.replace(".jpg", ".png"))
    return folder


def test_command_writes_the_matrix_the_heat_map_and_every_transform(small_photos, saturated_generator_file, tmp_path,
                                                                    capsys):
    out = tmp_path / "out"
    specs = ["jpeg:75", "gauss:1", "platform:instagram", "diffpure:0.1,steps=2"]
    code = main(["robustness", str(small_photos), "-g", str(saturated_generator_file), "-o", str(out),
                 "--resolution", "64", "--timesteps", "2", "--resamples", "200", "--no-progress",
                 *[a for s in specs for a in ("--transform", s)]])
    printed = capsys.readouterr().out
    assert code == 0
    assert "DEMO on a toy model" in printed and "n/a (toy model)" in printed
    page = (out / "robustness.html").read_text()
    assert '<svg class="heatmap"' in page and "data:image/png;base64," in page
    data = json.loads((out / "robustness.json").read_text())
    normalised = [parse(s).spec for s in specs]  # gauss:1 -> gauss:1.0
    assert data["transforms"] == ["none", *normalised] and data["toy_model"] is True
    assert [m["name"] for m in data["methods"]] == ["gap-diff", "none", "random-noise"]
    assert len(data["cells"]) == 3 * 5 and len(data["photos"]) == 2
    for spec in normalised:
        assert f">{spec}<" in page
    assert data["settings"]["budget"] == 8.0 and data["settings"]["resamples"] == 200


def test_command_bad_spec_exits_2_naming_it(small_photos, saturated_generator_file, tmp_path, capsys):
    code = main(["robustness", str(small_photos), "-g", str(saturated_generator_file), "-o", str(tmp_path),
                 "--transform", "jpeg:500"])
    assert code == 2
    assert "jpeg:500" in capsys.readouterr().err
    assert not (tmp_path / "robustness.html").exists()


def test_html_escapes_names(small_photos):
    m = robustness_matrix(photos(2), [MatrixMethod("<b>x</b>", BRIGHTEN.protect)], ["jpeg:80"], measure=brightness,
                          resamples=200)
    page = robustness_html(m)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert json.dumps(matrix_json(m), allow_nan=False)
