"""The segmentation resize policy, and the way back to the ground truth's resolution.

Training and inference run at a fixed working size (``model.seg.resize`` / ``model.seg.size``):

- ``square``: every modality is resized to ``size x size`` (the seed's 384 x 384), whatever its aspect ratio.
- ``keep_aspect``: the longer side becomes ``size``, the other is scaled by the same factor, and the frame is
  padded at the bottom and right to a multiple of 32 (what a 5-stage encoder needs): images with zeros, the
  mask with 255 (ignore), so the padding is never a training target.

Images are resized per axis with area averaging where that axis shrinks and bilinear interpolation where it
grows (a square resize of a wide frame does both); the mask of class ids with the nearest neighbour, so it
keeps its values. Evaluation keeps the ground truth at its own resolution (``resize_mask=False``): the
prediction is cropped to the valid (unpadded) region and resized back to the original size
(:func:`restore_prediction`), and metrics are computed there, never at the working size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from crossattentiondet.config import ConfigError
from crossattentiondet.data.sample import Sample
from crossattentiondet.data.transforms import check_mask, cv_resize, resize_nearest

POLICIES = ("square", "keep_aspect")
PAD_MULTIPLE = 32  # the encoder's total stride
IGNORE = 255


@dataclass(frozen=True)
class ResizeInfo:
    """How a sample was resized: ``valid_hw`` is the resized content (top-left, before padding) and
    ``orig_hw`` the original (height, width), the ground truth's resolution."""

    valid_hw: tuple[int, int]
    orig_hw: tuple[int, int]


def resize_image(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W[, C]) uint8/uint16 array to ``size`` = (width, height), keeping dtype and channel axis.

    Per axis: area averaging when it shrinks, bilinear when it grows; when one axis shrinks and the other
    grows, two separable passes (width, then height) so each axis gets its own filter.
    """
    new_w, new_h = size
    height, width = array.shape[:2]
    if (new_w, new_h) == (width, height):
        return array.copy()
    shrink_w, shrink_h = new_w <= width, new_h <= height
    if shrink_w == shrink_h:
        return cv_resize(array, (new_w, new_h), cv2.INTER_AREA if shrink_w else cv2.INTER_LINEAR)
    out = cv_resize(array, (new_w, height), cv2.INTER_AREA if shrink_w else cv2.INTER_LINEAR)
    return cv_resize(out, (new_w, new_h), cv2.INTER_AREA if shrink_h else cv2.INTER_LINEAR)


def _pad(array: np.ndarray, height: int, width: int, value: int) -> np.ndarray:
    """``array`` at the top-left of a (height, width[, C]) frame filled with ``value``."""
    out = np.full((height, width) + array.shape[2:], value, array.dtype)
    out[:array.shape[0], :array.shape[1]] = array
    return out


def working_size(policy: str, size: int, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((h_valid, w_valid), (h_padded, w_padded)) of a ``height x width`` frame under ``policy``."""
    if policy not in POLICIES:
        raise ConfigError(f"model.seg.resize: unknown policy {policy!r}, expected one of "
                          f"{', '.join(POLICIES)}")
    if int(size) < 1:
        raise ConfigError(f"model.seg.size must be >= 1, got {size}")
    if policy == "square":
        return (size, size), (size, size)
    scale = size / max(height, width)
    valid = (max(1, round(height * scale)), max(1, round(width * scale)))
    padded = tuple(math.ceil(v / PAD_MULTIPLE) * PAD_MULTIPLE for v in valid)
    return valid, (padded[0], padded[1])


def resize_sample(sample: Sample, policy: str, size: int, *, resize_mask: bool = True
                  ) -> tuple[Sample, ResizeInfo]:
    """``sample`` at the working size of ``policy`` (``square`` or ``keep_aspect``, see the module docstring).

    Every modality is resized (dtype and channel axis kept), boxes and ignore boxes scaled with it. The mask
    is resized with the nearest neighbour (and padded with 255) when ``resize_mask``; otherwise it is left
    at its own resolution, as evaluation needs. The :class:`ResizeInfo` says how to map a prediction back.
    """
    height, width = sample.height, sample.width
    (valid_h, valid_w), (pad_h, pad_w) = working_size(policy, size, height, width)
    modalities = {name: _pad(resize_image(a, (valid_w, valid_h)), pad_h, pad_w, 0)
                  for name, a in sample.modalities.items()}
    ratio = np.array([valid_w / width, valid_h / height] * 2, np.float32)
    boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4) * ratio
    ignore_boxes = np.asarray(sample.ignore_boxes, np.float32).reshape(-1, 4) * ratio
    mask = sample.mask
    if mask is not None and resize_mask:
        mask = _pad(resize_nearest(check_mask(sample), (valid_w, valid_h)), pad_h, pad_w, IGNORE)
    info = ResizeInfo(valid_hw=(valid_h, valid_w), orig_hw=(height, width))
    return replace(sample, modalities=modalities, boxes=boxes, ignore_boxes=ignore_boxes, mask=mask), info


def restore_prediction(prob: torch.Tensor, info: ResizeInfo) -> torch.Tensor:
    """A (C, H_in, W_in) map at the working size back at the original resolution: (C, H, W) float.

    The valid (unpadded) region is cut out and resized bilinearly (``align_corners=False``) to
    ``info.orig_hw``; this is how predictions are compared with the ground truth at its own resolution.
    """
    if prob.ndim != 3:
        raise ValueError(f"restore_prediction expects a (C, H, W) map, got shape {tuple(prob.shape)}")
    valid_h, valid_w = info.valid_hw
    if prob.shape[1] < valid_h or prob.shape[2] < valid_w:
        raise ValueError(f"prediction of size {tuple(prob.shape[1:])} is smaller than its valid region "
                         f"{info.valid_hw}")
    if not prob.is_floating_point():
        prob = prob.float()
    valid = prob[:, :valid_h, :valid_w]
    if tuple(info.orig_hw) == (valid_h, valid_w):
        return valid
    return F.interpolate(valid[None], size=tuple(info.orig_hw), mode="bilinear", align_corners=False)[0]
