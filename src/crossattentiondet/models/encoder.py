"""Encoders: two MiT streams with a fusion module after every stage, or one early-fusion stream."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from crossattentiondet.models.fusion import build_fusion
from crossattentiondet.models.mit import MiTSpec, MixTransformer


@dataclass(frozen=True)
class FusionPlan:
    """Which fusion module runs after each of the four encoder stages, and how the streams flow on.

    ``flow="separate"``: each stream continues with its own map (rectified by FRM+FFM, untouched by the
    other modules). ``flow="fused"``: the fused map is fed into both streams for the next stage.
    """

    modules: tuple[str, str, str, str]
    flow: str = "separate"

    @classmethod
    def from_config(cls, fusion) -> FusionPlan:  # noqa: ANN001  (config.FusionConfig)
        return cls(tuple(fusion.module_for_stage(s) for s in (1, 2, 3, 4)), fusion.flow)

    def describe(self) -> str:
        return ", ".join(f"s{i + 1}={m}" for i, m in enumerate(self.modules)) + f" ({self.flow})"


class DualStreamEncoder(nn.Module):
    """Two MiT streams of the same variant; after each stage a fusion module produces the map for the FPN.

    Only the four modules of the plan are built (one per stage), nothing else.
    """

    def __init__(self, spec: MiTSpec, in_chans: tuple[int, int], plan: FusionPlan, fusion_config,  # noqa: ANN001
                 drop_path_rate: float = 0.1, grad_checkpointing: bool = False) -> None:
        super().__init__()
        if plan.flow not in ("separate", "fused"):
            raise ValueError(f"fusion flow must be 'separate' or 'fused', got {plan.flow!r}")
        self.plan = plan
        self.streams = nn.ModuleList(
            MixTransformer(spec, c, drop_path_rate, grad_checkpointing) for c in in_chans
        )
        self.fusions = nn.ModuleList(
            build_fusion(name, spec.embed_dims[i], spec.num_heads[i], fusion_config)
            for i, name in enumerate(plan.modules)
        )

    @property
    def out_channels(self) -> list[int]:
        return self.streams[0].out_channels

    def forward(self, x1: Tensor, x2: Tensor) -> list[Tensor]:
        outs = []
        for stage in range(1, 5):
            f1 = self.streams[0].forward_stage(stage, x1)
            f2 = self.streams[1].forward_stage(stage, x2)
            fused, x1, x2 = self.fusions[stage - 1](f1, f2)
            if self.plan.flow == "fused":
                x1 = x2 = fused
            outs.append(fused)
        return outs


class SingleStreamEncoder(nn.Module):
    """One MiT over all given channels: early fusion (channels stacked at the input) or a single modality."""

    def __init__(self, spec: MiTSpec, in_chans: int, drop_path_rate: float = 0.1,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.streams = nn.ModuleList([MixTransformer(spec, in_chans, drop_path_rate, grad_checkpointing)])

    @property
    def out_channels(self) -> list[int]:
        return self.streams[0].out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.streams[0](x)
