"""Multi-scale deformable attention (Zhu et al. 2021, "Deformable DETR", eq. 3), written with ``grid_sample``.

Each query attends to ``num_points`` sampled locations per head and per feature level around its reference
point (or inside its reference box): the sampling offsets and the attention weights are linear functions of
the query, the weights softmax-normalised over levels x points. Values are bilinearly interpolated at the
sampled locations (zero outside the map), weighted and summed.

Coordinates are normalised to the *padded* batch tensor: (0, 0) is the top-left corner of the map, (1, 1)
the bottom-right one (``grid_sample`` with ``align_corners=False``). :func:`deformable_sample_naive` is a
loop-by-loop reference of the same sum with hand-written bilinear interpolation (tests check they agree).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def deformable_sample(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """The weighted sum of bilinearly sampled values.

    ``value`` (B, S, heads, head_dim) holds the tokens of all levels (level after level, each row-major
    H x W, ``S = sum(H * W)``); ``locations`` (B, Q, heads, levels, points, 2) are (x, y) in [0, 1] of each
    level's map; ``weights`` (B, Q, heads, levels, points). Returns (B, Q, heads * head_dim).

    The sampling runs in float32 whatever the autocast dtype: bf16 keeps 8 bits of mantissa, which would
    move a sampling point by up to a pixel on a stride-4 map, exactly where tiny objects live.
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    grids = (2.0 * locations.float() - 1.0).permute(0, 2, 1, 3, 4, 5).flatten(0, 1)  # (B*heads, Q, L, P, 2)
    w = weights.float().permute(0, 2, 1, 3, 4).reshape(batch * heads, 1, queries, levels, points)
    out = value.new_zeros((batch * heads, head_dim, queries), dtype=torch.float32)
    start = 0
    # level by level, weighted and summed at once: autograd keeps one (B*heads, d, Q, P) sample per level,
    # not a stacked copy of all of them plus their product (the stride-4 level makes these large)
    for level, (height, width) in enumerate(shapes):
        # (B, H*W, heads, d) -> (B*heads, d, H, W)
        level_value = value[:, start:start + height * width].float().permute(0, 2, 3, 1)
        level_value = level_value.reshape(batch * heads, head_dim, height, width)
        start += height * width
        sampled = F.grid_sample(level_value, grids[:, :, level], mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (B*heads, d, Q, P)
        out = out + (sampled * w[:, :, :, level]).sum(-1)
    out = out.view(batch, heads * head_dim, queries).transpose(1, 2)
    return out.to(value.dtype)


def _bilinear(image: Tensor, x: float, y: float) -> Tensor:
    """Value of ``image`` (d, H, W) at normalised (x, y), pixel centres at (i + 0.5) / size, zero outside."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for yy, wy in ((y0, 1.0 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1.0 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= xx < width and 0 <= yy < height:
                out = out + wx * wy * image[:, yy, xx]
    return out


def deformable_sample_naive(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor,
                            weights: Tensor) -> Tensor:
    """:func:`deformable_sample` with explicit loops and hand-written bilinear sampling (slow; for tests)."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for height, width in shapes:
        starts.append(starts[-1] + height * width)
    out = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    v = value.double().cpu()
    for b in range(batch):
        for h in range(heads):
            maps = [v[b, starts[lv]:starts[lv + 1], h].t().reshape(head_dim, *shapes[lv]) for lv in range(levels)]
            for q in range(queries):
                for lv in range(levels):
                    for p in range(points):
                        x, y = (float(c) for c in locations[b, q, h, lv, p])
                        out[b, q, h] += float(weights[b, q, h, lv, p]) * _bilinear(maps[lv], x, y)
    return out.reshape(batch, queries, heads * head_dim)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``levels`` feature levels, ``heads`` heads and ``points`` points per level.

    ``forward(query, reference, value, shapes, padding_mask)``: ``query`` (B, Q, D) (content + position),
    ``reference`` (B, Q, 2) points (x, y) or (B, Q, 4) boxes (cx, cy, w, h), normalised to the padded maps;
    ``value`` (B, S, D) the flattened tokens of every level; ``padding_mask`` (B, S) True on padding (those
    values are zeroed). A point reference moves the samples by ``offset / (W_l, H_l)`` (offsets in pixels of
    each level), a box reference by ``offset / points * (w, h) / 2`` (offsets relative to the box size).
    """

    def __init__(self, dim: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # start with each head looking in its own direction, points at growing distances, uniform weights
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        directions = torch.stack((angles.cos(), angles.sin()), dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        scale = torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.heads, 1, 1, 2).expand(-1, self.levels, self.points, -1) * scale
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def sampling(self, query: Tensor, reference: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Sampling locations (B, Q, heads, levels, points, 2) and softmaxed weights (B, Q, heads, levels, points)."""
        batch, queries, _ = query.shape
        offsets = self.sampling_offsets(query).view(batch, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.heads, self.levels * self.points)
        weights = weights.float().softmax(-1).view(batch, queries, self.heads, self.levels, self.points)
        offsets, reference = offsets.float(), reference.float()
        if reference.shape[-1] == 2:
            size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=query.device)
            locations = reference[:, :, None, None, None, :] + offsets / size[None, None, None, :, None, :]
        elif reference.shape[-1] == 4:
            half = reference[:, :, None, None, None, 2:] * 0.5
            locations = reference[:, :, None, None, None, :2] + offsets / self.points * half
        else:
            raise ValueError(f"reference must end in 2 (points) or 4 (boxes), got {tuple(reference.shape)}")
        return locations, weights

    def forward(self, query: Tensor, reference: Tensor, value: Tensor, shapes: list[tuple[int, int]],
                padding_mask: Tensor | None = None) -> Tensor:
        batch, tokens, _ = value.shape
        if tokens != sum(h * w for h, w in shapes):
            raise ValueError(f"value has {tokens} tokens, the level shapes {shapes} make {sum(h * w for h, w in shapes)}")
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(batch, tokens, self.heads, self.dim // self.heads)
        locations, weights = self.sampling(query, reference, shapes)
        out = deformable_sample(v, shapes, locations, weights).to(query.dtype)
        return self.output_proj(out)
