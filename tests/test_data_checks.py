"""Data check: every problem kind is found, named with its file, and all are listed at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossattentiondet.config import DataConfig, ExperimentConfig
from crossattentiondet.data import (
    PROBLEM_KINDS,
    check_dataset,
    open_source,
    prepare_data,
    resolve_modality_scales,
)
from crossattentiondet.data.problems import SEGMENTATION_KINDS
from crossattentiondet.data.splits import MIN_SPLIT_GROUPS
from crossattentiondet.errors import DataError
from tests.conftest import write_image

QUIET = {"log": lambda _: None}


def kinds_by_stem(report) -> dict[str | None, set[str]]:
    out: dict[str | None, set[str]] = {}
    for p in report.problems:
        out.setdefault(p.stem, set()).add(p.kind)
    return out


@pytest.fixture
def broken_folders(trees) -> Path:
    """A paired-folder tree with one frame per problem (frames 'good*' are fine)."""
    box = [(0, 0.5, 0.5, 0.5, 0.5)]
    stems = ["good1", "good2", "truncated", "sizes", "nopartner", "nolabel", "badline", "outside",
             "zero", "unnamed", "nan", "dup", "empty"]
    root = trees.folders(frames={s: box for s in stems})
    labels = root / "labels"
    png = (root / "rgb" / "truncated.png").read_bytes()
    (root / "rgb" / "truncated.png").write_bytes(png[: len(png) // 2])
    write_image(root / "thermal" / "sizes.png", np.zeros((16, 48), np.uint16))
    (root / "thermal" / "nopartner.png").unlink()
    (labels / "nolabel.txt").unlink()
    (labels / "badline.txt").write_text("0 0.5 0.5 0.5\n1 a b c d\n")
    (labels / "outside.txt").write_text("0 0.9 0.5 0.5 0.5\n")
    (labels / "zero.txt").write_text("0 0.5 0.5 0 0.5\n")
    (labels / "unnamed.txt").write_text("5 0.5 0.5 0.5 0.5\n")
    (labels / "nan.txt").write_text("0 nan 0.5 0.5 0.5\n")
    write_image(root / "rgb" / "dup.jpg", np.zeros((32, 48, 3), np.uint8))
    (labels / "empty.txt").write_text("")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    return root


def test_check_lists_every_problem_with_its_file(broken_folders: Path) -> None:
    report = check_dataset(broken_folders)
    found = kinds_by_stem(report)
    assert found.get("good1") is None and found.get("good2") is None and found.get("empty") is None
    assert found["truncated"] == {"unreadable"}
    assert found["sizes"] == {"size_mismatch"}
    assert found["nopartner"] == {"missing_partner"}
    assert found["nolabel"] == {"missing_label"}
    assert found["badline"] == {"bad_label"}
    assert found["outside"] == {"out_of_range"}
    assert found["zero"] == {"zero_area"}
    assert found["unnamed"] == {"unnamed_class"}
    assert found["nan"] == {"not_finite"}
    assert found["dup"] == {"duplicate_stem"}
    assert found[None] == {"orphan_label"}
    assert report.bad_stems == set(found) - {None}
    messages: dict[str | None, str] = {}
    for p in report.problems:
        messages[p.stem] = messages.get(p.stem, "") + str(p) + "\n"
    assert "badline.txt: line 2: not 5 numbers: '1 a b c d'" in messages["badline"]
    assert "truncated.png: unreadable or truncated" in messages["truncated"]
    assert "badline.txt: line 1: expected 5 numbers" in messages["badline"]
    assert "sizes.png" in messages["sizes"] and "48x16" in messages["sizes"]
    assert "no thermal file for frame 'nopartner'" in messages["nopartner"]
    assert "missing label" in messages["nolabel"]
    assert "outside [0, 1]" in messages["outside"]
    assert "class id 5 has no name (2 names from" in messages["unnamed"]
    assert "NaN/inf" in messages["nan"]
    assert "dup.jpg" in messages["dup"] or "dup.png" in messages["dup"]
    assert all(Path(p.path).name in str(p) for p in report.problems)  # every message names its file
    assert not report.ok and len(report.warnings) == 1
    assert report.negatives == 1  # 'empty': an empty label file is a frame without objects, not a problem


def test_every_problem_kind_is_reachable(broken_folders: Path, trees) -> None:
    kinds = {p.kind for p in check_dataset(broken_folders).problems}
    # the rest come from the npy layout, VOC and a modality mixing bit depths
    npy = trees.npy("npy", frames={"ok": [], "float": [], "fourch": []})
    np.save(npy / "images" / "float.npy", np.full((32, 48, 5), np.nan, np.float32))
    np.save(npy / "images" / "fourch.npy", np.zeros((32, 48, 4), np.uint8))
    kinds |= {p.kind for p in check_dataset(npy).problems}
    voc = trees.folders("voc", frames={"a": [(0, 0.5, 0.5, 0.5, 0.5)]}, labels="voc")
    xml = (voc / "Annotations" / "a.xml").read_text().replace("<width>48</width>", "<width>64</width>")
    (voc / "Annotations" / "a.xml").write_text(xml)
    kinds |= {p.kind for p in check_dataset(voc).problems}
    mixed = trees.folders("mixed", frames=trees.default_frames(2))
    write_image(mixed / "thermal" / "frame001.png", np.zeros((32, 48), np.uint8))
    kinds |= {p.kind for p in check_dataset(mixed).problems}
    bad_dtype = trees.npy("dtype", frames={"a": []})
    np.save(bad_dtype / "images" / "a.npy", np.zeros((32, 48, 5), np.int32))
    kinds |= {p.kind for p in check_dataset(bad_dtype).problems}
    # the split problems: two clips cannot fill three splits (error); one block leaves val and test empty
    clips = trees.folders("clips", frames={f"clip{c}_{f:03d}": [] for c in range(2) for f in range(3)})
    kinds |= {p.kind for p in check_dataset(clips, check_split=True).problems}
    kinds |= {p.kind for p in check_dataset(trees.folders("one", frames=trees.default_frames(3)),
                                            check_split=True).problems}
    # class and id lists naming one thing twice, and a scale from the metadata file that the pixels exceed
    kinds |= {p.kind for p in check_dataset(trees.folders("twice", classes=["car", "car"])).problems}
    coco = trees.folders("ids", labels="coco")
    data = json.loads((coco / "annotations.json").read_text())
    data["images"][1]["id"] = data["images"][0]["id"]
    (coco / "annotations.json").write_text(json.dumps(data))
    kinds |= {p.kind for p in check_dataset(coco).problems}
    declared = trees.folders("declared", frames=trees.default_frames(2))
    (declared / "synth.json").write_text(json.dumps({"modalities": [{"name": "thermal", "scale": 255}]}))
    kinds |= {p.kind for p in check_dataset(declared).problems}
    assert kinds == set(PROBLEM_KINDS) - SEGMENTATION_KINDS


def test_npy_problems(trees) -> None:
    root = trees.npy(frames={"ok": [], "float": [], "fourch": [], "cut": []})
    np.save(root / "images" / "float.npy", np.full((32, 48, 5), np.nan, np.float32))
    np.save(root / "images" / "fourch.npy", np.zeros((32, 48, 4), np.uint8))
    data = (root / "images" / "cut.npy").read_bytes()
    (root / "images" / "cut.npy").write_bytes(data[:300])
    report = check_dataset(root)
    messages = {p.stem: (p.kind, str(p)) for p in report.problems}
    assert messages["float"][0] == "not_finite" and "float.npy: float32 array, with NaN/inf" in messages["float"][1]
    assert messages["fourch"][0] == "channels" and "'event' needs channel(s) [4]" in messages["fourch"][1]
    assert messages["cut"][0] == "unreadable" and "cut.npy: unreadable or truncated .npy" in messages["cut"][1]
    assert "ok" not in messages


def test_mixed_depth_is_an_error_unless_scale_is_set(trees) -> None:
    root = trees.folders(frames=trees.default_frames(3))
    write_image(root / "thermal" / "frame001.png", np.zeros((32, 48), np.uint8))
    report = check_dataset(root)
    (problem,) = report.errors
    assert problem.kind == "mixed_depth" and "modality 'thermal' mixes 8- and 16-bit files" in str(problem)
    assert "frame001.png" in str(problem) and problem.stem is None
    with pytest.raises(DataError, match="mixes 8- and 16-bit"):
        resolve_modality_scales(open_source(root))
    data = DataConfig.model_validate({"modalities": [
        {"name": "rgb", "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
        {"name": "thermal", "channels": 1, "mean": [0.5], "std": [0.5], "scale": 4095}]})
    assert check_dataset(root, data).ok
    assert resolve_modality_scales(open_source(root, data)) == {"rgb": 255.0, "thermal": 4095.0}


def test_unreadable_coco_file_is_one_fatal_problem(trees) -> None:
    root = trees.folders(frames=trees.default_frames(2), labels="coco")
    (root / "annotations.json").write_text("{not json")
    report = check_dataset(root)
    assert [p.kind for p in report.problems] == ["unreadable"]  # not one "missing label" per frame
    assert report.fatal and "annotations.json: unreadable COCO file" in str(report.fatal[0])


def test_voc_box_outside_image_and_size_warning(trees) -> None:
    root = trees.folders(frames={"a": [(0, 0.5, 0.5, 0.5, 0.5)]}, labels="voc")
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<xmax>36</xmax>", "<xmax>60</xmax>").replace("<width>48", "<width>64"))
    report = check_dataset(root)
    assert {(p.kind, p.severity) for p in report.problems} == {("out_of_range", "error"), ("label_size", "warning")}
    assert "a.xml: object 1: box (12, 8, 60, 24) outside the 48x32 image" in str(report.errors[0])


def test_train_refuses_bad_data_or_skips_it(broken_folders: Path, tmp_path: Path) -> None:
    config = ExperimentConfig(data=DataConfig(root=str(broken_folders)))
    with pytest.raises(DataError) as info:
        prepare_data(config, **QUIET)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one `error:` line
    assert "data check of" in message and "11 errors in 10 frames" in message
    assert "badline.txt: line 1" in message and "data.on_error=skip" in message and "... and 6 more" in message
    logged: list[str] = []
    skip = ExperimentConfig(data=DataConfig(root=str(broken_folders), on_error="skip"))
    prepared = prepare_data(skip, run_dir=tmp_path / "run", log=logged.append)
    assert prepared.skipped == 10
    assert any("skipping 10 of 13 frames" in line for line in logged)
    used = {s for split in prepared.splits.values() for s in split}
    assert used == {"good1", "good2", "empty"}  # 'empty' is a negative frame, kept


def test_keep_empty_false_leaves_negatives_out(trees) -> None:
    frames = {"a": [(0, 0.5, 0.5, 0.5, 0.5)], "b": [], "c": [(1, 0.5, 0.5, 0.5, 0.5)]}
    root = trees.folders(frames=frames)
    kept = prepare_data(ExperimentConfig(data=DataConfig(root=str(root))), **QUIET)
    assert sorted(s for v in kept.splits.values() for s in v) == ["a", "b", "c"]
    logged: list[str] = []
    dropped = prepare_data(ExperimentConfig(data=DataConfig(root=str(root), keep_empty=False)), log=logged.append)
    assert sorted(s for v in dropped.splits.values() for s in v) == ["a", "c"]
    assert any("leaving out 1 frames without boxes" in line for line in logged)


def test_check_warns_about_splits_with_few_independent_groups(trees) -> None:
    box = [(0, 0.5, 0.5, 0.5, 0.5)]
    root = trees.folders(frames={f"clip{c}_{f:03d}": box for c in range(5) for f in range(4)})
    assert not [p for p in check_dataset(root).problems if p.kind == "few_groups"]  # only when asked
    report = check_dataset(root, check_split=True)
    assert report.ok  # warnings: the data is fine, the numbers over such a split are not
    few = {p.message.split(" split ")[0]: p for p in report.warnings if p.kind == "few_groups"}
    assert set(few) == {"the val", "the test"}  # train holds 3 clips
    assert ("the val split has only 1 independent group (sequences, 4 frames), fewer than "
            f"{MIN_SPLIT_GROUPS}: its metrics and their confidence intervals") in str(few["the val"])
    assert "the test split has only 1 independent group" in str(few["the test"])
    assert report.split is not None and report.split.group_counts == {"train": 3, "val": 1, "test": 1}
    assert any(n.startswith("split (ratios, sequences, seed 42): train 12 frames in 3 groups") for n in report.notes)
    assert report.to_dict()["split"]["group_counts"] == {"train": 3, "val": 1, "test": 1}
    many = trees.folders("many", frames={f"clip{c:02d}_{f:03d}": box for c in range(24) for f in range(2)})
    assert not [p for p in check_dataset(many, check_split=True).problems if p.kind == "few_groups"]


def test_check_reports_a_split_that_cannot_be_made(trees) -> None:
    root = trees.folders(frames={f"clip{c}_{f:03d}": [] for c in range(2) for f in range(5)})
    report = check_dataset(root, check_split=True)
    (problem,) = report.fatal
    assert problem.kind == "split" and "only 2 sequences" in str(problem) and str(root) in str(problem)
    blocks = DataConfig(split={"group_by": "blocks:3", "gap": 1})
    report = check_dataset(root, blocks, check_split=True)
    assert report.ok and report.split is not None and sum(report.split.dropped_counts().values()) > 0
    assert any("frames left out by the gap (data.split.gap=1)" in n for n in report.notes)


def test_scale_from_the_metadata_file_is_checked_against_the_pixels(trees) -> None:
    root = trees.folders(frames=trees.default_frames(3))
    write_image(root / "rgb" / "frame001.png", np.full((32, 48, 3), 40000, np.uint16))
    write_image(root / "rgb" / "frame002.png", np.full((32, 48, 3), 200, np.uint16))  # 16-bit, within 255
    (root / "synth.json").write_text(json.dumps({"modalities": [{"name": "rgb", "scale": 255}]}))
    report = check_dataset(root)
    (error,) = report.errors
    assert error.kind == "above_scale" and error.stem == "frame001" and error.path.endswith("frame001.png")
    assert "uint16 values up to 40000 above the declared scale 255 of modality 'rgb' (synth.json)" in str(error)
    (mixed,) = [p for p in report.warnings if p.kind == "mixed_depth"]
    assert "mixed 8-bit and 16-bit files for modality 'rgb': 2 16-bit files" in str(mixed)
    assert report.scales["rgb"] == 255.0
    # a frame with values above the scale is skippable like any bad frame
    skip = prepare_data(ExperimentConfig(data=DataConfig(root=str(root), on_error="skip")), **QUIET)
    assert skip.skipped == 1 and "frame001" not in {s for v in skip.splits.values() for s in v}
    # the config's scale is the user's word: not checked against the pixels
    data = DataConfig.model_validate({"modalities": [
        {"name": "rgb", "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "scale": 255},
        {"name": "thermal", "channels": 1, "mean": [0.5], "std": [0.5]}]})
    assert check_dataset(root, data).ok


def test_declared_scale_above_255_does_not_hide_8_bit_files(trees) -> None:
    root = trees.folders(frames=trees.default_frames(3))
    for stem in ("frame000", "frame001"):  # 14-bit counts in 16-bit files
        write_image(root / "thermal" / f"{stem}.png", np.full((32, 48), 9000, np.uint16))
    write_image(root / "thermal" / "frame002.png", np.zeros((32, 48), np.uint8))
    (root / "cadet_data.json").write_text(json.dumps({"modalities": [{"name": "thermal", "scale": 16383}]}))
    report = check_dataset(root)
    assert [(p.kind, p.stem) for p in report.errors] == [("mixed_depth", "frame002")]
    assert "frame002.png: mixed 8-bit and 16-bit files for modality 'thermal'" in str(report.errors[0])
    assert "declared scale is 16383 (cadet_data.json)" in str(report.errors[0])
    with pytest.raises(DataError, match="mixed 8-bit and 16-bit"):
        resolve_modality_scales(open_source(root))


def test_duplicate_class_and_id_lists_are_data_set_wide_errors(trees) -> None:
    root = trees.folders(classes=["car", "person", "car"])
    report = check_dataset(root)
    (problem,) = report.fatal
    assert problem.kind == "duplicate_class" and problem.path == str(root / "classes.txt")
    assert "'car' (lines 1, 3)" in str(problem)
    assert not any(p.kind == "missing_label" for p in report.problems)  # the labels themselves are fine
    coco = trees.folders("coco", labels="coco")
    data = json.loads((coco / "annotations.json").read_text())
    data["categories"].append({"id": 1, "name": "truck"})
    (coco / "annotations.json").write_text(json.dumps(data))
    (problem,) = check_dataset(coco).fatal
    assert problem.kind == "duplicate_id" and "category ids listed more than once" in str(problem)
    assert "1 (names 'person', 'truck')" in str(problem)
    # names from data.names: the file's class list is not used, so its repetitions do not matter
    assert check_dataset(root, DataConfig(names=["person", "car"])).ok


def test_no_box_warning_only_without_boxes_and_without_fatal_errors(trees) -> None:
    frames = {f"frame{i:03d}": [] for i in range(3)}
    report = check_dataset(trees.folders("none", frames=frames))
    assert [p.kind for p in report.warnings] == ["no_boxes"] and report.ok
    assert "not a single box in the 3 readable frames" in str(report.warnings[0])
    assert not [p for p in check_dataset(trees.folders("some")).problems if p.kind == "no_boxes"]
    broken = trees.folders("broken", frames=frames, labels="coco")
    (broken / "annotations.json").write_text("{not json")
    assert [p.kind for p in check_dataset(broken).problems] == ["unreadable"]
