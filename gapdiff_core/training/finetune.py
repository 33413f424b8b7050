"""The alternating surrogate fine-tuning of GAP-Diff training (L_ft and L_ft'): every ``finetune_every`` generator
steps, ``finetune_steps`` DreamBooth steps on the surrogate's UNet, on the protected images (``finetune_on``) plus
λ·prior preservation on class images (or, without ``class_dir``, on the clean batch as their stand-in)."""
from __future__ import annotations

import torch

from .. import losses
from .config import TrainConfig
from .data import ImageFolderDataset, list_images, usable_images


def finetune_instances(on: str, protected: torch.Tensor, preprocessed: torch.Tensor,
                       clean: torch.Tensor) -> torch.Tensor:
    """The instance images of L_ft, by ``finetune_on``: ``protected`` = [protected; p(protected)] (L_ft and L_ft' on
    the generator's output), ``clean`` = the clean batch (DreamBooth on x0, as ASPL's surrogate), ``both``."""
    parts = {"protected": [protected, preprocessed], "clean": [clean], "both": [clean, protected, preprocessed]}
    return torch.cat([x.detach() for x in parts[on]])


class SurrogateFinetuner:
    """The surrogate's UNet optimiser (AdamW, ``finetune_lr``) and class images; calling it runs one round."""

    def __init__(self, cfg: TrainConfig, surrogate, accelerator):
        self.cfg, self.surrogate, self.acc = cfg, surrogate, accelerator
        self.optimizer = torch.optim.AdamW(surrogate.unet.parameters(), lr=cfg.finetune_lr)
        self.class_images = None
        if cfg.class_dir:
            paths, _ = usable_images(list_images(cfg.class_dir), cfg.resolution, cfg.min_side_fraction,
                                     cfg.max_aspect)
            self.class_images = ImageFolderDataset(paths, cfg.resolution, cache=len(paths) <= 256)

    def __call__(self, protected: torch.Tensor, preprocessed: torch.Tensor, clean: torch.Tensor) -> float:
        """``finetune_steps`` DreamBooth steps on the UNet (trainable only during them); returns the last loss.
        Gradients are averaged over processes, so every process keeps the same surrogate."""
        cfg, s = self.cfg, self.surrogate
        instance = finetune_instances(cfg.finetune_on, protected, preprocessed, clean)
        inst_emb = s.encode_prompt(cfg.instance_prompt).expand(instance.shape[0], -1, -1)
        class_emb = s.encode_prompt(cfg.class_prompt)
        s.unet.requires_grad_(True)
        s.unet.train()
        last = 0.0
        try:
            for _ in range(cfg.finetune_steps):
                if self.class_images is not None:
                    idx = torch.randint(0, len(self.class_images), (clean.shape[0],)).tolist()
                    cls = torch.stack([self.class_images[i] for i in idx]).to(clean.device)
                else:
                    cls = clean  # stand-in for class images: clean faces (see docs/differences-from-official.md)
                self.optimizer.zero_grad(set_to_none=True)
                with self.acc.autocast():
                    loss = losses.instance_and_prior_loss(s, instance, inst_emb, cls,
                                                          class_emb.expand(cls.shape[0], -1, -1), cfg.prior_weight,
                                                          cfg.official_uniform_noise, cfg.sample_latents)
                loss.backward()
                if self.acc.num_processes > 1:
                    for p in s.unet.parameters():
                        if p.grad is not None:
                            p.grad = self.acc.reduce(p.grad, reduction="mean")
                self.optimizer.step()
                last = float(loss.detach())
        finally:
            s.unet.requires_grad_(False)
            s.unet.eval()
        return last
