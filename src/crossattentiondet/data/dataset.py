"""From a config to DataLoaders: :func:`prepare_data` (what the training engine calls) and its parts.

``prepare_data`` opens the source (or builds the synthetic one), checks it, splits it, resolves modality
scales and class names, and returns :class:`PreparedData`, which makes Datasets and DataLoaders.

Reproducible shuffling and augmentation that survive resume and persistent workers: the training sampler
(:class:`EpochShuffleSampler`) draws its permutation from ``seed + epoch`` and yields ``(epoch, index)``
pairs; the dataset seeds each sample's generator with ``[seed, epoch, index]``. Nothing depends on worker
state, so epoch E of a resumed run sees the same order and the same augmentations as uninterrupted.
Call ``loader.set_epoch(epoch)`` before each epoch.

Frame-mixing augmentation (mosaic, copy-paste) needs other frames of the split: a transform whose
``uses_donors`` is true is called as ``transform(sample, rng, donors=FrameDonors(...))``, and the donors are
drawn with that same per-sample generator and read through the same source (all modalities together), so a
sample is still a function of (seed, epoch, index) alone, in any worker.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from crossattentiondet.config import ConfigError, ExperimentConfig, ModalityConfig, ModelConfig
from crossattentiondet.data.checks import CheckReport, check_dataset
from crossattentiondet.data.sample import Sample, to_model_input
from crossattentiondet.data.source import DataSource, open_source
from crossattentiondet.data.splits import make_splits, read_split_json, split_settings, write_split_json
from crossattentiondet.errors import DataError

Transform = Callable[[Sample, np.random.Generator], Sample]
SYNTHETIC_FORMAT = "npy"
SYNTHETIC_VERSION = 1  # bump when the generator's output changes, so caches are rebuilt


# ------------------------------------------------------------------------------------------ dataset
class DonorReadError(DataError):
    """A donor frame (mosaic / copy-paste) could not be read; the dataset handles it like its own frame."""


class FrameDonors:
    """``donors(rng, count)``: other frames of a split, raw (no augmentation), for mosaic and copy-paste.

    ``count`` distinct indices other than ``index`` are drawn with ``rng`` (with replacement only when the
    split has fewer other frames; a one-frame split lends the frame itself), so donors depend only on the
    generator's state. Created per item inside the worker: nothing here is pickled or shared.
    """

    def __init__(self, source: DataSource, stems: list[str], index: int) -> None:
        self.source, self.stems, self.index = source, stems, int(index)

    def __call__(self, rng: np.random.Generator, count: int) -> list[Sample]:
        others = len(self.stems) - 1
        if others < 1:
            picks = [self.index] * count
        else:
            draws = rng.choice(others, size=count, replace=count > others)
            picks = [int(d) + (int(d) >= self.index) for d in draws]  # skip the frame's own index
        return [self._read(self.stems[i]) for i in picks]

    def _read(self, stem: str) -> Sample:
        try:
            return self.source.read(stem)
        except DataError as err:
            raise DonorReadError(f"{err} (read as a mosaic / copy-paste donor)") from None


class SkipCounter:
    """A count shared with DataLoader worker processes (samples dropped because they could not be read).

    A shared-memory tensor with one slot per process (main process + worker ids), so increments never
    race and the counter travels to fork, spawn and forkserver workers alike.
    """

    SLOTS = 257

    def __init__(self) -> None:
        self._slots = torch.zeros(self.SLOTS, dtype=torch.int64).share_memory_()

    def increment(self) -> None:
        worker = torch.utils.data.get_worker_info()
        slot = 0 if worker is None else 1 + worker.id % (self.SLOTS - 1)
        self._slots[slot] += 1

    @property
    def value(self) -> int:
        return int(self._slots.sum())


class DetectionDataset(Dataset):
    """Frames of one split as ``(image, target, meta)``.

    ``image, target = to_model_input(sample, modality_order, image_id)``; ``meta`` = stem, image_id and the
    frame's height and width on disk. Indices are ints or ``(epoch, index)`` pairs (from
    :class:`EpochShuffleSampler`); the transform gets ``np.random.default_rng([seed, epoch, index])``, and
    :class:`FrameDonors` of this dataset's frames when it ``uses_donors`` (mosaic, copy-paste).
    A frame (or a donor frame) that cannot be read raises DataError naming the file, or with
    ``on_error="skip"`` returns None (dropped by :func:`detection_collate`) and is counted in ``skip_counter``.
    """

    def __init__(self, source: DataSource, stems: list[str], modality_order: list[str], image_ids: dict[str, int],
                 transform: Transform, *, seed: int = 0, on_error: str = "fail",
                 skip_counter: SkipCounter | None = None) -> None:
        self.source = source
        self.stems = list(stems)
        self.modality_order = list(modality_order)
        self.image_ids = image_ids
        self.transform = transform
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF  # the generator wants non-negative entropy
        self.on_error = on_error
        self.skip_counter = skip_counter or SkipCounter()

    def __len__(self) -> int:
        return len(self.stems)

    def sample_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator a sample's transform gets: depends only on seed, epoch and index."""
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]] | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        stem = self.stems[index]
        try:
            sample = self.source.read(stem)
        except DataError as err:
            if self.on_error == "skip":
                self.skip_counter.increment()
                return None
            # a plain DataError (one string argument) so that a DataLoader worker can rebuild it
            raise DataError(str(err)) from None
        height, width = sample.height, sample.width
        rng = self.sample_rng(epoch, index)
        if getattr(self.transform, "uses_donors", False):
            try:
                sample = self.transform(sample, rng, donors=FrameDonors(self.source, self.stems, index))
            except DonorReadError as err:
                if self.on_error == "skip":
                    self.skip_counter.increment()
                    return None
                raise DataError(str(err)) from None
        else:
            sample = self.transform(sample, rng)
        image_id = self.image_ids[stem]
        image, target = to_model_input(sample, self.modality_order, image_id)
        meta = {"stem": stem, "image_id": image_id, "height": height, "width": width}
        return image, target, meta


