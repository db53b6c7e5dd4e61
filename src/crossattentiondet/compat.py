"""Compatibility with the original CrossAttentionDet code base (craigxyz/crossattentiondet).

- :func:`load_original_encoder` loads an original dual-stream encoder state dict (``patch_embed1``,
  ``extra_patch_embed1``, ``block1``, ``extra_block1``, ``FRMs.0``, ``FFMs.0``...) into this project's
  :class:`DualStreamEncoder` and returns a module computing the same four stage maps.
- :func:`convert_original_checkpoint` turns a full original detector checkpoint into this project's
  checkpoint format (``cadet convert-original``).

The original normalised raw 0-255 values with 0-1 mean/std and upscaled frames to 800 px; a converted
checkpoint's config reproduces that input pipeline (``scale: 1`` per modality, ``resize: shorter_side``)
so its weights see what they were trained on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crossattentiondet.config import ConfigError, ExperimentConfig, FusionConfig, build_config, config_to_dict
from crossattentiondet.errors import DataError
from crossattentiondet.models.encoder import DualStreamEncoder, FusionPlan
from crossattentiondet.models.mit import MiTSpec

_STREAM_PARTS = ("patch_embed", "block", "norm")


def rename_original_encoder_key(key: str) -> str:
    """Map one original encoder key to this project's DualStreamEncoder layout."""
    m = re.match(r"^(extra_)?(patch_embed|block|norm)(\d)(\..*)$", key)
    if m:
        stream = 1 if m.group(1) else 0
        return f"streams.{stream}.{m.group(2)}{m.group(3)}{m.group(4)}"
    m = re.match(r"^(FRMs|FFMs)\.(\d)\.(.*)$", key)
    if m:
        part = "frm" if m.group(1) == "FRMs" else "ffm"
        return f"fusions.{m.group(2)}.{part}.{m.group(3)}"
    raise KeyError(f"unexpected key in original encoder state dict: {key!r}")


