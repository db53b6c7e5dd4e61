"""Segmentation data: check, split and load masks (the task's half of the prepared-data protocol).

:func:`prepare_seg_data` opens a segmentation layout (``segmentation/layouts.py``), checks every frame and
mask at once (``segmentation/checks.py``), splits honestly (validation from the training partition, never
from a test set) and returns :class:`PreparedSegData`, whose ``loader`` yields ``(images, targets, metas)``
like detection's: ``images`` raw uint8/uint16 (C, H, W) tensors at the model's input size
(``model.seg.resize`` / ``model.seg.size``), ``targets[i]["mask"]`` a uint8 (H, W) tensor of class ids
(255 = ignore) and ``metas[i]`` stem, test set, the frame's own size and the valid (unpadded) input region.

Training masks are resized with the image (nearest neighbour); evaluation masks keep the ground truth's own
resolution, so metrics are computed there (predictions are resized back), never at the training size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from crossattentiondet.config import ConfigError, ExperimentConfig, ModalityConfig
from crossattentiondet.data.dataset import (
    DetectionLoader,
    SkipCounter,
    _is_rank_zero,
    _resolve_config,
    epoch_loader,
)
from crossattentiondet.data.transforms import Transform, build_transforms, detection_only_options, identity
from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json, read_json

SPLIT_FILE = "split.json"


# ------------------------------------------------------------------------------------------ dataset
class SegmentationDataset(Dataset):
    """Frames of one split as ``(image, target, meta)`` (see the module docstring).

    Indices are ints or ``(epoch, index)`` pairs; the augmentation gets ``default_rng([seed, epoch, index])``,
    so augmented epochs are reproducible and a resumed run sees the same samples.
    """

    def __init__(self, source: Any, stems: list[str], modality_order: list[str], transform: Transform, *,
                 resize: str, size: int, train: bool, seed: int = 0, on_error: str = "fail",
                 skip_counter: SkipCounter | None = None) -> None:
        self.source = source
        self.stems = list(stems)
        self.modality_order = list(modality_order)
        self.transform = transform
        self.resize, self.size, self.train = resize, int(size), train
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.on_error = on_error
        self.skip_counter = skip_counter or SkipCounter()

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]] | None:
        from crossattentiondet.segmentation.resize import resize_sample

        epoch, index = key if isinstance(key, tuple) else (0, key)
        stem = self.stems[index]
        try:
            sample = self.source.read(stem)
        except DataError as err:
            if self.on_error == "skip":
                self.skip_counter.increment()
                return None
            raise DataError(str(err)) from None
        height, width = sample.height, sample.width
        sample = self.transform(sample, np.random.default_rng([self.seed, int(epoch), int(index)]))
        # training: the mask is resized with the image; evaluation: it keeps the GT's own resolution
        gt = sample.mask
        sample, info = resize_sample(sample, self.resize, self.size, resize_mask=self.train)
        mask = sample.mask if self.train else gt
        image = _stack(sample.modalities, self.modality_order)
        target = {"mask": torch.from_numpy(np.ascontiguousarray(mask))}
        meta = {"stem": stem, "set": self.source.items[stem].set, "height": height, "width": width,
                "valid_hw": tuple(info.valid_hw), "orig_hw": tuple(info.orig_hw)}
        return image, target, meta


def _stack(modalities: dict[str, np.ndarray], order: list[str]) -> torch.Tensor:
    arrays = [modalities[name] if modalities[name].ndim == 3 else modalities[name][..., None] for name in order]
    dtype = np.uint16 if any(a.dtype == np.uint16 for a in arrays) else np.uint8
    stacked = np.concatenate([a.astype(dtype, copy=False) for a in arrays], axis=2)
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(2, 0, 1)))


def seg_collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """Lists like detection's; images (and training masks) of different sizes are padded bottom/right to
    the batch's largest (images with 0, masks with 255 = ignore), so the model can stack them."""
    items = [item for item in batch if item is not None]
    if not items:
        return [], [], []
    images = [i[0] for i in items]
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    targets = [i[1] for i in items]
    if any(img.shape[1:] != (height, width) for img in images):
        images = [torch.nn.functional.pad(img, (0, width - img.shape[2], 0, height - img.shape[1])) for img in images]
        targets = [{"mask": _pad_mask(t["mask"], height, width)} if t["mask"].shape == img.shape[1:] else t
                   for t, img in zip(targets, (i[0] for i in items))]
    return images, targets, [i[2] for i in items]


def _pad_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    out = torch.full((height, width), 255, dtype=mask.dtype)
    out[: mask.shape[0], : mask.shape[1]] = mask
    return out


