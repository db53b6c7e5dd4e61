"""Training YAMLs in the shape of the seeds/003 DETR project, translated into this project's config keys.

That project (a soccer ball and players, ../shared/reference/SEED003.md) keeps its settings in nine sections:
``model`` (with ``architecture``), ``training``, ``optimizer``, ``lr_schedule``, ``augmentation``, ``dataset``,
``checkpoint``, ``evaluation`` and ``logging``. :func:`translate_seed003` maps every key of them to ours and
returns notes for what has no direct equivalent or means something else here (they are shown once when the
file is loaded, see :func:`record_notes`, and written to the run's training.log). Unknown keys are errors.

The "speed" knobs of that project that only paper over memory leaks (``memory_cleanup_frequency``,
``adaptive_*``, ``target_gpu_utilization``, ``max_ram_usage``) are ignored with their reason in a seed-shaped
file (so it still loads) and refused with the same reason as keys of this project's config
(:data:`REFUSED_KNOBS`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import PurePath
from typing import Any

from crossattentiondet.config import ConfigError

log = logging.getLogger(__name__)

SEED_SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("architecture", "backbone", "num_classes", "pretrained", "hidden_dim", "nheads",
              "num_encoder_layers", "num_decoder_layers"),
    "training": ("batch_size", "num_epochs", "learning_rate", "weight_decay", "warmup_epochs", "gradient_clip",
                 "gradient_accumulation_steps", "mixed_precision", "compile_model", "channels_last",
                 "cudnn_benchmark", "tf32", "memory_cleanup_frequency", "adaptive_optimization",
                 "target_gpu_utilization", "max_ram_usage", "adaptive_adjustment_interval", "focal_loss"),
    "optimizer": ("type", "lr", "betas", "weight_decay"),
    "lr_schedule": ("type", "warmup_epochs", "min_lr"),
    "augmentation": ("train", "val"),
    "dataset": ("train_path", "val_path", "num_workers", "pin_memory", "prefetch_factor", "persistent_workers"),
    "checkpoint": ("save_dir", "save_frequency", "save_every_epoch", "keep_last_lightweight", "save_best", "metric"),
    "evaluation": ("iou_thresholds", "max_detections", "val_frequency"),
    "logging": ("log_dir", "tensorboard", "mlflow", "mlflow_tracking_uri", "mlflow_experiment_name",
                "mlflow_log_models", "print_frequency", "log_every_n_steps"),
}
"""Every section of the seed's training YAML and its keys (SEED003.md)."""

_NESTED_KEYS: dict[str, tuple[str, ...]] = {
    "training.focal_loss": ("enabled", "alpha", "gamma"),
    "augmentation.train": ("horizontal_flip", "color_jitter", "random_crop", "resize_range", "copy_paste", "clahe",
                           "motion_blur"),
    "augmentation.val": ("resize",),
    "augmentation.train.color_jitter": ("brightness", "contrast", "saturation", "hue"),
    "augmentation.train.copy_paste": ("prob", "max_pastes"),
    "augmentation.train.clahe": ("enabled", "clip_limit", "tile"),
    "augmentation.train.motion_blur": ("enabled", "prob", "max_kernel"),
}

# sections found only in the seed's files (ours are train/data/eval/output; the original JSON has none of them)
_SEED_ONLY = {"lr_schedule", "augmentation", "dataset", "checkpoint", "evaluation", "logging", "optimizer"}
_OUR_SECTIONS = {"task", "train", "data", "eval", "output"}

REFUSED_KNOBS: dict[str, str] = {
    "memory_cleanup_frequency": "periodic gc.collect()/torch.cuda.empty_cache() only hides a leak and costs time; "
                                "the training loop here keeps no tensors across iterations, so its memory stays flat",
    "adaptive_optimization": "changing batch size or workers at run time from utilisation readings makes runs "
                             "irreproducible; set train.batch_size and data.loader.* and measure with `cadet bench`",
    "adaptive_adjustment_interval": "the interval of adaptive_optimization, which is refused (runs must be "
                                    "reproducible); set train.batch_size and data.loader.* instead",
    "target_gpu_utilization": "a utilisation target for adaptive_optimization, which is refused; find the batch and "
                              "workers that keep the GPU busy with `cadet bench`",
    "max_ram_usage": "a RAM ceiling that triggers clean-ups papers over a leak; bound host memory with "
                     "data.loader.num_workers and data.loader.prefetch_factor",
}
"""Seed knobs that only paper over leaks: key -> the one-line reason they are not settings here."""

