"""Training runs own their output folder: no run is lost or mixed, a kill at any moment of a checkpoint write leaves
a loadable checkpoint, every resume failure is a clear error, logs have no repeated rows after a resume.

The checkpoint-write tests fork a child that SIGKILLs itself at the N-th file-system call of the write (N = 1, 2, ...
until the write completes), so no ``finally`` or cleanup runs, as with ``kill -9``.
"""
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

from gapdiff_core.io import atomic
from gapdiff_core.training import state as ckpt
from gapdiff_core.training.config import TrainConfig

CONFIG = TrainConfig(max_steps=8, seed=0).to_dict()
RUN = "20260101-000000-aaaaaa"
KILL_POINTS = [(ckpt, "save_file"), (os, "fsync"), (os, "rename"), (os, "replace"), (os, "unlink"), (os, "rmdir"),
               (os, "mkdir"), (shutil, "rmtree")]


def _state(step: int, value: float, run_id: str = RUN, config: dict = CONFIG) -> tuple[dict, dict]:
    tensors = {"generator/w": torch.full((256,), float(value)), "rng/torch": torch.zeros(4, dtype=torch.uint8)}
    meta = {"step": step, "run_id": run_id, "config_hash": ckpt.config_hash(config), "config": config}
    return tensors, meta


def _make_run(out: Path, steps: dict, keep: int = 2, run_id: str = RUN, config: dict = CONFIG) -> None:
    """A run folder as a trainer leaves it: run.json, config.json, one checkpoint per {step: value}."""
    ckpt.start_run(out, ckpt.RunPlan(run_id), config)
    for step, value in steps.items():
        ckpt.save_checkpoint(out, step, *_state(step, value, run_id, config), keep=keep)


def _save_killed_at(out: Path, n: int, step: int, value: float, keep: int) -> bool:
    """Run save_checkpoint in a forked child that SIGKILLs itself at the n-th file-system call (a save_file call is
    first half-written). True if it was killed, False if the write completed before the n-th call."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            calls = [0]

            def hook(module, name):
                original = getattr(module, name)

                def hooked(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == n:
                        if name == "save_file":
                            original(*args, **kwargs)
                            os.truncate(args[1], os.path.getsize(args[1]) // 2)
                        os.kill(os.getpid(), signal.SIGKILL)
                    return original(*args, **kwargs)
                setattr(module, name, hooked)

            for module, name in KILL_POINTS:
                hook(module, name)
            ckpt.save_checkpoint(out, step, *_state(step, value), keep=keep)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the checkpoint write failed without being killed"
    return False


def _resumed_value(out: Path) -> float:
    """What ``--resume auto`` would load: the plan's checkpoint, read in full."""
    plan = ckpt.plan_run(out, CONFIG, "auto")
    assert plan.checkpoint is not None and plan.run_id == RUN
    tensors, meta = ckpt.read_checkpoint(plan.checkpoint)
    assert tensors["generator/w"].unique().numel() == 1
    return float(tensors["generator/w"][0])


# ---------------------------------------------------------------- kill -9 at every moment of a checkpoint write
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to SIGKILL a writer (POSIX)")
@pytest.mark.parametrize("keep, before, step, value", [
    (1, {2: 2.0}, 4, 4.0),            # keep_checkpoints=1: the new step, then the old one is pruned
    (1, {4: 4.0}, 4, 44.0),           # the same step written again (a resume from an older checkpoint)
    (2, {2: 2.0, 4: 4.0}, 6, 6.0),    # keep 2: step-2 is pruned after step-6 is in place
])
@pytest.mark.slow
def test_a_kill_at_any_moment_of_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, keep, before, step, value):
    newest = before[max(before)]
    points = 0
    for n in range(1, 500):
        out = tmp_path / f"kill-{n}"
        _make_run(out, before, keep=keep)
        killed = _save_killed_at(out, n, step, value, keep)
        got = _resumed_value(out)
        assert got in (newest, value), (n, got)
        record = ckpt.read_run(out)
        assert record["run_id"] == RUN and record["checkpoint_step"] in (max(before), step)
        # the resumed run writes its next checkpoint over whatever the kill left behind
        ckpt.start_run(out, ckpt.plan_run(out, CONFIG, "auto"), CONFIG)
        ckpt.save_checkpoint(out, step, *_state(step, value), keep=keep)
        assert _resumed_value(out) == value
        leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".") or
                     p.name.endswith(".old")]
        assert leftovers == [], (n, leftovers)
        if not killed:
            assert got == value
            break
        points += 1
    assert points >= 10  # every file-system call of the write was a kill point


