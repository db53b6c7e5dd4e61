"""COCO-style detection evaluation (faster-coco-eval), missing-modality robustness, result files.

The evaluator collects ground truth and detections batch by batch as compact numpy arrays and builds the
COCO structures only once, in :meth:`DetectionEvaluator.compute`. Metrics are the 12 COCO summary numbers
(:data:`METRIC_KEYS`) plus AP per class; COCO's ``-1`` ("no ground truth of this kind") is NaN here and
``null`` in JSON files, so it can never be averaged in as a real score.

From the same per-image records: the COCO ground truth (:meth:`EvalResult.ground_truth`, saved next to
the predictions so that pycocotools reproduces the metrics), a confusion matrix with background
(:func:`confusion_matrix`) and precision / recall / F1 against the score threshold
(:func:`confidence_curves`), both matched as COCO matches at IoU 0.5.

Size bins (``size_bins``, the config's ``eval.size_bins``):

- ``coco`` (default): the 12 COCO numbers of :data:`METRIC_KEYS`; small < 32^2 px area, medium up to 96^2,
  large above (COCO's ranges, both ends inclusive as in COCO), 100 detections per image and class.
- ``aitod``: AI-TOD's tiny-object bins by sqrt(area): very tiny 0-8 px, tiny 8-16, small 16-32, medium 32
  and up, as the official toolkit (cocoapi-aitod, mmdet's AITODCocoMetric) has them: areas [0, 8^2],
  [8^2, 16^2], [16^2, 32^2], [32^2, 1e5^2], both ends inclusive as COCOeval treats every range, so a box
  exactly on an edge (sqrt(area) = 8, 16 or 32) counts in both neighbouring bins, as in published AI-TOD
  numbers (and as COCO's own small / medium / large at 32^2 and 96^2), at AI-TOD's 1500 detections per
  image and class. Keys
  (:data:`AITOD_METRIC_KEYS`): ``mAP_verytiny``, ``mAP_tiny``, ``mAP_small_aitod``, ``mAP_medium_aitod`` and
  the ``mAR_*`` of the same bins (AR at 1500); AI-TOD's small and medium carry ``_aitod`` so they never
  collide with COCO's ``mAP_small`` / ``mAP_medium``. The overall numbers at 1500 detections are
  ``mAP_aitod``, ``mAP_50_aitod``, ``mAP_75_aitod`` and ``mAR_aitod``. ``mAP``, ``mAP_50``, ``mAP_75``,
  ``mAR_1``, ``mAR_10``, ``mAR_100`` stay COCO's (100 detections) in every mode: ``mAP`` picks best.pt, is
  the bootstrap's and the studies' primary metric, so its meaning must not change with the size bins
  (with at most 100 detections per image the two agree). COCO's small/medium/large are left out.
- ``both``: all of the above (:data:`METRIC_KEYS` first, with exactly the ``coco`` values).

A bin without ground truth is NaN (COCO's -1), a bin with ground truth and no correct detection 0. The
per-class APs and PR curves are always COCO's (all areas, 100 detections). A model that returns fewer than
1500 detections per image (``model.detector.detections_per_img``, 100 by default) cannot reach AI-TOD's
limit: :attr:`EvalResult.notes` says so (and the saved metrics file) rather than claim 1500.

Typical use::

    result = evaluate(model, loader, device, class_names=["person"])
    save_metrics(run_dir / "metrics_test.json", result)
    save_predictions(run_dir / "predictions_test.json", result.predictions)
    save_ground_truth(run_dir / "gt_test.json", result.ground_truth())
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crossattentiondet.io import atomic_write_text, json_safe

log = logging.getLogger(__name__)

METRIC_KEYS: list[str] = [
    "mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large",
    "mAR_1", "mAR_10", "mAR_100", "mAR_small", "mAR_medium", "mAR_large",
]
"""The 12 COCO summary numbers, in ``COCOeval.stats`` order (the first six keep the original's names)."""

SIZE_BINS: tuple[str, ...] = ("coco", "aitod", "both")
"""The values of ``eval.size_bins``."""
COCO_MAX_DETS = 100  # COCO's detections per image and class
AITOD_MAX_DETS = 1500  # AI-TOD's

COCO_OVERALL_KEYS: list[str] = ["mAP", "mAP_50", "mAP_75", "mAR_1", "mAR_10", "mAR_100"]
"""The COCO numbers that do not depend on object size (kept in every ``size_bins`` mode)."""
AITOD_METRIC_KEYS: list[str] = [
    "mAP_aitod", "mAP_50_aitod", "mAP_75_aitod", "mAP_verytiny", "mAP_tiny", "mAP_small_aitod", "mAP_medium_aitod",
    "mAR_aitod", "mAR_verytiny", "mAR_tiny", "mAR_small_aitod", "mAR_medium_aitod",
]
"""AI-TOD's numbers (all at :data:`AITOD_MAX_DETS` detections per image and class)."""


COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e5 ** 2),
}
"""COCO's area ranges (px^2), as COCOeval has them."""
AITOD_AREA_RANGES: dict[str, tuple[float, float]] = {
    "verytiny": (0.0, 8.0 ** 2), "tiny": (8.0 ** 2, 16.0 ** 2),
    "small_aitod": (16.0 ** 2, 32.0 ** 2), "medium_aitod": (32.0 ** 2, 1e5 ** 2),
}
"""AI-TOD's area ranges (px^2) by label, the official toolkit's: COCOeval keeps an area a when
lo <= a <= hi, so a box exactly on an edge is in both neighbouring bins (as published AI-TOD numbers count it)."""

