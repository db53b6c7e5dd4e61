"""A small registry of fusion modules.

Every fusion module takes the two streams' maps of one encoder stage, (B, C, H, W) each, and returns
``(fused, next1, next2)``: the fused map for the FPN, and what each stream carries into the next stage
(its input unchanged, or a rectified version for FRM+FFM). Register a new module with
``@register_fusion("name")`` on a class with a ``from_config(channels, num_heads, fusion_config)``
classmethod; it becomes selectable as ``model.fusion.type=name`` once its name is added to the config's
``FusionName``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from torch import Tensor, nn

if TYPE_CHECKING:
    from crossattentiondet.config import FusionConfig


class FusionFactory(Protocol):
    @classmethod
    def from_config(cls, channels: int, num_heads: int, config: FusionConfig) -> nn.Module: ...


FUSION_REGISTRY: dict[str, type] = {}


def register_fusion(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in FUSION_REGISTRY:
            raise ValueError(f"fusion module {name!r} is registered twice")
        FUSION_REGISTRY[name] = cls
        return cls

    return add


def build_fusion(name: str, channels: int, num_heads: int, config: FusionConfig) -> nn.Module:
    """Instantiate the registered module ``name`` for a stage with ``channels`` channels."""
    if name not in FUSION_REGISTRY:
        raise ValueError(f"unknown fusion module {name!r}; registered: {sorted(FUSION_REGISTRY)}")
    return FUSION_REGISTRY[name].from_config(channels, num_heads, config)


FusionOutput = tuple[Tensor, Tensor, Tensor]
