"""``cadet predict`` for segmentation runs: one 8-bit map per frame at the frame's own resolution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from crossattentiondet.config import ExperimentConfig


def segment_frames(model: nn.Module, config: ExperimentConfig, checkpoint: dict[str, Any],
                   frames: list[tuple[str, dict[str, Any]]], *, batch_size: int = 4,
                   echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Maps for (name, modality -> raw array) frames, checked and converted to what the model was trained on
    (data/inputs.py). Per frame: name, the raw modalities and ``map``: binary uint8 round(255 p), semantic
    uint8 class ids, both at the frame's size."""
    from crossattentiondet.data import Sample
    from crossattentiondet.engine.inference import conformed_frames
    from crossattentiondet.engine.runtime import autocast
    from crossattentiondet.segmentation.data import _stack
    from crossattentiondet.segmentation.evaluate import prediction_maps, restore_to_gt
    from crossattentiondet.segmentation.resize import resize_sample

    frames, order = conformed_frames(checkpoint, frames, echo)
    binary = int(checkpoint["num_classes"]) == 2
    seg = config.model.seg
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        resized = [resize_sample(Sample(name, arrays), seg.resize, seg.size, resize_mask=False)
                   for name, arrays in chunk]
        images = [_stack(sample.modalities, order) for sample, _ in resized]
        height = max(img.shape[1] for img in images)
        width = max(img.shape[2] for img in images)
        batch = torch.stack([torch.nn.functional.pad(img, (0, width - img.shape[2], 0, height - img.shape[1]))
                             for img in images]).to(device)
        with torch.inference_mode(), autocast(device, config.train.precision):
            logits = model(batch).float()
        for i, ((name, arrays), (_, info)) in enumerate(zip(chunk, resized)):
            pred = prediction_maps(restore_to_gt(logits[i], info.valid_hw, info.orig_hw), binary)
            results.append({"frame": name, "modalities": arrays, "map": pred})
    return results


def write_seg_predictions(model: nn.Module, config: ExperimentConfig, checkpoint: dict[str, Any],
                          frames: list[tuple[str, dict[str, Any]]], out: Path, *, panels: int = 16,
                          batch_size: int = 4, echo: Callable[[str], None] = print) -> Path:
    """Write ``out/maps/<frame>.png`` (binary: 0-255 probability, what COD toolkits read; semantic: class ids),
    ``out/predictions.json`` and one ``panels.png`` (inputs | prediction) of up to ``panels`` frames."""
    from crossattentiondet.data.imageio import write_png
    from crossattentiondet.io import atomic_write_json
    from crossattentiondet.segmentation.panels import _display, _save_grid, colour_mask

    results = segment_frames(model, config, checkpoint, frames, batch_size=batch_size, echo=echo)
    names = list(checkpoint.get("class_names") or [])
    binary = int(checkpoint["num_classes"]) == 2
    records = []
    for r in results:
        path = out / "maps" / f"{r['frame']}.png"
        write_png(path, r["map"])
        record: dict[str, Any] = {"frame": r["frame"], "map": str(path.relative_to(out)),
                                  "height": int(r["map"].shape[0]), "width": int(r["map"].shape[1])}
        if binary:
            record["foreground_fraction"] = round(float((r["map"] >= 128).mean()), 5)
        else:
            counts = np.bincount(r["map"].ravel(), minlength=len(names))
            record["class_fraction"] = {names[k] if k < len(names) else str(k): round(float(c / r["map"].size), 5)
                                        for k, c in enumerate(counts) if c}
        records.append(record)
    result = out / "predictions.json"
    atomic_write_json(result, {"checkpoint": str(checkpoint["path"]), "class_names": names,
                               "maps": "8-bit probability of the object (0-255), at each frame's resolution"
                               if binary else "8-bit class ids (index into class_names)", "frames": records})
    shown = results[:panels]
    if panels > 0 and shown:
        rows = []
        for r in shown:
            height, width = r["map"].shape
            cells = []
            for m in config.data.modalities:
                array = np.asarray(r["modalities"][m.name])
                channels = array[..., None] if array.ndim == 2 else array
                image = _display(channels.transpose(2, 0, 1), float(m.scale or 255.0))
                cells.append(cv2.resize(image, (width, height)) if image.shape[:2] != (height, width) else image)
            cells.append(colour_mask(r["map"], binary))
            rows.append(cells)
        _save_grid(rows, [r["frame"] for r in shown], [m.name for m in config.data.modalities] + ["prediction"],
                   out / "panels.png")
    echo(f"{len(records)} frames -> {out / 'maps'} ({result.name})")
    return result
