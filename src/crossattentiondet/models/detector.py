"""The detector: multi-modal encoder + FPN (with a max-pool level) + torchvision Faster R-CNN, or the
DETR-family head of models/detr/ (``model.detector.type``; :func:`build_detector` picks).

Input images are the raw sample tensors (C_total, H, W), uint8 / uint16 / float, with the channels of all
``data.modalities`` in order. The model owns normalisation (per modality, on a 0-1 scale: x / scale, then
(x - mean) / std), optional zeroing of modalities, and the resize policy (native resolution by default).
State-dict keys are torchvision's: ``backbone.encoder.*``, ``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from crossattentiondet.config import ConfigError, ExperimentConfig
from crossattentiondet.models.encoder import DualStreamEncoder, FusionPlan, SingleStreamEncoder
from crossattentiondet.models.mit import mit_spec
from crossattentiondet.models.roi_pool import SparseMultiScaleRoIAlign


@dataclass(frozen=True)
class InputLayout:
    """Channel bookkeeping for the model input: which channels belong to which modality and stream."""

    modality_names: tuple[str, ...]
    modality_channels: tuple[tuple[int, ...], ...]  # channel indices of each modality in the input
    stream_channels: tuple[tuple[int, ...], ...]  # channel indices feeding each stream
    scale: tuple[float | None, ...]  # per channel: raw value that maps to 1.0 (None: from dtype)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> InputLayout:
        names, groups, scale, mean, std = [], [], [], [], []
        start = 0
        for m in config.data.modalities:
            names.append(m.name)
            groups.append(tuple(range(start, start + m.channels)))
            scale += [m.scale] * m.channels
            mean += list(m.mean)
            std += list(m.std)
            start += m.channels
        by_name = dict(zip(names, groups))
        streams = tuple(tuple(c for name in stream for c in by_name[name]) for stream in config.model.streams)
        return cls(tuple(names), tuple(groups), streams, tuple(scale), tuple(mean), tuple(std))

    @property
    def total_channels(self) -> int:
        return sum(len(g) for g in self.modality_channels)

    def used_modalities(self) -> list[str]:
        """Modalities whose channels feed some stream (the others are read but ignored)."""
        used = {c for stream in self.stream_channels for c in stream}
        return [n for n, chans in zip(self.modality_names, self.modality_channels) if set(chans) & used]

    def channels_of(self, modalities: list[str] | tuple[str, ...]) -> list[int]:
        index = dict(zip(self.modality_names, self.modality_channels))
        unknown = [m for m in modalities if m not in index]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; this model has {list(self.modality_names)}")
        return [c for m in modalities for c in index[m]]


def _dtype_max(dtype: torch.dtype) -> float:
    if dtype == torch.uint8:
        return 255.0
    if dtype in (torch.uint16, torch.int32, torch.int16):
        return 65535.0
    return 1.0  # float input is taken to be on the 0-1 scale already


def normalize_input(images: Tensor, layout: InputLayout, zero_channels: list[int] | tuple[int, ...] = ()) -> Tensor:
    """Raw (C, H, W) or (B, C, H, W) input -> float32, per channel ``(x / scale - mean) / std``.

    ``scale`` is the modality's (None: the dtype's maximum, 255 for uint8, 65535 for uint16). Channels in
    ``zero_channels`` become exactly 0 (missing-sensor evaluation). Shared by the detector and the segmenter.
    """
    if images.ndim not in (3, 4):
        raise ValueError(f"input has shape {tuple(images.shape)}; expected (C, H, W) or (B, C, H, W)")
    channels = images.shape[images.ndim - 3]
    if channels != layout.total_channels:
        raise ValueError(
            f"input has {channels} channels, the model expects {layout.total_channels} "
            f"({', '.join(f'{n}:{len(c)}' for n, c in zip(layout.modality_names, layout.modality_channels))})"
        )
    default = _dtype_max(images.dtype)
    scale = torch.tensor([s if s is not None else default for s in layout.scale],
                         dtype=torch.float32, device=images.device)
    mean = torch.tensor(layout.mean, dtype=torch.float32, device=images.device)
    std = torch.tensor(layout.std, dtype=torch.float32, device=images.device)
    # one multiply-add per channel: x * (1 / (scale * std)) - mean / std
    mult = 1.0 / (scale * std)
    add = -mean / std
    if zero_channels:
        mult[list(zero_channels)] = 0.0
        add[list(zero_channels)] = 0.0
    return images.to(torch.float32) * mult[:, None, None] + add[:, None, None]


class MultiModalTransform(GeneralizedRCNNTransform):
    """Per-modality normalisation on the device, modality zeroing, explicit resize policy, batching."""

    def __init__(self, layout: InputLayout, resize: str, min_size: int, max_size: int, size_divisible: int) -> None:
        super().__init__(min_size, max_size, list(layout.mean), list(layout.std), size_divisible=size_divisible)
        self.layout = layout
        self.resize_mode = resize
        self.zero_channels: list[int] = []

    def normalize(self, image: Tensor) -> Tensor:
        return normalize_input(image, self.layout, self.zero_channels)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):  # noqa: ANN201
        if self.resize_mode == "native":
            return image, target
        return super().resize(image, target)


class MultiModalBackbone(nn.Module):
    """Encoder (dual- or single-stream) followed by an FPN with an extra max-pool level."""

    def __init__(self, encoder: nn.Module, stream_channels: tuple[tuple[int, ...], ...], fpn_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.stream_channels = stream_channels
        self._slices = [_as_slice(c) for c in stream_channels]
        self.fpn = FeaturePyramidNetwork(encoder.out_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def select(self, x: Tensor, stream: int) -> Tensor:
        sl = self._slices[stream]
        return x[:, sl] if sl is not None else x[:, list(self.stream_channels[stream])]

    def fpn_memory_format(self) -> torch.memory_format:
        """channels_last when the model was converted with ``model.to(memory_format=torch.channels_last)``."""
        weight = self.fpn.layer_blocks[0][0].weight
        channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        return torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        if len(self.stream_channels) == 2:
            feats = self.encoder(self.select(x, 0), self.select(x, 1))
        else:
            feats = self.encoder(self.select(x, 0))
        # The encoder's maps come out channels_last-strided (views of token tensors). Left so, the FPN and RPN
        # 3x3 convs (256 channels at stride 4 and 8, most of the detector's FLOPs) would run channels_last
        # whatever train.channels_last says, and oneDNN's channels_last conv backward is 2-3x slower than
        # NCHW on AVX2 CPUs. So the FPN gets the layout its weights were given (a small copy per level).
        fmt = self.fpn_memory_format()
        return self.fpn(OrderedDict((str(i), f.contiguous(memory_format=fmt)) for i, f in enumerate(feats)))


class StreamEncoder(nn.Module):
    """The encoder with each stream's channel selection: raw-normalised (B, C_total, H, W) -> its 4 maps (strides
    4..32). The DETR head and the segmenter read it as ``backbone`` (so ``backbone.encoder.*`` names, the engine's
    backbone lr groups and freezing apply to them as to the Faster R-CNN's :class:`MultiModalBackbone`)."""

    def __init__(self, encoder: nn.Module, stream_channels: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        self.encoder = encoder
        self.stream_channels = stream_channels
        self._slices = [_as_slice(c) for c in stream_channels]

    @property
    def out_channels(self) -> list[int]:
        return list(self.encoder.out_channels)

    def select(self, x: Tensor, stream: int) -> Tensor:
        sl = self._slices[stream]
        return x[:, sl] if sl is not None else x[:, list(self.stream_channels[stream])]

    def forward(self, x: Tensor) -> list[Tensor]:
        if len(self.stream_channels) == 2:
            return list(self.encoder(self.select(x, 0), self.select(x, 1)))
        return list(self.encoder(self.select(x, 0)))


def _as_slice(channels: tuple[int, ...]) -> slice | None:
    if channels and list(channels) == list(range(channels[0], channels[-1] + 1)):
        return slice(channels[0], channels[-1] + 1)
    return None


class ModalityZeroing:
    """Missing-sensor evaluation for a detector whose ``transform`` is a :class:`MultiModalTransform` and whose
    ``layout`` is its :class:`InputLayout` (the Faster R-CNN and the DETR head)."""

    layout: InputLayout
    transform: MultiModalTransform

    def set_zero_modalities(self, modalities: list[str] | tuple[str, ...]) -> None:
        """Replace these modalities by zeros after normalisation (missing-sensor evaluation)."""
        self.transform.zero_channels = self.layout.channels_of(list(modalities))

    @property
    def zero_modalities(self) -> list[str]:
        zeroed = set(self.transform.zero_channels)
        return [n for n, c in zip(self.layout.modality_names, self.layout.modality_channels) if c and set(c) <= zeroed]


class MultiModalFasterRCNN(ModalityZeroing, FasterRCNN):
    """torchvision Faster R-CNN over a :class:`MultiModalBackbone`, with modality-aware preprocessing."""


def build_encoder(config: ExperimentConfig, layout: InputLayout, load_pretrained: bool = False) -> nn.Module:
    """The encoder of ``config.model`` (4 maps at strides 4..32), shared by every task's head.

    MiT: one stream, or two with the fusion plan; ``timm:<name>``: a timm features_only backbone (one
    stream). With ``load_pretrained``, ``model.pretrained`` is loaded (MiT: ImageNet weights into every
    stream; timm: that model's timm weights file, the stem adapted to the stream's channels).
    """
    m = config.model
    weights = m.pretrained if load_pretrained else None
    if m.backbone.startswith("timm:"):
        if len(layout.stream_channels) != 1:
            raise ConfigError("timm backbones run one stream: set model.streams=[[rgb, thermal]] (early fusion) "
                              "or use a MiT backbone for two streams with fusion")
        from crossattentiondet.models.timm_encoder import TimmEncoder

        return TimmEncoder(m.backbone.removeprefix("timm:"), len(layout.stream_channels[0]), weights,
                           m.drop_path_rate, m.grad_checkpointing)
    spec = mit_spec(m.backbone, **m.mit.model_dump())
    if len(layout.stream_channels) == 2:
        plan = FusionPlan.from_config(m.fusion)
        encoder: nn.Module = DualStreamEncoder(spec, (len(layout.stream_channels[0]), len(layout.stream_channels[1])),
                                               plan, m.fusion, m.drop_path_rate, m.grad_checkpointing)
    else:
        encoder = SingleStreamEncoder(spec, len(layout.stream_channels[0]), m.drop_path_rate, m.grad_checkpointing)
    if weights:
        from crossattentiondet.models.weights import load_pretrained_encoder

        load_pretrained_encoder(encoder, weights)
    return encoder


def build_detector(config: ExperimentConfig, num_classes: int | None = None,
                   load_pretrained: bool = True) -> nn.Module:
    """Build the detector described by ``config``: ``model.detector.type`` faster_rcnn
    (:class:`MultiModalFasterRCNN`) or detr (:class:`~crossattentiondet.models.detr.MultiModalDETR`).

    ``num_classes`` counts foreground classes; it defaults to ``model.num_classes``, else 1.
    ``model.pretrained`` weights are loaded into the encoder (every stream) unless ``load_pretrained`` is
    False (e.g. when a checkpoint will overwrite them anyway).
    """
    classes = num_classes or config.model.num_classes or 1
    layout = InputLayout.from_config(config)
    det = config.model.detector
    if det.type == "detr":
        from crossattentiondet.models.detr import build_detr

        return build_detr(config, classes, build_encoder(config, layout, load_pretrained), layout)
    backbone = MultiModalBackbone(build_encoder(config, layout, load_pretrained), layout.stream_channels,
                                  det.fpn_channels)
    anchors = AnchorGenerator(tuple(tuple(s) for s in det.anchor_sizes),
                              (tuple(det.aspect_ratios),) * len(det.anchor_sizes))
    # torchvision's MultiScaleRoIAlign; on the CPU computed as one sparse product (same values, ~4x faster)
    roi_pool = SparseMultiScaleRoIAlign(["0", "1", "2", "3", "pool"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(det.fpn_channels * 7 * 7, det.box_head_dim)
    rpn, roi = det.rpn, det.roi
    model = MultiModalFasterRCNN(
        backbone,
        num_classes=None,
        min_size=det.min_size,
        max_size=det.max_size,
        image_mean=list(layout.mean),
        image_std=list(layout.std),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn.post_nms_top_n_test,
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=rpn.bg_iou_thresh,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        rpn_score_thresh=rpn.score_thresh,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(det.box_head_dim, classes + 1),
        box_score_thresh=det.score_thresh,
        box_nms_thresh=roi.nms_thresh,
        box_detections_per_img=det.detections_per_img,
        box_fg_iou_thresh=roi.fg_iou_thresh,
        box_bg_iou_thresh=roi.bg_iou_thresh,
        box_batch_size_per_image=roi.batch_size_per_image,
        box_positive_fraction=roi.positive_fraction,
    )
    model.transform = MultiModalTransform(layout, det.resize, det.min_size, det.max_size, det.size_divisible)
    model.layout = layout
    model.num_classes = classes
    model.set_zero_modalities(config.model.zero_modalities)
    return model
