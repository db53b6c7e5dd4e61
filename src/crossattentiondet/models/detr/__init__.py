"""The DETR-family detection head (``model.detector.type: detr``): deformable attention, two-stage queries,
iterative box refinement, DINO denoising, Hungarian matching; pure PyTorch + torchvision.ops + scipy."""

from crossattentiondet.models.detr.deformable_attention import (
    MultiScaleDeformableAttention,
    deformable_sample,
    deformable_sample_naive,
)
from crossattentiondet.models.detr.losses import DetrCriterion, DetrOutputs, detr_loss_keys
from crossattentiondet.models.detr.matcher import HungarianMatcher
from crossattentiondet.models.detr.model import MultiModalDETR, build_detr

__all__ = [
    "DetrCriterion", "DetrOutputs", "HungarianMatcher", "MultiModalDETR",
    "MultiScaleDeformableAttention", "build_detr", "deformable_sample", "deformable_sample_naive", "detr_loss_keys",
]
