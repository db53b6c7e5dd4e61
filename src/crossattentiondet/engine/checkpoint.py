"""Checkpoints: a plain dict, written atomically, never with non-finite weights.

Every checkpoint has ``model`` (the weights to evaluate: EMA weights when EMA is on), ``config`` (fully
resolved), ``class_names`` and ``epoch``. ``last.pt`` also has ``training``: everything needed to resume
exactly (raw weights, optimizer, schedule, grad scaler, EMA, RNG states and counters).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from crossattentiondet.errors import TrainingError
from crossattentiondet.io import atomic_write

FORMAT = "crossattentiondet-checkpoint"
VERSION = 1


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically (temp file + rename); refuse weights with NaN/Inf so a good file is never replaced."""
    bad = non_finite_tensors(checkpoint["model"])
    if "training" in checkpoint:
        bad += non_finite_tensors(checkpoint["training"]["model"])
    if bad:
        raise TrainingError(f"refusing to write {Path(path).name}: non-finite weights in {bad[:3]}; "
                            "the previous checkpoint is kept")
    checkpoint = {"format": FORMAT, "version": VERSION, **checkpoint}
    try:
        atomic_write(path, lambda p: torch.save(checkpoint, p))
    except OSError as err:
        raise TrainingError(f"cannot write {path}: {err.strerror or err}{_free_space(path)}; the previous "
                            "checkpoint is kept") from None
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc:...] unexpected pos"
        if "inline_container" not in detail and "PytorchStreamWriter" not in detail:
            raise
        raise TrainingError(f"cannot write {path}: the write failed, most likely the disk is full{_free_space(path)} "
                            f"(torch: {detail}); the previous checkpoint is kept") from None


def _free_space(path: str | Path) -> str:
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return ""
    return f" ({free / 2**20:.0f} MiB free there)"


def run_dir_of(checkpoint_path: str | Path) -> Path:
    """The run directory of a checkpoint: <run>/checkpoints/x.pt -> <run>; a loose x.pt -> its folder."""
    path = Path(checkpoint_path)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt", path / "best.pt",
                          path / "last.pt"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise FileNotFoundError(f"no checkpoint in {path} (looked for checkpoints/best.pt and last.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated/corrupt files surface as many exception types
        raise TrainingError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a CrossAttentionDet checkpoint (original-code checkpoints: "
                            "use `cadet convert-original` first)")
    checkpoint["path"] = str(path)
    return checkpoint