def test_without_checkpoints_where_some_were_written_resume_auto_fails_clearly(tmp_path):
    out = tmp_path / "run"
    _make_run(out, {2: 2.0}, keep=1)
    atomic.remove_folder(out / "checkpoints" / "step-00000002")  # lost (by hand, or a disk problem)
    with pytest.raises(ckpt.ResumeError, match=r"wrote checkpoints \(the last at step 2\) but none is usable.*"
                                               r"Nothing was resumed.*--overwrite"):
        ckpt.plan_run(out, CONFIG, "auto")
    # a run killed before its first checkpoint starts again from 0, under its own id, and says so
    fresh = tmp_path / "early"
    _make_run(fresh, {})
    plan = ckpt.plan_run(fresh, CONFIG, "auto")
    assert plan.checkpoint is None and plan.run_id == RUN and "before its first checkpoint" in plan.note


def test_atomic_file_and_folder_writes(tmp_path):
    target = tmp_path / "a.json"
    atomic.write_text(target, "one")
    atomic.write_text(target, "two")
    assert target.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    mask = os.umask(0o027)
    try:
        atomic.write_text(target, "three")
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o640
    folder = tmp_path / "f"
    for text in ("first", "second"):
        with atomic.folder_beside(folder) as tmp:
            (tmp / "x").write_text(text)
    assert (folder / "x").read_text() == "second" and atomic.current(folder) == folder
    with pytest.raises(RuntimeError), atomic.folder_beside(folder) as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("failed while writing")
    assert (folder / "x").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "f"]
    # a kill between the two renames of a replacement: the complete previous version is NAME.old
    os.rename(folder, tmp_path / "f.old")
    assert atomic.current(folder) == tmp_path / "f.old"
    atomic.recover(tmp_path)
    assert (tmp_path / "f.old" / "x").read_text() == "second"


# ---------------------------------------------------------------- a reused output folder: no run lost or mixed
def test_a_new_run_refuses_a_used_output_folder(tmp_path):
    out = tmp_path / "run"
    _make_run(out, {2: 2.0})
    with pytest.raises(ckpt.ResumeError) as err:
        ckpt.plan_run(out, CONFIG)
    message = str(err.value)
    assert str(out) in message and "--resume auto" in message and "--overwrite" in message and RUN in message
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ckpt.ResumeError, match="notes.txt"):
        ckpt.plan_run(tmp_path / "other", CONFIG)
    with pytest.raises(ckpt.ResumeError, match="no training run to resume here"):
        ckpt.plan_run(tmp_path / "other", CONFIG, "auto")
    # --overwrite: the earlier run's files go, the user's own files stay
    (out / "generator.safetensors").write_bytes(b"old export")
    (out / "notes.txt").write_text("mine")
    plan = ckpt.plan_run(out, CONFIG, overwrite=True)
    ckpt.start_run(out, plan, CONFIG)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt", "run.json"]
    assert ckpt.read_run(out)["run_id"] == plan.run_id != RUN


def test_resume_never_continues_another_run_or_config(tmp_path):
    out = tmp_path / "run"
    _make_run(out, {2: 2.0})
    other = dict(CONFIG, seed=1, lr=5e-4)
    with pytest.raises(ckpt.ResumeError, match=r"different training config; differs in lr .*seed \(0 -> 1\)"):
        ckpt.plan_run(out, other, "auto")
    # operational settings may change on resume
    assert ckpt.plan_run(out, dict(CONFIG, progress=False, log_every=5, output_dir="moved"), "auto").checkpoint
    # a checkpoint of another run (same config) dropped into this run's folder is refused, as is resuming it here
    stranger = tmp_path / "stranger"
    _make_run(stranger, {6: 6.0}, run_id="20260101-000000-bbbbbb")
    shutil.copytree(stranger / "checkpoints" / "step-00000006", out / "checkpoints" / "step-00000006")
    with pytest.raises(ckpt.ResumeError, match="belongs to run 20260101-000000-bbbbbb.*refusing to mix runs"):
        ckpt.plan_run(out, CONFIG, "auto")
    with pytest.raises(ckpt.ResumeError, match="refusing to mix runs"):
        ckpt.plan_run(out, CONFIG, str(stranger / "checkpoints" / "step-00000006"))
    # into an empty folder, a checkpoint continues its own run
    plan = ckpt.plan_run(tmp_path / "elsewhere", CONFIG, str(stranger / "checkpoints" / "step-00000006"))
    assert plan.run_id == "20260101-000000-bbbbbb"
    # resume auto in an empty or missing folder starts a new run
    assert ckpt.plan_run(tmp_path / "new", CONFIG, "auto").checkpoint is None


def test_log_rows_past_the_resume_step_are_dropped(tmp_path):
    out = tmp_path / "run"
    _make_run(out, {2: 2.0})
    for step in (1, 2, 3):
        ckpt.append_log(out / "log.csv", {"step": step, "preprocess": "jpeg", "finetune_loss": 0.5, "loss": step})
    ckpt.start_run(out, ckpt.plan_run(out, CONFIG, "auto"), CONFIG)
    ckpt.append_log(out / "log.csv", {"step": 3, "preprocess": "blur", "loss": 30})  # no finetune_loss this step
    lines = (out / "log.csv").read_text().splitlines()
    assert lines == ["step,preprocess,finetune_loss,loss", "1,jpeg,0.5,1", "2,jpeg,0.5,2", "3,blur,,30"]


