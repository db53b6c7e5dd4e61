"""Typed experiment configuration.

One :class:`ExperimentConfig` describes a whole run: data, model, training, evaluation and outputs.
It is built from defaults, then an experiment file (YAML or JSON), then dotted command-line overrides
(``train.lr=0.01``, ``model.fusion.stages=[1,4]``), and saved fully resolved into the run directory.

Unknown keys and wrong types raise :class:`ConfigError`, whose message names the key, the bad value and,
for unknown keys, the closest valid key. The JSON templates of the original project (``experiment_id``,
``fusion_type``, ``training``...) are recognised and translated (:func:`translate_legacy`).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the user (no traceback needed)."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated.

    Floats must be finite: no config value means anything at nan or +-inf (an unbounded value such as
    "no gradient clipping" is spelled ``null``), and a ``Field(gt=0)`` bound alone would let inf through.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _parse_stages(value: Any) -> Any:
    """Accept stage lists as [2, 3], 3, "3", "2,3", "23" or "[2,3]" (the seed scripts use "2,3")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        text = value.strip().strip("[]()").replace(" ", "")
        if not text:
            return []
        parts = text.split(",") if "," in text else list(text)
        try:
            return [int(p) for p in parts]
        except ValueError:
            return value  # let pydantic report the bad value
    return value


def _check_stages(value: list[int]) -> list[int]:
    bad = [s for s in value if s not in (1, 2, 3, 4)]
    if bad:
        raise ValueError(f"stages must be in 1..4, got {bad}")
    if len(set(value)) != len(value):
        raise ValueError(f"stages contain duplicates: {value}")
    return sorted(value)


Stages = Annotated[list[int], BeforeValidator(_parse_stages)]


# --------------------------------------------------------------------------------------------- data
class ModalityConfig(StrictModel):
    """One aligned sensor modality.

    ``source`` says where its channels come from: channel indices of the ``.npy`` array (original layout),
    or a folder name under the data root (paired-folder layouts). ``scale`` is the raw value that maps to
    1.0 (None: the maximum of the file's dtype, 255 for uint8 and 65535 for uint16).
    """

    name: str
    channels: int = Field(ge=1)
    source: list[int] | str | None = None
    # paired folders: this modality's file is <stem><suffix>.<ext> (FLIR-aligned: "_RGB", "_PreviewData")
    suffix: str = ""
    mean: list[float]
    std: list[float]
    scale: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _lengths(self) -> ModalityConfig:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"modality '{self.name}': mean and std need {self.channels} values each, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"modality '{self.name}': std values must be > 0, got {self.std}")
        if isinstance(self.source, list) and len(self.source) != self.channels:
            raise ValueError(
                f"modality '{self.name}': source lists {len(self.source)} channel indices for "
                f"{self.channels} channels"
            )
        return self