# metric name -> (precision (AP) or recall (AR), IoU threshold (None: 0.50:0.95), area label, detections)
_METRIC_SPECS: dict[str, tuple[bool, float | None, str, int]] = {
    "mAP": (True, None, "all", 100), "mAP_50": (True, 0.5, "all", 100), "mAP_75": (True, 0.75, "all", 100),
    "mAP_small": (True, None, "small", 100), "mAP_medium": (True, None, "medium", 100),
    "mAP_large": (True, None, "large", 100),
    "mAR_1": (False, None, "all", 1), "mAR_10": (False, None, "all", 10), "mAR_100": (False, None, "all", 100),
    "mAR_small": (False, None, "small", 100), "mAR_medium": (False, None, "medium", 100),
    "mAR_large": (False, None, "large", 100),
    "mAP_aitod": (True, None, "all", AITOD_MAX_DETS), "mAP_50_aitod": (True, 0.5, "all", AITOD_MAX_DETS),
    "mAP_75_aitod": (True, 0.75, "all", AITOD_MAX_DETS),
    **{f"mAP_{label}": (True, None, label, AITOD_MAX_DETS) for label in AITOD_AREA_RANGES},
    "mAR_aitod": (False, None, "all", AITOD_MAX_DETS),
    **{f"mAR_{label}": (False, None, label, AITOD_MAX_DETS) for label in AITOD_AREA_RANGES},
}


def check_size_bins(size_bins: str) -> str:
    """``size_bins`` if it is one of :data:`SIZE_BINS`, else a ValueError naming the choices."""
    if size_bins not in SIZE_BINS:
        raise ValueError(f"size_bins must be one of {list(SIZE_BINS)}, got {size_bins!r}")
    return size_bins


def metric_keys(size_bins: str = "coco") -> list[str]:
    """The metric names a ``size_bins`` evaluation reports, in order (see the module docstring)."""
    check_size_bins(size_bins)
    if size_bins == "coco":
        return list(METRIC_KEYS)
    if size_bins == "aitod":
        return [*COCO_OVERALL_KEYS, *AITOD_METRIC_KEYS]
    return [*METRIC_KEYS, *AITOD_METRIC_KEYS]


def max_dets_of(size_bins: str) -> dict[str, int]:
    """Detections per image and class behind each protocol's numbers: {"coco": 100[, "aitod": 1500]}."""
    check_size_bins(size_bins)
    return {"coco": COCO_MAX_DETS, **({"aitod": AITOD_MAX_DETS} if size_bins != "coco" else {})}

