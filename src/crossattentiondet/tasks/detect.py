"""Detection: Faster R-CNN or DETR-family boxes, COCO metrics, best.pt by validation mAP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossattentiondet.config import ExperimentConfig
from crossattentiondet.tasks.base import Selection, Task

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")  # Faster R-CNN's


class DetectionTask(Task):
    name = "detect"
    selectable = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large", "mAR_100")

    def prepare_data(self, config: ExperimentConfig, run_dir: Path | None, log: Callable[[str], None]) -> Any:
        from crossattentiondet.data import prepare_data

        return prepare_data(config, run_dir, log=log)

    def build_model(self, config: ExperimentConfig, num_classes: int, *, load_pretrained: bool = True) -> nn.Module:
        from crossattentiondet.models import build_detector

        return build_detector(config, num_classes, load_pretrained=load_pretrained)

    def loss_keys(self, config: ExperimentConfig) -> tuple[str, ...]:
        det = config.model.detector
        if det.type == "detr":
            from crossattentiondet.models.detr.losses import detr_loss_keys

            return detr_loss_keys(det.detr.aux_loss, det.detr.denoising.enabled, det.detr.two_stage)
        return LOSS_KEYS

    def selectable_for(self, config: ExperimentConfig, data: Any) -> tuple[str, ...]:
        """The validation metrics of ``eval.size_bins`` (AI-TOD's bins only when they are computed)."""
        from crossattentiondet.engine.evaluate import metric_keys

        return tuple(k for k in metric_keys(config.eval.size_bins) if k.startswith(("mAP", "mAR_100", "mAR_aitod"))
                     or k in ("mAR_verytiny", "mAR_tiny"))

    def default_metric(self, config: ExperimentConfig, data: Any) -> str:
        return "mAP"

    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, config: ExperimentConfig, data: Any,
                 *, gather: bool, on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
        from crossattentiondet.engine.evaluate import evaluate

        return evaluate(model, loader, device, precision=config.train.precision, class_names=data.class_names,
                        gather=gather, on_batch=on_batch, size_bins=config.eval.size_bins).metrics

    def val_note(self, metrics: dict[str, float], selection: Selection) -> str:
        note = f"val mAP {metrics['mAP']:.4f} mAP50 {metrics['mAP_50']:.4f}"
        if selection.metric not in ("mAP", "mAP_50"):
            note += f" {selection.metric} {metrics.get(selection.metric, float('nan')):.4f}"
        return note

    def finish_run(self, model: nn.Module, data: Any, config: ExperimentConfig, state: Any, run_dir: Path,
                   device: torch.device, info: Any, log: Any, best_val: dict[str, float]
                   ) -> tuple[dict[str, float], dict[str, float]]:
        from crossattentiondet.engine.report import finish_run

        return finish_run(model, data, config, state, run_dir, device, info, log, best_val)

    def evaluate_split(self, model: nn.Module, data: Any, split: str, config: ExperimentConfig,
                       device: torch.device, info: Any, out_dir: Path, log: Any) -> dict[str, Any]:
        from crossattentiondet.engine.report import evaluate_split

        return evaluate_split(model, data, split, config, device, info, out_dir, log)

    def predict(self, model: nn.Module, config: ExperimentConfig, checkpoint: dict[str, Any],
                frames: list[tuple[str, dict[str, Any]]], out: Path, *, score_thresh: float, panels: int,
                batch_size: int, echo: Callable[[str], None]) -> Path:
        from crossattentiondet.engine.inference import write_detections

        return write_detections(model, config, checkpoint, frames, out, score_thresh=score_thresh, panels=panels,
                                batch_size=batch_size, echo=echo)

    def describe(self, config: ExperimentConfig, data: Any) -> str:
        head = "DETR" if config.model.detector.type == "detr" else "Faster R-CNN"
        return (f"{config.model.backbone} {len(config.model.streams)}-stream {head} detector, {data.num_classes} class(es) "
                f"{data.class_names}")
