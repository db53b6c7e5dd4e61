"""DINO's contrastive denoising queries (Zhang et al. 2023, "DINO", section 3.3), built per batch in training.

Every ground-truth box gets ``groups`` noised copies, each as a *positive* query (every box coordinate moved
by less than ``box_noise`` x half the box's width / height: it should reconstruct the box) and a *negative*
one (moved by between 1 and 2 times that: it should predict "no object"). With probability ``label_noise``
a query's class is replaced by a random one. The queries' content is an embedding of their (noised) class,
their reference the noised box. The attention mask keeps the matching queries from seeing any denoising
query (they would otherwise read the answer) and every denoising group from seeing the other groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from crossattentiondet.models.detr.losses import DenoisingMeta

_PAD_BOX = (0.5, 0.5, 0.1, 0.1)  # reference of the padding slots (no loss, finite values)


@dataclass
class DenoisingQueries:
    """Content (B, N, D) and reference boxes (B, N, 4) of the denoising queries, the (N + Q, N + Q) attention
    mask of the decoder's self-attention (True: blocked) and where the queries are."""

    content: Tensor
    boxes: Tensor
    attn_mask: Tensor
    meta: DenoisingMeta


def noised_boxes(boxes: Tensor, box_noise: float, negative: bool) -> Tensor:
    """Normalised (cx, cy, w, h) boxes with every corner moved by ``u * box_noise * (w/2, h/2)``, u uniform in
    (-1, 1) for positives and in +-[1, 2) for negatives, clipped to the image."""
    corners = box_convert(boxes, "cxcywh", "xyxy")
    half = boxes[:, 2:].repeat(1, 2) * 0.5
    magnitude = torch.rand_like(corners) + (1.0 if negative else 0.0)
    sign = torch.randint_like(corners, 0, 2) * 2.0 - 1.0
    corners = (corners + sign * magnitude * half * box_noise).clamp(0.0, 1.0)
    out = box_convert(corners, "xyxy", "cxcywh")
    return torch.cat((out[:, :2], out[:, 2:].clamp(min=1e-4)), dim=1)


def attention_mask(groups: int, group_size: int, matching: int, device: torch.device) -> Tensor:
    """(N + Q, N + Q) boolean self-attention mask, True where a query may not look (N = groups x group_size)."""
    dn = groups * group_size
    mask = torch.zeros(dn + matching, dn + matching, dtype=torch.bool, device=device)
    mask[dn:, :dn] = True  # matching queries never see the denoising ones
    group = torch.arange(dn, device=device) // group_size
    mask[:dn, :dn] = group[:, None] != group[None, :]  # nor do the groups see each other
    return mask


def build_denoising_queries(targets: list[dict[str, Tensor]], label_embed: nn.Embedding, groups: int,
                            label_noise: float, box_noise: float, matching: int) -> DenoisingQueries | None:
    """The denoising queries of a batch (``targets``: ``labels`` 0-based, ``boxes`` normalised cxcywh), placed
    before ``matching`` matching queries; None when the batch has no boxes."""
    max_boxes = max((len(t["labels"]) for t in targets), default=0)
    if max_boxes == 0:
        return None
    device = label_embed.weight.device
    num_classes = label_embed.num_embeddings
    batch, group_size = len(targets), 2 * max_boxes
    labels = torch.zeros(batch, groups, group_size, dtype=torch.int64, device=device)
    boxes = torch.tensor(_PAD_BOX, device=device).repeat(batch, groups, group_size, 1)
    valid = torch.zeros(batch, groups, group_size, dtype=torch.bool, device=device)
    for b, target in enumerate(targets):
        n = len(target["labels"])
        if n == 0:
            continue
        gt_labels = target["labels"].to(device).repeat(groups, 2)  # (groups, 2n): positives, negatives
        flip = torch.rand(gt_labels.shape, device=device) < label_noise
        gt_labels = torch.where(flip, torch.randint_like(gt_labels, 0, num_classes), gt_labels)
        gt_boxes = target["boxes"].to(device).float().repeat(groups, 1)  # (groups * n, 4)
        positive = noised_boxes(gt_boxes, box_noise, negative=False).view(groups, n, 4)
        negative = noised_boxes(gt_boxes, box_noise, negative=True).view(groups, n, 4)
        labels[b, :, :n] = gt_labels[:, :n]
        labels[b, :, max_boxes:max_boxes + n] = gt_labels[:, n:]
        boxes[b, :, :n] = positive
        boxes[b, :, max_boxes:max_boxes + n] = negative
        valid[b, :, :n] = True
        valid[b, :, max_boxes:max_boxes + n] = True
    content = label_embed(labels.flatten(1)) * valid.flatten(1)[..., None]  # padding slots: no content
    return DenoisingQueries(content, boxes.flatten(1, 2), attention_mask(groups, group_size, matching, device),
                            DenoisingMeta(groups, max_boxes))