# Rounding of saved detections: 0.01 px and 1e-5 in score are far below any effect on the metrics, and the
# evaluator scores the rounded values, so a saved predictions file reproduces the reported metrics exactly.
BOX_DECIMALS = 2
SCORE_DECIMALS = 5

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EvalResult:
    """Everything one evaluation produces.

    ``metrics``: :func:`metric_keys` of ``size_bins`` -> float (NaN where COCO reports -1).
    ``per_class``: class name -> {"AP", "AP_50", "AP_75", "num_gt"} (APs NaN for a class without ground truth).
    ``predictions``: detections in COCO results format (image_id, category_id, bbox xywh, score).
    ``pr_recall`` (R,) and ``pr_precision`` (K, R): interpolated precision at each recall threshold for
    IoU 0.5, all areas, 100 detections per image, one row per class (NaN rows: no ground truth).
    ``image_records``: the evaluator's per-image ground truth and detections (sorted by image id), for
    :func:`crossattentiondet.engine.bootstrap.bootstrap_map`, the ground truth file, the confusion matrix
    and the confidence curves; not written by :meth:`summary`.
    ``size_bins``: the size bins of ``metrics``; ``max_detections_per_image``: the most detections any
    image had; ``notes``: what a reader of the numbers must know (a model capped below AI-TOD's 1500).
    """

    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    predictions: list[dict[str, Any]]
    class_names: list[str]
    pr_recall: np.ndarray
    pr_precision: np.ndarray
    num_images: int = 0
    num_ground_truth: int = 0
    duplicates_skipped: int = 0
    image_records: list[_ImageRecord] = field(default_factory=list, repr=False)
    size_bins: str = "coco"
    max_detections_per_image: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN -> None) of everything except the predictions."""
        return json_safe({
            "metrics": self.metrics,
            "per_class": self.per_class,
            "num_images": self.num_images,
            "num_ground_truth": self.num_ground_truth,
            "num_predictions": len(self.predictions),
            "duplicates_skipped": self.duplicates_skipped,
            "size_bins": self.size_bins,
            "max_dets": max_dets_of(self.size_bins),
            "max_detections_per_image": self.max_detections_per_image,
            **({"notes": list(self.notes)} if self.notes else {}),
            "pr_curve": {
                "iou": 0.5,
                "recall": self.pr_recall.tolist(),
                "precision": {name: row.tolist() for name, row in zip(self.class_names, self.pr_precision)},
            },
        })

    def ground_truth(self) -> dict[str, Any]:
        """The evaluated ground truth as a COCO instances dict (see :func:`coco_ground_truth`)."""
        return coco_ground_truth(self.image_records, self.class_names)

    def confusion_matrix(self, score_thresh: float, iou_thresh: float = 0.5) -> ConfusionMatrix:
        """Counts of true vs predicted class (plus background) at a score threshold; see
        :func:`confusion_matrix`."""
        return confusion_matrix(self.image_records, len(self.class_names), score_thresh, iou_thresh,
                                self.class_names)

    def confidence_curves(self, iou_thresh: float = 0.5) -> ConfidenceCurves:
        """Precision, recall and F1 against the score threshold per class; see :func:`confidence_curves`."""
        return confidence_curves(self.image_records, len(self.class_names), iou_thresh)


@dataclass
class _ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int
    gt_boxes: np.ndarray  # (N, 4) xyxy float64
    gt_labels: np.ndarray  # (N,) int64
    dt_boxes: np.ndarray  # (M, 4) xyxy float64
    dt_scores: np.ndarray  # (M,) float64
    dt_labels: np.ndarray  # (M,) int64


def _as_numpy(value: Tensor | np.ndarray | Sequence[Any], dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float64 if dtype is np.float64 else torch.int64).numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


class DetectionEvaluator:
    """Accumulates ground truth and detections over batches; :meth:`compute` returns COCO metrics.

    ``class_names[i]`` is the name of label ``i + 1`` (label 0 is the detector's background). Images
    without ground truth take part as negatives (any detection on them is a false positive). An image id
    seen twice (e.g. the padding a ``DistributedSampler`` adds) is counted once; the skips are reported.
    ``size_bins``: coco, aitod or both (see the module docstring).
    """

    def __init__(self, class_names: Sequence[str], size_bins: str = "coco") -> None:
        if not class_names:
            raise ValueError("class_names must name at least one class")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names contain duplicates: {list(class_names)}")
        self.class_names = list(class_names)
        self.size_bins = check_size_bins(size_bins)
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._records: dict[int, _ImageRecord] = {}
        self._duplicates = 0

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[_ImageRecord]:
        """The per-image ground truth and detections added so far, sorted by image id."""
        return sorted(self._records.values(), key=lambda r: r.image_id)

    def update(self, targets: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]],
               metas: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Add one batch: loader targets (boxes xyxy, labels, image_id), model outputs (boxes, scores,
        labels) and loader metas (stem, image_id, height, width), all in the same order."""
        if len(targets) != len(outputs) or (metas is not None and len(metas) != len(targets)):
            raise ValueError(f"batch lengths differ: {len(targets)} targets, {len(outputs)} outputs"
                             + (f", {len(metas)} metas" if metas is not None else ""))
        for i, (target, output) in enumerate(zip(targets, outputs)):
            meta = metas[i] if metas is not None else {}
            image_id = self._image_id(target, meta)
            if image_id in self._records:
                self._duplicates += 1
                continue
            gt_boxes = _as_numpy(target.get("boxes", np.zeros((0, 4))), np.float64, (-1, 4))
            gt_labels = _as_numpy(target.get("labels", np.zeros((0,))), np.int64, (-1,))
            dt_boxes = _as_numpy(output["boxes"], np.float64, (-1, 4))
            dt_scores = _as_numpy(output["scores"], np.float64, (-1,))
            dt_labels = _as_numpy(output["labels"], np.int64, (-1,))
            if len(gt_boxes) != len(gt_labels) or not (len(dt_boxes) == len(dt_scores) == len(dt_labels)):
                raise ValueError(f"image {image_id}: boxes/labels/scores lengths differ")
            self._check_labels(gt_labels, f"image {image_id}: ground-truth")
            self._check_labels(dt_labels, f"image {image_id}: predicted")
            self._records[image_id] = _ImageRecord(
                image_id, str(meta.get("stem", image_id)), int(meta.get("height", 0)), int(meta.get("width", 0)),
                gt_boxes, gt_labels, dt_boxes, dt_scores, dt_labels,
            )

    def _image_id(self, target: Mapping[str, Any], meta: Mapping[str, Any]) -> int:
        ids = [int(x) for x in (target.get("image_id"), meta.get("image_id")) if x is not None]
        if not ids:
            raise ValueError("every target (or meta) needs an image_id")
        if len(set(ids)) > 1:
            raise ValueError(f"target image_id {ids[0]} and meta image_id {ids[1]} disagree")
        return ids[0]

    def _check_labels(self, labels: np.ndarray, what: str) -> None:
        if labels.size and (labels.min() < 1 or labels.max() > len(self.class_names)):
            raise ValueError(f"{what} labels must be in 1..{len(self.class_names)} "
                             f"({len(self.class_names)} classes), got {sorted(set(labels.tolist()))}")

    def synchronize(self) -> None:
        """Under ``torch.distributed``, give every rank the records of all ranks (no-op otherwise).

        Each rank evaluates its shard of the data; call this before :meth:`compute` so every rank (or just
        the one that writes) computes metrics over the whole split.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        if world == 1:
            return
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (list(self._records.values()), self._duplicates))
        self.reset()
        for records, duplicates in gathered:
            self._duplicates += duplicates
            for record in records:
                if record.image_id in self._records:
                    self._duplicates += 1
                else:
                    self._records[record.image_id] = record

    # ------------------------------------------------------------------------------------------ compute
    def ground_truth(self) -> dict[str, Any]:
        """The accumulated ground truth as a COCO dataset dict (bbox xywh, area = w * h, iscrowd 0)."""
        return coco_ground_truth(self.records(), self.class_names)

    def predictions(self) -> list[dict[str, Any]]:
        """The accumulated detections in COCO results format (bbox xywh rounded to 0.01 px)."""
        records = sorted(self._records.values(), key=lambda r: r.image_id)
        if not records:
            return []
        image_ids = np.repeat([r.image_id for r in records], [len(r.dt_scores) for r in records]).tolist()
        boxes = np.round(_xyxy_to_xywh(np.concatenate([r.dt_boxes for r in records])), BOX_DECIMALS).tolist()
        scores = np.round(np.concatenate([r.dt_scores for r in records]), SCORE_DECIMALS).tolist()
        labels = np.concatenate([r.dt_labels for r in records]).tolist()
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(image_ids, labels, boxes, scores)]

    def compute(self) -> EvalResult:
        """COCO bbox metrics over everything added since the last :meth:`reset`."""
        if not self._records:
            raise ValueError("DetectionEvaluator.compute(): no images were added (empty loader or split?)")
        if self._duplicates:
            log.info("evaluation: %d repeated image(s) skipped (same image_id seen before)", self._duplicates)
        with _gc_paused():
            gt = self.ground_truth()
            predictions = self.predictions()
            coco_eval, metrics = coco_metrics(gt, predictions, self.size_bins)
        result = _result_from_cocoeval(coco_eval, self.class_names, predictions, gt, self._duplicates, metrics)
        result.image_records = self.records()
        result.size_bins = self.size_bins
        result.max_detections_per_image = max((len(r.dt_scores) for r in result.image_records), default=0)
        return result


def coco_ground_truth(records: Sequence[_ImageRecord], class_names: Sequence[str]) -> dict[str, Any]:
    """COCO instances dict of the records' ground truth: images (id, file_name = the frame stem, width,
    height), annotations (id from 1, image_id, category_id = label, bbox xywh, area = w * h, iscrowd 0) and
    categories (id ``i + 1`` = ``class_names[i]``)."""
    records = sorted(records, key=lambda r: r.image_id)
    images = [{"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width}
              for r in records]
    counts = [len(r.gt_labels) for r in records]
    boxes = _xyxy_to_xywh(np.concatenate([r.gt_boxes for r in records]) if records else np.zeros((0, 4)))
    labels = np.concatenate([r.gt_labels for r in records]).tolist() if records else []
    image_ids = np.repeat([r.image_id for r in records], counts).tolist()
    areas = (boxes[:, 2] * boxes[:, 3]).tolist()
    # annotation ids start at 1: COCOeval treats a matched id of 0 as "unmatched"
    annotations = [
        {"id": i, "image_id": img, "category_id": cat, "bbox": box, "area": area, "iscrowd": 0}
        for i, (img, cat, box, area) in enumerate(zip(image_ids, labels, boxes.tolist(), areas), start=1)
    ]
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names, start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Building ~10^5 small dicts and lists triggers many cyclic-GC passes that find nothing (they hold no
    # cycles); pausing the collector makes compute() ~1.5x faster on 2,000 images x 100 detections.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64, copy=True).reshape(-1, 4)
    out[:, 2:] -= out[:, :2]
    return out


def run_coco_eval(ground_truth: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], *,
                  area_ranges: Mapping[str, tuple[float, float]] | None = None,
                  max_dets: Sequence[int] | None = None) -> Any:
    """Run faster-coco-eval's bbox evaluation; returns the ``COCOeval_faster`` object.

    ``ground_truth`` is a COCO dataset dict, ``predictions`` a COCO results list; neither is modified.
    With neither ``area_ranges`` (label -> (lo, hi) px^2, both ends inclusive as in COCO, next to "all")
    nor ``max_dets`` it is COCO's standard evaluation, summarised (``.stats``); with them, evaluated and
    accumulated only: read the numbers by name with :func:`summarize_by_name`.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*_args: Any, **_kwargs: Any) -> None:
        return None

    coco_gt = COCO(dict(ground_truth), print_function=quiet)
    # The detections' COCO object is built directly (as loadRes would, minus the bbox polygons it adds to
    # every detection, which bbox evaluation never reads): a third of the time for 200k detections.
    dt_anns = [
        {**p, "id": i, "area": p["bbox"][2] * p["bbox"][3], "iscrowd": 0}
        for i, p in enumerate(predictions, start=1)
    ]
    coco_dt = COCO({"images": list(ground_truth["images"]), "annotations": dt_anns,
                    "categories": list(ground_truth["categories"])}, print_function=quiet)
    coco_eval = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
    custom = area_ranges is not None or max_dets is not None
    if area_ranges is not None:
        coco_eval.params.areaRng = [[0.0, 1e5 ** 2], *([float(lo), float(hi)] for lo, hi in area_ranges.values())]
        coco_eval.params.areaRngLbl = ["all", *area_ranges]
    if max_dets is not None:
        coco_eval.params.maxDets = sorted(int(m) for m in max_dets)
    coco_eval.evaluate()
    coco_eval.accumulate()
    if not custom:
        coco_eval.summarize()
    return coco_eval


