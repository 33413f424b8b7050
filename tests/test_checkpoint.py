"""Broken and hostile generator checkpoints: each is refused with a CheckpointError naming the file and the problem,
before it can cost memory, produce silent no-op outputs or print terminal escapes."""
import json
import os
import stat

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from gapdiff_core import Generator, GeneratorInfo, save_generator
from gapdiff_core.common.budget import BUDGET_RULE
from gapdiff_core.model import checkpoint
from gapdiff_core.model.checkpoint import CheckpointError, load_generator, printable, read_info, read_safetensors
from gapdiff_core.cli import main


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in Generator(ngf=8).state_dict().items()}


def write_safetensors(path, state, **meta):
    metadata = {"format": "pt", "architecture": "gap-diff-unet", "gapdiff.format_version": "1"}
    metadata.update({k: json.dumps(v) for k, v in meta.items()})
    save_file(state, str(path), metadata=metadata)
    return path


def refused(path, *words):
    with pytest.raises(CheckpointError) as exc:
        load_generator(path)
    message = str(exc.value)
    assert str(path) in message and all(w in message for w in words), message
    return message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path, state, value):
    bad = dict(state)
    bad["dconv8.weight"] = bad["dconv8.weight"].clone()
    bad["dconv8.weight"][0, 0, 0, 0] = value
    refused(write_safetensors(tmp_path / "g.safetensors", bad), "dconv8.weight", "NaN or infinite")
    torch.save({"generator." + k: v for k, v in bad.items()}, tmp_path / "g.pth")
    refused(tmp_path / "g.pth", "dconv8.weight", "NaN or infinite")


@pytest.mark.parametrize("field, value, words", [
    ("working_resolution", 16384, "64-2048"),
    ("working_resolution", 0, "64-2048"),
    ("working_resolution", "abc", "whole number"),
    ("working_resolution", 512.5, "whole number"),
    ("budget", 0, "1-255"),
    ("budget", 0.5, "1-255"),
    ("budget", 1e9, "1-255"),
    ("budget", float("nan"), "number of grey levels"),
    ("budget", [1, 2], "number of grey levels"),
    ("budget", True, "number of grey levels"),
    ("ngf", "x", "whole number"),
    ("ngf", 100000, "1-128"),
    ("demo", "yes", "true or false"),
    ("provenance", {"a": 1}, "string"),
    ("surrogate", 3, "string"),
    ("training_config", [1], "JSON object"),
])
def test_metadata_of_wrong_type_or_range_is_refused(tmp_path, state, field, value, words):
    path = write_safetensors(tmp_path / "g.safetensors", state, **{field: value})
    refused(path, repr(field), words)
    with pytest.raises(CheckpointError, match=words):  # listing a models folder checks the metadata the same way
        read_info(path)
    if field != "ngf":  # the writer checks the same ranges, so gapdiff never writes such a file
        with pytest.raises(CheckpointError):
            save_generator(Generator(ngf=8), tmp_path / "h.safetensors", GeneratorInfo(ngf=8, **{field: value}))


@pytest.mark.parametrize("budget", [0.5, 256])
def test_metadata_budget_follows_the_one_budget_rule(tmp_path, state, budget):
    """A checkpoint's budget is checked by common.budget.check_budget, and refused in its words."""
    refused(write_safetensors(tmp_path / "g.safetensors", state, budget=budget), "'budget'", BUDGET_RULE)


def test_metadata_that_is_not_json_is_refused(tmp_path, state):
    path = write_safetensors(tmp_path / "g.safetensors", state)
    tensors, _ = read_safetensors(path)
    save_file(tensors, str(path), metadata={"format": "pt", "budget": "[[[["})
    refused(path, "'budget'", "not valid JSON")


def test_state_dicts_of_the_wrong_kind_are_refused(tmp_path, state):
    cases = {
        "intkey": ({1: torch.zeros(3), **state}, "keys must be tensor names"),
        "tuplekey": ({("a",): torch.zeros(3)}, "keys must be tensor names"),
        "zero_d": ({**state, "conv1.weight": torch.tensor(2.0)}, "conv1.weight has shape ()"),
        "zero_d_inner": ({**state, "conv2.weight": torch.tensor(2.0)}, "wrong shapes: conv2.weight"),
        "integers": ({k: v.long() if v.is_floating_point() else v for k, v in state.items()}, "floating point"),
        "booleans": ({k: v.bool() if v.is_floating_point() else v for k, v in state.items()}, "floating point"),
        "complex": ({k: v.to(torch.complex64) if v.is_floating_point() else v for k, v in state.items()},
                    "floating point"),
        "float_counter": ({k: v.float() for k, v in state.items()}, "num_batches_tracked"),
    }
    for name, (bad, words) in cases.items():
        torch.save(bad, tmp_path / f"{name}.pth")
        refused(tmp_path / f"{name}.pth", words)
    ints = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()}
    refused(write_safetensors(tmp_path / "ints.safetensors", ints), "floating point")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}  # a half-precision file is fine
    assert load_generator(write_safetensors(tmp_path / "half.safetensors", half)).conv1.weight.dtype == torch.float32


