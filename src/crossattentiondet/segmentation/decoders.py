"""Segmentation decoders over the encoder's 4 maps (strides 4, 8, 16, 32): the seed's U-Net and the
SegFormer / CMX all-MLP head. Both take ``(features, size)`` and return logits at ``size`` (the input's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossattentiondet.config import ConfigError


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias: BatchNorm follows) - BatchNorm - ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UpBlock(nn.Module):
    """Bilinear x2 upsample, concatenate the skip (if any), 2 x (conv3x3-BN-ReLU)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                   conv_bn_relu(out_channels, out_channels))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        # to the skip's size rather than exactly x2, so inputs not divisible by 32 still line up
        x = _resize(x, skip.shape[-2:] if skip is not None else (2 * x.shape[-2], 2 * x.shape[-1]))
        return self.convs(torch.cat((x, skip), dim=1) if skip is not None else x)


class UNetDecoder(nn.Module):
    """The seed's U-Net decoder: from the 1/32 map up, three skip levels (1/16, 1/8, 1/4), one more
    block to 1/2 with ``head_channels``, upsampled to the input size, then conv3x3(head -> head/2)-BN-ReLU
    and a 1x1 conv to the logits (edgenext_base: 584 -> 288 -> 160 -> 80 -> 64 -> 32 -> logits).

    ``channels``: output width of the 1/16, 1/8, 1/4 blocks (default: the encoder's width at that level).
    ``deep_supervision``: 1x1 heads on the 1/16, 1/8, 1/4 outputs; in training, forward then returns
    ``(logits, [deep logits coarse to fine])``.
    """

    def __init__(self, in_channels: list[int], channels: list[int] | None = None, head_channels: int = 64,
                 out_channels: int = 1, deep_supervision: bool = False) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"the U-Net decoder needs 4 encoder maps (strides 4..32), got {len(in_channels)}")
        c4, c8, c16, c32 = in_channels
        widths = list(channels) if channels is not None else [c16, c8, c4]
        if len(widths) != 3:
            raise ConfigError(f"model.seg.unet_channels needs 3 widths (the 1/16, 1/8 and 1/4 levels, coarse to "
                              f"fine), got {widths}")
        self.blocks = nn.ModuleList([
            UpBlock(c32, c16, widths[0]),
            UpBlock(widths[0], c8, widths[1]),
            UpBlock(widths[1], c4, widths[2]),
            UpBlock(widths[2], 0, head_channels),  # to 1/2, no skip
        ])
        mid = max(head_channels // 2, 1)
        self.head = nn.Sequential(conv_bn_relu(head_channels, mid), nn.Conv2d(mid, out_channels, 1))
        self.deep_supervision = deep_supervision
        self.deep_heads = nn.ModuleList(nn.Conv2d(w, out_channels, 1) for w in widths) if deep_supervision else None

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor | tuple[Tensor, list[Tensor]]:
        f4, f8, f16, f32 = features
        levels = []
        x = f32
        for block, skip in zip(self.blocks[:3], (f16, f8, f4)):
            x = block(x, skip)
            levels.append(x)
        x = self.blocks[3](x)
        logits = self.head(_resize(x, size))
        if self.deep_heads is not None and self.training:
            return logits, [head(level) for head, level in zip(self.deep_heads, levels)]
        return logits


class MLPDecoder(nn.Module):
    """SegFormer / CMX all-MLP head: per level a 1x1 projection to ``dim``, all upsampled to 1/4 and
    concatenated, 1x1 conv-BN-ReLU fuse, dropout 0.1, 1x1 classifier; logits upsampled to the input size.
    """

    def __init__(self, in_channels: list[int], dim: int = 256, out_channels: int = 1) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.fuse = conv_bn_relu(dim * len(in_channels), dim, kernel=1)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(dim, out_channels, 1)

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        quarter = features[0].shape[-2:]
        # coarse to fine, as SegFormer concatenates them
        maps = [_resize(proj(f), quarter) for proj, f in zip(self.proj, features)][::-1]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(maps, dim=1))))
        return _resize(logits, size)