def summarize_by_name(coco_eval: Any, keys: Sequence[str]) -> dict[str, float]:
    """The metrics ``keys`` (names of :func:`metric_keys`) from an accumulated ``COCOeval``, each read from
    its precision / recall array at the area range of its label and the maxDets of its value (never by
    position), averaged as COCO's summarize does (over entries > -1); NaN where COCO would report -1."""
    params = coco_eval.params
    labels, dets = list(params.areaRngLbl), [int(m) for m in params.maxDets]
    ious = np.asarray(params.iouThrs, dtype=np.float64)
    out: dict[str, float] = {}
    for key in keys:
        if key not in _METRIC_SPECS:
            raise ValueError(f"unknown metric {key!r}; known: {list(_METRIC_SPECS)}")
        is_ap, iou, area, max_det = _METRIC_SPECS[key]
        if area not in labels or max_det not in dets:
            raise ValueError(f"metric {key} needs area range {area!r} and maxDets {max_det}; this evaluation has "
                             f"{labels} and {dets}")
        a, m = labels.index(area), dets.index(max_det)
        # precision [T, R, K, A, M], recall [T, K, A, M]
        values = np.asarray(coco_eval.eval["precision" if is_ap else "recall"], dtype=np.float64)
        values = values[..., a, m]
        if iou is not None:
            values = values[np.flatnonzero(np.isclose(ious, iou))]
        out[key] = _mean_valid(values)
    return out


