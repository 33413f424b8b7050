"""ONNX export of the protection function, for Triton, onnxruntime or TensorRT deployments.

The exported graph maps 8-bit photos (B x 3 x H x W uint8, any batch and any H, W > 256) and a budget in grey
levels to the protected 8-bit photos, as `Protector(norm="image", mode="native")` computes them for photos that
fit one generator pass: reflect-pad to the generator's size (multiples of 256, at least 512), the generator with
per-image normalisation (each BatchNorm uses the photo's own statistics over the photo, not the padding;
dropout off), crop, and the step rounded to whole grey levels, clipped to the budget and added in 8 bits.
For the default working mode, resize photos to the working resolution (512 on the short side) before the graph,
as `Protector` does, and resize the step back. The graph is the pure-torch generator in fp32 (never the
oneDNN-packed CPU form). Needs the `onnx` extra (onnx, onnxscript; onnxruntime to check it).
"""
from __future__ import annotations

import operator
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.atomic import write_file
from .generator import SIZE_MULTIPLE, Generator, InferenceGenerator

OPSET = 18
INPUT_NAMES = ("images", "budget")
OUTPUT_NAMES = ("protected",)


class ProtectionFunction(nn.Module):
    """`forward(images, budget)`: B x 3 x H x W uint8 and a 1-element float32 budget (grey levels) -> protected
    B x 3 x H x W uint8. Sides must exceed 256 (the reflect padding needs them to)."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.model = InferenceGenerator(generator, norm="image", dtype=torch.float32)
        self.model.traceable = True

    def forward(self, images: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2], images.shape[-1]
        x = images.float() / 255
        # the generator's size: the next multiple of 256, which is >= 512 since the sides exceed 256
        ph = (h + SIZE_MULTIPLE - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE - h
        pw = (w + SIZE_MULTIPLE - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE - w
        padded = F.pad(x, (0, pw, 0, ph), mode="reflect")
        raw = self.model(padded * 2 - 1, valid=(h, w))[..., :h, :w]
        limit = torch.floor(budget + 1e-6)
        step = torch.maximum(torch.minimum(torch.round(raw * budget), limit), -limit)
        return torch.clamp(images.float() + step, 0, 255).to(torch.uint8)


def export_onnx(generator: Generator, path: str | os.PathLike, sample_size: tuple[int, int] = (512, 683)) -> Path:
    """Write the protection function of `generator` to `path` (.onnx) with dynamic batch, height and width."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the ONNX file name must end in .onnx")
    module = ProtectionFunction(generator.float().eval()).eval()
    images = torch.randint(0, 256, (2, 3, *sample_size), dtype=torch.uint8)
    budget = torch.tensor([8.0])
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height", min=257), \
        torch.export.Dim("width", min=257)
    program = torch.onnx.export(module, (images, budget), input_names=list(INPUT_NAMES),
                                output_names=list(OUTPUT_NAMES), opset_version=OPSET, dynamo=True,
                                dynamic_shapes={"images": {0: batch, 2: height, 3: width}, "budget": None},
                                external_data=False, custom_translation_table={operator.rshift: _rshift})
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, lambda tmp: program.save(str(tmp)))


def _rshift(a, b: int):
    """`a >> b` on a symbolic int64 size (the generator's halved valid region): floor division by 2**b, as ONNX
    Mod (fmod=0) takes the divisor's sign."""
    from onnxscript import opset18 as op

    divisor = op.Constant(value_int=1 << b)
    return op.Div(op.Sub(a, op.Mod(a, divisor)), divisor)


def check_onnx(generator: Generator, path: str | os.PathLike, sizes=((512, 683), (300, 400)), budget: float = 8.0,
               seed: int = 0) -> int:
    """Largest difference in grey levels between onnxruntime (CPU) running `path` and the torch path
    (`Protector(norm="image", mode="native", precision="fp32")`) on random photos of `sizes`."""
    import numpy as np
    import onnxruntime

    from .protector import Protector

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    protector = Protector(generator, budget=budget, mode="native", norm="image", precision="fp32", device="cpu")
    rng = np.random.default_rng(seed)
    worst = 0
    for h, w in sizes:
        photos = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        ours = session.run(None, {"images": photos.transpose(0, 3, 1, 2).copy(),
                                  "budget": np.array([budget], np.float32)})[0].transpose(0, 2, 3, 1)
        reference = protector.protect_uint8(photos)
        worst = max(worst, int(np.abs(ours.astype(np.int16) - reference.astype(np.int16)).max()))
    return worst
