"""Pretrained MiT (ImageNet) weights from a local file, loaded into every encoder stream.

Two key layouts are understood:
- the SegFormer release (``mit_b1.pth``: ``patch_embed1.proj.weight``, ``block1.0.attn.kv.weight``, ...),
  possibly wrapped in ``state_dict``/``model`` or prefixed with ``backbone.``/``module.``;
- Hugging Face ``nvidia/mit-b1`` (``.safetensors`` or ``pytorch_model.bin``: ``segformer.encoder.
  patch_embeddings.0.proj.weight``, separate ``query``/``key``/``value`` projections, ...).
Classification heads are ignored. A stream whose input has other than 3 channels gets its first
convolution adapted (:func:`adapt_input_conv`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from crossattentiondet.config import ConfigError


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a tensor dict from .safetensors, or .pth/.pt/.bin (unwrapping common containers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a bad header
            raise ConfigError(f"{path}: not a readable .safetensors file: {' '.join(str(err).split())}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise ConfigError(f"{path}: cannot read pretrained weights: {' '.join(str(err).split())}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


_HF_BLOCK = {
    "layer_norm_1": "norm1",
    "layer_norm_2": "norm2",
    "attention.self.query": "attn.q",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "mlp.dense1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.fc2",
}


def hf_to_segformer(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face Segformer encoder state dict to the SegFormer release layout."""
    out: dict[str, Tensor] = {}
    kv_parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        k = key.removeprefix("segformer.").removeprefix("encoder.")
        if m := re.fullmatch(r"patch_embeddings\.(\d)\.(proj|layer_norm)\.(weight|bias)", k):
            part = "proj" if m.group(2) == "proj" else "norm"
            out[f"patch_embed{int(m.group(1)) + 1}.{part}.{m.group(3)}"] = value
        elif m := re.fullmatch(r"layer_norm\.(\d)\.(weight|bias)", k):
            out[f"norm{int(m.group(1)) + 1}.{m.group(2)}"] = value
        elif m := re.fullmatch(r"block\.(\d)\.(\d+)\.(.+)\.(weight|bias)", k):
            prefix = f"block{int(m.group(1)) + 1}.{m.group(2)}"
            inner, kind = m.group(3), m.group(4)
            if inner in ("attention.self.key", "attention.self.value"):
                kv_parts.setdefault(f"{prefix}.attn.kv.{kind}", {})[inner.rsplit(".", 1)[1]] = value
            elif inner in _HF_BLOCK:
                out[f"{prefix}.{_HF_BLOCK[inner]}.{kind}"] = value
        # anything else (classifier, decode head) is not part of the encoder
    for key, parts in kv_parts.items():
        if set(parts) != {"key", "value"}:
            raise ConfigError(f"Hugging Face weights: {key} has only {sorted(parts)}")
        out[key] = torch.cat((parts["key"], parts["value"]), dim=0)  # kv = [k; v], as in SegFormer
    return out


def to_segformer_layout(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detect the layout and return an encoder-only SegFormer-layout state dict."""
    if any("patch_embeddings." in k for k in state):
        return hf_to_segformer(state)
    out = {}
    for key, value in state.items():
        k = key
        for prefix in ("module.", "backbone.", "encoder."):
            k = k.removeprefix(prefix)
        if re.match(r"^(patch_embed\d|block\d|norm\d)\.", k):
            out[k] = value
    return out


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt an RGB stem (O, 3, k, k) to ``in_chans`` channels.

    Every new channel gets the mean of the RGB filters, scaled by 3 / in_chans, so a constant input
    produces the same response as the same constant on all three RGB channels.
    """
    if weight.shape[1] == in_chans:
        return weight
    mean = weight.float().mean(dim=1, keepdim=True)
    return (mean.repeat(1, in_chans, 1, 1) * (3.0 / in_chans)).to(weight.dtype)


def load_pretrained_stream(stream: nn.Module, state: Mapping[str, Tensor], source: str = "weights") -> list[str]:
    """Copy SegFormer-layout weights into one MiT stream; returns the stream keys left at initialisation."""
    target = stream.state_dict()
    loaded = {}
    for key, value in state.items():
        if key not in target:
            continue
        if key == "patch_embed1.proj.weight":
            value = adapt_input_conv(value, target[key].shape[1])
        if tuple(value.shape) != tuple(target[key].shape):
            raise ConfigError(
                f"{source}: {key} has shape {tuple(value.shape)} but the configured backbone needs "
                f"{tuple(target[key].shape)} (weights of another MiT variant? check model.backbone)"
            )
        loaded[key] = value
    if not loaded:
        raise ConfigError(f"{source}: no MiT encoder weights recognised (neither SegFormer nor Hugging Face layout)")
    missing = [k for k in target if k not in loaded]
    depth_missing = [k for k in missing if re.match(r"block\d\.\d+\.", k)]
    if depth_missing:
        raise ConfigError(
            f"{source}: the file has fewer blocks than the configured backbone (first missing: {depth_missing[0]}); "
            "weights of another MiT variant? check model.backbone"
        )
    extra_blocks = sorted({m.group(0) for k in state if (m := re.match(r"block\d\.\d+", k)) and f"{k}" not in target})
    if extra_blocks:
        raise ConfigError(
            f"{source}: the file has more blocks than the configured backbone (e.g. {extra_blocks[0]}); "
            "weights of another MiT variant? check model.backbone"
        )
    stream.load_state_dict(loaded, strict=False)
    return missing


def load_pretrained_encoder(encoder: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load MiT ImageNet weights from ``path`` into every stream of ``encoder`` (dual or single)."""
    state = to_segformer_layout(read_state_dict(path))
    report = {}
    for i, stream in enumerate(encoder.streams):
        report[f"stream{i}"] = load_pretrained_stream(stream, state, str(path))
    return report
