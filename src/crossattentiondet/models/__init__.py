"""Model library: MiT streams, fusion modules, encoders, the Faster R-CNN and DETR-family detectors."""

from crossattentiondet.models.detector import InputLayout, MultiModalFasterRCNN, build_detector
from crossattentiondet.models.detr import MultiModalDETR
from crossattentiondet.models.encoder import DualStreamEncoder, FusionPlan, SingleStreamEncoder
from crossattentiondet.models.fusion import FUSION_REGISTRY, build_fusion, register_fusion
from crossattentiondet.models.mit import MIT_VARIANTS, MiTSpec, MixTransformer, mit_spec

__all__ = [
    "FUSION_REGISTRY", "MIT_VARIANTS", "DualStreamEncoder", "FusionPlan", "InputLayout", "MiTSpec",
    "MixTransformer", "MultiModalDETR", "MultiModalFasterRCNN", "SingleStreamEncoder", "build_detector", "build_fusion",
    "mit_spec", "register_fusion",
]