def test_pth_zip_bomb_is_refused_before_unpacking(tmp_path, monkeypatch, zip_bomb_pth):
    zip_bomb_pth(tmp_path / "bomb.pth")

    def unpack(*args, **kwargs):
        raise AssertionError("torch.load ran on a zip bomb")

    monkeypatch.setattr(torch, "load", unpack)
    refused(tmp_path / "bomb.pth", "declares 67,", "zip bomb")


def test_generator_files_follow_the_umask(tmp_path, fsynced):
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        previous = os.umask(umask)
        try:
            path = save_generator(Generator(ngf=8), tmp_path / f"g{umask:o}.safetensors", GeneratorInfo(ngf=8))
        finally:
            os.umask(previous)
        assert stat.S_IMODE(path.stat().st_mode) == mode
        assert fsynced.has(path) and fsynced.has(tmp_path)  # on disk before the rename, and the rename too
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_control_characters_in_metadata_are_escaped(tmp_path, state, capsys):
    path = write_safetensors(tmp_path / "g.safetensors", state, provenance="\x1b[31mRED\x1b]0;title\x07 \x1b[2J",
                             surrogate="sd\r\nFAKE LINE \u202eevil \x9b2J", training_config={"k": "\x1b[5m"})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for raw in ("\x1b", "\x07", "\r", "\u202e", "\x9b", "FAKE LINE\n"):
        assert raw not in out
    assert "\\x1b[31mRED" in out and "sd\\r\\nFAKE LINE \\u202eevil \\x9b2J" in out
    assert printable("photo é 日本 ok") == "photo é 日本 ok"


def test_info_and_protect_refuse_bad_checkpoints_with_exit_code_2(tmp_path, state, capsys):
    path = write_safetensors(tmp_path / "g.safetensors", state, working_resolution=16384)
    assert main(["info", str(path)]) == 2
    assert main(["protect", str(tmp_path), "-o", str(tmp_path / "out"), "-g", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("'working_resolution' is 16384") == 2 and "Traceback" not in err


def test_read_info_reads_metadata_without_loading_weights(tmp_path, state, monkeypatch):
    """Listing a models folder must not read each file's weights (the official generator has 73 M parameters):
    `read_info` takes the metadata and the width from the header (safetensors) or a memory map (.pth)."""
    sft = tmp_path / "g.safetensors"
    save_generator(load_generator(write_safetensors(sft, state)), sft,
                   GeneratorInfo(ngf=8, budget=12.0, demo=True, provenance="unit test", surrogate="none"))
    pth = tmp_path / "official.pth"
    torch.save({"generator." + k: v for k, v in state.items()}, pth)
    real_open, real_load, loads = checkpoint.safe_open, torch.load, []

    class HeaderOnly:
        def __init__(self, *args, **kwargs):
            self._file = real_open(*args, **kwargs)

        def __enter__(self):
            self._open = self._file.__enter__()
            return self

        def __exit__(self, *exc):
            return self._file.__exit__(*exc)

        def get_tensor(self, name):
            raise AssertionError(f"read_info loaded the tensor {name}")

        def __getattr__(self, name):
            return getattr(self._open, name)

    def load(*args, **kwargs):
        loads.append(kwargs.get("mmap"))
        return real_load(*args, **kwargs)

    def no_model(*args, **kwargs):
        raise AssertionError("read_info built a generator")

    monkeypatch.setattr(checkpoint, "safe_open", HeaderOnly)
    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(checkpoint, "Generator", no_model)
    info = read_info(sft)
    assert (info.ngf, info.budget, info.demo, info.provenance, info.source) == (8, 12.0, True, "unit test", str(sft))
    official = read_info(pth)
    assert (official.ngf, official.demo, official.budget) == (8, False, 8.0) and "official" in official.provenance
    assert loads == [True]  # the .pth state dict is memory-mapped, not read
    for bad, words in ((tmp_path / "none.safetensors", "no such"), (tmp_path / "x.pth", "no such")):
        with pytest.raises(CheckpointError, match=words):
            read_info(bad)
    torch.save({"conv1.weight": torch.zeros(200, 3, 7, 7)}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"shape \(200, 3, 7, 7\)"):
        read_info(tmp_path / "wide.pth")


def test_every_generator_suffix_loads_and_lists(tmp_path, state):
    """model.checkpoint.GENERATOR_SUFFIXES, the one list the UI and the ComfyUI loader offer, names only files
    that load_generator and read_info read, with the same weights."""
    assert checkpoint.GENERATOR_SUFFIXES[0] == ".safetensors"
    expected = load_generator(write_safetensors(tmp_path / "g.safetensors", state)).state_dict()
    for suffix in checkpoint.GENERATOR_SUFFIXES[1:]:
        path = tmp_path / f"official{suffix}"
        torch.save({"generator." + k: v for k, v in state.items()}, path)
        assert read_info(path).ngf == 8
        loaded = load_generator(path).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def _as(state, dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float64])
def test_float8_and_other_float_weights_run_widened_to_float32(tmp_path, state, dtype, capsys):
    """float8 files load (widened exactly to float32: the NaN check works on them), and info, convert and protect
    run on them."""
    path = write_safetensors(tmp_path / "g.safetensors", _as(state, dtype))
    generator = load_generator(path)
    assert generator.conv1.weight.dtype == torch.float32
    assert torch.equal(generator.conv1.weight, state["conv1.weight"].to(dtype).float())
    assert read_info(path).ngf == 8
    photo = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (120, 90, 60)).save(photo)
    assert main(["info", str(path)]) == 0
    assert main(["convert", str(path), str(tmp_path / "c.safetensors")]) == 0
    assert main(["protect", str(photo), "-o", str(tmp_path / "out"), "-g", str(path), "--precision", "fp32"]) == 0
    nan = _as(state, dtype)
    nan["dconv8.weight"] = nan["dconv8.weight"].clone()
    nan["dconv8.weight"][0, 0, 0, 0] = float("nan")
    refused(write_safetensors(tmp_path / "nan.safetensors", nan), "dconv8.weight", "NaN or infinite")


