"""Segmentation metrics: the camouflaged-object (COD) measures per image, and a semantic confusion matrix.

Binary / COD (:class:`BinaryMetrics`): the measures COD papers report, computed per image at the ground
truth's resolution and averaged over images (never pooled over a batch). The definitions are those of
PySODMetrics (the field's reference, itself checked against the Matlab toolbox) and the values equal it to
1e-6 (tests/test_seg_metrics.py); the computation is our own and much faster (benchmarks/bench_seg_eval.py):

- Data preparation, as the toolkits do: the 8-bit map is scaled to 0-1 (``pred / 255``) and then min-max
  normalised when it is not constant; the ground truth is binarised (``gt > 128``; a 0/1 mask: ``gt > 0``).
- ``Smeasure``: structure measure, alpha 0.5 (object-aware + region-aware parts; Fan et al. ICCV 2017).
- ``meanEm`` / ``maxEm`` / ``adpEm``: enhanced-alignment measure (Fan et al. IJCAI 2018) at the 256
  thresholds 0..255 (mean and max of the curve) and at the adaptive threshold ``min(2 * mean, 1)``.
- ``wFmeasure``: weighted F-measure (Margolin et al. CVPR 2014; beta^2 = 1, Gaussian 7x7 with sigma 5,
  errors of background pixels taken at their nearest foreground pixel by the Euclidean distance transform).
- ``MAE``: mean absolute error of the normalised map (lower is better).
- ``maxFm`` / ``meanFm`` / ``adpFm``: F-measure with beta^2 = 0.3 at the 256 thresholds and adaptively.
- ``IoU`` / ``Dice`` at threshold 0.5: foreground where ``pred / 255 >= 0.5`` (that is ``pred >= 128``, on
  the raw map, *without* min-max normalisation, so an all-low map stays empty); an image whose ground truth
  and prediction are both empty scores 1.0 for both.

As in PySODMetrics, ``maxEm`` / ``maxFm`` (``meanEm`` / ``meanFm``) are the maximum (mean) of the curve
averaged over images, not the mean of per-image maxima; all other measures are means of per-image values.

One deliberate difference: when the foreground's centroid lies in the last row or column, one of the four
S-measure regions is empty (zero weight); PySODMetrics then returns NaN for the image (0 * NaN), here the
empty region contributes 0. Every other input gives the reference's numbers.

Semantic (:class:`ConfusionMatrix`): mIoU, per-class IoU and pixel accuracy from one (K, K) matrix of pixel
counts, summed over images (and over DDP ranks with :meth:`ConfusionMatrix.all_reduce`).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

COD_METRICS = ("Smeasure", "meanEm", "maxEm", "adpEm", "wFmeasure", "MAE", "maxFm", "meanFm", "adpFm", "IoU", "Dice")
LOWER_IS_BETTER = frozenset({"MAE"})
# per-image scalars (the curve maxima only exist for the averaged curve)
IMAGE_METRICS = ("Smeasure", "meanEm", "adpEm", "wFmeasure", "MAE", "meanFm", "adpFm", "IoU", "Dice")

EPS = float(np.spacing(1))  # MATLAB's eps, which the reference adds to denominators
S_ALPHA = 0.5  # S-measure: weight of the object part
F_BETA2 = 0.3  # F-measure: beta^2 (precision weighted more)
WF_BETA2 = 1.0  # weighted F-measure: beta^2
_CURVE_KEYS = ("em_curve_sum", "fm_curve_sum")

# every value an 8-bit map can hold, scaled as the toolkits scale the whole map (pred / 255): applying the
# same float operations to these 256 values gives bit-identical results to applying them per pixel
_LEVELS = np.arange(256, dtype=np.float64) / 255


def _gaussian_1d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """The normalised 1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)`` (which is separable)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


_WF_KERNEL = _gaussian_1d()
_WF_MARGIN = len(_WF_KERNEL) // 2


def _importance_table(max_sq: int = 100_000) -> np.ndarray:
    """Weighted F-measure importance ``B = 2 - 0.5 ** (d / 5)`` of a background pixel, indexed by its squared
    distance ``d^2`` (an integer) to the foreground. Entry 0 (foreground pixels) is 0 so that the weighted
    sum over the image counts background pixels only. Beyond ``max_sq`` (d > 316) B is exactly 2.0 in float64."""
    d = np.sqrt(np.arange(max_sq, dtype=np.float64))
    table = 2 - np.exp(np.log(0.5) / 5 * d)
    assert table[-1] == 2.0
    table[0] = 0.0
    return table


