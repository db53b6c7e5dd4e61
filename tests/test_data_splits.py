"""Splits: grouping of neighbouring frames, seeded ratios, split files, partitions, split.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossattentiondet.config import DataConfig, ExperimentConfig, SplitConfig
from crossattentiondet.data import group_stems, make_splits, prepare_data
from crossattentiondet.data.splits import AUTO_BLOCK
from crossattentiondet.errors import DataError

QUIET = {"log": lambda _: None}


def owner_of(splits: dict[str, list[str]]) -> dict[str, str]:
    return {s: name for name, stems in splits.items() for s in stems}


def test_auto_groups_numbered_frames_in_blocks_per_prefix() -> None:
    stems = [f"cam_{i}" for i in range(25)] + [f"other{i:04d}" for i in range(5)] + ["still", "photo"]
    groups = group_stems(stems, "auto")
    blocks = sorted(sorted(g) for g in groups.values())
    assert sorted([f"cam_{i}" for i in range(10)]) in blocks  # numbers, not text order: cam_2 < cam_10
    assert sorted([f"cam_{i}" for i in range(10, 20)]) in blocks
    assert sorted([f"cam_{i}" for i in range(20, 25)]) in blocks
    assert [f"other{i:04d}" for i in range(5)] in blocks
    assert ["still"] in blocks and ["photo"] in blocks
    assert AUTO_BLOCK == 10


def test_auto_groups_whole_sequences_when_names_carry_one() -> None:
    stems = [f"seq{s:03d}_{s * 100 + f:06d}" for s in range(12) for f in range(15)]
    groups = group_stems(stems, "auto")
    assert len(groups) == 12 and all(len(g) == 15 for g in groups.values())


def test_other_grouping_rules() -> None:
    stems = [f"v{v}_f{f}" for v in range(3) for f in range(4)]
    assert len(group_stems(stems, "none")) == 12
    assert [len(g) for g in group_stems(stems, "blocks:5").values()] == [5, 5, 2]
    by_video = group_stems(stems, r"regex:^(v\d+)_")
    assert sorted(len(g) for g in by_video.values()) == [4, 4, 4]
    assert group_stems(["a1", "b"], "regex:^a")["re:a"] == ["a1"]  # no capture group: the whole match


def test_ratio_split_is_reproducible_and_never_splits_a_group() -> None:
    stems = [f"clip{c}_{f:03d}" for c in range(4) for f in range(60)]  # 4 prefixes -> blocks of 10
    config = SplitConfig(seed=3)
    first = make_splits(stems, config)
    assert first.splits == make_splits(list(reversed(stems)), config).splits
    assert first.method == "ratios" and first.groups == 24
    assert first.splits != make_splits(stems, SplitConfig(seed=4)).splits
    counts = first.counts()
    assert sum(counts.values()) == 240 and counts["train"] == pytest.approx(168, abs=10)
    for seed in range(8):
        plan = make_splits(stems, SplitConfig(seed=seed))
        owner = owner_of(plan.splits)
        for members in group_stems(stems, "auto").values():
            assert len({owner[s] for s in members}) == 1


def test_every_split_with_a_share_gets_frames_when_it_can() -> None:
    stems = [f"frame{i:03d}" for i in range(30)]  # three blocks of ten
    plan = make_splits(stems, SplitConfig(train=0.9, val=0.05, test=0.05))
    assert all(plan.splits[name] for name in ("train", "val", "test"))
    uneven = [f"a{i:03d}" for i in range(19)] + ["b000"]  # groups of 10, 9 and 1 frames
    for seed in range(5):
        counts = make_splits(uneven, SplitConfig(seed=seed)).counts()
        assert counts["train"] == 10 and min(counts.values()) >= 1  # train stays the largest


def test_split_files(tmp_path: Path) -> None:
    stems = [f"f{i}" for i in range(10)]
    (tmp_path / "train.txt").write_text("# training frames\nf0\nf1.png\nsub/f2.npy\n\nf3\n")
    (tmp_path / "test.txt").write_text("f9\nf8\n")
    plan = make_splits(stems, SplitConfig(train_file="train.txt", test_file="test.txt"), root=tmp_path)
    assert plan.method == "files"
    assert plan.splits["train"] == ["f0", "f1", "f2", "f3"] and plan.splits["test"] == ["f8", "f9"]
    assert plan.splits["val"] == ["f4", "f5", "f6", "f7"]  # the unlisted frames go to the split without a file
    (tmp_path / "bad.txt").write_text("f0\nnope\n")
    with pytest.raises(DataError, match=r"bad.txt: 1 stems are not in the data set \(first: nope\)"):
        make_splits(stems, SplitConfig(train_file="bad.txt"), root=tmp_path)
    with pytest.raises(DataError, match="also in the train split file"):
        make_splits(stems, SplitConfig(train_file="train.txt", val_file="train.txt"), root=tmp_path)
    with pytest.raises(DataError, match="split file not found"):
        make_splits(stems, SplitConfig(test_file="missing.txt"), root=tmp_path)


def test_partition_fixes_the_test_split() -> None:
    stems = [f"{i:06d}" for i in range(100)]
    partitions = {s: "test" for s in stems[80:]}
    plan = make_splits(stems, SplitConfig(), partitions=partitions)
    assert plan.method == "partition" and plan.splits["test"] == stems[80:]
    assert sorted(plan.splits["train"] + plan.splits["val"]) == stems[:80]
    assert len(plan.splits["val"]) == pytest.approx(80 * 0.15 / 0.85, abs=10)


def test_split_json_is_written_and_reused(trees, tmp_path: Path) -> None:
    frames = {f"frame{i:03d}": [(0, 0.5, 0.5, 0.5, 0.5)] for i in range(40)}
    root = trees.folders(frames=frames)
    run = tmp_path / "run"
    run.mkdir()
    config = ExperimentConfig(data=DataConfig(root=str(root)))
    first = prepare_data(config, run_dir=run, **QUIET)
    stored = json.loads((run / "split.json").read_text())
    assert stored["splits"] == first.splits and stored["counts"] == {k: len(v) for k, v in first.splits.items()}
    assert stored["settings"]["seed"] == 42 and stored["method"] == "ratios"
    # new frames appear: a resumed run keeps the split it started with
    trees.folders("more", frames={f"frame{i:03d}": [] for i in range(40, 50)})
    for sub in ("rgb", "thermal", "labels"):
        for path in (tmp_path / "more" / sub).iterdir():
            path.rename(root / sub / path.name)
    logged: list[str] = []
    again = prepare_data(config, run_dir=run, log=logged.append)
    assert again.splits == first.splits and any("reusing the split" in line for line in logged)
    reseeded = ExperimentConfig(data=DataConfig(root=str(root), split=SplitConfig(seed=1)))
    other = prepare_data(reseeded, run_dir=run, **QUIET)
    assert sum(len(v) for v in other.splits.values()) == 50
    assert json.loads((run / "split.json").read_text())["settings"]["seed"] == 1
