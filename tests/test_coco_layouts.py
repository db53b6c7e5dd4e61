"""The coco layout: COCO split folders (the seed project's and Roboflow's), merged categories, the splits as
given, single- and multi-modal trees, and bad COCO input named by file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossattentiondet.config import DataConfig, ExperimentConfig, LoaderConfig, SplitConfig
from crossattentiondet.data import check_dataset, detect_layout, open_source, prepare_data
from crossattentiondet.data.source import Partitions
from crossattentiondet.data.splits import make_splits
from crossattentiondet.errors import DataError
from tests.conftest import write_image

QUIET = {"log": lambda _: None}
SIZE = (48, 32)  # width, height
CATEGORIES = [{"id": 1, "name": "player"}, {"id": 2, "name": "ball"}]


def frame_boxes(i: int) -> list[tuple[int, list[float]]]:
    """(category id, [x, y, w, h]) per frame index: a player, and a ball in odd frames."""
    boxes = [(1, [2.0 + i % 10, 3.0, 10.0, 20.0])]
    if i % 2:
        boxes.append((2, [30.0, 10.0 + i % 10, 4.0, 4.0]))
    return boxes


def write_split(folder: Path, n: int, *, roboflow: bool = False, json_name: str = "annotations.json",
                categories: list[dict] | None = None, modalities: tuple[str, ...] = (),
                ext: str = ".jpg", boxes=frame_boxes, extra_images: int = 0) -> Path:
    """A split folder with ``n`` frames named 000000... (the same names in every split), and its COCO file."""
    images_dir = folder if roboflow else folder / "images"
    width, height = SIZE
    rng = np.random.default_rng(len(folder.name))
    images, annotations = [], []
    for i in range(n + extra_images):
        name = f"{i:06d}"
        write_image(images_dir / f"{name}{ext}", rng.integers(0, 256, (height, width, 3)).astype(np.uint8))
        for modality in modalities:
            write_image(folder / modality / f"{name}.png", rng.integers(0, 256, (height, width)).astype(np.uint8))
        if i >= n:  # on disk, not in the COCO file
            continue
        images.append({"id": i + 10, "file_name": f"{name}{ext}", "width": width, "height": height})
        for category, bbox in boxes(i):
            annotations.append({"id": len(annotations) + 100, "image_id": i + 10, "category_id": category,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    path = folder / json_name if roboflow else folder / "annotations" / json_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories if categories is not None else CATEGORIES}))
    return path


def seed_tree(root: Path, counts: dict[str, int], **kw) -> Path:
    for split, n in counts.items():
        write_split(root / split, n, json_name=kw.pop("json_name", "annotations.json"), **kw)
    return root


def config_for(root: Path, **data) -> ExperimentConfig:
    return ExperimentConfig(data=DataConfig(root=str(root), loader=LoaderConfig(num_workers=0), **data))


# ---------------------------------------------------------------------------------------- reading
def test_seed_layout_read(tmp_path: Path) -> None:
    root = tmp_path / "seed"
    write_split(root / "train", 5, json_name="instances_train.json")
    write_split(root / "val", 3, json_name="instances_val.json")
    write_split(root / "test", 2, json_name="annotations.json")
    assert detect_layout(root) == "coco"
    source = open_source(root)
    assert source.layout == "coco" and source.modality_names == ["rgb"]
    assert source.class_names == ["player", "ball"]
    # identically named files in three splits are three frames, named after their split folder
    assert {"train_000000", "val_000000", "test_000000"} <= set(source.stems)
    assert len(source.stems) == len(set(source.stems)) == 10
    sample = source.read("val_000001")
    assert sample.boxes.tolist() == [[3.0, 3.0, 13.0, 23.0], [30.0, 11.0, 34.0, 15.0]]
    assert sample.labels.tolist() == [1, 2]
    assert sample.modalities["rgb"].shape == (32, 48, 3)
    report = check_dataset(source, check_split=True)
    assert report.ok, report.describe_errors()
    assert report.split is not None and report.split.method == "partition"
    assert report.split.counts() == {"train": 5, "val": 3, "test": 2}
    assert all(s.startswith("val_") for s in report.split.splits["val"])
    assert all(s.startswith("test_") for s in report.split.splits["test"])


def test_roboflow_layout_read_and_categories_merged_by_name(tmp_path: Path) -> None:
    root = tmp_path / "rf"
    write_split(root / "train", 4, roboflow=True, json_name="_annotations.coco.json")
    # another export of the same classes: ball has id 3 here; the same name is the same class
    write_split(root / "valid", 2, roboflow=True, json_name="_annotations.coco.json",
                categories=[{"id": 1, "name": "player"}, {"id": 3, "name": "ball"}],
                boxes=lambda i: [(1, [1.0, 1.0, 5.0, 5.0]), (3, [20.0, 10.0, 6.0, 6.0])])
    write_split(root / "test", 2, roboflow=True, json_name="_annotations.coco.json")
    assert detect_layout(root) == "coco"
    source = open_source(root)
    assert source.class_names == ["player", "ball"]
    assert source.read("valid_000000").labels.tolist() == [1, 2]
    assert source.read("valid_000000").boxes.tolist() == [[1.0, 1.0, 6.0, 6.0], [20.0, 10.0, 26.0, 16.0]]
    assert source.partitions["valid_000001"] == "val" and source.partitions["train_000003"] == "train"
    report = check_dataset(source, check_split=True)
    assert report.ok, report.describe_errors()
    assert report.split.counts() == {"train": 4, "val": 2, "test": 2}
    assert all(s.startswith("valid_") for s in report.split.splits["val"])


def test_roboflow_supercategory_placeholder_is_dropped(tmp_path: Path) -> None:
    root = tmp_path / "rf"
    # Roboflow's export: the supercategory "objects" is category 0, unused; the real classes name it
    categories = [{"id": 0, "name": "objects", "supercategory": "none"},
                  {"id": 1, "name": "player", "supercategory": "objects"},
                  {"id": 2, "name": "ball", "supercategory": "objects"}]
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        write_split(root / split, n, roboflow=True, json_name="_annotations.coco.json", categories=categories)
    source = open_source(root)
    assert source.class_names == ["player", "ball"]
    assert source.read("train_000001").labels.tolist() == [1, 2]
    # the note (source.py does not yet copy merged COCO notes into source.notes)
    assert any("'objects'" in note and "supercategory" in note for note in source.labels.notes), source.labels.notes
    # an unused category that is nobody's supercategory is a real (empty) class and stays
    kept = tmp_path / "kept"
    write_split(kept / "train", 2, roboflow=True, json_name="_annotations.coco.json",
                categories=[*CATEGORIES, {"id": 5, "name": "referee", "supercategory": "people"}])
    assert open_source(kept).class_names == ["player", "ball", "referee"]


def test_train_and_val_only_leave_test_empty(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "tv", {"train": 4, "val": 2})
    plan = check_dataset(root, check_split=True).split
    assert plan.counts() == {"train": 4, "val": 2, "test": 0}
    assert "test" not in plan.wanted  # no "empty split" warning for a split the data set does not have
    assert any("no test split folder: the test split is empty" in note for note in plan.notes)


def test_train_and_test_only_draw_val_from_train(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "tt", {"train": 30, "test": 5})
    report = check_dataset(root, DataConfig(split=SplitConfig(gap=0)), check_split=True)
    assert report.ok, report.describe_errors()
    plan = report.split
    counts = plan.counts()
    assert counts["test"] == 5 and counts["train"] + counts["val"] == 30 and counts["val"] > 0
    assert all(s.startswith("train_") for s in plan.splits["val"])
    assert set(plan.splits["test"]) == {f"test_{i:06d}" for i in range(5)}
    assert any("no val split folder: val is drawn from train" in note for note in plan.notes)


def test_incomplete_partitions_keep_their_old_meaning() -> None:
    stems = [f"f{i:03d}" for i in range(20)]
    test = {s: "test" for s in stems[:4]}
    config = SplitConfig(gap=0, group_by="none")
    # LLVIP-like: a test partition, the rest divided by the ratios (test frames never carved from train)
    loose = make_splits(stems, config, partitions=dict(test))
    assert len(loose.splits["test"]) == 4 and len(loose.splits["val"]) > 0
    complete = make_splits(stems, config, partitions=Partitions({**{s: "train" for s in stems[4:]}, **test},
                                                                complete=True))
    assert len(complete.splits["test"]) == 4 and len(complete.splits["train"]) + len(complete.splits["val"]) == 16


def test_split_file_lines_name_coco_frames(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "files", {"train": 4, "val": 2, "test": 2})
    (root / "mine.txt").write_text("train/images/000001.jpg\ntrain/000002\n")
    data = DataConfig(split=SplitConfig(test_file="mine.txt"))
    plan = check_dataset(root, data, check_split=True).split
    assert plan.method == "files" and plan.splits["test"] == ["train_000001", "train_000002"]


def test_rgb_only_gives_one_stream(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "rgb", {"train": 4, "val": 2, "test": 2})
    prepared = prepare_data(config_for(root), **QUIET)
    resolved = prepared.resolved_config
    assert [m.name for m in resolved.data.modalities] == ["rgb"]
    assert resolved.model.streams == [["rgb"]]
    assert resolved.data.layout == "coco" and resolved.data.names == ["player", "ball"]
    assert {k: len(v) for k, v in prepared.splits.items()} == {"train": 4, "val": 2, "test": 2}


def test_thermal_sibling_folder_gives_two_modalities(tmp_path: Path) -> None:
    root = tmp_path / "mm"
    for split, n in {"train": 4, "val": 2, "test": 2}.items():
        write_split(root / split, n, modalities=("thermal",))
    prepared = prepare_data(config_for(root), **QUIET)
    resolved = prepared.resolved_config
    assert [m.name for m in resolved.data.modalities] == ["rgb", "thermal"]
    assert resolved.model.streams == [["rgb"], ["thermal"]]
    sample = prepared.source.read("test_000001")
    assert sample.modalities["thermal"].shape == (32, 48, 1)
    # a thermal file missing in one split: that frame lacks its partner
    (root / "val" / "thermal" / "000001.png").unlink()
    report = check_dataset(root)
    problems = [p for p in report.errors if p.stem == "val_000001"]
    assert [p.kind for p in problems] == ["missing_partner"] and "val/thermal" in str(problems[0])


# ---------------------------------------------------------------------------------------- bad input
def test_images_missing_on_disk_are_errors_naming_the_file(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "missing", {"train": 5, "val": 2, "test": 2})
    for name in ("000001.jpg", "000003.jpg"):
        (root / "train" / "images" / name).unlink()
    report = check_dataset(root)
    errors = [p for p in report.errors if p.kind == "unreadable"]
    assert {p.stem for p in errors} == {"train_000001", "train_000003"}
    text = str(errors[0])
    assert "train/annotations/annotations.json" in text and "is listed but not on disk" in text
    assert "2 of the 5 images this file lists are missing, first: '000001.jpg', '000003.jpg'" in text
    with pytest.raises(DataError, match=r"annotations\.json: image '000001\.jpg' is listed but not on disk"):
        prepare_data(config_for(root), **QUIET)
    skipped = prepare_data(config_for(root, on_error="skip"), **QUIET)
    assert skipped.skipped == 2 and "train_000001" not in skipped.splits["train"]
    assert len(skipped.splits["train"]) == 3


def test_box_outside_the_image_names_json_and_annotation(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "outside", {"train": 3, "val": 2, "test": 2},
                     boxes=lambda i: [(1, [40.0, 2.0, 30.0, 10.0] if i == 2 else [1.0, 1.0, 5.0, 5.0])])
    report = check_dataset(root)
    (problem,) = [p for p in report.errors]
    assert problem.kind == "out_of_range" and problem.stem == "train_000002"
    assert "train/annotations/annotations.json [000002.jpg]" in str(problem)
    assert "annotation id 102: box (40, 2, 70, 12) outside the 48x32 image" in str(problem)
    with pytest.raises(DataError, match=r"annotation id 102: box \(40, 2, 70, 12\) outside"):
        prepare_data(config_for(root), **QUIET)


def test_unknown_category_id_names_json_annotation_and_id(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "unknown", {"train": 3, "val": 2, "test": 2},
                     boxes=lambda i: [(9 if i == 1 else 1, [1.0, 1.0, 5.0, 5.0])])
    report = check_dataset(root)
    problems = [p for p in report.errors if p.stem == "val_000001"]
    assert [p.kind for p in problems] == ["unnamed_class"]
    assert ("val/annotations/annotations.json [000001.jpg]: annotation id 101: unknown category_id 9, not in the "
            "file's 'categories' (ids 1, 2)") in str(problems[0])
    with pytest.raises(DataError, match="unknown category_id 9"):
        prepare_data(config_for(root), **QUIET)


def test_one_id_two_names_across_splits_names_both_files(tmp_path: Path) -> None:
    root = tmp_path / "clash"
    write_split(root / "train", 3)
    write_split(root / "val", 2, categories=[{"id": 1, "name": "player"}, {"id": 2, "name": "referee"}])
    report = check_dataset(root)
    (problem,) = report.fatal
    assert problem.kind == "duplicate_id"
    text = str(problem)
    assert str(root / "val" / "annotations" / "annotations.json") in text
    assert str(root / "train" / "annotations" / "annotations.json") in text
    assert "category id 2 is 'referee' here but 'ball' in" in text
    with pytest.raises(DataError, match="category id 2 is 'referee' here but 'ball'"):
        prepare_data(config_for(root, on_error="skip"), **QUIET)  # a data-set-wide error: no skipping


def test_unlisted_image_is_a_missing_label(tmp_path: Path) -> None:
    root = tmp_path / "unlisted"
    write_split(root / "train", 3, extra_images=1)
    write_split(root / "val", 2)
    problems = [p for p in check_dataset(root).errors]
    assert [(p.kind, p.stem) for p in problems] == [("missing_label", "train_000003")]
    assert "not listed in" in str(problems[0]) and "train/annotations/annotations.json" in str(problems[0])


def test_several_coco_files_in_a_split_is_an_error(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "two", {"train": 2, "val": 2})
    extra = root / "val" / "annotations" / "other.json"
    extra.write_text((root / "val" / "annotations" / "annotations.json").read_text())
    (root / "val" / "annotations" / "annotations.json").rename(root / "val" / "annotations" / "more.json")
    with pytest.raises(DataError, match=r"val: several COCO files \(annotations/more\.json, annotations/other\.json\)"):
        open_source(root)
    # COCO's own naming: instances_*.json is the box file, a captions file beside it is not
    (root / "val" / "annotations" / "more.json").rename(root / "val" / "annotations" / "instances_val.json")
    (root / "val" / "annotations" / "other.json").rename(root / "val" / "annotations" / "captions_val.json")
    assert len(open_source(root).stems) == 4


def test_split_without_coco_file_and_data_labels(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "nolabels", {"train": 2, "val": 2})
    (root / "val" / "annotations" / "annotations.json").unlink()
    with pytest.raises(DataError, match=r"val: no COCO file for the 2 images of this split"):
        open_source(root, layout="coco")
    with pytest.raises(DataError, match="data.labels='x.json': the coco layout reads the COCO file of each split"):
        open_source(root, DataConfig(labels="x.json"), layout="coco")


def test_unreadable_coco_file_names_it(tmp_path: Path) -> None:
    root = seed_tree(tmp_path / "broken", {"train": 2, "val": 2})
    (root / "val" / "annotations" / "annotations.json").write_text("{not json")
    report = check_dataset(root)
    assert [p.kind for p in report.fatal] == ["unreadable"]
    assert "val/annotations/annotations.json: unreadable COCO file" in str(report.fatal[0])
    # its images are not also reported as unlisted, one by one
    assert not [p for p in report.errors if p.kind == "missing_label"]
