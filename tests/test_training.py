"""Generator training on the tiny surrogate: learning signal, exact resume, two-process run, config and data.

The model tests run real 512x512 steps (the generator's minimum size) with an ngf=8 generator and batch 1, so they
are kept to a handful of steps; the two-process run is marked ``distributed`` (select with ``-m distributed``).
"""
import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from gapdiff_core.model.checkpoint import load_generator  # noqa: E402
from gapdiff_core.model.generator import Generator  # noqa: E402
from gapdiff_core.training import Trainer, load_config, usable_images  # noqa: E402
from gapdiff_core.training import state as ckpt  # noqa: E402
from gapdiff_core.losses import fixed_timesteps  # noqa: E402
from gapdiff_core.training.validation import evaluate_generator, validation_images  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(ngf=8, disc_ngf=8, batch_size=1, val_count=1, log_every=1, val_every=10**6, checkpoint_every=10**6,
            progress=False, tensorboard=False, sample_latents=False)


@pytest.fixture(scope="module")
def surrogate():
    from gapdiff_core.diffusion import Surrogate

    return Surrogate.tiny(0)


# ---------------------------------------------------------------- config and data (fast)
def test_config_file_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 6\nweighting: uniform\npreprocess: official\n")
    cfg = load_config(path, ["max_steps=3", "weighting=min_snr", "augment=true", "adam_betas=[0.5, 0.9]"])
    assert (cfg.batch_size, cfg.max_steps, cfg.weighting, cfg.augment, cfg.preprocess) == \
        (6, 3, "min_snr", True, "official")
    assert cfg.adam_betas == [0.5, 0.9]
    with pytest.raises(ValueError, match="unknown training config keys.*'bach_size'"):
        load_config(path, ["bach_size=2"])
    with pytest.raises(ValueError, match="weighting"):
        load_config(None, ["weighting=cosine"])
    with pytest.raises(ValueError, match="multiple of 256"):
        load_config(None, ["resolution=300"])
    for name in ("paper", "official", "tiny-cpu"):
        load_config(ROOT / "train" / "configs" / f"{name}.yaml")


def test_training_budget_follows_the_one_budget_rule():
    """The rule of common/budget.py (1-255 grey levels), as every protection method and command: a budget of 0.5
    used to pass ``budget > 0`` and train a generator whose 8-bit output cannot change."""
    from gapdiff_core.common.budget import BUDGET_RULE, BudgetError

    for bad in (0.5, 0, 256, float("nan")):
        with pytest.raises(BudgetError) as err:
            load_config(None, budget=bad)
        assert str(err.value) == f"training config: budget must be {BUDGET_RULE}, not {bad!r}"
    assert load_config(None, budget=1).budget == 1 and load_config(None, budget=255).budget == 255


