"""`gapdiff demo` end to end at toy sizes (32 px, 1 image per prompt, 2 attack steps, a stand-in demo generator)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from gapdiff_core.commands import demo

pytestmark = pytest.mark.slow


def _fake_training(out_path, minutes=1.0, progress=False, **kw):
    from gapdiff_core.model.checkpoint import GeneratorInfo, save_generator
    from gapdiff_core.model.generator import Generator

    torch.manual_seed(0)
    return save_generator(Generator(ngf=4).eval(), out_path, GeneratorInfo(ngf=4, demo=True, provenance="test"))


def test_demo_writes_labelled_reports(tmp_path, monkeypatch, capsys):
    import gapdiff_core.training as training

    monkeypatch.setattr(training, "train_demo_generator", _fake_training)
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    out = tmp_path / "demo_out"
    args = parser.parse_args(["--out", str(out), "--quality", "70", "--resolution", "32", "--images-per-prompt", "1",
                              "--steps", "1", "--attack-steps", "2"])
    threads = torch.get_num_threads()
    try:
        assert demo.run(args) == 0  # sets torch to 1 thread (the demo's default)
    finally:
        torch.set_num_threads(threads)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert printed and all(line.startswith(demo.DEMO) for line in printed)
    assert (out / "cache" / "demo_generator.safetensors").is_file()
    results = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert results["is_demo"] and len(results["runs"]) == 4
    assert {r["method_kind"] for r in results["runs"]} == {"none", "gap-diff"}
    assert {r["transform"] for r in results["runs"]} == {"none", "jpeg:70"}
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "DEMO ON A TOY MODEL" in page and "data:image/png;base64," in page and "<svg" in page
    assert "DEMO" in (out / "report.md").read_text(encoding="utf-8")