def detection_collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """``(images, targets, metas)`` as lists (images may differ in size); None items (skipped) are dropped.

    A batch whose every item was skipped comes out as three empty lists.
    """
    items = [item for item in batch if item is not None]
    return [i[0] for i in items], [i[1] for i in items], [i[2] for i in items]


# ------------------------------------------------------------------------------------------ samplers
def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("distributed=True needs torch.distributed to be initialised (torchrun), "
                          "or rank and world_size")
    return dist.get_rank(), dist.get_world_size()


class EpochShuffleSampler(Sampler):
    """Shuffled indices from ``seed + epoch``, yielded as ``(epoch, index)``; sharded over ranks.

    Like DistributedSampler: with ``world_size > 1`` the permutation is padded (repeating its start) to a
    multiple of ``world_size`` and rank r takes every world_size-th index from r. ``shuffle=False`` keeps
    the natural order (still as pairs).
    """

    def __init__(self, size: int, seed: int = 0, *, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating each epoch)."""
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.world_size > 1 and order:
            total = math.ceil(self.size / self.world_size) * self.world_size
            while len(order) < total:
                order += order[: total - len(order)]
            order = order[self.rank:total:self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in self.indices()])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size) if self.size else 0


class ShardedSequentialSampler(Sampler):
    """Evaluation order: 0..N-1, rank r taking every world_size-th frame (no padding, nothing counted twice)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


