"""Fusion modules, one file each, selected by name through the registry."""

from crossattentiondet.models.fusion import add, concat, cssa, frm_ffm, gaff  # noqa: F401  (registers them)
from crossattentiondet.models.fusion.registry import (
    FUSION_REGISTRY,
    RecordsInternals,
    build_fusion,
    recording_internals,
    register_fusion,
)

__all__ = ["FUSION_REGISTRY", "RecordsInternals", "build_fusion", "recording_internals", "register_fusion"]
