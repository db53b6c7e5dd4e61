"""What a trained model takes as input, and frames brought into that form before it sees them.

A model is trained on raw integer pixels (uint8 or uint16 per modality) and divides each modality by its
``scale`` (the raw value of 1.0) before normalising. Frames given to a trained model later (``cadet predict``,
``cadet eval --data``, the Python API) must mean the same thing: the checkpoint records each modality's
dtype and scale (``checkpoint["inputs"]``), and :func:`conform_frame` checks new frames against it:

- uint8 <-> uint16 where the training scale was the dtype's full range (255 / 65535): converted to the
  training representation (x * 257 or round(x / 257)), so the model sees the values it was trained on;
  uint16 frames whose values all fit an 8-bit model's scale (8-bit data in a 16-bit container, as in one
  (H, W, C) array of 8-bit RGB and 16-bit thermal) are taken as they are;
- the same dtype with values above the training scale, or another dtype where the training scale was a
  custom one (a 12-bit sensor's 4095, say): refused, since no conversion is right without knowing the sensor;
- float, bool or signed frames: refused. A float frame is usually already normalised (0-1) or
  mean/std-standardised, and divided by 255 it would give no detections at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossattentiondet.data.checks import DTYPE_SCALE as FULL_RANGE  # dtype -> the raw value of 1.0
from crossattentiondet.errors import DataError


@dataclass(frozen=True)
class ModalityInput:
    """One modality as the model was trained on it."""

    name: str
    channels: int
    dtype: str  # "uint8" or "uint16"
    scale: float  # the raw value that maps to 1.0

    def describe(self) -> str:
        return f"{self.name}: {self.channels} channel(s), {self.dtype}, scale {self.scale:g}"


def dtype_for_scale(scale: float) -> str:
    """The narrowest integer dtype that holds values up to ``scale``."""
    return "uint8" if scale <= 255 else "uint16"


def input_spec(modalities: list[Any], dtypes: Mapping[str, str] | None = None) -> list[ModalityInput]:
    """The spec from resolved modality configs (explicit scales) and the dtypes found in the data."""
    spec = []
    for m in modalities:
        scale = float(m.scale) if m.scale is not None else 255.0
        dtype = (dtypes or {}).get(m.name) or dtype_for_scale(scale)
        spec.append(ModalityInput(m.name, int(m.channels), dtype, scale))
    return spec


def spec_to_dict(spec: list[ModalityInput]) -> dict[str, dict[str, Any]]:
    """As stored in checkpoints: ``{name: {"channels", "dtype", "scale"}}`` in model input order."""
    return {m.name: {"channels": m.channels, "dtype": m.dtype, "scale": m.scale} for m in spec}


def spec_from_checkpoint(checkpoint: Mapping[str, Any]) -> list[ModalityInput]:
    """The checkpoint's input spec; checkpoints written before it was recorded: from the config's scales."""
    modalities = checkpoint["config"]["data"]["modalities"]
    stored = checkpoint.get("inputs") or {}
    spec = []
    for m in modalities:
        entry = stored.get(m["name"])
        if entry is not None:
            spec.append(ModalityInput(m["name"], int(entry["channels"]), str(entry["dtype"]), float(entry["scale"])))
        else:
            scale = float(m["scale"]) if m.get("scale") is not None else 255.0
            spec.append(ModalityInput(m["name"], int(m["channels"]), dtype_for_scale(scale), scale))
    return spec


def conform_frame(name: str, arrays: Mapping[str, Any], spec: list[ModalityInput],
                  notes: set[str] | None = None) -> dict[str, np.ndarray]:
    """``arrays`` (modality -> (H, W) or (H, W, C) array) checked and converted to what the model was trained
    on; DataError naming the frame and the modality otherwise. Conversions made are added to ``notes``."""
    missing = [m.name for m in spec if m.name not in arrays]
    if missing:
        raise DataError(f"{name}: modalities {missing} missing (the model takes {[m.name for m in spec]}, in that "
                        "order)")
    unknown = sorted(set(arrays) - {m.name for m in spec})
    if unknown:
        raise DataError(f"{name}: unknown modalities {unknown} (the model takes {[m.name for m in spec]})")
    out: dict[str, np.ndarray] = {}
    size: tuple[int, int] | None = None
    for m in spec:
        array = _as_array(arrays[m.name], f"{name}: modality '{m.name}'")
        what = f"{name}: modality '{m.name}'"
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] != m.channels:
            raise DataError(f"{what} has shape {tuple(array.shape)}; the model takes (H, W, {m.channels})"
                            + (" or (H, W)" if m.channels == 1 else ""))
        if size is None:
            size = array.shape[:2]
        elif array.shape[:2] != size:
            raise DataError(f"{what} is {array.shape[1]}x{array.shape[0]} (WxH), the other modalities "
                            f"{size[1]}x{size[0]}: modalities must be aligned, same size")
        out[m.name] = _conform_values(array, m, what, notes)
    return out


def _as_array(value: Any, what: str) -> np.ndarray:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if not isinstance(value, np.ndarray):
        raise DataError(f"{what} is a {type(value).__name__}; give a numpy array (H, W) or (H, W, C)")
    return value


def _conform_values(array: np.ndarray, m: ModalityInput, what: str, notes: set[str] | None) -> np.ndarray:
    dtype = str(array.dtype)
    peak = int(array.max()) if array.size and dtype in FULL_RANGE else 0
    if dtype not in FULL_RANGE:
        kind = "float" if array.dtype.kind == "f" else dtype
        raise DataError(f"{what} is {dtype}; the model takes the raw {m.dtype} pixel values it was trained on "
                        f"(0-{m.scale:g}; it normalises them itself)"
                        + (", not normalised or 0-1 floats" if kind == "float" else "")
                        + f": give the frame as read from the file, e.g. array.astype(np.{m.dtype}) if the "
                        "values are raw")
    # the same dtype; or uint8 frames for a model whose scale fits 8 bits (mixed-depth training files); or a
    # 16-bit container holding 8-bit values (an (H, W, C) array of 8-bit RGB beside 16-bit thermal): as they are
    if dtype == m.dtype or (dtype == "uint8" and m.scale <= 255) or (m.dtype == "uint8" and peak <= m.scale):
        if peak > m.scale:
            raise DataError(f"{what} has values up to {peak}, above the scale {m.scale:g} of the data the model "
                            f"was trained on; convert the frame to that range first")
        return np.ascontiguousarray(array.astype(np.dtype(m.dtype), copy=False))
    if m.scale != FULL_RANGE[m.dtype]:
        raise DataError(f"{what} is {dtype}, but the model was trained on {m.dtype} data with scale {m.scale:g} "
                        f"(not the full {m.dtype} range): give {m.dtype} frames on that scale")
    if m.dtype == "uint8":  # 16-bit values for a model trained on 8-bit data: the 8-bit values it knows
        converted = np.rint(array.astype(np.float32) / 257.0).astype(np.uint8)
    else:
        converted = array.astype(np.uint16) * np.uint16(257)
    if notes is not None:
        notes.add(f"modality '{m.name}': {dtype} frames converted to the {m.dtype} range the model was trained on")
    return converted
