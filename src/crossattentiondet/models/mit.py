"""Mix Transformer (MiT, the SegFormer encoder), one stream.

Parameter names follow the SegFormer release (``patch_embed1.proj``, ``block1.0.attn.q``, ``norm1``...), so
ImageNet weights in that layout load without renaming. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU, fused on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from crossattentiondet.config import MIT_WIDTHS


@dataclass(frozen=True)
class MiTSpec:
    """Widths and depths of a MiT variant (4 stages)."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratios: tuple[float, ...] = (4, 4, 4, 4)
    qkv_bias: bool = True
    block_eps: float = 1e-6  # LayerNorm eps of the blocks and stage norms (patch-embed/sr norms use 1e-5)


_DEPTHS = {"mit_b0": (2, 2, 2, 2), "mit_b1": (2, 2, 2, 2), "mit_b2": (3, 4, 6, 3), "mit_b3": (3, 4, 18, 3),
           "mit_b4": (3, 8, 27, 3), "mit_b5": (3, 6, 40, 3)}
# widths and heads live in the config module, which checks overrides against them without importing torch
MIT_VARIANTS: dict[str, MiTSpec] = {name: MiTSpec(MIT_WIDTHS[name][0], depths, MIT_WIDTHS[name][1])
                                    for name, depths in _DEPTHS.items()}


def mit_spec(backbone: str, **overrides: object) -> MiTSpec:
    """The spec of a named variant, with optional field overrides (None values are ignored)."""
    if backbone not in MIT_VARIANTS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(MIT_VARIANTS)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    spec = replace(MIT_VARIANTS[backbone], **changes)
    for i, (dim, heads) in enumerate(zip(spec.embed_dims, spec.num_heads)):
        if dim % heads:
            raise ValueError(f"stage {i + 1}: embed dim {dim} is not divisible by {heads} heads")
    return spec


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map, channels_last-strided: a view, no copy.

    Spelled as view + permute (not transpose + reshape) so the batch stride stays H*W*C even for batch 1;
    otherwise convolutions cannot tell the layout is channels_last and copy the map to NCHW and back.
    """
    b, _, c = x.shape
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, H*W, C) tokens; a view when the map is channels_last."""
    return x.flatten(2).transpose(1, 2)


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch for whole samples with probability ``prob``."""
    if prob == 0.0 or not training:
        return x
    return x * _keep_scale(x, prob)


def _keep_scale(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Per-sample factor (B, 1, ..., 1): 0 for dropped samples, 1 / keep for kept ones."""
    keep = 1.0 - prob
    # scaling the tiny mask instead of the branch saves one full pass over the activations
    return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


def add_drop_path(residual: torch.Tensor, branch: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """``residual + drop_path(branch)`` in one fused pass (``addcmul``) when drop-path is active."""
    if prob == 0.0 or not training:
        return residual + branch
    return torch.addcmul(residual, branch, _keep_scale(branch, prob))


class DropPath(nn.Module):
    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.prob, self.training)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with overlapping windows, then LayerNorm over channels."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        return self.norm(map_to_tokens(x)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from the map shrunk by ``sr_ratio`` (a strided conv)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        head_dim = c // self.num_heads
        q = self.q(x).view(b, n, self.num_heads, head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = map_to_tokens(self.sr(tokens_to_map(x, h, w)))
            kv_in = self.norm(reduced)
        else:
            kv_in = x
        kv = self.kv(kv_in).view(b, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DepthwiseConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, h, w)))


class MixFFN(nn.Module):
    """Linear, depthwise 3x3 conv (positional information), GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x)), each with drop-path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path_prob: float,
                 qkv_bias: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias)
        self.drop_path = DropPath(drop_path_prob)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p, training = self.drop_path.prob, self.training
        x = add_drop_path(x, self.attn(self.norm1(x), h, w), p, training)
        return add_drop_path(x, self.mlp(self.norm2(x), h, w), p, training)


class MixTransformer(nn.Module):
    """One MiT stream: four stages of (patch embed, blocks, norm), run one stage at a time.

    ``forward_stage(i, x)`` takes the previous stage's (B, C, H, W) map (the image for stage 1) and returns
    this stage's map, so a dual-stream encoder can fuse between stages.
    """

    def __init__(self, spec: MiTSpec, in_chans: int, drop_path_rate: float = 0.0,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.in_chans = in_chans
        self.grad_checkpointing = grad_checkpointing
        total = sum(spec.depths)
        rates = torch.linspace(0, drop_path_rate, total).tolist() if total > 1 else [drop_path_rate] * total
        start = 0
        prev = in_chans
        for i in range(4):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(prev, spec.embed_dims[i], patch, stride))
            blocks = nn.ModuleList(
                MiTBlock(spec.embed_dims[i], spec.num_heads[i], spec.mlp_ratios[i], spec.sr_ratios[i],
                         rates[start + j], spec.qkv_bias, spec.block_eps)
                for j in range(spec.depths[i])
            )
            self.add_module(f"block{i + 1}", blocks)
            self.add_module(f"norm{i + 1}", nn.LayerNorm(spec.embed_dims[i], eps=spec.block_eps))
            start += spec.depths[i]
            prev = spec.embed_dims[i]
        self.apply(segformer_init)

    @property
    def out_channels(self) -> list[int]:
        return list(self.spec.embed_dims)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The modules of stage 1..4 (for freezing stage by stage)."""
        return [getattr(self, f"patch_embed{stage}"), getattr(self, f"block{stage}"), getattr(self, f"norm{stage}")]

    def forward_stage(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        tokens, h, w = getattr(self, f"patch_embed{stage}")(x)
        for block in getattr(self, f"block{stage}"):
            if self.grad_checkpointing and self.training and tokens.requires_grad:
                tokens = checkpoint(block, tokens, h, w, use_reentrant=False)
            else:
                tokens = block(tokens, h, w)
        tokens = getattr(self, f"norm{stage}")(tokens)
        return tokens_to_map(tokens, h, w)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in range(1, 5):
            x = self.forward_stage(stage, x)
            outs.append(x)
        return outs


def segformer_init(module: nn.Module) -> None:
    """SegFormer's initialisation (``module.apply(segformer_init)``): truncated normal (std 0.02) linears,
    fan-out normal convs, unit LayerNorms. CMX and the original CrossAttentionDet use it for FRM/FFM too."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
