"""Mixture-of-experts neck between the segmentation encoder and its decoder (``model.seg.moe``).

On each of the encoder's scales: a CBAM-like channel + spatial attention block, then a :class:`MoELayer`:
``num_experts`` small residual experts (texture, attention, hybrid, frequency, edge, context, contrast;
:data:`EXPERTS`), of which a router picks ``k`` per *image* from the globally pooled features. The image's
output is the softmax-weighted sum of its ``k`` experts' outputs (the weights are the softmax over the ``k``
chosen logits, so the router also learns through the task loss).

The idea is camoXpert's; the implementation differs where the original was slow or inert:

* **Batched dispatch.** camoXpert looped over the images of the batch and, per image, over its chosen
  experts, running each expert on a batch of one. Here every expert runs *once* per forward, on the
  sub-batch of the images that chose it (``x[idx]``), and its weighted output is ``index_add``-ed into the
  result. The expert assignment costs one device -> host copy of the per-expert counts per layer, nothing per
  image. :meth:`MoELayer.dense_reference` (every expert on every image, combined with the full gate matrix)
  is the slow definition the tests hold the dispatch to.
* **A balance loss with a gradient.** camoXpert's auxiliary loss was an MSE over ``bincount`` of the integer
  expert indices: a function of integers, so no gradient ever reached the router. Here the router is trained
  by the Switch Transformer / GShard load-balancing loss ``E * sum_i f_i * P_i`` (``f_i``: fraction of the
  (image, slot) assignments routed to expert i, a constant; ``P_i``: the batch mean of the router's full
  softmax probability of expert i, through which the gradient flows) and the ST-MoE router z-loss
  ``mean(logsumexp(logits) ** 2)`` that keeps the logits small. Optional noisy top-k gating (Shazeer et al.
  2017): while training, Gaussian noise with a learned, input-dependent scale is added to the logits.
* **GroupNorm in the experts.** An expert sees only the images routed to it, often one or two, so
  BatchNorm statistics per expert would be noise; every expert normalises with GroupNorm (:func:`_norm`).
* The attention block is named for what it is: camoXpert called it "SDTA", but it is a CBAM-style channel
  gate followed by a spatial gate (:class:`ChannelSpatialAttention`). The *attention expert* is the real
  transposed (channel) self-attention of EdgeNeXt's SDTA / Restormer's MDTA, linear in the number of pixels.

The router runs in float32 outside autocast (stable top-k decisions and losses); the experts run in whatever
precision autocast gives them, the frequency expert does its FFT in float32. Feature maps of any size
(down to 1x1) and channels_last inputs work.

Per-expert loads (images routed to each expert while training) accumulate on the device in a plain tensor,
not a buffer: DDP's buffer broadcast would otherwise overwrite every rank's counts with rank 0's. Read them
with :meth:`MoENeck.pop_epoch_stats` (single process) or :meth:`MoENeck.load_counts` + all-reduce +
:func:`load_stats` + :meth:`MoENeck.reset_load` (DDP).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossattentiondet.config import MoEConfig

__all__ = ["EXPERTS", "ChannelSpatialAttention", "MoELayer", "MoENeck", "Routing", "describe_stats",
           "load_stats"]


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with gcd(channels, 8) groups: always divides ``channels``, independent of the batch size."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def _no_autocast(x: Tensor) -> torch.autocast:
    return torch.autocast(x.device.type, enabled=False)


class _SEGate(nn.Module):
    """Squeeze-and-excitation: a per-channel sigmoid gate from the globally averaged features."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean((2, 3), keepdim=True)
        return torch.sigmoid(self.expand(F.relu(self.reduce(pooled))))


class ChannelSpatialAttention(nn.Module):
    """CBAM-style attention: an SE channel gate, then a 7x7 spatial gate on the channel mean and max.

    camoXpert called this block "SDTA", but it is CBAM-like channel + spatial attention (no self-attention;
    that is :class:`AttentionExpert`)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.channel_gate = _SEGate(channels, reduction)
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel_gate(x)
        stats = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(stats))


# ---------------------------------------------------------------------------------------------- experts
# Each expert maps (B, C, H, W) -> (B, C, H, W) as x + f(x); the constructor takes the channel count only.


class TextureExpert(nn.Module):
    """Four parallel dilated 3x3 convolutions (dilation 1-4, C/4 channels each), fused by a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 4, 1)
        self.branches = nn.ModuleList(nn.Conv2d(channels, hidden, 3, padding=d, dilation=d, bias=False)
                                      for d in (1, 2, 3, 4))
        self.mid = _norm(4 * hidden)
        self.fuse = nn.Conv2d(4 * hidden, channels, 1, bias=False)
        self.out = _norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(self.mid(torch.cat([branch(x) for branch in self.branches], 1)))
        return x + self.out(self.fuse(y))


