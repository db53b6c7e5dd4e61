"""Segmentation losses; every term is already multiplied by its weight (``model.seg.loss``).

Binary (COD, one logit map): ``loss_bce`` (BCE with logits), ``loss_iou`` (soft IoU per image, averaged),
``loss_edge`` (MSE between the Sobel gradient magnitudes of sigmoid(pred) and of the GT), ``loss_deep``
(deep supervision: ``deep_supervision`` x the mean BCE of the deep heads). Semantic (K maps): ``loss_ce``
(cross-entropy), ``loss_dice`` (soft Dice, only when its weight is > 0), ``loss_deep`` (mean CE of the deep
heads). With ``model.seg.moe``: ``loss_moe_balance`` and ``loss_moe_z`` (the router's, from the neck).
Mask value 255 is ignored by every term. The key set is fixed per config (:func:`seg_loss_keys`);
terms are computed in float32 whatever the autocast precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crossattentiondet.config import SegLossConfig, SegmentationConfig
from crossattentiondet.errors import DataError

IGNORE = 255
# Added to both sides of the IoU ratio: an image without object (COD10K NonCAM, empty synthetic scenes)
# gives a loss near 0 for near-empty predictions instead of 1 for any faint false positive.
IOU_SMOOTH = 1.0
DICE_SMOOTH = 1.0
_EDGE_EPS = 1e-6  # inside the Sobel magnitude's sqrt: a finite gradient on flat regions


def seg_loss_keys(binary: bool, seg_config: SegmentationConfig) -> tuple[str, ...]:
    """The keys the loss returns for this config (the same every batch; the trainer sums them)."""
    keys = ("loss_bce", "loss_iou", "loss_edge") if binary else (
        ("loss_ce", "loss_dice") if seg_config.loss.dice > 0 else ("loss_ce",))
    keys = (*keys, "loss_deep") if seg_config.deep_supervision else keys
    # the MoE router's losses (segmentation/moe.py), added by the Segmenter
    return (*keys, "loss_moe_balance", "loss_moe_z") if seg_config.moe.enabled else keys


def _check_values(mask: Tensor, num_classes: int) -> None:
    bad = (mask >= num_classes) & (mask != IGNORE)
    if bool(bad.any()):
        found = sorted({int(v) for v in torch.unique(mask[bad])[:8]})
        allowed = "0/1" if num_classes == 2 else f"0..{num_classes - 1}"
        raise DataError(f"mask values {found} outside the classes ({allowed}, {IGNORE} = ignore)")


def _masked_mean(values: Tensor, weight: Tensor) -> Tensor:
    # an all-ignored batch gives 0 (the numerator is 0 too), never 0 / 0
    return (values * weight).sum() / weight.sum().clamp(min=1e-6)


def _sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of (B, 1, H, W) maps (replicate padding: no fake edges at the border)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    kernels = torch.stack((kx, kx.t()))[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    grad = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return torch.sqrt(grad.pow(2).sum(dim=1, keepdim=True) + _EDGE_EPS)


def _binary_deep(deep: list[Tensor], target: Tensor, valid: Tensor) -> Tensor:
    """Mean BCE of the deep heads. The GT is area-averaged to each head's size: the target is the fraction
    of valid pixels that are object, weighted by the fraction of valid pixels (ignored ones drop out)."""
    terms = []
    for d in deep:
        size = d.shape[-2:]
        v = F.interpolate(valid[:, None], size=size, mode="area")
        t = F.interpolate((target * valid)[:, None], size=size, mode="area") / v.clamp(min=1e-6)
        bce = F.binary_cross_entropy_with_logits(d.float(), t.clamp(0, 1), reduction="none")
        terms.append(_masked_mean(bce, v))
    return torch.stack(terms).mean() if terms else target.new_zeros(())


def binary_seg_loss(logits: Tensor, mask: Tensor, deep: list[Tensor] | None,
                    weights: SegLossConfig) -> dict[str, Tensor]:
    """Losses of one logit map (B, 1, H, W) against masks (B, H, W) of 0 / 1 / 255 (ignore).

    ``deep``: the deep-supervision logits (any sizes), or None when the model has none (no ``loss_deep``).
    """
    if logits.shape[1] != 1 or logits.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"binary loss: logits {tuple(logits.shape)} and masks {tuple(mask.shape)} do not match "
                         "(expected (B, 1, H, W) and (B, H, W))")
    _check_values(mask, 2)
    with torch.autocast(logits.device.type, enabled=False):
        x = logits.float()
        valid = (mask != IGNORE).float()[:, None]  # (B, 1, H, W)
        target = (mask == 1).float()[:, None]
        out = {"loss_bce": weights.bce * _masked_mean(
            F.binary_cross_entropy_with_logits(x, target, reduction="none"), valid)}
        p = torch.sigmoid(x)
        inter = (p * target * valid).sum(dim=(1, 2, 3))
        union = ((p + target - p * target) * valid).sum(dim=(1, 2, 3))
        out["loss_iou"] = weights.iou * (1.0 - (inter + IOU_SMOOTH) / (union + IOU_SMOOTH)).mean()
        # only pixels whose whole 3x3 Sobel window is valid (min-pool of the valid map)
        valid_edge = -F.max_pool2d(-valid, 3, stride=1, padding=1)
        edge = (_sobel_magnitude(p) - _sobel_magnitude(target)).pow(2)
        out["loss_edge"] = weights.edge * _masked_mean(edge, valid_edge)
        if deep is not None:
            out["loss_deep"] = weights.deep_supervision * _binary_deep(deep, target[:, 0], valid[:, 0])
    return out


def _ce(logits: Tensor, mask: Tensor) -> Tensor:
    # summed then divided by the valid count: an all-ignored batch gives 0, not NaN as reduction="mean" would
    total = F.cross_entropy(logits.float(), mask, ignore_index=IGNORE, reduction="sum")
    return total / (mask != IGNORE).sum().clamp(min=1)


def semantic_seg_loss(logits: Tensor, mask: Tensor, deep: list[Tensor] | None,
                      weights: SegLossConfig) -> dict[str, Tensor]:
    """Losses of K logit maps (B, K, H, W) against class-id masks (B, H, W) (255 = ignore).

    Deep heads get the GT resized by nearest neighbour (class ids cannot be averaged).
    """
    if logits.shape[0] != mask.shape[0] or logits.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"semantic loss: logits {tuple(logits.shape)} and masks {tuple(mask.shape)} do not match")
    num_classes = logits.shape[1]
    mask = mask.long()
    _check_values(mask, num_classes)
    with torch.autocast(logits.device.type, enabled=False):
        x = logits.float()
        out = {"loss_ce": weights.ce * _ce(x, mask)}
        if weights.dice > 0:
            valid = (mask != IGNORE)[:, None].float()
            p = torch.softmax(x, dim=1) * valid
            onehot = F.one_hot(mask.masked_fill(mask == IGNORE, 0), num_classes).permute(0, 3, 1, 2) * valid
            inter = (p * onehot).sum(dim=(0, 2, 3))
            dice = 1.0 - (2 * inter + DICE_SMOOTH) / (p.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3)) + DICE_SMOOTH)
            out["loss_dice"] = weights.dice * dice.mean()
        if deep is not None:
            terms = [_ce(d, F.interpolate(mask[:, None].float(), size=d.shape[-2:], mode="nearest")[:, 0].long())
                     for d in deep]
            out["loss_deep"] = weights.deep_supervision * (torch.stack(terms).mean() if terms else x.new_zeros(()))
    return out
