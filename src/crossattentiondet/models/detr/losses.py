"""The DETR-head losses: sigmoid focal classification, L1 and GIoU on the matched boxes.

Every term is summed and divided by the number of ground-truth boxes of the batch (averaged over DDP ranks
when a process group is initialised, at least 1), so images without boxes simply add background terms.
Matched / auxiliary / two-stage encoder outputs use Hungarian matching; denoising queries know their
targets (positive queries reconstruct a box and its class, negative ones learn "no object").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from crossattentiondet.models.detr.matcher import HungarianMatcher


def detr_loss_keys(aux_loss: bool, denoising: bool, two_stage: bool = False) -> tuple[str, ...]:
    """The keys of the DETR head's loss dict for these settings (the same for every batch of a run).

    The two-stage proposals are trained whenever two-stage is on (they pick the decoder's queries): inside
    ``loss_aux`` with ``aux_loss``, else as ``loss_enc`` of their own.
    """
    return ("loss_class", "loss_bbox", "loss_giou") + (("loss_aux",) if aux_loss else ()) + \
        (("loss_enc",) if two_stage and not aux_loss else ()) + (("loss_dn",) if denoising else ())


@dataclass
class DenoisingMeta:
    """Where the denoising queries are: ``groups`` groups of ``2 * max_boxes`` queries (first the positives,
    then the negatives of every ground-truth box of the image, padded to the batch's ``max_boxes``)."""

    groups: int
    max_boxes: int

    @property
    def num_queries(self) -> int:
        return 2 * self.groups * self.max_boxes


@dataclass
class DetrOutputs:
    """What the head predicts in training mode; boxes are normalised (cx, cy, w, h) in each image's own size.

    ``layers``: (logits (B, Q, K), boxes (B, Q, 4)) of every decoder layer, the last one the final prediction;
    ``encoder``: the two-stage proposals' (logits, boxes); ``denoising``: the denoising queries' outputs of
    every decoder layer, laid out as ``denoising_meta`` says.
    """

    layers: list[tuple[Tensor, Tensor]]
    encoder: tuple[Tensor, Tensor] | None = None
    denoising: list[tuple[Tensor, Tensor]] | None = None
    denoising_meta: DenoisingMeta | None = None


def num_boxes_all_ranks(targets: list[dict[str, Tensor]], device: torch.device) -> float:
    """Ground-truth boxes per batch, averaged over DDP ranks (so every rank normalises the same way), >= 1."""
    count = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(float(count), 1.0)


class DetrCriterion(nn.Module):
    """Losses of :class:`DetrOutputs` against targets (``labels`` 0-based, ``boxes`` normalised cxcywh).

    Returns the weighted terms: ``loss_class`` (``class_weight`` x focal), ``loss_bbox`` (``l1_weight`` x L1),
    ``loss_giou`` (``giou_weight`` x (1 - GIoU)) of the last decoder layer; with ``aux_loss``, ``loss_aux``, the
    same three terms summed over the other decoder layers and the two-stage proposals (without ``aux_loss``
    the proposals' terms are ``loss_enc``: they are always trained, they choose the queries); with ``denoising``,
    ``loss_dn``, ``denoising_weight`` x the three terms of the denoising queries of every layer used (all with
    ``aux_loss``, else the last), divided by ``num_boxes x groups`` (each box has ``groups`` noised copies).
    Everything is computed in float32 (outside autocast).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, *, class_weight: float = 1.0,
                 l1_weight: float = 5.0, giou_weight: float = 2.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 aux_loss: bool = True, denoising: bool = False, denoising_weight: float = 1.0,
                 two_stage: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight, self.l1_weight, self.giou_weight = class_weight, l1_weight, giou_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.aux_loss, self.denoising, self.denoising_weight = aux_loss, denoising, denoising_weight
        self.two_stage = two_stage

    @property
    def loss_keys(self) -> tuple[str, ...]:
        return detr_loss_keys(self.aux_loss, self.denoising, self.two_stage)

    def _focal(self, logits: Tensor, target: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, target, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none")

    def _box_terms(self, pred: Tensor, target: Tensor, norm: float) -> tuple[Tensor, Tensor]:
        if pred.numel() == 0:
            zero = pred.sum() * 0.0
            return zero, zero
        l1 = (pred - target).abs().sum() / norm
        giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy"),
                                        reduction="sum") / norm
        return l1, giou

    def matched_terms(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]],
                      norm: float) -> tuple[Tensor, Tensor, Tensor]:
        """(focal, L1, GIoU) of one set of predictions after Hungarian matching, unweighted."""
        logits, boxes = logits.float(), boxes.float()
        indices = self.matcher(logits, boxes, targets)
        class_target = torch.zeros_like(logits)
        pred_boxes, target_boxes = [], []
        for b, (rows, cols) in enumerate(indices):
            rows, cols = rows.to(logits.device), cols.to(logits.device)
            class_target[b, rows, targets[b]["labels"][cols]] = 1.0
            pred_boxes.append(boxes[b, rows])
            target_boxes.append(targets[b]["boxes"][cols].float())
        focal = self._focal(logits, class_target).sum() / norm
        l1, giou = self._box_terms(torch.cat(pred_boxes), torch.cat(target_boxes), norm)
        return focal, l1, giou

    def denoising_terms(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]], meta: DenoisingMeta,
                        norm: float) -> tuple[Tensor, Tensor, Tensor]:
        """(focal, L1, GIoU) of the denoising queries: positives -> their box and class, negatives -> background;
        padding slots (images with fewer boxes than the batch's most) take no part."""
        logits, boxes = logits.float(), boxes.float()
        batch, queries, _ = logits.shape
        class_target = torch.zeros_like(logits)
        used = torch.zeros(batch, queries, dtype=torch.bool, device=logits.device)
        pred_boxes, target_boxes = [], []
        group = torch.arange(meta.groups, device=logits.device)[:, None] * (2 * meta.max_boxes)
        for b, target in enumerate(targets):
            n = len(target["labels"])
            if n == 0:
                continue
            j = torch.arange(n, device=logits.device)[None, :]
            positive, negative = (group + j).flatten(), (group + meta.max_boxes + j).flatten()
            used[b, positive] = True
            used[b, negative] = True
            class_target[b, positive, target["labels"].repeat(meta.groups)] = 1.0
            pred_boxes.append(boxes[b, positive])
            target_boxes.append(target["boxes"].float().repeat(meta.groups, 1))
        focal = (self._focal(logits, class_target) * used[..., None]).sum() / norm
        if not pred_boxes:
            zero = boxes.sum() * 0.0
            return focal, zero, zero
        l1, giou = self._box_terms(torch.cat(pred_boxes), torch.cat(target_boxes), norm)
        return focal, l1, giou

    def _weighted(self, terms: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return self.class_weight * terms[0] + self.l1_weight * terms[1] + self.giou_weight * terms[2]

    def forward(self, outputs: DetrOutputs, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        device = outputs.layers[-1][0].device
        with torch.autocast(device_type=device.type, enabled=False):
            norm = num_boxes_all_ranks(targets, device)
            focal, l1, giou = self.matched_terms(*outputs.layers[-1], targets, norm)
            losses = {"loss_class": self.class_weight * focal, "loss_bbox": self.l1_weight * l1,
                      "loss_giou": self.giou_weight * giou}
            if self.aux_loss:
                aux = [self._weighted(self.matched_terms(*layer, targets, norm)) for layer in outputs.layers[:-1]]
                if outputs.encoder is not None:
                    aux.append(self._weighted(self.matched_terms(*outputs.encoder, targets, norm)))
                losses["loss_aux"] = torch.stack(aux).sum() if aux else focal * 0.0
            elif outputs.encoder is not None:
                losses["loss_enc"] = self._weighted(self.matched_terms(*outputs.encoder, targets, norm))
            if self.denoising:
                if outputs.denoising and outputs.denoising_meta is not None:
                    meta = outputs.denoising_meta
                    layers = outputs.denoising if self.aux_loss else outputs.denoising[-1:]
                    dn = [self._weighted(self.denoising_terms(*layer, targets, meta, norm * meta.groups))
                          for layer in layers]
                    losses["loss_dn"] = self.denoising_weight * torch.stack(dn).sum()
                else:  # no boxes in the batch: nothing to denoise
                    losses["loss_dn"] = focal * 0.0
        return losses
