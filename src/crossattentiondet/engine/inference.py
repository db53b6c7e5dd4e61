"""Using a trained checkpoint: evaluate it on a split or another data set, or predict on new frames."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossattentiondet.config import ExperimentConfig, build_config
from crossattentiondet.engine.checkpoint import load_checkpoint
from crossattentiondet.engine.runtime import DistInfo, autocast, resolve_device
from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json, ensure_writable_dir


def load_model(path: str | Path, overrides: list[str] | None = None,
               config_tree: dict[str, Any] | None = None) -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """Model (eval mode, on the configured device) from a checkpoint or run directory (best.pt first)."""
    from crossattentiondet.models import build_detector

    checkpoint = load_checkpoint(path)
    config = build_config(config_tree if config_tree is not None else checkpoint["config"], overrides)
    device = resolve_device(config.train.device)
    model = build_detector(config, checkpoint["num_classes"], load_pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), config, checkpoint


def evaluate_checkpoint(path: str | Path, *, split: str = "test", data_root: str | Path | None = None,
                        out_dir: str | Path | None = None, overrides: list[str] | None = None,
                        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a checkpoint on ``split`` of its own data (the run's split.json), or on another data set.

    With ``data_root``, ``split="all"`` (the default there) evaluates every frame of that data set.
    Writes predictions, metrics.json and plots into ``out_dir`` (default: <run>/eval_<split>[_<data name>]).
    """
    from crossattentiondet.data import prepare_data
    from crossattentiondet.data.layouts import check_root
    from crossattentiondet.engine.report import evaluate_split

    checkpoint = load_checkpoint(path)
    ckpt_path = Path(checkpoint["path"])
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    tree = dict(checkpoint["config"])
    split_run_dir: Path | None = run_dir
    name = split
    if data_root is not None:
        data_root = Path(data_root)
        check_root(data_root)  # said before an output folder is made for it
        tree["data"] = {**tree["data"], "root": str(data_root), "images_dir": None, "labels": None,
                        "layout": "auto"}
        split_run_dir = None  # another data set: its own split, nothing from the run
        name = f"{split}_{data_root.name}"
        if split == "all":
            tree["data"]["split"] = {**tree["data"]["split"], "train": 0.0, "val": 0.0, "test": 1.0,
                                     "train_file": None, "val_file": None, "test_file": None}
    elif split == "all":
        raise DataError("--split all needs --data (a run's own data is evaluated per split: train, val or test)")
    out = Path(out_dir) if out_dir is not None else run_dir / f"eval_{name}"
    # before the model, the data and the evaluation: a read-only or full disk is reported now, not at the end
    ensure_writable_dir(out, "--out" if out_dir is not None else "output folder")
    model, config, _ = load_model(ckpt_path, overrides, tree)
    data = prepare_data(config, split_run_dir, log=echo)
    used_split = "test" if split == "all" else split
    if not data.splits.get(used_split):
        raise DataError(f"the {used_split} split of {data.root} is empty")
    log = _EchoLog(echo)
    device = next(model.parameters()).device
    summary = evaluate_split(model, data, used_split, config, device, DistInfo(), out, log, tag="")
    summary["checkpoint"] = str(ckpt_path)
    summary["data_root"] = str(data.root)
    atomic_write_json(out / "metrics.json", summary)
    summary["out_dir"] = str(out)
    return summary