def default_modalities() -> list[ModalityConfig]:
    """RGB (channels 0-2), thermal (3) and event (4): the original data set's channel layout."""
    return [
        ModalityConfig(name="rgb", channels=3, source=[0, 1, 2], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ModalityConfig(name="thermal", channels=1, source=[3], mean=[0.5], std=[0.5]),
        ModalityConfig(name="event", channels=1, source=[4], mean=[0.5], std=[0.5]),
    ]


class SplitConfig(StrictModel):
    """Train / val / test split: from files listing stems, or seeded ratios over groups of frames."""

    train: float = Field(default=0.7, ge=0, le=1)
    val: float = Field(default=0.15, ge=0, le=1)
    test: float = Field(default=0.15, ge=0, le=1)
    train_file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    seed: int = 42
    # "auto": numbered frame names with several prefixes are whole sequences, with one prefix blocks of 10;
    # "none"; "regex:<pattern>" (the first capture group, or the whole match, names the group); "blocks:<N>"
    # (N consecutive frames in sorted order). See crossattentiondet.data.splits.
    group_by: str = "auto"
    # blocks only (auto's blocks, blocks:<N>): frames within `gap` frames of a block of another split are left
    # out of the lower split (train < val < test), so no training frame sits next to an evaluation frame;
    # 0 keeps every frame.
    gap: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        files = [self.train_file, self.val_file, self.test_file]
        if not any(files) and abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got train={self.train} val={self.val} test={self.test}")
        g = self.group_by
        if not (g in ("auto", "none") or g.startswith("regex:") or re.fullmatch(r"blocks:\d+", g)):
            raise ValueError(f"group_by must be auto, none, regex:<pattern> or blocks:<N>, got {g!r}")
        if g.startswith("regex:"):
            try:
                re.compile(g[len("regex:"):])
            except re.error as err:
                raise ValueError(f"group_by regex {g[6:]!r} does not compile: {err}") from None
        return self


class ColorJitterConfig(StrictModel):
    prob: float = Field(default=0.0, ge=0, le=1)
    brightness: float = Field(default=0.2, ge=0)
    contrast: float = Field(default=0.2, ge=0)
    saturation: float = Field(default=0.2, ge=0)
    hue: float = Field(default=0.02, ge=0, le=0.5)


class CopyPasteConfig(StrictModel):
    """Copy-paste (Ghiasi et al. 2021, box version): with ``prob``, 1..``max_pastes`` objects cut (box + a
    ``margin`` of context) from other training frames of the same split are pasted at their native size at
    random free places, with their boxes, into every modality: a place is free when the pasted patch covers at
    most 30 % of any box already there (10 tries, else that object is left out), so no existing box is dropped.
    ``classes``: only these class names are pasted (None: all), e.g. the rare ball. Detection only."""

    prob: float = Field(default=0.0, ge=0, le=1)
    max_pastes: int = Field(default=3, ge=1)
    classes: list[str] | None = None
    margin: float = Field(default=0.1, ge=0, le=1)  # context around the box, as a fraction of its side
    max_object_size: int | None = Field(default=None, ge=1)  # paste only objects up to this many px (longer side)


class AugmentConfig(StrictModel):
    """Training-time augmentation. Geometric transforms move all modalities and boxes together."""

    hflip: float = Field(default=0.5, ge=0, le=1)
    scale_jitter: tuple[float, float] | None = None  # random resize factor range, e.g. [0.8, 1.2]
    crop_prob: float = Field(default=0.0, ge=0, le=1)
    crop_min_scale: float = Field(default=0.6, gt=0, le=1)
    crop_min_visible: float = Field(default=0.4, ge=0, le=1)  # boxes keeping less of their area are dropped
    color_jitter: ColorJitterConfig = ColorJitterConfig()
    clahe: float = Field(default=0.0, ge=0, le=1)
    motion_blur: float = Field(default=0.0, ge=0, le=1)
    motion_blur_kernel: int = Field(default=7, ge=3)
    noise: float = Field(default=0.0, ge=0, le=1)
    noise_std: float = Field(default=0.02, ge=0)  # on the 0-1 scale
    thermal_gain_offset: float = Field(default=0.0, ge=0, le=1)
    thermal_gain: tuple[float, float] = (0.8, 1.2)
    thermal_offset: tuple[float, float] = (-0.1, 0.1)  # on the 0-1 scale
    thermal_modalities: list[str] = ["thermal"]
    rgb_modalities: list[str] = ["rgb"]
    modality_dropout: float = Field(default=0.0, ge=0, le=1)  # per sample: zero one random modality
    # segmentation (camoXpert used them): vertical flip and a random multiple of 90 degrees; both move the
    # mask with the image. Off by default: for detection a rotated street scene is no longer a street scene.
    vflip: float = Field(default=0.0, ge=0, le=1)
    rot90: float = Field(default=0.0, ge=0, le=1)
    clahe_clip_limit: float = Field(default=2.0, gt=0)
    clahe_tiles: int = Field(default=8, ge=1)  # tiles per side of the CLAHE grid (8 = 8x8)
    motion_blur_max_kernel: int | None = Field(default=None, ge=3)  # None: always motion_blur_kernel; else random odd 3..max
    # detection, tiny objects (seeds/003): objects cut from other training frames pasted in (all modalities)
    copy_paste: CopyPasteConfig = CopyPasteConfig()
    # four training frames in a 2x2 grid around a random centre, cut to the first frame's size (YOLO-style);
    # boxes keeping less than crop_min_visible of their area are dropped. Detection only
    mosaic: float = Field(default=0.0, ge=0, le=1)
    # multi-scale training: the shorter side drawn among the multiples of 32 in [min, max] (like DETR's
    # 480..800), the longer side capped at multi_scale_max_size (the seed's 800 / 1333); None: off (native size)
    multi_scale: tuple[int, int] | None = None
    multi_scale_max_size: int | None = Field(default=None, ge=32)

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        if self.multi_scale is not None:
            lo, hi = self.multi_scale
            if not 32 <= lo <= hi:
                raise ValueError(f"data.augment.multi_scale must be [min, max] with 32 <= min <= max, got "
                                 f"{list(self.multi_scale)}")
        return self


class LoaderConfig(StrictModel):
    num_workers: int = Field(default=2, ge=0)
    pin_memory: bool | None = None  # None: on when training on CUDA
    persistent_workers: bool = True
    prefetch_factor: int | None = Field(default=2, ge=1)
    aspect_ratio_grouping: bool = False


class SyntheticConfig(StrictModel):
    """The built-in synthetic RGB + thermal + event data set (used when ``data.root`` is not set)."""

    images: int = Field(default=240, ge=4)
    size: tuple[int, int] = (160, 128)  # width, height
    classes: int = Field(default=3, ge=1, le=5)
    seed: int = 0
    cache_dir: str | None = None  # None: <output.root>/_synthetic/<hash>


class CodConfig(StrictModel):
    """COD10K protocol: train on the camouflaged (CAM) training images, test on the 2026 CAM test images."""

    include_noncam: bool = False  # also train on COD10K's NonCAM images (never tested on)


class DataConfig(StrictModel):
    root: str | None = None  # None: the built-in synthetic data set
    layout: Literal["auto", "original", "folders", "llvip", "flir", "m3fd", "kaist", "coco", "cod10k", "sinet",
                    "mfnet"] = "auto"
    images_dir: str | None = None  # original layout: defaults to <root>/images
    labels: str | None = None  # label folder or COCO json; defaults per layout
    label_format: Literal["auto", "yolo", "coco", "voc"] = "auto"
    # paired annotations (one box file per modality, KAIST-paired): the modality (name or folder) whose boxes
    # are the labels; None: the thermal one
    label_modality: str | None = None
    names: list[str] | None = None  # class names (YOLO ids index this list)
    modalities: list[ModalityConfig] = Field(default_factory=default_modalities)
    keep_empty: bool = True  # frames without boxes are kept as negatives
    on_error: Literal["fail", "skip"] = "fail"
    split: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    loader: LoaderConfig = LoaderConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    # segmentation: the mask folder of the folders layout (PNG class-id maps named like the frames)
    masks: str = "masks"
    cod: CodConfig = CodConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [m.name for m in self.modalities]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"modality names must be unique, repeated: {dup}")
        if self.names is not None:
            # a repeated class name would make two label ids one class in the metrics and the panels
            repeated = sorted({n for n in self.names if self.names.count(n) > 1})
            if repeated:
                raise ValueError(f"data.names: class names must be unique, repeated: {repeated}")
        return self

    def modality(self, name: str) -> ModalityConfig:
        for m in self.modalities:
            if m.name == name:
                return m
        raise ConfigError(f"unknown modality '{name}' (defined: {[m.name for m in self.modalities]})")


# -------------------------------------------------------------------------------------------- model
class FrmFfmConfig(StrictModel):
    reduction: int = Field(default=1, ge=1)
    lambda_c: float = 0.5
    lambda_s: float = 0.5


class CssaConfig(StrictModel):
    switching_thresh: float = Field(default=0.5, ge=0, le=1)
    kernel_size: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _odd(self) -> CssaConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"cssa kernel_size must be odd, got {self.kernel_size}")
        return self


class GaffConfig(StrictModel):
    se_reduction: int = Field(default=4, ge=1)
    inter_shared: bool = False
    merge_bottleneck: bool = False


FusionName = Literal["frm_ffm", "cssa", "gaff", "add", "concat"]