_IMPORTANCE = _importance_table()


def _foreground(gt: np.ndarray) -> np.ndarray:
    """Binary ground truth: 0/1 class ids -> ``gt > 0``; a 0-255 mask -> ``gt > 128`` (the toolkits' rule)."""
    if gt.dtype == bool:
        return gt
    return gt > 0 if gt.max() <= 1 else gt > 128


def _normalised_levels(pred: np.ndarray) -> np.ndarray:
    """The normalised value of each of the 256 levels: ``pred / 255``, min-max normalised unless constant."""
    lo, hi = _LEVELS[int(pred.min())], _LEVELS[int(pred.max())]
    if hi != lo:
        return (_LEVELS - lo) / (hi - lo)
    return _LEVELS.copy()


def _ssim(h_all: np.ndarray, h_fg: np.ndarray, q: np.ndarray, exact_pred: np.ndarray) -> float:
    """S-measure SSIM of one region from its per-level histograms (all pixels, foreground pixels).

    ``exact_pred`` is the normalised map of the region: used only when both the prediction and the GT are
    constant there, where the reference's result (1 or 0) hinges on whether NumPy's mean of the constant
    equals it exactly (then its variance is exactly 0); that case is computed as the reference does.
    """
    n = int(h_all.sum())
    if n == 0:
        return 0.0  # an empty region (zero weight); see the module docstring
    n_fg = int(h_fg.sum())
    denom = n - 1 + EPS
    y = n_fg / n
    gt_constant = n_fg == 0 or n_fg == n
    nonzero = np.flatnonzero(h_all)
    if gt_constant and len(nonzero) == 1:
        x = float(np.mean(exact_pred))
        sigma_x = float(np.sum((exact_pred - x) ** 2)) / denom
        sigma_y = sigma_xy = 0.0
    else:
        x = float(h_all @ q) / n
        dev = q - x
        sigma_x = float(h_all @ (dev * dev)) / denom
        if gt_constant:  # exactly zero in the reference too (gt - y is exactly 0)
            sigma_y = sigma_xy = 0.0
        else:
            sigma_y = (n_fg * (1 - y) ** 2 + (n - n_fg) * y * y) / denom
            fg_dev = float(h_fg @ dev)
            bg_dev = float((h_all - h_fg) @ dev)
            sigma_xy = (fg_dev * (1 - y) - bg_dev * y) / denom
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _object_part(counts: np.ndarray, values: np.ndarray) -> float:
    """S-measure object score of one side (foreground or background) from a per-level histogram."""
    n = counts.sum()
    mean = float(counts @ values) / n
    std = float(np.sqrt(counts @ (values - mean) ** 2 / (n - 1))) if n > 1 else 0.0
    return 2 * mean / (mean * mean + 1 + std + EPS)


def _smeasure(hist: np.ndarray, q: np.ndarray, q_img: np.ndarray, mean_q: float, n_fg: int, split: tuple[int, int]
              ) -> float:
    """S-measure from the per-region histograms ``hist`` (4 regions x bg/fg x 256 levels)."""
    h, w = q_img.shape
    area = h * w
    y = n_fg / area
    if n_fg == 0:
        return 1 - mean_q
    if n_fg == area:
        return mean_q
    h_fg = hist[:, 1].sum(0)
    h_bg = hist[:, 0].sum(0)
    obj = _object_part(h_fg, q) * y + _object_part(h_bg, 1 - q) * (1 - y)
    cy, cx = split
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    slices = ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, w)),
              (slice(cy, h), slice(0, cx)), (slice(cy, h), slice(cx, w)))
    scores = [_ssim(hist[k].sum(0), hist[k, 1], q, q_img[slices[k]]) for k in range(4)]
    region = scores[0] * w_lt + scores[1] * w_rt + scores[2] * w_lb + scores[3] * w_rb
    return max(0.0, obj * S_ALPHA + region * (1 - S_ALPHA))


