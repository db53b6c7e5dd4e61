"""Bootstrap confidence intervals of COCO mAP over test images (the noise from sampling the test set).

The mAP of a test set of a few hundred images would be different on another draw of images from the same
distribution; studies and the demo state that noise. The bootstrap here resamples *images* with
replacement and recomputes COCO's mAP on each resample, without re-running COCO:

1. :func:`match_detections` matches detections to ground truth once, per image, class and IoU threshold
   (0.50:0.05:0.95), exactly as COCO's ``evaluateImg`` does for area "all" and 100 detections per image and
   class: detections by descending score (stable), greedy, each ground-truth box matched at most once, the
   best-IoU candidate (the last of equals, as COCO), ground truth outside the area range ignored.
2. A resample is a vector of per-image weights (how often each image was drawn). Its mAP is COCO's
   ``accumulate`` with those weights: each class's detections sorted once by score over all images (stable,
   images in id order, as COCO concatenates them), weighted cumulative TP / FP, recall = TP / weighted
   number of ground-truth boxes, the precision envelope, precision at the 101 recall thresholds, mean over
   the classes that have ground truth in the resample and over the IoU thresholds. With all weights 1 this
   is the evaluator's mAP; with integer weights it is COCO's mAP on the resampled image list (copies of an
   image next to each other, images in id order), so no approximation is involved: equal scores within an
   image whose outcomes differ are written out copy by copy, as COCO would order them. All B resamples are
   computed together with numpy (a sparse detections-to-images count matrix times the (N, B) weights, then
   cumulative sums over true positives only); 1000 resamples of a few hundred images take about a second.

Resamples are a deterministic function of the sorted test image ids (and their number B): two models
evaluated on the same test set get the same resamples, so :func:`paired_difference` bootstraps the
difference between them paired, which is far tighter than comparing two separate intervals.

Typical use::

    result = evaluate(model, loader, device, class_names=names)
    boot = bootstrap_map(result, n_boot=1000)
    print(f"mAP {boot.point:.3f} (95% CI {boot.ci95[0]:.3f}-{boot.ci95[1]:.3f})")
    save_bootstrap(run_dir / "bootstrap_test.json", boot)
    diff = paired_difference(load_run_bootstrap(run_a), load_run_bootstrap(run_b))
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from crossattentiondet.io import atomic_write_json, read_json

BootstrapMetric = Literal["mAP", "mAP_50", "mAP_75"]

IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
"""COCO's IoU thresholds, computed as COCO computes them (the exact float values matter at ties)."""
RECALL_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
"""COCO's 101 recall thresholds, as COCO computes them."""
MAX_DETECTIONS = 100  # per image and class, COCO's largest maxDets
AREA_RANGE_ALL = (0.0, 1e5 ** 2)  # COCO's "all" area range

BOOTSTRAP_FILE = "bootstrap_test.json"
"""Name of the bootstrap file the end of a run writes into its run directory (test split)."""

_METRIC_IOUS: dict[str, slice] = {"mAP": slice(None), "mAP_50": slice(0, 1), "mAP_75": slice(5, 6)}
_CHUNK_ELEMENTS = 4_000_000  # resamples x true-positive positions per block: ~32 MB per temporary


# ------------------------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class ClassMatches:
    """One class's detections over the whole test set, in COCO's accumulate order (descending score,
    stable, images in id order), with their match outcome at each IoU threshold."""

    image_index: np.ndarray  # (D,) position of each detection's image in DetectionMatches.image_ids
    # (after _expand_tie_runs: the detection's weight column)
    true_positive: np.ndarray  # (T, D) bool: matched to a ground-truth box that is not ignored
    ignored: np.ndarray | None  # (T, D) bool: neither TP nor FP (matched an ignored box); None: none are
    # (start, end) of runs of equal-score detections of one image whose outcomes differ: in a resample,
    # COCO sees the copies of such a run one after the other (a b a b), not each detection doubled (a a b b)
    tie_runs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))


