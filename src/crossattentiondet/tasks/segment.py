"""Segmentation: per-pixel masks (binary camouflaged objects, or K-class RGB-X semantic segmentation).

Data: segmentation/layouts.py + data.py; model: segmentation/model.py (any encoder + U-Net or MLP decoder);
metrics: segmentation/metrics.py (COD: S-measure, E-measure, weighted F ...; semantic: mIoU); best.pt by
S-measure (binary) or mIoU (semantic) unless ``eval.select`` says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossattentiondet.config import ExperimentConfig
from crossattentiondet.tasks.base import Selection, Task

COD_METRICS = ("Smeasure", "meanEm", "maxEm", "adpEm", "wFmeasure", "MAE", "maxFm", "meanFm", "adpFm", "IoU",
               "Dice")
SEMANTIC_METRICS = ("mIoU", "pixel_acc")


def is_binary(num_classes: int) -> bool:
    """Two classes (background + object) are one logit map and the COD metrics."""
    return num_classes == 2


class SegmentationTask(Task):
    name = "segment"
    lower_is_better = frozenset({"MAE"})

    def prepare_data(self, config: ExperimentConfig, run_dir: Path | None, log: Callable[[str], None]) -> Any:
        from crossattentiondet.segmentation.data import prepare_seg_data

        return prepare_seg_data(config, run_dir, log)

    def build_model(self, config: ExperimentConfig, num_classes: int, *, load_pretrained: bool = True) -> nn.Module:
        from crossattentiondet.segmentation.model import build_segmenter

        return build_segmenter(config, num_classes, load_pretrained=load_pretrained)

    def loss_keys(self, config: ExperimentConfig) -> tuple[str, ...]:
        from crossattentiondet.segmentation.losses import seg_loss_keys

        return seg_loss_keys(is_binary(config.model.num_classes or 2), config.model.seg)

    def default_metric(self, config: ExperimentConfig, data: Any) -> str:
        return "Smeasure" if is_binary(data.num_classes) else "mIoU"

    def selectable_for(self, config: ExperimentConfig, data: Any) -> tuple[str, ...]:
        if is_binary(data.num_classes):
            return COD_METRICS
        return (*SEMANTIC_METRICS, *(f"IoU_{name}" for name in data.class_names))

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, config: ExperimentConfig, data: Any,
                 *, gather: bool, on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
        from crossattentiondet.segmentation.evaluate import evaluate_segmentation

        result = evaluate_segmentation(model, loader, device, binary=is_binary(data.num_classes),
                                       class_names=data.class_names, precision=config.train.precision,
                                       gather=gather, on_batch=on_batch)
        return result.metrics

    def val_note(self, metrics: dict[str, float], selection: Selection) -> str:
        keys = ("Smeasure", "wFmeasure", "MAE") if "Smeasure" in metrics else ("mIoU", "pixel_acc")
        if selection.metric not in keys:
            keys = (*keys, selection.metric)
        return "val " + " ".join(f"{k} {metrics.get(k, math.nan):.4f}" for k in keys)

    def finish_run(self, model: nn.Module, data: Any, config: ExperimentConfig, state: Any, run_dir: Path,
                   device: torch.device, info: Any, log: Any, best_val: dict[str, float]
                   ) -> tuple[dict[str, float], dict[str, float]]:
        from crossattentiondet.segmentation.report import finish_seg_run

        return finish_seg_run(model, data, config, state, run_dir, device, info, log, best_val,
                              self.select_metric(config, data))

    def evaluate_split(self, model: nn.Module, data: Any, split: str, config: ExperimentConfig,
                       device: torch.device, info: Any, out_dir: Path, log: Any) -> dict[str, Any]:
        from crossattentiondet.segmentation.report import evaluate_seg_split

        return evaluate_seg_split(model, data, split, config, device, info, out_dir, log,
                                  self.select_metric(config, data))

    def predict(self, model: nn.Module, config: ExperimentConfig, checkpoint: dict[str, Any],
                frames: list[tuple[str, dict[str, Any]]], out: Path, *, score_thresh: float, panels: int,
                batch_size: int, echo: Callable[[str], None]) -> Path:
        from crossattentiondet.segmentation.predict import write_seg_predictions

        return write_seg_predictions(model, config, checkpoint, frames, out, panels=panels,
                                     batch_size=batch_size, echo=echo)

    def describe(self, config: ExperimentConfig, data: Any) -> str:
        seg = config.model.seg
        kind = "binary (COD)" if is_binary(data.num_classes) else f"{data.num_classes}-class"
        return (f"{config.model.backbone} {len(config.model.streams)}-stream {seg.decoder} segmenter, {kind} "
                f"{data.class_names}, input {seg.resize} {seg.size}")

