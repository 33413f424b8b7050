"""The identity gain of an attacked model: how much better it denoises an identity's clean reference photos when the
prompt names the identity ("a photo of sks person") than when it names only the class ("a photo of person").

IG = L(set_C | class prompt) − L(set_C | instance prompt), each L the DreamBooth loss (:func:`instance_loss`: the VAE
mean, ``samples`` seeded (noise, timestep) draws per photo). Both prompts see the same draws, and so does every model
measured with the same ``seed``: the difference is the prompt's, not the noise's. An attacker who bound the identity
to "sks" has IG > 0; protection lowers it; the protocol divides it by the IG of the clean-photo attack at the same
transform (1 = learned as much as from clean photos).
"""
from __future__ import annotations

import torch

from ..common.prompts import CLASS_PROMPT, INSTANCE_PROMPT
from .dreambooth import instance_loss


def identity_gain(surrogate, images, *, instance_prompt: str = INSTANCE_PROMPT, class_prompt: str = CLASS_PROMPT,
                  resolution: int | None = None, samples: int = 8, seed: int = 0) -> dict:
    """``{"gain", "instance_error", "class_error", "per_photo_gain"}`` of ``surrogate`` on ``images`` (paths or a
    B×3×H×W tensor in [0, 1]): the mean over photos of L(class prompt) − L(instance prompt), same draws for both."""
    photos = list(images.split(1)) if isinstance(images, torch.Tensor) else [[p] for p in images]
    if not photos:
        raise ValueError("identity gain: no reference photos")
    inst, cls = [], []
    for one in photos:
        inst.append(instance_loss(surrogate, one, instance_prompt, resolution=resolution, samples=samples, seed=seed))
        cls.append(instance_loss(surrogate, one, class_prompt, resolution=resolution, samples=samples, seed=seed))
    gains = [c - i for c, i in zip(cls, inst)]
    n = len(gains)
    return {"gain": sum(gains) / n, "instance_error": sum(inst) / n, "class_error": sum(cls) / n,
            "per_photo_gain": gains}


def relative_gain(gain: float, clean_gain: float) -> float | None:
    """``gain`` as a share of the clean-photo attack's (1: as much identity learnt as from clean photos); None when
    the clean attack learnt no identity (``clean_gain`` ≤ 0: nothing to compare with)."""
    return gain / clean_gain if clean_gain > 0 else None