@pytest.mark.parametrize("dtype, name", [(torch.int32, "int32"), (torch.int8, "int8"), (torch.uint8, "uint8"),
                                         (torch.bool, "bool"), (torch.float8_e8m0fnu, "float8_e8m0fnu")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_the_generator_cannot_run_are_refused_by_type_everywhere(tmp_path, state, dtype, name, suffix,
                                                                         capsys):
    """Refused with their type named, by load_generator and read_info (so the app's listing marks the file
    unreadable instead of usable), and by info, convert and protect without a traceback."""
    from gapdiff_core.ui.generators import list_generators

    bad = _as(state, dtype)
    path = tmp_path / f"g{suffix}"
    if suffix == ".pth":
        torch.save(bad, path)
    else:
        try:
            write_safetensors(path, bad)
        except Exception:  # noqa: BLE001 - this safetensors version cannot store the type: nothing to refuse
            pytest.skip(f"safetensors cannot write {name}")
    words = (f"{name} (", "tensors: ", "cannot run", "floating point")
    refused(path, *words)
    with pytest.raises(CheckpointError) as exc:
        read_info(path)
    assert all(w in str(exc.value) for w in words), exc.value
    [entry] = list_generators(tmp_path)
    assert entry.info is None and "[unreadable]" in entry.choice and f"{name} (" in entry.error
    photo = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (120, 90, 60)).save(photo)
    capsys.readouterr()
    for argv in (["info", str(path)], ["convert", str(path), str(tmp_path / "c.safetensors")],
                 ["protect", str(photo), "-o", str(tmp_path / "out"), "-g", str(path)]):
        assert main(argv) != 0, argv
        err = capsys.readouterr().err
        assert f"{name} (" in err and "Traceback" not in err, (argv, err)


def test_convert_keeps_a_gapdiff_files_metadata_unless_a_flag_sets_it(tmp_path, capsys):
    """Converting a gapdiff .safetensors keeps its budget, resolution, surrogate, provenance, demo label and training
    config (it used to write the official .pth defaults over them: protect then used twice the trained budget);
    each flag overrides its own field only. An official .pth still gets the official defaults."""
    mine = GeneratorInfo(ngf=8, budget=4, working_resolution=256, demo=True, provenance="trained by me",
                         surrogate="my-sd15", training_config={"lr": 0.001})
    source = save_generator(Generator(ngf=8), tmp_path / "mine.safetensors", mine)
    assert main(["convert", str(source), str(tmp_path / "kept.safetensors")]) == 0
    assert "kept the metadata" in capsys.readouterr().out
    kept = read_info(tmp_path / "kept.safetensors")
    assert (kept.budget, kept.working_resolution, kept.surrogate, kept.provenance, kept.demo, kept.training_config) \
        == (4, 256, "my-sd15", "trained by me", True, {"lr": 0.001})
    assert main(["convert", str(source), str(tmp_path / "set.safetensors"), "--budget", "6",
                 "--surrogate", "sd21"]) == 0
    assert "except --budget, --surrogate" in capsys.readouterr().out
    changed = read_info(tmp_path / "set.safetensors")
    assert (changed.budget, changed.working_resolution, changed.surrogate, changed.provenance) \
        == (6, 256, "sd21", "trained by me")
    torch.save(Generator(ngf=8).state_dict(), tmp_path / "G.pth")
    assert main(["convert", str(tmp_path / "G.pth"), str(tmp_path / "official.safetensors"),
                 "--working-resolution", "384"]) == 0
    official = read_info(tmp_path / "official.safetensors")
    assert (official.budget, official.working_resolution, official.surrogate) == (8, 384, "stable-diffusion-2-1-base")
    assert official.provenance == "converted from G.pth (official GAP-Diff format)"