@dataclass(frozen=True)
class DetectionMatches:
    """Per-image matching of a test set, computed once by :func:`match_detections`, reused by every
    resample. ``gt_counts[n, k]``: ground-truth boxes (not ignored) of label ``k + 1`` in image ``n``."""

    image_ids: np.ndarray  # (N,) sorted int64
    gt_counts: np.ndarray  # (N, K) int64
    classes: list[ClassMatches] = field(default_factory=list)  # K entries, label k + 1 at index k

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


def _records_of(source: Any) -> list[Any]:
    """Image records (``image_id``, ``gt_boxes`` / ``gt_labels`` xyxy, ``dt_boxes`` / ``dt_scores`` /
    ``dt_labels``) from an :class:`EvalResult`, a :class:`DetectionEvaluator` or a sequence of records."""
    if hasattr(source, "image_records"):  # EvalResult
        records = list(source.image_records)
        if not records:
            raise ValueError("this EvalResult has no per-image records (made before bootstrap support, or by "
                             "hand); bootstrap from the DetectionEvaluator or evaluate() instead")
    elif hasattr(source, "records") and callable(source.records):  # DetectionEvaluator
        records = list(source.records())
    else:
        records = list(source)
    if not records:
        raise ValueError("bootstrap: no images to resample")
    ids = [int(r.image_id) for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("bootstrap: image ids repeat; each test image must appear once")
    return sorted(records, key=lambda r: int(r.image_id))


def _xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] -= out[:, :2]
    return out


