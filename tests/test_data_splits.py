"""Splits: grouping of neighbouring frames, seeded ratios, split files, partitions, gaps, split.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossattentiondet.config import DataConfig, ExperimentConfig, SplitConfig
from crossattentiondet.data import group_stems, make_splits, prepare_data
from crossattentiondet.data.splits import AUTO_BLOCK, MIN_SPLIT_GROUPS, group_frames, split_settings
from crossattentiondet.errors import DataError

QUIET = {"log": lambda _: None}


def owner_of(splits: dict[str, list[str]]) -> dict[str, str]:
    return {s: name for name, stems in splits.items() for s in stems}


def sides_of_each_group(plan, groups: dict[str, list[str]]) -> list[set[str]]:
    owner = owner_of(plan.splits)
    return [{owner[s] for s in members if s in owner} for members in groups.values()]


def test_auto_groups_a_single_prefix_in_blocks() -> None:
    stems = [f"cam_{i}" for i in range(25)] + ["still", "photo"]
    grouping = group_frames(stems, "auto")
    assert grouping.kind == "blocks"
    blocks = sorted(sorted(g) for g in grouping.groups.values())
    assert sorted([f"cam_{i}" for i in range(10)]) in blocks  # numbers, not text order: cam_2 < cam_10
    assert sorted([f"cam_{i}" for i in range(10, 20)]) in blocks
    assert sorted([f"cam_{i}" for i in range(20, 25)]) in blocks
    assert ["still"] in blocks and ["photo"] in blocks
    assert grouping.runs == [[f"cam_{i}" for i in range(25)]]  # the run the blocks were cut from, in order
    assert AUTO_BLOCK == 10
    # LLVIP / M3FD style: numbers only, one (empty) prefix
    assert group_frames([f"{i:06d}" for i in range(10001, 10031)], "auto").kind == "blocks"


def test_auto_groups_whole_sequences_when_names_carry_one() -> None:
    stems = [f"seq{s:03d}_{s * 100 + f:06d}" for s in range(12) for f in range(15)]
    groups = group_stems(stems, "auto")
    assert len(groups) == 12 and all(len(g) == 15 for g in groups.values())


@pytest.mark.parametrize("name", ["seq{c}_{f:06d}", "video{c}-{f:04d}", "clip{c}_{f:03d}"])
def test_few_sequences_are_never_split(name: str) -> None:
    # today's code cut these into 10-frame blocks (fewer than 10 prefixes): val and test frames sat next to
    # training frames of the same clip
    letters = "ABCD"
    stems = [name.format(c=letters[c] if name.startswith("seq") else c, f=f) for c in range(4) for f in range(60)]
    grouping = group_frames(stems, "auto")
    assert grouping.kind == "sequences" and len(grouping.groups) == 4 and grouping.runs == []
    for seed in range(6):
        plan = make_splits(stems, SplitConfig(seed=seed))
        assert all(len(sides) == 1 for sides in sides_of_each_group(plan, grouping.groups))
        assert all(plan.splits[n] for n in ("train", "val", "test")) and plan.dropped == {}
        assert plan.grouping == "sequences" and plan.group_counts == {"train": 2, "val": 1, "test": 1}


def test_synthetic_sequences_each_go_to_one_side(tmp_path: Path) -> None:
    synth = pytest.importorskip("crossattentiondet.data.synth")
    out = synth.generate_dataset(tmp_path / "syn", 60, (32, 32), 1, "npy", 0)
    meta = json.loads((out / "synth.json").read_text())
    stems = sorted(p.stem for p in (out / "images").glob("*.npy"))
    sequences = {seq["sequence"]: stems[seq["first"]:seq["first"] + seq["frames"]] for seq in meta["sequences"]}
    assert len(sequences) == 4 and sequences[0][0] == "seq000_000000"  # 19 + 15 + 20 + 6 frames
    assert sorted(sorted(g) for g in group_stems(stems, "auto").values()) == sorted(sequences.values())
    for seed in range(4):
        plan = make_splits(stems, SplitConfig(seed=seed))
        assert all(len(sides) == 1 for sides in sides_of_each_group(plan, sequences))
        assert sum(plan.counts().values()) == 60  # nothing left out: whole sequences need no gap


def test_fewer_sequences_than_splits_is_an_error_with_the_ways_out() -> None:
    stems = [f"clip{c}_{f:03d}" for c in range(2) for f in range(40)]
    with pytest.raises(DataError, match=r"only 2 sequences \('clip0_', 'clip1_'\), fewer than the 3 splits") as err:
        make_splits(stems, SplitConfig())
    assert "group_by=blocks:<N>" in str(err.value) and "data.split.test=0" in str(err.value)
    two = make_splits(stems, SplitConfig(train=0.85, val=0.15, test=0.0))  # two sides: one clip each
    assert sorted(len(v) for v in two.splits.values()) == [0, 40, 40]
    assert any("whole sequences give train 40 frames = 50% (asked 85%)" in n for n in two.notes)
    cut = make_splits(stems, SplitConfig(group_by="blocks:10"))  # splitting inside clips on purpose
    assert cut.grouping == "blocks" and all(cut.splits[n] for n in ("train", "val", "test"))


def test_other_grouping_rules() -> None:
    stems = [f"v{v}_f{f}" for v in range(3) for f in range(4)]
    assert len(group_stems(stems, "none")) == 12
    assert [len(g) for g in group_stems(stems, "blocks:5").values()] == [5, 5, 2]
    by_video = group_stems(stems, r"regex:^(v\d+)_")
    assert sorted(len(g) for g in by_video.values()) == [4, 4, 4]
    assert group_stems(["a1", "b"], "regex:^a")["re:a"] == ["a1"]  # no capture group: the whole match


def test_ratio_split_is_reproducible_and_never_splits_a_group() -> None:
    stems = [f"clip{c}_{f:03d}" for c in range(4) for f in range(60)]  # 4 sequences
    config = SplitConfig(seed=3)
    first = make_splits(stems, config)
    assert first.splits == make_splits(list(reversed(stems)), config).splits
    assert first.method == "ratios" and first.groups == 4
    assert first.counts() == {"train": 120, "val": 60, "test": 60}  # as close to 70/15/15 as whole clips get
    assert any("whole sequences give train 120 frames = 50% (asked 70%)" in n for n in first.notes)
    assert len({tuple(make_splits(stems, SplitConfig(seed=s)).splits["val"]) for s in range(8)}) > 1
    for seed in range(8):
        plan = make_splits(stems, SplitConfig(seed=seed))
        assert all(len(sides) == 1 for sides in sides_of_each_group(plan, group_stems(stems, "auto")))


def test_existing_seeds_keep_their_split() -> None:
    # the same groups go to the same splits as in split.json version 1 (sequences; blocks without their gap)
    stems = [f"seq{s:03d}_{s * 100 + f:06d}" for s in range(12) for f in range(15)]
    plan = make_splits(stems, SplitConfig(seed=42))
    assert {n: sorted({s[:6] for s in v}) for n, v in plan.splits.items()} == {
        "train": ["seq000", "seq003", "seq005", "seq006", "seq007", "seq009", "seq010", "seq011"],
        "val": ["seq001", "seq002"], "test": ["seq004", "seq008"]}
    frames = [f"frame{i:04d}" for i in range(100)]
    blocks = make_splits(frames, SplitConfig(seed=42, gap=0))
    assert {n: sorted({int(s[5:]) // 10 for s in v}) for n, v in blocks.splits.items()} == {
        "train": [0, 1, 2, 3, 5, 6, 7], "val": [4, 8], "test": [9]}
    gapped = make_splits(frames, SplitConfig(seed=42))
    assert all(set(gapped.splits[n]) <= set(blocks.splits[n]) for n in gapped.splits)


def positions_too_close(plan, runs: list[list[str]], gap: int) -> list[tuple[str, str]]:
    """(frame, neighbour) pairs within ``gap`` positions of a run where the neighbour is a higher split."""
    rank = {"train": 0, "val": 1, "test": 2}
    owner = owner_of(plan.splits)
    close = []
    for run in runs:
        for i, stem in enumerate(run):
            for other in run[max(0, i - gap):i + gap + 1]:
                if stem in owner and other in owner and rank[owner[other]] > rank[owner[stem]]:
                    close.append((stem, other))
    return close


@pytest.mark.parametrize("group_by", ["auto", "blocks:8"])
def test_blocks_leave_a_gap_between_splits(group_by: str) -> None:
    stems = [f"frame{i:04d}" for i in range(300)]
    runs = [stems]  # one contiguous run
    without = make_splits(stems, SplitConfig(group_by=group_by, gap=0))
    assert positions_too_close(without, runs, 3)  # the leak: training frames next to val / test frames
    assert without.dropped == {} and sum(without.counts().values()) == 300
    for gap in (1, 3, 5):
        plan = make_splits(stems, SplitConfig(group_by=group_by, gap=gap))
        assert positions_too_close(plan, runs, gap) == []
        dropped = plan.dropped_counts()
        assert dropped["train"] > 0 and dropped["test"] == 0  # test keeps its frames, train gives way
        assert sum(plan.counts().values()) + sum(dropped.values()) == 300
        assert plan.gap == gap and all(plan.splits[n] for n in ("train", "val", "test"))
        assert any(f"left out {sum(dropped.values())} of 300 frames next to a block of another split "
                   f"(data.split.gap={gap}): train {dropped['train']}" in n for n in plan.notes)
        kept = {s for v in plan.splits.values() for s in v}
        assert all(s not in kept for v in plan.dropped.values() for s in v)
    assert SplitConfig().gap == 3  # on by default


def test_auto_blocks_gap_is_per_prefix_run_and_sequences_have_none() -> None:
    stems = [f"{i:06d}" for i in range(200)]  # LLVIP-style numbers: one run
    plan = make_splits(stems, SplitConfig(seed=1))
    assert plan.gap == 3 and plan.dropped and positions_too_close(plan, [stems], 3) == []
    sequences = [f"seq{s:02d}_{f:03d}" for s in range(20) for f in range(10)]
    plan = make_splits(sequences, SplitConfig(seed=1))
    assert plan.gap == 0 and plan.dropped == {} and sum(plan.counts().values()) == 200


def test_every_split_with_a_share_gets_frames_when_it_can() -> None:
    stems = [f"frame{i:03d}" for i in range(30)]  # three blocks of ten
    plan = make_splits(stems, SplitConfig(train=0.9, val=0.05, test=0.05))
    assert all(plan.splits[name] for name in ("train", "val", "test"))
    uneven = [f"x{i:03d}" for i in range(10)] + [f"y{i:03d}" for i in range(9)] + ["z000"]  # groups 10, 9, 1
    for seed in range(5):
        counts = make_splits(uneven, SplitConfig(seed=seed, group_by="regex:^([a-z])")).counts()
        assert counts["train"] == 10 and min(counts.values()) >= 1  # train stays the largest


def test_few_groups_per_split_are_noted() -> None:
    stems = [f"clip{c}_{f:03d}" for c in range(5) for f in range(20)]
    plan = make_splits(stems, SplitConfig(seed=0))
    few = [n for n in plan.notes if "independent group" in n]
    assert any(n.startswith("the val split has only 1 independent group (sequences, 20 frames), fewer than 3")
               for n in few)
    assert any(n.startswith("the test split has only 1 independent group") for n in few)
    many = [f"clip{c:02d}_{f:03d}" for c in range(30) for f in range(5)]
    assert not [n for n in make_splits(many, SplitConfig(seed=0)).notes if "independent group" in n]
    assert MIN_SPLIT_GROUPS == 3


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
    kept = plan.splits["train"] + plan.splits["val"]
    assert sorted(kept + plan.dropped.get("train", []) + plan.dropped.get("val", [])) == stems[:80]
    assert len(plan.splits["val"]) == pytest.approx(80 * 0.15 / 0.85, abs=10)
    assert plan.group_counts["test"] == 2  # the partition's frames in blocks of ten


def test_split_json_is_written_and_reused(trees, tmp_path: Path) -> None:
    frames = {f"frame{i:03d}": [(0, 0.5, 0.5, 0.5, 0.5)] for i in range(40)}
    root = trees.folders(frames=frames)
    run = tmp_path / "run"
    run.mkdir()
    config = ExperimentConfig(data=DataConfig(root=str(root)))
    logged: list[str] = []
    first = prepare_data(config, run_dir=run, log=logged.append)
    stored = json.loads((run / "split.json").read_text())
    assert stored["splits"] == first.splits and stored["counts"] == {k: len(v) for k, v in first.splits.items()}
    assert stored["settings"]["seed"] == 42 and stored["method"] == "ratios" and stored["version"] == 2
    assert stored["grouping"] == "blocks" and stored["gap"]["frames"] == 3
    dropped = sum(stored["gap"]["dropped"].values())
    assert dropped > 0 and sum(stored["counts"].values()) + dropped == 40
    assert sorted(s for v in stored["gap"]["stems"].values() for s in v) == sorted(
        set(frames) - {s for v in first.splits.values() for s in v})
    assert any(f"data: left out {dropped} of 40 frames next to a block" in line for line in logged)
    # settings keys added after version 1 are only stored when not at their default: older split.json files
    # (without them) still match, so runs started before they existed resume with their own split
    assert "gap" not in stored["settings"] and split_settings(SplitConfig(gap=0))["gap"] == 0
    # new frames appear: a resumed run keeps the split it started with
    trees.folders("more", frames={f"frame{i:03d}": [] for i in range(40, 50)})
    for sub in ("rgb", "thermal", "labels"):
        for path in (tmp_path / "more" / sub).iterdir():
            path.rename(root / sub / path.name)
    logged = []
    again = prepare_data(config, run_dir=run, log=logged.append)
    assert again.splits == first.splits and any("reusing the split" in line for line in logged)
    reseeded = ExperimentConfig(data=DataConfig(root=str(root), split=SplitConfig(seed=1, gap=0)))
    other = prepare_data(reseeded, run_dir=run, **QUIET)
    assert sum(len(v) for v in other.splits.values()) == 50
    assert json.loads((run / "split.json").read_text())["settings"]["seed"] == 1