def _em_from_counts(tp: np.ndarray, fp: np.ndarray, n_fg: int, area: int) -> np.ndarray:
    """E-measure for binarised predictions given per-threshold true/false positive counts (arrays)."""
    pred_fg = tp + fp
    if n_fg == 0:
        total = area - pred_fg
    elif n_fg == area:
        total = pred_fg
    else:
        parts = (tp, fp, n_fg - tp, area - pred_fg - (n_fg - tp))  # (pred, gt): fg/fg, fg/bg, bg/fg, bg/bg
        mean_pred = pred_fg / area
        mean_gt = n_fg / area
        pred_vals = (1 - mean_pred, 1 - mean_pred, -mean_pred, -mean_pred)
        gt_vals = (1 - mean_gt, -mean_gt, 1 - mean_gt, -mean_gt)
        total = 0.0
        for part, a, b in zip(parts, pred_vals, gt_vals):
            align = 2 * (a * b) / (a * a + b * b + EPS)
            total = total + (align + 1) ** 2 / 4 * part
    return np.asarray(total / (area - 1 + EPS), dtype=np.float64)


def _fm_from_counts(tp: np.ndarray, pred_fg: np.ndarray, n_fg: int) -> np.ndarray:
    """F-measure curve (beta^2 = 0.3) from per-threshold true positives and predicted-positive counts."""
    precision = tp / np.where(pred_fg == 0, 1, pred_fg)
    recall = tp / max(n_fg, 1)
    num = (1 + F_BETA2) * precision * recall
    den = np.where(num == 0, 1, F_BETA2 * precision + recall)
    return num / den


def _neighbour_order(max_sq: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) with ``0 < dy^2 + dx^2 <= max_sq``, nearest first; equidistant ones by column, then
    row. That is how SciPy's Euclidean feature transform (the reference's ``bwdist``) breaks ties between
    foreground pixels at one distance: the smallest column, then the smallest row (tests check it)."""
    reach = int(np.sqrt(max_sq))
    offsets = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
               if 0 < dy * dy + dx * dx <= max_sq]
    return sorted(offsets, key=lambda o: (o[0] * o[0] + o[1] * o[1], o[1], o[0]))


# a background pixel within the 7x7 filter's reach (Chebyshev distance 3) of the foreground has its nearest
# foreground pixel within Euclidean distance 3 * sqrt(2)
_NEIGHBOURS = _neighbour_order(2 * _WF_MARGIN**2)
_NEAREST_REACH = max(max(abs(dy), abs(dx)) for dy, dx in _NEIGHBOURS)
_NEIGHBOUR_DY = np.array([dy for dy, _ in _NEIGHBOURS], np.intp)
_NEIGHBOUR_DX = np.array([dx for _, dx in _NEIGHBOURS], np.intp)
_BOX = np.ones((2 * _WF_MARGIN + 1,) * 2, np.uint8)


def _nearest_foreground(fg: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Flat index (into ``fg``) of the nearest foreground pixel of each ``band`` pixel (flat indices of
    background pixels within the filter's reach of the foreground), ties broken as the reference's feature
    transform: of all candidates in reach, gathered at once, the first foreground pixel in
    :data:`_NEIGHBOURS` order wins."""
    h, w = fg.shape
    pad = _NEAREST_REACH
    padded = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
    padded[pad:pad + h, pad:pad + w] = fg.view(np.uint8)
    rows, cols = np.divmod(band, w)
    at = (rows + pad) * (w + 2 * pad) + (cols + pad)
    hits = padded.ravel()[at[:, None] + (_NEIGHBOUR_DY * (w + 2 * pad) + _NEIGHBOUR_DX)[None, :]]
    choice = hits.argmax(1)  # every band pixel has a foreground pixel in reach, so this is a hit
    return (rows + _NEIGHBOUR_DY[choice]) * w + (cols + _NEIGHBOUR_DX[choice])


