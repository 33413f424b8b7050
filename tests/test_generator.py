"""The generator computes the official function and official checkpoints load strictly and safely."""
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from gapdiff_core import CheckpointError, Generator, GeneratorInfo, load_generator, save_generator
from gapdiff_core.model.generator import Discriminator, InferenceGenerator, generator_flops
from gapdiff_core.model.packed_cpu import OneDNNGenerator, _transposed_as_subpixel, pack_for_cpu


def official_forward(sd: dict, x: torch.Tensor, batch_statistics: bool = False) -> torch.Tensor:
    """Independent functional reading of the authors' Generator.forward, from a prefixed state dict: eval mode, or
    with `batch_statistics` train-mode BatchNorm without dropout (per image when x holds one image).

    Like the original it applies LeakyReLU(0.2) *in place* to each encoder output, so the skips carry the
    activated tensors.
    """
    p = lambda name: sd["generator." + name]  # noqa: E731

    def bn(t, name):
        if batch_statistics:
            return F.batch_norm(t, None, None, p(f"{name}.weight"), p(f"{name}.bias"), True, 0.0, 1e-5)
        return F.batch_norm(t, p(f"{name}.running_mean"), p(f"{name}.running_var"), p(f"{name}.weight"),
                            p(f"{name}.bias"), False, 0.0, 1e-5)

    def conv(t, i):
        return F.conv2d(t, p(f"conv{i}.weight"), p(f"conv{i}.bias"), 2, 1)

    def dconv(t, i):
        return F.conv_transpose2d(F.selu(t), p(f"dconv{i}.weight"), p(f"dconv{i}.bias"), 2, 1)

    e = [None, conv(x, 1)]
    norms = {2: "norm2", 3: "norm4", 4: "norm8", 5: "norm8", 6: "norm8", 7: "norm8"}
    for i in range(2, 8):
        e.append(bn(conv(F.leaky_relu_(e[i - 1], 0.2), i), norms[i]))
    h = conv(F.leaky_relu_(e[7], 0.2), 8)
    for b in range(4):
        q = f"bottle_neck.{b}.conv_block"
        r = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), p(f"{q}.1.weight"))
        r = F.relu(bn(r, f"{q}.2"))
        r = F.conv2d(F.pad(r, (1, 1, 1, 1), mode="reflect"), p(f"{q}.5.weight"))
        h = h + bn(r, f"{q}.6")
    dec_norm = {1: "norm8", 2: "norm8", 3: "norm8", 4: "norm8", 5: "norm4", 6: "norm2", 7: "norm"}
    for i in range(1, 8):
        h = torch.cat((bn(dconv(h, i), dec_norm[i]), e[8 - i]), 1)
    return torch.tanh(dconv(h, 8))


def official_state_dict(ngf=64, seed=0) -> dict:
    """A state dict as the authors' Generator_Prelayer saves it: random weights, non-trivial BN statistics."""
    torch.manual_seed(seed)
    g = Generator(ngf)
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.num_batches_tracked.fill_(1234)
    return {"generator." + k: v.clone() for k, v in g.state_dict().items()}


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    sd = official_state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "G_per16_pretrain.pth"
    torch.save(sd, path)
    return path, sd


def test_parameter_count_keys_and_flops():
    g = Generator()
    assert sum(p.numel() for p in g.parameters()) == 73_294_083
    assert len(g.state_dict()) == 100
    assert generator_flops(512, 512) == pytest.approx(48.5e9, rel=0.01)


@pytest.mark.parametrize("size", [(512, 512), (768, 1024)])
def test_official_checkpoint_loads_strictly_and_matches_official_forward(official_pth, size):
    path, sd = official_pth
    g = load_generator(path)
    assert not g.training and g.info.ngf == 64
    torch.manual_seed(1)
    x = torch.rand(1, 3, *size) * 2 - 1
    with torch.no_grad():
        ours = g(x)
        ref = official_forward(sd, x.clone())
    assert ours.shape == (1, 3, *size)
    assert ref.abs().max() > 0.05  # the reference is not degenerate
    assert (ours - ref).abs().max().item() < 1e-4


def test_eval_mode_is_deterministic_and_train_mode_is_stochastic(official_pth):
    g = load_generator(official_pth[0])
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), g(x))
        g.train()
        assert not torch.equal(g(x), g(x))  # dropout is on in the official generate.py


def test_invalid_input_size_is_explained():
    with pytest.raises(ValueError, match="multiples of 256"):
        Generator(8)(torch.zeros(1, 3, 500, 512))


def test_safetensors_round_trip_keeps_weights_and_metadata(tmp_path):
    g = load_generator_from_sd(official_state_dict(ngf=8))
    info = GeneratorInfo(ngf=8, budget=6, working_resolution=512, demo=True, provenance="test",
                         surrogate="tiny", training_config={"lr": 0.001})
    path = save_generator(g, tmp_path / "g.safetensors", info)
    g2 = load_generator(path)
    assert g2.info.demo is True and g2.info.budget == 6 and g2.info.training_config == {"lr": 0.001}
    assert "DEMO" in g2.info.describe()
    for (k, a), (_, b) in zip(g.state_dict().items(), g2.state_dict().items()):
        assert torch.equal(a, b), k
    assert list(tmp_path.iterdir()) == [path]  # atomic write leaves no temporary file