@pytest.mark.parametrize("item, words", [
    ("max_steps=abc", "max_steps='abc': must be a whole number"),
    ("max_steps=-1", "max_steps=-1: must be >= 1"),  # used to exit 0 with an untrained generator exported
    ("max_steps=0", "max_steps=0: must be >= 1"),
    ("lr=abc", "lr='abc': must be a number"),
    ("lr=nan", "lr='nan': must be a number"),
    ("augment=3", "augment=3: must be true or false"),
    ("ngf=1000", "ngf=1000: must be 1-128"),
    ("val_jpeg_quality=0", "val_jpeg_quality=0: must be 1-100"),
    ("train_dir=5", "train_dir=5: must be text"),
    ("adam_betas=[1, 2]", "adam_betas=[1, 2]: must be two numbers in [0, 1)"),
    ("preprocess=[1,", "override 'preprocess=[1,': the value is not valid YAML (line 1, column 4"),
    ("preprocess=sometimes", "preprocess='sometimes'; use default, official, none"),
])
def test_bad_set_values_are_one_line_errors_before_any_model_loads(item, words, monkeypatch, capsys):
    """Each value is checked for its key's type and range when the config is read; `gapdiff train` exits 2 with one
    line naming key and value (max_steps=abc used to fail in a traceback after the models had loaded)."""
    import gapdiff_core.training as training
    from gapdiff_core.cli import main

    monkeypatch.setattr(training, "Trainer", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["train", "--set", item]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_numbers_pyyaml_reads_as_text_are_numbers():
    """PyYAML reads 5e-4 as a string (YAML 1.1 wants 5.0e-4); a number key takes it as the number it reads as."""
    assert load_config(None, ["lr=5e-4", "alpha=1e-3"]).lr == 5e-4
    assert load_config(None, ["alpha=1e-3"]).alpha == 1e-3


@pytest.mark.parametrize("name, text, words", [
    ("c.yaml", "batch_size: [1, 2\nlr: 3\n", "c.yaml: not valid YAML (line 2, column 3: expected ',' or ']'"),
    ("c.yaml", "a: b: c\n", "c.yaml: not valid YAML (line 1, column 5: mapping values are not allowed here)"),
    ("c.json", '{"lr": \n', "c.json: not valid JSON (Expecting value"),
    ("c.toml", "lr = [\n", "c.toml: not valid TOML ("),
    ("c.yaml", b"\xff\xfe\x00", "c.yaml: not a text file (UTF-8)"),
])
def test_malformed_config_files_are_one_line_errors(tmp_path, name, text, words, capsys):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    from gapdiff_core.cli import main

    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_paper_config_marks_where_each_setting_comes_from():
    """Every setting of paper.yaml says whether the paper, the official code or this project fixes it."""
    import re

    lines = [line for line in (ROOT / "train" / "configs" / "paper.yaml").read_text().splitlines()
             if re.match(r"[a-z_]+:", line)]
    assert len(lines) >= 25
    unmarked = [line for line in lines if not re.search(r"#.*\[(paper|official|proposal)\]", line)]
    assert unmarked == []
    assert load_config(ROOT / "train" / "configs" / "paper.yaml").finetune_on == "protected"


def test_dataset_skips_too_small_and_too_oblong(tmp_path, caplog):
    for name, size in {"ok.png": (600, 700), "small.png": (200, 200), "long.png": (1200, 400)}.items():
        Image.new("RGB", size, (120, 80, 40)).save(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    kept, skipped = usable_images(sorted(tmp_path.iterdir()), 512)
    assert [p.name for p in kept] == ["ok.png"]
    reasons = {p.name: why for p, why in skipped}
    assert "too small" in reasons["small.png"] and "too oblong" in reasons["long.png"]
    assert "unreadable" in reasons["broken.jpg"]
    assert "skipping" in caplog.text


# ---------------------------------------------------------------- the learning signal
@pytest.mark.slow
def test_training_raises_adversarial_effect_on_held_out_images(tmp_path, surrogate):
    """A few steps must beat the untrained generator AND random ±budget noise on a held-out photo, by margins that
    fail when the perturbation's gradient path is cut (checked by detaching it in the adversarial loss).

    The random tiny UNet first gets a short denoising warm-up: untrained, its GroupNorm'd output barely depends on
    the input, so no perturbation can move its error (per-image PGD gains ~0.05 %).

    Protection normalises each photo with its own statistics (the function the authors ran at inference, dropout
    off), so even an untrained generator makes a structured, nearly saturated +-budget perturbation (gain 4.3e-4
    here); 32 steps double it (8.4e-4; 16 steps gave only 5.9e-4)."""
    cfg = load_config(None, **TINY, output_dir=str(tmp_path), lr=0.01, max_steps=32, beta=1.0, gamma=0.0,
                      preprocess="none", surrogate_warmup_steps=30)
    trainer = Trainer(cfg, surrogate=surrogate)
    held_out = validation_images(trainer.val_paths, 512, 1)
    assert trainer.val_paths[0] not in trainer.dataset.paths
    t = fixed_timesteps(2)
    torch.manual_seed(cfg.seed)
    untrained = evaluate_generator(Generator(8), surrogate, held_out, cfg.budget, trainer.instance_embeds, t,
                                   sample_latents=False)
    trainer.run(validate=False)
    trained = evaluate_generator(trainer.unwrapped_generator(), surrogate, held_out, cfg.budget,
                                 trainer.instance_embeds, t, sample_latents=False)
    clean = trained["adv_clean"]
    random_gain = abs(trained["adv_random"] - clean)
    untrained_gain = abs(untrained["adv_protected"] - clean)
    gain = trained["adv_protected"] - clean
    assert gain > 3 * random_gain, (trained, untrained)
    assert gain > 1.5 * untrained_gain, (trained, untrained)
    assert trained["max_abs_grey"] <= cfg.budget + 0.5 + 1e-4  # rounding a non-grid input adds at most 0.5
    exported = load_generator(tmp_path / cfg.export_name)
    assert exported.info.demo is True and exported.info.budget == cfg.budget and exported.info.ngf == 8


# ---------------------------------------------------------------- surrogate warm-up
@pytest.fixture
def one_thread():
    """Small tensors: one thread avoids oversubscription on a shared machine (the warm-up ran 10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_surrogate_warm_up_streams_its_batches_and_rebuilds_the_same_surrogate(tmp_path, surrogate, monkeypatch,
                                                                              one_thread):
    """The warm-up holds at most one batch (2) of training images at a time and reads at most steps x batch of them,
    whatever the dataset's size (it used to stack the whole dataset onto the device); a second run (as a resumed one)
    rebuilds exactly the same surrogate."""
    import weakref

    from gapdiff_core.training.data import ImageFolderDataset

    faces = tmp_path / "faces"
    faces.mkdir()
    g = torch.Generator().manual_seed(5)
    for i in range(9):
        pixels = (torch.rand(256, 256, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(pixels).save(faces / f"{i}.png")
    alive, peak, reads = [0], [0], [0]
    read = ImageFolderDataset.__getitem__

    def counted(self, i):
        x = read(self, i)
        alive[0] += 1
        reads[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(x, lambda: alive.__setitem__(0, alive[0] - 1))
        return x

    monkeypatch.setattr(ImageFolderDataset, "__getitem__", counted)
    runs = [Trainer(load_config(None, **TINY, train_dir=str(faces), output_dir=str(tmp_path / name), max_steps=1,
                                surrogate_warmup_steps=2), surrogate=_private_copy(surrogate)) for name in ("a", "b")]
    assert len(runs[0].dataset) == 8 and peak[0] <= 2 and 0 < reads[0] <= 2 * 2 * 2  # 2 runs x 2 steps x batch 2
    first, second = (r.surrogate.unet.state_dict() for r in runs)
    untrained = surrogate.unet.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert sum(not torch.equal(first[k], untrained[k]) for k in first) > len(first) // 2


# ---------------------------------------------------------------- exact resume
def _resume_config(tmp_path, name):
    return load_config(None, **{**TINY, "checkpoint_every": 2}, output_dir=str(tmp_path / name), lr=0.01,
                       max_steps=4, beta=0.0, gamma=1.0, preprocess="default", finetune_steps=1, finetune_every=2,
                       finetune_lr=1e-4, augment=True)


@pytest.mark.slow
def test_killed_and_resumed_run_follows_the_uninterrupted_trajectory(tmp_path):
    from gapdiff_core.diffusion import Surrogate

    full = Trainer(_resume_config(tmp_path, "full"), surrogate=Surrogate.tiny(0))
    assert full.steps_per_epoch == 3  # 3 training photos, batch 1: the resumed part crosses into epoch 1
    full.run(validate=False)
    first = Trainer(_resume_config(tmp_path, "split"), surrogate=Surrogate.tiny(0))
    first.run(validate=False, stop_after=3)  # "killed" after step 3, mid-epoch: its last checkpoint is step 2
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "split" / "checkpoints")] == ["step-00000002"]
    second = Trainer(_resume_config(tmp_path, "split"), surrogate=Surrogate.tiny(0))
    second.run(validate=False, resume="auto")
    assert second.step == 4 and [r["step"] for r in second.history] == [3, 4]  # step 4 opens epoch 1
    assert second.run_id == first.run_id
    # log.csv: step 3, logged by the killed run and again after the resume, appears once (the resumed run's)
    with (tmp_path / "split" / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[2]["loss_total"]) == pytest.approx(second.history[0]["loss_total"], rel=1e-6)
    keys = ("loss_total", "loss_gan", "adv_preprocessed", "d_loss", "finetune_loss")
    for got, want in zip(first.history[:2] + second.history, full.history):
        assert got["preprocess"] == want["preprocess"]
        for k in keys:
            if k in want:
                assert got[k] == pytest.approx(want[k], abs=1e-6), (k, got, want)
    for a, b in zip(second.unwrapped_generator().state_dict().values(),
                    full.unwrapped_generator().state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


# ---------------------------------------------------------------- a reused output folder
def test_a_reused_output_folder_neither_loses_nor_mixes_runs(tmp_path, surrogate):
    out = tmp_path / "run"
    base = {**TINY, "checkpoint_every": 1, "keep_checkpoints": 1, "beta": 0.0, "gamma": 0.0, "output_dir": str(out)}
    first = Trainer(load_config(None, **base, max_steps=2), surrogate=surrogate)
    first.run(validate=False)
    export = out / "generator.safetensors"
    saved = export.read_bytes()
    other = load_config(None, **base, max_steps=1, seed=7, lr=5e-4)
    second = Trainer(other, surrogate=surrogate)
    with pytest.raises(ckpt.ResumeError, match="already holds training run .*--resume auto.*--overwrite"):
        second.run(validate=False)
    with pytest.raises(ckpt.ResumeError, match=r"differs in lr .*max_steps .*seed \(0 -> 7\)"):
        second.run(validate=False, resume="auto")
    assert export.read_bytes() == saved  # nothing of the first run was touched
    assert ckpt.read_run(out)["run_id"] == first.run_id
    second.run(validate=False, overwrite=True)
    info = load_generator(export).info
    assert second.run_id != first.run_id and f"run {second.run_id} " in info.provenance
    assert "seed 7" in info.provenance and info.training_config["seed"] == 7 and info.training_config["lr"] == 5e-4
    [only] = ckpt.list_checkpoints(out / "checkpoints")
    assert ckpt.read_meta(only)["run_id"] == second.run_id and only.name == "step-00000001"


# ---------------------------------------------------------------- what the surrogate is fine-tuned on (L_ft)
def test_finetune_on_chooses_the_instance_images_of_the_surrogate_step(tmp_path, surrogate, monkeypatch):
    """``finetune_on: clean`` fine-tunes on the clean batch (ASPL-like), ``protected`` on [protected; p(protected)]
    (the default), ``both`` on all three; checked on what the DreamBooth loss actually receives."""
    from gapdiff_core import losses

    seen = []

    def spy(s, instance, *args, **kwargs):  # records the instance images; a zero loss keeps the step cheap
        seen.append(instance.detach().clone())
        return sum(p.sum() for p in s.unet.parameters()) * 0.0

    monkeypatch.setattr(losses, "instance_and_prior_loss", spy)
    cfg = load_config(None, **TINY, output_dir=str(tmp_path), max_steps=3, beta=0.0, gamma=0.0, finetune_steps=1,
                      finetune_every=1, preprocess="default", finetune_on="clean")
    trainer = Trainer(cfg, surrogate=_private_copy(surrogate))
    clean = trainer.dataset[0][None]
    for on in ("clean", "protected", "both"):
        trainer.cfg.finetune_on = on
        trainer.train_step(clean)
    by_clean, by_protected, by_both = seen
    assert torch.equal(by_clean, clean)
    assert by_protected.shape[0] == 2 and not torch.allclose(by_protected[:1], clean, atol=1e-4)
    assert (by_protected[:1] - clean).abs().max() <= cfg.budget / 255 + 1e-6
    assert by_both.shape[0] == 3 and torch.equal(by_both[:1], clean)
    with pytest.raises(ValueError, match="finetune_on='noisy'; choose one of protected, clean, both"):
        load_config(None, finetune_on="noisy")


def _private_copy(surrogate):
    """A private copy of the shared tiny surrogate (fine-tuning changes its UNet)."""
    import copy

    return copy.deepcopy(surrogate)


# ---------------------------------------------------------------- two processes (torchrun, MULTI_CPU over gloo)
@pytest.mark.distributed
def test_two_process_run_synchronises_and_writes_one_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with socket.socket() as s:  # a port free now, on loopback only (a fixed one clashes with other runs)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           str(ROOT / "train" / "train.py"), str(ROOT / "train" / "configs" / "tiny-cpu.yaml"),
           "--set", "max_steps=3", "checkpoint_every=3", "surrogate_warmup_steps=0", f"output_dir={out}", "beta=1.0", "gamma=0.0",
           "preprocess=none", "val_every=1000000", "val_timesteps=1", "progress=false", "tensorboard=false", "augment=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "in_sync=True processes=2" in proc.stdout
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step-00000003"]
    assert (out / "generator.safetensors").is_file()


@pytest.mark.slow
def test_demo_generator_is_saved_and_labelled_as_demo(tmp_path):
    from gapdiff_core.training import train_demo_generator

    path = train_demo_generator(tmp_path / "demo" / "generator.safetensors", steps=2, minutes=1.0)
    g = load_generator(path)
    assert g.info.demo is True and g.info.ngf == 8 and "tiny" in g.info.surrogate
    assert g.info.training_config["max_steps"] == 2


# ---------------------------------------------------------------- one trainer per output folder
def _hold_run_lock(out: Path) -> subprocess.Popen:
    """A child process that holds ``out``'s training lock until killed."""
    code = ("import sys, time\nfrom gapdiff_core.training.lock import holding_run_lock\n"
            "with holding_run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline() == "held\n"
    return child


@pytest.mark.slow
def test_a_second_trainer_on_one_output_folder_is_refused_naming_the_first(tmp_path, surrogate, monkeypatch,
                                                                            capsys):
    """While one trainer holds the folder, `gapdiff train` (before loading models) and Trainer.run (before writing
    anything) refuse, naming its pid, host and start time; killed with SIGKILL, it leaves nothing held, and a new
    run starts in the folder that holds only the lock file. (Two trainers used to interleave one log.csv.)"""
    import gapdiff_core.training as training
    from gapdiff_core.cli import main
    from gapdiff_core.training.lock import LOCK_FILE, RunLockedError

    out = tmp_path / "run"
    child = _hold_run_lock(out)
    try:
        holder = f"pid {child.pid} on {socket.gethostname()}, started 20"
        with monkeypatch.context() as m:
            m.setattr(training, "Trainer", lambda *a, **k: pytest.fail("a model was loaded"))
            assert main(["train", "--set", f"output_dir={out}", "max_steps=1", "--resume", "auto"]) == 2
        err = capsys.readouterr().err
        assert f"{out}: another trainer is writing to this output folder ({holder}" in err, err
        trainer = Trainer(load_config(None, **TINY, output_dir=str(out), max_steps=1), surrogate=surrogate)
        with pytest.raises(RunLockedError, match=re.escape(holder)):
            trainer.run(validate=False)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing
    finally:
        child.kill()
        child.wait()
    summary = trainer.run(validate=False)  # the dead holder's lock is gone with it; its lock file is no obstacle
    assert summary["finished"] and (out / "generator.safetensors").is_file()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()  # the holder's record is this run's


def test_the_lock_module_works_without_fcntl(tmp_path, monkeypatch):
    """Windows has no fcntl: the training package (imported by the app and the nodes) still imports and runs, the
    folder unlocked there."""
    import importlib
    import sys

    import gapdiff_core.training.lock as lock

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    importlib.reload(lock)
    with lock.holding_run_lock(tmp_path / "out"):
        with lock.holding_run_lock(tmp_path / "out"):  # no advisory lock without fcntl: not refused
            lock.check_run_unlocked(tmp_path / "out")
    monkeypatch.undo()
    importlib.reload(lock)