def _wfmeasure(q: np.ndarray, q_img: np.ndarray, pred: np.ndarray, fg: np.ndarray, rows: np.ndarray,
               cols: np.ndarray) -> float:
    """Weighted F-measure (beta^2 = 1).

    The smoothed error map enters at foreground pixels only, so it is built in the foreground's bounding box
    plus the 7x7 filter's reach: foreground pixels keep their error, background pixels within the reach take
    the error of their nearest foreground pixel (found among the few candidates in reach, with the
    reference's tie-breaking); the filter's zero padding is the reference's beyond the image and unseen from
    the foreground inside it. Every background pixel's false-positive weight needs its distance to the
    foreground: OpenCV's exact Euclidean distance transform.
    """
    h, w = fg.shape
    r_any, c_any = np.flatnonzero(rows), np.flatnonzero(cols)
    r0, r1 = max(int(r_any[0]) - _WF_MARGIN, 0), min(int(r_any[-1]) + _WF_MARGIN + 1, h)
    c0, c1 = max(int(c_any[0]) - _WF_MARGIN, 0), min(int(c_any[-1]) + _WF_MARGIN + 1, w)
    fg_c = np.ascontiguousarray(fg[r0:r1, c0:c1])
    fg8 = fg_c.view(np.uint8)
    err = cv2.LUT(pred[r0:r1, c0:c1], 1 - q)  # |pred - gt| at foreground pixels ...
    err *= fg_c  # ... and 0 elsewhere until the band is filled in
    band = np.flatnonzero(cv2.dilate(fg8, _BOX, borderType=cv2.BORDER_CONSTANT, borderValue=0) - fg8)
    flat_err = err.ravel()
    flat_err[band] = flat_err[_nearest_foreground(fg_c, band)]
    smoothed = cv2.sepFilter2D(err, cv2.CV_64F, _WF_KERNEL, _WF_KERNEL, borderType=cv2.BORDER_CONSTANT)
    np.minimum(smoothed, err, out=smoothed)  # importance is 1 inside the foreground
    sum_fg = float(smoothed.sum(where=fg_c))
    n_fg = int(rows.sum())
    # background: error = the normalised prediction, importance from the distance to the foreground
    dist = cv2.distanceTransform(np.logical_not(fg).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    sq = np.multiply(dist, dist, out=dist)
    np.minimum(sq, np.float32(len(_IMPORTANCE) - 1), out=sq)
    sq += np.float32(0.5)
    weight = _IMPORTANCE[sq.astype(np.int32)]  # exact squared distances (integers), rounded back from float32
    weight *= q_img
    fp_w = float(weight.sum())
    tp_w = n_fg - sum_fg
    recall = 1 - sum_fg / n_fg
    precision = tp_w / (tp_w + fp_w + EPS)
    return (1 + WF_BETA2) * recall * precision / (recall + WF_BETA2 * precision + EPS)


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """COD metrics of one image: (scalars keyed by :data:`IMAGE_METRICS`, E-measure curve, F-measure curve).

    ``pred``: (H, W) uint8 map 0-255; ``gt``: (H, W) mask (0/1 ids or 0-255; see :func:`_foreground`). The
    curves hold 256 values, index i for threshold 255 - i (the reference's order).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be (H, W) maps of one size")
    if pred.dtype != np.uint8:
        raise ValueError(f"the prediction must be an 8-bit map (uint8, 0-255), got {pred.dtype}")
    if pred.size == 0:
        raise ValueError("empty prediction map")
    pred = np.ascontiguousarray(pred)
    fg = np.ascontiguousarray(_foreground(gt))
    h, w = fg.shape
    area = h * w
    fg8 = fg.view(np.uint8)
    rows = cv2.reduce(fg8, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()  # foreground pixels per row
    cols = cv2.reduce(fg8, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    n_fg = int(rows.sum())

    q = _normalised_levels(pred)
    q_img = cv2.LUT(pred, q)  # the normalised map (exactly the reference's values)
    mean_q = float(q_img.mean())  # same array, same reduction: the adaptive threshold compares alike

    # S-measure regions split at the foreground's centroid (rounded half to even, +1 as in the Matlab code)
    if 0 < n_fg:
        cy = int(np.round(float(rows @ np.arange(h)) / n_fg)) + 1
        cx = int(np.round(float(cols @ np.arange(w)) / n_fg)) + 1
    else:
        cy = cx = 0
    code = np.left_shift(fg8, 8, dtype=np.uint16)  # level + 256 * fg + 512 * region
    code |= pred
    code[cy:] += 1024
    code[:, cx:] += 512
    hist = np.bincount(code.ravel(), minlength=2048).reshape(4, 2, 256)  # region, bg/fg, level
    h_fg = hist[:, 1].sum(0)
    h_all = hist.sum((0, 1))
    hq_fg = float(h_fg @ q)

    out: dict[str, float] = {}
    out["Smeasure"] = float(_smeasure(hist, q, q_img, mean_q, n_fg, (cy, cx)))
    out["MAE"] = (float((h_all - h_fg) @ q) + (n_fg - hq_fg)) / area

    # curves over thresholds 255..0 on the map quantised as the reference does ((q * 255) truncated)
    bins = (q * 255).astype(np.uint8)
    tp = np.cumsum(np.bincount(bins, weights=h_fg, minlength=256)[::-1]).astype(np.int64)
    pp = np.cumsum(np.bincount(bins, weights=h_all, minlength=256)[::-1]).astype(np.int64)
    em_curve = _em_from_counts(tp, pp - tp, n_fg, area)
    fm_curve = _fm_from_counts(tp, pp, n_fg)
    out["meanEm"] = float(em_curve.mean())
    out["meanFm"] = float(fm_curve.mean())

    # adaptive threshold: twice the mean normalised value, at most 1
    selected = q >= min(2 * mean_q, 1.0)
    a_tp, a_pp = int(h_fg[selected].sum()), int(h_all[selected].sum())
    out["adpEm"] = float(_em_from_counts(np.int64(a_tp), np.int64(a_pp - a_tp), n_fg, area))
    if a_tp == 0:
        out["adpFm"] = 0.0
    else:
        precision, recall = a_tp / a_pp, a_tp / n_fg
        out["adpFm"] = (1 + F_BETA2) * precision * recall / (F_BETA2 * precision + recall)

    out["wFmeasure"] = 0.0 if n_fg == 0 else float(_wfmeasure(q, q_img, pred, fg, rows, cols))

    # IoU / Dice at 0.5 on the raw map: pred / 255 >= 0.5  <=>  pred >= 128
    b_tp, b_pp = int(h_fg[128:].sum()), int(h_all[128:].sum())
    union = b_pp + n_fg - b_tp
    out["IoU"] = b_tp / union if union else 1.0
    out["Dice"] = 2 * b_tp / (b_pp + n_fg) if union else 1.0
    return {k: out[k] for k in IMAGE_METRICS}, em_curve, fm_curve


class BinaryMetrics:
    """Accumulates per-image COD metrics (see the module docstring for the definitions).

    ``update`` takes the saved 8-bit map and its GT at the GT's resolution; ignore pixels (255 in a 0/1 mask)
    must be resolved by the caller (a 0/1/255 mask would read as 0-255 with 255 as foreground). ``state`` and
    ``merge`` combine accumulators (DDP ranks, test sets); ``results`` gives the :data:`COD_METRICS`.
    """

    def __init__(self) -> None:
        self._names: list[str] = []
        self._rows: list[list[float]] = []
        self._em_sum = np.zeros(256, np.float64)
        self._fm_sum = np.zeros(256, np.float64)

    def update(self, pred: np.ndarray, gt: np.ndarray, name: str | None = None) -> dict[str, float]:
        """Add one image; returns its scalar metrics (:data:`IMAGE_METRICS`). Raises ValueError for maps of
        different sizes or a prediction that is not uint8."""
        scores, em_curve, fm_curve = image_metrics(pred, gt)
        self._names.append(str(len(self._names)) if name is None else str(name))
        self._rows.append([scores[k] for k in IMAGE_METRICS])
        self._em_sum += em_curve
        self._fm_sum += fm_curve
        return scores

    def __len__(self) -> int:
        return len(self._rows)

    def state(self) -> dict[str, np.ndarray]:
        """Everything :meth:`merge` needs: names, the per-image metrics (one array per key of
        :data:`IMAGE_METRICS`) and the summed E-/F-measure curves (plain arrays: picklable, gatherable)."""
        table = np.asarray(self._rows, np.float64).reshape(len(self._rows), len(IMAGE_METRICS))
        state: dict[str, np.ndarray] = {"name": np.asarray(self._names, dtype=np.str_)}
        state.update({key: table[:, i].copy() for i, key in enumerate(IMAGE_METRICS)})
        state["em_curve_sum"] = self._em_sum.copy()
        state["fm_curve_sum"] = self._fm_sum.copy()
        return state

    def merge(self, state: dict[str, Any]) -> None:
        """Append the images of another accumulator's :meth:`state` (after this one's)."""
        missing = [k for k in ("name", *IMAGE_METRICS, *_CURVE_KEYS) if k not in state]
        if missing:
            raise ValueError(f"not a BinaryMetrics state: missing {missing}")
        n = len(state["name"])
        columns = [np.asarray(state[k], np.float64).reshape(-1) for k in IMAGE_METRICS]
        if any(len(c) != n for c in columns):
            raise ValueError("BinaryMetrics state: per-image arrays of different lengths")
        self._names.extend(str(s) for s in state["name"])
        self._rows.extend(np.stack(columns, 1).tolist() if n else [])
        self._em_sum += np.asarray(state["em_curve_sum"], np.float64)
        self._fm_sum += np.asarray(state["fm_curve_sum"], np.float64)

    def results(self) -> dict[str, float]:
        """The :data:`COD_METRICS` over all images so far (NaN for every key when there are none)."""
        n = len(self._rows)
        if n == 0:
            return {k: float("nan") for k in COD_METRICS}
        means = np.asarray(self._rows, np.float64).mean(0)
        out = dict(zip(IMAGE_METRICS, means.tolist()))
        em, fm = self._em_sum / n, self._fm_sum / n
        out.update(meanEm=float(em.mean()), maxEm=float(em.max()), meanFm=float(fm.mean()), maxFm=float(fm.max()))
        return {k: float(out[k]) for k in COD_METRICS}

    def per_image(self) -> list[dict[str, float | str]]:
        """One row per image: ``name`` and its :data:`IMAGE_METRICS`, in update/merge order."""
        return [{"name": name, **dict(zip(IMAGE_METRICS, row))} for name, row in zip(self._names, self._rows)]


class ConfusionMatrix:
    """Pixel counts of (ground truth, prediction) class pairs for semantic segmentation.

    ``matrix[i, j]``: pixels of GT class i predicted as j (rows = GT, columns = prediction). Pixels whose GT
    is ``ignore_index`` are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def _check_range(self, what: str, low: int, high: int) -> None:
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"{what} holds class id {bad}, outside 0..{self.num_classes - 1} "
                             f"(ignore_index={self.ignore_index})")

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Add one map (or a batch) of integer class ids; ``pred`` and ``gt`` of one shape. Raises ValueError
        for class ids outside 0..K-1 (other than ignore pixels in the GT) or different shapes."""
        k = self.num_classes
        if tuple(pred.shape) != tuple(gt.shape):
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
        if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
            gt_t = torch.as_tensor(gt)
            pred_t = torch.as_tensor(pred, device=gt_t.device)
            if gt_t.is_floating_point() or pred_t.is_floating_point() or gt_t.is_complex() or pred_t.is_complex():
                raise ValueError(f"class-id maps must be integer, got {pred_t.dtype} / {gt_t.dtype}")
            gt_t, pred_t = gt_t.reshape(-1).long(), pred_t.reshape(-1).long()
            keep = gt_t != self.ignore_index
            gt_t, pred_t = gt_t[keep], pred_t[keep]
            if gt_t.numel() == 0:
                return
            self._check_range("ground truth", int(gt_t.min()), int(gt_t.max()))
            self._check_range("prediction", int(pred_t.min()), int(pred_t.max()))
            counts = torch.bincount(gt_t * k + pred_t, minlength=k * k).cpu().numpy()
        else:
            gt_a = np.asarray(gt).reshape(-1)
            pred_a = np.asarray(pred).reshape(-1)
            if gt_a.dtype.kind not in "biu" or pred_a.dtype.kind not in "biu":
                raise ValueError(f"class-id maps must be integer, got {pred_a.dtype} / {gt_a.dtype}")
            keep = gt_a != self.ignore_index
            if not keep.all():
                gt_a, pred_a = gt_a[keep], pred_a[keep]
            if gt_a.size == 0:
                return
            self._check_range("ground truth", int(gt_a.min()), int(gt_a.max()))
            self._check_range("prediction", int(pred_a.min()), int(pred_a.max()))
            counts = np.bincount(gt_a.astype(np.int64) * k + pred_a.astype(np.int64), minlength=k * k)
        self.matrix += counts.reshape(k, k).astype(np.int64)

    def all_reduce(self) -> None:
        """Sum the matrix over all torch.distributed ranks (no-op when not initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        total = torch.from_numpy(self.matrix).to(device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        self.matrix = total.cpu().numpy().astype(np.int64)

    def results(self, class_names: list[str]) -> dict[str, float]:
        """``mIoU`` (mean over classes present in the GT or the prediction), ``IoU_<name>`` (NaN for a class
        with no pixel in either) and ``pixel_acc`` (NaN with no pixels)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {self.num_classes}-class confusion matrix")
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        present = union > 0
        total = m.sum()
        out = {"mIoU": float(iou[present].mean()) if present.any() else float("nan")}
        out.update({f"IoU_{name}": float(v) for name, v in zip(class_names, iou)})
        out["pixel_acc"] = float(tp.sum() / total) if total > 0 else float("nan")
        return out