class FusionConfig(StrictModel):
    """Where fusion happens: ``type`` at ``stages``; every other stage uses ``other``.

    ``flow: separate`` keeps two streams (each stream continues with its own, for FRM+FFM rectified, map);
    ``flow: fused`` feeds the fused map into both streams, as the original ablation encoders did.
    ``per_stage`` ({stage: module}) overrides both for full control.
    """

    type: FusionName = "frm_ffm"
    stages: Stages = [1, 2, 3, 4]
    other: FusionName = "frm_ffm"
    flow: Literal["separate", "fused"] = "separate"
    per_stage: dict[int, FusionName] = {}
    frm_ffm: FrmFfmConfig = FrmFfmConfig()
    cssa: CssaConfig = CssaConfig()
    gaff: GaffConfig = GaffConfig()

    @model_validator(mode="after")
    def _check(self) -> FusionConfig:
        _check_stages(self.stages)
        bad = [s for s in self.per_stage if s not in (1, 2, 3, 4)]
        if bad:
            raise ValueError(f"per_stage keys must be stages 1..4, got {bad}")
        return self

    def module_for_stage(self, stage: int) -> str:
        if stage in self.per_stage:
            return self.per_stage[stage]
        return self.type if stage in self.stages else self.other


class MiTOverrides(StrictModel):
    """Override parts of the MiT variant (tiny models for tests, custom widths)."""

    embed_dims: list[Annotated[int, Field(ge=1)]] | None = None
    depths: list[int] | None = None
    num_heads: list[Annotated[int, Field(ge=1)]] | None = None
    sr_ratios: list[Annotated[int, Field(ge=1)]] | None = None
    mlp_ratios: list[Annotated[float, Field(gt=0)]] | None = None

    @model_validator(mode="after")
    def _four(self) -> MiTOverrides:
        for key in ("embed_dims", "depths", "num_heads", "sr_ratios", "mlp_ratios"):
            value = getattr(self, key)
            if value is not None and len(value) != 4:
                raise ValueError(f"mit.{key} needs 4 values (one per stage), got {value}")
        return self


class RpnConfig(StrictModel):
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    score_thresh: float = 0.0


class RoiConfig(StrictModel):
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    nms_thresh: float = 0.5


class DetrLossConfig(StrictModel):
    """DETR-head loss weights (Deformable DETR / DINO's): sigmoid focal classification, L1 and GIoU on boxes."""

    class_weight: float = Field(default=1.0, ge=0)  # x sigmoid focal loss (summed over queries / num boxes)
    l1_weight: float = Field(default=5.0, ge=0)  # x L1 of normalised (cx, cy, w, h)
    giou_weight: float = Field(default=2.0, ge=0)  # x (1 - GIoU)
    focal_alpha: float = Field(default=0.25, ge=0, le=1)
    focal_gamma: float = Field(default=2.0, ge=0)


class DetrMatcherConfig(StrictModel):
    """Hungarian matching costs (scipy's linear_sum_assignment on class + L1 + GIoU costs)."""

    class_cost: float = Field(default=2.0, ge=0)  # focal-style classification cost
    l1_cost: float = Field(default=5.0, ge=0)
    giou_cost: float = Field(default=2.0, ge=0)


class DetrDenoisingConfig(StrictModel):
    """DINO's contrastive denoising queries: noised copies of the ground truth (positives near a box,
    negatives farther) that the decoder learns to reconstruct / reject; training only."""

    enabled: bool = False
    groups: int = Field(default=5, ge=1)  # copies of every ground-truth box (each one positive + one negative)
    label_noise: float = Field(default=0.5, ge=0, le=1)  # chance a query's class is flipped at random
    box_noise: float = Field(default=1.0, ge=0)  # box noise scale (DINO's box_noise_scale)
    loss_weight: float = Field(default=1.0, ge=0)  # x the denoising losses (same terms as the matched ones)


class DetrConfig(StrictModel):
    """The DETR-family head (models/detr/): deformable encoder over the chosen encoder levels, two-stage query
    selection, a decoder with iterative box refinement, optional denoising, auxiliary losses per layer."""

    hidden_dim: int = Field(default=256, ge=8)
    num_heads: int = Field(default=8, ge=1)
    # encoder stages feeding the head (1..4 = strides 4, 8, 16, 32); stride 4 (stage 1) keeps tiny objects
    levels: Stages = [2, 3, 4]
    extra_levels: int = Field(default=1, ge=0)  # stride-2 convs on the last level (Deformable DETR adds one)
    encoder_layers: int = Field(default=6, ge=0)
    decoder_layers: int = Field(default=6, ge=1)
    ffn_dim: int = Field(default=1024, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    num_points: int = Field(default=4, ge=1)  # sampling points per head and level (deformable attention)
    num_queries: int = Field(default=300, ge=1)
    two_stage: bool = True  # queries = the top encoder tokens (proposals), not learned embeddings
    box_refine: bool = True  # each decoder layer refines the previous layer's boxes
    aux_loss: bool = True  # losses on every decoder layer (and the two-stage proposals)
    denoising: DetrDenoisingConfig = DetrDenoisingConfig()
    loss: DetrLossConfig = DetrLossConfig()
    matcher: DetrMatcherConfig = DetrMatcherConfig()

    @model_validator(mode="after")
    def _check(self) -> DetrConfig:
        _check_stages(self.levels)
        if not self.levels:
            raise ValueError("model.detector.detr.levels: name at least one encoder stage (1..4)")
        if self.hidden_dim % 4:
            raise ValueError(f"model.detector.detr.hidden_dim={self.hidden_dim} must be a multiple of 4 (the sine "
                             "positional encoding splits it over x, y and sin, cos)")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"model.detector.detr.hidden_dim={self.hidden_dim} is not divisible by "
                             f"num_heads={self.num_heads}")
        return self


class DetectorConfig(StrictModel):
    """The detection head: ``faster_rcnn`` (FPN + torchvision Faster R-CNN; torchvision's defaults unless said
    otherwise) or ``detr`` (the DETR-family head of ``detr``). Resize policy, score threshold and detections per
    image apply to both."""

    type: Literal["faster_rcnn", "detr"] = "faster_rcnn"
    detr: DetrConfig = DetrConfig()
    fpn_channels: int = 256
    anchor_sizes: list[list[int]] = [[32], [64], [128], [256], [512]]
    aspect_ratios: list[float] = [0.5, 1.0, 2.0]
    rpn: RpnConfig = RpnConfig()
    roi: RoiConfig = RoiConfig()
    box_head_dim: int = 1024
    score_thresh: float = 0.05
    detections_per_img: int = 100
    # native: images keep their resolution (no silent upscaling); shorter_side: torchvision-style resize
    # so the shorter side is min_size (capped by max_size on the longer side).
    resize: Literal["native", "shorter_side"] = "native"
    min_size: int = 800
    max_size: int = 1333
    size_divisible: int = 32

    @model_validator(mode="after")
    def _anchors(self) -> DetectorConfig:
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs 5 levels (4 FPN stages + pool), got {len(self.anchor_sizes)}")
        return self