# the seed's names of its selection metric -> ours (normalised: lower case, no val_ prefix, no @ . _ : -)
_METRICS = {
    "map": "mAP", "map5095": "mAP", "map05095": "mAP", "map595": "mAP", "map05": "mAP_50", "map5": "mAP_50",
    "map50": "mAP_50", "ap50": "mAP_50", "map075": "mAP_75",
    "map75": "mAP_75", "ap75": "mAP_75", "mapsmall": "mAP_small", "mapmedium": "mAP_medium", "maplarge": "mAP_large",
    "maptiny": "mAP_tiny", "mapverytiny": "mAP_verytiny", "mar100": "mAR_100", "recall": "mAR_100",
}


# ----------------------------------------------------------------------------------------------- refused
def refused_reason(key: str) -> str | None:
    """The reason a leak-hiding knob (the last part of a dotted ``key``) is refused, or None."""
    return REFUSED_KNOBS.get(key.rsplit(".", 1)[-1])


def explain_refused_keys(message: str, unknown_keys: list[str]) -> str:
    """``message`` (a config error naming ``unknown key 'train.max_ram_usage' (did you mean ...)``) with each
    refused knob's "unknown key" replaced by why it is refused."""
    for key in unknown_keys:
        reason = refused_reason(key)
        if reason is None:
            continue
        pattern = rf"unknown key '{re.escape(key)}'( \(did you mean '[^']*'\?\))?"
        message = re.sub(pattern, lambda _m, k=key, r=reason: f"'{k}' is refused: {r}", message)
    return message


# ----------------------------------------------------------------------------------------------- notes
_NOTES: dict[str, list[str]] = {}  # fingerprint of a validated config -> the notes of its translation
_MAX_KEPT = 16


def config_fingerprint(tree: dict[str, Any]) -> str:
    """What identifies a translated config for its notes: the resolved tree without ``name`` (the trainer may
    rename a run ``run2``...)."""
    return json.dumps({k: v for k, v in tree.items() if k != "name"}, sort_keys=True, default=str)


def record_notes(source: str, notes: list[str], fingerprint: str) -> None:
    """Show a translation's notes once (a warning on the ``crossattentiondet.seed003`` logger: plain lines on
    stderr where logging is not configured, as under ``cadet``) and keep them for :func:`notes_for`."""
    if not notes:
        return
    where = f"{source}: " if source else ""
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank loads the config: rank 0 speaks
        for note in notes:
            log.warning("note: %s%s", where, note)
    _NOTES[fingerprint] = [f"{where}{n}" for n in notes]
    while len(_NOTES) > _MAX_KEPT:
        _NOTES.pop(next(iter(_NOTES)))


def notes_for(config_tree: dict[str, Any]) -> list[str]:
    """The seed-translation notes of the config whose resolved tree is ``config_tree`` (empty for any other:
    a config changed after loading is not the translated file any more), for the run's training.log."""
    return list(_NOTES.get(config_fingerprint(config_tree), []))


# ------------------------------------------------------------------------------------------- recognise
def is_seed003(raw: dict[str, Any]) -> bool:
    """True for a training YAML in the seed-003 project's shape: a seed-only section (``optimizer``,
    ``lr_schedule``, ``augmentation``, ``dataset``, ``checkpoint``, ``evaluation``, ``logging``) or a
    ``model.architecture``, and none of this project's sections. The original CrossAttentionDet JSON
    (:func:`crossattentiondet.config.is_legacy`) has ``training`` too, but none of these."""
    if set(raw) & _OUR_SECTIONS:
        return False
    model = raw.get("model")
    return bool(set(raw) & _SEED_ONLY) or (isinstance(model, dict) and "architecture" in model)


