"""Element-wise sum of the two streams: the parameter-free baseline."""

from __future__ import annotations

from torch import Tensor, nn

from crossattentiondet.models.fusion.registry import FusionOutput, register_fusion


@register_fusion("add")
class AddFusion(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    @classmethod
    def from_config(cls, channels: int, num_heads: int, config: object) -> AddFusion:
        return cls(channels)

    def forward(self, x1: Tensor, x2: Tensor) -> FusionOutput:
        return x1 + x2, x1, x2