class AspectRatioBatchSampler(Sampler):
    """Batches of frames with the same orientation (landscape: width >= height), in the sampler's order.

    Each orientation fills its own batch; leftovers come at the end (dropped with ``drop_last``).
    """

    def __init__(self, sampler: Sampler, landscape: list[bool], batch_size: int, drop_last: bool = False) -> None:
        self.sampler, self.landscape = sampler, landscape
        self.batch_size, self.drop_last = batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        """Forward to the index sampler (so ``loader.batch_sampler.set_epoch`` works too)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    @staticmethod
    def _index(item: Any) -> int:
        return item[1] if isinstance(item, tuple) else item

    def __iter__(self) -> Iterator[list[Any]]:
        buckets: dict[bool, list[Any]] = {True: [], False: []}
        for item in self.sampler:
            bucket = buckets[self.landscape[self._index(item)]]
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
        if not self.drop_last:
            for bucket in buckets.values():
                if bucket:
                    yield list(bucket)

    def __len__(self) -> int:
        wide = sum(1 for item in self.sampler if self.landscape[self._index(item)])
        tall = len(self.sampler) - wide  # type: ignore[arg-type]
        if self.drop_last:
            return wide // self.batch_size + tall // self.batch_size
        return math.ceil(wide / self.batch_size) + math.ceil(tall / self.batch_size)


class EpochBatchSampler(Sampler):
    """Plain batches over an :class:`EpochShuffleSampler` or sequential sampler."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        """Forward to the index sampler (so ``loader.batch_sampler.set_epoch`` works too)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[Any]]:
        batch: list[Any] = []
        for item in self.sampler:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def _worker_init(worker_id: int) -> None:
    # each worker decodes one image at a time: nested OpenCV / torch threads would only oversubscribe cores
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _worker_message(err: DataError) -> str:
    """The original message of a DataError re-raised from a worker (drop torch's traceback text)."""
    text = str(err)
    if "Traceback" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        if "DataError: " in line:
            return line.split("DataError: ", 1)[1]
    return text.strip().splitlines()[-1]


def _shutdown(iterator: Any) -> None:
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


class DetectionLoader(DataLoader):
    """A DataLoader with ``set_epoch`` and clean one-line DataErrors from worker processes."""

    epoch_sampler: EpochShuffleSampler | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation and augmentation seeds (no-op for evaluation loaders)."""
        if self.epoch_sampler is not None:
            self.epoch_sampler.set_epoch(epoch)
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def close(self) -> None:
        """Stop persistent worker processes now (they would otherwise live until garbage collection)."""
        _shutdown(getattr(self, "_iterator", None))
        self._iterator = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except DataError as err:
                # stop the workers now: the exception's traceback keeps the iterator alive, and a shutdown
                # left to a later garbage collection can stall whatever thread happens to run it
                _shutdown(iterator)
                if self.persistent_workers:
                    self._iterator = None
                raise DataError(_worker_message(err)) from None
            yield batch


# ------------------------------------------------------------------------------------------ prepared
@dataclass
class PreparedData:
    """A checked, split data set ready for training and evaluation (from :func:`prepare_data`)."""

    source: DataSource
    class_names: list[str]
    splits: dict[str, list[str]]
    layout: str
    root: Path
    skipped: int
    resolved_config: ExperimentConfig
    report: CheckReport
    image_ids: dict[str, int] = field(default_factory=dict)
    skip_counter: SkipCounter = field(default_factory=SkipCounter)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def modalities(self) -> list[ModalityConfig]:
        """Effective modalities with explicit scales, in model input order."""
        return list(self.resolved_config.data.modalities)

    @property
    def input_spec(self) -> list[Any]:
        """Each modality's channels, file dtype and scale (stored in checkpoints; see data/inputs.py)."""
        from crossattentiondet.data.inputs import input_spec

        return input_spec(self.modalities, self.report.dtypes)

    @property
    def modality_order(self) -> list[str]:
        return [m.name for m in self.resolved_config.data.modalities]

    @property
    def read_failures(self) -> int:
        """Samples dropped while loading (``data.on_error=skip``), across all loaders and workers."""
        return self.skip_counter.value

    def _split(self, split: str) -> list[str]:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r} (train, val or test)")
        return self.splits[split]

    def dataset(self, split: str, train: bool, *, seed: int = 0, transform: Transform | None = None
                ) -> DetectionDataset:
        """The frames of ``split``; ``train`` selects the augmenting transform (``build_transforms``)."""
        if transform is None:
            from crossattentiondet.data.transforms import build_transforms

            config = self.resolved_config
            transform = build_transforms(config.data.augment, self.modalities, train,
                                         used=config.model.used_modalities(), class_names=self.class_names)
        return DetectionDataset(self.source, self._split(split), self.modality_order, self.image_ids, transform,
                                seed=seed, on_error=self.resolved_config.data.on_error, skip_counter=self.skip_counter)

    def loader(self, split: str, train: bool, batch_size: int, *, distributed: bool = False, seed: int = 0,
               drop_last: bool = False, transform: Transform | None = None, rank: int | None = None,
               world_size: int | None = None) -> DetectionLoader:
        """A DataLoader over ``split``: shuffled per epoch and augmented when ``train``, sequential otherwise.

        ``distributed`` shards over torch.distributed ranks (or the given ``rank`` / ``world_size``).
        Worker, pinning and prefetch settings come from ``data.loader``.
        """
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        dataset = self.dataset(split, train, seed=seed, transform=transform)
        settings = self.resolved_config.data.loader
        landscape = None
        if train and settings.aspect_ratio_grouping:
            infos = self.report.infos
            landscape = [infos[s].width >= infos[s].height for s in dataset.stems]
        return epoch_loader(dataset, split, train, batch_size, settings, collate_fn=detection_collate,
                            distributed=distributed, seed=seed, drop_last=drop_last, rank=rank,
                            world_size=world_size, landscape=landscape)