class TransposedAttention(nn.Module):
    """Channel ("transposed") self-attention (Restormer MDTA / XCiT XCA / EdgeNeXt SDTA): per head a C_h x C_h
    attention matrix between L2-normalised query and key channels, scaled by a learned temperature. Cost is
    linear in the pixel count, so 96x96 maps (9,216 tokens) are cheap."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = math.gcd(channels, 4)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.temperature = nn.Parameter(torch.ones(self.heads, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(-1)  # (b, heads, c_h, c_h)
        return self.proj((attn @ v).reshape(b, c, h, w))


class AttentionExpert(nn.Module):
    """A pre-norm transformer block: transposed self-attention, then a 1x1-conv MLP (expansion 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1, self.attn = _norm(channels), TransposedAttention(channels)
        self.norm2 = _norm(channels)
        self.mlp = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1), nn.GELU(),
                                 nn.Conv2d(2 * channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HybridExpert(nn.Module):
    """Local + global: a depthwise 3x3 conv and a pointwise conv (local mixing), then an SE channel gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.norm = _norm(channels)
        self.pw = nn.Conv2d(channels, channels, 1)
        self.gate = _SEGate(channels, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw(F.gelu(self.norm(self.dw(x))))
        return x + y * self.gate(y)


def _radial_bands(height: int, width: int, bands: int, device: torch.device) -> Tensor:
    """(H, W // 2 + 1) band index of each rfft2 frequency: the radius |f| / |f|max cut into equal bands."""
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    radius = torch.sqrt(fy**2 + fx**2) / math.sqrt(0.5)
    return (radius * bands).long().clamp_(max=bands - 1)


class FrequencyExpert(nn.Module):
    """A learned per-channel gain on ``bands`` radial frequency bands of the features' 2-D FFT (float32,
    orthonormal, any H x W), back to space, then a 1x1 conv. The gains start at 1 (all-pass)."""

    def __init__(self, channels: int, bands: int = 4) -> None:
        super().__init__()
        self.bands = bands
        self.gain = nn.Parameter(torch.ones(channels, bands))
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = _norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        with _no_autocast(x):
            spectrum = torch.fft.rfft2(x.float(), norm="ortho")
            gain = self.gain.float()[:, _radial_bands(h, w, self.bands, x.device)]  # (C, H, W // 2 + 1)
            y = torch.fft.irfft2(spectrum * gain, s=(h, w), norm="ortho")
        return x + self.norm(self.proj(y.to(x.dtype)))


class EdgeExpert(nn.Module):
    """Fixed depthwise Sobel gradient magnitude of the features -> 1x1 conv -> a sigmoid gate on x: the
    features are amplified where they change."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        # (2C, 1, 3, 3): gx, gy per channel, for a depthwise conv with C groups
        kernel = torch.stack([sx, sx.t()])[:, None].repeat(channels, 1, 1, 1)
        self.register_buffer("sobel", kernel, persistent=False)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = _norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        grad = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.sobel.to(x.dtype), groups=x.shape[1])
        magnitude = torch.sqrt(grad[:, 0::2] ** 2 + grad[:, 1::2] ** 2 + 1e-6)
        return x + x * torch.sigmoid(self.norm(self.proj(magnitude)))


class ContextExpert(nn.Module):
    """Pyramid pooling (PSPNet): average pools to 1x1, 2x2, 3x3, 6x6, a 1x1 conv each, bilinear upsampling,
    concatenated with x and fused by a 1x1 conv."""

    SCALES = (1, 2, 3, 6)

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 4, 1)
        # no norm on the pooled maps (GroupNorm over a 1x1 map with one channel per group is constant);
        # GELU, not ReLU: with C/4 = 2 channels a ReLU branch can start dead
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(channels, hidden, 1), nn.GELU())
            for s in self.SCALES)
        self.fuse = nn.Conv2d(channels + len(self.SCALES) * hidden, channels, 1, bias=False)
        self.norm = _norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pyramid = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
                   for stage in self.stages]
        return x + self.norm(self.fuse(torch.cat([x, *pyramid], 1)))


class ContrastExpert(nn.Module):
    """Local contrast, centre minus surround at two radii (x - avgpool3x3(x), x - avgpool5x5(x)), 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.norm = _norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        near = x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        far = x - F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
        return x + self.norm(self.proj(torch.cat([near, far], 1)))


EXPERTS: dict[str, type[nn.Module]] = {
    "texture": TextureExpert,
    "attention": AttentionExpert,
    "hybrid": HybridExpert,
    "frequency": FrequencyExpert,
    "edge": EdgeExpert,
    "context": ContextExpert,
    "contrast": ContrastExpert,
}


# ---------------------------------------------------------------------------------------------- routing


class Routing(NamedTuple):
    """One forward's routing decisions for a batch of B images, E experts, k per image."""

    logits: Tensor  # (B, E) float32, the logits top-k chose from (noisy while training with noisy gating)
    clean_logits: Tensor  # (B, E) float32, without the noise (the z-loss's)
    indices: Tensor  # (B, k) long, the chosen experts, best first
    weights: Tensor  # (B, k) float32, softmax over the chosen logits

    def gates(self, num_experts: int) -> Tensor:
        """(B, E) weight matrix: the chosen experts' weights, zeros elsewhere."""
        full = self.weights.new_zeros(self.weights.shape[0], num_experts)
        return full.scatter(1, self.indices, self.weights)


class MoELayer(nn.Module):
    """``config.num_experts`` experts (types cycled from ``config.experts``), ``config.k`` chosen per image.

    ``forward(x)`` returns the mixture, same shape and dtype as ``x``, and leaves in :attr:`last` the
    ``balance`` and ``z`` losses (float32 scalars with gradient) and ``counts`` (E,) of that call.
    """

    def __init__(self, channels: int, config: MoEConfig) -> None:
        super().__init__()
        self.num_experts, self.k = config.num_experts, config.k
        self.expert_names = [config.experts[i % len(config.experts)] for i in range(self.num_experts)]
        self.experts = nn.ModuleList(EXPERTS[name](channels) for name in self.expert_names)
        self.router = nn.Linear(channels, self.num_experts)  # = a 1x1 conv on the pooled map
        self.noise: nn.Linear | None = None
        if config.noisy_gating:
            self.noise = nn.Linear(channels, self.num_experts)  # noise std = softplus(.), 0.69 at the start
            nn.init.zeros_(self.noise.weight)
            nn.init.zeros_(self.noise.bias)
        self.last: dict[str, Tensor] = {}
        self._load: Tensor | None = None  # (E,) images routed to each expert while training since the reset

    def route(self, x: Tensor) -> Routing:
        """The router's decisions, in float32 outside autocast; noise only while training."""
        with _no_autocast(x):
            pooled = x.float().mean((2, 3))
            clean = self.router(pooled)
            logits = clean
            if self.noise is not None and self.training:
                logits = clean + torch.randn_like(clean) * F.softplus(self.noise(pooled))
            top, indices = logits.topk(self.k, dim=1)
            return Routing(logits, clean, indices, top.softmax(1))

    def dispatch(self, x: Tensor, routing: Routing, counts: Tensor | None = None) -> Tensor:
        """Each expert once, on the images that chose it; weighted outputs summed with ``index_add_``.
        ``counts``: the (E,) bincount of ``routing.indices`` if already known."""
        k = self.k
        flat = routing.indices.flatten()  # (B * k,): image b's slots at b * k ... b * k + k - 1
        order = flat.argsort(stable=True)  # slots grouped by expert
        if counts is None:
            counts = torch.bincount(flat, minlength=self.num_experts)
        sizes = counts.tolist()  # the one device -> host sync of this layer
        slot_weights = routing.weights.flatten()
        out = torch.zeros_like(x, dtype=torch.float32)
        for expert, slots in zip(self.experts, order.split(sizes), strict=True):
            if slots.numel() == 0:
                continue
            images = slots // k  # distinct: an image picks an expert at most once
            y = expert(x[images]).float() * slot_weights[slots].view(-1, 1, 1, 1)
            out.index_add_(0, images, y)
        return out.to(x.dtype)

    def dense_reference(self, x: Tensor, routing: Routing | None = None) -> Tensor:
        """The definition :meth:`dispatch` implements: every expert on every image, combined with the full
        (B, E) gate matrix (zeros for the experts an image did not choose). E times the compute; for tests."""
        routing = self.route(x) if routing is None else routing
        gates = routing.gates(self.num_experts)
        out = torch.zeros_like(x, dtype=torch.float32)
        for e, expert in enumerate(self.experts):
            out = out + expert(x).float() * gates[:, e].view(-1, 1, 1, 1)
        return out.to(x.dtype)

    def aux(self, routing: Routing) -> dict[str, Tensor]:
        """Balance loss E * sum_i f_i P_i (gradient through P), z-loss and per-expert counts of one call."""
        counts = torch.bincount(routing.indices.flatten(), minlength=self.num_experts)
        fraction = counts.float() / routing.indices.numel()  # f_i: share of the (image, slot) assignments
        mean_prob = routing.logits.softmax(1).mean(0)  # P_i
        balance = self.num_experts * (fraction * mean_prob).sum()
        z = torch.logsumexp(routing.clean_logits, 1).pow(2).mean()
        return {"balance": balance, "z": z, "counts": counts}

    def forward(self, x: Tensor) -> Tensor:
        routing = self.route(x)
        self.last = self.aux(routing)
        if self.training:
            counts = self.last["counts"].detach()
            self._load = counts.clone() if self._load is None else self._load.to(counts.device) + counts
        return self.dispatch(x, routing, self.last["counts"])

    def load(self) -> Tensor:
        """(E,) long: images routed to each expert while training since the last reset (on the device)."""
        if self._load is None:
            return torch.zeros(self.num_experts, dtype=torch.long, device=self.router.weight.device)
        return self._load

    def reset_load(self) -> None:
        self._load = None

    def pop_load(self) -> Tensor:
        """:meth:`load`, then reset."""
        counts = self.load()
        self.reset_load()
        return counts

    def __getstate__(self) -> dict:
        # deepcopy (the EMA's AveragedModel) cannot copy the last call's non-leaf loss tensors; drop them
        state = self.__dict__.copy()
        state["last"], state["_load"] = {}, None
        return state


def load_stats(counts: list[Tensor]) -> dict[str, float]:
    """Per scale s (1-based) and expert e (0-based, as in ``MoELayer.experts``): ``moe{s}_e{e}`` = share of
    the scale's routed assignments that went to expert e, and ``moe{s}_cv`` = coefficient of variation (std /
    mean, population std) of the loads, 0 when perfectly balanced. NaN for a scale with no assignments."""
    stats: dict[str, float] = {}
    for s, scale_counts in enumerate(counts, 1):
        c = scale_counts.detach().double().cpu()
        total = float(c.sum())
        for e, value in enumerate(c.tolist()):
            stats[f"moe{s}_e{e}"] = value / total if total > 0 else math.nan
        stats[f"moe{s}_cv"] = float(c.std(unbiased=False) / c.mean()) if total > 0 else math.nan
    return stats


class MoENeck(nn.Module):
    """Per encoder scale: :class:`ChannelSpatialAttention`, then a :class:`MoELayer`.

    ``forward(feats)`` maps the list of (B, C_s, H_s, W_s) maps to maps of the same shapes."""

    def __init__(self, channels: list[int], config: MoEConfig) -> None:
        super().__init__()
        self.balance_weight, self.z_weight = config.balance_weight, config.z_weight
        reduction = config.attention_reduction
        self.attention = nn.ModuleList(ChannelSpatialAttention(c, reduction) for c in channels)
        self.layers = nn.ModuleList(MoELayer(c, config) for c in channels)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.layers):
            raise ValueError(f"MoENeck: {len(feats)} feature maps for {len(self.layers)} scales")
        return [layer(attn(f)) for f, attn, layer in zip(feats, self.attention, self.layers, strict=True)]

    def aux_losses(self) -> dict[str, Tensor]:
        """The weighted router losses of the last forward: ``loss_moe_balance`` = balance_weight x mean over
        scales of the balance loss, ``loss_moe_z`` = z_weight x mean of the z-losses (float32 scalars)."""
        if any(not layer.last for layer in self.layers):
            raise RuntimeError("MoENeck.aux_losses: call forward first")
        balance = torch.stack([layer.last["balance"] for layer in self.layers]).mean()
        z = torch.stack([layer.last["z"] for layer in self.layers]).mean()
        return {"loss_moe_balance": self.balance_weight * balance, "loss_moe_z": self.z_weight * z}

    def load_counts(self) -> list[Tensor]:
        """Per scale, (E,) long counts of images routed to each expert while training since the last reset
        (on the device; all-reduce them under DDP before :func:`load_stats`). Does not reset."""
        return [layer.load() for layer in self.layers]

    def reset_load(self) -> None:
        for layer in self.layers:
            layer.reset_load()

    def pop_epoch_stats(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """:func:`load_stats` of the counts since the last pop, then reset them. ``reduce`` (e.g. the
        trainer's DDP all-reduce, called on every rank) maps each scale's count tensor first; None: this
        process's counts."""
        counts = self.load_counts()
        stats = load_stats([reduce(c) for c in counts] if reduce is not None else counts)
        self.reset_load()
        return stats


def describe_stats(stats: dict[str, float]) -> str:
    """One log line from :func:`load_stats`: per scale the load CV and the busiest expert's share."""
    parts = []
    for s in range(1, 100):
        if f"moe{s}_cv" not in stats:
            break
        shares = {int(k.rsplit("_e", 1)[1]): v for k, v in stats.items() if k.startswith(f"moe{s}_e")}
        busiest = max(shares, key=lambda e: -1.0 if math.isnan(shares[e]) else shares[e])
        parts.append(f"scale {s} cv {stats[f'moe{s}_cv']:.2f} (e{busiest} {shares[busiest]:.0%})")
    return "MoE load: " + ", ".join(parts)
