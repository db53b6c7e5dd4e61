"""The segmenter: any encoder of the project (MiT one/two streams with the fusion plan, or timm), optionally a
mixture-of-experts neck on its 4 scales (``model.seg.moe``, segmentation/moe.py), and a U-Net or MLP decoder. It owns the input normalisation (the detector's :func:`normalize_input`) and modality zeroing.

Binary (COD, 2 classes incl. background) -> one logit map; K classes -> K maps. State-dict keys:
``backbone.encoder.*`` (as the detector's, so the engine's encoder-stream groups and freezing apply) and
``neck.*`` (MoE) and ``decoder.*``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from crossattentiondet.config import ConfigError, ExperimentConfig, SegmentationConfig
from crossattentiondet.models.detector import InputLayout, StreamEncoder, build_encoder, normalize_input
from crossattentiondet.segmentation.decoders import MLPDecoder, UNetDecoder
from crossattentiondet.segmentation.losses import binary_seg_loss, semantic_seg_loss
from crossattentiondet.segmentation.moe import MoENeck, describe_stats


def _memory_format(module: nn.Module) -> torch.memory_format:
    """channels_last when the module was converted with ``.to(memory_format=torch.channels_last)``."""
    weight = next((p for p in module.parameters() if p.ndim == 4), None)
    if weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class Segmenter(nn.Module):
    """Encoder + decoder over raw multi-modal input; training mode with targets returns the loss dict."""

    def __init__(self, encoder: nn.Module, layout: InputLayout, decoder: nn.Module, num_classes: int,
                 seg_config: SegmentationConfig, neck: MoENeck | None = None) -> None:
        super().__init__()
        self.backbone = StreamEncoder(encoder, layout.stream_channels)
        self.neck = neck
        self.decoder = decoder
        self.layout = layout
        self.num_classes = num_classes
        self.binary = num_classes == 2
        self.seg_config = seg_config
        self.zero_channels: list[int] = []

    def set_zero_modalities(self, modalities: list[str] | tuple[str, ...]) -> None:
        """Replace these modalities by zeros after normalisation (missing-sensor evaluation)."""
        self.zero_channels = self.layout.channels_of(list(modalities))

    @property
    def zero_modalities(self) -> list[str]:
        zeroed = set(self.zero_channels)
        return [n for n, c in zip(self.layout.modality_names, self.layout.modality_channels) if c and set(c) <= zeroed]

    @staticmethod
    def probabilities(logits: Tensor) -> Tensor:
        """Per-pixel probabilities: sigmoid of one map (binary), softmax over K maps."""
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def forward(self, images: list[Tensor] | Tensor,
                targets: list[dict[str, Tensor]] | None = None) -> Tensor | dict[str, Tensor]:
        """``images``: raw (C, H, W) tensors of one size, or a (B, C, H, W) batch. Training with ``targets``
        (each ``{"mask": (H, W)}``): the loss dict; otherwise float32 logits (B, 1 or K, H, W) at input size."""
        x = images if isinstance(images, Tensor) else _stack(images, "images")
        fmt = _memory_format(self.decoder)
        x = normalize_input(x, self.layout, self.zero_channels).contiguous(memory_format=fmt)
        # MiT maps come channels_last-strided; the decoder gets the layout its weights have (see the detector)
        feats = [f.contiguous(memory_format=fmt) for f in self.backbone(x)]
        if self.neck is not None:
            feats = self.neck(feats)
        out = self.decoder(feats, x.shape[-2:])
        logits, deep = out if isinstance(out, tuple) else (out, None)
        if not (self.training and targets is not None):
            return logits.float()
        mask = _stack([t["mask"] for t in targets], "masks").to(logits.device)
        if mask.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"masks are {tuple(mask.shape[-2:])}, the images {tuple(logits.shape[-2:])}: "
                             "a mask must have its image's size")
        # the key set follows the config (seg_loss_keys): a deep term whenever deep supervision is on
        deep = (deep or []) if self.seg_config.deep_supervision else None
        loss = binary_seg_loss if self.binary else semantic_seg_loss
        losses = loss(logits, mask, deep, self.seg_config.loss)
        if self.neck is not None:  # the router's load-balancing and z losses (seg_loss_keys lists them)
            losses.update(self.neck.aux_losses())
        return losses

    def pop_epoch_stats(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """The MoE's per-expert load since the last call (the trainer logs it per epoch); {} without MoE."""
        return self.neck.pop_epoch_stats(reduce) if self.neck is not None else {}

    @staticmethod
    def describe_epoch_stats(stats: dict[str, float]) -> str:
        return describe_stats(stats)


def _stack(tensors: list[Tensor], what: str) -> Tensor:
    sizes = {tuple(t.shape) for t in tensors}
    if len(sizes) > 1:
        raise ValueError(f"{what} of one batch must have one size (resize them first), got {sorted(sizes)}")
    return torch.stack(tensors)


def build_segmenter(config: ExperimentConfig, num_classes: int, load_pretrained: bool = True) -> Segmenter:
    """The segmenter of ``config``; ``num_classes`` counts background (2 = binary, one logit map).

    ``model.pretrained`` (MiT ImageNet weights, or the timm backbone's weights file) is loaded unless
    ``load_pretrained`` is False (e.g. when a checkpoint will overwrite it anyway).
    """
    if num_classes < 2:
        raise ConfigError(f"segmentation needs at least 2 classes (background + object), got {num_classes}")
    seg = config.model.seg
    layout = InputLayout.from_config(config)
    encoder = build_encoder(config, layout, load_pretrained)
    out = 1 if num_classes == 2 else num_classes
    if seg.decoder == "unet":
        decoder: nn.Module = UNetDecoder(encoder.out_channels, seg.unet_channels, seg.head_channels, out,
                                         seg.deep_supervision)
    else:
        if seg.deep_supervision:
            raise ConfigError("model.seg.deep_supervision needs model.seg.decoder=unet (the mlp decoder has no "
                              "intermediate levels)")
        decoder = MLPDecoder(encoder.out_channels, seg.mlp_dim, out)
    neck = MoENeck(list(encoder.out_channels), seg.moe) if seg.moe.enabled else None
    model = Segmenter(encoder, layout, decoder, num_classes, seg, neck)
    model.set_zero_modalities(config.model.zero_modalities)
    return model
