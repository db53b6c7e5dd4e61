"""GAFF: guided attentive feature fusion (Zhang et al., WACV 2021).

1. Intra-modality attention: a squeeze-and-excitation gate per stream (GAP, Linear C -> C/r, ReLU,
   Linear C/r -> C, sigmoid), x_se = x * gate.
2. Inter-modality attention: gates from a bias-free conv1x1 over the concatenation (2C -> C) + sigmoid,
   one per direction.
3. Guided fusion: x1_hat = x1_se + g(1 <- 2) * x2 and x2_hat = x2_se + g(2 <- 1) * x1.
4. Merge: conv1x1 (2C -> C) + BN, or with ``merge_bottleneck`` conv1x1 (2C -> C), BN, ReLU, conv1x1 (C -> C), BN.

``inter_shared=True`` really shares the inter-modality convolution between the two directions (each
direction sees [self, other] in that order), halving its parameters. The original option built two
convolutions either way, so its "shared" runs were the unshared model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossattentiondet.models.fusion.registry import FusionOutput, RecordsInternals, register_fusion


class SqueezeExcite(RecordsInternals, nn.Module):
    """x * gate(x), the gate (B, C) recorded as ``gate`` (see :class:`RecordsInternals`)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        if self.record_internals:
            self._record(gate=gate)
        return x * gate[:, :, None, None]


@register_fusion("gaff")
class GAFFFusion(RecordsInternals, nn.Module):
    """Recorded internals (see :class:`RecordsInternals`): ``se_gate_1/2`` (B, C: each stream's own channel
    gate) and ``inter_gate_1/2`` (B, C, H, W: ``inter_gate_1`` weighs stream 2's features added to stream 1,
    ``inter_gate_2`` the reverse)."""

    recording_parts = ("se1", "se2")  # the SE gates are recorded by the SE modules themselves

    def __init__(self, channels: int, se_reduction: int = 4, inter_shared: bool = False,
                 merge_bottleneck: bool = False) -> None:
        super().__init__()
        self.inter_shared = inter_shared
        self.se1 = SqueezeExcite(channels, se_reduction)
        self.se2 = SqueezeExcite(channels, se_reduction)
        self.inter1 = nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False)  # gate for stream 1 <- 2
        self.inter2 = None if inter_shared else nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False)
        layers: list[nn.Module] = [nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False), nn.BatchNorm2d(channels)]
        if merge_bottleneck:
            layers += [nn.ReLU(inplace=True), nn.Conv2d(channels, channels, kernel_size=1, bias=False),
                       nn.BatchNorm2d(channels)]
        self.merge = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, channels: int, num_heads: int, config) -> GAFFFusion:  # noqa: ANN001
        p = config.gaff
        return cls(channels, p.se_reduction, p.inter_shared, p.merge_bottleneck)

    def forward(self, x1: Tensor, x2: Tensor) -> FusionOutput:
        gate1 = torch.sigmoid(self.inter1(torch.cat((x1, x2), dim=1)))
        inter2 = self.inter1 if self.inter2 is None else self.inter2
        gate2 = torch.sigmoid(inter2(torch.cat((x2, x1), dim=1)))
        hat1 = self.se1(x1) + gate1 * x2
        hat2 = self.se2(x2) + gate2 * x1
        if self.record_internals:
            self._record(se_gate_1=self.se1.internals["gate"], se_gate_2=self.se2.internals["gate"],
                         inter_gate_1=gate1, inter_gate_2=gate2)
        return self.merge(torch.cat((hat1, hat2), dim=1)), x1, x2