MIT_BACKBONES = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")


def _check_backbone(name: str) -> str:
    if name in MIT_BACKBONES or (name.startswith("timm:") and len(name) > 5):
        return name
    raise ValueError(f"model.backbone must be one of {', '.join(MIT_BACKBONES)} or timm:<model name> "
                     f"(e.g. timm:edgenext_base), got {name!r}")


# this project's MiT variants, or any timm model through features_only ("timm:edgenext_base")
Backbone = Annotated[str, AfterValidator(_check_backbone)]


class SegLossConfig(StrictModel):
    """Loss weights. Binary (COD): BCE + soft IoU + edge, plus deep supervision; semantic: CE (+ Dice)."""

    bce: float = Field(default=1.0, ge=0)
    iou: float = Field(default=1.0, ge=0)
    edge: float = Field(default=1.0, ge=0)  # MSE of Sobel magnitudes of sigmoid(pred) and GT
    deep_supervision: float = Field(default=0.4, ge=0)  # x mean BCE/CE of the deep heads, GT resized
    ce: float = Field(default=1.0, ge=0)
    dice: float = Field(default=0.0, ge=0)


MOE_EXPERT_TYPES = ("texture", "attention", "hybrid", "frequency", "edge", "context", "contrast")


class MoEConfig(StrictModel):
    """Mixture of experts before the decoder, on each of the 4 encoder scales (segmentation/moe.py):
    a channel + spatial attention block, then ``num_experts`` experts of which a router picks ``top_k``
    per image. The router is trained by the load-balancing and z losses (weights below)."""

    enabled: bool = False
    num_experts: int = Field(default=7, ge=1)
    top_k: int | None = Field(default=None, ge=1)  # None: max(2, num_experts // 2), at most num_experts
    # expert types, cycled over the experts (7 experts = one of each)
    experts: list[Literal[MOE_EXPERT_TYPES]] = list(MOE_EXPERT_TYPES)  # type: ignore[valid-type]
    noisy_gating: bool = False  # learned Gaussian noise on the router logits while training (Shazeer et al. 2017)
    balance_weight: float = Field(default=0.01, ge=0)  # Switch/GShard load-balancing loss E * sum_i f_i P_i
    z_weight: float = Field(default=0.001, ge=0)  # router z-loss: mean squared logsumexp of the logits
    attention_reduction: int = Field(default=8, ge=1)  # SE reduction of the channel gate

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if not self.experts:
            raise ValueError("model.seg.moe.experts: name at least one expert type")
        if self.top_k is not None and self.top_k > self.num_experts:
            raise ValueError(f"model.seg.moe.top_k={self.top_k} exceeds num_experts={self.num_experts}")
        return self

    @property
    def k(self) -> int:
        """Experts per image: ``top_k``, or camoXpert's max(2, E // 2) capped at E."""
        return self.top_k if self.top_k is not None else min(self.num_experts, max(2, self.num_experts // 2))


class SegmentationConfig(StrictModel):
    """The segmentation head (``task: segment``) and its input size policy."""

    decoder: Literal["unet", "mlp"] = "unet"
    # extra 1x1 heads on the U-Net's 1/16, 1/8 and 1/4 outputs, trained on the resized GT
    deep_supervision: bool = False
    unet_channels: list[Annotated[int, Field(ge=1)]] | None = None  # per level, coarse to fine; None: encoder's
    head_channels: int = Field(default=64, ge=1)  # U-Net's last level / final head width
    mlp_dim: int = Field(default=256, ge=1)  # SegFormer/CMX MLP decoder width
    # training and inference input: square = every frame resized to size x size (camoXpert's 384);
    # keep_aspect = longer side to size, padded to a multiple of 32 (padding ignored by the loss).
    # Metrics are always computed at the ground truth's own resolution.
    resize: Literal["square", "keep_aspect"] = "square"
    size: int = Field(default=384, ge=32)
    loss: SegLossConfig = SegLossConfig()
    moe: MoEConfig = MoEConfig()

# (embed_dims, num_heads) per MiT variant: the one table models.mit.MIT_VARIANTS is built from, kept here so
# that the config checks overrides against it without importing the models
MIT_WIDTHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "mit_b0": ((32, 64, 160, 256), (1, 2, 5, 8)),
    **{f"mit_b{i}": ((64, 128, 320, 512), (1, 2, 5, 8)) for i in range(1, 6)},
}


class ModelConfig(StrictModel):
    backbone: Backbone = "mit_b1"
    # Which modalities feed which stream: two lists = dual-stream encoder with fusion; one list = a
    # single stream (early fusion of all listed modalities, or a single-modality model).
    streams: list[list[str]] = [["rgb"], ["thermal", "event"]]
    mit: MiTOverrides = MiTOverrides()
    pretrained: str | None = None  # local MiT ImageNet weights (.pth, .bin, .safetensors)
    # start from the weights of another run's checkpoint (best.pt, last.pt, a run directory): tensors whose
    # name and shape match are loaded, the others keep their initialisation (both listed when the run starts)
    init_from: str | None = None
    drop_path_rate: float = Field(default=0.1, ge=0, lt=1)
    grad_checkpointing: bool = False
    fusion: FusionConfig = FusionConfig()
    detector: DetectorConfig = DetectorConfig()
    seg: SegmentationConfig = SegmentationConfig()
    num_classes: int | None = Field(default=None, ge=1)  # detect: foreground classes; segment: incl. background; None: from the data
    zero_modalities: list[str] = []  # modalities replaced by zeros (after normalisation) in train and test

    @model_validator(mode="after")
    def _streams(self) -> ModelConfig:
        if not 1 <= len(self.streams) <= 2:
            raise ValueError(f"streams must list 1 or 2 streams, got {len(self.streams)}")
        if any(len(s) == 0 for s in self.streams):
            raise ValueError("every stream needs at least one modality")
        flat = [m for s in self.streams for m in s]
        if len(set(flat)) != len(flat):
            raise ValueError(f"a modality may feed only one stream: {self.streams}")
        if not self.used_modalities():
            raise ValueError(f"model.zero_modalities: {self.zero_modalities} zeroes every modality of "
                             f"model.streams {self.streams}; the model would see nothing")
        self._check_heads()
        return self

    def _check_heads(self) -> None:
        """Every stage's width must split evenly over its attention heads (the overrides or the variant's)."""
        if (self.mit.embed_dims is None and self.mit.num_heads is None) or self.backbone not in MIT_WIDTHS:
            return
        default_dims, default_heads = MIT_WIDTHS[self.backbone]
        dims = self.mit.embed_dims or default_dims
        heads = self.mit.num_heads or default_heads
        for stage, (dim, count) in enumerate(zip(dims, heads), start=1):
            if dim % count == 0:
                continue
            if self.mit.embed_dims is not None:
                whose = "model.mit.num_heads" if self.mit.num_heads is not None else f"{self.backbone}'s default"
                raise ValueError(f"model.mit.embed_dims: stage {stage} has {dim} channels, not divisible by "
                                 f"its {count} heads ({whose})")
            raise ValueError(f"model.mit.num_heads: stage {stage} has {count} heads, which do not divide its "
                             f"{dim} channels ({self.backbone}'s default embed_dims)")

    def used_modalities(self) -> list[str]:
        """Modalities the model really sees: those of its streams, less the ones it zeroes."""
        return [m for s in self.streams for m in s if m not in self.zero_modalities]


# ------------------------------------------------------------------------------------------- train
class OptimizerConfig(StrictModel):
    type: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    no_decay_norm_bias: bool = False
    backbone_lr_mult: float = Field(default=1.0, ge=0)


class ScheduleConfig(StrictModel):
    """Learning-rate schedule, stepped every optimizer update. Epoch-valued fields are converted."""

    type: Literal["constant", "step", "multistep", "cosine", "cosine_restart", "onecycle", "poly"] = "constant"
    step_size: float = Field(default=15, gt=0)  # epochs (step)
    gamma: float = Field(default=0.1, gt=0)
    milestones: list[float] = []  # epochs (multistep)
    # floor of cosine / cosine_restart, in absolute lr (of the heads; the backbone group keeps its ratio)
    min_lr: float = Field(default=0.0, ge=0)
    power: float = Field(default=0.9, gt=0)  # poly
    restart_epochs: float = Field(default=10, gt=0)  # cosine_restart: first cycle length (SGDR's T_0)
    t_mult: float = Field(default=2.0, ge=1)  # cosine_restart: each cycle this many times longer
    # onecycle (torch's OneCycleLR shape): cosine up from lr/div_factor over pct_start of the schedule,
    # then down to lr/(div_factor*final_div_factor)
    pct_start: float = Field(default=0.3, gt=0, lt=1)
    div_factor: float = Field(default=25.0, ge=1)
    final_div_factor: float = Field(default=1e4, ge=1)
    warmup_epochs: float = Field(default=0.0, ge=0)
    warmup_iters: int = Field(default=0, ge=0)  # used when warmup_epochs is 0
    warmup_factor: float = Field(default=0.001, ge=0, le=1)


class EmaConfig(StrictModel):
    enabled: bool = False
    decay: float = Field(default=0.9998, gt=0, lt=1)


class FreezeConfig(StrictModel):
    """Staged training: keep the encoder streams frozen for ``epochs``, then unfreeze.

    ``mode: all`` unfreezes everything at once; ``progressive`` unfreezes one MiT stage per
    ``progressive_every`` epochs, last stage first.
    """

    epochs: int = Field(default=0, ge=0)
    mode: Literal["all", "progressive"] = "all"
    progressive_every: int = Field(default=1, ge=1)
    include_fusion: bool = False  # also freeze the fusion modules


class PhaseConfig(StrictModel):
    """One phase of ``train.phases``: its own length, batch, lr, schedule and what is frozen.

    Unset values are the ``train`` section's (``train.batch_size``, ``.accumulation``, ``.lr``,
    ``.optimizer.backbone_lr_mult``, ``.schedule``; a phase's ``schedule`` changes only the keys it names). The schedule restarts at each phase (warmup and cosine
    over the phase's own updates); the optimizer and its state carry on from phase to phase.
    ``freeze``: ``backbone`` = the encoder streams are frozen for the whole phase; ``none``; ``progressive``
    = the last encoder stage trains first, then one more stage at each of ``unfreeze_steps`` steps spread
    evenly over the phase, all of them at the last step.
    """

    name: str | None = None  # default: phase1, phase2, ...
    epochs: int | None = Field(default=None, ge=1)  # None (last phase only): the rest of train.epochs
    batch_size: int | None = Field(default=None, ge=1)
    accumulation: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    backbone_lr_mult: float | None = Field(default=None, ge=0)
    schedule: ScheduleConfig | None = None
    freeze: Literal["backbone", "none", "progressive"] = "none"
    unfreeze_steps: int = Field(default=3, ge=2)


class EarlyStoppingConfig(StrictModel):
    patience: int | None = Field(default=None, ge=1)  # validations without improvement; None: off
    min_delta: float = Field(default=0.0, ge=0)


class TrainConfig(StrictModel):
    epochs: int = Field(default=12, ge=1)
    batch_size: int = Field(default=2, ge=1)
    accumulation: int = Field(default=1, ge=1)
    lr: float = Field(default=0.005, gt=0)
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    base_batch: int = Field(default=16, ge=1)  # effective batch at which ``lr`` is quoted (lr_scaling)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(default=None, gt=0)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    channels_last: bool = False
    tf32: bool = True
    # cuDNN autotuning of convolutions (CUDA; fastest for fixed input sizes, nondeterministic); ignored with
    # train.deterministic
    cudnn_benchmark: bool = False
    compile: bool = False  # torch.compile the backbone (encoder + FPN); the detection heads stay eager
    compile_backend: str = "inductor"  # e.g. "eager" / "aot_eager" to debug compilation
    ema: EmaConfig = EmaConfig()
    freeze: FreezeConfig = FreezeConfig()
    max_nonfinite: int = Field(default=5, ge=1)  # consecutive skipped updates before the run stops
    val_every: int = Field(default=1, ge=1)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint_every: int | None = Field(default=None, ge=1)  # keep epoch_N.pt every N epochs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False
    # DDP: every registered model uses all its trainable parameters in each step (tests/test_models.py
    # checks it), so the slower unused-parameter search is off; a custom module with unused branches sets it
    find_unused_parameters: bool = False
    log_every: int = Field(default=20, ge=1)  # iterations between TensorBoard / per-batch CSV updates
    print_every: int | None = Field(default=None, ge=1)  # iterations between console lines; None: log_every
    iteration_csv: bool = False  # also write metrics_per_batch.csv every log_every iterations
    max_iters_per_epoch: int | None = Field(default=None, ge=1)  # cap (quick runs, smoke tests)
    # training in phases (e.g. frozen backbone, then unfrozen at a smaller batch); empty: one phase of the
    # values above. The phases' epochs sum to train.epochs (the last may leave its epochs out: the rest).
    phases: list[PhaseConfig] = []
    start_phase: int = Field(default=1, ge=1)  # begin at this phase (1-based), skipping the earlier ones
    # fp16 GradScaler overflows (the scaler skips the update and lowers its scale) are counted, not fatal;
    # this many in a row stop the run (a scale that never recovers means the model itself overflows)
    max_overflow_streak: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _phases(self) -> TrainConfig:
        if not self.phases:
            if self.start_phase != 1:
                raise ValueError(f"train.start_phase={self.start_phase} needs train.phases (there is one phase)")
            return self
        given = [p.epochs for p in self.phases]
        if any(e is None for e in given[:-1]):
            raise ValueError("train.phases: only the last phase may leave out its epochs (it gets the rest of "
                             "train.epochs)")
        fixed = sum(e for e in given if e is not None)
        if given[-1] is None and fixed >= self.epochs:
            raise ValueError(f"train.phases: the phases before the last take {fixed} of train.epochs={self.epochs}, "
                             "leaving none for the last phase")
        if given[-1] is not None and fixed != self.epochs:
            raise ValueError(f"train.phases: the phases' epochs sum to {fixed}, train.epochs is {self.epochs}; set "
                             f"train.epochs={fixed} or leave the last phase's epochs out (it then gets the rest)")
        if self.start_phase > len(self.phases):
            raise ValueError(f"train.start_phase={self.start_phase}: there are {len(self.phases)} phases")
        if self.freeze.epochs:
            raise ValueError("train.freeze.epochs and train.phases both say what is frozen: with phases, give each "
                             "phase's freeze (backbone, none, progressive)")
        names = [p.name for p in self.phases if p.name is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"train.phases: phase names must be unique, got {names}")
        for phase in self.phases:
            if phase.schedule is not None:
                # a phase's schedule changes the keys it names of train.schedule (`{warmup_epochs: 2}` keeps
                # train.schedule's type); stored merged, so a saved config reads back as the same schedule
                merged = self.schedule.model_copy(update=phase.schedule.model_dump(exclude_unset=True))
                phase.__dict__["schedule"] = ScheduleConfig.model_validate(merged.model_dump())
        return self

    def phase_epochs(self) -> list[int]:
        """Epochs of each phase (the last one's unset epochs resolved); [train.epochs] without phases."""
        if not self.phases:
            return [self.epochs]
        given = [p.epochs for p in self.phases]
        if given[-1] is None:
            given[-1] = self.epochs - sum(e for e in given[:-1] if e is not None)
        return [int(e) for e in given if e is not None]


# -------------------------------------------------------------------------------------- eval, output
class EvalConfig(StrictModel):
    split: Literal["train", "val", "test"] = "test"
    batch_size: int | None = Field(default=None, ge=1)  # None: train.batch_size
    panels: int = Field(default=16, ge=0)
    # the run's plots/ (curves, confusion matrix, panels); off: numbers and JSON only (quick smoke studies,
    # where drawing is most of a run's time)
    plots: bool = True
    robustness: bool = True  # evaluate again with each modality zeroed
    speed: bool = True  # params, size, FLOPs, latency, throughput
    speed_iters: int = Field(default=5, ge=1)
    # resamples of the test images for the 95% CI of mAP (bootstrap_<split>.json); 0: no bootstrap
    bootstrap: int = Field(default=1000, ge=0)
    # log-average miss rate MR^-2 (engine/missrate.py); auto: the kaist layout and one-class person data sets
    miss_rate: bool | Literal["auto"] = "auto"
    # detections counted in plots/confusion_matrix_<split>.png (matched at IoU 0.5)
    confusion_score_thresh: float = Field(default=0.25, ge=0.0, le=1.0)
    # size bins of the box metrics: coco (small < 32^2, medium, large >= 96^2 px area), aitod (AI-TOD's by
    # sqrt(area): verytiny < 8 px, tiny 8-16, small 16-32, medium >= 32; up to 1500 detections per image) or both
    size_bins: Literal["coco", "aitod", "both"] = "coco"
    # sliced inference for large frames with tiny objects: tiles of tile x tile px overlapping by tile_overlap,
    # merged with class-wise NMS (tile_nms_iou); None: whole frames
    tile: int | None = Field(default=None, ge=32)
    tile_overlap: float = Field(default=0.2, ge=0, lt=1)
    tile_nms_iou: float = Field(default=0.5, gt=0, le=1)
    # the validation metric that picks best.pt; None: the task's (detect: mAP; segment: Smeasure for binary,
    # mIoU for semantic). Lower-is-better metrics (MAE) are minimised.
    select: str | None = None


class MlflowConfig(StrictModel):
    enabled: bool = False
    tracking_uri: str | None = None  # None: local SQLite store <output.root>/mlflow.db, artifacts in mlruns/
    experiment: str = "crossattentiondet"
    tags: dict[str, str | int | float | bool] = {}  # set on the MLflow run; "mlflow.runName" names it
    log_models: bool = False  # also upload checkpoints/best.pt as an artefact (large; off like the seed's fast config)


class OutputConfig(StrictModel):
    root: str = "runs"
    tensorboard: bool = True
    mlflow: MlflowConfig = MlflowConfig()


class ExperimentConfig(StrictModel):
    # what is learned: detect (Faster R-CNN boxes) or segment (per-pixel masks); see tasks/
    task: Literal["detect", "segment"] = "detect"
    name: str = "run"  # the run directory is <output.root>/<name>
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _cross_check(self) -> ExperimentConfig:
        known = {m.name for m in self.data.modalities}
        used = [m for s in self.model.streams for m in s] + list(self.model.zero_modalities)
        unknown = [m for m in used if m not in known]
        if unknown:
            raise ValueError(
                f"model.streams / model.zero_modalities name modalities {unknown} that data.modalities "
                f"does not define (defined: {sorted(known)})"
            )
        if self.data.augment.multi_scale is not None and self.model.detector.resize == "shorter_side" \
                and self.task == "detect":
            raise ValueError("data.augment.multi_scale has no effect with model.detector.resize=shorter_side (the "
                             "detector resizes every image to min_size again); use resize=native with multi_scale, "
                             "or vary model.detector.min_size instead")
        if self.eval.tile is not None and self.task != "detect":
            raise ValueError(f"eval.tile={self.eval.tile}: tiled inference is for detection; task={self.task} resizes "
                             "frames by model.seg.resize / model.seg.size")
        for key in ("rgb_modalities", "thermal_modalities"):
            names = getattr(self.data.augment, key)
            missing = [n for n in names if n not in known]
            # the defaults name rgb/thermal; only complain when the user asked for photometric transforms
            if missing and names != AugmentConfig.model_fields[key].default:
                raise ValueError(f"data.augment.{key} names unknown modalities {missing}")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output.root) / self.name


