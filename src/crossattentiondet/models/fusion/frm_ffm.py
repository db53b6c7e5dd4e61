"""FRM + FFM (feature rectify + feature fusion, from CMX): the original CrossAttentionDet fusion.

Numerically the same computation as the original code (reference/ORIGINAL.md); parameter names match its
``FRMs.i`` / ``FFMs.i`` sub-modules so original checkpoints load by renaming prefixes only.

Per stage with C channels it has 43 C^2 + 35 C + 2 parameters (reduction 1). Initialised as the original:
SegFormer's ``segformer_init`` (trunc-normal linears, fan-out convs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossattentiondet.models.fusion.registry import FusionOutput, RecordsInternals, register_fusion
from crossattentiondet.models.mit import map_to_tokens, segformer_init, tokens_to_map


class ChannelWeights(nn.Module):
    """Per-channel weights for both streams from pooled statistics of their concatenation."""

    def __init__(self, dim: int, reduction: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(4 * dim, 4 * dim // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(4 * dim // reduction, 2 * dim),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        pooled = torch.cat((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))), dim=1)  # (B, 4C): avg then max
        w = self.mlp(pooled).view(b, 2, self.dim, 1, 1)
        return w[:, 0], w[:, 1]


class SpatialWeights(nn.Module):
    """Per-pixel weights for both streams: conv1x1 (2C -> C), ReLU, conv1x1 (C -> 2), sigmoid."""

    def __init__(self, dim: int, reduction: int = 1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(2 * dim, dim // reduction, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // reduction, 2, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w = self.mlp(x)
        return w[:, 0:1], w[:, 1:2]


class FeatureRectifyModule(RecordsInternals, nn.Module):
    """Each stream is corrected by the other: x1' = x1 + (lc * cw2 + ls * sw2) * x2 (and symmetric).

    cw1/sw1 weigh stream 1's features where they rectify stream 2, cw2/sw2 stream 2's where they rectify
    stream 1. Recorded internals (see :class:`RecordsInternals`): ``channel_weights_1/2`` (B, C, 1, 1) and
    ``spatial_weights_1/2`` (B, 1, H, W).
    """

    def __init__(self, dim: int, reduction: int = 1, lambda_c: float = 0.5, lambda_s: float = 0.5) -> None:
        super().__init__()
        self.lambda_c = lambda_c
        self.lambda_s = lambda_s
        self.channel_weights = ChannelWeights(dim, reduction)
        self.spatial_weights = SpatialWeights(dim, reduction)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        both = torch.cat((x1, x2), dim=1)
        cw1, cw2 = self.channel_weights(both)
        sw1, sw2 = self.spatial_weights(both)
        out1 = x1 + (self.lambda_c * cw2 + self.lambda_s * sw2) * x2
        out2 = x2 + (self.lambda_c * cw1 + self.lambda_s * sw1) * x1
        if self.record_internals:
            self._record(channel_weights_1=cw1, channel_weights_2=cw2, spatial_weights_1=sw1, spatial_weights_2=sw2)
        return out1, out2


class CrossAttention(nn.Module):
    """Linear-cost cross attention: each stream's queries read the other stream's d x d context."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.kv1 = nn.Linear(dim, 2 * dim, bias=False)
        self.kv2 = nn.Linear(dim, 2 * dim, bias=False)

    def _context(self, kv: nn.Linear, u: Tensor) -> Tensor:
        b, n, c = u.shape
        k, v = kv(u).view(b, n, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return (k.transpose(-2, -1) @ v * self.scale).softmax(dim=-2)  # (B, heads, d, d)

    def forward(self, u1: Tensor, u2: Tensor) -> tuple[Tensor, Tensor]:
        b, n, c = u1.shape
        heads = self.num_heads
        q1 = u1.view(b, n, heads, c // heads).transpose(1, 2)
        q2 = u2.view(b, n, heads, c // heads).transpose(1, 2)
        ctx1 = self._context(self.kv1, u1)
        ctx2 = self._context(self.kv2, u2)
        out1 = (q1 @ ctx2).transpose(1, 2).reshape(b, n, c)
        out2 = (q2 @ ctx1).transpose(1, 2).reshape(b, n, c)
        return out1, out2


class CrossPath(nn.Module):
    def __init__(self, dim: int, reduction: int = 1, num_heads: int = 1) -> None:
        super().__init__()
        inner = dim // reduction
        self.channel_proj1 = nn.Linear(dim, 2 * inner)
        self.channel_proj2 = nn.Linear(dim, 2 * inner)
        self.cross_attn = CrossAttention(inner, num_heads)
        self.end_proj1 = nn.Linear(2 * inner, dim)
        self.end_proj2 = nn.Linear(2 * inner, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        y1, u1 = F.relu(self.channel_proj1(x1)).chunk(2, dim=-1)
        y2, u2 = F.relu(self.channel_proj2(x2)).chunk(2, dim=-1)
        v1, v2 = self.cross_attn(u1.contiguous(), u2.contiguous())
        out1 = self.norm1(x1 + self.end_proj1(torch.cat((y1, v1), dim=-1)))
        out2 = self.norm2(x2 + self.end_proj2(torch.cat((y2, v2), dim=-1)))
        return out1, out2


class ChannelEmbed(nn.Module):
    """2C -> C: a 1x1 residual projection plus a conv branch (1x1, depthwise 3x3, ReLU, 1x1, BN), then BN."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 1) -> None:
        super().__init__()
        mid = out_channels // reduction
        self.residual = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, groups=mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
        )
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.residual(x) + self.channel_embed(x))


class FeatureFusionModule(nn.Module):
    def __init__(self, dim: int, reduction: int = 1, num_heads: int = 1) -> None:
        super().__init__()
        self.cross = CrossPath(dim, reduction, num_heads)
        self.channel_emb = ChannelEmbed(2 * dim, dim, reduction)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        b, c, h, w = x1.shape
        t1, t2 = self.cross(map_to_tokens(x1), map_to_tokens(x2))
        merged = tokens_to_map(torch.cat((t1, t2), dim=-1), h, w)
        return self.channel_emb(merged)


@register_fusion("frm_ffm")
class FrmFfmFusion(RecordsInternals, nn.Module):
    """FRM rectifies both streams (which carry on to the next stage); FFM fuses the rectified pair.

    Recorded internals: those of its FRM (:class:`FeatureRectifyModule`).
    """

    recording_parts = ("frm",)

    def __init__(self, channels: int, num_heads: int = 1, reduction: int = 1, lambda_c: float = 0.5,
                 lambda_s: float = 0.5) -> None:
        super().__init__()
        self.frm = FeatureRectifyModule(channels, reduction, lambda_c, lambda_s)
        self.ffm = FeatureFusionModule(channels, reduction, num_heads)
        # The original (CMX's code) initialises FRM and FFM like the MiT: linears trunc-normal std 0.02. With
        # PyTorch's default init the FFM context logits k^T v (a sum over all N tokens) are ~50x larger and most
        # softmax columns saturate at init (78 % above 0.99 at 160x128; benchmarks/bench_ffm_saturation.py).
        self.apply(segformer_init)

    @classmethod
    def from_config(cls, channels: int, num_heads: int, config) -> FrmFfmFusion:  # noqa: ANN001
        p = config.frm_ffm
        return cls(channels, num_heads, p.reduction, p.lambda_c, p.lambda_s)

    def forward(self, x1: Tensor, x2: Tensor) -> FusionOutput:
        r1, r2 = self.frm(x1, x2)
        if self.record_internals:
            self._record(**self.frm.internals)
        return self.ffm(r1, r2), r1, r2


@torch.no_grad()
def ffm_softmax_saturation(encoder: nn.Module, *inputs: Tensor, threshold: float = 0.99) -> list[float]:
    """Share of FFM context-softmax columns whose largest entry exceeds ``threshold``, per FFM in ``encoder``.

    A diagnostic for initialisation and input size: the context softmax runs over k^T v, a sum over all N
    tokens, so its logits grow with the image; saturated columns (one-hot attention) pass almost no gradient.
    ``inputs`` are what ``encoder(*inputs)`` takes.
    """
    shares: list[float] = []

    def hook(module: CrossAttention, args: tuple[Tensor, Tensor], _output: object) -> None:
        hit = total = 0
        for kv, u in ((module.kv1, args[0]), (module.kv2, args[1])):
            b, n, c = u.shape
            k, v = kv(u).view(b, n, 2, module.num_heads, c // module.num_heads).permute(2, 0, 3, 1, 4)
            ctx = (k.transpose(-2, -1) @ v * module.scale).softmax(dim=-2)
            top = ctx.amax(dim=-2)  # (B, heads, d): the largest weight of each column
            hit += int((top > threshold).sum())
            total += top.numel()
        shares.append(hit / total)

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, CrossAttention)]
    try:
        encoder(*inputs)
    finally:
        for h in handles:
            h.remove()
    return shares