def load_generator_from_sd(sd):
    g = Generator(sd["generator.conv1.weight"].shape[0])
    g.load_state_dict({k.removeprefix("generator."): v for k, v in sd.items()})
    return g.eval()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_generator(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_wrong_truncated_and_foreign_files_fail_clearly(tmp_path, official_pth):
    sd = dict(official_pth[1])
    del sd["generator.norm.weight"]
    sd["generator.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"wrong\.pth.*missing keys: norm\.weight.*unexpected keys: extra"):
        load_generator(tmp_path / "wrong.pth")

    data = official_pth[0].read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_generator(tmp_path / "trunc.pth")

    from safetensors.torch import save_file
    save_file({"model.diffusion_model.x": torch.zeros(2)}, tmp_path / "sd.safetensors")
    with pytest.raises(CheckpointError, match="sd.safetensors.*not a GAP-Diff generator"):
        load_generator(tmp_path / "sd.safetensors")

    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_generator(tmp_path / "empty.safetensors")
    with pytest.raises(CheckpointError, match="no such"):
        load_generator(tmp_path / "missing.pth")


def test_discriminator_official_keys_and_logit():
    d = Discriminator()
    assert set(d.state_dict()) >= {"conv_init.weight", "conv.weight", "bn.running_mean", "linear.weight"}
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1)


def per_image_reference(sd, x):
    return torch.cat([official_forward(sd, x[i:i + 1].clone(), batch_statistics=True) for i in range(len(x))])


@pytest.mark.parametrize("norm", ["image", "running"])
def test_inference_generator_computes_the_chosen_function(official_pth, norm):
    path, sd = official_pth
    torch.manual_seed(2)
    x = torch.rand(2, 3, 512, 768) * 2 - 1
    with torch.no_grad():
        ours = InferenceGenerator(load_generator(path), norm)(x.clone())
    ref = per_image_reference(sd, x) if norm == "image" else official_forward(sd, x.clone())
    # Per-image statistics over the 2 x 2 bottleneck amplify rounding (seen: 1.4e-4); 2e-3 is 0.016 grey levels.
    assert (ours - ref).abs().max().item() < (2e-3 if norm == "image" else 1e-4)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize("norm,size", [("image", (512, 512)), ("image", (768, 1024)), ("running", (512, 512)),
                                       ("running", (768, 1024))])
@pytest.mark.slow
def test_packed_cpu_generator_matches_official_forward(official_pth, norm, size):
    path, sd = official_pth
    packed = pack_for_cpu(InferenceGenerator(load_generator(path), norm).to(memory_format=torch.channels_last))
    assert isinstance(packed, OneDNNGenerator)
    torch.manual_seed(2)
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.inference_mode():
        ours = packed(x.contiguous(memory_format=torch.channels_last))
    ref = per_image_reference(sd, x) if norm == "image" else official_forward(sd, x.clone())
    # Per-image statistics over the 2 x 2 bottleneck amplify rounding (seen: 1.4e-4); 2e-3 is 0.016 grey levels.
    assert (ours - ref).abs().max().item() < (2e-3 if norm == "image" else 1e-4)


def test_packing_keeps_fp16_and_a_disabled_onednn_on_the_plain_path():
    model = InferenceGenerator(Generator(ngf=8).eval(), "running", torch.float16)
    assert pack_for_cpu(model) is model
    model = InferenceGenerator(Generator(ngf=8).eval())
    with torch.backends.mkldnn.flags(enabled=False):
        assert pack_for_cpu(model) is model


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_packing_checks_the_packed_ops_at_once_and_keeps_the_plain_model_if_they_fail(monkeypatch):
    """Packing can succeed and the packed ops still fail when run (an op this CPU or build lacks): pack_for_cpu
    runs one pass at once and then returns the plain model, with a single warning; where they work, the packed
    model computes the plain one's function."""
    import warnings

    torch.manual_seed(0)
    model = InferenceGenerator(Generator(ngf=8).eval()).to(memory_format=torch.channels_last)
    x = (torch.rand(1, 3, 512, 512) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = model(x)
        packed = pack_for_cpu(model)
        assert isinstance(packed, OneDNNGenerator) and (packed(x) - expected).abs().max().item() < 1e-4

        def unsupported(*args, **kwargs):
            raise RuntimeError("could not create a primitive")

        monkeypatch.setattr(OneDNNGenerator, "res_conv", unsupported)
        with pytest.warns(RuntimeWarning, match="could not create a primitive") as caught:
            fallback = pack_for_cpu(model)
        assert len(caught) == 1 and fallback is model
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing more at run time
            assert torch.equal(fallback(x), expected)


def test_small_maps_run_in_fp32_whatever_the_precision():
    model = InferenceGenerator(Generator(ngf=8).eval(), "image", torch.bfloat16)
    dtypes = [b.dtype for b in model.biases]
    assert dtypes[6:17] == [torch.float32] * 11 and set(dtypes[:6] + dtypes[17:]) == {torch.bfloat16}


def test_last_transposed_convolution_as_3x3_convolution_and_pixel_shuffle():
    torch.manual_seed(3)
    w, b, x = torch.randn(5, 3, 4, 4), torch.randn(3), torch.randn(2, 5, 7, 9)
    k, kb = _transposed_as_subpixel(w, b)
    ours = F.pixel_shuffle(F.conv2d(x, k, kb, padding=1), 2)
    assert (ours - F.conv_transpose2d(x, w, b, 2, 1)).abs().max().item() < 1e-5
