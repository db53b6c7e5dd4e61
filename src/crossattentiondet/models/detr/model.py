"""The DETR-family detector: multi-modal encoder -> per-level projection -> deformable transformer -> boxes.

:class:`MultiModalDETR` behaves like :class:`~crossattentiondet.models.detector.MultiModalFasterRCNN`
towards the rest of the project: ``model(images, targets)`` with raw (C, H, W) images and targets (``boxes``
xyxy in pixels, ``labels`` 1-based) returns a dict of losses in training mode and, in eval mode, per image
``boxes`` (xyxy, pixels of the input image), ``scores``, ``labels`` (1-based). The same
:class:`~crossattentiondet.models.detector.MultiModalTransform` normalises per modality, zeroes modalities,
applies the resize policy and pads the batch (to a multiple of ``size_divisible``); a padding mask keeps the
attention on each image's own pixels, and boxes are normalised by each image's own size.

State-dict top level: ``backbone.encoder.*`` (the encoder, as in the Faster R-CNN), ``input_proj.*``,
``level_embed`` (with encoder layers), ``encoder.*`` (deformable encoder), ``decoder.*`` (decoder layers, query embeddings and the
positional MLP), ``class_heads.*``, ``box_heads.*``, ``proposals.*`` (two-stage) and ``denoising.*``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from crossattentiondet.config import ConfigError, ExperimentConfig
from crossattentiondet.models.detector import InputLayout, ModalityZeroing, MultiModalTransform, StreamEncoder
from crossattentiondet.models.detr.denoising import build_denoising_queries
from crossattentiondet.models.detr.losses import DetrCriterion, DetrOutputs
from crossattentiondet.models.detr.matcher import HungarianMatcher
from crossattentiondet.models.detr.transformer import (
    MLP,
    DeformableDecoderLayer,
    DeformableEncoder,
    inverse_sigmoid,
    sine_embedding,
    sine_position_map,
)

_PRIOR = 0.01  # initial foreground probability of every class (focal-loss prior, Lin et al. 2017)


class DecoderQueries(nn.Module):
    """The decoder's layers and query parameters: learned content embeddings (both modes), learned reference
    boxes (one-stage; two-stage takes them from the encoder's proposals) and the MLP that turns a reference
    box's sine embedding into the query's positional embedding."""

    def __init__(self, layers: int, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float,
                 num_queries: int, two_stage: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableDecoderLayer(dim, heads, levels, points, ffn_dim, dropout)
                                    for _ in range(layers))
        self.content = nn.Embedding(num_queries, dim)
        self.position = MLP(2 * dim, dim, dim, 2)
        self.boxes: nn.Embedding | None = None
        if not two_stage:
            # learned boxes in inverse-sigmoid space: centres spread over the image, small sizes
            self.boxes = nn.Embedding(num_queries, 4)
            with torch.no_grad():
                self.boxes.weight[:, :2].uniform_(0.02, 0.98)
                self.boxes.weight[:, 2:].fill_(0.05)
                self.boxes.weight.copy_(inverse_sigmoid(self.boxes.weight))


class TwoStageProposals(nn.Module):
    """Two-stage query selection: every encoder token proposes a box relative to its anchor (its position,
    a size of 0.05 x 2^level of the image) and class scores; the best ``num_queries`` seed the decoder."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.class_head = nn.Linear(dim, num_classes)
        self.box_head = MLP(dim, dim, 4, 3)


def _group_norm(dim: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (Deformable DETR's 32 for 256 channels) of at least 8 channels each, so
    that a 1x1 map (the extra level of a small image) still normalises over more than one value."""
    groups = math.gcd(32, dim)
    while groups > 1 and dim // groups < 8:
        groups //= 2
    return nn.GroupNorm(groups, dim)


class MultiModalDETR(ModalityZeroing, nn.Module):
    """Deformable-DETR-style detector (two-stage, box refinement, optional DINO denoising) on any encoder.

    Built by :func:`build_detr` from ``model.detector`` (``detr.*`` for the head; ``resize``, ``min_size``,
    ``max_size``, ``size_divisible``, ``score_thresh``, ``detections_per_img`` as for the Faster R-CNN).
    """

    layout: InputLayout

    def __init__(self, backbone: StreamEncoder, layout: InputLayout, num_classes: int,
                 config: ExperimentConfig) -> None:
        super().__init__()
        det = config.model.detector
        cfg = det.detr
        if cfg.hidden_dim % 4:
            raise ConfigError(f"model.detector.detr.hidden_dim={cfg.hidden_dim}: must be a multiple of 4 (the sine "
                              "positional encoding splits it over x and y, sine and cosine)")
        self.layout = layout
        self.num_classes = num_classes
        self.transform = MultiModalTransform(layout, det.resize, det.min_size, det.max_size, det.size_divisible)
        self.backbone = backbone
        self.levels = sorted(cfg.levels)
        # stride of every level the head reads: encoder stage s has stride 2^(s+1); each extra level halves the last
        last = 2 ** (self.levels[-1] + 1)
        self.level_strides = [2 ** (s + 1) for s in self.levels] + [last * 2 ** (i + 1) for i in range(cfg.extra_levels)]
        self.num_queries = cfg.num_queries
        self.two_stage, self.box_refine, self.aux_loss = cfg.two_stage, cfg.box_refine, cfg.aux_loss
        self.denoising_config = cfg.denoising
        # at most one detection per (query, class) pair: the real cap, as the AI-TOD note reports it
        self.score_thresh = det.score_thresh
        self.detections_per_img = min(det.detections_per_img, cfg.num_queries * num_classes)
        dim = self.hidden_dim = cfg.hidden_dim
        channels = backbone.out_channels
        proj: list[nn.Module] = [nn.Sequential(nn.Conv2d(channels[s - 1], dim, 1), _group_norm(dim))
                                 for s in self.levels]
        for i in range(cfg.extra_levels):
            in_ch = channels[self.levels[-1] - 1] if i == 0 else dim
            proj.append(nn.Sequential(nn.Conv2d(in_ch, dim, 3, stride=2, padding=1), _group_norm(dim)))
        self.input_proj = nn.ModuleList(proj)
        levels = len(proj)
        # level embeddings tell the encoder's tokens apart by level; without encoder layers nothing reads them
        self.level_embed = nn.Parameter(torch.empty(levels, dim)) if cfg.encoder_layers else None
        self.encoder = DeformableEncoder(cfg.encoder_layers, dim, cfg.num_heads, levels, cfg.num_points, cfg.ffn_dim,
                                         cfg.dropout)
        self.decoder = DecoderQueries(cfg.decoder_layers, dim, cfg.num_heads, levels, cfg.num_points, cfg.ffn_dim,
                                      cfg.dropout, cfg.num_queries, cfg.two_stage)
        heads = cfg.decoder_layers if cfg.box_refine else 1  # refinement: one head pair per layer, else shared
        self.class_heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(heads))
        self.box_heads = nn.ModuleList(MLP(dim, dim, 4, 3) for _ in range(heads))
        self.proposals = TwoStageProposals(dim, num_classes) if cfg.two_stage else None
        self.denoising = nn.Embedding(num_classes, dim) if cfg.denoising.enabled else None
        matcher = HungarianMatcher(cfg.matcher.class_cost, cfg.matcher.l1_cost, cfg.matcher.giou_cost,
                                   cfg.loss.focal_alpha, cfg.loss.focal_gamma)
        self.criterion = DetrCriterion(num_classes, matcher, class_weight=cfg.loss.class_weight,
                                       l1_weight=cfg.loss.l1_weight, giou_weight=cfg.loss.giou_weight,
                                       focal_alpha=cfg.loss.focal_alpha, focal_gamma=cfg.loss.focal_gamma,
                                       aux_loss=cfg.aux_loss, denoising=cfg.denoising.enabled,
                                       denoising_weight=cfg.denoising.loss_weight, two_stage=cfg.two_stage)
        self._reset_head_parameters()

    def _reset_head_parameters(self) -> None:
        if self.level_embed is not None:
            nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        prior_bias = -math.log((1.0 - _PRIOR) / _PRIOR)
        class_heads = list(self.class_heads) + ([self.proposals.class_head] if self.proposals is not None else [])
        for head in class_heads:
            nn.init.constant_(head.bias, prior_bias)
        box_heads = list(self.box_heads) + ([self.proposals.box_head] if self.proposals is not None else [])
        for head in box_heads:  # the first prediction is the reference box itself
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    # ------------------------------------------------------------------------------------------ parts
    def _tokens(self, images: Tensor, sizes: list[tuple[int, int]]
                ) -> tuple[Tensor, Tensor, Tensor, list[tuple[int, int]], Tensor]:
        """Flattened tokens, positions and padding mask (B, S, ...) of every level, their shapes and the valid
        ratios (B, 2) = (image width / padded width, image height / padded height)."""
        batch, _, height, width = images.shape
        mask = torch.ones(batch, height, width, dtype=torch.bool, device=images.device)
        for b, (h, w) in enumerate(sizes):
            mask[b, :h, :w] = False
        feats = self.backbone(images)
        maps = [proj(feats[s - 1]) for proj, s in zip(self.input_proj, self.levels)]
        last = feats[self.levels[-1] - 1]
        for proj in self.input_proj[len(self.levels):]:
            last = proj(last)
            maps.append(last)
        tokens, pos, padding, shapes = [], [], [], []
        for level, feature in enumerate(maps):
            h, w = feature.shape[-2:]
            level_mask = F.interpolate(mask[None].float(), size=(h, w))[0].bool()
            tokens.append(feature.flatten(2).transpose(1, 2))
            if self.level_embed is not None:  # positions are the encoder's business (the decoder uses boxes)
                level_pos = sine_position_map(level_mask, self.hidden_dim).to(feature.dtype)
                pos.append(level_pos.flatten(2).transpose(1, 2) + self.level_embed[level].to(feature.dtype))
            padding.append(level_mask.flatten(1))
            shapes.append((int(h), int(w)))
        ratios = torch.tensor([[w / width, h / height] for h, w in sizes], dtype=torch.float32, device=images.device)
        all_tokens = torch.cat(tokens, 1)
        return all_tokens, torch.cat(pos, 1) if pos else all_tokens, torch.cat(padding, 1), shapes, ratios

    def _proposals(self, memory: Tensor, padding: Tensor, shapes: list[tuple[int, int]], ratios: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """Per token: class logits (B, S, K), boxes (B, S, 4) normalised to the image, and validity (B, S)."""
        anchors = []
        for level, (h, w) in enumerate(shapes):
            y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=memory.device) + 0.5,
                                  torch.arange(w, dtype=torch.float32, device=memory.device) + 0.5, indexing="ij")
            centre = torch.stack((x.flatten() / w, y.flatten() / h), dim=-1)[None] / ratios[:, None, :]
            # Deformable DETR's proposal size, 0.05 x 2^l of the image at level l (l = 0 at stride 8), tied to the
            # level's stride rather than its position, so a stride-4 level (stage 1) proposes half that size
            size = torch.full_like(centre, 0.05 * self.level_strides[level] / 8)
            anchors.append(torch.cat((centre, size), dim=-1))
        anchor = torch.cat(anchors, 1)  # (B, S, 4) in image-normalised coordinates
        valid = ~padding & ((anchor > 0.01) & (anchor < 0.99)).all(-1)
        anchor = inverse_sigmoid(anchor).masked_fill(~valid[..., None], 0.0)
        features = self.proposals.proj(memory.masked_fill(~valid[..., None], 0.0))
        logits = self.proposals.class_head(features)
        boxes = (self.proposals.box_head(features).float() + anchor).sigmoid()
        return logits, boxes, valid

    def _decode(self, content: Tensor, reference: Tensor, memory: Tensor, shapes: list[tuple[int, int]],
                padding: Tensor, ratios: Tensor, attn_mask: Tensor | None) -> list[tuple[Tensor, Tensor]]:
        """(logits, boxes) of every decoder layer; boxes normalised (cx, cy, w, h) in the image."""
        outputs = []
        scale = ratios.repeat(1, 2)[:, None, :]  # image-normalised -> padded-normalised boxes
        for i, layer in enumerate(self.decoder.layers):
            query_pos = self.decoder.position(sine_embedding(reference, self.hidden_dim // 2).to(content.dtype))
            content = layer(content, query_pos, reference * scale, memory, shapes, padding, attn_mask)
            head = i if self.box_refine else 0
            logits = self.class_heads[head](content)
            boxes = (self.box_heads[head](content).float() + inverse_sigmoid(reference)).sigmoid()
            outputs.append((logits, boxes))
            if self.box_refine:
                reference = boxes.detach()  # each layer refines the previous boxes; gradients stay per layer
        return outputs

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (eval) of a list of raw (C, H, W) images; see the module docstring."""
        if self.training and targets is None:
            raise ValueError("MultiModalDETR in training mode needs targets (boxes, labels)")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
        tokens, pos, padding, shapes, ratios = self._tokens(batch.tensors, sizes)
        memory = self.encoder(tokens, pos, shapes, padding, ratios)
        bsz = memory.shape[0]

        encoder_out: tuple[Tensor, Tensor] | None = None
        if self.proposals is not None:
            logits, boxes, valid = self._proposals(memory, padding, shapes, ratios)
            k = min(self.num_queries, logits.shape[1])
            score = logits.detach().float().max(-1).values.masked_fill(~valid, -math.inf)
            top = score.topk(k, dim=1).indices
            top_logits = logits.gather(1, top[..., None].expand(-1, -1, logits.shape[-1]))
            top_boxes = boxes.gather(1, top[..., None].expand(-1, -1, 4))
            encoder_out = (top_logits, top_boxes)
            reference = top_boxes.detach()
            content = self.decoder.content.weight[:k][None].repeat(bsz, 1, 1)
        else:
            # copies, not expanded views: a view of a parameter made under inference_mode trips module hooks
            # (torch.utils.flop_counter's) that expect a grad_fn on every tensor requiring grad
            reference = self.decoder.boxes.weight.sigmoid()[None].repeat(bsz, 1, 1)
            content = self.decoder.content.weight[None].repeat(bsz, 1, 1)

        norm_targets = _normalised_targets(targets, sizes, self.num_classes) if self.training else None
        dn = None
        if self.training and self.denoising is not None:
            d = self.denoising_config
            dn = build_denoising_queries(norm_targets, self.denoising, d.groups, d.label_noise, d.box_noise,
                                         content.shape[1])
        attn_mask = None
        if dn is not None:
            content = torch.cat((dn.content.to(content.dtype), content), 1)
            reference = torch.cat((dn.boxes, reference), 1)
            attn_mask = dn.attn_mask
        layers = self._decode(content, reference, memory, shapes, padding, ratios, attn_mask)

        if not self.training:
            return self.transform.postprocess(self._detections(*layers[-1], sizes), sizes, original_sizes)
        split = dn.meta.num_queries if dn is not None else 0
        outputs = DetrOutputs(layers=[(lg[:, split:], bx[:, split:]) for lg, bx in layers], encoder=encoder_out,
                              denoising=[(lg[:, :split], bx[:, :split]) for lg, bx in layers] if dn else None,
                              denoising_meta=dn.meta if dn is not None else None)
        losses = self.criterion(outputs, norm_targets)
        losses["loss_class"] = losses["loss_class"] + self._unused_outputs_zero(outputs, dn is None)
        return losses

    def _unused_outputs_zero(self, outputs: DetrOutputs, no_denoising: bool) -> Tensor:
        """0 x the outputs no loss reads (intermediate layers without aux_loss, an unused label
        embedding), so every parameter takes part in every step as DistributedDataParallel requires."""
        unused: list[Tensor] = []
        if not self.aux_loss:
            unused += [t for layer in outputs.layers[:-1] for t in layer]
        if self.denoising is not None and no_denoising:
            unused.append(self.denoising.weight)
        zero = outputs.layers[-1][0].new_zeros((), dtype=torch.float32)
        for t in unused:
            zero = zero + t.float().sum() * 0.0
        return zero

    def _detections(self, logits: Tensor, boxes: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Top ``detections_per_img`` (query, class) pairs by sigmoid score, at least ``score_thresh``; boxes in
        pixels of the (resized) model input."""
        prob = logits.float().sigmoid()
        batch, queries, classes = prob.shape
        k = min(self.detections_per_img, queries * classes)
        scores, index = prob.flatten(1).topk(k, dim=1)
        query = index // classes
        labels = index % classes + 1
        picked = box_convert(boxes.float().gather(1, query[..., None].expand(-1, -1, 4)), "cxcywh", "xyxy")
        results = []
        for b, (h, w) in enumerate(sizes):
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=picked.device)
            xyxy = (picked[b] * scale).clamp(min=0.0).minimum(scale)
            keep = scores[b] >= self.score_thresh
            results.append({"boxes": xyxy[keep], "scores": scores[b][keep], "labels": labels[b][keep]})
        return results


def _normalised_targets(targets: list[dict[str, Tensor]], sizes: list[tuple[int, int]],
                        num_classes: int) -> list[dict[str, Tensor]]:
    """Targets for the criterion: labels 0-based, boxes (cx, cy, w, h) divided by each image's own size."""
    out = []
    for target, (h, w) in zip(targets, sizes):
        labels = target["labels"].to(torch.int64)
        if len(labels) and (int(labels.min()) < 1 or int(labels.max()) > num_classes):
            raise ValueError(f"target labels must be 1..{num_classes} (1-based), got {sorted(set(labels.tolist()))}")
        boxes = target["boxes"].float().reshape(-1, 4)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
        out.append({"labels": labels - 1, "boxes": box_convert(boxes, "xyxy", "cxcywh") / scale})
    return out


def build_detr(config: ExperimentConfig, num_classes: int, encoder: nn.Module, layout: InputLayout) -> MultiModalDETR:
    """The DETR head of ``config.model.detector.detr`` on ``encoder`` (from ``build_encoder``)."""
    model = MultiModalDETR(StreamEncoder(encoder, layout.stream_channels), layout, num_classes, config)
    model.set_zero_modalities(config.model.zero_modalities)
    return model