class OriginalEncoder(nn.Module):
    """Wraps a :class:`DualStreamEncoder`: takes the original (B, 5, H, W) input, returns 4 stage maps."""

    def __init__(self, encoder: DualStreamEncoder, in_chans_rgb: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.in_chans_rgb = in_chans_rgb

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.encoder(x[:, : self.in_chans_rgb], x[:, self.in_chans_rgb:])


def load_original_encoder(state_dict: Mapping[str, Tensor], *, embed_dims: list[int], num_heads: list[int],
                          mlp_ratios: list[float], depths: list[int], sr_ratios: list[int], qkv_bias: bool = True,
                          in_chans_rgb: int = 3, in_chans_x: int = 2, drop_path_rate: float = 0.0,
                          layernorm_eps: float = 1e-6) -> OriginalEncoder:
    """Build the original baseline encoder (FRM+FFM at all stages, separate streams) and load its weights.

    The keyword arguments are those of ``reference/original_tiny/config.json``. Returns the encoder in
    eval mode; calling it on a (B, in_chans_rgb + in_chans_x, H, W) float tensor returns the four stage maps.
    """
    spec = MiTSpec(tuple(embed_dims), tuple(depths), tuple(num_heads), tuple(sr_ratios), tuple(mlp_ratios),
                   qkv_bias, layernorm_eps)
    plan = FusionPlan(("frm_ffm",) * 4, "separate")
    encoder = DualStreamEncoder(spec, (in_chans_rgb, in_chans_x), plan, FusionConfig(), drop_path_rate)
    renamed = {rename_original_encoder_key(k): v for k, v in state_dict.items()}
    missing, unexpected = encoder.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise ValueError(
            "original encoder state dict does not match the architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return OriginalEncoder(encoder, in_chans_rgb).eval()


def rename_original_detector_key(key: str) -> str:
    """Map one key of a full original detector state dict to this project's detector."""
    prefix = "backbone.encoder."
    if key.startswith(prefix):
        return prefix + rename_original_encoder_key(key[len(prefix):])
    return key  # backbone.fpn.*, rpn.*, roi_heads.* are torchvision's own names in both


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        if obj.get("format") == "crossattentiondet-checkpoint":
            raise DataError(f"{source}: already a CrossAttentionDet checkpoint, not an original one; it needs no "
                            "conversion (use it with `cadet eval` or `cadet predict`)")
        for key in ("model_state_dict", "state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap_state_dict(obj[key], source)
        if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
        keys = [str(k) for k in list(obj)[:5]]
        raise DataError(f"{source}: not an original checkpoint: a dict with keys {keys}"
                        f"{'...' if len(obj) > 5 else ''} but no model state dict (a dict of tensors, or one under "
                        "'model_state_dict', 'state_dict' or 'model')")
    raise DataError(f"{source}: not an original checkpoint: it holds {_describe(obj)}, not a dict of tensors")


def _describe(obj: Any) -> str:
    """A few words on what a loaded object is, for error messages."""
    if isinstance(obj, Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item(s)"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}" if type(obj).__module__ != "builtins" \
        else f"a {type(obj).__name__}"


def _load_torch_file(path: Path) -> Any:
    """``torch.load`` of a file the user named, any failure reported as what the file is instead."""
    with open(path, "rb") as handle:
        head = handle.read(256)
    if not head:
        raise DataError(f"{path}: empty file, not an original checkpoint")
    try:
        # original checkpoints hold more than tensors (epoch, optimizer state), hence a full unpickle
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a non-checkpoint file fails in many ways (pickle, zip, EOF, ...)
        kind = "a text file" if _looks_like_text(head) else "not a PyTorch file"
        reason = " ".join(str(err).split())[:160]
        raise DataError(f"{path}: {kind}, not an original checkpoint (torch.load failed: "
                        f"{type(err).__name__}: {reason})") from None


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
        text = head[: err.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def original_detector_config(backbone: str, num_classes: int) -> ExperimentConfig:
    """Config of the original baseline detector with the original's input pipeline."""
    from crossattentiondet.config import default_modalities

    mods = [dict(m.model_dump(), scale=1.0) for m in default_modalities()]
    return build_config({
        "name": f"original_{backbone}",
        "data": {"modalities": mods},
        "model": {
            "backbone": backbone,
            "num_classes": num_classes,
            "fusion": {"type": "frm_ffm", "stages": [1, 2, 3, 4], "flow": "separate"},
            "detector": {"resize": "shorter_side", "min_size": 800, "max_size": 1333},
        },
    })


def convert_original_checkpoint(path: str | Path, backbone: str = "mit_b1") -> dict[str, Any]:
    """Read an original detector checkpoint and return it in this project's checkpoint format."""
    from crossattentiondet.models.detector import build_detector

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raw = _load_torch_file(path)
    state = _unwrap_state_dict(raw, str(path))
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    if cls_key not in state:
        encoder_only = any(re.match(r"^(module\.)?(extra_)?(patch_embed|block)\d\.", k) for k in state)
        what = "an encoder (or MiT backbone) state dict" if encoder_only else f"a state dict of {len(state)} tensors"
        raise DataError(f"{path}: not a full original detector checkpoint: {what} without the Faster R-CNN box "
                        f"predictor ({cls_key})")
    num_classes = int(state[cls_key].shape[0]) - 1
    config = original_detector_config(backbone, num_classes)
    model = build_detector(config)
    renamed = {}
    for key, value in state.items():
        try:
            renamed[rename_original_detector_key(key)] = value
        except KeyError as err:
            raise DataError(f"{path}: not an original detector checkpoint: {err.args[0]}") from None
    expected = model.state_dict()
    bad_shapes = [k for k, v in renamed.items() if k in expected and tuple(expected[k].shape) != tuple(v.shape)]
    if bad_shapes:
        k = bad_shapes[0]
        raise ConfigError(
            f"{path}: weights do not fit --backbone {backbone}: {k} has shape {tuple(renamed[k].shape)}, "
            f"{backbone} needs {tuple(expected[k].shape)} ({len(bad_shapes)} mismatched tensors)"
        )
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path}: does not match the original {backbone} detector: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    return {
        "format": "crossattentiondet-checkpoint",
        "version": 1,
        "model": model.state_dict(),
        "config": config_to_dict(config),
        "num_classes": num_classes,
        "class_names": [f"class_{i}" for i in range(num_classes)],
        "epoch": None,
        "source": f"converted from original checkpoint {path.name}",
    }
