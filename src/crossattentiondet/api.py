"""The Python API: what ``cadet train``, ``cadet eval`` and ``cadet predict`` do, from a script or notebook.

    import crossattentiondet as cad

    run = cad.train(overrides=["data.root=/data/my_set", "name=first_try"])   # -> RunResult
    model = cad.load(run.run_dir)                 # a run directory (best.pt) or a checkpoint file
    [dets] = model.predict({"rgb": rgb, "thermal": thermal, "event": event})
    dets.boxes, dets.scores, dets.labels, dets.names
    [dets] = model.predict(big_frame, tile=640, overlap=0.2)   # tiled: large frames with tiny objects
    seg = cad.load("runs/cod_run")                # a segmentation run (task: segment) gives a Segmenter
    [out] = seg.predict({"rgb": rgb}); out.map, out.mask   # 8-bit map and class ids at the frame's size
    summary = cad.evaluate(run.run_dir, data="/data/other_set")

Input rules (checked, see :mod:`crossattentiondet.data.inputs`): one frame is a dict modality -> raw array
(H, W) or (H, W, C) in the dtype the files have (uint8 / uint16; the model normalises), an (H, W, C) array of
all channels in the data set's channel order (``data.modalities[*].source``, as in the original .npy files),
or a path (.npy file, folder of them, or a data root of any layout); a list of these is a batch.
``model.modalities`` says what the model takes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from crossattentiondet.config import ConfigError, EvalConfig, ExperimentConfig, build_config, load_config
from crossattentiondet.data.inputs import ModalityInput, spec_from_checkpoint
from crossattentiondet.errors import DataError

__all__ = ["Detections", "Detector", "SegmentationMap", "Segmenter", "evaluate", "load", "train"]


@dataclass
class Detections:
    """The detections of one frame, scores at or above the threshold, highest first."""

    frame: str
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in input pixels
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64: 0-based class index into class_names, as in YOLO label files
    class_names: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[i] if 0 <= i < len(self.class_names) else str(i) for i in self.labels.tolist()]

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """A trained model with the input rules it was trained under; see :func:`load`."""

    def __init__(self, model: torch.nn.Module, config: ExperimentConfig, checkpoint: dict[str, Any]) -> None:
        self.model = model
        self.config = config
        self.checkpoint = checkpoint
        self.class_names: list[str] = list(checkpoint.get("class_names") or [])
        self.modalities: list[ModalityInput] = spec_from_checkpoint(checkpoint)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Detector:
        self.model.to(device)
        return self

    def predict(self, inputs: Any, *, score_thresh: float = 0.3, batch_size: int = 4, verbose: bool = False,
                tile: int | None = None, overlap: float | None = None, nms_iou: float | None = None
                ) -> list[Detections]:
        """Detections for each frame of ``inputs`` (one frame, a path, or a list of them; see the module doc).

        Frames are checked against what the model was trained on: missing modalities, other channel counts,
        float or signed arrays, values above the training scale are errors (DataError naming the frame);
        uint8 <-> uint16 is converted where the training scale was the dtype's full range.

        ``tile``: detect in overlapping ``tile`` x ``tile`` px windows (large frames with tiny objects),
        overlapping by ``overlap`` of a tile, merged by class-wise NMS at ``nms_iou``; unset values come from
        the run's ``eval.tile`` / ``eval.tile_overlap`` / ``eval.tile_nms_iou`` (``load(..., overrides=
        ["eval.tile=640"])`` sets them for every call). See :mod:`crossattentiondet.engine.tiling`.
        """
        from crossattentiondet.engine.inference import detect_frames

        if not 0 <= score_thresh <= 1:
            raise ConfigError(f"score_thresh={score_thresh}: must be between 0 and 1")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: must be at least 1")
        tiling = self._tiling(tile, overlap, nms_iou)
        frames = self._frames(inputs)
        results = detect_frames(self.model, self.config, self.checkpoint, frames, score_thresh=score_thresh,
                                batch_size=batch_size, echo=print if verbose else (lambda _m: None), tiling=tiling)
        return [Detections(r["frame"], r["boxes"].numpy().astype(np.float32), r["scores"].numpy().astype(np.float32),
                           r["labels"].numpy().astype(np.int64) - 1, self.class_names) for r in results]

    __call__ = predict

    def _tiling(self, tile: int | None, overlap: float | None, nms_iou: float | None) -> EvalConfig:
        """The run's eval settings with the given tiling keywords, validated like the config keys."""
        given = {k: v for k, v in (("tile", tile), ("tile_overlap", overlap), ("tile_nms_iou", nms_iou)) if v is not None}
        if not given:
            return self.config.eval
        try:
            tiling = EvalConfig.model_validate({**self.config.eval.model_dump(), **given})
        except ValidationError as err:
            names = {"tile": "tile", "tile_overlap": "overlap", "tile_nms_iou": "nms_iou"}
            problems = "; ".join(f"{names.get(str(e['loc'][0]), e['loc'][0])}={e.get('input')!r}: {e['msg']}"
                                 for e in err.errors())
            raise ConfigError(f"predict: {problems}") from None
        if tiling.tile is None:  # an overlap / NMS of tiles without tiles would be silently ignored
            passed = ", ".join(f"{name}={value!r}" for name, value in (("overlap", overlap), ("nms_iou", nms_iou))
                               if value is not None)
            raise ConfigError(f"predict: {passed} needs a tile: pass tile=PX (or load with overrides="
                              "['eval.tile=PX']); this run sets no eval.tile")
        return tiling

    def _frames(self, inputs: Any) -> list[tuple[str, dict[str, Any]]]:
        from crossattentiondet.engine.inference import input_frames, split_channels

        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not items:
            raise DataError("predict: no frames given")
        frames: list[tuple[str, dict[str, Any]]] = []
        for index, item in enumerate(items):
            name = f"frame{index}"
            if isinstance(item, (str, Path)):
                frames += input_frames([Path(item)], self.config)
            elif isinstance(item, Mapping):
                frames.append((name, dict(item)))
            elif isinstance(item, (np.ndarray, torch.Tensor)):
                array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item
                frames.append((name, split_channels(array, self.config, name)))
            else:
                raise DataError(f"{name}: a {type(item).__name__}; give a dict modality -> array, an (H, W, C) "
                                "array of all channels, or a path")
        return frames

    def __repr__(self) -> str:
        inputs = "; ".join(m.describe() for m in self.modalities)
        return (f"Detector({self.config.model.backbone}, classes {self.class_names}, inputs [{inputs}], "
                f"checkpoint {self.checkpoint['path']})")


