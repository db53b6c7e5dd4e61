"""Loading: prepare_data, dataset items, collate, the epoch-aware sampler, loaders, the synthetic cache."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from crossattentiondet.config import (
    DataConfig,
    ExperimentConfig,
    LoaderConfig,
    OutputConfig,
    SplitConfig,
    SyntheticConfig,
)
from crossattentiondet.data import (
    AspectRatioBatchSampler,
    EpochShuffleSampler,
    Sample,
    detection_collate,
    prepare_data,
    synthetic_root,
)
from crossattentiondet.errors import DataError

QUIET = {"log": lambda _: None}


def identity(sample: Sample, rng: np.random.Generator) -> Sample:
    return sample


def stamp(sample: Sample, rng: np.random.Generator) -> Sample:
    """Writes one draw of the per-sample generator into pixel (0, 0) of rgb (to observe augmentation seeds)."""
    rgb = sample.modalities["rgb"].copy()
    rgb[0, 0, 0] = rng.integers(0, 256)
    sample.modalities["rgb"] = rgb
    return sample


def no_workers(**kw) -> LoaderConfig:
    return LoaderConfig(num_workers=0, **kw)


@pytest.fixture
def tiny(trees) -> Path:
    frames = {f"frame{i:03d}": ([(i % 2, 0.5, 0.5, 0.5, 0.5)] if i % 4 else []) for i in range(12)}
    return trees.folders(frames=frames)


def test_prepare_data_fields(tiny: Path, tmp_path: Path) -> None:
    # gap 0: every frame lands in a split (the default gap leaves block borders out, tested in test_data_splits)
    config = ExperimentConfig(data=DataConfig(root=str(tiny), loader=no_workers(), split=SplitConfig(gap=0)))
    prepared = prepare_data(config, run_dir=tmp_path, **QUIET)
    assert prepared.class_names == ["person", "car"] and prepared.num_classes == 2
    assert prepared.layout == "folders" and prepared.root == tiny and prepared.skipped == 0
    assert set(prepared.splits) == {"train", "val", "test"}
    assert sorted(s for v in prepared.splits.values() for s in v) == [f"frame{i:03d}" for i in range(12)]
    assert prepared.image_ids == {f"frame{i:03d}": i for i in range(12)}
    resolved = prepared.resolved_config
    assert resolved.model.num_classes == 2 and resolved.data.names == ["person", "car"]
    assert [(m.name, m.scale) for m in resolved.data.modalities] == [("rgb", 255.0), ("thermal", 65535.0)]
    assert (tmp_path / "split.json").is_file()


def test_dataset_items(tiny: Path) -> None:
    config = ExperimentConfig(data=DataConfig(root=str(tiny), loader=no_workers()))
    prepared = prepare_data(config, **QUIET)
    stem = "frame001"
    split = next(name for name, stems in prepared.splits.items() if stem in stems)
    dataset = prepared.dataset(split, train=False, transform=identity)
    image, target, meta = dataset[dataset.stems.index(stem)]
    assert image.shape == (4, 32, 48) and image.dtype == torch.uint16  # rgb promoted, thermal 16-bit
    raw = prepared.source.read(stem)
    assert torch.equal(image[3], torch.from_numpy(raw.modalities["thermal"][:, :, 0].astype(np.uint16)))
    assert target["labels"].tolist() == [2] and target["image_id"].item() == 1
    assert torch.allclose(target["boxes"], torch.tensor([[12.0, 8.0, 36.0, 24.0]]))
    assert meta == {"stem": stem, "image_id": 1, "height": 32, "width": 48}


def test_collate_drops_skipped_items() -> None:
    item = (torch.zeros(1, 2, 2), {"boxes": torch.zeros(0, 4)}, {"stem": "a"})
    images, targets, metas = detection_collate([item, None, item])
    assert len(images) == len(targets) == len(metas) == 2
    assert detection_collate([None, None]) == ([], [], [])


def test_epoch_sampler_is_reproducible_and_resume_safe() -> None:
    sampler = EpochShuffleSampler(50, seed=7)
    sampler.set_epoch(3)
    epoch3 = list(sampler)
    assert all(epoch == 3 for epoch, _ in epoch3) and sorted(i for _, i in epoch3) == list(range(50))
    resumed = EpochShuffleSampler(50, seed=7)  # a new process after a restart
    resumed.set_epoch(3)
    assert list(resumed) == epoch3
    sampler.set_epoch(4)
    assert [i for _, i in sampler] != [i for _, i in epoch3]
    assert [i for _, i in EpochShuffleSampler(50, seed=8)] != [i for _, i in EpochShuffleSampler(50, seed=7)]


def test_epoch_sampler_shards_like_distributed_sampler() -> None:
    shards = [EpochShuffleSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    parts = [[i for _, i in s] for s in shards]
    assert [len(p) for p in parts] == [4, 4, 4] and all(len(s) == 4 for s in shards)
    flat = [i for p in parts for i in p]
    assert set(flat) == set(range(10)) and len(flat) == 12  # padded by repeating the start
    reference = torch.utils.data.DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=True, seed=1)
    reference.set_epoch(2)
    assert parts[1] == list(reference)


def test_aspect_ratio_batches_keep_one_orientation() -> None:
    landscape = [i % 3 != 0 for i in range(20)]
    sampler = EpochShuffleSampler(20, seed=0)
    batches = list(AspectRatioBatchSampler(sampler, landscape, batch_size=4))
    assert sorted(i for b in batches for _, i in b) == list(range(20))
    for batch in batches:
        assert len({landscape[i] for _, i in batch}) == 1
    assert len(AspectRatioBatchSampler(sampler, landscape, 4)) == len(batches)
    assert all(len(b) == 4 for b in AspectRatioBatchSampler(sampler, landscape, 4, drop_last=True))


def test_loader_settings_and_augmentation_seeds(tiny: Path) -> None:
    config = ExperimentConfig(data=DataConfig(root=str(tiny), loader=no_workers(aspect_ratio_grouping=True)))
    prepared = prepare_data(config, **QUIET)
    loader = prepared.loader("train", train=True, batch_size=2, seed=5, transform=stamp)
    assert loader.num_workers == 0 and not loader.persistent_workers and loader.prefetch_factor is None
    assert loader.pin_memory is torch.cuda.is_available()

    def epoch_stamps(epoch: int) -> list[tuple[str, int]]:
        loader.set_epoch(epoch)
        return [(m["stem"], int(img[0, 0, 0])) for images, _, metas in loader for img, m in zip(images, metas)]

    first = epoch_stamps(1)
    loader.set_epoch(0)
    loader.batch_sampler.set_epoch(1)  # the same, through the batch sampler (as the engine may call it)
    assert loader.epoch_sampler.epoch == 1
    assert epoch_stamps(1) == first  # same seed + epoch: same order, same augmentation draws
    assert epoch_stamps(2) != first
    fresh = prepared.loader("train", train=True, batch_size=2, seed=5, transform=stamp)
    fresh.set_epoch(1)
    assert [(m["stem"], int(i[0, 0, 0])) for images, _, metas in fresh for i, m in zip(images, metas)] == first
    evaluation = prepared.loader("val", train=False, batch_size=3, transform=identity)
    stems = [m["stem"] for _, _, metas in evaluation for m in metas]
    assert stems == prepared.splits["val"]  # sequential, in split order


def test_persistent_workers_reproduce_the_in_process_order(tiny: Path) -> None:
    config = ExperimentConfig(data=DataConfig(root=str(tiny), loader=LoaderConfig(num_workers=2)))
    prepared = prepare_data(config, **QUIET)
    with_workers = prepared.loader("train", train=True, batch_size=2, seed=5, transform=stamp)
    assert with_workers.persistent_workers and with_workers.prefetch_factor == 2
    in_process = prepare_data(config.model_copy(update={"data": config.data.model_copy(
        update={"loader": no_workers()})}), **QUIET).loader("train", train=True, batch_size=2, seed=5, transform=stamp)
    for epoch in (0, 1):
        with_workers.set_epoch(epoch)
        in_process.set_epoch(epoch)
        global_rng = torch.get_rng_state()
        a = [(m["stem"], int(i[0, 0, 0])) for images, _, metas in with_workers for i, m in zip(images, metas)]
        b = [(m["stem"], int(i[0, 0, 0])) for images, _, metas in in_process for i, m in zip(images, metas)]
        assert a == b
        # worker seeds come from each loader's own generator: the global RNG (RPN/RoI sampling, drop-path) is
        # untouched, so a resumed process, whose persistent workers start at a later epoch, draws the same
        assert torch.equal(torch.get_rng_state(), global_rng)
    with_workers.close()
    assert with_workers._iterator is None


def test_bad_file_mid_epoch_fails_cleanly_or_is_skipped(tiny: Path) -> None:
    config = ExperimentConfig(data=DataConfig(root=str(tiny), loader=LoaderConfig(num_workers=1)))
    prepared = prepare_data(config, **QUIET)
    victim = prepared.splits["train"][0]
    (tiny / "rgb" / f"{victim}.png").write_bytes(b"not a png")  # broken after the check
    loader = prepared.loader("train", train=True, batch_size=2, transform=identity)
    with pytest.raises(DataError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert message.endswith(f"{victim}.png: unreadable or truncated image file") and "Traceback" not in message
    skipping = ExperimentConfig(data=DataConfig(root=str(tiny), on_error="skip", loader=LoaderConfig(num_workers=1)))
    (tiny / "rgb" / f"{victim}.png").rename(tiny / f"{victim}.png.bak")
    prepared = prepare_data(skipping, **QUIET)  # the check finds the missing partner and leaves it out
    assert prepared.skipped == 1
    (tiny / f"{victim}.png.bak").rename(tiny / "rgb" / f"{victim}.png")
    prepared.splits["train"].append(victim)  # as if it broke after the check
    seen = [m["stem"] for _, _, metas in prepared.loader("train", True, 2, transform=identity) for m in metas]
    assert victim not in seen and len(seen) == len(prepared.splits["train"]) - 1
    assert prepared.read_failures == 1


def test_synthetic_data_is_generated_once_and_cached(tmp_path: Path, monkeypatch, trees) -> None:
    calls: list[tuple] = []

    def generate_dataset(out: Path, images: int, size: tuple[int, int], classes: int, fmt: str, seed: int) -> Path:
        calls.append((images, size, classes, fmt, seed))
        made = trees.npy(f"gen{len(calls)}", frames=trees.default_frames(images))
        made.rename(out)
        (out / "synth.json").write_text(json.dumps({"params": {
            "images": images, "size": list(size), "classes": classes, "format": fmt, "seed": seed}}))
        return out

    monkeypatch.setitem(sys.modules, "crossattentiondet.data.synth",
                        types.SimpleNamespace(generate_dataset=generate_dataset))
    config = ExperimentConfig(output=OutputConfig(root=str(tmp_path / "runs")),
                              data=DataConfig(synthetic=SyntheticConfig(images=8, size=(48, 32)), loader=no_workers()))
    first = prepare_data(config, **QUIET)
    second = prepare_data(config, **QUIET)
    assert calls == [(8, (48, 32), 3, "npy", 0)]
    assert first.root == second.root == synthetic_root(config)
    assert first.root.parent == tmp_path / "runs" / "_synthetic"
    assert [p.name for p in first.root.parent.iterdir()] == [first.root.name]  # no staging folder left behind
    other = config.model_copy(update={"data": config.data.model_copy(
        update={"synthetic": SyntheticConfig(images=8, size=(48, 32), seed=1)})})
    assert synthetic_root(other) != first.root


def test_synthetic_race_uses_the_winner(tmp_path: Path, monkeypatch, trees) -> None:
    target = tmp_path / "cache"
    params = {"images": 4, "size": [48, 32], "classes": 3, "format": "npy", "seed": 0}

    def generate_dataset(out: Path, images: int, size, classes, fmt, seed) -> Path:
        for name in ("winner", "loser"):  # another process finishes first and renames into place
            made = trees.npy(name, frames=trees.default_frames(images))
            (made / "synth.json").write_text(json.dumps({"params": params}))
        (tmp_path / "winner").rename(target)
        (tmp_path / "loser").rename(out)
        return out

    monkeypatch.setitem(sys.modules, "crossattentiondet.data.synth",
                        types.SimpleNamespace(generate_dataset=generate_dataset))
    config = ExperimentConfig(data=DataConfig(
        synthetic=SyntheticConfig(images=4, size=(48, 32), cache_dir=str(target)), loader=no_workers()))
    prepared = prepare_data(config, **QUIET)
    assert prepared.root == target and len(prepared.source.stems) == 4
    mismatched = ExperimentConfig(data=DataConfig(synthetic=SyntheticConfig(images=5, cache_dir=str(target))))
    with pytest.raises(DataError, match="holds a synthetic data set made with"):
        prepare_data(mismatched, **QUIET)


WORKERS_AFTER_OPENCV = """
import sys
from crossattentiondet.config import build_config
from crossattentiondet.data.dataset import prepare_data
from crossattentiondet.data.synth import generate_dataset

