"""`gapdiff export --format onnx`: the protection function on onnxruntime (CPU) matches the torch path."""
import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from gapdiff_core import Generator, GeneratorInfo, Protector, save_generator  # noqa: E402
from gapdiff_core.cli import main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory, record_fsyncs):
    """A tiny generator and its ONNX export, written by the command line (one export for the module: slow),
    atomically: fsynced before its rename, no temporary left."""
    torch.manual_seed(0)
    g = Generator(ngf=8)
    with torch.no_grad():
        g.dconv8.weight.mul_(40)  # saturate the output so the budget is reached
    folder = tmp_path_factory.mktemp("onnx")
    save_generator(g.eval(), folder / "g.safetensors", GeneratorInfo(ngf=8, budget=8, demo=True, provenance="test"))
    with record_fsyncs() as log:
        assert main(["export", "-g", str(folder / "g.safetensors"), "-o", str(folder / "g.onnx")]) == 0
    assert log.has(folder / "g.onnx") and log.has(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["g.onnx", "g.safetensors"]
    session = ort.InferenceSession(str(folder / "g.onnx"), providers=["CPUExecutionProvider"])
    return g.eval(), session, folder


def run(session, photos, budget):
    out = session.run(None, {"images": photos.transpose(0, 3, 1, 2).copy(), "budget": np.array([budget], np.float32)})
    return out[0].transpose(0, 2, 3, 1)


@pytest.mark.parametrize("size", [(512, 683), (300, 800)])
def test_onnxruntime_matches_torch_within_one_grey_level_at_budget_8(exported, size):
    g, session, _ = exported
    photos = np.random.default_rng(size[1]).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    ours = run(session, photos, 8.0)
    torch_path = Protector(g, budget=8, mode="native", norm="image", precision="fp32", device="cpu")
    reference = torch_path.protect_uint8(photos)
    assert ours.dtype == np.uint8 and ours.shape == photos.shape
    diff = np.abs(ours.astype(int) - reference.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert np.abs(ours.astype(int) - photos.astype(int)).max() == 8  # the budget is reached and never exceeded


def test_batch_mates_and_budget_input(exported):
    _, session, _ = exported
    photos = np.random.default_rng(5).integers(0, 256, (3, 384, 520, 3), dtype=np.uint8)
    together = run(session, photos, 4.0)
    for i in range(3):  # per-image normalisation: a photo's result does not depend on its batch mates
        np.testing.assert_array_equal(run(session, photos[i:i + 1], 4.0)[0], together[i])
    assert np.abs(together.astype(int) - photos.astype(int)).max() == 4


def test_export_refuses_to_overwrite_and_reports_a_missing_generator(exported, capsys):
    _, _, folder = exported
    assert main(["export", "-g", str(folder / "g.safetensors"), "-o", str(folder / "g.onnx")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "-g", str(folder / "missing.safetensors"), "-o", str(folder / "m.onnx")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_export_to_a_folder_fails_before_exporting_and_names_it(tmp_path, monkeypatch, capsys):
    """An -o that is a folder (or lies under a file) is refused at once, naming the path; it used to fail only after
    the export, naming the hidden temporary."""
    import gapdiff_core.model.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "load_generator", lambda *a, **k: pytest.fail("the export ran"))
    (tmp_path / "out").mkdir()
    (tmp_path / "file").write_text("x")
    for out, words in ((tmp_path / "out", "is a folder"), (tmp_path / "file" / "g.onnx", "is a file, not a folder")):
        for extra in ([], ["--overwrite"]):
            assert main(["export", "-g", "g.safetensors", "-o", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert str(out) in err and words in err and ".tmp" not in err, err
