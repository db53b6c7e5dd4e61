"""Log-average miss rate MR^-2: what pedestrian detection (Caltech, KAIST, LLVIP) reports. Lower is better.

The Caltech/KAIST protocol (Dollar et al., "Pedestrian Detection: An Evaluation of the State of the Art",
TPAMI 2012; the toolbox's ``bbGt`` evalRes / compRoc, as KAIST's evaluation calls them):

* Matching, per image, at overlap 0.5: detections in descending score order, each to the unmatched object
  it overlaps most (IoU); an object may be matched once. Objects the evaluated subset leaves out (too small,
  too occluded, at the image border) and the annotated ignore regions (crowds, cyclists, unsure persons) are
  *ignore* boxes: a detection is tested against them only when no object took it, with the overlap
  intersection / detection area (a detection anywhere inside an ignore region matches it), and one ignore
  box may take any number of detections. A detection matched to an ignore box is neither a true nor a false
  positive; an ignore box is never a miss.
* The curve: all counted detections of all images by descending score; after each, the false positives per
  image (FPPI = false positives / images, every evaluated image counting, with objects or without) and the
  miss rate (1 - matched objects / objects).
* MR^-2: the miss rate sampled at 9 FPPI points evenly spaced in log space over [1e-2, 1e0]
  (10^-2, 10^-1.75, ..., 10^0), each the miss rate after the last detection whose FPPI is at most the point
  (the curve is flat beyond its last detection); a point the curve never reaches (its first false positive
  already makes FPPI larger, so no detection has FPPI <= the point) counts as miss rate 1. MR^-2 is their
  geometric mean, exp(mean(log(max(1e-10, mr)))). Without objects it is NaN (undefined); without detections 1.

Subsets (:data:`KAIST_SUBSETS`, :data:`GENERIC_SUBSETS`): ``reasonable`` = objects at least 55 px tall with
no or partial occlusion (KAIST: ``occ`` 0 or 1; data sets without occlusion labels count every object as
visible), ``all`` = every object at least 20 px tall. Detections shorter than a subset's minimum height / 1.25
are dropped before matching, as the toolbox's dbEval does. KAIST adds ``day`` and ``night`` (reasonable on the images of sets 00-02 and
06-08, resp. 03-05 and 09-11, told from the frame name's set) and, as its evaluation does, leaves objects
within 5 px of the image border out (x in [5, W-5], y in [5, H-5]; ignore boxes). Unlike the Caltech
evaluation, boxes are used as annotated, not squarified to a fixed aspect ratio (some evaluation scripts squarify, so their
numbers can differ slightly).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from crossattentiondet.data.layouts import kaist_set_number

FPPI_POINTS = np.logspace(-2.0, 0.0, 9)
"""The 9 reference FPPI points 10^-2, 10^-1.75, ..., 10^0 (the toolbox's ``10.^(-2:.25:0)``)."""

IOU_THRESHOLD = 0.5
PERSON_NAMES = ("person", "people", "pedestrian", "pedestrians", "ped", "persons")
"""Class names taken as "person": a one-class data set named so gets MR^-2 with ``eval.miss_rate: auto``."""

KAIST_DAY_SETS = frozenset({0, 1, 2, 6, 7, 8})
KAIST_NIGHT_SETS = frozenset({3, 4, 5, 9, 10, 11})


@dataclass(frozen=True)
class Subset:
    """Which objects count (the others become ignore boxes) and which images are evaluated."""

    name: str
    min_height: float = 0.0  # px
    occlusion: tuple[int, ...] | None = None  # allowed occlusion levels; None: any
    border: float = 0.0  # objects reaching closer than this to the image edge are ignored (px)
    images: Literal["all", "day", "night"] = "all"


KAIST_SUBSETS: tuple[Subset, ...] = (
    Subset("reasonable", 55.0, (0, 1), 5.0),
    Subset("all", 20.0, None, 5.0),
    Subset("day", 55.0, (0, 1), 5.0, "day"),
    Subset("night", 55.0, (0, 1), 5.0, "night"),
)
GENERIC_SUBSETS: tuple[Subset, ...] = (Subset("reasonable", 55.0, (0, 1)), Subset("all", 20.0))
# the protocol drops detections shorter than the subset's height range widened by this factor before matching
# (Dollar et al.'s dbEval: hr .* [1/1.25 1.25]), so small false positives do not count against a subset of
# larger people
DETECTION_HEIGHT_MARGIN = 1.25


@dataclass
class ImageTruth:
    """One evaluated image: its objects (with occlusion, if annotated), ignore regions and detections.

    Boxes are absolute xyxy pixels; detections are those of the evaluated class only.
    """

    stem: str
    width: int
    height: int
    gt_boxes: np.ndarray
    dt_boxes: np.ndarray
    dt_scores: np.ndarray
    occlusion: np.ndarray | None = None
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


@dataclass
class MissRateCurve:
    """Miss rate against FPPI after each counted detection (descending score), and what it rests on."""

    fppi: np.ndarray
    miss_rate: np.ndarray
    scores: np.ndarray
    num_objects: int
    num_images: int

    def sampled(self, points: np.ndarray = FPPI_POINTS) -> np.ndarray:
        """The miss rate at each FPPI point: after the last detection with FPPI <= the point; 1 where none is."""
        if self.num_objects == 0:
            return np.full(len(points), np.nan)
        # a leading "no detection yet" point at FPPI -inf with miss rate 1 answers the points never reached
        fppi = np.concatenate([[-np.inf], self.fppi])
        miss = np.concatenate([[1.0], self.miss_rate])
        last = np.searchsorted(fppi, points, side="right") - 1  # FPPI never decreases along the curve
        return miss[last]

    def log_average(self, points: np.ndarray = FPPI_POINTS) -> float:
        """MR^-2 (for the default points): the geometric mean of :meth:`sampled`; NaN without objects."""
        if self.num_objects == 0:
            return float("nan")
        return float(np.exp(np.mean(np.log(np.maximum(1e-10, self.sampled(points))))))


# ---------------------------------------------------------------------------------------------- matching
def _overlaps(dt: np.ndarray, gt: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """(M, N) overlap of each detection with each box: IoU, or intersection / detection area for ignore boxes."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    iw = np.minimum(dt[:, None, 2], gt[None, :, 2]) - np.maximum(dt[:, None, 0], gt[None, :, 0])
    ih = np.minimum(dt[:, None, 3], gt[None, :, 3]) - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    dt_area = ((dt[:, 2] - dt[:, 0]) * (dt[:, 3] - dt[:, 1]))[:, None]
    gt_area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None, :]
    union = np.where(ignore[None, :], dt_area, dt_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_image(gt_boxes: np.ndarray, gt_ignore: np.ndarray, dt_boxes: np.ndarray, dt_scores: np.ndarray,
                threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Match one image's detections (see the module docstring); per detection, in the given order:
    1 true positive, 0 false positive, -1 matched to an ignore box (not counted)."""
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_ignore = np.asarray(gt_ignore, bool).reshape(-1)
    dt_boxes = np.asarray(dt_boxes, np.float64).reshape(-1, 4)
    order_gt = np.argsort(gt_ignore, kind="stable")  # objects first, ignore boxes last
    gt_boxes, gt_ignore = gt_boxes[order_gt], gt_ignore[order_gt]
    order_dt = np.argsort(-np.asarray(dt_scores, np.float64).reshape(-1), kind="stable")
    overlap = _overlaps(dt_boxes[order_dt], gt_boxes, gt_ignore)
    taken = np.zeros(len(gt_boxes), bool)
    result = np.zeros(len(dt_boxes), np.int64)
    for rank, d in enumerate(order_dt):
        best, best_g, kind = threshold, -1, 0
        for g in range(len(gt_boxes)):
            if taken[g]:
                continue
            if kind != 0 and gt_ignore[g]:
                break  # already matched an object: ignore boxes (all after the objects) cannot take it
            if overlap[rank, g] < best:
                continue
            best, best_g, kind = overlap[rank, g], g, (-1 if gt_ignore[g] else 1)
        if kind == 1:
            taken[best_g] = True
        result[d] = kind
    return result


def _in_subset(image: ImageTruth, subset: Subset) -> np.ndarray:
    boxes = np.asarray(image.gt_boxes, np.float64).reshape(-1, 4)
    keep = (boxes[:, 3] - boxes[:, 1]) >= subset.min_height
    if subset.occlusion is not None and image.occlusion is not None:
        keep &= np.isin(np.asarray(image.occlusion).reshape(-1), subset.occlusion)
    if subset.border > 0:
        b = subset.border
        keep &= (boxes[:, 0] >= b) & (boxes[:, 1] >= b) & (boxes[:, 2] <= image.width - b) & \
            (boxes[:, 3] <= image.height - b)
    return keep


def _takes_image(stem: str, images: str) -> bool:
    if images == "all":
        return True
    number = kaist_set_number(stem)
    return number in (KAIST_DAY_SETS if images == "day" else KAIST_NIGHT_SETS)


def miss_rate_curve(images: Iterable[ImageTruth], subset: Subset = Subset("all"),
                    threshold: float = IOU_THRESHOLD) -> MissRateCurve:
    """Match every image of ``subset`` and build the miss-rate / FPPI curve over them."""
    scores, kinds = [], []
    objects = count = 0
    for image in images:
        if not _takes_image(image.stem, subset.images):
            continue
        count += 1
        counted = _in_subset(image, subset)
        ignore_regions = np.asarray(image.ignore_boxes, np.float64).reshape(-1, 4)
        gt = np.concatenate([np.asarray(image.gt_boxes, np.float64).reshape(-1, 4), ignore_regions])
        ignore = np.concatenate([~counted, np.ones(len(ignore_regions), bool)])
        objects += int(counted.sum())
        dt_boxes = np.asarray(image.dt_boxes, np.float64).reshape(-1, 4)
        dt_scores = np.asarray(image.dt_scores, np.float64).reshape(-1)
        if subset.min_height > 0:
            tall = (dt_boxes[:, 3] - dt_boxes[:, 1]) >= subset.min_height / DETECTION_HEIGHT_MARGIN
            dt_boxes, dt_scores = dt_boxes[tall], dt_scores[tall]
        kind = match_image(gt, ignore, dt_boxes, dt_scores, threshold)
        scores.append(dt_scores[kind >= 0])
        kinds.append(kind[kind >= 0])
    score = np.concatenate(scores) if scores else np.zeros(0)
    kind = np.concatenate(kinds) if kinds else np.zeros(0, np.int64)
    order = np.argsort(-score, kind="stable")
    score, kind = score[order], kind[order]
    fp = np.cumsum(kind == 0)
    tp = np.cumsum(kind == 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        miss = 1.0 - tp / objects if objects else np.full(len(tp), np.nan)
    return MissRateCurve(fp / max(count, 1), np.asarray(miss, np.float64), score, objects, count)


def log_average_miss_rate(images: Iterable[ImageTruth], subset: Subset = Subset("all"),
                          threshold: float = IOU_THRESHOLD) -> float:
    """MR^-2 of ``images`` on ``subset`` (NaN without objects)."""
    return miss_rate_curve(images, subset, threshold).log_average()


def miss_rates(images: Sequence[ImageTruth], subsets: Sequence[Subset]) -> dict[str, float]:
    """``{"MR2_<subset>": MR^-2}`` for each subset."""
    return {f"MR2_{s.name}": log_average_miss_rate(images, s) for s in subsets}


# ------------------------------------------------------------------------------------------ evaluation
def person_label(class_names: Sequence[str]) -> int | None:
    """The 1-based label of the person class: a class named like :data:`PERSON_NAMES`, else the only class."""
    for label, name in enumerate(class_names, start=1):
        if name.strip().lower() in PERSON_NAMES:
            return label
    return 1 if len(class_names) == 1 else None


def miss_rate_wanted(setting: bool | str, layout: str, class_names: Sequence[str]) -> bool:
    """``eval.miss_rate``: True / False as said; ``auto``: the kaist layout, or one class named like a person."""
    if setting == "auto":
        return layout == "kaist" or (len(class_names) == 1 and class_names[0].strip().lower() in PERSON_NAMES)
    return bool(setting)


def image_truths(records: Iterable[Any], source: Any, label: int) -> list[ImageTruth]:
    """:class:`ImageTruth` per evaluator record (``EvalResult.image_records``: stem as ``file_name``, size,
    ground truth, detections): objects of ``label`` from the record, occlusion and ignore regions from the
    data source's labels (:meth:`DataSource.annotations`), detections of ``label``."""
    out = []
    for record in records:
        keep_gt = np.asarray(record.gt_labels) == label
        keep_dt = np.asarray(record.dt_labels) == label
        occlusion = None
        ignore_boxes = np.zeros((0, 4))
        if source is not None and record.file_name in getattr(source, "files", {}):
            annotations = source.annotations(record.file_name, record.width, record.height)
            ignore_boxes = annotations.ignore_boxes
            # the record holds the same boxes in the same order (evaluation reads frames untransformed)
            if annotations.occlusion is not None and len(annotations.labels) == len(record.gt_labels):
                occlusion = np.asarray(annotations.occlusion)[keep_gt]
        out.append(ImageTruth(record.file_name, int(record.width), int(record.height),
                              np.asarray(record.gt_boxes)[keep_gt], np.asarray(record.dt_boxes)[keep_dt],
                              np.asarray(record.dt_scores)[keep_dt], occlusion, ignore_boxes))
    return out


def split_miss_rates(result: Any, data: Any, setting: bool | str, log: Any = None) -> dict[str, float]:
    """MR^-2 per subset for an evaluation ``result`` (:class:`~.evaluate.EvalResult`) of prepared ``data``,
    when ``setting`` (``eval.miss_rate``) asks for it; {} otherwise. Logs the values (and why none, when
    asked for on data without a person class) through ``log.info``."""
    if not miss_rate_wanted(setting, data.layout, data.class_names):
        return {}
    label = person_label(data.class_names)
    if label is None:
        if log is not None:
            log.info(f"warning: eval.miss_rate: no person class among {list(data.class_names)}; no MR^-2")
        return {}
    subsets = KAIST_SUBSETS if data.layout == "kaist" else GENERIC_SUBSETS
    values = miss_rates(image_truths(result.image_records, data.source, label), subsets)
    if log is not None:
        shown = "  ".join(f"{k} {v:.4f}" if math.isfinite(v) else f"{k} n/a" for k, v in values.items())
        log.info(f"miss rate (MR^-2, lower is better, class {data.class_names[label - 1]!r}): {shown}")
    return values