def epoch_loader(dataset: Dataset, split: str, train: bool, batch_size: int, settings: Any, *,
                 collate_fn: Callable[[list[Any]], Any], distributed: bool = False, seed: int = 0,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None,
                 landscape: list[bool] | None = None) -> DetectionLoader:
    """The loader both tasks use: shuffled per epoch (seeded, resumable) when ``train``, sequential otherwise,
    sharded over DDP ranks when ``distributed``; ``settings`` = ``data.loader``; ``landscape`` (per frame)
    groups training batches by orientation."""
    rank_, world = _dist_rank_world(rank, world_size) if distributed else (0, 1)
    epoch_sampler = None
    if train:
        epoch_sampler = EpochShuffleSampler(len(dataset), seed, shuffle=True, rank=rank_, world_size=world)
        sampler: Sampler = epoch_sampler
    else:
        sampler = ShardedSequentialSampler(len(dataset), rank_, world)
    if landscape is not None:
        batch_sampler: Sampler = AspectRatioBatchSampler(sampler, landscape, batch_size, drop_last)
    else:
        batch_sampler = EpochBatchSampler(sampler, batch_size, drop_last)
    workers = settings.num_workers
    pin = settings.pin_memory if settings.pin_memory is not None else torch.cuda.is_available()
    # The loader's own generator: without one, every new iterator (each epoch, or only the first one with
    # persistent workers) draws its worker base seed from the global torch RNG, so a resumed process would
    # consume that RNG differently from the uninterrupted run and shift RPN/RoI sampling and drop-path.
    # (Worker seeds themselves do not matter here: each sample's augmentation has its own generator.)
    generator = torch.Generator()
    generator.manual_seed(seed + zlib.crc32(split.encode()))
    loader = DetectionLoader(
        dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=workers,
        pin_memory=pin, persistent_workers=settings.persistent_workers and workers > 0,
        prefetch_factor=settings.prefetch_factor if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None, generator=generator)
    loader.epoch_sampler = epoch_sampler
    return loader