# ------------------------------------------------------------------------------------------ prepared
@dataclass
class PreparedSegData:
    """A checked, split segmentation data set (from :func:`prepare_seg_data`); the trainer's data object."""

    source: Any
    class_names: list[str]
    splits: dict[str, list[str]]
    layout: str
    root: Path
    binary: bool
    skipped: int
    resolved_config: ExperimentConfig
    report: Any
    skip_counter: SkipCounter = field(default_factory=SkipCounter)

    @property
    def num_classes(self) -> int:
        """Classes including background (binary COD: 2, one logit map)."""
        return len(self.class_names)

    @property
    def modalities(self) -> list[ModalityConfig]:
        return list(self.resolved_config.data.modalities)

    @property
    def modality_order(self) -> list[str]:
        return [m.name for m in self.resolved_config.data.modalities]

    @property
    def input_spec(self) -> list[Any]:
        from crossattentiondet.data.inputs import input_spec

        return input_spec(self.modalities, self.report.dtypes)

    @property
    def read_failures(self) -> int:
        return self.skip_counter.value

    def sets(self, split: str) -> dict[str, list[str]]:
        """The frames of ``split`` by test set (sinet: CAMO, COD10K, ...; other layouts: one set)."""
        out: dict[str, list[str]] = {}
        for stem in self._split(split):
            out.setdefault(self.source.items[stem].set, []).append(stem)
        return out

    def _split(self, split: str) -> list[str]:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r} (train, val or test)")
        return self.splits[split]

    def dataset(self, split: str, train: bool, *, seed: int = 0, transform: Transform | None = None,
                stems: list[str] | None = None) -> SegmentationDataset:
        config = self.resolved_config
        detection_only = detection_only_options(config.data.augment) if train else []
        if detection_only:  # here, not inside a loader worker, where the message would carry a traceback
            raise ConfigError(f"{', '.join(detection_only)}: detection only (objects are pasted with their boxes); "
                              "turn them off for task=segment")
        if transform is None:
            transform = build_transforms(config.data.augment, self.modalities, train,
                                         used=config.model.used_modalities()) if train else identity
        return SegmentationDataset(self.source, stems if stems is not None else self._split(split),
                                   self.modality_order, transform, resize=config.model.seg.resize,
                                   size=config.model.seg.size, train=train, seed=seed,
                                   on_error=config.data.on_error, skip_counter=self.skip_counter)

    def loader(self, split: str, train: bool, batch_size: int, *, distributed: bool = False, seed: int = 0,
               drop_last: bool = False, transform: Transform | None = None, rank: int | None = None,
               world_size: int | None = None, stems: list[str] | None = None) -> DetectionLoader:
        """A DataLoader over ``split`` (or the given ``stems`` of it): shuffled per epoch and augmented when
        ``train``, sequential otherwise; sharded over DDP ranks when ``distributed``."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        dataset = self.dataset(split, train, seed=seed, transform=transform, stems=stems)
        return epoch_loader(dataset, split, train, batch_size, self.resolved_config.data.loader,
                            collate_fn=seg_collate, distributed=distributed, seed=seed, drop_last=drop_last,
                            rank=rank, world_size=world_size)


# ------------------------------------------------------------------------------------------ synthetic
def seg_synthetic_root(config: ExperimentConfig) -> Path:
    """Where the synthetic camouflaged scenes live: ``data.synthetic.cache_dir`` or a hashed cache folder."""
    from crossattentiondet.segmentation.synth import SEG_SYNTH_VERSION

    syn = config.data.synthetic
    if syn.cache_dir:
        return Path(syn.cache_dir)
    key = json.dumps({"task": "segment", "images": syn.images, "size": list(syn.size), "seed": syn.seed,
                      "version": SEG_SYNTH_VERSION}, sort_keys=True)
    return Path(config.output.root) / "_synthetic" / f"seg-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def ensure_seg_synthetic(config: ExperimentConfig, log: Callable[[str], None] = print) -> Path:
    """Generate the synthetic camouflaged scenes unless they are there (atomic rename, as for detection)."""
    from crossattentiondet.segmentation.synth import generate_seg_dataset

    syn = config.data.synthetic
    root = seg_synthetic_root(config)
    wanted = {"images": syn.images, "size": list(syn.size), "seed": syn.seed}
    params = _synth_params(root)
    if params is not None:
        if {k: params.get(k) for k in wanted} != wanted:
            raise DataError(f"{root}: holds synthetic scenes made with {params}, the config asks for {wanted}; "
                            "remove it or choose another data.synthetic.cache_dir")
        return root
    if root.is_dir() and any(root.iterdir()):
        raise DataError(f"{root}: data.synthetic.cache_dir is not empty and holds no synthetic scenes")
    log(f"data: generating synthetic camouflaged scenes ({syn.images} frames, {syn.size[0]}x{syn.size[1]}, "
        f"seed {syn.seed}) in {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        out = generate_seg_dataset(staging / "data", syn.images, tuple(syn.size), syn.seed)
        try:
            os.rename(out, root)
        except OSError:
            if _synth_params(root) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _synth_params(root: Path) -> dict[str, Any] | None:
    try:
        params = json.loads((root / "synth.json").read_text(encoding="utf-8")).get("params")
        return params if isinstance(params, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------ prepare
def prepare_seg_data(config: ExperimentConfig, run_dir: Path | None = None, log: Callable[[str], None] = print
                     ) -> PreparedSegData:
    """Open, check and split the configured segmentation data (synthetic scenes when ``data.root`` is None).

    Every problem is found at once; errors raise DataError (count + first problems) unless
    ``data.on_error=skip``, which leaves those frames out and logs how many. The split is stored in
    ``run_dir/split.json`` and reused from there (a resumed run keeps its split).
    """
    from crossattentiondet.segmentation.checks import check_seg_source
    from crossattentiondet.segmentation.layouts import open_seg_source

    data = config.data
    root = Path(data.root) if data.root is not None else ensure_seg_synthetic(config, log)
    source = open_seg_source(root, data)
    for note in source.notes:
        log(f"data: {note}")
    report = check_seg_source(source)
    errors = report.errors
    if errors and data.on_error == "fail":
        raise DataError(f"data check of {root} failed; fix them or set data.on_error=skip to leave those frames "
                        f"out: {report.describe_errors()}")
    warnings = report.warnings
    if warnings:
        log(f"data: {len(warnings)} warnings, e.g. {warnings[0]}")
    if report.empty_masks:
        log(f"data: {report.empty_masks} of {report.frames} masks are empty (no foreground)")
    bad = {p.stem for p in errors if p.stem is not None}
    if any(p.stem is None for p in errors):
        raise DataError(f"data check of {root} failed: {report.describe_errors()}")
    if bad:
        log(f"data: skipping {len(bad)} frames with errors (data.on_error=skip), e.g. {errors[0]}")
    usable = [s for s in source.items if s not in bad]
    if not usable:
        raise DataError(f"{root}: no usable frames")
    wanted = config.model.num_classes
    if wanted is not None and wanted != len(source.class_names):
        raise ConfigError(f"model.num_classes={wanted}, but {root} has {len(source.class_names)} classes "
                          f"{source.class_names} (segmentation counts the background); leave it unset")
    splits = _make_or_reuse_split(config, source, usable, run_dir, log)
    resolved = _resolve_config(config, source, report.scales, source.class_names, log)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    sets = sorted({source.items[s].set for s in splits.get("test", [])})
    log(f"data: {source.layout} layout at {root}: {len(usable)} frames, {len(source.class_names)} classes "
        f"{source.class_names}{' (binary)' if source.binary else ''}, scales {report.scales}; split {counts}"
        + (f"; test sets {', '.join(sets)}" if len(sets) > 1 else ""))
    return PreparedSegData(source=source, class_names=list(source.class_names), splits=splits,
                           layout=source.layout, root=root, binary=bool(source.binary), skipped=len(bad),
                           resolved_config=resolved, report=report)


def _make_or_reuse_split(config: ExperimentConfig, source: Any, usable: list[str], run_dir: Path | None,
                         log: Callable[[str], None]) -> dict[str, list[str]]:
    from crossattentiondet.data.splits import split_settings
    from crossattentiondet.segmentation.layouts import seg_splits

    settings = split_settings(config.data.split)
    path = Path(run_dir) / SPLIT_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        stored = read_json(path)
        if stored.get("settings") == settings and stored.get("root") == str(source.root):
            splits = {k: list(v) for k, v in stored["splits"].items()}
            gone = sorted({s for v in splits.values() for s in v} - set(usable))
            if gone:
                raise DataError(f"{path}: {len(gone)} frames of the stored split are missing or unusable now "
                                f"(first: {', '.join(gone[:3])}); fix the data or start a new run")
            log(f"data: reusing the split in {path}")
            return splits
        log(f"data: {path} was made with other split settings or data; writing a new split")
    splits = seg_splits(source, config.data.split, usable, config.data.split.seed)
    if path is not None and _is_rank_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"root": str(source.root), "layout": source.layout, "settings": settings,
                                 "counts": {k: len(v) for k, v in splits.items()}, "splits": splits})
    return splits

