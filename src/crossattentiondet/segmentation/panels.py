"""Segmentation panels: one row per frame, image | other modalities | ground truth | prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from crossattentiondet.config import ExperimentConfig

_PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 160, 230], [240, 200, 40], [80, 200, 90], [200, 90, 220],
                     [250, 140, 40], [120, 120, 250], [40, 220, 200], [160, 100, 60]], np.uint8)


def colour_mask(mask: np.ndarray, binary: bool) -> np.ndarray:
    """(H, W) class ids (binary: a 0-255 map) -> (H, W, 3) uint8 for display; ignore (255 in class maps) grey."""
    if binary:
        return np.repeat(mask[..., None], 3, axis=2).astype(np.uint8)
    out = _PALETTE[mask.astype(np.int64) % len(_PALETTE)]
    out[mask == 255] = 128
    return out


def _display(channels: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) raw pixels of one modality -> (H, W, 3) uint8 (1 channel grey; 3 RGB; else the first)."""
    unit = np.clip(channels.astype(np.float32) / max(scale, 1.0), 0, 1)
    image = unit.transpose(1, 2, 0) if unit.shape[0] == 3 else np.repeat(unit[:1].transpose(1, 2, 0), 3, axis=2)
    return (image * 255).round().astype(np.uint8)


def save_seg_panels(model: nn.Module, data: Any, split: str, config: ExperimentConfig, device: torch.device,
                    path: Path) -> Path | None:
    """Up to ``eval.panels`` frames of ``split`` spread over its test sets, at the GT's resolution."""
    from crossattentiondet import viz
    from crossattentiondet.engine.runtime import autocast
    from crossattentiondet.segmentation.evaluate import prediction_maps, restore_to_gt

    binary = data.num_classes == 2
    dataset = data.dataset(split, False)
    chosen = viz.choose_panel_frames(dataset.stems, config.eval.panels, "auto")
    position = {stem: i for i, stem in enumerate(dataset.stems)}
    layout = getattr(model, "module", model).layout
    rows: list[list[np.ndarray]] = []
    titles: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for stem in chosen:
            item = dataset[position[stem]]
            if item is None:
                continue
            image, target, meta = item
            with torch.inference_mode(), autocast(device, config.train.precision):
                logits = model(image[None].to(device))[0].float()
            gt = target["mask"].numpy()
            pred = prediction_maps(restore_to_gt(logits, meta["valid_hw"], gt.shape), binary)
            height, width = gt.shape
            raw = image[:, : meta["valid_hw"][0], : meta["valid_hw"][1]].numpy()
            cells = []
            for modality, channels in zip(data.modalities, layout.modality_channels):
                shown = _display(raw[list(channels)], float(modality.scale or 255.0))
                cells.append(cv2.resize(shown, (width, height), interpolation=cv2.INTER_LINEAR))
            gt_shown = gt.astype(np.uint8) * 255 if binary else gt
            cells += [colour_mask(np.where(gt == 255, 128, gt_shown) if binary else gt_shown, binary),
                      colour_mask(pred, binary)]
            rows.append(cells)
            titles.append(stem)
    finally:
        model.train(was_training)
    if not rows:
        return None
    columns = [m.name for m in data.modalities] + ["ground truth", "prediction"]
    return _save_grid(rows, titles, columns, path)


def _save_grid(rows: list[list[np.ndarray]], titles: list[str], columns: list[str], path: Path) -> Path:
    from matplotlib.figure import Figure

    from crossattentiondet.viz import _save

    fig = Figure(figsize=(2.2 * len(columns), 2.0 * len(rows)))  # no pyplot: nothing global to close
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, (cells, title) in enumerate(zip(rows, titles)):
        for c, cell in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(title if len(title) <= 28 else "..." + title[-25:], fontsize=6)
    fig.tight_layout()
    return _save(fig, path)