def coco_metrics(ground_truth: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]],
                 size_bins: str = "coco") -> tuple[Any, dict[str, float]]:
    """(the ``COCOeval`` object, the metrics of :func:`metric_keys` ``size_bins`` by name) for a COCO ground
    truth dict and a COCO results list. ``coco`` is COCO's standard evaluation (its ``stats``); ``aitod`` and
    ``both`` are one evaluation with COCO's and AI-TOD's area ranges and maxDets 1, 10, 100, 1500 (a
    detection's match never depends on lower-scored ones, so the numbers at 100 equal COCO's own)."""
    check_size_bins(size_bins)
    if size_bins == "coco":
        coco_eval = run_coco_eval(ground_truth, predictions)
        stats = np.asarray(coco_eval.stats, dtype=np.float64)[: len(METRIC_KEYS)]
        return coco_eval, {key: _nan_if_missing(v) for key, v in zip(METRIC_KEYS, stats.tolist())}
    coco_eval = run_coco_eval(ground_truth, predictions, area_ranges={**COCO_AREA_RANGES, **AITOD_AREA_RANGES},
                              max_dets=[1, 10, COCO_MAX_DETS, AITOD_MAX_DETS])
    return coco_eval, summarize_by_name(coco_eval, metric_keys(size_bins))


def _nan_if_missing(value: float) -> float:
    return float("nan") if value == -1 else float(value)


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def class_precision(coco_eval: Any, category_id: int) -> np.ndarray | None:
    """Interpolated precision [T, R] of one category at area "all" and COCO's 100 detections (None: the
    evaluation has no such category)."""
    params = coco_eval.params
    k = {int(c): i for i, c in enumerate(params.catIds)}.get(int(category_id))
    if k is None:
        return None
    precision = np.asarray(coco_eval.eval["precision"], dtype=np.float64)  # [T, R, K, A, M]
    area_all = list(params.areaRngLbl).index("all")
    max_det = [int(m) for m in params.maxDets].index(COCO_MAX_DETS)  # by value: aitod adds 1500 after it
    return precision[:, :, k, area_all, max_det]


def class_ap(coco_eval: Any, category_id: int, num_gt: int) -> dict[str, float]:
    """{"AP", "AP_50", "AP_75", "num_gt"} of one category (COCO's: all areas, 100 detections; NaN without
    ground truth)."""
    p = class_precision(coco_eval, category_id)
    if p is None:
        return {"AP": float("nan"), "AP_50": float("nan"), "AP_75": float("nan"), "num_gt": int(num_gt)}
    ious = np.asarray(coco_eval.params.iouThrs, dtype=np.float64)
    iou50, iou75 = int(np.argmin(np.abs(ious - 0.5))), int(np.argmin(np.abs(ious - 0.75)))
    return {"AP": _mean_valid(p), "AP_50": _mean_valid(p[iou50]), "AP_75": _mean_valid(p[iou75]),
            "num_gt": int(num_gt)}


def _result_from_cocoeval(coco_eval: Any, class_names: list[str], predictions: list[dict[str, Any]],
                          gt: Mapping[str, Any], duplicates: int, metrics: dict[str, float]) -> EvalResult:
    params = coco_eval.params
    iou50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    num_gt = np.bincount([a["category_id"] for a in gt["annotations"]], minlength=len(class_names) + 1)

    per_class: dict[str, dict[str, float]] = {}
    pr_precision = np.full((len(class_names), len(params.recThrs)), np.nan)
    for label, name in enumerate(class_names, start=1):
        per_class[name] = class_ap(coco_eval, label, int(num_gt[label]))
        p = class_precision(coco_eval, label)
        if p is not None and (p[iou50] > -1).any():
            pr_precision[label - 1] = np.where(p[iou50] > -1, p[iou50], np.nan)
    return EvalResult(
        metrics=metrics,
        per_class=per_class,
        predictions=predictions,
        class_names=list(class_names),
        pr_recall=np.asarray(params.recThrs, dtype=np.float64).copy(),
        pr_precision=pr_precision,
        num_images=len(gt["images"]),
        num_ground_truth=len(gt["annotations"]),
        duplicates_skipped=duplicates,
    )


# ------------------------------------------------------------------- matching, confusion, confidence curves
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), both xyxy: an (N, M) array."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _score_order(scores: np.ndarray) -> np.ndarray:
    # highest score first; a stable sort keeps the model's order among equal scores, as COCOeval does
    return np.argsort(-scores, kind="mergesort")


