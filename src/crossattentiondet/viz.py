"""Plots: sample panels (every modality, ground truth and detections), PR curves, confusion matrix,
precision / recall / F1 against the score threshold, training curves, missing-modality robustness.

matplotlib is imported inside the functions (importing the package stays light) and only through its
object-oriented API (``Figure`` + Agg canvas): no pyplot global state, no backend switch in the caller's
process, nothing left open. Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossattentiondet.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from crossattentiondet.engine.evaluate import ConfidenceCurves, ConfusionMatrix, EvalResult
    from crossattentiondet.models.detector import InputLayout

GT_COLOR = "#00d000"
PRED_COLOR = "#ff2020"
PANEL_CELL_INCHES = 2.5  # width of one modality column in a panel grid
DPI = 100


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    # constrained layout arranges the axes inside a fixed canvas, so the PNG's pixel size is predictable
    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if not x.dtype.is_floating_point and x.dtype.itemsize > 2:
            x = x.long()
        return x.numpy()
    return np.asarray(x)


def modality_image(image: Any, channels: Sequence[int]) -> np.ndarray:
    """One modality of a raw (C, H, W) input as a displayable 0-1 array: (H, W, 3) for 3 channels, else
    (H, W) grey (channel mean). Stretched between its 0.5th and 99.5th percentiles, so a uint16 thermal
    frame that uses a narrow band of its range, or a sparse event frame, is still visible."""
    data = _to_numpy(image)[list(channels)].astype(np.float32)
    data = data.transpose(1, 2, 0) if len(channels) == 3 else data.mean(axis=0)
    lo, hi = np.percentile(data, [0.5, 99.5])
    if hi <= lo:  # constant (e.g. an empty event frame): show black rather than divide by zero
        return np.zeros_like(data)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def _draw_boxes(ax: Any, boxes: np.ndarray, color: str, texts: Sequence[str] | None = None) -> None:
    from matplotlib.patches import Rectangle

    for i, (x1, y1, x2, y2) in enumerate(boxes.reshape(-1, 4).tolist()):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.0))
        if texts:
            ax.text(x1, y1, texts[i], color="white", fontsize=6, va="bottom", clip_on=True,
                    bbox={"facecolor": color, "alpha": 0.7, "pad": 0.5, "edgecolor": "none"})


def save_panels(images: Sequence[Any], targets: Sequence[Mapping[str, Any]] | None,
                predictions: Sequence[Mapping[str, Any]] | None, layout: InputLayout,
                class_names: Sequence[str], path: str | Path, max_panels: int = 16,
                score_thresh: float = 0.3, titles: Sequence[str] | None = None) -> Path:
    """One PNG grid: a row per sample (at most ``max_panels``), a column per modality of ``layout``.

    ``images`` are the loader's raw (C_total, H, W) tensors (uint8 / uint16); ``targets`` (boxes xyxy,
    labels) are drawn in green, ``predictions`` (boxes, labels, scores) with score >= ``score_thresh`` in
    red with class name and score. Either may be None. ``titles`` (e.g. the frames' file names) are
    printed in the title of every panel of their row, next to the modality name.
    """
    if max_panels < 1:
        raise ValueError(f"max_panels must be >= 1, got {max_panels}")
    rows = min(len(images), max_panels)
    if rows == 0:
        raise ValueError("save_panels needs at least one image")
    names = list(layout.modality_names)
    height, width = _to_numpy(images[0]).shape[-2:]
    cell_h = PANEL_CELL_INCHES * height / width
    fig = _new_figure(PANEL_CELL_INCHES * len(names), cell_h * rows)
    axes = np.asarray(fig.subplots(rows, len(names), squeeze=False))
    for r in range(rows):
        gt_boxes = _to_numpy(targets[r]["boxes"]) if targets is not None else np.zeros((0, 4))
        pred_boxes, pred_text = np.zeros((0, 4)), []
        if predictions is not None:
            pred = predictions[r]
            scores = _to_numpy(pred["scores"]).reshape(-1)
            keep = scores >= score_thresh
            pred_boxes = _to_numpy(pred["boxes"]).reshape(-1, 4)[keep]
            labels = _to_numpy(pred["labels"]).reshape(-1)[keep]
            pred_text = [f"{class_name(class_names, int(c))} {s:.2f}" for c, s in zip(labels, scores[keep])]
        for c, (name, channels) in enumerate(zip(names, layout.modality_channels)):
            ax = axes[r, c]
            shown = modality_image(images[r], channels)
            ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            _draw_boxes(ax, gt_boxes, GT_COLOR)
            _draw_boxes(ax, pred_boxes, PRED_COLOR, pred_text)
            ax.set_xticks([])
            ax.set_yticks([])
            if titles is not None:  # every row is another frame: each panel says which
                ax.set_title(f"{name}: {titles[r]}", fontsize=7)
            elif r == 0:
                ax.set_title(name, fontsize=9)
    return _save(fig, path)


def choose_panel_frames(stems: Sequence[str], count: int, group_by: str = "auto") -> list[str]:
    """``count`` frames of ``stems`` spread over their sequences (groups of
    :func:`crossattentiondet.data.splits.group_frames`, ``auto``: per stem prefix, else blocks of 10
    consecutive frames), in natural order.

    Neighbouring video frames look alike, so the first N frames of a split show one clip N times. Fewer
    frames than groups: groups evenly spaced over the sorted groups, the middle frame of each. More: one
    per group first, the rest shared out round-robin, evenly spaced within each group.
    """
    from crossattentiondet.data.splits import group_frames, natural_key

    if count <= 0 or not stems:
        return []
    groups = [sorted(g, key=natural_key) for g in group_frames(list(stems), group_by).groups.values()]
    groups.sort(key=lambda g: natural_key(g[0]))
    if count < len(groups):
        picks = np.unique(np.round(np.linspace(0, len(groups) - 1, count)).astype(int))
        groups = [groups[i] for i in picks]
    quota = [0] * len(groups)
    left = min(count, sum(len(g) for g in groups))
    while left:
        for i, group in enumerate(groups):
            if left and quota[i] < len(group):
                quota[i] += 1
                left -= 1
    chosen = [group[int((j + 0.5) * len(group) / q)] for group, q in zip(groups, quota) for j in range(q)]
    return sorted(chosen, key=natural_key)


def class_name(class_names: Sequence[str], label: int) -> str:
    """The name of model label ``label`` (1 = the first class; 0 is the background)."""
    return class_names[label - 1] if 1 <= label <= len(class_names) else str(label)


def plot_pr_curve(result: EvalResult, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """Precision-recall curves at IoU 0.5 (all areas, 100 detections) per class, and their mean.

    Classes without ground truth are left out; ``class_names`` defaults to the result's.
    """
    names = list(class_names) if class_names is not None else list(result.class_names)
    recall = np.asarray(result.pr_recall)
    precision = np.asarray(result.pr_precision)
    fig = _new_figure(6.0, 5.0)
    ax = fig.subplots()
    valid = [k for k in range(len(precision)) if np.isfinite(precision[k]).any()]
    many = len(valid) > 12  # past a dozen classes a legend hides the plot: thin lines, mean labelled
    for k in valid:
        ap50 = np.nanmean(precision[k])
        ax.plot(recall, precision[k], linewidth=0.8 if many else 1.2, alpha=0.5 if many else 0.9,
                label=None if many else f"{names[k] if k < len(names) else k + 1} (AP50 {ap50:.3f})")
    if valid:
        mean = np.nanmean(precision[valid], axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.2, label=f"mean (mAP50 {np.nanmean(mean):.3f})")
        ax.legend(loc="lower left", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall, IoU 0.5")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion_matrix(matrix: ConfusionMatrix, path: str | Path) -> Path:
    """Two heat maps of :class:`~crossattentiondet.engine.evaluate.ConfusionMatrix`: counts, and each row
    divided by its sum (rows: true class, columns: predicted class, both with "background")."""
    counts = np.asarray(matrix.counts).astype(np.float64)
    normalized = matrix.normalized()
    counts[-1, -1] = normalized[-1, -1] = np.nan  # background as background is never counted: left blank
    labels = [wrap_label(name, 14) for name in matrix.labels]
    n = len(labels)
    side = min(9.0, max(3.2, 0.5 * n + 1.6))
    fig = _new_figure(2 * side + 0.6, side + 0.6)
    axes = fig.subplots(1, 2)
    annotate = n <= 25  # past that the numbers are unreadable: the colours carry it
    for ax, values, title, fmt in ((axes[0], counts, "counts", "{:.0f}"),
                                   (axes[1], normalized, "row-normalised (each row sums to 1)", "{:.2f}")):
        shown = np.ma.masked_invalid(values)
        top = max(1.0, float(np.nanmax(values))) if np.isfinite(values).any() else 1.0
        image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=top, interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8)
        if annotate:
            for i in range(n):
                for j in range(n):
                    if np.isfinite(values[i, j]) and (values[i, j] > 0 or i == j):
                        dark = values[i, j] > 0.6 * top
                        ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if dark else "black")
        ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(np.arange(n), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"Confusion matrix: IoU >= {matrix.iou_thresh:g}, score >= {matrix.score_thresh:g}; "
                 "background row = false positives, column = missed", fontsize=9)
    return _save(fig, path)


def plot_confidence_curves(curves: ConfidenceCurves, path: str | Path, class_names: Sequence[str]) -> Path:
    """Precision, recall and F1 against the score threshold, per class and for all classes (their mean),
    three panels side by side (:class:`~crossattentiondet.engine.evaluate.ConfidenceCurves`)."""
    fig = _new_figure(15.0, 4.4)
    axes = fig.subplots(1, 3)
    t = np.asarray(curves.thresholds)
    valid = [k for k in range(len(curves.num_gt)) if curves.num_gt[k] > 0]
    many = len(valid) > 12  # as in the PR curve: past a dozen classes no legend entry per class
    best_f1, best_t = curves.best_f1()
    for ax, per_class, mean, name in ((axes[0], curves.precision, curves.all_precision, "precision"),
                                      (axes[1], curves.recall, curves.all_recall, "recall"),
                                      (axes[2], curves.f1, curves.all_f1, "F1")):
        for k in valid:
            label = None if many else (class_names[k] if k < len(class_names) else str(k + 1))
            ax.plot(t, per_class[k], linewidth=0.8 if many else 1.2, alpha=0.5 if many else 0.9, label=label)
        if valid:
            text = "all classes"
            if name == "F1" and math.isfinite(best_f1):
                text += f" {best_f1:.2f} at {best_t:.3f}"
                ax.axvline(best_t, color="black", linestyle=":", linewidth=0.8)
            ax.plot(t, mean, color="black", linewidth=2.2, label=text)
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("score threshold")
        ax.set_ylabel(name)
        ax.set_title(f"{name} vs score threshold, IoU {curves.iou_thresh:g}", fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, np.ndarray] = {}
    for key in rows[0] if rows else []:
        values = []
        for row in rows:
            try:
                values.append(float(row.get(key) or "nan"))
            except ValueError:  # a text column (e.g. a timestamp): not plottable
                values = []
                break
        if values:
            columns[key] = np.asarray(values)
    return columns


def plot_training_curves(metrics_csv: str | Path, path: str | Path) -> Path:
    """Losses, learning rate and validation mAP per epoch from a run's metrics.csv.

    Expected columns: epoch, loss, loss_classifier, loss_box_reg, loss_objectness, loss_rpn_box_reg, lr,
    val_mAP, val_mAP_50; missing columns and empty cells are tolerated (that curve or panel is left empty).
    """
    data = _read_metrics_csv(metrics_csv)
    n = len(next(iter(data.values()))) if data else 0
    epoch = data.get("epoch", np.arange(1, n + 1, dtype=float))
    panels = [
        ("loss", ["loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg",  # Faster R-CNN
                  "loss_class", "loss_bbox", "loss_giou", "loss_aux", "loss_enc", "loss_dn"]),  # DETR head
        ("learning rate", ["lr"]),
        ("validation", ["val_mAP", "val_mAP_50"]),
    ]
    fig = _new_figure(13.0, 3.8)
    axes = fig.subplots(1, len(panels))
    for ax, (title, keys) in zip(axes, panels):
        drawn = 0
        for key in keys:
            values = data.get(key)
            if values is None or not np.isfinite(values).any():
                continue
            finite = np.isfinite(values)  # validation may run every k epochs: plot the epochs it ran
            ax.plot(epoch[finite], values[finite], marker="o", markersize=3,
                    linewidth=2.0 if key in ("loss", "val_mAP") else 1.2, label=key)
            drawn += 1
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        if title == "learning rate" and drawn and np.nanmin(data["lr"]) > 0:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def wrap_label(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters, broken at spaces or after ``_ - / , = +`` (long
    configuration names have no spaces), a piece longer than a line cut where it must."""
    import re

    pieces = [p for p in re.split(r"(?<=[ _\-/,=+])", str(text)) if p]
    lines: list[str] = []
    line = ""
    for piece in pieces:
        while len(piece) > width:  # a single piece too long for any line
            if line:
                lines.append(line.rstrip())
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece.rstrip()) > width and line:
            lines.append(line.rstrip())
            line = ""
        line += piece
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return "\n".join(lines)


