"""The deformable transformer of the DETR head: positional encodings, encoder and decoder layers.

Post-norm layers as in Deformable DETR. The encoder refines every token of every level with deformable
self-attention around the token's own position; the decoder runs self-attention among the queries (with an
optional mask for denoising groups), deformable cross-attention into the encoder's tokens around each
query's reference box, and a feed-forward block. The queries' positional embedding is computed from their
current reference boxes (a sine embedding of cx, cy, w, h through an MLP), so refined boxes move it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from crossattentiondet.models.detr.deformable_attention import MultiScaleDeformableAttention


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), with x clamped to [eps, 1 - eps] so that boxes on the border stay finite."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


def sine_embedding(coords: Tensor, features: int, temperature: float = 10000.0) -> Tensor:
    """Sine/cosine embedding of each coordinate in [0, 1] (..., n) -> (..., n * features), DETR's frequencies."""
    if features % 2:
        raise ValueError(f"sine embedding needs an even number of features, got {features}")
    dim_t = torch.arange(features // 2, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2.0 * dim_t / features)
    angles = coords.float()[..., None] * (2.0 * math.pi) / dim_t  # (..., n, features / 2)
    emb = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleaved sin, cos
    return emb.flatten(-2)


def sine_position_map(mask: Tensor, dim: int) -> Tensor:
    """(B, dim, H, W) positional encoding of a feature map whose padding is True in ``mask`` (B, H, W).

    Positions are normalised to each image's valid extent (cumulative count of valid pixels), so the same
    relative place in two images of different sizes gets the same code; ``dim / 2`` features for y, then x.
    """
    valid = (~mask).float()
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    # centre of each valid cell, divided by the valid height / width of that column / row
    y = (y - 0.5) / y[:, -1:, :].clamp(min=1.0)
    x = (x - 0.5) / x[:, :, -1:].clamp(min=1.0)
    emb = sine_embedding(torch.stack((y, x), dim=-1), dim // 2)  # (B, H, W, dim)
    return emb.permute(0, 3, 1, 2)


class MLP(nn.Module):
    """``layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class FeedForward(nn.Module):
    """Linear -> ReLU -> dropout -> linear -> dropout, residual, LayerNorm."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.linear2(self.dropout(torch.relu(self.linear1(x))))))


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention of every token around its own position, then the feed-forward block."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiScaleDeformableAttention(dim, heads, levels, points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, tokens: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]],
                padding_mask: Tensor) -> Tensor:
        attended = self.attention(tokens + pos, reference, tokens, shapes, padding_mask)
        return self.ffn(self.norm(tokens + self.dropout(attended)))


class DeformableDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into the encoder tokens, feed-forward."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attention = MultiScaleDeformableAttention(dim, heads, levels, points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, queries: Tensor, query_pos: Tensor, reference: Tensor, memory: Tensor,
                shapes: list[tuple[int, int]], padding_mask: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        q = k = queries + query_pos
        attended, _ = self.self_attention(q, k, queries, attn_mask=attn_mask, need_weights=False)
        queries = self.norm1(queries + self.dropout1(attended))
        attended = self.cross_attention(queries + query_pos, reference, memory, shapes, padding_mask)
        queries = self.norm2(queries + self.dropout2(attended))
        return self.ffn(queries)


def encoder_reference_points(shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """(B, S, 2) centre of every token of every level, normalised to the padded maps, clipped to each image's
    valid extent (``valid_ratios`` (B, 2): valid width / padded width, valid height / padded height) so that
    padding tokens look at the image, not at more padding."""
    points = []
    device = valid_ratios.device
    for height, width in shapes:
        y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device) + 0.5,
                              torch.arange(width, dtype=torch.float32, device=device) + 0.5, indexing="ij")
        points.append(torch.stack((x.flatten() / width, y.flatten() / height), dim=-1))
    ref = torch.cat(points)[None]  # (1, S, 2)
    return torch.minimum(ref, valid_ratios[:, None, :])


class DeformableEncoder(nn.Module):
    """``layers`` deformable encoder layers."""

    def __init__(self, layers: int, dim: int, heads: int, levels: int, points: int, ffn_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(dim, heads, levels, points, ffn_dim, dropout)
                                    for _ in range(layers))

    def forward(self, tokens: Tensor, pos: Tensor, shapes: list[tuple[int, int]], padding_mask: Tensor,
                valid_ratios: Tensor) -> Tensor:
        if not self.layers:
            return tokens
        reference = encoder_reference_points(shapes, valid_ratios)
        for layer in self.layers:
            tokens = layer(tokens, pos, reference, shapes, padding_mask)
        return tokens
