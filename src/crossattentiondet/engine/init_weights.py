"""``model.init_from``: start a run from the weights of another run (e.g. a stage-1 best.pt).

Tensors are matched by name and shape: those that match are loaded, the others keep their initialisation,
and the run's log says which (counts plus the first names of each kind). A file that matches nothing is an
error, not a silent from-scratch run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossattentiondet.config import ConfigError


@dataclass
class InitWeights:
    """Weights read from ``model.init_from`` (before the model exists: a bad file fails before any work)."""

    path: Path
    state: dict[str, torch.Tensor]
    origin: str  # e.g. "best.pt of runs/stage1, epoch 30"


@dataclass
class InitReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the file does not have: initial values
    mismatched: list[str] = field(default_factory=list)  # same name, other shape: initial values
    unused: list[str] = field(default_factory=list)  # file tensors the model does not have

    def lines(self, weights: InitWeights) -> list[str]:
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        out = [f"model.init_from: loaded {len(self.loaded)} of the model's {total} tensors from {weights.origin}"]
        for label, names in (("not in the file (initial values kept)", self.missing),
                             ("other shape in the file (initial values kept)", self.mismatched),
                             ("in the file but not in this model (ignored)", self.unused)):
            if names:
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                out.append(f"  {len(names)} {label}: {shown}")
        return out


def read_init_weights(path: str | Path) -> InitWeights:
    """The tensors of a checkpoint of this project (best.pt/last.pt/epoch_N.pt, or a run directory: its
    best.pt), or of a plain torch file holding a state dict (``model_state_dict``/``state_dict``/``model`` or
    the dict itself)."""
    from crossattentiondet.engine.checkpoint import FORMAT, load_checkpoint

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model.init_from: {path} does not exist")
    if path.is_dir():
        checkpoint = load_checkpoint(path)
        path = Path(checkpoint["path"])
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - truncated/corrupt files surface as many exception types
            raise ConfigError(f"model.init_from: {path}: cannot read it ({type(err).__name__}: {err})") from None
    origin = str(path)
    if isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT:
        state: Any = checkpoint["model"]
        origin += f" (epoch {checkpoint.get('epoch', '?')})"
    elif isinstance(checkpoint, dict):
        state = next((checkpoint[k] for k in ("model_state_dict", "state_dict", "model")
                      if isinstance(checkpoint.get(k), dict)), checkpoint)
    else:
        state = None
    tensors = {_strip(k): v for k, v in state.items() if torch.is_tensor(v)} if isinstance(state, dict) else {}
    if not tensors:
        raise ConfigError(f"model.init_from: {path} holds no tensors (expected a checkpoint or a state dict)")
    return InitWeights(path, tensors, origin)


def _strip(name: str) -> str:
    # DDP / torch.compile wrappers prefix the names
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def load_init_weights(model: nn.Module, weights: InitWeights) -> InitReport:
    """Copy the matching tensors into ``model``; a file that matches none of them is an error."""
    own = model.state_dict()
    report = InitReport()
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        theirs = weights.state.get(name)
        if theirs is None:
            report.missing.append(name)
        elif tuple(theirs.shape) != tuple(tensor.shape):
            report.mismatched.append(f"{name} {tuple(theirs.shape)} vs {tuple(tensor.shape)}")
        else:
            matched[name] = theirs
            report.loaded.append(name)
    report.unused = [name for name in weights.state if name not in own]
    float_matched = [n for n in matched if own[n].is_floating_point()]
    if not float_matched:
        raise ConfigError(f"model.init_from: none of the {len(weights.state)} tensors of {weights.path} match this "
                          f"model's names and shapes (e.g. the file has {', '.join(list(weights.state)[:3])}; the "
                          f"model {', '.join(list(own)[:3])}): is it a checkpoint of this project for this model?")
    model.load_state_dict(matched, strict=False)
    return report
