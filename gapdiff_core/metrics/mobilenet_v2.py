"""MobileNetV2 feature extractor (Sandler et al. 2018) with torchvision's module layout.

torchvision does not import beside the CPU torch this project pins, so checkpoints saved from
``torchvision.models.mobilenet_v2().features`` load into this copy instead: the same module tree
(``features.<i>.conv.<j>...``), ReLU6, BatchNorm eps 1e-5, width multiplier 1.0.
"""
from __future__ import annotations

import torch
from torch import nn

# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = round(inp * expand)
        self.use_res = stride == 1 and inp == out
        layers = [conv_bn_relu(inp, hidden, kernel=1)] if expand != 1 else []
        layers += [conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, out, 1, 1, 0, bias=False), nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Features(nn.Module):
    """``features`` of torchvision's MobileNetV2: B×3×H×W -> B×1280×H/32×W/32."""

    def __init__(self):
        super().__init__()
        layers, inp = [conv_bn_relu(3, 32, stride=2)], 32
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(conv_bn_relu(inp, 1280, kernel=1))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
