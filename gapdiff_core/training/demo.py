"""The demo generator: a narrow generator trained for about a minute against the tiny built-in surrogate.

It protects nothing real (the tiny model is random); its metadata says ``demo: true`` and every tool labels it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from .config import load_config

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
    from .loop import Trainer

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="gapdiff-demo-") as work:
        cfg = load_config(None, **DEMO_SETTINGS, max_steps=int(steps), seed=int(seed), progress=progress,
                          output_dir=work, train_dir=str(train_dir) if train_dir else None, tensorboard=False)
        trainer = Trainer(cfg)
        summary = trainer.run(validate=False, time_limit_s=minutes * 60)
        exported = Path(summary["export"])
        out_path.parent.mkdir(parents=True, exist_ok=True)
        exported.replace(out_path) if exported.parent == out_path.parent else _copy(exported, out_path)
    return out_path


def _copy(src: Path, dst: Path) -> None:
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def warm_up_surrogate(surrogate, images01, steps: int = 30, lr: float = 3e-3, batch_size: int = 2, seed: int = 0,
                      sample_latents: bool = False) -> list[float]:
    """Teach the RANDOM tiny surrogate's UNet some denoising (plain diffusion loss on ``images01``) so that its error
    depends on the image at all: a random UNet ends in GroupNorm + conv, so its output scale, and with it the
    denoising error, barely moves with the input. Real surrogates are trained already and never need this.

    Deterministic from ``seed`` (global RNG forked); VAE latents are computed once. Returns the loss per step.
    """
    import torch

    from ..losses import denoising_error
    from ..prompts import CLASS_PROMPT

    s = surrogate
    with torch.no_grad():
        latents = torch.cat([s.encode_images(x[None].to(s.device), sample=sample_latents) for x in images01])
    emb = s.encode_prompt(CLASS_PROMPT)
    opt = torch.optim.AdamW(s.unet.parameters(), lr=lr)
    identity = _LatentIdentity(s)
    history = []
    s.unet.requires_grad_(True)
    s.unet.train()
    try:
        with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for _ in range(steps):
                idx = torch.randint(0, latents.shape[0], (batch_size,))
                z = latents[idx]
                z = torch.where(torch.rand(batch_size, 1, 1, 1, device=z.device) < 0.5, z, z.flip(-1))
                loss = denoising_error(identity, z, emb.expand(batch_size, -1, -1)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history.append(float(loss.detach()))
    finally:
        s.unet.requires_grad_(False)
        s.unet.eval()
    return history


class _LatentIdentity:
    """Surrogate view whose 'images' are already latents (skips the VAE during warm-up)."""

    def __init__(self, surrogate):
        self.s, self.scheduler = surrogate, surrogate.scheduler

    def encode_images(self, z, sample=True):
        return z

    def predict(self, noisy, t, emb):
        return self.s.predict(noisy, t, emb)
