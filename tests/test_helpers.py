"""The shared helpers that each concept has one home in: seeds, amplified perturbation, short-side size, optimizer
state, prompts, the JPEG robustness measurement."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gapdiff_core.common import prompts, seeds
from gapdiff_core.common.optimizer_state import flatten_optimizer, unflatten_optimizer
from gapdiff_core.metrics.fidelity import DiffStats, change_stats
from gapdiff_core.metrics.robustness import jpeg_robustness, jpeg_uint8
from gapdiff_core.common.sizes import short_side_size
from gapdiff_core.common.visualize import amplification, amplified_perturbation, row_blocks

ROOT = Path(__file__).resolve().parent.parent


def test_derived_seeds_keep_the_values_training_and_attacks_have_always_used():
    # the mixes the training loop, its data and the DreamBooth attack used before they shared one function
    assert seeds.derive_seed(seeds.STEP, 3, 1, 5) == (3 * 1_000_003 + 1 * 7_919 + 5) % 2 ** 63
    assert seeds.derive_seed(seeds.AUGMENT, 3, 2, 7) == 3 * 1_000_003 + 2 * 10_007 + 7
    assert seeds.derive_seed(seeds.EPOCH, 3, 4) == 3 * 7919 + 4
    assert seeds.derive_seed(seeds.PROCESS, 3, 1) == 3001
    assert seeds.derive_seed(seeds.STEP, 2 ** 62, 0, 0) < 2 ** 63  # always a valid manual_seed
    with pytest.raises(ValueError, match="takes 3 parts"):
        seeds.derive_seed(seeds.STEP, 1, 2)


def test_amplified_perturbation_is_grey_where_unchanged_and_spans_the_range_at_the_budget():
    rng = np.random.default_rng(0)
    clean = rng.integers(20, 236, (1100, 7, 3), dtype=np.uint8)  # more rows than one block
    diff = rng.integers(-8, 9, clean.shape)
    prot = (clean + diff).astype(np.uint8)
    vis, gain = amplified_perturbation(clean, prot, 8)
    assert gain == amplification(8) == 127.5 / 8
    np.testing.assert_array_equal(vis, np.clip(np.round(127.5 + diff * gain), 0, 255))
    assert set(vis[diff == 0].tolist()) == {128} and set(vis[diff == 8].tolist()) == {255}
    assert set(vis[diff == -8].tolist()) == {0}
    # float input on the 0-255 scale gives the same image; a larger change is clipped
    np.testing.assert_array_equal(amplified_perturbation(clean / 1.0, prot / 1.0, 8)[0], vis)
    assert amplified_perturbation(clean[:1], clean[:1] + 20, 8)[0].min() == 255
    with pytest.raises(ValueError, match="protected image"):
        amplified_perturbation(clean, prot[:5], 8)
    assert [(s.start, s.stop) for s in row_blocks(1100)] == [(0, 512), (512, 1024), (1024, 1100)]


def test_short_side_size_keeps_the_aspect():
    assert short_side_size(3024, 4032, 512) == (512, 683)
    assert short_side_size(4032, 3024, 512) == (683, 512)
    assert short_side_size(64, 64, 32) == (32, 32)
    assert short_side_size(10, 1000, 20) == (20, 2000)


def test_optimizer_state_round_trips_through_flat_tensors():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = {}, {}
    flatten_optimizer("opt", opt.state_dict(), tensors, meta)
    assert sorted(tensors) == ["opt/0/exp_avg", "opt/0/exp_avg_sq", "opt/0/step", "opt/1/exp_avg", "opt/1/exp_avg_sq",
                               "opt/1/step"]
    restored = torch.optim.AdamW(model.parameters(), lr=0.5)
    restored.load_state_dict(unflatten_optimizer("opt", tensors, meta))
    a, b = opt.state_dict(), restored.state_dict()
    assert b["param_groups"][0]["lr"] == 0.1
    for i in (0, 1):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][i][k], b["state"][i][k])


def test_the_attack_class_images_generation_and_protections_run_with_the_prompts_of_prompts_py(tmp_path, monkeypatch):
    """The prompts of common/prompts.py are the ones the code runs with, not copies retyped elsewhere: what the text
    encoder is asked to encode by the DreamBooth attack, the class-image cache, sampling and the protections (the
    empty prompt is classifier-free guidance's unconditional one); the documented protocol names the same ones."""
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from gapdiff_core.attack import DreamBoothAttack, GenerationConfig, generate, preset
    from gapdiff_core.diffusion import Surrogate
    from gapdiff_core.protections import get_protection

    encoded = []
    encode = Surrogate.encode_prompt
    monkeypatch.setattr(Surrogate, "encode_prompt", lambda self, p: encoded.extend([p] if isinstance(p, str) else p)
                        or encode(self, p))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids oversubscription on a shared machine
    try:
        base, photos = Surrogate.tiny(0), torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        cfg = preset("tiny-lora", resolution=32, max_train_steps=1, num_class_images=1, class_steps=1,
                     class_batch_size=1, save_model=False)
        attacked = DreamBoothAttack(base, cfg, cache_dir=tmp_path).run(photos, tmp_path / "attack").surrogate
        assert set(encoded) - {""} == {prompts.INSTANCE_PROMPT, prompts.CLASS_PROMPT}
        [info] = (tmp_path / "class-images").rglob("info.json")
        assert json.loads(info.read_text(encoding="utf-8"))["prompt"] == prompts.CLASS_PROMPT
        encoded.clear()
        assert generate(attacked, GenerationConfig(images_per_prompt=1, steps=1, resolution=32)).prompts == \
            list(prompts.PAPER_PROMPTS)
        assert set(encoded) - {""} == set(prompts.PAPER_PROMPTS) and len(prompts.PAPER_PROMPTS) == 4
        for name, expected in (("aspl", {prompts.INSTANCE_PROMPT, prompts.CLASS_PROMPT}),
                               ("caat", {prompts.CAAT_PROMPT})):
            encoded.clear()
            get_protection(name, base, schedule="tiny", resolution=32, class_cache_dir=tmp_path,
                           **({"iterations": 1, "pgd_steps": 1} if name == "aspl" else {"steps": 1})).protect(photos)
            assert set(encoded) - {""} == expected, name
    finally:
        torch.set_num_threads(threads)
    documented = (ROOT / "docs" / "differences-from-official.md").read_text(encoding="utf-8")
    assert f'Instance prompt `instance_prompt` ("{prompts.INSTANCE_PROMPT}"), class prompt `class_prompt` ' \
           f'("{prompts.CLASS_PROMPT}")' in " ".join(documented.split())


def test_jpeg_robustness_measures_what_survives():
    rng = np.random.default_rng(1)
    clean = np.repeat(np.repeat(rng.integers(40, 216, (12, 12, 3), dtype=np.uint8), 8, 0), 8, 1)  # 96 x 96, smooth
    noise = (rng.integers(0, 2, clean.shape) * 2 - 1) * 8
    prot = (clean + noise).astype(np.uint8)
    r = jpeg_robustness(clean, prot, 75)
    np.testing.assert_array_equal(r.clean_jpeg, jpeg_uint8(clean, 75))
    assert r.before.max == 8 and r.before.rms == pytest.approx(8.0)
    assert 0 < r.energy_kept < 1 and 0 < r.correlation < 1  # JPEG removes much of +-8 pixel noise
    same = jpeg_robustness(clean, clean, 75)
    assert same.before.sq == 0 and same.correlation == 0 and same.effect is None
    d = DiffStats(clean, prot)
    assert d.cross(d) == pytest.approx(1.0) and d.psnr == pytest.approx(10 * np.log10(255 ** 2 / 64))
    jpeg_change = change_stats(r.clean_jpeg, r.protected_jpeg)  # the block-wise statistics are the one PSNR / L∞
    assert (r.after.max, r.after.psnr) == (jpeg_change.max_change, jpeg_change.psnr)
    with pytest.raises(ValueError, match="quality"):
        jpeg_robustness(clean, prot, 0)
    with pytest.raises(ValueError, match="clean one"):
        jpeg_robustness(clean, prot[:50], 75)