# ------------------------------------------------------------------------------------------ synthetic
def synthetic_root(config: ExperimentConfig) -> Path:
    """Where the built-in synthetic data set lives: ``data.synthetic.cache_dir`` or a hashed cache folder."""
    syn = config.data.synthetic
    if syn.cache_dir:
        return Path(syn.cache_dir)
    key = json.dumps({"images": syn.images, "size": list(syn.size), "classes": syn.classes, "seed": syn.seed,
                      "format": SYNTHETIC_FORMAT, "version": SYNTHETIC_VERSION}, sort_keys=True)
    return Path(config.output.root) / "_synthetic" / hashlib.sha1(key.encode()).hexdigest()[:12]


def _synthetic_params(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "synth.json").read_text(encoding="utf-8")).get("params")
    except (OSError, ValueError, AttributeError):
        return None


def ensure_synthetic(config: ExperimentConfig, log: Callable[[str], None] = print) -> Path:
    """Generate the synthetic data set unless it is already there; return its root.

    Generated into a temporary folder and renamed into place, so concurrent processes (DDP ranks, parallel
    study runs) can race: one rename wins, the others use its result.
    """
    syn = config.data.synthetic
    root = synthetic_root(config)
    wanted = {"images": syn.images, "size": list(syn.size), "classes": syn.classes, "format": SYNTHETIC_FORMAT,
              "seed": syn.seed}
    params = _synthetic_params(root)
    if params is not None:
        if params != wanted:
            raise DataError(f"{root}: holds a synthetic data set made with {params}, the config asks for {wanted}; "
                            "remove it or choose another data.synthetic.cache_dir")
        return root
    if root.exists() and root.is_dir() and any(root.iterdir()):
        raise DataError(f"{root}: data.synthetic.cache_dir is not empty and holds no synthetic data set")
    synth = importlib.import_module("crossattentiondet.data.synth")
    log(f"data: generating the synthetic data set ({syn.images} frames, {syn.size[0]}x{syn.size[1]}, "
        f"{syn.classes} classes, seed {syn.seed}) in {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        out = synth.generate_dataset(staging / "data", syn.images, tuple(syn.size), syn.classes, SYNTHETIC_FORMAT,
                                     syn.seed)
        try:
            os.rename(out, root)  # atomic; fails if another process got there first (non-empty target)
        except OSError:
            if _synthetic_params(root) != wanted:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


# ------------------------------------------------------------------------------------------ prepare
def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _resolve_config(config: ExperimentConfig, source: DataSource, scales: dict[str, float], class_names: list[str],
                    log: Callable[[str], None]) -> ExperimentConfig:
    raw = config.model_dump(mode="json")
    raw["data"]["modalities"] = [m.model_copy(update={"scale": scales[m.name]}).model_dump(mode="json")
                                 for m in source.modalities]
    raw["data"]["layout"] = source.layout
    raw["data"]["names"] = list(class_names)
    names = set(scales)
    streams = [[m for m in stream if m in names] for stream in config.model.streams]
    if streams != config.model.streams:
        if any(not s for s in streams) and config.model.streams == ModelConfig.model_fields["streams"].default:
            # the default two streams on a one-modality data set (COD10K: rgb only): one stream of what is there
            streams = [s for s in streams if s]
        if not streams or any(not s for s in streams):
            raise ConfigError(f"model.streams {config.model.streams} need modalities this data set lacks "
                              f"(it has {sorted(names)}); set model.streams")
        log(f"data: model.streams {config.model.streams} -> {streams} (modalities of this data set)")
        raw["model"]["streams"] = streams
    raw["model"]["zero_modalities"] = [m for m in config.model.zero_modalities if m in names]
    augment = raw["data"]["augment"]
    for key in ("rgb_modalities", "thermal_modalities"):
        augment[key] = [m for m in augment[key] if m in names]
    if config.model.num_classes is None:
        raw["model"]["num_classes"] = len(class_names)
    elif config.model.num_classes < len(class_names):
        raise ConfigError(f"model.num_classes={config.model.num_classes} but the data has {len(class_names)} "
                          f"classes {class_names}")
    return ExperimentConfig.model_validate(raw)


