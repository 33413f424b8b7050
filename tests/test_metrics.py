"""Protection metrics on real face photos shipped in gapdiff_core/samples (offline backends)."""
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("cv2")
pytest.importorskip("brisque")

from gapdiff_core import metrics as M  # noqa: E402
from gapdiff_core.metrics import faces as F  # noqa: E402

SAMPLES = Path(M.__file__).resolve().parents[1] / "samples"
FACE_NAMES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.png"]


def _portrait(name: str, size: int = 512, margin: float = 2.2) -> np.ndarray:
    """A square size×size crop centred on the photo's face (like a generated portrait)."""
    im = Image.open(SAMPLES / name).convert("RGB")
    face = max(M.get_detector().detect(np.asarray(im)), key=lambda f: f.area)
    x, y, w, h = face.box
    cx, cy, side = x + w / 2, y + h / 2, margin * max(w, h)
    box = tuple(int(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return np.asarray(im.crop(box).resize((size, size), Image.LANCZOS))


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


@functools.lru_cache(maxsize=1)
def _non_faces() -> list[np.ndarray]:
    yy, xx = np.mgrid[0:512, 0:512]
    gradient = np.stack([xx / 2, yy / 2, (xx + yy) / 4], -1).astype(np.uint8)
    coarse = np.random.default_rng(0).normal(128, 60, (16, 16, 3)).clip(0, 255).astype(np.uint8)
    smooth_noise = np.asarray(Image.fromarray(coarse).resize((512, 512), Image.BICUBIC))
    out = [gradient, smooth_noise, np.full((256, 256, 3), 127, np.uint8)]
    try:
        from skimage import data

        out += [data.coffee(), data.chelsea(), data.rocket()]
    except ImportError:
        pass
    return out


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    return {n: _portrait(n) for n in FACE_NAMES}


def test_inputs_tensor_and_arrays_agree(faces):
    arrays = [faces["obama.jpg"], faces["biden.jpg"]]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    assert all(np.array_equal(a, b) for a, b in zip(M.images.to_uint8_rgb(batch), arrays))
    assert M.fdfr(batch).value == M.fdfr(arrays).value == 0.0


def test_fdfr_zero_on_clean_faces(faces):
    r = M.fdfr(list(faces.values()))
    assert (r.value, r.n_failed, r.n_images) == (0.0, 0, 5)
    assert r.backend == "retinaface-mobilenet" and r.threshold == 0.9


def test_fdfr_one_on_non_faces():
    imgs = _non_faces()
    r = M.fdfr(imgs)
    assert r.value == 1.0 and r.n_failed == len(imgs)


@pytest.mark.parametrize("detector, atol", [("yunet", 6), ("retinaface-mobilenet", 8)])
def test_faces_align_to_arcface_template(faces, detector, atol):
    """Re-detected on the aligned crop, the landmarks sit on the template (RetinaFace-MobileNet's mouth corners
    come out about 7 px of 112 higher than the template's)."""
    face = M.get_detector(detector).detect(faces["obama.jpg"])[0]
    crop = M.align_face(faces["obama.jpg"], face)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    relanded = M.get_detector(detector, threshold=0.5).detect(np.asarray(Image.fromarray(crop).resize((224, 224))))
    assert relanded, "the aligned crop should still contain a face"
    np.testing.assert_allclose(relanded[0].landmarks / 2, F.ARCFACE_TEMPLATE, atol=atol)


def test_ism_same_identity_beats_different(faces):
    ref = M.reference_embedding([faces["obama2.jpg"], faces["obama3.jpg"]])
    same = M.ism([faces["obama.jpg"]], ref)
    diff = M.ism([faces["biden.jpg"], faces["astronaut.png"]], ref)
    assert same.backend == "sface" and same.detector == "retinaface-mobilenet" and diff.n_detected == 2
    assert same.value > 0.6 and max(diff.per_image) < 0.35
    assert same.value - max(diff.per_image) > 0.3


def test_ism_averages_over_detected_faces_only(faces):
    refs = [faces["obama2.jpg"], faces["obama3.jpg"]]
    r = M.ism([faces["obama.jpg"], _non_faces()[0], faces["biden.jpg"]], refs)
    assert r.n_images == 3 and r.n_detected == 2 and r.per_image[1] is None
    assert r.value == pytest.approx((r.per_image[0] + r.per_image[2]) / 2)
    assert M.ism(_non_faces()[:2], refs).value is None
    with pytest.raises(ValueError, match="no face"):
        M.ism([faces["obama.jpg"]], _non_faces()[:1])


def test_brisque_rises_as_jpeg_quality_falls(faces):
    for name in ("astronaut.png", "obama.jpg"):
        scores = [M.brisque_score(_jpeg(faces[name], q)) for q in (90, 70, 50, 30, 10)]
        assert all(a < b for a, b in zip(scores, scores[1:])), (name, scores)
        assert scores[-1] - scores[0] > 20


def test_brisque_matches_the_package(faces):
    from brisque import BRISQUE

    class FloatFeatures(BRISQUE):  # the minimal NumPy-2 fix, nothing else changed
        def calculate_brisque_features(self, image, kernel_size=7, sigma=7 / 6):
            feats = super().calculate_brisque_features(image, kernel_size, sigma)
            return np.array([np.asarray(f, np.float64).reshape(-1)[0] for f in feats])

    img = faces["astronaut.png"][::2, ::2]
    r = M.brisque([img])
    assert r.backend.startswith("brisque ") and r.n_images == 1
    assert r.value == pytest.approx(FloatFeatures(url=False).score(img), abs=0.05)


def test_serfiq_formula_matches_reference():
    from scipy.spatial.distance import pdist

    x = np.random.default_rng(1).normal(size=(20, 16))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = 2 / (1 + np.exp(pdist(unit).mean()))
    score, raw = M.serfiq_from_embeddings(x, alpha=130, r=0.88)
    assert raw == pytest.approx(q) and score == pytest.approx(1 / (1 + np.exp(-130 * (q - 0.88))))
    assert M.serfiq_from_embeddings(np.ones((5, 4)))[1] == pytest.approx(1.0)


def test_sface_head_reproduces_the_network(faces):
    emb = M.get_embedder("sface")
    face = M.get_detector().detect(faces["obama.jpg"])[0]
    e, trunk = emb.forward(M.align_face(faces["obama.jpg"], face)[None])
    head = emb.head_scale * (emb.head_weight @ trunk[0]) + emb.head_bias
    np.testing.assert_allclose(head, e[0], atol=1e-4)
    assert emb.dropout_p == pytest.approx(0.4)


def test_mtcnn_finds_each_sample_face_with_landmarks_where_retinaface_puts_them():
    from gapdiff_core.metrics.face_models import model_bytes
    from gapdiff_core.metrics.mtcnn import MTCNNDetector, load_mtcnn

    state = torch.load(io.BytesIO(model_bytes("mtcnn-onet")), map_location="cpu", weights_only=True)
    torch.testing.assert_close(load_mtcnn()[2].trunk.conv4.weight, state["conv4.weight"])  # the shipped weights
    for name in FACE_NAMES:
        rgb = np.asarray(Image.open(SAMPLES / name).convert("RGB"))
        found, ref = MTCNNDetector().detect(rgb), M.get_detector().detect(rgb)[0]
        assert len(found) == 1 and found[0].score > 0.99, name
        eyes = np.linalg.norm(ref.landmarks[1] - ref.landmarks[0])
        assert np.abs(found[0].landmarks - ref.landmarks).max() < 0.25 * eyes, (name, found[0].landmarks)
    assert all(not MTCNNDetector().detect(x) for x in _non_faces()[:3])


def test_serfiq_lower_for_heavily_degraded_faces(faces):
    from gapdiff_core.metrics.serfiq import SERFIQ_ALPHA, SERFIQ_R

    for name in ("obama.jpg", "biden.jpg", "astronaut.png"):
        x = faces[name]
        down = np.asarray(Image.fromarray(x).resize((32, 32), Image.BILINEAR).resize((512, 512), Image.BICUBIC))
        r = M.serfiq([x, _jpeg(x, 5), down])
        clean, *degraded = r.per_image
        assert r.T == 100 and (r.alpha, r.r) == (SERFIQ_ALPHA, SERFIQ_R) and "MTCNN" in r.backend
        assert "not comparable in absolute value to published SER-FIQ" in r.backend
        assert r.n_detected == 3 and all(d < clean for d in degraded), (name, r.per_image)
        assert all(q < r.raw_q[0] for q in r.raw_q[1:]), (name, r.raw_q)


def test_serfiq_constants_are_fitted_to_the_clean_faces_alone():
    """The clean fit's mean raw q scores 0.9 and the point FIT_SPREAD sd below it 0.5 (bench/face_quality.py)."""
    from gapdiff_core.metrics.serfiq import FIT_MEAN_Q, FIT_SD_Q, FIT_SPREAD, SERFIQ_ALPHA, SERFIQ_R

    score = lambda q: M.serfiq_from_embeddings(np.ones((3, 4)), SERFIQ_ALPHA, SERFIQ_R + 1.0 - q)[0]  # raw q is 1
    assert score(FIT_MEAN_Q) == pytest.approx(0.9) and score(FIT_MEAN_Q - FIT_SPREAD * FIT_SD_Q) == pytest.approx(0.5)


def test_serfiq_label_matches_its_response_on_the_sample_photos():
    """The report's 'unresponsive on this backbone' label is the measurement: clean -> JPEG q5 and -> blur σ 4 on
    the shipped photos' MTCNN faces (T = 100 as the protocol)."""
    import cv2

    from gapdiff_core.metrics.serfiq import SERFIQ_RESPONSE, SERFIQ_RESPONSIVE

    photos = [np.asarray(Image.open(SAMPLES / n).convert("RGB")) for n in FACE_NAMES]
    mean = lambda xs: M.serfiq(xs).value_detected_only
    clean = mean(photos)
    drops = {"jpeg5": clean - mean([_jpeg(x, 5) for x in photos]),
             "blur4": clean - mean([cv2.GaussianBlur(x, (0, 0), 4.0) for x in photos])}
    assert drops == pytest.approx(SERFIQ_RESPONSE, abs=0.005)
    assert SERFIQ_RESPONSIVE == (min(drops.values()) >= 0.1)


def test_psnr_ssim():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 64, generator=g)
    b = (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    mse = (a - b).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(M.psnr(a, b), 10 * torch.log10(1 / mse))
    assert torch.isinf(M.psnr(a, a)).all()
    torch.testing.assert_close(M.ssim(a, a), torch.ones(2))
    worse = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert (M.ssim(a, worse) < M.ssim(a, b)).all()
    b.requires_grad_(True)
    M.ssim(a, b).sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    skm = pytest.importorskip("skimage.metrics")
    ref = skm.structural_similarity(a[0].permute(1, 2, 0).numpy(), b[0].detach().permute(1, 2, 0).numpy(),
                                    channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
    assert M.ssim(a, b.detach())[0].item() == pytest.approx(ref, abs=1e-4)


def test_evaluate_images_names_backends_and_matches_parts(faces):
    gen = [faces["obama.jpg"], faces["biden.jpg"], _non_faces()[1]]
    refs = [faces["obama2.jpg"], faces["obama3.jpg"]]
    out = M.evaluate_images(gen, refs, serfiq_T=20)
    assert out["n_images"] == 3
    json.loads(json.dumps(out))  # plain JSON, ready for reports
    assert out["fdfr"]["value"] == pytest.approx(1 / 3) and out["fdfr"]["backend"] == "retinaface-mobilenet"
    assert out["ism"]["value"] == pytest.approx(M.ism(gen, refs).value, abs=1e-6)
    assert out["ism"]["n_detected"] == 2 and out["ism"]["backend"] == "sface"
    assert out["serfiq"]["value"] == pytest.approx(M.serfiq(gen, T=20).value, abs=1e-9)
    assert "MTCNN" in out["backends"]["serfiq"]
    assert out["brisque"]["per_image"][0] == pytest.approx(M.brisque_score(gen[0]))
    assert "SFace" in out["backends"]["embedder"] and "RetinaFace" in out["backends"]["detector"]
    assert M.evaluate_images(gen[:1])["ism"] is None
    fid = M.protection_fidelity(torch.zeros(1, 3, 16, 16), torch.full((1, 3, 16, 16), 2 / 255))
    assert fid["linf_grey_levels"] == 2.0 and fid["psnr_db"] == 10 * np.log10(255 ** 2 / 4)  # exact, on 8 bits


def test_backend_registry_and_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown face detector"):
        M.fdfr([np.zeros((64, 64, 3), np.uint8)], backend="nope")
    with pytest.raises(M.BackendUnavailable, match="holds none of arcface_r100.onnx, glintr100.onnx"):
        M.get_embedder("arcface-r100", str(tmp_path))
    report = M.available_backends()
    assert report["detectors"]["yunet"] == "ok" and report["embedders"]["sface"] == "ok"
    assert report["embedders"]["arcface-r100"].startswith("unavailable: embedder 'arcface-r100' needs weights you")

    class Everything:
        name, description = "everything", "test detector that finds a face everywhere"

        def __init__(self, threshold):
            pass

        def detect(self, rgb):
            return [F.Face((0, 0, 10, 10), np.zeros((5, 2), np.float32), 1.0)]

    M.register_detector("everything", Everything)
    try:
        assert M.fdfr(_non_faces()[:2], backend="everything").value == 0.0
    finally:
        del M.DETECTORS["everything"]
        M.get_detector.cache_clear()


def test_retinaface_mobilenet_backend(faces):
    det = M.get_detector("retinaface-mobilenet")
    assert M.fdfr(list(faces.values()), backend="retinaface-mobilenet").value == 0.0
    assert M.fdfr(_non_faces()[:2], backend="retinaface-mobilenet").value == 1.0
    assert len(det.detect(faces["obama.jpg"])[0].landmarks) == 5


# ------------------------------------------------------------------- face diagnostics, detector floor, ISM summary
def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(x, (0, 0), sigma)


def _noise(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return np.clip(np.round(x + np.random.default_rng(seed).normal(0, sigma, x.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def small_faces() -> list[np.ndarray]:
    """Three sample faces (two identities and the astronaut) at 320² with the face about 45 % of the side."""
    return [_portrait(n, size=320) for n in ("obama.jpg", "biden.jpg", "astronaut.png")]


def test_qualityface_falls_on_blurred_and_noisy_faces(small_faces):
    clean = M.qualityface(small_faces)
    assert clean.n_detected == 3 and "QualityFace" in clean.backend and "BRISQUE" not in clean.backend
    assert clean.value > 0.85 and all(0.0 <= v <= 1.0 for v in clean.per_image)
    blurred = {s: M.qualityface([_blur(x, s) for x in small_faces]).per_image for s in (1, 2, 4)}
    noisy = M.qualityface([_noise(x, 30) for x in small_faces])
    assert noisy.n_detected == 3 and clean.value - noisy.value > 0.05, noisy.per_image  # 0.90 -> 0.82 measured
    assert clean.value - np.mean(blurred[4]) > 0.4, blurred  # 0.90 -> 0.45 measured
    steps = [clean.per_image, blurred[1], blurred[2], blurred[4]]  # worse blur, lower score (face by face)
    assert all(a > b for s1, s2 in zip(steps, steps[1:]) for a, b in zip(s1, s2)), steps


def test_face_brisque_sees_jpeg_blocks_that_qualityface_misses_on_a_face_that_fills_the_frame():
    """At 128 px a face filling a 512² photo is shrunk 4×, which hides JPEG q5's blocks from QualityFace; the
    face box's BRISQUE at full resolution sees them. Two diagnostics, reported apart: no composite."""
    from gapdiff_core.metrics.face_iqa import face_box_brisque

    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        clean = _portrait(name, size=512, margin=0.9)
        a = [M.analyze_faces([x], embedder=None) for x in (clean, _jpeg(clean, 5))]
        learned = [M.qualityface([x], analyses=ax).value for x, ax in zip((clean, _jpeg(clean, 5)), a)]
        box = [M.face_brisque([x], analyses=ax) for x, ax in zip((clean, _jpeg(clean, 5)), a)]
        assert box[0].value == pytest.approx(face_box_brisque(clean, a[0].items[0].largest))
        assert box[1].value - box[0].value > 10, (name, box)
        assert abs(learned[1] - learned[0]) < 0.1, (name, learned)


def test_face_diagnostics_average_the_detected_faces_only(faces):
    imgs = [faces["obama.jpg"], _non_faces()[0], faces["biden.jpg"]]
    for r in (M.qualityface(imgs), M.face_brisque(imgs)):
        assert r.n_images == 3 and r.n_detected == 2 and r.per_image[1] is None
        assert r.value == pytest.approx((r.per_image[0] + r.per_image[2]) / 2)
    assert M.qualityface(_non_faces()[:2]).value is None and M.face_brisque(_non_faces()[:2]).value is None


def test_qualityface_checkpoint_loads_weights_only_into_our_mobilenet():
    from gapdiff_core.metrics import face_iqa

    net = face_iqa.load_qualityface()
    state = torch.load(face_iqa.qualityface_checkpoint(), map_location="cpu", weights_only=True)
    # the checkpoint's two copies of the backbone are the same tensors; ours holds them
    w = state["module.backbone.net.features.18.0.weight"]
    torch.testing.assert_close(net.backbone.features[18][0].weight, w)
    torch.testing.assert_close(net.classify.weight, state["module.classify.weight"])
    grey = np.full((2, 128, 128, 3), 127, np.uint8)
    out = face_iqa.qualityface_scores(grey)
    assert out.shape == (2,) and np.isfinite(out).all() and out[0] == pytest.approx(out[1])


def _tight(name: str) -> np.ndarray:
    return _portrait(name, size=512, margin=0.85)  # forehead and chin cut off, as in tight dataset crops


def test_retinaface_finds_tightly_cropped_faces():
    tight = [_tight(n) for n in FACE_NAMES]
    retina = M.reference_detection_rate(tight, backend="retinaface-mobilenet")
    yunet = M.reference_detection_rate(tight, backend="yunet")
    assert (retina.value, retina.n_detected, retina.missed) == (1.0, 5, [])
    assert retina.backend == "retinaface-mobilenet" and retina.threshold == 0.9
    assert yunet.value <= retina.value
    assert M.fdfr(_non_faces(), backend="retinaface-mobilenet").value == 1.0


def test_reference_detection_rate_names_the_missed_photos(faces):
    r = M.reference_detection_rate([faces["obama.jpg"], _non_faces()[0], faces["biden.jpg"], _non_faces()[1]])
    assert r.value == 0.5 and r.n_images == 4 and r.n_detected == 2 and r.missed == [1, 3]
    assert r.to_dict()["backend"] == "retinaface-mobilenet"


def test_ism_across_identities_follows_the_official_rule(faces):
    refs = [faces["obama2.jpg"], faces["obama3.jpg"]]
    a = M.ism([faces["obama.jpg"], faces["biden.jpg"]], refs)  # 2 faces
    b = M.ism(_non_faces()[:2], refs)  # no face: value None
    c = M.ism([faces["obama.jpg"], _non_faces()[0]], refs)  # 1 face of 2 images
    s = M.ism_across_identities([a, b, c.to_dict()])
    assert b.value is None and (a.n_detected, c.n_detected) == (2, 1)
    assert s.n_identities == 3 and s.n_identities_without_face == 1 and s.n_faces == 3
    assert s.value == pytest.approx((a.value + 0.0 + c.value) / 3)  # empty identity adds 0, still counts
    faces_mean = np.mean([v for v in a.per_image + c.per_image if v is not None])
    assert s.value_detected_faces == pytest.approx(faces_mean)
    none = M.ism_across_identities([b])
    assert none.value == 0.0 and none.value_detected_faces is None
    with pytest.raises(ValueError, match="no identities"):
        M.ism_across_identities([])


def test_evaluate_images_reports_the_face_diagnostics_apart(faces):
    gen = [faces["obama.jpg"], _non_faces()[1]]
    out = M.evaluate_images(gen, serfiq_T=10)
    assert "face_quality" not in out and out["fdfr"]["per_image"] == [0.0, 1.0]
    assert out["qualityface"]["per_image"][0] == pytest.approx(M.qualityface(gen).per_image[0], abs=1e-6)
    assert out["face_brisque"]["per_image"] == pytest.approx(M.face_brisque(gen).per_image)
    assert out["qualityface"]["per_image"][1] is None and out["face_brisque"]["n_detected"] == 1
    assert "QualityFace" in out["backends"]["qualityface"] and "BRISQUE" in out["backends"]["face_brisque"]


def test_implausible_detections_are_dropped():
    from gapdiff_core.metrics.face_base import Face, ranked

    lm = np.zeros((5, 2), np.float32)
    faces = [Face((0.0, 0.0, float("inf"), 10.0), lm, 0.99), Face((1.0, 2.0, 30.0, 30.0), lm, 0.95),
             Face((1.0, 2.0, 30.0, 30.0), lm + np.nan, 0.97), Face((5.0, 5.0, 20.0, 20.0), lm, 0.98),
             Face((4.1e27, 5.7e27, 0.0, 0.0), lm, 1.0), Face((-90.0, 5.0, 60.0, 20.0), lm, 0.96)]
    assert [f.score for f in ranked(faces, (64, 64, 3))] == [0.98, 0.95]


def test_ssim_in_strips_equals_the_whole_image():
    from gapdiff_core.metrics.fidelity import ssim, ssim_uint8

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (600, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    whole = float(ssim(torch.from_numpy(b).permute(2, 0, 1)[None].float() / 255,
                       torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255)[0])
    assert ssim_uint8(b, a) == pytest.approx(whole, abs=1e-5)
    assert np.isnan(ssim_uint8(a[:10], b[:10]))


def test_metric_directions_and_formats_have_one_home():
    from gapdiff_core.metrics.directions import METRICS, PROTOCOL_METRICS, format_signed, format_value

    assert " ".join(METRICS[k].heading for k in PROTOCOL_METRICS) == "FDFR↑ ISM↓ BRISQUE↑ SER-FIQ↓"  # the paper's
    assert METRICS["qualityface"].heading == "QualityFace↓" and METRICS["identity_gain"].heading == "identity gain↓"
    assert METRICS["face_brisque"].heading == "face-box BRISQUE↑" and "face_quality" not in METRICS
    assert METRICS["ism"].direction == "lower = stronger protection"
    assert [format_value(v) for v in (None, float("nan"), float("inf"), -float("inf"), 0.12345, 2)] == \
        ["n/a", "n/a", "∞", "-∞", "0.123", "2.000"]
    assert format_value(31.456, 2) == "31.46"
    assert [format_signed(v) for v in (0.012345, -3.0e-5, 0.0, None, float("nan"))] == \
        ["+0.0123", "-3e-05", "+0", "n/a", "n/a"]


def test_fidelity_of_8_bit_photos_of_several_sizes_is_change_stats_and_ssim_of_each():
    from gapdiff_core.metrics.fidelity import change_stats, ssim_uint8

    rng = np.random.default_rng(3)
    clean = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 40, 3), (24, 32, 3))]
    prot = [np.clip(c.astype(int) + rng.integers(-5, 6, c.shape), 0, 255).astype(np.uint8) for c in clean]
    fid = M.protection_fidelity(prot, clean)
    assert fid["per_image_psnr_db"] == [change_stats(c, p).psnr for p, c in zip(prot, clean)]
    assert fid["linf_grey_levels"] == 5.0 and fid["per_image_ssim"] == [ssim_uint8(p, c) for p, c in zip(prot, clean)]
    assert M.protection_fidelity(clean, clean)["psnr_db"] == float("inf")
    with pytest.raises(ValueError, match="2 protected and 1 clean"):
        M.protection_fidelity(prot, clean[:1])


def test_change_stats_takes_read_only_photos_without_a_warning():
    """A decoded JPEG (np.asarray of a PIL image) is read-only; torch warns once per process when given one, so the
    check runs in a fresh interpreter with warnings as errors."""
    import os
    import subprocess
    import sys

    code = ("import warnings, numpy as np; warnings.simplefilter('error'); "
            "from gapdiff_core.metrics.fidelity import change_stats; a = np.arange(48, dtype=np.uint8).reshape(4, 4, 3);"
            " b = a + 1; a.flags.writeable = b.flags.writeable = False; s = change_stats(a, b); "
            "assert s.max_change == 1 and abs(s.psnr - 20 * np.log10(255)) < 1e-9")
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
