"""Using a trained checkpoint: evaluate it on a split or another data set, or predict on new frames."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossattentiondet.config import EvalConfig, ExperimentConfig, build_config, config_to_dict
from crossattentiondet.data.checks import DTYPE_SCALE
from crossattentiondet.engine.checkpoint import load_checkpoint, run_dir_of
from crossattentiondet.engine.runtime import DistInfo, autocast, resolve_device
from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json, ensure_writable_dir


def load_model(path: str | Path, overrides: list[str] | None = None,
               config_tree: dict[str, Any] | None = None) -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """Model (eval mode, on the configured device) from a checkpoint or run directory (best.pt first); the
    checkpoint's task (detect or segment) builds it."""
    from crossattentiondet.tasks import get_task, task_of

    checkpoint = load_checkpoint(path)
    tree = config_tree if config_tree is not None else checkpoint["config"]
    config = build_config({"task": task_of(checkpoint["config"]), **tree}, overrides)
    device = resolve_device(config.train.device)
    model = get_task(config.task).build_model(config, checkpoint["num_classes"], load_pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), config, checkpoint


def evaluate_checkpoint(path: str | Path, *, split: str = "test", data_root: str | Path | None = None,
                        out_dir: str | Path | None = None, overrides: list[str] | None = None,
                        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a checkpoint on ``split`` of its own data (the run's split.json), or on another data set.

    With ``data_root``, ``split="all"`` (the default there) evaluates every frame of that data set.
    Writes predictions, metrics.json and plots into ``out_dir`` (default: <run>/eval_<split>[_<data name>]).
    """
    from crossattentiondet.data.layouts import check_root
    from crossattentiondet.tasks import get_task, task_of

    checkpoint = load_checkpoint(path)
    ckpt_path = Path(checkpoint["path"])
    run_dir = run_dir_of(ckpt_path)
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
    if data_root is not None:
        # each data set maps its raw values to 0-1 by its own scale (from its dtype or metadata), not by the
        # training data's: 16-bit frames read with an 8-bit model's scale 255 would be far out of range
        # a deliberate training scale (a 12-bit sensor's 4095) is the sensor's, kept for its other recordings
        tree["data"]["modalities"] = [{**m, "scale": None if m.get("scale") in (None, *DTYPE_SCALE.values()) else m["scale"]}
                                      for m in tree["data"]["modalities"]]
    out = Path(out_dir) if out_dir is not None else run_dir / f"eval_{name}"
    # before the model, the data and the evaluation: a read-only or full disk is reported now, not at the end
    ensure_writable_dir(out, "--out" if out_dir is not None else "output folder")
    task = get_task(task_of(tree))
    data = task.prepare_data(build_config(tree, overrides), split_run_dir, log=echo)
    if data_root is not None:
        _compare_inputs(checkpoint, data, echo)
    if split == "all" and task.name == "segment":
        # a data set with its own test partition (COD10K Test/, the sinet TestDataset/) is scored on that
        # only: "all" would count its training images as test images
        partitioned = [s for s in data.splits["test"] if data.source.items[s].partition == "test"]
        if partitioned and len(partitioned) < len(data.splits["test"]):
            echo(f"data: {data.root} has its own test partition: evaluating its {len(partitioned)} test images "
                 f"(not its {len(data.splits['test']) - len(partitioned)} training images)")
            data.splits["test"] = partitioned
    model, config, _ = load_model(ckpt_path, None, config_to_dict(data.resolved_config))
    used_split = "test" if split == "all" else split
    if not data.splits.get(used_split):
        raise DataError(f"the {used_split} split of {data.root} is empty")
    log = _EchoLog(echo)
    device = next(model.parameters()).device
    summary = task.evaluate_split(model, data, used_split, config, device, DistInfo(), out, log)
    summary["checkpoint"] = str(ckpt_path)
    summary["data_root"] = str(data.root)
    atomic_write_json(out / "metrics.json", summary)
    summary["out_dir"] = str(out)
    return summary


def _compare_inputs(checkpoint: dict[str, Any], data: Any, echo: Callable[[str], None]) -> None:
    """Say where another data set's modalities differ from the training data's (dtype, scale), and refuse
    one that lacks a modality the model takes or has it with another channel count."""
    from crossattentiondet.data.inputs import spec_from_checkpoint

    trained = spec_from_checkpoint(checkpoint)
    here = {m.name: m for m in data.input_spec}
    for m in trained:
        other = here.get(m.name)
        if other is None:
            raise DataError(f"{data.root}: the model takes modality '{m.name}', which this data set does not have "
                            f"(it has {sorted(here)})")
        if other.channels != m.channels:
            raise DataError(f"{data.root}: modality '{m.name}' has {other.channels} channel(s) here, the model "
                            f"was trained on {m.channels}")
        if (other.dtype, other.scale) != (m.dtype, m.scale):
            echo(f"data: note: modality '{m.name}' is {other.dtype} with scale {other.scale:g} here, the model was "
                 f"trained on {m.dtype} data with scale {m.scale:g}; each data set's values are divided by its own "
                 "scale, so both are on 0-1 (set data.modalities.N.scale=... if this data set's scale is another)")
    names = list(checkpoint.get("class_names") or [])
    if names and names != list(data.class_names):
        echo(f"data: warning: class names {list(data.class_names)} here, the model was trained on {names}; "
             "class ids are matched by position")


class _EchoLog:
    """The bit of RunLog that evaluate_split uses, printing instead of writing a run log."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.info = lambda message, echo_=True: echo(message)


def input_frames(inputs: list[Path], config: ExperimentConfig) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(name, per-modality arrays) for .npy files, folders of .npy files, or data roots of any layout; for a
    one-modality model also image files and folders of them."""
    from crossattentiondet.data.imageio import IMAGE_EXTENSIONS, read_image_file, read_npy_file

    frames: list[tuple[str, dict[str, np.ndarray]]] = []
    single = config.data.modalities[0].name if len(config.data.modalities) == 1 else None
    for item in inputs:
        if not item.exists():
            raise DataError(f"input not found: {item}")
        images = [item] if item.is_file() else sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if single is not None and images and item.suffix.lower() != ".npy":
            # a one-modality model (an RGB COD model, say) takes plain image files and folders of them
            frames += [(p.stem, {single: read_image_file(p)}) for p in images]
            continue
        npy_files = [item] if item.is_file() else sorted(item.glob("*.npy"))
        if item.is_file() and item.suffix.lower() != ".npy":
            raise DataError(f"{item}: give .npy frames, a folder of them, or a data root (any layout)"
                            + ("" if single else "; image files only for one-modality models"))
        if npy_files:
            for path in npy_files:
                frames.append((path.stem, split_channels(read_npy_file(path), config, str(path))))
            continue
        source = open_frames_source(item, config)
        for stem in source.stems:
            frames.append((stem, source.read(stem).modalities))
    if not frames:
        raise DataError(f"no frames found in {', '.join(map(str, inputs))}")
    return frames


def open_frames_source(root: Path, config: ExperimentConfig, *, own_data: bool = False) -> Any:
    """A data set of any layout (labels not needed) read with the model's modalities; DataError if it lacks
    one. ``own_data``: ``root`` is the run's own data set, read with its own settings (layout, label paths)."""
    from crossattentiondet.data import open_source

    update = {"root": str(root)} if own_data else {"root": str(root), "labels": None, "images_dir": None,
                                                    "layout": "auto"}
    source = open_source(root, config.data.model_copy(update=update), require_labels=False)
    missing = [m.name for m in config.data.modalities if m.name not in source.modality_names]
    if missing:
        raise DataError(f"{root}: the model needs modalities {missing} that this data set does not have")
    return source


def split_channels(array: np.ndarray, config: ExperimentConfig, what: str) -> dict[str, np.ndarray]:
    """An (H, W, C) array with all channels, as in the original layout's .npy files, split into modalities
    by ``data.modalities[*].source`` (e.g. rgb 0-2, thermal 3, event 4)."""
    if not isinstance(array, np.ndarray) or array.ndim != 3:
        shape = getattr(array, "shape", None)
        raise DataError(f"{what}: expected an (H, W, C) array with all channels, got shape {shape}")
    arrays = {}
    if not all(isinstance(m.source, list) for m in config.data.modalities):
        # modalities read from their own files (folders layouts): the channels follow in modality order
        total = sum(m.channels for m in config.data.modalities)
        if array.shape[2] != total:
            layout = ", ".join(f"{m.name} {m.channels}" for m in config.data.modalities)
            raise DataError(f"{what}: {array.shape[2]} channels; the model takes {total} in this order: {layout} "
                            "(or give a dict modality -> array)")
        start = 0
        for m in config.data.modalities:
            arrays[m.name] = np.ascontiguousarray(array[:, :, start:start + m.channels])
            start += m.channels
        return arrays
    for m in config.data.modalities:
        if max(m.source) >= array.shape[2]:
            raise DataError(f"{what}: {array.shape[2]} channels, modality '{m.name}' needs channels {m.source}")
        arrays[m.name] = np.ascontiguousarray(array[:, :, m.source])
    return arrays


def conformed_frames(checkpoint: dict[str, Any], frames: list[tuple[str, dict[str, Any]]],
                     echo: Callable[[str], None] = print) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """``frames`` checked and converted to what the checkpoint's model was trained on (data/inputs.py; each
    conversion said once), and the model's modality order."""
    from crossattentiondet.data.inputs import conform_frame, spec_from_checkpoint

    spec = spec_from_checkpoint(checkpoint)
    notes: set[str] = set()
    frames = [(name, conform_frame(name, arrays, spec, notes)) for name, arrays in frames]
    for note in sorted(notes):
        echo(f"note: {note}")
    return frames, [m.name for m in spec]


def detect_frames(model: nn.Module, config: ExperimentConfig, checkpoint: dict[str, Any],
                  frames: list[tuple[str, dict[str, Any]]], *, score_thresh: float = 0.3, batch_size: int = 4,
                  echo: Callable[[str], None] = print, tiling: EvalConfig | None = None) -> list[dict[str, Any]]:
    """Run ``model`` on frames (name, modality -> raw array), after checking and converting them to what it
    was trained on (data/inputs.py). Returns per frame: name, the model-input image (C, H, W), and
    boxes (xyxy) / scores / labels (model labels: 1 = first class) as CPU tensors, scores >= ``score_thresh``.

    With ``eval.tile`` set (of ``tiling``, default ``config.eval``) each frame is detected in overlapping
    windows merged in frame coordinates (:mod:`crossattentiondet.engine.tiling`); ``batch_size`` frames per
    call then, their windows run a few at a time."""
    frames, order = conformed_frames(checkpoint, frames, echo)
    # the model's own cut-off (model.detector.score_thresh: Faster R-CNN's roi_heads, the DETR head's) would hide
    # detections below it: a lower requested threshold lowers it for this call
    holder = getattr(model, "roi_heads", model)
    own_thresh = getattr(holder, "score_thresh", None)
    if isinstance(own_thresh, float) and score_thresh < own_thresh:
        holder.score_thresh = score_thresh
    try:
        return _detect(model, config, frames, order, score_thresh, batch_size, echo,
                       tiling if tiling is not None else config.eval)
    finally:
        if isinstance(own_thresh, float):
            holder.score_thresh = own_thresh


def _detect(model: nn.Module, config: ExperimentConfig, frames: list[tuple[str, dict[str, Any]]], order: Any,
            score_thresh: float, batch_size: int, echo: Callable[[str], None], tiling: EvalConfig
            ) -> list[dict[str, Any]]:
    from crossattentiondet.data import Sample, to_model_input
    from crossattentiondet.engine.tiling import maybe_tiled

    model = maybe_tiled(model, tiling)
    if tiling.tile is not None:
        echo(f"tiled inference: {tiling.tile} px windows overlapping by {tiling.tile_overlap:g}, merged by "
             f"class-wise NMS at IoU {tiling.tile_nms_iou:g}")
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        images = [to_model_input(Sample(name, arrays), order, 0)[0] for name, arrays in chunk]
        with torch.inference_mode(), autocast(device, config.train.precision):
            outputs = model([img.to(device) for img in images])
        for (name, _), image, output in zip(chunk, images, outputs):
            keep = output["scores"].float() >= score_thresh
            results.append({"frame": name, "image": image, "boxes": output["boxes"][keep].float().cpu(),
                            "scores": output["scores"][keep].float().cpu(), "labels": output["labels"][keep].cpu()})
    return results


def predict(path: str | Path, inputs: list[str | Path], out_dir: str | Path, *, score_thresh: float = 0.3,
            panels: int = 16, batch_size: int = 4, overrides: list[str] | None = None,
            echo: Callable[[str], None] = print) -> Path:
    """Run a checkpoint on new frames; what is written is the task's (detection: detections.json;
    segmentation: one 8-bit map per frame and predictions.json), with one panels.png of up to ``panels``."""
    from crossattentiondet.tasks import get_task

    out = ensure_writable_dir(out_dir, "--out")  # before the model is loaded and the frames are read
    model, config, checkpoint = load_model(path, overrides)
    frames = input_frames([Path(p) for p in inputs], config)
    return get_task(config.task).predict(model, config, checkpoint, frames, out, score_thresh=score_thresh,
                                         panels=panels, batch_size=batch_size, echo=echo)


def write_detections(model: nn.Module, config: ExperimentConfig, checkpoint: dict[str, Any],
                     frames: list[tuple[str, dict[str, Any]]], out: Path, *, score_thresh: float = 0.3,
                     panels: int = 16, batch_size: int = 4, echo: Callable[[str], None] = print) -> Path:
    """Detect objects in ``frames``; writes detections.json (and one panels.png with up to ``panels`` frames).
    ``config.eval.tile`` set: tiled inference (see :func:`detect_frames`), recorded in the file's "tiling"."""
    from crossattentiondet import viz

    names = list(checkpoint.get("class_names") or [])
    results = detect_frames(model, config, checkpoint, frames, score_thresh=score_thresh, batch_size=batch_size,
                            echo=echo)
    records = [{
        "frame": r["frame"], "height": int(r["image"].shape[1]), "width": int(r["image"].shape[2]),
        "detections": [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(sc), 5),
                        "label": int(lab), "class_name": viz.class_name(names, int(lab))}
                       for b, sc, lab in zip(r["boxes"], r["scores"], r["labels"])],
    } for r in results]
    result = out / "detections.json"
    ev = config.eval
    # how the frames were cut, so the file says how its boxes were obtained (None: whole frames)
    tiling = {"tile": ev.tile, "overlap": ev.tile_overlap, "nms_iou": ev.tile_nms_iou} if ev.tile is not None else None
    atomic_write_json(result, {"checkpoint": str(checkpoint["path"]), "score_thresh": score_thresh,
                               "tiling": tiling, "class_names": names, "label_ids": "label 1 = class_names[0]",
                               "frames": records})
    shown = results[:panels]
    if panels > 0 and shown:
        viz.save_panels([r["image"] for r in shown], None,
                        [{"boxes": r["boxes"], "scores": r["scores"], "labels": r["labels"]} for r in shown],
                        model.layout, names, out / "panels.png", max_panels=panels, score_thresh=score_thresh)
    total = sum(len(r["detections"]) for r in records)
    echo(f"{len(records)} frames, {total} detections (score >= {score_thresh}) -> {result}")
    return result