def _box_iou_xywh(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(M, G) IoU with COCO's own arithmetic (``maskApi.c`` bbIou, non-crowd), so ties at a threshold
    resolve exactly as in COCO."""
    dx1, dy1 = dt[:, 0:1], dt[:, 1:2]
    dx2, dy2 = dt[:, 0:1] + dt[:, 2:3], dt[:, 1:2] + dt[:, 3:4]
    gx1, gy1 = gt[None, :, 0], gt[None, :, 1]
    gx2, gy2 = gt[None, :, 2] + gt[None, :, 0], gt[None, :, 3] + gt[None, :, 1]
    w = np.minimum(dx2, gx2) - np.maximum(dx1, gx1)
    h = np.minimum(dy2, gy2) - np.maximum(dy1, gy1)
    inter = w * h
    union = (dt[:, 2:3] * dt[:, 3:4] + (gt[:, 2] * gt[:, 3])[None, :]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _match_one(dt_xywh: np.ndarray, gt_xywh: np.ndarray, gt_ignore: np.ndarray,
               thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of one image and class. ``dt_xywh`` is already sorted by score and cut to
    100; returns (T, M) "matched a box" and (T, M) "that box is ignored"."""
    num_t, num_dt, num_gt = len(thresholds), len(dt_xywh), len(gt_xywh)
    matched = np.zeros((num_t, num_dt), dtype=bool)
    matched_ignored = np.zeros((num_t, num_dt), dtype=bool)
    if num_gt == 0 or num_dt == 0:
        return matched, matched_ignored
    order = np.argsort(gt_ignore, kind="stable")  # not-ignored boxes first, as COCO sorts them
    gt_ignore = gt_ignore[order]
    ious = _box_iou_xywh(dt_xywh, gt_xywh[order])
    limits = np.minimum(thresholds, 1 - 1e-10)
    gt_taken = np.zeros((num_t, num_gt), dtype=bool)
    blocks = [np.flatnonzero(~gt_ignore), np.flatnonzero(gt_ignore)]
    rows = np.arange(num_t)
    # only detections that reach the lowest threshold with some box can match anything
    for d in np.flatnonzero(ious.max(axis=1) >= limits.min()):
        todo = np.ones(num_t, dtype=bool)
        for block in blocks:  # an ignored box only when no regular box qualifies (COCO's "break")
            if not block.size or not todo.any():
                continue
            iou = ious[d, block]
            ok = todo[:, None] & ~gt_taken[:, block] & (iou[None, :] >= limits[:, None])
            values = np.where(ok, iou[None, :], -np.inf)
            # the last of equal best IoUs wins, as in COCO's ``if iou < best: continue; best = iou``
            last = len(block) - 1 - np.argmax(values[:, ::-1], axis=1)
            hit = ok.any(axis=1)
            g = block[last[hit]]
            gt_taken[rows[hit], g] = True
            matched[rows[hit], d] = True
            matched_ignored[rows[hit], d] = gt_ignore[g]
            todo &= ~hit
    return matched, matched_ignored


def match_detections(source: Any, *, area_range: tuple[float, float] = AREA_RANGE_ALL) -> DetectionMatches:
    """Match every image's detections to its ground truth once, per class and IoU threshold (COCO rules).

    ``source``: an :class:`~crossattentiondet.engine.evaluate.EvalResult` (from ``evaluate``), a
    :class:`~crossattentiondet.engine.evaluate.DetectionEvaluator`, or a sequence of its image records.
    Detections are rounded exactly as the evaluator's predictions file (boxes 0.01 px, scores 1e-5), so the
    matches are those behind the evaluator's reported metrics.
    """
    from crossattentiondet.engine.evaluate import BOX_DECIMALS, SCORE_DECIMALS

    records = _records_of(source)
    labels_seen = [r.gt_labels for r in records] + [r.dt_labels for r in records]
    num_classes = max((int(x.max()) for x in labels_seen if len(x)), default=0)
    thresholds = IOU_THRESHOLDS
    lo, hi = area_range
    gt_counts = np.zeros((len(records), num_classes), dtype=np.int64)
    per_class: list[list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in range(num_classes)]
    for n, record in enumerate(records):
        gt_xywh = _xywh(record.gt_boxes)
        gt_labels = np.asarray(record.gt_labels, dtype=np.int64).reshape(-1)
        gt_area = gt_xywh[:, 2] * gt_xywh[:, 3]
        gt_ignore_all = (gt_area < lo) | (gt_area > hi)
        dt_xywh = np.round(_xywh(record.dt_boxes), BOX_DECIMALS)
        dt_scores = np.round(np.asarray(record.dt_scores, dtype=np.float64).reshape(-1), SCORE_DECIMALS)
        dt_labels = np.asarray(record.dt_labels, dtype=np.int64).reshape(-1)
        for label in np.union1d(gt_labels, dt_labels).tolist():
            k = int(label) - 1
            g = gt_labels == label
            gt_counts[n, k] = int((~gt_ignore_all[g]).sum())
            dets = np.flatnonzero(dt_labels == label)
            if not dets.size:
                continue
            dets = dets[np.argsort(-dt_scores[dets], kind="stable")][:MAX_DETECTIONS]
            matched, matched_ignored = _match_one(dt_xywh[dets], gt_xywh[g], gt_ignore_all[g], thresholds)
            dt_area = dt_xywh[dets, 2] * dt_xywh[dets, 3]
            # an unmatched detection outside the area range is ignored too (never happens for "all"
            # unless a box has a negative size)
            ignored = matched_ignored | (~matched & ((dt_area < lo) | (dt_area > hi))[None, :])
            per_class[k].append((n, dt_scores[dets], matched & ~matched_ignored, ignored))

    classes: list[ClassMatches] = []
    for k in range(num_classes):
        entries = per_class[k]
        if not entries:
            classes.append(ClassMatches(np.zeros(0, np.int64), np.zeros((len(thresholds), 0), bool), None))
            continue
        image_index = np.concatenate([np.full(len(s), n, dtype=np.int64) for n, s, _, _ in entries])
        scores = np.concatenate([s for _, s, _, _ in entries])
        tp = np.concatenate([t for _, _, t, _ in entries], axis=1)
        ign = np.concatenate([i for _, _, _, i in entries], axis=1)
        order = np.argsort(-scores, kind="stable")  # COCO accumulate: mergesort over images in id order
        image_index, scores, tp, ign = image_index[order], scores[order], tp[:, order], ign[:, order]
        classes.append(ClassMatches(image_index, tp, ign if ign.any() else None,
                                    _mixed_tie_runs(image_index, scores, tp, ign)))
    image_ids = np.asarray([int(r.image_id) for r in records], dtype=np.int64)
    return DetectionMatches(image_ids=image_ids, gt_counts=gt_counts, classes=classes)


def _mixed_tie_runs(image_index: np.ndarray, scores: np.ndarray, tp: np.ndarray, ign: np.ndarray) -> np.ndarray:
    """(R, 2) start/end of runs (in score order) of one image's equal-score detections whose outcome
    (TP / ignored at some threshold) is not the same for all of them; equal outcomes need no care."""
    if len(scores) < 2:
        return np.zeros((0, 2), np.int64)
    new_run = np.r_[True, (image_index[1:] != image_index[:-1]) | (scores[1:] != scores[:-1])]
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], len(scores)]
    runs = [(a, b) for a, b in zip(starts.tolist(), ends.tolist()) if b - a > 1 and (
        (tp[:, a:b] != tp[:, a:a + 1]).any() or (ign[:, a:b] != ign[:, a:a + 1]).any())]
    return np.asarray(runs, dtype=np.int64).reshape(-1, 2)


