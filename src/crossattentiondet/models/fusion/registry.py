"""A small registry of fusion modules.

Every fusion module takes the two streams' maps of one encoder stage, (B, C, H, W) each, and returns
``(fused, next1, next2)``: the fused map for the FPN, and what each stream carries into the next stage
(its input unchanged, or a rectified version for FRM+FFM). Register a new module with
``@register_fusion("name")`` on a class with a ``from_config(channels, num_heads, fusion_config)``
classmethod; it becomes selectable as ``model.fusion.type=name`` once its name is added to the config's
``FusionName``.

Modules with gates or weights worth looking at (FRM+FFM, CSSA, GAFF) are :class:`RecordsInternals`: inside
``with recording_internals(model):`` each forward keeps detached copies of what it computed in
``module.internals`` (``cadet explain`` draws them). Off by default, and then forward only tests a flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
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

_NOTHING: Mapping[str, Tensor] = MappingProxyType({})  # the class default: read-only, never filled


class RecordsInternals:
    """Mixin for an ``nn.Module`` that can keep the gates and weights its forward computed, for inspection.

    ``record_internals`` is False by default and forward then stores nothing. When it is True, forward calls
    :meth:`_record` with the tensors it computed anyway (nothing is recomputed): they are stored detached,
    so the outputs, the autograd graph and the gradients are exactly those of a forward without recording.
    Each forward replaces the previous ``internals`` (the last call's, e.g. the last batch's).
    ``recording_parts`` names sub-modules that record for this one; they follow its switch.
    """

    recording_parts: tuple[str, ...] = ()
    internals: Mapping[str, Tensor] = _NOTHING
    _recording: bool = False

    @property
    def record_internals(self) -> bool:
        return self._recording

    @record_internals.setter
    def record_internals(self, on: bool) -> None:
        self._recording = bool(on)
        self.internals = {}  # a plain dict on the instance: a model may be deep-copied (EMA) or pickled
        for name in self.recording_parts:
            getattr(self, name).record_internals = on

    def _record(self, **tensors: Tensor) -> None:
        self.internals = {name: t.detach() for name, t in tensors.items()}


@contextmanager
def recording_internals(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Record the internals of every :class:`RecordsInternals` module in ``model`` inside the block.

    Yields those modules; read their ``internals`` inside the block: on leaving it recording stops and the
    stored tensors are dropped (they would otherwise keep the last input's activations alive).
    """
    modules = [m for m in model.modules() if isinstance(m, RecordsInternals)]
    for module in modules:
        module.record_internals = True
    try:
        yield modules
    finally:
        for module in modules:
            module.record_internals = False
