"""Hungarian matching of queries to ground-truth boxes (scipy's ``linear_sum_assignment``).

The cost of giving query ``i`` the ground-truth box ``j`` is ``class_cost * focal(i, j) + l1_cost * L1(i, j)
+ giou_cost * -GIoU(i, j)`` (Deformable DETR's costs): ``focal`` is the sigmoid focal loss of predicting class
``c_j`` minus that of not predicting it, ``L1`` the distance of the normalised (cx, cy, w, h) boxes.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

# a cost no real pair reaches: replaces NaN/inf (a diverging model must not crash the assignment)
_BIG_COST = 1e8


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """(Q, N) focal cost of predicting class ``labels[j]`` (0-based) with query ``i``'s ``logits`` (Q, K)."""
    prob = logits.float().sigmoid()
    eps = 1e-8
    positive = alpha * (1.0 - prob) ** gamma * -(prob + eps).log()
    negative = (1.0 - alpha) * prob ** gamma * -(1.0 - prob + eps).log()
    return positive[:, labels] - negative[:, labels]


class HungarianMatcher:
    """One-to-one assignment of predictions to targets minimising the class + L1 + GIoU cost.

    ``class_cost``, ``l1_cost``, ``giou_cost``: the weights (``model.detector.detr.matcher``); ``alpha``,
    ``gamma``: the focal cost's (the loss's ``focal_alpha`` / ``focal_gamma``).
    """

    def __init__(self, class_cost: float = 2.0, l1_cost: float = 5.0, giou_cost: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0) -> None:
        self.class_cost, self.l1_cost, self.giou_cost = class_cost, l1_cost, giou_cost
        self.alpha, self.gamma = alpha, gamma

    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor) -> Tensor:
        """(Q, N) cost of one image: ``logits`` (Q, K), ``boxes`` (Q, 4) and ``target_boxes`` (N, 4) normalised
        (cx, cy, w, h), ``labels`` (N,) 0-based."""
        boxes, target_boxes = boxes.float(), target_boxes.float()
        cost = self.class_cost * focal_class_cost(logits, labels, self.alpha, self.gamma)
        cost = cost + self.l1_cost * torch.cdist(boxes, target_boxes, p=1)
        giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
        return cost - self.giou_cost * giou

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Per image (query indices, target indices), int64 on the CPU, sorted by query.

        ``logits`` (B, Q, K), ``boxes`` (B, Q, 4) normalised (cx, cy, w, h); ``targets`` dicts with ``labels``
        (N,) 0-based and ``boxes`` (N, 4) normalised (cx, cy, w, h). With more targets than queries only Q
        targets are matched; an image without targets gets empty indices.
        """
        out = []
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            cost = self.cost_matrix(logits[b], boxes[b], target["labels"], target["boxes"]).cpu().numpy()
            cost = np.nan_to_num(cost, nan=_BIG_COST, posinf=_BIG_COST, neginf=-_BIG_COST)
            rows, cols = linear_sum_assignment(cost)
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
