"""What a configured detector costs: parameters per component, size, FLOPs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(model: nn.Module, stream_names: list[list[str]] | None = None) -> dict[str, int]:
    """Parameters of each encoder stream, the fusion module of each stage, FPN, RPN and RoI heads."""
    encoder = model.backbone.encoder
    out: dict[str, int] = {}
    for i, stream in enumerate(encoder.streams):
        label = "+".join(stream_names[i]) if stream_names and i < len(stream_names) else str(i)
        out[f"stream_{label}"] = count_params(stream)
    plan = getattr(encoder, "plan", None)
    for i, fusion in enumerate(getattr(encoder, "fusions", [])):
        name = plan.modules[i] if plan is not None else type(fusion).__name__
        out[f"fusion_s{i + 1}_{name}"] = count_params(fusion)
    out["fpn"] = count_params(model.backbone.fpn)
    out["rpn"] = count_params(model.rpn)
    out["roi_heads"] = count_params(model.roi_heads)
    return out


def model_size_mb(model: nn.Module) -> float:
    """Size of parameters and buffers in MB (what a checkpoint of the weights occupies)."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return total / 1e6


def count_flops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> dict[str, float]:
    """FLOPs (multiply-add = 2 FLOPs) of one inference at ``size`` = (width, height), in GFLOPs.

    ``backbone`` is encoder + FPN; ``detector`` the whole eval-mode forward (RPN proposals and box head
    included, which depend on the proposal count). Counted with ``torch.utils.flop_counter``.
    """
    width, height = size
    was_training = model.training
    model.eval()
    channels = model.layout.total_channels
    device = next(model.parameters()).device
    images = torch.randint(0, 255, (batch, channels, height, width), dtype=torch.uint8, device=device)
    try:
        with torch.inference_mode():
            normalised, _ = model.transform(list(images))
            with FlopCounterMode(display=False) as backbone_counter:
                model.backbone(normalised.tensors)
            with FlopCounterMode(display=False) as full_counter:
                model(list(images))
    finally:
        model.train(was_training)
    return {
        "backbone_gflops": backbone_counter.get_total_flops() / 1e9 / batch,
        "detector_gflops": full_counter.get_total_flops() / 1e9 / batch,
    }


def model_info(config: Any, size: tuple[int, int] | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Everything ``cadet model-info`` reports, as a JSON-ready dict."""
    from crossattentiondet.models import build_detector

    model = build_detector(config, num_classes=num_classes, load_pretrained=False)
    info: dict[str, Any] = {
        "backbone": config.model.backbone,
        "streams": config.model.streams,
        "fusion_plan": model.backbone.encoder.plan.describe() if hasattr(model.backbone.encoder, "plan") else "single stream",
        "num_classes": model.num_classes,
        "total_params": count_params(model),
        "trainable_params": count_params(model, trainable_only=True),
        "size_mb": round(model_size_mb(model), 3),
        "components": parameter_breakdown(model, config.model.streams),
    }
    if size is not None:
        info["flops"] = {"size": list(size), **{k: round(v, 3) for k, v in count_flops(model, size).items()}}
    return info
