"""Plots: sample panels (every modality, ground truth and detections), PR curves, training curves,
missing-modality robustness.

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

    from crossattentiondet.engine.evaluate import EvalResult
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
    red with class name and score. Either may be None. ``titles`` (e.g. file stems) label the rows.
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
            pred_text = [f"{_class_name(class_names, int(c))} {s:.2f}" for c, s in zip(labels, scores[keep])]
        for c, (name, channels) in enumerate(zip(names, layout.modality_channels)):
            ax = axes[r, c]
            shown = modality_image(images[r], channels)
            ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            _draw_boxes(ax, gt_boxes, GT_COLOR)
            _draw_boxes(ax, pred_boxes, PRED_COLOR, pred_text)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0 and titles is not None:
                ax.set_ylabel(str(titles[r]), fontsize=7)
    return _save(fig, path)


def _class_name(class_names: Sequence[str], label: int) -> str:
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
        ("loss", ["loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"]),
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


def plot_ap_bars(labels: Sequence[str], rows: Sequence[Mapping[str, Any]], path: str | Path, *,
                 title: str = "COCO AP", reference_line: bool = False) -> Path:
    """Grouped bars of mAP and mAP_50 for several models or conditions (one label per row)."""
    if not rows:
        raise ValueError("plot_ap_bars needs at least one row")

    def column(key: str) -> np.ndarray:
        return np.asarray([float("nan") if r.get(key) is None else float(r[key]) for r in rows])

    fig = _new_figure(max(4.0, 1.3 * len(rows) + 1.5), 4.0)
    ax = fig.subplots()
    x = np.arange(len(rows))
    width = 0.38
    for offset, key, color in ((-width / 2, "mAP", "#3070b0"), (width / 2, "mAP_50", "#90b8e0")):
        values = column(key)
        bars = ax.bar(x + offset, np.nan_to_num(values), width, label=key, color=color)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01,
                    "n/a" if math.isnan(v) else f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    base = column("mAP")[0]
    if reference_line and math.isfinite(base):
        ax.axhline(base, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(x, list(labels), fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("COCO AP")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_robustness(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Bar chart of mAP and mAP_50 with nothing zeroed and with each modality zeroed
    (rows from :func:`crossattentiondet.engine.evaluate.robustness_table`)."""
    if not rows:
        raise ValueError("plot_robustness needs at least one row")
    labels = ["all inputs" if r["zeroed"] == "none" else f"no {r['zeroed']}" for r in rows]
    return plot_ap_bars(labels, rows, path, title="Missing-modality robustness",
                        reference_line=rows[0]["zeroed"] == "none")
