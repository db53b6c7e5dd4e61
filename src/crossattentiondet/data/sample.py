"""The sample: what every reader produces and every transform consumes.

A :class:`Sample` holds one frame: per-modality arrays in their native dtype (uint8 or uint16, shape
(H, W, C), all modalities the same H and W), boxes in absolute pixel xyxy (float32), and 1-based class
labels (int64; 0 is the detector's background). Two optional extras, for data sets that annotate them
(KAIST): ``occlusion`` per box (0 none, 1 partial, 2 heavy; None when the labels do not say) and
``ignore_boxes``, regions that are neither objects nor background (crowds, cyclists, unsure persons): they
are never training targets, and evaluation (MR^-2) neither counts them as misses nor detections on them as
false positives. For segmentation, ``mask`` is the frame's (H, W) uint8 map of class ids (COD: 0/1; semantic:
0..K-1; 255 = ignore), the same H and W as the modalities; None for detection. Geometric transforms move it
with the pixels (nearest neighbour), photometric ones never touch it.
:class:`BoxAnnotations` is the same box information without the pixels.
:func:`to_model_input` turns a sample into the model's input:
one (C_total, H, W) tensor with the modalities concatenated in config order (uint8 when every modality is
uint8, else uint16, uint8 values promoted without rescaling), and a torchvision target dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


@dataclass
class BoxAnnotations:
    """The labelled boxes of one frame, without its pixels (what evaluation needs from the labels)."""

    boxes: np.ndarray = field(default_factory=_no_boxes)  # (N, 4) xyxy float32: the objects
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (N,) 1-based
    occlusion: np.ndarray | None = None  # (N,) int64: 0 none, 1 partial, 2 heavy; None: not annotated
    ignore_boxes: np.ndarray = field(default_factory=_no_boxes)  # (K, 4) xyxy float32: ignore regions


@dataclass
class Sample:
    stem: str
    modalities: dict[str, np.ndarray]
    boxes: np.ndarray = field(default_factory=_no_boxes)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    occlusion: np.ndarray | None = None  # per box of ``boxes`` (see the module docstring), or None
    ignore_boxes: np.ndarray = field(default_factory=_no_boxes)
    mask: np.ndarray | None = None  # (H, W) uint8 class ids, 255 = ignore (segmentation); None: no mask

    @property
    def height(self) -> int:
        return int(next(iter(self.modalities.values())).shape[0])

    @property
    def width(self) -> int:
        return int(next(iter(self.modalities.values())).shape[1])


def to_model_input(sample: Sample, modality_order: list[str], image_id: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(image, target) for the detector; ``target`` has boxes, labels, image_id (ignore regions are no
    targets: evaluation reads them from the data source, see :meth:`DataSource.annotations`)."""
    arrays = [sample.modalities[name] for name in modality_order]
    wide = any(a.dtype == np.uint16 for a in arrays)
    dtype = np.uint16 if wide else np.uint8
    stacked = np.concatenate([a.astype(dtype, copy=False) if a.ndim == 3 else a[..., None].astype(dtype, copy=False)
                              for a in arrays], axis=2)
    image = torch.from_numpy(np.ascontiguousarray(stacked.transpose(2, 0, 1)))
    target = {
        "boxes": torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(sample.labels, dtype=torch.int64).reshape(-1),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
    }
    return image, target