# ---------------------------------------------------------------- every `train --resume` failure is a clear error
def _cli(argv, capsys):
    import argparse

    from gapdiff_core.commands import train as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    rc = command.run(parser.parse_args(argv))
    return rc, capsys.readouterr().err


def _tiny_args(out: Path) -> list:
    return ["--set", f"output_dir={out}", "surrogate=tiny", "ngf=8", "disc_ngf=8", "batch_size=1", "val_count=1",
            "max_steps=2", "progress=false", "tensorboard=false", "sample_latents=false"]


def _tiny_config(out: Path) -> dict:
    from gapdiff_core.training import load_config

    return load_config(None, _tiny_args(out)[1:]).to_dict()


def _damage(kind: str, out: Path) -> tuple[list, list]:
    """Set up one broken resume in ``out``; returns the extra CLI flags and ``--set`` overrides."""
    cfg = _tiny_config(out)
    step_dir = out / "checkpoints" / "step-00000002"
    if kind not in ("output-is-a-file", "foreign-files"):
        _make_run(out, {2: 2.0}, config=cfg)  # fabricated tensors: not this model's state
    if kind == "missing-dir":
        return ["--resume", str(out / "nope")], []
    if kind == "dir-is-a-file":
        (out / "file").write_text("x")
        return ["--resume", str(out / "file")], []
    if kind == "empty-dir":
        (out / "empty").mkdir()
        return ["--resume", str(out / "empty")], []
    if kind == "checkpoints-root":
        return ["--resume", str(out / "checkpoints")], []
    if kind == "other-run":
        _make_run(out.parent / "b", {2: 2.0}, run_id="20260101-000000-bbbbbb", config=cfg)
        return ["--resume", str(out.parent / "b" / "checkpoints" / "step-00000002")], []
    if kind == "other-config":
        return ["--resume", "auto"], ["seed=5"]
    if kind == "resume-and-overwrite":
        return ["--resume", "auto", "--overwrite"], []
    if kind == "new-run-into-used-folder":
        return [], []
    if kind == "meta-not-json":
        (step_dir / ckpt.META).write_text("{ not json")
    elif kind == "meta-wrong-types":
        (step_dir / ckpt.META).write_text(json.dumps({"step": "2", "config": []}))
    elif kind == "meta-missing":
        (step_dir / ckpt.META).unlink()
    elif kind == "tensors-truncated":
        data = (step_dir / ckpt.TENSORS).read_bytes()
        (step_dir / ckpt.TENSORS).write_bytes(data[: len(data) // 2])
    elif kind == "tensors-garbage":
        (step_dir / ckpt.TENSORS).write_bytes(b"\x00" * 64)
    elif kind == "output-is-a-file":
        out.write_text("x")
    elif kind == "run-record-garbage":
        (out / ckpt.RUN_FILE).write_text("[1, 2]")
    elif kind == "all-checkpoints-lost":
        shutil.rmtree(out / "checkpoints")
    elif kind == "foreign-files":
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"x")
    return ["--resume", "auto"], []


RESUME_FAILURES = {  # kind -> what the one-line message says
    "missing-dir": "no such checkpoint folder", "dir-is-a-file": "not a folder",
    "empty-dir": "not a training checkpoint", "checkpoints-root": r"pass one of its step-\* folders",
    "meta-not-json": "state.json: unreadable", "meta-wrong-types": "not a gapdiff training state",
    "meta-missing": "none is usable", "tensors-truncated": "state.safetensors: unreadable",
    "tensors-garbage": "state.safetensors: unreadable", "other-config": r"differs in seed \(0 -> 5\)",
    "other-run": "refusing to mix runs", "resume-and-overwrite": "exclude each other",
    "output-is-a-file": "output_dir is a file", "run-record-garbage": "run.json: not a gapdiff run record",
    "all-checkpoints-lost": r"the last at step 2\) but none is usable", "foreign-files": "holiday.jpg",
    "new-run-into-used-folder": "already holds training run .*--resume auto.*--overwrite",
    "tensors-of-another-model": "cannot restore the training state",  # passes every check before the model loads
}


@pytest.mark.parametrize("kind", sorted(RESUME_FAILURES))
def test_every_resume_failure_is_a_clear_error(tmp_path, capsys, kind):
    out = tmp_path / "run"
    flags, sets = _damage(kind, out)
    rc, err = _cli(flags + _tiny_args(out) + sets, capsys)
    assert rc == 2, err
    assert err.startswith("gapdiff train: ") and "Traceback" not in err
    assert re.search(RESUME_FAILURES[kind], err), err
