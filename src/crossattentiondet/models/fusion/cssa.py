"""CSSA: channel switching and spatial attention (Cao et al., CVPR-W PBVS 2023).

1. ECA per modality: global average pool, Conv1d over channels (kernel ``kernel_size``, no bias), sigmoid,
   giving channel weights w in (0, 1).
2. Channel switching: where a channel's own weight is below ``switching_thresh`` it is replaced by the
   other modality's channel (a higher threshold switches more channels).
3. Parameter-free spatial attention on the concatenation: sigmoid(mean over channels) *
   sigmoid(max over channels); the two gated halves are averaged into the fused map.

Two deliberate changes from the original code, both needed for the module to do what the paper says:

* Differentiable weights. The original used w only in a hard mask, so the ECA convolutions never received
  a gradient and stayed at their random initialisation. Here each modality is first recalibrated by its ECA
  weights (x * w, the way ECA is used in ECA-Net), and switching then exchanges recalibrated channels. The
  mask stays hard, but every kept or switched channel carries a factor w, so the loss reaches the ECA
  parameters.
* Switching that matters. Read literally (switch each side where its own w < threshold, then average the
  halves), switching is a no-op whenever both modalities switch the same channel: the average of the swapped
  pair is the average of the original pair, and the spatial gate ignores channel order. So a threshold that
  switches every channel gives exactly the output of one that switches none (thresholds 0.3 and 0.7 differed
  by 6e-8 on a trained stage). The paper's intent is to replace an *uninformative* channel by the more
  informative one of the other modality; so a channel is switched only where its own weight is below the
  threshold **and** below the other modality's weight for that channel. Then the two sides never swap the
  same channel: a switched channel contributes the better modality's (recalibrated) channel alone instead
  of the average of both, and the threshold sets how many channels are decided that way (0: none, plain
  averaging; 1: every channel where the weights differ).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossattentiondet.models.fusion.registry import FusionOutput, RecordsInternals, register_fusion


class ECA(nn.Module):
    """Efficient channel attention: channel weights from a 1-D convolution over pooled channels."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C)
        return torch.sigmoid(self.conv(pooled)).transpose(1, 2).unsqueeze(-1)  # (B, C, 1, 1)


def spatial_gate(x: Tensor) -> Tensor:
    """Parameter-free spatial attention map, (B, 1, H, W)."""
    return torch.sigmoid(x.mean(dim=1, keepdim=True)) * torch.sigmoid(x.amax(dim=1, keepdim=True))


@register_fusion("cssa")
class CSSAFusion(RecordsInternals, nn.Module):
    """Recorded internals (see :class:`RecordsInternals`): ``eca_weights_1/2`` (B, C, 1, 1), ``switch_1/2``
    (bool, B, C, 1, 1: the channels each stream hands over to the other's) and ``spatial_gate`` (B, 1, H, W,
    computed on the concatenated switched pair)."""

    def __init__(self, channels: int, switching_thresh: float = 0.5, kernel_size: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.switching_thresh = switching_thresh
        self.eca1 = ECA(kernel_size)
        self.eca2 = ECA(kernel_size)

    @classmethod
    def from_config(cls, channels: int, num_heads: int, config) -> CSSAFusion:  # noqa: ANN001
        p = config.cssa
        return cls(channels, p.switching_thresh, p.kernel_size)

    def forward(self, x1: Tensor, x2: Tensor) -> FusionOutput:
        w1, w2 = self.eca1(x1), self.eca2(x2)
        r1, r2 = x1 * w1, x2 * w2
        switch1, switch2 = self.switch_masks(w1, w2)
        s1 = torch.where(switch1, r2, r1)
        s2 = torch.where(switch2, r1, r2)
        both = torch.cat((s1, s2), dim=1)
        gate = spatial_gate(both)
        gated = both * gate
        fused = 0.5 * (gated[:, : self.channels] + gated[:, self.channels:])
        if self.record_internals:
            self._record(eca_weights_1=w1, eca_weights_2=w2, switch_1=switch1, switch_2=switch2, spatial_gate=gate)
        return fused, x1, x2

    def switch_masks(self, w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
        """Channels each modality hands over: its weight is below the threshold and below the other's."""
        return (w1 < self.switching_thresh) & (w1 < w2), (w2 < self.switching_thresh) & (w2 < w1)

    def switch_fraction(self, x1: Tensor, x2: Tensor) -> tuple[float, float]:
        """Share of channels each modality would switch for these inputs (diagnostics)."""
        with torch.no_grad():
            m1, m2 = self.switch_masks(self.eca1(x1), self.eca2(x2))
            return m1.float().mean().item(), m2.float().mean().item()