def prepare_data(config: ExperimentConfig, run_dir: Path | None = None, log: Callable[[str], None] = print
                 ) -> PreparedData:
    """Open, check and split the configured data set (the synthetic one when ``data.root`` is None).

    Errors found by the check raise DataError (count + first problems) unless ``data.on_error=skip``, which
    leaves the bad frames out and logs how many. Frames without boxes are negatives, kept unless
    ``data.keep_empty`` is false. The split is written to ``run_dir/split.json`` (and reused from there when
    it was made with the same settings, so a resumed run keeps its split even if files were added).
    """
    data = config.data
    root = Path(data.root) if data.root is not None else ensure_synthetic(config, log)
    source = open_source(root, data)
    for note in source.notes:
        log(f"data: {note}")
    report = check_dataset(source)
    if report.fatal or (report.errors and data.on_error == "fail"):
        hint = "" if report.fatal else "; fix them or set data.on_error=skip to leave those frames out"
        raise DataError(f"data check of {root} failed{hint}: {report.describe_errors()}")
    others = []
    for problem in report.warnings:
        if problem.kind == "no_boxes":  # never only an "e.g.": this one makes the whole run meaningless
            log(f"data: warning: {problem}")
        else:
            others.append(problem)
    if others:
        log(f"data: {len(others)} warnings, e.g. {others[0]}")
    bad = report.bad_stems
    if bad:
        log(f"data: skipping {len(bad)} of {report.frames} frames with errors (data.on_error=skip), e.g. "
            f"{report.errors[0]}")
    usable = [s for s in source.stems if s not in bad]
    if not data.keep_empty:
        negatives = [s for s in usable if report.infos[s].boxes == 0]
        if negatives:
            log(f"data: leaving out {len(negatives)} frames without boxes (data.keep_empty=false)")
        usable = [s for s in usable if report.infos[s].boxes > 0]
    if not usable:
        raise DataError(f"{root}: no usable frames ({report.summary()})")
    splits = _make_or_reuse_split(config, source, usable, run_dir, log)
    resolved = _resolve_config(config, source, report.scales, source.class_names, log)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    log(f"data: {source.layout} layout at {root}: {len(usable)} frames ({report.negatives} without boxes), "
        f"{len(source.class_names)} classes {source.class_names}, scales {report.scales}; split {counts}")
    return PreparedData(source=source, class_names=list(source.class_names), splits=splits, layout=source.layout,
                        root=root, skipped=len(bad), resolved_config=resolved, report=report,
                        image_ids={stem: i for i, stem in enumerate(source.stems)})


def _make_or_reuse_split(config: ExperimentConfig, source: DataSource, usable: list[str], run_dir: Path | None,
                         log: Callable[[str], None]) -> dict[str, list[str]]:
    split_cfg = config.data.split
    path = Path(run_dir) / "split.json" if run_dir is not None else None
    if path is not None and path.is_file():
        stored = read_split_json(path)
        if stored.get("settings") == split_settings(split_cfg) and stored.get("root") == str(source.root):
            splits = {k: list(v) for k, v in stored["splits"].items()}
            gone = sorted({s for v in splits.values() for s in v} - set(usable))
            if gone:
                raise DataError(f"{path}: {len(gone)} frames of the stored split are missing or unusable now "
                                f"(first: {', '.join(gone[:3])}); fix the data or start a new run")
            log(f"data: reusing the split in {path}")
            return splits
        log(f"data: {path} was made with other split settings or data; writing a new split")
    suffixes = sorted({m.suffix for m in source.modalities if m.suffix}, key=len, reverse=True)
    plan = make_splits(usable, split_cfg, partitions=source.partitions, known=set(source.stems), root=source.root,
                       suffixes=suffixes)
    for note in plan.notes:
        log(f"data: {note}")
    if path is not None and _is_rank_zero():
        write_split_json(path, plan, split_cfg, root=source.root, layout=source.layout)
    return plan.splits