def _expand_tie_runs(matches: ClassMatches, weights: np.ndarray) -> tuple[ClassMatches, np.ndarray]:
    """The class's detections and weight columns with each mixed tie run written out copy by copy.

    An image drawn w times is w consecutive images to COCO, so a run [a, b] of equal scores becomes
    a b a b ... (copy-major). Copy c of the run gets its own weight column ``weights[:, image] > c``
    (present in resamples that drew the image more than c times); everything else keeps the image's
    count as its weight (equivalent there: see :func:`_class_ap`). Exact, and only for the rare runs.
    """
    runs = matches.tie_runs
    if not len(runs):
        return matches, weights
    copies = max(int(weights.max(initial=0)), 1)
    num_images = weights.shape[1]
    run_images = np.unique(matches.image_index[runs[:, 0]])
    slot = {int(n): i for i, n in enumerate(run_images.tolist())}
    pieces: list[np.ndarray] = []
    columns: list[np.ndarray] = []
    previous = 0
    for a, b in runs.tolist():
        pieces.append(np.arange(previous, a))
        columns.append(matches.image_index[previous:a])
        base = num_images + slot[int(matches.image_index[a])]
        for c in range(copies):
            pieces.append(np.arange(a, b))
            columns.append(np.full(b - a, base + c * len(run_images), np.int64))
        previous = b
    pieces.append(np.arange(previous, len(matches.image_index)))
    columns.append(matches.image_index[previous:])
    order = np.concatenate(pieces)
    extended = np.concatenate(
        [weights] + [(weights[:, run_images] > c).astype(weights.dtype) for c in range(copies)], axis=1)
    expanded = ClassMatches(np.concatenate(columns), matches.true_positive[:, order],
                            None if matches.ignored is None else matches.ignored[:, order])
    return expanded, extended


# ------------------------------------------------------------------------------------------ resampling
def image_ids_hash(image_ids: Sequence[int] | np.ndarray) -> str:
    """A short hex digest of the sorted set of image ids: equal for two evaluations of the same test set."""
    ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    if len(ids) != len(np.asarray(image_ids).reshape(-1)):
        raise ValueError("image ids repeat")
    return hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()[:16]


