"""Any timm backbone as a one-stream encoder (``model.backbone=timm:<name>``): 4 maps at strides 4, 8, 16, 32.

The model is built with ``features_only``; its channels come from timm's ``feature_info``. More than three
input channels use timm's ``in_chans``. Pretrained weights are read from a local file only (never
downloaded): timm loads the file (its usual checkpoint layout, ``.pth``/``.bin``/``.safetensors``) and adapts
the RGB stem to ``in_chans`` with its ``adapt_input_conv``.

Layout: ``TimmEncoder.streams[0]`` is a :class:`TimmStream` (``stage_modules`` for staged freezing, as a MiT
stream), so the engine's encoder-stream parameter groups and freezing apply unchanged.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from crossattentiondet.config import ConfigError

REDUCTIONS = (4, 8, 16, 32)
_TIMM_LOGGER = "timm.models._builder"
_LEVELS: dict[str, tuple[int, ...]] = {}  # model name -> feature_info indices of strides 4, 8, 16, 32


def _check_name(name: str) -> None:
    import timm

    if ":" in name or "/" in name:
        raise ConfigError(f"model.backbone=timm:{name}: hub references are not fetched (no downloads); name a timm "
                          "architecture (timm:edgenext_base) and give its weights file as model.pretrained")
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"model.backbone: timm has no model {name!r}{hint}")


def _create(name: str, **kwargs: Any) -> nn.Module:
    """timm.create_model(features_only) with our errors; drop_path_rate only where the model accepts it."""
    import timm

    try:
        try:
            return timm.create_model(name, features_only=True, **kwargs)
        except TypeError as err:
            if "drop_path_rate" not in str(err) or "drop_path_rate" not in kwargs:
                raise
            kwargs.pop("drop_path_rate")  # e.g. plain CNNs without stochastic depth
            return timm.create_model(name, features_only=True, **kwargs)
    except (ConfigError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - timm/torch raise many types for "cannot build/load"; named below
        where = f" with weights {kwargs['pretrained_cfg_overlay']['file']}" if kwargs.get("pretrained") else ""
        raise ConfigError(f"model.backbone=timm:{name}: cannot build it features_only{where}: "
                          f"{type(err).__name__}: {' '.join(str(err).split())[:400]}") from None


def _level_indices(name: str, info: list[dict[str, Any]]) -> tuple[int, ...]:
    """Indices into feature_info of the deepest map at each of the strides 4, 8, 16, 32."""
    reductions = [int(level["reduction"]) for level in info]
    picked = []
    for r in REDUCTIONS:
        at = [i for i, red in enumerate(reductions) if red == r]
        if not at:
            raise ConfigError(f"model.backbone=timm:{name}: its features are at reductions {reductions}; the "
                              "segmentation and detection heads need maps at strides 4, 8, 16 and 32 "
                              "(choose a hierarchical CNN/transformer such as edgenext_*, convnext_*, resnet*)")
        picked.append(at[-1])
    return tuple(picked)


class _LoadLog(logging.Handler):
    """Collects the missing/unexpected keys timm reports while loading a weights file non-strictly."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"(Missing|Unexpected) keys \((.*)\) (discovered|found)", record.getMessage())
        if m:
            (self.missing if m.group(1) == "Missing" else self.unexpected).extend(
                k.strip() for k in m.group(2).split(",") if k.strip())


def _norm(key: str) -> str:
    # features_only wrappers rename top-level modules "stages.0" -> "stages_0"
    return key.replace("_", ".")


