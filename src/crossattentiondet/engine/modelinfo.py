"""What a configured detector costs: parameters per component, size, FLOPs.

FLOPs convention: ``*_gflops`` count 2 FLOPs per multiply-add (a multiply and an add), as
``torch.utils.flop_counter`` does, over matrix products, convolutions and attention (element-wise ops,
norms and activations are not counted). Detection papers quoting fvcore / mmdet "FLOPs" count one per
multiply-add: that number is ``*_gmacs`` here, half of ``*_gflops``. Both are reported everywhere FLOPs are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(model: nn.Module, stream_names: list[list[str]] | None = None) -> dict[str, int]:
    """Parameters of each encoder stream, the fusion module of each stage, then of every other top-level part
    of the detector: FPN, RPN and RoI heads (Faster R-CNN), or input projection, transformer encoder and
    decoder, heads, proposals, denoising (DETR head)."""
    encoder = model.backbone.encoder
    out: dict[str, int] = {}
    for i, stream in enumerate(encoder.streams):
        label = "+".join(stream_names[i]) if stream_names and i < len(stream_names) else str(i)
        out[f"stream_{label}"] = count_params(stream)
    plan = getattr(encoder, "plan", None)
    for i, fusion in enumerate(getattr(encoder, "fusions", [])):
        name = plan.modules[i] if plan is not None else type(fusion).__name__
        out[f"fusion_s{i + 1}_{name}"] = count_params(fusion)
    if hasattr(model.backbone, "fpn"):
        out["fpn"] = count_params(model.backbone.fpn)
    for name, child in model.named_children():  # whatever the head is made of, by its attribute names
        if name != "backbone" and count_params(child):
            out[name] = count_params(child)
    for name, param in model.named_parameters(recurse=False):  # e.g. the DETR head's level embeddings
        out[name] = param.numel()
    return out


def model_size_mb(model: nn.Module) -> float:
    """Size of parameters and buffers in MB (what a checkpoint of the weights occupies)."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return total / 1e6


FLOPS_CONVENTION = ("gflops: 2 FLOPs per multiply-add (torch.utils.flop_counter: matmuls, convolutions, attention); "
                    "gmacs: multiply-adds, what fvcore/mmdet papers call FLOPs (= gflops / 2)")


def count_forward_flops(run: Callable[[], object]) -> dict[str, int]:
    """FLOPs (2 per multiply-add) and multiply-adds of calling ``run()``, e.g. ``lambda: module(x)``."""
    with FlopCounterMode(display=False) as counter:
        run()
    flops = int(counter.get_total_flops())
    # torch's counter adds exactly 2 per multiply-add for every op it counts, so the halving is exact
    return {"flops": flops, "macs": flops // 2}


def count_flops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> dict[str, float]:
    """GFLOPs (2 per multiply-add) and GMACs (multiply-adds) of one inference at ``size`` = (width, height).

    ``backbone`` is the model's ``backbone`` (encoder + FPN for the Faster R-CNN, the encoder for the DETR
    head); ``detector`` the whole eval-mode forward (RPN proposals and box head included, which depend on the
    proposal count; the DETR head's transformer and queries). Counted with ``torch.utils.flop_counter``; see
    :data:`FLOPS_CONVENTION`.
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
            backbone = count_forward_flops(lambda: model.backbone(normalised.tensors))
            detector = count_forward_flops(lambda: model(list(images)))
    finally:
        model.train(was_training)
    return {
        "backbone_gflops": backbone["flops"] / 1e9 / batch,
        "detector_gflops": detector["flops"] / 1e9 / batch,
        "backbone_gmacs": backbone["macs"] / 1e9 / batch,
        "detector_gmacs": detector["macs"] / 1e9 / batch,
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
        info["flops"] = {"size": list(size), **{k: round(v, 3) for k, v in count_flops(model, size).items()},
                         "convention": FLOPS_CONVENTION}
    return info