class _EchoLog:
    """The bit of RunLog that evaluate_split uses, printing instead of writing a run log."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.info = lambda message, echo_=True: echo(message)


def _input_frames(inputs: list[Path], config: ExperimentConfig) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(name, per-modality arrays) for .npy files, folders of .npy files, or data roots of any layout."""
    from crossattentiondet.data import open_source
    from crossattentiondet.data.imageio import read_npy_file

    frames: list[tuple[str, dict[str, np.ndarray]]] = []
    for item in inputs:
        if not item.exists():
            raise DataError(f"input not found: {item}")
        npy_files = [item] if item.is_file() else sorted(item.glob("*.npy"))
        if item.is_file() and item.suffix.lower() != ".npy":
            raise DataError(f"{item}: give .npy frames, a folder of them, or a data root (any layout)")
        if npy_files:
            for path in npy_files:
                array = read_npy_file(path)
                arrays = {}
                for m in config.data.modalities:
                    if not isinstance(m.source, list) or max(m.source) >= array.shape[2]:
                        raise DataError(f"{path}: {array.shape[2]} channels, modality '{m.name}' needs channels "
                                        f"{m.source}")
                    arrays[m.name] = np.ascontiguousarray(array[:, :, m.source])
                frames.append((path.stem, arrays))
            continue
        source = open_source(item, config.data.model_copy(update={"root": str(item), "labels": None,
                                                                   "images_dir": None, "layout": "auto"}),
                             require_labels=False)
        missing = [m.name for m in config.data.modalities if m.name not in source.modality_names]
        if missing:
            raise DataError(f"{item}: the model needs modalities {missing} that this data set does not have")
        for stem in source.stems:
            frames.append((stem, source.read(stem).modalities))
    if not frames:
        raise DataError(f"no frames found in {', '.join(map(str, inputs))}")
    _check_input_scale(frames, config)
    return frames


def _check_input_scale(frames: list[tuple[str, dict[str, np.ndarray]]], config: ExperimentConfig) -> None:
    """Refuse frames brighter than the model's training data (e.g. 16-bit thermal for a model trained on
    8-bit frames): divided by the training scale they would be far out of range and the detections
    meaningless. Frames in a wider dtype whose values stay within the scale are fine."""
    for m in config.data.modalities:
        if m.scale is None:
            continue
        over = [(stem, int(arrays[m.name].max())) for stem, arrays in frames
                if arrays[m.name].size and arrays[m.name].max() > m.scale]
        if over:
            stem, peak = over[0]
            raise DataError(f"{stem}: modality '{m.name}' has values up to {peak}, above the scale {m.scale:g} of the "
                            f"data this checkpoint was trained on ({len(over)} of {len(frames)} frames); convert the "
                            "frames to the training data's range (e.g. 8-bit) first")


def predict(path: str | Path, inputs: list[str | Path], out_dir: str | Path, *, score_thresh: float = 0.3,
            panels: int = 16, batch_size: int = 4, overrides: list[str] | None = None,
            echo: Callable[[str], None] = print) -> Path:
    """Detect objects in new frames; writes detections.json (and one panels.png with up to ``panels`` frames)."""
    from crossattentiondet import viz
    from crossattentiondet.data import Sample, to_model_input

    out = ensure_writable_dir(out_dir, "--out")  # before the model is loaded and the frames are read
    model, config, checkpoint = load_model(path, overrides)
    frames = _input_frames([Path(p) for p in inputs], config)
    order = [m.name for m in config.data.modalities]
    names = list(checkpoint.get("class_names") or [])
    device = next(model.parameters()).device
    records: list[dict[str, Any]] = []
    shown_images, shown_predictions = [], []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        images = [to_model_input(Sample(stem, arrays), order, 0)[0] for stem, arrays in chunk]
        with torch.inference_mode(), autocast(device, config.train.precision):
            outputs = model([img.to(device) for img in images])
        for (stem, _), image, output in zip(chunk, images, outputs):
            keep = output["scores"].float() >= score_thresh
            boxes = output["boxes"][keep].float().cpu()
            scores = output["scores"][keep].float().cpu()
            labels = output["labels"][keep].cpu()
            records.append({
                "frame": stem, "height": int(image.shape[1]), "width": int(image.shape[2]),
                "detections": [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 5),
                                "label": int(lab), "class_name": names[int(lab) - 1] if 0 < int(lab) <= len(names) else str(int(lab))}
                               for b, s, lab in zip(boxes, scores, labels)],
            })
            if len(shown_images) < panels:
                shown_images.append(image)
                shown_predictions.append({"boxes": boxes, "scores": scores, "labels": labels})
    result = out / "detections.json"
    atomic_write_json(result, {"checkpoint": str(checkpoint["path"]), "score_thresh": score_thresh,
                               "class_names": names, "frames": records})
    if panels > 0 and shown_images:
        viz.save_panels(shown_images, None, shown_predictions, model.layout, names, out / "panels.png",
                        max_panels=panels, score_thresh=score_thresh)
    total = sum(len(r["detections"]) for r in records)
    echo(f"{len(records)} frames, {total} detections (score >= {score_thresh}) -> {result}")
    return result