def clipped_errors(means: Sequence[float], lows: Sequence[float], highs: Sequence[float],
                   bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Error-bar lengths (2, N) for matplotlib's ``xerr`` / ``yerr`` of an interval [low, high] around each
    mean, the interval clipped to ``bounds`` (an AP cannot leave [0, 1]); 0 where the mean or interval is
    not finite (a single run has no interval)."""
    means, lows, highs = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (means, lows, highs))
    ok = np.isfinite(means) & np.isfinite(lows) & np.isfinite(highs)
    lower = np.clip(lows, *bounds)
    upper = np.clip(highs, *bounds)
    below = np.where(ok, np.clip(means - lower, 0.0, None), 0.0)
    above = np.where(ok, np.clip(upper - means, 0.0, None), 0.0)
    return np.stack([below, above])


LABEL_CHARS = 36  # wrap width of bar labels (about 2.6 inches at font size 8)


def horizontal_bar_height(labels: Sequence[str], bars_per_row: int) -> float:
    """Figure height (inches) that gives each row of a horizontal bar chart room for its wrapped label
    and its bars, plus title, legend and axis."""
    lines = max((wrap_label(label, LABEL_CHARS).count("\n") + 1 for label in labels), default=1)
    row = max(0.16 * lines + 0.14, 0.17 * bars_per_row + 0.12)
    return 1.6 + row * len(labels)


def plot_ap_bars(labels: Sequence[str], rows: Sequence[Mapping[str, Any]], path: str | Path, *,
                 title: str = "COCO AP", reference_line: bool = False,
                 metrics: tuple[str, str] = ("mAP", "mAP_50"), xlabel: str = "COCO AP") -> Path:
    """Horizontal grouped bars of two metrics (mAP and mAP_50), one row per model or condition (first row
    on top); the reference line marks the first row's first metric.

    Horizontal so that long model descriptions stay readable: each label is wrapped beside its bars and
    the figure grows with the rows, so labels never overlap.
    """
    if not rows:
        raise ValueError("plot_ap_bars needs at least one row")

    def column(key: str) -> np.ndarray:
        return np.asarray([float("nan") if r.get(key) is None else float(r[key]) for r in rows])

    fig = _new_figure(8.0, horizontal_bar_height(labels, 2))
    ax = fig.subplots()
    y = np.arange(len(rows))
    height = 0.38
    for offset, key, color in ((-height / 2, metrics[0], "#3070b0"), (height / 2, metrics[1], "#90b8e0")):
        values = column(key)
        bars = ax.barh(y + offset, np.nan_to_num(values), height, label=key, color=color)
        for bar, v in zip(bars, values):
            ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2,
                    "n/a" if math.isnan(v) else f"{v:.3f}", ha="left", va="center", fontsize=7)
    base = column(metrics[0])[0]
    if reference_line and math.isfinite(base):
        ax.axvline(base, color="black", linestyle="--", linewidth=0.8)
    ax.set_yticks(y, [wrap_label(label, LABEL_CHARS) for label in labels], fontsize=8)
    ax.invert_yaxis()  # first row on top, in reading order
    ax.set_xlim(0, 1.1)  # room for the value of a bar at 1.0
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_robustness(rows: Sequence[Mapping[str, Any]], path: str | Path,
                    metrics: tuple[str, str] = ("mAP", "mAP_50"), xlabel: str = "COCO AP") -> Path:
    """Bar chart of two metrics (detection: mAP and mAP_50) with nothing zeroed and with each modality zeroed
    (rows from :func:`crossattentiondet.engine.evaluate.robustness_table` or the segmentation report)."""
    if not rows:
        raise ValueError("plot_robustness needs at least one row")
    labels = ["all inputs" if r["zeroed"] == "none" else f"no {r['zeroed']}" for r in rows]
    return plot_ap_bars(labels, rows, path, title="Missing-modality robustness",
                        reference_line=rows[0]["zeroed"] == "none", metrics=metrics, xlabel=xlabel)
