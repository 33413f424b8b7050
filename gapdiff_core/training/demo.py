"""The demo generator: a narrow generator trained for about a minute against the tiny built-in surrogate.

It protects nothing real (the tiny model is random); its metadata says ``demo: true`` and every tool labels it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..io import atomic
from .config import load_config
from .loop import Trainer

DEMO_SETTINGS = dict(
    surrogate="tiny", ngf=8, disc_ngf=8, batch_size=1, lr=1e-2, disc_lr=1e-3, augment=True, val_count=1,
    # preprocessed-only objective (the official first phase): one surrogate pass per step, JPEG-robust by design
    beta=0.0, gamma=1.0, preprocess="default", weighting="uniform", finetune_steps=0, sample_latents=False,
    surrogate_warmup_steps=30,
    checkpoint_every=10**9, val_every=10**9, log_every=1, export_name="generator.safetensors",
)


def train_demo_generator(out_path: str | Path, steps: int = 200, minutes: float = 1.0, seed: int = 0,
                         progress: bool = False, train_dir: Optional[str | Path] = None) -> Path:
    """Train the demo generator on the bundled sample faces (random crops and flips) and save it to ``out_path``
    (``.safetensors`` with ``demo: true``). Stops after ``steps`` steps or ``minutes`` of training, whichever
    comes first. Returns ``out_path``."""
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="gapdiff-demo-") as work:
        cfg = load_config(None, **DEMO_SETTINGS, max_steps=int(steps), seed=int(seed), progress=progress,
                          output_dir=work, train_dir=str(train_dir) if train_dir else None, tensorboard=False)
        trainer = Trainer(cfg)
        summary = trainer.run(validate=False, time_limit_s=minutes * 60)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(out_path, Path(summary["export"]).read_bytes())
    return out_path
