"""Competing protections: each runs end to end on the tiny surrogate within the budget; ASPL raises the loss."""
import threading

import pytest
import torch

from gapdiff_core.diffusion import Surrogate
from gapdiff_core.losses import denoising_error
from gapdiff_core.protections import CLOSED, METHODS, ProtectionCancelled, get_protection

RES = 64  # working resolution of the tests (the tiny model's VAE downsamples by 8)


@pytest.fixture(scope="module")
def surrogate():
    torch.set_num_threads(1)  # the shared 2-core machine: oversubscription makes small ops 10x slower
    return Surrogate.tiny(0)


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 72, 88, generator=g)  # not square, not the working size: resize path is used


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_and_respects_the_budget(surrogate, photo, name):
    method = get_protection(name, surrogate, schedule="tiny", resolution=RES)
    out = method.protect(photo)
    assert out.shape == photo.shape
    diff = (out * 255 - torch.round(photo * 255)).abs()
    assert torch.allclose(out * 255, torch.round(out * 255), atol=1e-3)  # 8-bit values
    assert diff.max() <= int(method.budget) + 1e-4
    assert diff.max() >= 1  # something was changed
    assert method.stats, "the step loop recorded no work"


def test_budget_override_in_grey_levels(surrogate, photo):
    out = get_protection("photoguard", surrogate, schedule="tiny", resolution=RES, budget=2).protect(photo)
    assert (out * 255 - torch.round(photo * 255)).abs().max() <= 2 + 1e-4


def _loss(surrogate, x, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        torch.manual_seed(seed)
        xs = x.repeat(16, 1, 1, 1)
        t = torch.randint(0, 1000, (xs.shape[0],), generator=g)
        return denoising_error(surrogate, xs, surrogate.encode_prompt("a photo of sks person"), timesteps=t).mean()


def test_aspl_increases_the_denoising_loss(surrogate):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, RES, RES, generator=g) * 0.6 + 0.2
    method = get_protection("aspl", surrogate, resolution=RES, iterations=1, surrogate_steps=1, pgd_steps=6,
                            budget=8, step=1.5)
    y = method.protect(x)
    signs = torch.randint(0, 2, x.shape, generator=g) * 2 - 1
    noisy = (torch.round(x * 255) + 8 * signs).clamp(0, 255) / 255  # a random perturbation of the same size
    clean = _loss(surrogate, x).item()
    adversarial, random = _loss(surrogate, y).item() - clean, _loss(surrogate, noisy).item() - clean
    # the random tiny model barely looks at its input: the effect is small, but far above a random perturbation's
    assert adversarial > 0 and adversarial > 5 * abs(random), (clean, adversarial, random)


def test_progress_and_cancellation(surrogate, photo):
    seen = []
    stop = threading.Event()

    def progress(step, total, loss):
        seen.append((step, total))
        if step == 2:
            stop.set()

    method = get_protection("caat", surrogate, schedule="tiny", resolution=RES, progress=progress, should_stop=stop)
    with pytest.raises(ProtectionCancelled):
        method.protect(photo)
    assert seen[:2] == [(1, 3), (2, 3)]


def test_registry_errors_and_closed_methods():
    with pytest.raises(ValueError, match="closed source"):
        get_protection("glaze")
    with pytest.raises(ValueError, match="unknown protection"):
        get_protection("nope")
    assert "glaze" in CLOSED
    with pytest.raises(ValueError, match="unknown setting"):
        METHODS["aspl"](None, not_a_setting=1)


def test_defaults_follow_the_papers():
    assert METHODS["aspl"].defaults["budget"] == 6.4 and METHODS["aspl"].defaults["iterations"] == 50
    assert METHODS["simac"].defaults["budget"] == 8.0
    assert METHODS["metacloak"].defaults["budget"] == 11.0
    assert METHODS["ace"].defaults["budget"] == 4.0
    units = METHODS["aspl"](None).schedule_units(4)
    assert units["pgd"] == 50 * 6 * 4 and units["train"] == 300
