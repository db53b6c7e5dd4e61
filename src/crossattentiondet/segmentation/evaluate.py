"""Segmentation evaluation: the field's protocol, per image, at the ground truth's own resolution.

For every image the model's map is cropped to the valid (unpadded) input region and resized back to the
GT's size (bilinear). Binary (COD): the probability map becomes the 8-bit map a COD toolkit reads
(``round(255 p)``), and the metrics are computed on exactly that map (segmentation/metrics.py, equal to
PySODMetrics), so ``cadet eval --pred`` on the saved PNGs gives the same numbers. Semantic: the arg-max
class map feeds one confusion matrix. Nothing is pooled over a batch: the batch size cannot change a number.

Results are kept per test set (the sinet layout's CAMO / COD10K / CHAMELEON / NC4K) and over all images.
Under DDP every rank evaluates its shard and the accumulators are gathered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ALL_SETS = "all"


@dataclass
class SegEvalResult:
    """Metrics over all images (``metrics``) and per test set (``per_set``); per-image rows (binary) or
    per-image confusion matrices (semantic, (N, K, K)), both in (set, stem) order, for the bootstrap."""

    metrics: dict[str, float]
    per_set: dict[str, dict[str, float]] = field(default_factory=dict)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    confusions: np.ndarray | None = None
    image_keys: list[str] = field(default_factory=list)  # "<set>/<stem>" of every image, in that order

    @property
    def images_hash(self) -> str:
        """Names the evaluated images (equal for two evaluations of the same test set)."""
        return hashlib.sha256("\n".join(sorted(self.image_keys)).encode()).hexdigest()[:16]


class SegEvaluator:
    """Accumulates per-image metrics for one split, by test set.

    Binary: one :class:`~crossattentiondet.segmentation.metrics.BinaryMetrics` per set. Semantic: one
    (K, K) confusion matrix per image (small; the bootstrap resamples them), summed per set.
    """

    def __init__(self, binary: bool, class_names: list[str]) -> None:
        self.binary = binary
        self.class_names = list(class_names)
        self.by_set: dict[str, Any] = {}  # binary: set -> BinaryMetrics
        self.confusions: dict[str, dict[str, np.ndarray]] = {}  # semantic: set -> stem -> (K, K)

    def update(self, prediction: np.ndarray, gt: np.ndarray, stem: str, set_name: str) -> None:
        """``prediction``: binary uint8 0-255 map, semantic int class map; both at the GT's size."""
        from crossattentiondet.segmentation.metrics import BinaryMetrics

        gt = np.asarray(gt)
        if self.binary:
            ignore = gt == 255
            if ignore.any():  # no COD toolkit knows ignore pixels: they count as correctly predicted background
                prediction = np.where(ignore, 0, prediction).astype(np.uint8)
                gt = np.where(ignore, 0, gt)
            self.by_set.setdefault(set_name, BinaryMetrics()).update(prediction, gt.astype(np.uint8), name=stem)
            return
        k = len(self.class_names)
        valid = gt != 255
        if (gt[valid] >= k).any():
            raise ValueError(f"{stem}: mask values {sorted(set(np.unique(gt[valid])) - set(range(k)))} outside "
                             f"the {k} classes")
        index = gt[valid].astype(np.int64) * k + np.asarray(prediction)[valid].astype(np.int64)
        self.confusions.setdefault(set_name, {})[stem] = np.bincount(index, minlength=k * k).reshape(k, k)

    def synchronize(self) -> None:
        """Merge the accumulators of all DDP ranks into every rank's."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        from crossattentiondet.segmentation.metrics import BinaryMetrics

        mine = {name: acc.state() for name, acc in self.by_set.items()} if self.binary else self.confusions
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        if self.binary:
            self.by_set = {}
            for states in gathered:
                for name, state in states.items():
                    self.by_set.setdefault(name, BinaryMetrics()).merge(state)
        else:
            self.confusions = {}
            for part in gathered:
                for name, stems in part.items():
                    self.confusions.setdefault(name, {}).update(stems)

    def result(self) -> SegEvalResult:
        from crossattentiondet.segmentation.metrics import BinaryMetrics, ConfusionMatrix

        if self.binary:
            pooled = BinaryMetrics()
            for acc in self.by_set.values():
                pooled.merge(acc.state())
            per_set = {name: acc.results() for name, acc in sorted(self.by_set.items())}
            rows = sorted((dict(row, set=name) for name, acc in self.by_set.items() for row in acc.per_image()),
                          key=lambda r: (r["set"], str(r.get("name"))))
            return SegEvalResult(pooled.results(), per_set, rows, len(pooled),
                                 image_keys=[f"{r['set']}/{r.get('name')}" for r in rows])

        def metrics_of(matrix: np.ndarray) -> dict[str, float]:
            cm = ConfusionMatrix(len(self.class_names))
            cm.matrix = matrix.astype(np.int64)
            return cm.results(self.class_names)

        k = len(self.class_names)
        ordered = [(name, stem, m) for name in sorted(self.confusions)
                   for stem, m in sorted(self.confusions[name].items())]
        stack = np.stack([m for _, _, m in ordered]) if ordered else np.zeros((0, k, k), np.int64)
        per_set = {name: metrics_of(sum(stems.values())) for name, stems in sorted(self.confusions.items())}
        return SegEvalResult(metrics_of(stack.sum(0)), per_set, [], len(ordered), confusions=stack,
                             image_keys=[f"{name}/{stem}" for name, stem, _ in ordered])


def _autocast(device: torch.device, precision: str) -> Any:
    from crossattentiondet.engine.evaluate import autocast_context

    return autocast_context(device, precision)


def restore_to_gt(logits: torch.Tensor, valid_hw: tuple[int, int], gt_hw: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) logits of one padded input -> (K, h, w) at the GT's size: crop the valid region, bilinear."""
    cropped = logits[:, : valid_hw[0], : valid_hw[1]]
    if tuple(cropped.shape[1:]) == tuple(gt_hw):
        return cropped
    return F.interpolate(cropped[None], size=tuple(gt_hw), mode="bilinear", align_corners=False)[0]