class TimmStream(nn.Module):
    """One timm features_only model returning the maps at strides 4..32 as NCHW tensors."""

    def __init__(self, body: nn.Module, nhwc: bool) -> None:
        super().__init__()
        self.body = body
        self.nhwc = nhwc  # e.g. Swin's features come channels-last as (B, H, W, C) tensors

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The modules computing stage 1..4's map (stage 1 includes the stem), for staged freezing.

        Feature wrappers that are not a module sequence cannot be split: all of it counts as stage 1.
        """
        outputs = getattr(self.body, "return_layers", None)
        if not isinstance(self.body, nn.ModuleDict) or not outputs:
            return [self.body] if stage == 1 else []
        children = list(self.body.items())
        ends = [i for i, (n, _) in enumerate(children) if n in outputs]
        start = ends[stage - 2] + 1 if stage > 1 else 0
        return [m for _, m in children[start:ends[stage - 1] + 1]]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = self.body(x)
        return [o.permute(0, 3, 1, 2) for o in outs] if self.nhwc else list(outs)


class TimmEncoder(nn.Module):
    """``timm.create_model(name, features_only=True, in_chans=...)`` limited to the 4 levels at strides 4..32.

    ``pretrained_file``: timm-layout weights of ``name`` (the classification checkpoint; its head is
    dropped), read locally, the stem adapted to ``in_chans``. ``drop_path_rate`` is passed when the
    model takes it.
    """

    def __init__(self, name: str, in_chans: int, pretrained_file: str | Path | None = None,
                 drop_path_rate: float = 0.0, grad_checkpointing: bool = False) -> None:
        super().__init__()
        _check_name(name)
        self.name = name
        self.in_chans = in_chans
        kwargs: dict[str, Any] = {"in_chans": in_chans, "drop_path_rate": drop_path_rate, "pretrained": False}
        if pretrained_file is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=_file_overlay(pretrained_file))
        build = self._build_loaded if pretrained_file is not None else _create
        wanted = _LEVELS.get(name)
        if wanted is None:
            # timm's default levels tell where strides 4..32 are; rebuilt only when they are not exactly those
            # four (e.g. ResNet's include stride 2). Remembered per name: later builds need one pass.
            body = build(name, **kwargs)
            wanted = _LEVELS[name] = _level_indices(name, body.feature_info.info)
            if tuple(body.feature_info.out_indices) != wanted:
                body = build(name, out_indices=wanted, **kwargs)
        else:
            body = build(name, out_indices=wanted, **kwargs)
        self.out_channels = [int(body.feature_info.info[i]["num_chs"]) for i in wanted]
        if grad_checkpointing:
            if not hasattr(body, "set_grad_checkpointing"):
                raise ConfigError(f"model.grad_checkpointing: timm:{name}'s feature extractor does not support it")
            body.set_grad_checkpointing(True)
        fmt = getattr(body, "output_fmt", "NCHW")
        self.streams = nn.ModuleList([TimmStream(body, getattr(fmt, "value", fmt) == "NHWC")])

    @staticmethod
    def _build_loaded(name: str, **kwargs: Any) -> nn.Module:
        """Build with the weights file; every encoder tensor must come from it (timm loads non-strictly)."""
        path = kwargs["pretrained_cfg_overlay"]["file"]
        log, logger = _LoadLog(), logging.getLogger(_TIMM_LOGGER)
        level, propagate = logger.level, logger.propagate
        logger.addHandler(log)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the keys are reported as one clear error below, not as log noise
        try:
            body = _create(name, **kwargs)
        finally:
            logger.removeHandler(log)
            logger.setLevel(level)
            logger.propagate = propagate
        ours = {_norm(k) for k in body.state_dict()}
        missing = [k for k in log.missing if _norm(k) in ours and not k.endswith("num_batches_tracked")]
        if missing or log.unexpected:
            problem = (f"{len(missing)} encoder tensors are not in the file (e.g. {missing[0]})" if missing
                       else f"it has {len(log.unexpected)} tensors the model lacks (e.g. {log.unexpected[0]})")
            raise ConfigError(f"model.pretrained={path}: not timm weights of {name}: {problem}; the file must be "
                              f"timm's checkpoint of {name} (state dict of timm.create_model({name!r}))")
        return body

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.streams[0](x)


def _file_overlay(path: str | Path) -> dict[str, Any]:
    """timm's pretrained-config overlay pointing at a local file; no hub or URL source stays reachable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: timm weights file not found: {path}")
    return {"file": str(path), "source": None, "url": "", "hf_hub_id": None, "hf_hub_filename": None}