# ------------------------------------------------------------------------------------ legacy format
_LEGACY_KEYS = {"experiment_id", "fusion_type", "training", "backbone", "cssa", "gaff"}


def is_legacy(raw: dict[str, Any]) -> bool:
    """True for the original project's JSON experiment templates (seeds/000 section 10)."""
    return "fusion_type" in raw or ("training" in raw and "train" not in raw)


def translate_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """Translate an original-project JSON template into this project's config layout.

    Meaning is kept: backbone, fusion type and parameters, epochs, batch size, lr, SGD momentum and
    weight decay, StepLR (or constant lr for ``lr_scheduler: null``), data folders and train share.
    As in the original ablation encoders, CSSA/GAFF run at the listed stages with FRM+FFM elsewhere,
    the fused map feeding both streams and drop-path 0; the baseline (``fusion_type: null``) is FRM+FFM
    at every stage with separate streams and drop-path 0.1. The original had no validation split; here
    ``train_split`` keeps its share and the rest is divided equally between validation and test.
    """
    unknown = sorted(set(raw) - _LEGACY_KEYS - {"data"})
    if unknown:
        raise ConfigError(f"unknown key(s) in original-format config: {unknown}")
    out: dict[str, Any] = {"model": {}, "train": {}, "data": {}}
    if "experiment_id" in raw:
        out["name"] = str(raw["experiment_id"])
    if "backbone" in raw:
        out["model"]["backbone"] = raw["backbone"]
    fusion_type = raw.get("fusion_type")
    if fusion_type is None:
        out["model"]["fusion"] = {"type": "frm_ffm", "stages": [1, 2, 3, 4], "flow": "separate"}
    elif fusion_type in ("cssa", "gaff"):
        params = dict(raw.get(fusion_type) or {})
        stages = params.pop("stages", [1, 2, 3, 4])
        out["model"]["fusion"] = {"type": fusion_type, "stages": stages, "other": "frm_ffm", "flow": "fused",
                                  fusion_type: params}
        out["model"]["drop_path_rate"] = 0.0
    else:
        raise ConfigError(f"fusion_type must be null, 'cssa' or 'gaff' in original-format config, got {fusion_type!r}")
    training = dict(raw.get("training") or {})
    key_map = {"epochs": "epochs", "batch_size": "batch_size", "learning_rate": "lr"}
    for old, new in key_map.items():
        if old in training:
            out["train"][new] = training.pop(old)
    opt = training.pop("optimizer", None) or {}
    if opt:
        opt = dict(opt)
        kind = str(opt.pop("type", "SGD")).lower()
        out["train"]["optimizer"] = {"type": kind, **opt}
    if "lr_scheduler" in training:
        sched = training.pop("lr_scheduler")
        if sched is None:
            out["train"]["schedule"] = {"type": "constant"}
        else:
            sched = dict(sched)
            kind = sched.pop("type", "StepLR")
            if kind != "StepLR":
                raise ConfigError(f"training.lr_scheduler.type {kind!r} is not supported (StepLR or null)")
            out["train"]["schedule"] = {"type": "step", **sched}
    if training:
        raise ConfigError(f"unknown key(s) in original-format training section: {sorted(training)}")
    data = dict(raw.get("data") or {})
    if "data_dir" in data:
        images = Path(data.pop("data_dir"))
        out["data"]["root"] = str(images.parent)
        out["data"]["layout"] = "original"
        out["data"]["images_dir"] = str(images)
    if "labels_dir" in data:
        out["data"]["labels"] = str(data.pop("labels_dir"))
    if "train_split" in data:
        train = float(data.pop("train_split"))
        rest = round((1.0 - train) / 2, 10)
        out["data"]["split"] = {"train": train, "val": rest, "test": round(1.0 - train - rest, 10)}
    if data:
        raise ConfigError(f"unknown key(s) in original-format data section: {sorted(data)}")
    return out