# ------------------------------------------------------------------------------------------- translate
class _Section:
    """One mapping of the seed file, read key by key; what is left at the end is unknown."""

    def __init__(self, raw: Any, name: str, allowed: tuple[str, ...]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"seed-003 config: section '{name}' must be a mapping of keys, got "
                              f"{type(raw).__name__}")
        unknown = sorted(str(k) for k in raw if k not in allowed)
        if unknown:
            raise ConfigError(f"seed-003 config: unknown key(s) {', '.join(repr(k) for k in unknown)} in section "
                              f"'{name}' (known: {', '.join(allowed)})")
        self.raw = dict(raw)
        self.name = name

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def sub(self, key: str) -> _Section:
        name = f"{self.name}.{key}"
        return _Section(self.raw.get(key), name, _NESTED_KEYS[name])

    def number(self, key: str) -> float:
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"seed-003 config: {self.name}.{key} must be a number, got {value!r}")
        return value

    def flag(self, key: str) -> bool:
        value = self.raw[key]
        if not isinstance(value, bool):
            raise ConfigError(f"seed-003 config: {self.name}.{key} must be true or false, got {value!r}")
        return value


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _backbone(name: Any) -> str:
    from crossattentiondet.config import MIT_BACKBONES

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"seed-003 config: model.backbone must be a model name (e.g. resnet50), got {name!r}")
    name = name.strip()
    if name in MIT_BACKBONES or name.startswith("timm:"):
        return name
    return f"timm:{name}"


def _probability(section: _Section, key: str, when_true: float) -> float:
    """A seed value that is a switch (true: ``when_true``) or a probability."""
    value = section.get(key)
    if isinstance(value, bool):
        return when_true if value else 0.0
    prob = section.number(key)
    if not 0 <= prob <= 1:
        raise ConfigError(f"seed-003 config: {section.name}.{key} must be true/false or a probability, got {prob!r}")
    return float(prob)


def _clahe_tiles(value: Any) -> int:
    """The seed writes the CLAHE grid as 8, [8, 8] or "8x8"; ours is square (tiles per side)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", value):
        value = [int(v) for v in re.split(r"[xX]", value)]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        if value[0] != value[1]:
            raise ConfigError(f"seed-003 config: augmentation.train.clahe.tile {list(value)}: the CLAHE grid here "
                              "is square (data.augment.clahe_tiles tiles per side)")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"seed-003 config: augmentation.train.clahe.tile must be N, [N, N] or 'NxN', got {value!r}")
    return value


def _select_metric(name: Any) -> str:
    key = re.sub(r"[@._:\-\s/]", "", str(name).lower()).removeprefix("val")
    if key not in _METRICS:
        raise ConfigError(f"seed-003 config: checkpoint.metric {name!r} is not a metric computed here (use one of "
                          "mAP, mAP@0.5, mAP@0.75, mAP_small; the validation reports COCO AP)")
    return _METRICS[key]


def _split_dir(path: str, key: str) -> PurePath:
    """The split folder a seed path names: the folder itself, or the folder above its images/ or annotation."""
    p = PurePath(path)
    if p.suffix.lower() == ".json":
        p = p.parent
        if p.name == "annotations":
            p = p.parent
    elif p.name in ("images", "annotations"):
        p = p.parent
    if not p.name or p.name in (".", ".."):
        raise ConfigError(f"seed-003 config: dataset.{key}={path!r} does not name a split folder (e.g. data/train)")
    return p


def translate_seed003(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Translate a seed-003 training YAML into this project's config tree; returns ``(tree, notes)``.

    Each note says where a seed key went when it means something else here, or why it has no equivalent.
    Unknown sections and keys raise :class:`ConfigError` naming them.
    """
    raw = copy.deepcopy(raw)
    unknown = sorted(str(k) for k in raw if k not in SEED_SECTIONS)
    if unknown:
        raise ConfigError(f"seed-003 config: unknown section(s) {', '.join(repr(k) for k in unknown)} "
                          f"(known: {', '.join(SEED_SECTIONS)})")
    s = {name: _Section(raw.get(name), name, keys) for name, keys in SEED_SECTIONS.items()}
    out: dict[str, Any] = {}
    notes: list[str] = []
    _model(s["model"], out, notes)
    _training(s["training"], out, notes)
    _optimizer(s["optimizer"], s["training"], out, notes)
    _schedule(s["lr_schedule"], s["training"], out, notes)
    _augmentation(s["augmentation"], out, notes)
    _dataset(s["dataset"], out, notes)
    _checkpoint(s["checkpoint"], out, notes)
    _evaluation(s["evaluation"], out, notes)
    _logging(s["logging"], out, notes)
    return out, notes


