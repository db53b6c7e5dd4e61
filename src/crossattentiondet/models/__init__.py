"""Model library: MiT streams, fusion modules, encoders and the Faster R-CNN detector."""

from crossattentiondet.models.detector import InputLayout, MultiModalFasterRCNN, build_detector
from crossattentiondet.models.encoder import DualStreamEncoder, FusionPlan, SingleStreamEncoder
from crossattentiondet.models.fusion import FUSION_REGISTRY, build_fusion, register_fusion
from crossattentiondet.models.mit import MIT_VARIANTS, MiTSpec, MixTransformer, mit_spec

__all__ = [
    "FUSION_REGISTRY", "MIT_VARIANTS", "DualStreamEncoder", "FusionPlan", "InputLayout", "MiTSpec",
    "MixTransformer", "MultiModalFasterRCNN", "SingleStreamEncoder", "build_detector", "build_fusion",
    "mit_spec", "register_fusion",
]
