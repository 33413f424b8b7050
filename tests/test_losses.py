"""Unit tests of the GAP-Diff objective (gapdiff_core.losses) on a small stand-in surrogate."""
import math

import pytest
import torch

from gapdiff_core import losses

diffusers = pytest.importorskip("diffusers")


def scheduler(prediction_type="epsilon"):
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", prediction_type=prediction_type)


class StandIn:
    """Surrogate interface with two small convolutions as VAE encoder and UNet."""

    def __init__(self, prediction_type="epsilon"):
        torch.manual_seed(0)
        self.scheduler = scheduler(prediction_type)
        self.enc = torch.nn.Conv2d(3, 4, 8, stride=8)
        self.unet = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.enc.requires_grad_(False)
        self.unet.requires_grad_(False)

    def encode_images(self, x01, sample=True):
        return self.enc(x01 * 2 - 1)

    def predict(self, noisy, t, emb):
        return self.unet(noisy) + emb.mean() * 0


@pytest.mark.parametrize("scheme", losses.TIMESTEP_WEIGHTINGS)
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_weights_have_mean_one_over_all_timesteps(scheme, kind):
    s = scheduler(kind)
    w = losses.timestep_weights(s, torch.arange(1000), scheme)
    assert w.shape == (1000,) and torch.all(w > 0)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-5)


def test_weighting_shapes():
    s, t = scheduler(), torch.tensor([10, 500, 990])
    assert torch.equal(losses.timestep_weights(s, t, "uniform"), torch.ones(3))
    min_snr = losses.timestep_weights(s, t, "min_snr")
    assert min_snr[0] < min_snr[1] <= min_snr[2]  # small t (huge SNR) down-weighted, capped at gamma
    assert torch.equal(min_snr, losses.timestep_weights(s, t, "snr"))
    snr = losses.snr(s, t)
    raw = torch.clamp(snr, max=5.0) / snr
    assert torch.allclose(min_snr / min_snr[2], raw / raw[2])
    small = losses.timestep_weights(s, t, "small_t")
    assert small[0] > small[1] > small[2]
    with pytest.raises(ValueError, match="unknown timestep weighting"):
        losses.timestep_weights(s, t, "cosine")


def test_gaussian_noise_by_default_uniform_only_when_asked():
    z = torch.zeros(200_000)
    torch.manual_seed(0)
    g = losses.draw_noise(z)
    u = losses.draw_noise(z, official_uniform_noise=True)
    assert abs(float(g.mean())) < 0.01 and abs(float(g.std()) - 1) < 0.01 and float(g.min()) < -3
    assert float(u.min()) >= 0 and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01


def test_targets_epsilon_and_velocity():
    s = scheduler("v_prediction")
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([100, 800])
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(losses.diffusion_target(s, x0, eps, t), v, atol=1e-5)
    assert losses.diffusion_target(scheduler(), x0, eps, t) is eps


def test_distances():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0)
    assert torch.equal(losses.distance(a, b, "mse"), torch.full((2,), 4.0))
    assert torch.equal(losses.distance(a, b, "l1"), torch.full((2,), 2.0))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_adversarial_loss_is_negated_weighted_error_and_reaches_the_image(kind):
    sur = StandIn(kind)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    emb = torch.zeros(1, 77, 8)
    t = torch.tensor([50, 700])
    torch.manual_seed(1)
    err = losses.denoising_error(sur, x, emb, timesteps=t, weighting="min_snr")
    torch.manual_seed(1)
    loss = losses.adversarial_loss(sur, x, emb, timesteps=t, weighting="min_snr")
    assert float(loss.detach()) == pytest.approx(-float(err.detach().mean()), rel=1e-6)
    torch.manual_seed(1)
    plain = losses.denoising_error(sur, x, emb, timesteps=t)
    w = losses.timestep_weights(sur.scheduler, t, "min_snr")
    assert torch.allclose(err, plain * w, rtol=1e-5)
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert sur.unet.weight.grad is None  # frozen surrogate: nothing piles up


def test_official_schedule_and_constant():
    w = losses.LossWeights(alpha=0.001, beta=0.3, gamma=0.7)
    assert losses.scheduled_weights("constant", w, 0.1) == w
    first = losses.scheduled_weights("official", w, 0.79)
    second = losses.scheduled_weights("official", w, 0.8)
    assert (first.beta, first.gamma, first.alpha) == (0.0, 1.0, 0.001)
    assert (second.beta, second.gamma) == (0.6, 0.4)
    with pytest.raises(ValueError):
        losses.scheduled_weights("linear", w, 0.5)


def test_gan_losses_match_bce():
    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1))
    clean, fake = torch.randn(3, 3, 2, 2), torch.randn(3, 3, 2, 2, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expect = bce(d(clean), torch.ones(3, 1)) + bce(d(fake), torch.zeros(3, 1))
    assert float(losses.discriminator_loss(d, clean, fake)) == pytest.approx(float(expect), rel=1e-6)
    losses.discriminator_fake_loss(d, fake).backward()
    assert fake.grad is None  # the critic step does not reach the generator
    g = losses.generator_gan_loss(d, fake)
    assert float(g) == pytest.approx(float(bce(d(fake), torch.ones(3, 1))), rel=1e-6)


def test_instance_and_prior_loss_trains_only_trainable_parts_and_prior_adds():
    sur = StandIn()
    sur.unet.requires_grad_(True)
    inst, cls, emb = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.zeros(2, 77, 8)
    torch.manual_seed(3)
    only = losses.instance_and_prior_loss(sur, inst, emb, cls, emb, prior_weight=0.0)
    torch.manual_seed(3)
    with_prior = losses.instance_and_prior_loss(sur, inst, emb, cls, emb, prior_weight=1.0)
    assert float(with_prior) > float(only) > 0
    with_prior.backward()
    assert float(sur.unet.weight.grad.abs().sum()) > 0 and sur.enc.weight.grad is None
    assert math.isfinite(float(with_prior))