def _model(m: _Section, out: dict[str, Any], notes: list[str]) -> None:
    arch = str(m.get("architecture", "detr")).lower()
    if arch != "detr":
        raise ConfigError(f"seed-003 config: model.architecture {m.get('architecture')!r} is not supported (detr)")
    _set(out, "model.detector.type", "detr")
    # the seed's data are RGB frames (COCO jpgs): one RGB stream, ImageNet statistics
    out.setdefault("data", {})["modalities"] = [
        {"name": "rgb", "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}]
    _set(out, "model.streams", [["rgb"]])
    notes.append("the seed project reads RGB frames: data.modalities = rgb alone, one stream; for thermal / event "
                 "folders beside images/ give data.modalities and model.streams (e.g. [[rgb],[thermal]])")
    if "backbone" in m:
        _set(out, "model.backbone", _backbone(m.get("backbone")))
    for seed_key, ours in (("hidden_dim", "hidden_dim"), ("nheads", "num_heads"),
                           ("num_encoder_layers", "encoder_layers"), ("num_decoder_layers", "decoder_layers")):
        if seed_key in m:
            _set(out, f"model.detector.detr.{ours}", m.get(seed_key))
    if "num_classes" in m:
        notes.append(f"model.num_classes={m.get('num_classes')} ignored: the classes come from the COCO file's "
                     "categories (the seed counted background as a class)")
    if m.get("pretrained"):
        notes.append("model.pretrained=true: pretrained weights must be a local file here, set "
                     "model.pretrained=PATH (no download)")


def _training(t: _Section, out: dict[str, Any], notes: list[str]) -> None:
    for seed_key, ours in (("batch_size", "batch_size"), ("num_epochs", "epochs"),
                           ("gradient_accumulation_steps", "accumulation")):
        if seed_key in t:
            _set(out, f"train.{ours}", t.get(seed_key))
    if "gradient_clip" in t:
        clip = t.get("gradient_clip")
        _set(out, "train.grad_clip", clip if clip else None)  # 0 / null: no clipping
    if "mixed_precision" in t and t.flag("mixed_precision"):
        _set(out, "train.precision", "fp16")
        notes.append("training.mixed_precision=true -> train.precision=fp16 (CUDA only; on a CPU use "
                     "train.precision=bf16 or fp32)")
    elif "mixed_precision" in t:
        _set(out, "train.precision", "fp32")
    for seed_key, ours in (("compile_model", "compile"), ("channels_last", "channels_last"),
                           ("cudnn_benchmark", "cudnn_benchmark"), ("tf32", "tf32")):
        if seed_key in t:
            _set(out, f"train.{ours}", t.flag(seed_key))
    for knob, reason in REFUSED_KNOBS.items():
        if knob in t:
            notes.append(f"training.{knob} ignored: {reason}")
    if "focal_loss" in t:
        focal = t.sub("focal_loss")
        if "alpha" in focal:
            _set(out, "model.detector.detr.loss.focal_alpha", focal.get("alpha"))
        if "gamma" in focal:
            _set(out, "model.detector.detr.loss.focal_gamma", focal.get("gamma"))
        if "enabled" in focal and not focal.flag("enabled"):
            notes.append("training.focal_loss.enabled=false: the DETR head always uses the sigmoid focal loss "
                         "(alpha/gamma kept)")


def _optimizer(o: _Section, t: _Section, out: dict[str, Any], notes: list[str]) -> None:
    if "type" in o:
        kind = str(o.get("type")).lower()
        if kind not in ("adamw", "sgd"):
            raise ConfigError(f"seed-003 config: optimizer.type {o.get('type')!r} is not supported (AdamW or SGD)")
        _set(out, "train.optimizer.type", kind)
    # the seed's recipe trains the backbone at a tenth of the heads' lr
    _set(out, "train.optimizer.backbone_lr_mult", 0.1)
    for ours, opt_key, train_key in (("train.lr", "lr", "learning_rate"),
                                     ("train.optimizer.weight_decay", "weight_decay", "weight_decay")):
        if opt_key in o:
            _set(out, ours, o.get(opt_key))
            if train_key in t and t.get(train_key) != o.get(opt_key):
                notes.append(f"optimizer.{opt_key}={o.get(opt_key)} is used, training.{train_key}="
                             f"{t.get(train_key)} ignored (the optimizer section builds the optimizer)")
        elif train_key in t:
            _set(out, ours, t.get(train_key))
    if "betas" in o:
        _set(out, "train.optimizer.betas", o.get("betas"))


def _schedule(sch: _Section, t: _Section, out: dict[str, Any], notes: list[str]) -> None:
    kind = str(sch.get("type", "cosine" if sch.raw else "constant")).lower()
    if kind not in ("cosine", "constant", "none"):
        raise ConfigError(f"seed-003 config: lr_schedule.type {sch.get('type')!r} is not supported (cosine)")
    # per update, like the seed's per-batch stepping; its linear warmup starts at 0.1 x lr
    _set(out, "train.schedule.type", "cosine" if kind == "cosine" else "constant")
    _set(out, "train.schedule.warmup_factor", 0.1)
    if "warmup_epochs" in sch:
        _set(out, "train.schedule.warmup_epochs", sch.get("warmup_epochs"))
        if "warmup_epochs" in t and t.get("warmup_epochs") != sch.get("warmup_epochs"):
            notes.append(f"lr_schedule.warmup_epochs={sch.get('warmup_epochs')} is used, training.warmup_epochs="
                         f"{t.get('warmup_epochs')} ignored")
    elif "warmup_epochs" in t:
        _set(out, "train.schedule.warmup_epochs", t.get("warmup_epochs"))
    if "min_lr" in sch:
        _set(out, "train.schedule.min_lr", sch.get("min_lr"))


def _augmentation(a: _Section, out: dict[str, Any], notes: list[str]) -> None:
    tr = a.sub("train")
    aug: dict[str, Any] = {}
    if "horizontal_flip" in tr:
        aug["hflip"] = _probability(tr, "horizontal_flip", 0.5)
    if "color_jitter" in tr:
        jitter = tr.sub("color_jitter")
        values = {k: jitter.number(k) for k in jitter.raw}
        # the seed's ColorJitter ran on every frame
        aug["color_jitter"] = {**values, "prob": 1.0 if any(values.values()) else 0.0}
    if "random_crop" in tr:
        aug["crop_prob"] = _probability(tr, "random_crop", 0.5)
        if tr.get("random_crop") is True:
            notes.append("augmentation.train.random_crop=true -> data.augment.crop_prob=0.5 (DETR's choice between "
                         "resize and resize + crop)")
    val_resize = a.sub("val").get("resize")
    if "resize_range" in tr:
        rng = tr.get("resize_range")
        aug["multi_scale"] = rng
        if val_resize is not None:
            aug["multi_scale_max_size"] = val_resize
        notes.append(f"augmentation.train.resize_range={rng} -> data.augment.multi_scale (the shorter side drawn "
                     "from the range per frame" + (f", the longer side capped at {val_resize}" if val_resize else "")
                     + "); evaluation runs at each frame's own size, so frames whose shorter side lies outside the "
                     "range are trained at another scale than they are tested at: choose a range around your "
                     "frames' size (data.augment.multi_scale)")
    if "copy_paste" in tr:
        cp = tr.sub("copy_paste")
        aug["copy_paste"] = {k: cp.get(k) for k in cp.raw}
    if "clahe" in tr:
        clahe = tr.sub("clahe")
        on = clahe.flag("enabled") if "enabled" in clahe else True
        aug["clahe"] = 0.5 if on else 0.0
        if on:
            notes.append("augmentation.train.clahe.enabled=true -> data.augment.clahe=0.5 (the seed gives no "
                         "probability; training frames only)")
        if "clip_limit" in clahe:
            aug["clahe_clip_limit"] = clahe.get("clip_limit")
        if "tile" in clahe:
            aug["clahe_tiles"] = _clahe_tiles(clahe.get("tile"))
    if "motion_blur" in tr:
        blur = tr.sub("motion_blur")
        on = blur.flag("enabled") if "enabled" in blur else True
        aug["motion_blur"] = (_probability(blur, "prob", 1.0) if "prob" in blur else 0.5) if on else 0.0
        if "max_kernel" in blur:
            aug["motion_blur_max_kernel"] = blur.get("max_kernel")
    if aug:
        out.setdefault("data", {})["augment"] = aug
    if val_resize is not None and "resize_range" not in tr:
        # the seed's DETR image processor: shorter side 800, the longer at most `resize`, in training and test
        _set(out, "model.detector.resize", "shorter_side")
        _set(out, "model.detector.max_size", val_resize)
        if isinstance(val_resize, int) and not isinstance(val_resize, bool):
            _set(out, "model.detector.min_size", min(800, val_resize))
        notes.append(f"augmentation.val.resize={val_resize} -> model.detector.resize=shorter_side, max_size="
                     f"{val_resize}: the model scales every frame (training and evaluation) to a shorter side of 800 "
                     f"px, the longer at most {val_resize}; tiny objects keep more pixels with "
                     "model.detector.resize=native")
    elif val_resize is not None:
        notes.append(f"augmentation.val.resize={val_resize}: evaluation keeps each frame's own size "
                     "(model.detector.resize=native; a resize in the model would undo the multi-scale training range)")


def _dataset(d: _Section, out: dict[str, Any], notes: list[str]) -> None:
    paths = {k: d.get(k) for k in ("train_path", "val_path") if k in d}
    for key, value in paths.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"seed-003 config: dataset.{key} must be a path, got {value!r}")
    if paths:
        splits = {k: _split_dir(v, k) for k, v in paths.items()}
        parents = {str(p.parent) for p in splits.values()}
        if len(parents) > 1:
            raise ConfigError("seed-003 config: dataset.train_path and dataset.val_path are split folders of "
                              f"different data roots ({', '.join(f'{k}={v}' for k, v in paths.items())}); the coco "
                              "layout reads <root>/train, <root>/valid|val, <root>/test: put them under one root")
        _set(out, "data.root", parents.pop())
        _set(out, "data.layout", "coco")
    for key in ("num_workers", "prefetch_factor", "persistent_workers"):
        if key in d:
            _set(out, f"data.loader.{key}", d.get(key))
    if "pin_memory" in d and d.get("pin_memory") is not True:
        _set(out, "data.loader.pin_memory", d.get("pin_memory"))
    elif "pin_memory" in d:  # pinned memory only helps copies to a GPU; torch warns about it on a CPU run
        notes.append("dataset.pin_memory=true -> data.loader.pin_memory unset (on when training on CUDA)")


def _checkpoint(c: _Section, out: dict[str, Any], notes: list[str]) -> None:
    if "save_dir" in c:
        save_dir = PurePath(str(c.get("save_dir")))
        if not save_dir.name or save_dir.name in (".", ".."):
            raise ConfigError(f"seed-003 config: checkpoint.save_dir={c.get('save_dir')!r} does not name a folder")
        _set(out, "output.root", str(save_dir.parent))
        out["name"] = save_dir.name
        notes.append(f"checkpoint.save_dir={save_dir} -> output.root={save_dir.parent}, name={save_dir.name}: the "
                     "whole run (checkpoints/, logs, metrics) goes into that folder")
    if "save_frequency" in c:
        every = c.get("save_frequency")
        _set(out, "train.checkpoint_every", every if every else None)
    if "metric" in c:
        metric = _select_metric(c.get("metric"))
        _set(out, "eval.select", metric)
        if metric == "mAP":
            notes.append(f"checkpoint.metric={c.get('metric')} -> eval.select=mAP: COCO AP@[0.5:0.95] here (the "
                         "seed's 'mAP' was an F1 score)")
    if "save_best" in c and not c.get("save_best"):
        notes.append("checkpoint.save_best=false: checkpoints/best.pt is always kept here (chosen by eval.select)")
    for key in ("keep_last_lightweight", "save_every_epoch"):
        if key in c:
            notes.append(f"checkpoint.{key} has no equivalent: checkpoints/last.pt (full state, for --resume) is "
                         "written every epoch and epoch_N.pt copies every train.checkpoint_every epochs")


def _evaluation(e: _Section, out: dict[str, Any], notes: list[str]) -> None:
    if "iou_thresholds" in e:
        notes.append(f"evaluation.iou_thresholds={e.get('iou_thresholds')}: the COCO evaluation reports AP at 0.5 "
                     "(mAP_50) and 0.75 (mAP_75) besides AP@[0.5:0.95] (mAP)")
    if "max_detections" in e:
        _set(out, "model.detector.detections_per_img", e.get("max_detections"))
    if "val_frequency" in e:
        _set(out, "train.val_every", e.get("val_frequency"))


def _logging(lg: _Section, out: dict[str, Any], notes: list[str]) -> None:
    if "log_dir" in lg:
        notes.append(f"logging.log_dir={lg.get('log_dir')} ignored: TensorBoard events and training.log are "
                     "written in the run directory (<output.root>/<name>)")
    if "tensorboard" in lg:
        _set(out, "output.tensorboard", lg.flag("tensorboard"))
    for seed_key, ours in (("mlflow", "enabled"), ("mlflow_tracking_uri", "tracking_uri"),
                           ("mlflow_experiment_name", "experiment"), ("mlflow_log_models", "log_models")):
        if seed_key in lg:
            _set(out, f"output.mlflow.{ours}", lg.get(seed_key))
    if "print_frequency" in lg:
        _set(out, "train.print_every", lg.get("print_frequency"))
    if "log_every_n_steps" in lg:
        _set(out, "train.log_every", lg.get("log_every_n_steps"))