def prediction_maps(logits: torch.Tensor, binary: bool) -> np.ndarray:
    """(K, h, w) logits -> the saved map: binary uint8 round(255 * sigmoid); semantic uint8 class ids."""
    if binary:
        prob = torch.sigmoid(logits[0].float())
        return torch.round(prob * 255).to(torch.uint8).cpu().numpy()
    return logits.argmax(0).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: Iterable[Any], device: torch.device | str, *, binary: bool,
                          class_names: list[str], precision: str = "fp32", gather: bool = False,
                          on_batch: Callable[[int], None] | None = None, save_dir: Path | None = None
                          ) -> SegEvalResult:
    """Evaluate ``model`` on ``loader``; with ``save_dir`` write each map as an 8-bit PNG at the GT's size in
    ``save_dir/<set>/<stem>.png`` (binary: 0-255 probability maps, what COD toolkits read; semantic: class
    ids)."""
    from crossattentiondet.data.imageio import write_png

    device = torch.device(device)
    was_training = model.training
    model.eval()
    evaluator = SegEvaluator(binary, class_names)
    try:
        for n, (images, targets, metas) in enumerate(loader, start=1):
            if not images:
                continue
            batch = torch.stack(images).to(device, non_blocking=True)
            with _autocast(device, precision):
                logits = model(batch)
            logits = logits.float()
            for i, (target, meta) in enumerate(zip(targets, metas)):
                gt = target["mask"].numpy()
                restored = restore_to_gt(logits[i], meta["valid_hw"], gt.shape)
                pred = prediction_maps(restored, binary)
                evaluator.update(pred, gt, meta["stem"], meta["set"])
                if save_dir is not None:
                    stem = meta["stem"].split("/")[-1]
                    write_png(Path(save_dir) / meta["set"] / f"{stem}.png", pred)
            if on_batch is not None:
                on_batch(n)  # batches done, as detection's evaluate
    finally:
        model.train(was_training)
    if gather:
        evaluator.synchronize()
    return evaluator.result()