def resample_weights(image_ids: Sequence[int] | np.ndarray, n_boot: int) -> np.ndarray:
    """(n_boot, N) int32 counts: how often each image (in sorted id order) is drawn in each resample.

    A deterministic function of the image-id set: the generator is seeded from :func:`image_ids_hash`,
    and resample ``b`` is the same whatever ``n_boot`` (more resamples extend the list), so results with
    different ``n_boot`` still pair on their common prefix.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    ids = np.sort(np.asarray(image_ids, dtype=np.int64).reshape(-1))
    digest = image_ids_hash(ids)
    rng = np.random.default_rng(int(digest, 16))
    n = len(ids)
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = (draws + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.int32)


def _smallest_hits(recall_thresholds: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
    """(B, R) int64: the smallest TP count k with ``k / num_gt >= r`` in float64, COCO's recall test
    (computed exactly, not as ceil(r * G), because r * G rounds)."""
    g = num_gt.astype(np.float64)[:, None]
    k = np.maximum(np.ceil(recall_thresholds[None, :] * g) - 2, 0)
    for _ in range(4):
        k = np.where(k / g < recall_thresholds[None, :], k + 1, k)
    return k.astype(np.int64)


class _ClassPlan(NamedTuple):
    """What one class needs per resample: for each true-positive position of any selected threshold
    (``union``), the images of the detections since the previous one, as a sparse (S, N) count matrix;
    detections after the last true positive never matter (see :func:`_class_ap`)."""

    union: np.ndarray  # (S,) positions (in score order) that are a true positive at some threshold
    segments: Any  # scipy.sparse (S, N): detections of each image in (previous union position, this one]
    ignored_segments: dict[int, Any]  # threshold row -> the same, counting only ignored detections


def _class_plan(matches: ClassMatches, iou_rows: range, num_columns: int) -> _ClassPlan | None:
    from scipy.sparse import csr_matrix

    tp_any = matches.true_positive[list(iou_rows)].any(axis=0)
    if not tp_any.any():
        return None
    union = np.flatnonzero(tp_any)
    last = int(union[-1]) + 1
    segment = np.searchsorted(union, np.arange(last), side="left")
    images = matches.image_index[:last]

    def counts(mask: np.ndarray | None) -> Any:
        rows, cols = (segment, images) if mask is None else (segment[mask], images[mask])
        return csr_matrix((np.ones(len(rows), np.int64), (rows, cols)), shape=(len(union), num_columns))

    ignored: dict[int, Any] = {}
    if matches.ignored is not None:
        for t in iou_rows:
            if matches.ignored[t, :last].any():
                ignored[t] = counts(matches.ignored[t, :last])
    return _ClassPlan(union, counts(None), ignored)


def _class_ap(weights_t: np.ndarray, matches: ClassMatches, plan: _ClassPlan, num_gt: np.ndarray,
              iou_rows: range) -> np.ndarray:
    """(B, T') AP of one class for each resample (columns of ``weights_t``: (weight columns, B), see
    :func:`_expand_tie_runs`) and selected IoU threshold.

    Only true positives need precision values: the envelope at a recall threshold is the maximum
    precision over positions whose recall reaches it, and in a run of false positives precision only
    falls, so its maximum is at a true positive (or it is 0 when none reaches the threshold). The
    number of detections so far at each true positive is a sparse count matrix times the weights, then a
    cumulative sum over true positives only; the layout is (positions, resamples).
    """
    num_boot = weights_t.shape[1]
    out = np.zeros((num_boot, len(iou_rows)))
    # TP + FP so far (inclusive) at each union position, per resample
    seen = np.cumsum(np.asarray(plan.segments @ weights_t), axis=0)
    hits = _smallest_hits(RECALL_THRESHOLDS, np.maximum(num_gt, 1))  # (B, R)
    sentinel = int(num_gt.max()) + 1  # never reached: the search lands there when recall stays short
    offsets = (np.arange(num_boot, dtype=np.int64) * (sentinel + 1))[:, None]
    queries = (hits + offsets).ravel()
    for j, t in enumerate(iou_rows):
        positions = np.flatnonzero(matches.true_positive[t, : int(plan.union[-1]) + 1])
        if not positions.size:
            continue
        at = np.searchsorted(plan.union, positions)
        total = seen[at]
        if t in plan.ignored_segments:
            total = total - np.cumsum(np.asarray(plan.ignored_segments[t] @ weights_t), axis=0)[at]
        tp_cum = np.cumsum(weights_t[matches.image_index[positions]], axis=0, dtype=np.int64)  # (P, B)
        precision = np.divide(tp_cum, total, out=np.zeros(tp_cum.shape), where=total > 0)
        envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
        # one searchsorted for all resamples: each resample's (nondecreasing, integer) TP counts shifted
        # into its own disjoint range keeps the flattened array sorted, exactly (integers, no rounding)
        counts = np.empty((num_boot, len(positions) + 1), dtype=np.int64)
        counts[:, :-1] = tp_cum.T
        counts[:, -1] = sentinel
        values = np.zeros((num_boot, len(positions) + 1))
        values[:, :-1] = envelope.T
        where = np.searchsorted((counts + offsets).ravel(), queries, side="left")
        out[:, j] = values.ravel()[where].reshape(num_boot, -1).mean(axis=1)
    out[num_gt <= 0] = np.nan
    return out


def map_of_weights(matches: DetectionMatches, weights: np.ndarray, metric: BootstrapMetric = "mAP") -> np.ndarray:
    """COCO ``metric`` for each row of ``weights`` ((B, N) per-image counts, images in id order).

    NaN for a resample without any ground truth. With a row of ones this is the evaluator's value.
    """
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != matches.num_images:
        raise ValueError(f"weights must be (B, {matches.num_images}), got {weights.shape}")
    if metric not in _METRIC_IOUS:
        raise ValueError(f"metric must be one of {list(_METRIC_IOUS)}, got {metric!r}")
    if weights.size and (weights.min() < 0 or np.any(weights != np.round(weights))):
        raise ValueError("weights must be non-negative integers (how often each image is drawn)")
    weights = weights.astype(np.int64)
    iou_rows = range(len(IOU_THRESHOLDS))[_METRIC_IOUS[metric]]
    num_boot = weights.shape[0]
    gt_weighted = weights @ matches.gt_counts  # (B, K) ground-truth boxes per resample and class
    sums = np.zeros(num_boot)
    counts = np.zeros(num_boot)
    for k, class_matches in enumerate(matches.classes):
        num_gt = gt_weighted[:, k]
        has_gt = num_gt > 0
        if not has_gt.any():
            continue
        counts[has_gt] += 1  # a class with ground truth but no true positive has AP 0
        class_matches, class_weights = _expand_tie_runs(class_matches, weights)
        plan = _class_plan(class_matches, iou_rows, class_weights.shape[1])
        if plan is None:
            continue
        step = max(1, _CHUNK_ELEMENTS // len(plan.union))
        ap = np.concatenate([
            _class_ap(np.ascontiguousarray(class_weights[s:s + step].T), class_matches, plan,
                      num_gt[s:s + step], iou_rows)
            for s in range(0, num_boot, step)])
        sums[has_gt] += ap[has_gt].mean(axis=1)
    return np.divide(sums, counts, out=np.full(num_boot, np.nan), where=counts > 0)


# ---------------------------------------------------------------------------------------------- results
def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval (2.5th, 97.5th) of the finite ``samples``; NaN, NaN when there are none."""
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return (math.nan, math.nan)
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class BootstrapResult:
    """A metric on the whole test set (``point``), its value on each of ``n_boot`` image resamples
    (``samples``) and the 95% percentile interval of those. ``image_ids_hash`` names the test set."""

    metric: str
    point: float
    samples: np.ndarray
    ci95: tuple[float, float]
    n_images: int
    n_boot: int
    image_ids_hash: str

    @property
    def std(self) -> float:
        """Bootstrap standard error (sample standard deviation of the resampled values)."""
        finite = self.samples[np.isfinite(self.samples)]
        return float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the ``bootstrap_test.json`` format; NaN -> null, samples to 6 digits)."""
        return {
            "metric": self.metric,
            "point": _finite_or_none(self.point),
            "ci95": [_finite_or_none(self.ci95[0]), _finite_or_none(self.ci95[1])],
            "std": _finite_or_none(self.std),
            "method": "percentile bootstrap over test images",
            "n_boot": self.n_boot,
            "n_images": self.n_images,
            "image_ids_hash": self.image_ids_hash,
            "samples": [_finite_or_none(round(float(v), 6)) for v in self.samples],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BootstrapResult:
        """The inverse of :meth:`to_json` (samples as saved, i.e. rounded to 6 digits)."""
        missing = {"metric", "point", "ci95", "n_boot", "n_images", "image_ids_hash", "samples"} - set(data)
        if missing:
            raise ValueError(f"not a bootstrap result: missing {sorted(missing)}")
        samples = np.asarray([math.nan if v is None else float(v) for v in data["samples"]], dtype=np.float64)
        if len(samples) != int(data["n_boot"]):
            raise ValueError(f"bootstrap result: {len(samples)} samples but n_boot = {data['n_boot']}")
        lo, hi = (math.nan if v is None else float(v) for v in data["ci95"])
        return cls(metric=str(data["metric"]), point=math.nan if data["point"] is None else float(data["point"]),
                   samples=samples, ci95=(lo, hi), n_images=int(data["n_images"]), n_boot=int(data["n_boot"]),
                   image_ids_hash=str(data["image_ids_hash"]))


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def bootstrap_map(source: Any, n_boot: int = 1000, *, metric: BootstrapMetric = "mAP") -> BootstrapResult:
    """Bootstrap ``metric`` (COCO mAP, or mAP_50 / mAP_75) over test images.

    ``source``: an ``EvalResult`` from :func:`~crossattentiondet.engine.evaluate.evaluate`, a
    ``DetectionEvaluator``, a sequence of its image records, or :class:`DetectionMatches` already computed.
    The resamples depend only on the image ids and ``n_boot`` (see :func:`resample_weights`).
    """
    matches = source if isinstance(source, DetectionMatches) else match_detections(source)
    point = float(map_of_weights(matches, np.ones((1, matches.num_images), np.int32), metric)[0])
    samples = map_of_weights(matches, resample_weights(matches.image_ids, n_boot), metric)
    return BootstrapResult(metric=metric, point=point, samples=samples, ci95=percentile_ci(samples),
                           n_images=matches.num_images, n_boot=n_boot,
                           image_ids_hash=image_ids_hash(matches.image_ids))


class PairedDifference(NamedTuple):
    """``a - b`` on the full test set, its 95% percentile interval and the per-resample differences."""

    point: float
    ci95: tuple[float, float]
    samples: np.ndarray


def paired_difference(a: BootstrapResult, b: BootstrapResult) -> PairedDifference:
    """Paired bootstrap of ``a.metric - b.metric``: both were resampled identically (same test images).

    Raises ``ValueError`` when the two come from different test sets (image-id hashes differ) or measure
    different metrics. With different ``n_boot``, the common first resamples are used (they are the same
    draws, see :func:`resample_weights`).
    """
    if a.image_ids_hash != b.image_ids_hash or a.n_images != b.n_images:
        raise ValueError(
            f"cannot pair bootstrap results of different test sets (image-id hash {a.image_ids_hash}, "
            f"{a.n_images} images vs {b.image_ids_hash}, {b.n_images} images): evaluate both models on "
            "the same split")
    if a.metric != b.metric:
        raise ValueError(f"cannot pair bootstrap results of different metrics ({a.metric} vs {b.metric})")
    n = min(a.n_boot, b.n_boot)
    samples = a.samples[:n] - b.samples[:n]
    return PairedDifference(point=a.point - b.point, ci95=percentile_ci(samples), samples=samples)


# ------------------------------------------------------------------------------------------------ files
def save_bootstrap(path: str | Path, result: BootstrapResult, **extra: Any) -> None:
    """Write ``result`` (plus any ``extra`` keys, e.g. ``split``) as JSON, atomically."""
    atomic_write_json(path, {**result.to_json(), **extra})


def load_bootstrap(path: str | Path) -> BootstrapResult:
    """Read a file written by :func:`save_bootstrap`."""
    return BootstrapResult.from_json(read_json(path))


def load_run_bootstrap(run_dir: str | Path) -> BootstrapResult | None:
    """The test-set bootstrap of a run directory (``bootstrap_test.json``), or None when the run has none
    (bootstrap disabled with ``eval.bootstrap=0``, no test split, or a run from before this existed)."""
    path = Path(run_dir) / BOOTSTRAP_FILE
    return load_bootstrap(path) if path.is_file() else None


__all__ = [
    "BOOTSTRAP_FILE", "BootstrapResult", "ClassMatches", "DetectionMatches", "PairedDifference",
    "bootstrap_map", "image_ids_hash", "load_bootstrap", "load_run_bootstrap", "map_of_weights",
    "match_detections", "paired_difference", "percentile_ci", "resample_weights", "save_bootstrap",
]