# ---------------------------------------------------------------------------------- load / override
class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice (YAML and JSON would silently keep the last value)."""

    def __init__(self, key: Any, line: int | None, first_line: int | None = None) -> None:
        self.key, self.line, self.first_line = key, line, first_line
        where = f"line {line}: " if line is not None else ""
        first = f" (first at line {first_line})" if first_line is not None else ""
        super().__init__(f"{where}duplicate key {key!r}{first}")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated in one mapping, at any depth (merge keys ``<<`` may
    still be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader itself reports it
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise DuplicateKeyError(key, line, first)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _reject_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key, None)
        out[key] = value
    return out


def _located_json_duplicate(text: str) -> DuplicateKeyError | None:
    """A repeated key in JSON text, with its lines: the JSON parser's hook knows no positions, but YAML
    reads JSON too and :class:`UniqueKeyLoader` does (None where the YAML reader cannot parse the text)."""
    try:
        yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as err:
        return err
    except yaml.YAMLError:
        return None
    return None


def _one_line_yaml_error(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    return " ".join(str(err).split())


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping from ``path`` (configs, study specs), with one-line errors for a binary or
    non-UTF-8 file, a syntax error or a duplicate key."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    if b"\x00" in data:
        raise ConfigError(f"{path}: not a text file (it contains NUL bytes: binary data, or UTF-16 text)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{data[err.start]:02x} at offset {err.start})") from None
    is_json = path.suffix.lower() == ".json"
    try:
        if is_json:
            raw = json.loads(text, object_pairs_hook=_reject_duplicate_pairs)
        else:
            raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as err:
        if err.line is None:
            err = _located_json_duplicate(text) or err
        where = f" at line {err.line}" if err.line is not None else ""
        first = f" (first at line {err.first_line})" if err.first_line is not None else ""
        raise ConfigError(f"{path}: duplicate key {str(err.key)!r}{where}{first}; give each key once") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: line {err.lineno}, column {err.colno}: {err.msg}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line_yaml_error(err)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=c`` into (["a", "b"], value); the value is parsed as YAML (``[1,4]``, ``true``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.lr=0.01)")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.load(value_text, Loader=UniqueKeyLoader) if value_text.strip() else ""  # noqa: S506
    except DuplicateKeyError as err:
        raise ConfigError(f"override {text!r}: duplicate key {err.key!r}") from None
    except yaml.YAMLError:
        value = value_text
    return key.split("."), value


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at ``path`` in a nested dict (list elements by index), creating mappings as needed."""
    node: Any = tree
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            try:
                index = int(part)
                node[index]  # noqa: B018 - bounds check
            except (ValueError, IndexError):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a valid index of a list of {len(node)}") from None
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:i])} is a value, not a section")
        if last:
            node[part] = value
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_all_keys(annotation, dotted + "."))
    return keys


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            for c in args:
                inner = [a for a in getattr(c, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
                nested.extend(inner)
        if not nested:
            return None
        model = nested[0]
    return model


def closest_key(loc: tuple[Any, ...]) -> str | None:
    """The valid key nearest to an unknown one: a sibling with a similar name, else the same name elsewhere."""
    parent = loc[:-1]
    bad = str(loc[-1])
    model = _section_model(parent)
    prefix = ".".join(str(p) for p in parent)
    if model is not None:
        match = difflib.get_close_matches(bad, list(model.model_fields), n=1, cutoff=0.6)
        if match:
            return f"{prefix}.{match[0]}" if prefix else match[0]
    every = _all_keys(ExperimentConfig)
    same_leaf = [k for k in every if k.split(".")[-1] == bad]
    if same_leaf:
        return same_leaf[0]
    leaves = {k.split(".")[-1]: k for k in every}
    match = difflib.get_close_matches(bad, list(leaves), n=1, cutoff=0.75)
    return leaves[match[0]] if match else None


def format_validation_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's errors into one line naming, for each problem, the key, the value and the problem."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            hint = closest_key(loc)
            suggestion = f" (did you mean '{hint}'?)" if hint else ""
            lines.append(f"unknown key '{key}'{suggestion}")
        else:
            value = e.get("input")
            msg = e["msg"].removeprefix("Value error, ")
            if isinstance(value, dict) and (not loc or msg.startswith(f"{key}.")):
                lines.append(msg)  # a section's check whose message names its own full key
            elif isinstance(value, dict):
                lines.append(f"{key}: {msg}")
            else:
                lines.append(f"{key}: bad value {value!r}: {msg}")
    # one line, for the CLI's `error: ...`; with no source to name, the problems alone (each names its key), so
    # callers that add their own context (a study's configuration) do not get a bare "invalid config" in between
    body = "; ".join(" ".join(line.split()) for line in lines)
    return f"invalid config ({source}): {body}" if source else body


def build_config(raw: dict[str, Any], overrides: list[str] | None = None, source: str = "") -> ExperimentConfig:
    """Validate a raw mapping (plus dotted overrides) into an :class:`ExperimentConfig`.

    A file in the seeds/003 project's shape is translated first (:mod:`crossattentiondet.seed003`; its notes
    are shown once and kept for the run's log), then the original project's JSON templates
    (:func:`translate_legacy`): both have a ``training`` section, the seed's shape is the more specific.
    """
    from crossattentiondet import seed003

    tree = copy.deepcopy(raw)
    seed_notes: list[str] = []
    if seed003.is_seed003(tree):
        try:
            tree, seed_notes = seed003.translate_seed003(tree)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}" if source else str(err)) from None
    elif is_legacy(tree):
        tree = translate_legacy(tree)
    if overrides:
        # start from the defaults so an override can reach into a list the file did not spell out
        # (data.modalities.1.mean=...); the file's own values still win, unknown keys still fail
        tree = _deep_merge(ExperimentConfig().model_dump(mode="json"), tree)
    for text in overrides or []:
        path, value = parse_override(text)
        set_dotted(tree, path, value)
    try:
        config = ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        where = source + (" + overrides" if overrides else "") if source else ("overrides" if overrides else "")
        # the seed's leak-hiding knobs (train.memory_cleanup_frequency=30...) say why they are no settings here
        unknown = [".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
                   for e in err.errors() if e["type"] == "extra_forbidden"]
        raise ConfigError(seed003.explain_refused_keys(format_validation_error(err, where), unknown)) from None
    if seed_notes:
        seed003.record_notes(source, seed_notes, seed003.config_fingerprint(config.model_dump(mode="json")))
    return config


PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(text: str | Path, relative_to: Path | None = None) -> Path:
    """A config file path, or ``preset:NAME`` for a preset shipped with the package (``preset:demo``)."""
    text = str(text)
    if text.startswith("preset:"):
        name = text[len("preset:"):]
        path = PRESETS_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
        return path
    path = Path(text)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    return path


def read_config_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a config file, with its ``base:`` chain (file or ``preset:NAME``) merged in."""
    path = resolve_config_path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: circular 'base:' chain")
    raw = read_config_file(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = resolve_config_path(base, relative_to=path.parent)
    return _deep_merge(read_config_tree(base_path, (*_seen, path.resolve())), raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults, then the file at ``path`` (YAML or JSON, this layout or the original's, or ``preset:NAME``;
    ``base: other.yaml`` builds on another file), then dotted overrides."""
    raw: dict[str, Any] = {}
    source = ""
    if path is not None:
        raw = read_config_tree(path)
        source = str(path)
    return build_config(raw, overrides, source)


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    from crossattentiondet.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))


def diff_configs(base: ExperimentConfig, other: ExperimentConfig) -> dict[str, Any]:
    """Dotted keys whose values differ between two configs (value of ``other``)."""
    out: dict[str, Any] = {}

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif a != b:
            out[prefix] = b

    walk(config_to_dict(base), config_to_dict(other), "")
    return out
