"""Tiled (sliced) inference: a large frame with tiny objects is cut into overlapping windows, the detector
runs on each window at its native resolution, and the windows' detections are merged in frame coordinates.

A 4 px ball in a 1920x1080 frame is a few feature-map cells at stride 4 once the frame is resized to the
detector's input size, or costs the memory of the whole frame at full size; windows of ``eval.tile`` px keep it
at full resolution with bounded memory per call. ``maybe_tiled(model, config.eval)`` is what the engine calls.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from crossattentiondet.config import ConfigError, EvalConfig

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels (x1, y1 exclusive)


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` px, the last one flush with the far edge."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, stride), length - tile]


def tile_windows(width: int, height: int, tile: int, overlap: float) -> list[Window]:
    """Windows of ``tile`` x ``tile`` px covering a ``width`` x ``height`` frame, row by row.

    Neighbours start ``floor(tile * (1 - overlap))`` px apart (so they overlap by at least ``overlap`` of a
    tile); the last window of a row / column is moved back to end on the frame's right / bottom edge (so it
    overlaps its neighbour more, and no window pads past the frame). Along an axis shorter than ``tile`` the
    window is the frame's own extent there: frames are never upscaled or padded.
    """
    if not isinstance(tile, int) or tile < 1:
        raise ConfigError(f"eval.tile={tile!r}: must be a whole number of pixels >= 1")
    if not 0 <= overlap < 1:
        raise ConfigError(f"eval.tile_overlap={overlap!r}: must be at least 0 and below 1")
    if width < 1 or height < 1:
        raise ConfigError(f"cannot tile a {width}x{height} frame")
    # the epsilon keeps 640 * (1 - 0.2) from flooring to 511 through float rounding
    stride = max(1, math.floor(tile * (1 - overlap) + 1e-9))
    tile_w, tile_h = min(tile, width), min(tile, height)
    return [(x, y, x + tile_w, y + tile_h) for y in _starts(height, tile, stride) for x in _starts(width, tile, stride)]


class TiledDetector(nn.Module):
    """Any detector of this project (``model(list of (C, H, W) images)`` -> list of dicts boxes (xyxy px) /
    scores / labels, in eval mode) run on overlapping windows of each frame, merged in frame coordinates.

    Per call, the windows of all given frames are run ``windows_per_batch`` at a time; each window's boxes
    are shifted back by its origin. A frame that fits in one window is passed to the model whole and its
    detections are returned as the model gave them (tiling changes nothing there).

    Merging, per frame:

    1. Border-truncated boxes. A box within ``border_px`` of a window edge that is not a frame edge is
       *cut*: the object may go on beyond the window. A cut box is dropped when a larger box of the same
       class, from another window, holds at least ``cut_containment`` of its area (the same object seen
       whole, or less cut, by a window that reaches further). A window that merely could hold the object
       is not enough: the box is dropped only for a detection that replaces it, so an object missed by the
       other window is not lost. Of a chain of pieces the largest survives. Why not NMS alone: a piece
       covering 40% of the object has IoU 0.4 with the whole box and would survive as a duplicate.
       Objects wider than the overlap (``tile * overlap`` px) never lie wholly in one window; their pieces
       may remain separate, so choose an overlap above the largest object's size.
    2. Class-wise NMS (``torchvision.ops.batched_nms`` at ``nms_iou``) over all windows: duplicates from
       overlapping windows go, overlapping boxes of different classes both stay.
    3. The highest-scoring boxes are kept, at most ``detections_per_img`` when it is given; by default the
       wrapped model's per-image cap times the number of windows of that frame (each window was already
       capped by the model, so a frame of 8 windows keeps up to 8 x 100 boxes, not 100: a crowd of tiny
       objects spread over the frame is not cut to one window's worth). No cap when the model has none.
       :attr:`detections_per_img` is the explicit cap (None by default) and
       :attr:`window_detections_per_img` the model's per-window one.

    The wrapper reads as the model for the rest of the code: ``layout``, ``num_classes``,
    ``set_zero_modalities``, ``zero_modalities``, parameters / device and any other attribute
    (``backbone``, ``transform``, ...) are the wrapped model's. It has no ``module`` attribute on purpose
    (engine code unwraps DDP's ``.module``, which would bypass the tiling). Inference only: ``train()``
    and targets are refused. The resize policy of the wrapped model applies to each window
    (``model.detector.resize``: native keeps windows at full resolution).
    """

    def __init__(self, model: nn.Module, tile: int, overlap: float = 0.2, nms_iou: float = 0.5, *,
                 windows_per_batch: int = 8, detections_per_img: int | None = None, border_px: float = 2.0,
                 cut_containment: float = 0.7) -> None:
        super().__init__()
        if isinstance(model, TiledDetector):
            model = model.detector  # re-tiling replaces the settings, it does not tile the tiles
        tile_windows(tile, tile, tile, overlap)  # validates tile and overlap now, not at the first frame
        if not 0 < nms_iou <= 1:
            raise ConfigError(f"eval.tile_nms_iou={nms_iou!r}: must be above 0 and at most 1")
        if windows_per_batch < 1:
            raise ConfigError(f"windows_per_batch={windows_per_batch!r}: must be at least 1")
        self.detector = model.eval()
        self.tile = tile
        self.overlap = overlap
        self.nms_iou = nms_iou
        self.windows_per_batch = windows_per_batch
        if detections_per_img is not None and detections_per_img < 1:
            raise ConfigError(f"detections_per_img={detections_per_img!r}: must be at least 1")
        self.detections_per_img = detections_per_img  # explicit merged cap; None: per window x windows
        from crossattentiondet.engine.evaluate import detection_cap  # evaluate imports this module lazily

        self.window_detections_per_img = detection_cap(model)
        self.border_px = border_px
        self.cut_containment = cut_containment
        self.training = False

    # ------------------------------------------------------------------ the wrapped model's face
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # dunders stay this object's (copy / pickle protocols ask for them)
            if name in ("detector", "module") or name.startswith("__"):
                raise
        return getattr(super().__getattr__("detector"), name)

    def set_zero_modalities(self, modalities: list[str] | tuple[str, ...]) -> None:
        """Zero these modalities in the wrapped model (missing-sensor evaluation)."""
        self.detector.set_zero_modalities(modalities)

    @property
    def zero_modalities(self) -> list[str]:
        return list(self.detector.zero_modalities)

    def train(self, mode: bool = True) -> TiledDetector:
        """Eval mode only (``train(False)`` / ``eval()``); tiles are an inference-time policy."""
        if mode:
            raise RuntimeError("TiledDetector is for inference: train the wrapped model (.detector), not the tiles")
        self.training = False
        self.detector.eval()
        return self

    def extra_repr(self) -> str:
        cap = self.detections_per_img if self.detections_per_img is not None else (
            f"{self.window_detections_per_img} per window" if self.window_detections_per_img is not None else None)
        return f"tile={self.tile}, overlap={self.overlap}, nms_iou={self.nms_iou}, cap={cap}"

    def frame_cap(self, num_windows: int) -> int | None:
        """The most detections kept for a frame of ``num_windows`` windows (see the class docstring, step 3)."""
        if self.detections_per_img is not None:
            return self.detections_per_img
        if self.window_detections_per_img is None:
            return None
        return self.window_detections_per_img * num_windows

    # ------------------------------------------------------------------ inference
    def forward(self, images: list[Tensor] | Tensor, targets: Any = None) -> list[dict[str, Tensor]]:
        """Detections per frame, boxes in frame pixels, scores highest first."""
        if targets is not None or self.detector.training:
            raise RuntimeError("TiledDetector is for inference: call it in eval mode, without targets")
        images = list(images)
        plans = [tile_windows(int(img.shape[-1]), int(img.shape[-2]), self.tile, self.overlap) for img in images]
        jobs = [(i, w) for i, windows in enumerate(plans) for w in windows]
        raw: list[list[tuple[Window, dict[str, Tensor]]]] = [[] for _ in images]
        for start in range(0, len(jobs), self.windows_per_batch):
            chunk = jobs[start:start + self.windows_per_batch]
            crops = [images[i][..., y0:y1, x0:x1] for i, (x0, y0, x1, y1) in chunk]
            for (i, window), out in zip(chunk, self.detector(crops)):
                raw[i].append((window, out))
        results = []
        for image, windows in zip(images, raw):
            if len(windows) == 1:  # the whole frame in one window: the model's own answer
                results.append(windows[0][1])
            else:
                results.append(self._merge(windows, int(image.shape[-1]), int(image.shape[-2])))
        return results

    def _merge(self, windows: list[tuple[Window, dict[str, Tensor]]], width: int, height: int) -> dict[str, Tensor]:
        """One frame's window detections -> frame detections (see the class docstring)."""
        boxes, scores, labels, origin, cut = [], [], [], [], []
        for index, ((x0, y0, x1, y1), out) in enumerate(windows):
            # float32 before the shift: bf16 boxes from autocast are a few px coarse at x ~ 1000
            b = out["boxes"].float() + torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=out["boxes"].device)
            m = self.border_px
            cut.append((x0 > 0) & (b[:, 0] <= x0 + m) | (y0 > 0) & (b[:, 1] <= y0 + m)
                       | (x1 < width) & (b[:, 2] >= x1 - m) | (y1 < height) & (b[:, 3] >= y1 - m))
            boxes.append(b)
            scores.append(out["scores"].float())
            labels.append(out["labels"])
            origin.append(torch.full((len(b),), index, dtype=torch.int64, device=b.device))
        b, s, lab, win, is_cut = map(torch.cat, (boxes, scores, labels, origin, cut))
        keep = ~self._replaced_pieces(b, lab, win, is_cut)
        b, s, lab = b[keep], s[keep], lab[keep]
        order = batched_nms(b, s, lab, self.nms_iou)
        cap = self.frame_cap(len(windows))
        if cap is not None:
            order = order[:cap]
        return {"boxes": b[order], "scores": s[order], "labels": lab[order]}

    def _replaced_pieces(self, boxes: Tensor, labels: Tensor, window: Tensor, cut: Tensor) -> Tensor:
        """Mask of cut boxes that a larger same-class box from another window mostly contains."""
        dropped = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
        pieces = cut.nonzero().flatten()
        if len(pieces) == 0:
            return dropped
        p = boxes[pieces]
        area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
        left_top = torch.maximum(p[:, None, :2], boxes[None, :, :2])
        right_bottom = torch.minimum(p[:, None, 2:], boxes[None, :, 2:])
        inter = (right_bottom - left_top).clamp(min=0).prod(dim=2)  # (pieces, all)
        holds = ((inter >= self.cut_containment * area[pieces, None].clamp(min=1e-6))
                 & (area[None, :] > area[pieces, None])
                 & (labels[None, :] == labels[pieces, None])
                 & (window[None, :] != window[pieces, None]))
        dropped[pieces] = holds.any(dim=1)
        return dropped


def maybe_tiled(model: nn.Module, eval_config: EvalConfig) -> nn.Module:
    """``model`` wrapped in a :class:`TiledDetector` with ``eval.tile`` / ``tile_overlap`` / ``tile_nms_iou``,
    or ``model`` itself when ``eval.tile`` is None. A model that is already tiled gets the new settings."""
    if eval_config.tile is None:
        return model
    return TiledDetector(model, eval_config.tile, eval_config.tile_overlap, eval_config.tile_nms_iou)


__all__ = ["TiledDetector", "Window", "maybe_tiled", "tile_windows"]