@dataclass
class SegmentationMap:
    """The prediction of one frame at its own resolution: ``map`` is what ``cadet predict`` writes (binary:
    uint8 object probability x 255; semantic: uint8 class ids), ``mask`` the class ids (binary: map >= 128)."""

    frame: str
    map: np.ndarray
    binary: bool
    class_names: list[str] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        return (self.map >= 128).astype(np.uint8) if self.binary else self.map


class Segmenter(Detector):
    """A trained segmentation model (``task: segment``); frames are given as to :class:`Detector`."""

    def predict(self, inputs: Any, *, batch_size: int = 4, verbose: bool = False,  # type: ignore[override]
                **_: Any) -> list[SegmentationMap]:
        """One :class:`SegmentationMap` per frame, after the same input checks as detection."""
        from crossattentiondet.segmentation.predict import segment_frames

        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: must be at least 1")
        results = segment_frames(self.model, self.config, self.checkpoint, self._frames(inputs),
                                 batch_size=batch_size, echo=print if verbose else (lambda _m: None))
        binary = len(self.class_names) == 2
        return [SegmentationMap(r["frame"], r["map"], binary, self.class_names) for r in results]

    __call__ = predict

    def __repr__(self) -> str:
        return super().__repr__().replace("Detector(", "Segmenter(", 1)


def load(path: str | Path, *, device: str | None = None, overrides: Sequence[str] | None = None) -> Detector:
    """A trained model from a run directory (checkpoints/best.pt, else last.pt) or a checkpoint file:
    a :class:`Detector`, or a :class:`Segmenter` for segmentation runs.

    ``device``: ``cpu``, ``cuda``, ``cuda:1`` (default: the run's train.device, ``auto`` = a GPU if any).
    """
    from crossattentiondet.engine.inference import load_model

    extra = list(overrides or []) + ([f"train.device={device}"] if device else [])
    model, config, checkpoint = load_model(path, extra or None)
    return (Segmenter if config.task == "segment" else Detector)(model, config, checkpoint)


def _override_list(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):  # {"train.epochs": 3, "model.fusion.stages": [2, 3]}
        return [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"overrides={overrides!r}: give a list of key=value strings or a dict")
    return list(overrides)


def train(config: ExperimentConfig | str | Path | Mapping[str, Any] | None = None,
          overrides: Sequence[str] | Mapping[str, Any] | None = None, *, resume: bool | str | Path = False) -> Any:
    """Train a run (or resume it), as ``cadet train``; returns the RunResult (run_dir, test/val metrics).

    ``config``: an ExperimentConfig, a YAML/JSON path or ``preset:NAME``, a dict tree, or None (defaults).
    ``overrides``: ``["train.epochs=3", ...]`` or ``{"train.epochs": 3}``. ``resume=True`` continues the run the
    config names; ``resume="runs/x"`` continues that run, with ``overrides`` changing its own config.
    """
    from crossattentiondet.engine.trainer import train as train_run

    extra = _override_list(overrides)
    if isinstance(resume, (str, Path)) and config is None:
        return train_run(None, resume=resume, overrides=extra)
    if isinstance(config, ExperimentConfig):
        built = build_config(config.model_dump(mode="json"), extra) if extra else config
    elif isinstance(config, Mapping):
        built = build_config(dict(config), extra)
    else:
        built = load_config(config, extra)
    return train_run(built, resume=resume)


def evaluate(run: str | Path, *, split: str | None = None, data: str | Path | None = None,
             out: str | Path | None = None, overrides: Sequence[str] | None = None,
             verbose: bool = True) -> dict[str, Any]:
    """Evaluate a run or checkpoint, as ``cadet eval``: on ``split`` of its own data (default test), or on
    another data set ``data`` (default: all its frames). Returns the summary (metrics, per-class AP, out_dir)."""
    from crossattentiondet.engine.inference import evaluate_checkpoint

    chosen = split or ("all" if data is not None else "test")
    return evaluate_checkpoint(run, split=chosen, data_root=data, out_dir=out, overrides=list(overrides or []),
                               echo=print if verbose else (lambda _m: None))