def match_same_class(record: _ImageRecord, iou_thresh: float = 0.5) -> np.ndarray:
    """For each detection of ``record``, the index of the ground-truth box it matches, or -1.

    COCO's rule at one IoU threshold: per class, detections in descending score order each take the
    not yet matched ground-truth box of their class with the highest IoU >= ``iou_thresh``. A
    detection's match never depends on lower-scored detections, so the matches of the detections above
    any score threshold are the same as matching only those.
    """
    matched = np.full(len(record.dt_scores), -1, np.int64)
    if not len(record.dt_scores) or not len(record.gt_labels):
        return matched
    iou = box_iou(record.dt_boxes, record.gt_boxes)
    iou[record.dt_labels[:, None] != record.gt_labels[None, :]] = -1.0
    # only detections that overlap a box of their class enough can match: the greedy loop skips the rest
    # (most of a detector's 100 per image), which makes it fast enough for large splits
    hopeful = np.flatnonzero(iou.max(axis=1) >= iou_thresh)
    taken = np.zeros(len(record.gt_labels), bool)
    for d in hopeful[_score_order(record.dt_scores[hopeful])]:
        candidates = np.where(taken, -1.0, iou[d])
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_thresh:
            matched[d] = g
            taken[g] = True
    return matched


@dataclass
class ConfusionMatrix:
    """``counts[i, j]``: boxes of true class i predicted as class j, at ``score_thresh`` and ``iou_thresh``.

    Index ``k`` is label ``k + 1`` (``labels[k]``); the last row and column are "background": row
    background = detections matching no ground truth (false positives), column background = ground-truth
    boxes no detection found (missed). The diagonal holds the true positives.
    """

    counts: np.ndarray  # (K + 1, K + 1) int64
    labels: list[str]  # class names, then "background"
    score_thresh: float
    iou_thresh: float

    def normalized(self) -> np.ndarray:
        """Each row divided by its sum (where a true class went); NaN rows where the sum is 0."""
        totals = self.counts.sum(axis=1, keepdims=True).astype(np.float64)
        return np.divide(self.counts, totals, out=np.full(self.counts.shape, np.nan), where=totals > 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (rows = true class, columns = predicted class)."""
        return {"score_thresh": self.score_thresh, "iou": self.iou_thresh, "rows": "true class",
                "columns": "predicted class", "labels": self.labels, "counts": self.counts.tolist()}


def confusion_matrix(records: Sequence[_ImageRecord], num_classes: int, score_thresh: float,
                     iou_thresh: float = 0.5, class_names: Sequence[str] | None = None) -> ConfusionMatrix:
    """Confusion matrix of detections with score >= ``score_thresh`` against the ground truth.

    First each detection is matched within its class (:func:`match_same_class`: these are the true
    positives, the same ones COCO AP50 counts); the detections left over then take, in score order, the
    unmatched ground-truth box of any class with the highest IoU >= ``iou_thresh`` (a class confusion).
    Detections still unmatched are background false positives; ground truth left over was missed.
    """
    background = num_classes
    counts = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for record in records:
        gt_class = record.gt_labels - 1
        keep = record.dt_scores >= score_thresh
        same = match_same_class(record, iou_thresh)
        taken = np.zeros(len(gt_class), bool)
        found = same[keep & (same >= 0)]
        np.add.at(counts, (gt_class[found], gt_class[found]), 1)
        taken[found] = True
        left = np.flatnonzero(keep & (same < 0))
        unmatched = np.ones(len(left), bool)
        if len(left) and len(gt_class):
            iou = box_iou(record.dt_boxes[left], record.gt_boxes)
            hopeful = np.flatnonzero(iou.max(axis=1) >= iou_thresh)  # the rest cannot take any box
            for row in hopeful[_score_order(record.dt_scores[left[hopeful]])]:
                candidates = np.where(taken, -1.0, iou[row])
                g = int(np.argmax(candidates))
                if candidates[g] >= iou_thresh:
                    counts[gt_class[g], record.dt_labels[left[row]] - 1] += 1
                    taken[g] = True
                    unmatched[row] = False
        np.add.at(counts, (background, record.dt_labels[left[unmatched]] - 1), 1)
        np.add.at(counts, (gt_class[~taken], background), 1)
    names = list(class_names) if class_names is not None else [str(k) for k in range(1, num_classes + 1)]
    return ConfusionMatrix(counts, [*names, "background"], float(score_thresh), float(iou_thresh))


@dataclass
class ConfidenceCurves:
    """Precision, recall and F1 of each class (rows, index k = label k + 1) at each score threshold.

    ``precision`` is NaN where no detection of the class reaches the threshold, ``recall`` and ``f1`` NaN
    for a class without ground truth. ``all_*`` are the means over the classes that have ground truth
    (precision over those with a value), the "all classes" curves.
    """

    thresholds: np.ndarray  # (T,)
    precision: np.ndarray  # (K, T)
    recall: np.ndarray  # (K, T)
    f1: np.ndarray  # (K, T)
    num_gt: np.ndarray  # (K,)
    iou_thresh: float

    def _mean(self, values: np.ndarray) -> np.ndarray:
        rows = values[self.num_gt > 0]
        if not len(rows):
            return np.full(len(self.thresholds), np.nan)
        valid = np.isfinite(rows)
        total = np.where(valid, rows, 0.0).sum(axis=0)
        count = valid.sum(axis=0)
        return np.divide(total, count, out=np.full(len(self.thresholds), np.nan), where=count > 0)

    @property
    def all_precision(self) -> np.ndarray:
        return self._mean(self.precision)

    @property
    def all_recall(self) -> np.ndarray:
        return self._mean(self.recall)

    @property
    def all_f1(self) -> np.ndarray:
        return self._mean(self.f1)

    def best_f1(self) -> tuple[float, float]:
        """(F1, score threshold) where the all-classes F1 peaks; (NaN, NaN) without ground truth."""
        f1 = self.all_f1
        if not np.isfinite(f1).any():
            return float("nan"), float("nan")
        i = int(np.nanargmax(f1))
        return float(f1[i]), float(self.thresholds[i])


CONFIDENCE_STEPS = 201  # score thresholds 0, 0.005, ..., 1


def confidence_curves(records: Sequence[_ImageRecord], num_classes: int, iou_thresh: float = 0.5,
                      thresholds: np.ndarray | None = None) -> ConfidenceCurves:
    """Precision = TP / detections, recall = TP / ground truth and F1 = 2 TP / (detections + ground truth)
    of each class, counting the detections with score >= each threshold; TP as in COCO at ``iou_thresh``
    (:func:`match_same_class`)."""
    thresholds = np.linspace(0.0, 1.0, CONFIDENCE_STEPS) if thresholds is None else np.asarray(thresholds, float)
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, np.int64)
    for record in records:
        num_gt += np.bincount(record.gt_labels - 1, minlength=num_classes)[:num_classes]
        tp = match_same_class(record, iou_thresh) >= 0
        for k in np.unique(record.dt_labels - 1):
            mine = record.dt_labels - 1 == k
            scores[k].append(record.dt_scores[mine])
            hits[k].append(tp[mine])
    shape = (num_classes, len(thresholds))
    precision, recall, f1 = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for k in range(num_classes):
        s = np.concatenate(scores[k]) if scores[k] else np.zeros(0)
        h = np.concatenate(hits[k]) if hits[k] else np.zeros(0, bool)
        order = _score_order(s)
        s, cum_tp = s[order], np.cumsum(h[order])
        # detections with score >= t: the first n of the descending scores
        n = np.searchsorted(-s, -thresholds, side="right")
        tp = np.where(n > 0, cum_tp[np.maximum(n - 1, 0)] if len(s) else 0, 0).astype(np.float64)
        precision[k] = np.divide(tp, n, out=np.full(len(thresholds), np.nan), where=n > 0)
        if num_gt[k] > 0:
            recall[k] = tp / num_gt[k]
            f1[k] = 2 * tp / (n + num_gt[k])
    return ConfidenceCurves(thresholds, precision, recall, f1, num_gt, float(iou_thresh))


# ------------------------------------------------------------------------------------------ model loops
def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel keep the detector (and its zeroing API) in .module
    return getattr(model, "module", model)


def autocast_context(device: torch.device, precision: str) -> Any:
    """``torch.autocast`` for "bf16" / "fp16" (fp16 only on CUDA), a no-op context for "fp32"."""
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {list(_PRECISIONS)}, got {precision!r}")
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"fp16 autocast needs a CUDA device (got {device.type}); use bf16 or fp32")
    return torch.autocast(device.type, dtype=dtype)


def detection_cap(model: nn.Module) -> int | None:
    """The most detections per image ``model`` returns, where it says (torchvision's
    ``roi_heads.detections_per_img``, or any submodule's ``detections_per_img``); None when nothing says.
    A tiled model without an explicit cap keeps up to its model's cap per window, so its frame cap depends
    on the frame size: None (unknown) too."""
    from crossattentiondet.engine.tiling import TiledDetector

    for module in model.modules():
        if isinstance(module, TiledDetector):
            return module.detections_per_img
        cap = getattr(module, "detections_per_img", None)
        if isinstance(cap, int) and not isinstance(cap, bool):
            return cap
    return None


def detection_cap_notes(size_bins: str, cap: int | None, observed: int) -> list[str]:
    """What a reader of AI-TOD numbers must know: a model that returns at most ``cap`` < 1500 detections
    per image (``observed``: the most any evaluated image had) was not evaluated at AI-TOD's limit."""
    if size_bins == "coco":
        return []
    if cap is not None and cap < AITOD_MAX_DETS and observed <= cap:
        return [f"AI-TOD counts up to {AITOD_MAX_DETS} detections per image; this model returns at most {cap} "
                f"(model.detector.detections_per_img), so the *_aitod, verytiny and tiny numbers are at {cap} "
                f"detections per image: set model.detector.detections_per_img={AITOD_MAX_DETS} for the protocol's"]
    if cap is None and observed < AITOD_MAX_DETS:
        return [f"AI-TOD counts up to {AITOD_MAX_DETS} detections per image; the model's limit is unknown and no "
                f"image had more than {observed}"]
    return []


def evaluate(model: nn.Module, loader: Iterable[Any], device: torch.device | str, *, precision: str = "fp32",
             class_names: Sequence[str], zero_modalities: Sequence[str] | None = None,
             max_batches: int | None = None, gather: bool = False,
             on_batch: Callable[[int], None] | None = None, size_bins: str = "coco",
             max_detections: int | None = None) -> EvalResult:
    """Run ``model`` over ``loader`` and return COCO metrics, per-class AP and the detections.

    ``size_bins`` (``eval.size_bins``): coco, aitod or both (see the module docstring). ``max_detections``:
    the model's detections-per-image limit (None: :func:`detection_cap` reads it from the model); with
    AI-TOD bins and a limit below 1500, ``result.notes`` says so.

    ``loader`` yields ``(images, targets, metas)`` batches. ``zero_modalities`` (None: keep the model's
    own setting) replaces these modalities by zeros for this evaluation only; the model's previous zeroing
    and train/eval mode are restored afterwards. ``on_batch(n_done)`` is called after every batch (for a
    progress display). ``max_batches`` stops early (quick checks). ``gather=True`` is for
    ``torch.distributed`` runs where every rank evaluates its own shard: results are gathered so each rank
    returns metrics over the whole split (every rank must call it, or it waits forever).
    """
    device = torch.device(device)
    core = _unwrap(model)
    previous_zero = list(core.zero_modalities) if hasattr(core, "zero_modalities") else None
    was_training = model.training
    evaluator = DetectionEvaluator(class_names, size_bins)
    cast = autocast_context(device, precision)  # validates precision before any work
    cap = max_detections if max_detections is not None else detection_cap(model)
    try:
        if zero_modalities is not None:
            core.set_zero_modalities(list(zero_modalities))
        model.eval()
        with torch.inference_mode():
            for n, (images, targets, metas) in enumerate(loader, start=1):
                images = [img.to(device, non_blocking=True) for img in images]
                with cast:
                    outputs = model(images)
                outputs = [{"boxes": o["boxes"].float().cpu(), "scores": o["scores"].float().cpu(),
                            "labels": o["labels"].cpu()} for o in outputs]
                evaluator.update(targets, outputs, metas)
                if on_batch is not None:
                    on_batch(n)
                if max_batches is not None and n >= max_batches:
                    break
    finally:
        if previous_zero is not None:
            core.set_zero_modalities(previous_zero)
        model.train(was_training)
    if gather:
        evaluator.synchronize()
    result = evaluator.compute()
    result.notes = detection_cap_notes(size_bins, cap, result.max_detections_per_image)
    return result


def robustness_table(model: nn.Module, loader: Iterable[Any], device: torch.device | str, *,
                     precision: str = "fp32", class_names: Sequence[str],
                     modalities: Sequence[str] | None = None,
                     max_batches: int | None = None, gather: bool = False,
                     on_progress: Callable[[int, int], None] | None = None,
                     size_bins: str = "coco") -> list[dict[str, Any]]:
    """mAP etc. with all inputs, then with each modality zeroed in turn (missing-sensor robustness).

    Rows are ``{"zeroed": "none" | name, **metrics}``. Only modalities the model's streams read are tried
    (None: all of them); one the model already zeroes (``model.zero_modalities``) is skipped, and the
    "none" row is the model as configured, so each row differs from it by exactly one missing sensor.
    ``gather``: every rank of a distributed run evaluates its shard (see :func:`evaluate`).
    ``on_progress(done, total)`` is called after every batch with the batches done over all passes and
    their total (for a progress display; total 0 when ``loader`` has no length). ``size_bins``: the metrics
    of each row (see :func:`evaluate`).
    """
    core = _unwrap(model)
    layout = core.layout
    candidates = list(layout.modality_names) if modalities is None else list(modalities)
    layout.channels_of(candidates)  # raises on an unknown name
    base = list(core.zero_modalities)
    to_zero = [m for m in candidates if m in layout.used_modalities() and m not in base]

    passes = [None, *to_zero]
    per_pass = len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
    per_pass = min(per_pass, max_batches) if max_batches is not None else per_pass
    rows: list[dict[str, Any]] = []
    for index, zeroed in enumerate(passes):
        on_batch = None
        if on_progress is not None:
            on_batch = lambda n, before=index * per_pass: on_progress(before + n, per_pass * len(passes))  # noqa: E731
        result = evaluate(model, loader, device, precision=precision, class_names=class_names,
                          zero_modalities=base + ([zeroed] if zeroed else []), max_batches=max_batches,
                          gather=gather, on_batch=on_batch, size_bins=size_bins)
        rows.append({"zeroed": zeroed or "none", **result.metrics})
    return rows


# ----------------------------------------------------------------------------------------------- files
def save_predictions(path: str | Path, predictions: Sequence[Mapping[str, Any]]) -> None:
    """Write detections as a COCO results JSON file (atomically, compact: files reach 10^5 entries)."""
    atomic_write_text(path, json.dumps(list(predictions), separators=(",", ":"), allow_nan=False) + "\n")


GROUND_TRUTH_INFO = ("image_id: the frame's 0-based position in the data set's sorted list of frame stems "
                     "(as in predictions_<split>.json); file_name: the frame stem")


def save_ground_truth(path: str | Path, ground_truth: Mapping[str, Any], description: str = "") -> None:
    """Write a COCO instances file (images, annotations, categories) that pycocotools and other COCO tools
    read, with an ``info`` block saying what ``image_id`` and ``file_name`` are (atomically, compact)."""
    info = {"description": description or "ground truth of a CrossAttentionDet evaluation",
            "ids": GROUND_TRUTH_INFO}
    data = {"info": info, **{k: list(ground_truth[k]) for k in ("images", "annotations", "categories")}}
    atomic_write_text(path, json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n")


def save_metrics(path: str | Path, result: EvalResult) -> None:
    """Write metrics, per-class AP, counts and the PR-curve data as JSON (NaN written as null)."""
    atomic_write_text(path, json.dumps(result.summary(), indent=2, allow_nan=False) + "\n")