root = sys.argv[1]
generate_dataset(root, 8, (640, 480), 2, "folders", seed=0)  # OpenCV (threaded at this size) before the fork
config = build_config({}, [f"data.root={root}", "data.layout=folders", "data.loader.num_workers=2"])
data = prepare_data(config, None, log=lambda m: None)           # the data check decodes with OpenCV too
seen = sum(len(images) for images, _, _ in data.loader("train", True, 2, seed=0))
print("frames", seen)
"""


def test_loader_workers_do_not_hang_after_opencv_ran_in_the_main_process(tmp_path: Path) -> None:
    # OpenCV's thread pool does not survive fork(): without cv2.setNumThreads(0) this hung forever on
    # paired-folder data (PNG decoding) with num_workers > 0. A subprocess, so a regression fails, not hangs.
    import subprocess

    proc = subprocess.run([sys.executable, "-c", WORKERS_AFTER_OPENCV, str(tmp_path / "folders")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["frames", str(len(_train_stems(tmp_path / "folders")))]


def _train_stems(root: Path) -> list[str]:
    from crossattentiondet.config import build_config
    from crossattentiondet.data.dataset import prepare_data

    config = build_config({}, [f"data.root={root}", "data.layout=folders", "data.loader.num_workers=0"])
    return prepare_data(config, None, log=lambda m: None).splits["train"]
