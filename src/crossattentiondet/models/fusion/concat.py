"""Concatenate the streams and project back to C channels: conv1x1 (2C -> C) + BatchNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossattentiondet.models.fusion.registry import FusionOutput, register_fusion


@register_fusion("concat")
class ConcatFusion(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    @classmethod
    def from_config(cls, channels: int, num_heads: int, config: object) -> ConcatFusion:
        return cls(channels)

    def forward(self, x1: Tensor, x2: Tensor) -> FusionOutput:
        return self.bn(self.proj(torch.cat((x1, x2), dim=1))), x1, x2
