"""Staged training: frozen encoder streams first, then unfrozen all at once or stage by stage
(``train.freeze``; ``train.phases`` say it per phase: engine/phases.py).

Frozen parameters stay in the optimizer (they simply receive no gradient), so momentum/Adam state and the
lr schedule carry on across unfreezing, unlike the seed project which rebuilt both.
"""

from __future__ import annotations

from torch import nn

from crossattentiondet.config import FreezeConfig


def frozen_stages(freeze: FreezeConfig, epoch: int) -> list[int]:
    """Encoder stages (1-4) frozen during ``epoch`` (0-based)."""
    if epoch < freeze.epochs:
        return [1, 2, 3, 4]
    if freeze.mode == "all":
        return []
    # progressive: after the frozen phase, unfreeze stage 4, then 3, ... every `progressive_every` epochs
    unfrozen = 1 + (epoch - freeze.epochs) // freeze.progressive_every
    return [s for s in (1, 2, 3, 4) if s <= 4 - unfrozen]


def apply_freeze(model: nn.Module, freeze: FreezeConfig, epoch: int) -> list[int]:
    """Set requires_grad on the encoder streams (and fusion modules if asked) for this epoch."""
    stages = frozen_stages(freeze, epoch)
    set_frozen_stages(model, stages, freeze.include_fusion)
    return stages


def set_frozen_stages(model: nn.Module, stages: list[int], include_fusion: bool = False) -> None:
    """Freeze exactly these encoder stages (1-4) of every stream (and their fusion modules if asked)."""
    encoder = model.backbone.encoder
    for stream in encoder.streams:
        for stage in (1, 2, 3, 4):
            for module in stream.stage_modules(stage):
                for p in module.parameters():
                    p.requires_grad_(stage not in stages)
    if include_fusion and hasattr(encoder, "fusions"):
        for stage, module in enumerate(encoder.fusions, start=1):
            for p in module.parameters():
                p.requires_grad_(stage not in stages)
