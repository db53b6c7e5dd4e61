"""KAIST multispectral pedestrians: the tree, bbGt annotations (original / paired), ignore regions,
occlusion, image lists as the split, per-box extras through the transforms, MR^-2 in the evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crossattentiondet.config import AugmentConfig, DataConfig, ModalityConfig, load_config
from crossattentiondet.data import check_dataset, detect_layout, open_source, prepare_data
from crossattentiondet.data.sample import Sample
from crossattentiondet.data.splits import group_frames
from crossattentiondet.data.transforms import Augmenter
from crossattentiondet.errors import DataError
from tests.conftest import write_image

QUIET = {"log": lambda _: None}
SIZE = (160, 128)  # width, height
HEADER = "% bbGt version=3\n"
# the frame with every kind of box: a partly occluded person, a crowd, a cyclist, an unsure person, a person
# marked ign=1
BUSY = (HEADER + "person 10 20 30 70 1 0 0 0 0 0 0\n" + "people 60 10 40 60 0 0 0 0 0 0 0\n"
        + "cyclist 110 30 20 40 0 0 0 0 0 0 0\n" + "person? 5 100 10 20 0 0 0 0 0 0 0\n"
        + "person 120 80 15 30 0 0 0 0 0 1 0\n")


def person(x: float, y: float, w: float = 30, h: float = 70, occ: int = 0) -> str:
    return f"person {x} {y} {w} {h} {occ} 0 0 0 0 0 0\n"


def kaist_tree(root: Path, videos: dict[str, int], *, annotations: str = "annotations", paired: bool = False,
               lists: dict[str, list[str]] | None = None) -> Path:
    """setNN/VNNN/{visible,lwir}/INNNNN.jpg for ``videos`` ({"set00/V000": frames}), one person per frame."""
    rng = np.random.default_rng(0)
    for video, count in videos.items():
        for i in range(count):
            for modality in ("visible", "lwir"):
                write_image(root / video / modality / f"I{i:05d}.jpg",
                            rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
            if paired:  # the two modalities' boxes differ by a shift (weak alignment)
                for modality, shift in (("visible", 0), ("lwir", 4)):
                    path = root / annotations / video / modality / f"I{i:05d}.txt"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(HEADER + person(20 + shift, 30))
            else:
                path = root / annotations / video / f"I{i:05d}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(HEADER + person(20 + i, 30))
    for name, lines in (lists or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return root


def two_sets(root: Path, **kwargs) -> Path:
    return kaist_tree(root, {"set00/V000": 3, "set00/V001": 3, "set06/V000": 3, "set06/V001": 3}, **kwargs)


def test_tree_is_detected_and_frames_keep_set_and_video(tmp_path: Path) -> None:
    root = two_sets(tmp_path / "kaist")
    assert detect_layout(root) == "kaist"
    source = open_source(root)
    assert source.layout == "kaist"
    assert {m.name: m.source for m in source.modalities} == {"rgb": "visible", "thermal": "lwir"}
    assert len(source.stems) == 12 and source.stems[0] == "set00_V000_I00000"
    assert source.class_names == ["person"]
    # the splitter's auto grouping sees whole videos
    grouping = group_frames(source.stems, "auto")
    assert grouping.kind == "sequences" and len(grouping.groups) == 4
    assert sorted(grouping.groups["seq:set06_V001_I"]) == ["set06_V001_I00000", "set06_V001_I00001",
                                                           "set06_V001_I00002"]
    sample = source.read("set06_V001_I00002")
    assert sample.modalities["rgb"].shape == (128, 160, 3) and sample.modalities["thermal"].shape == (128, 160, 1)
    assert sample.boxes.tolist() == [[22, 30, 52, 100]] and sample.labels.tolist() == [1]
    assert sample.occlusion.tolist() == [0] and len(sample.ignore_boxes) == 0


def test_ignore_labels_and_ign_flag_become_ignore_regions_with_occlusion_kept(tmp_path: Path) -> None:
    root = two_sets(tmp_path / "kaist")
    (root / "annotations/set00/V000/I00001.txt").write_text(BUSY)
    source = open_source(root)
    sample = source.read("set00_V000_I00001")
    assert sample.boxes.tolist() == [[10, 20, 40, 90]] and sample.labels.tolist() == [1]
    assert sample.occlusion.tolist() == [1]
    # people, cyclist, person? and the ign=1 person, clipped to the image (the cyclist reaches x=130 < 160)
    assert sample.ignore_boxes.tolist() == [[60, 10, 100, 70], [110, 30, 130, 70], [5, 100, 15, 120],
                                            [120, 80, 135, 110]]
    # the label-only view (what evaluation reads) gives the same, without reading pixels
    annotations = source.annotations("set00_V000_I00001", *SIZE)
    assert annotations.ignore_boxes.tolist() == sample.ignore_boxes.tolist()
    assert annotations.occlusion.tolist() == [1]
    # training targets hold the person only
    from crossattentiondet.data.sample import to_model_input

    _, target = to_model_input(sample, ["rgb", "thermal"], 0)
    assert target["boxes"].tolist() == [[10, 20, 40, 90]]


def test_bad_lines_unknown_labels_and_boxes_past_the_image(tmp_path: Path) -> None:
    root = two_sets(tmp_path / "kaist")
    (root / "annotations/set00/V000/I00000.txt").write_text(HEADER + "person 1 2 three 4 0 0 0 0 0 0 0\n")
    (root / "annotations/set00/V000/I00001.txt").write_text(HEADER + "dog 10 10 20 20 0 0 0 0 0 0 0\n"
                                                           + person(150, 100, 30, 60))
    report = check_dataset(root)
    errors = [p for p in report.problems if p.severity == "error"]
    assert [(p.kind, p.stem) for p in errors] == [("bad_label", "set00_V000_I00000")]
    assert "line 2" in errors[0].message and "must be numbers" in errors[0].message
    warned = [p for p in report.problems if p.kind == "unnamed_class"]
    assert len(warned) == 1 and "'dog'" in warned[0].message and "ignore region" in warned[0].message
    sample = open_source(root).read("set00_V000_I00001")
    assert sample.ignore_boxes.tolist() == [[10, 10, 30, 30]]
    assert sample.boxes.tolist() == [[150, 100, 160, 128]]  # a person leaving the frame: clipped, no problem


def test_sanitized_style_flat_file_names(tmp_path: Path) -> None:
    root = kaist_tree(tmp_path / "kaist", {"set00/V000": 2, "set01/V000": 2})
    flat = root / "annotations-sanitized"
    flat.mkdir()
    for stem in ("set00_V000_I00000", "set00_V000_I00001", "set01_V000_I00000", "set01_V000_I00001"):
        (flat / f"{stem}.txt").write_text(HEADER + person(40, 20, 20, 60))
    source = open_source(root, DataConfig(labels="annotations-sanitized"))
    assert source.read("set01_V000_I00001").boxes.tolist() == [[40, 20, 60, 80]]


def test_paired_annotations_pick_one_modality(tmp_path: Path) -> None:
    root = kaist_tree(tmp_path / "kaist", {"set00/V000": 2, "set01/V000": 2}, annotations="annotations_paired",
                      paired=True)
    source = open_source(root)  # no annotations/ folder: the paired ones are found
    assert source.read("set00_V000_I00000").boxes.tolist() == [[24, 30, 54, 100]]  # lwir (thermal) by default
    assert any("the thermal boxes are the labels" in note for note in source.notes)
    for choice in ("rgb", "visible"):  # the modality's name or its folder
        chosen = open_source(root, DataConfig(label_modality=choice))
        assert chosen.read("set00_V000_I00000").boxes.tolist() == [[20, 30, 50, 100]]
    with pytest.raises(DataError, match=r"data.label_modality='event' has no paired annotations .*rgb, thermal"):
        open_source(root, DataConfig(label_modality="event"))


def test_list_files_are_the_split_and_unlisted_frames_of_listed_videos_are_left_out(tmp_path: Path) -> None:
    lists = {"imageSets/test-all-20.txt": ["set06/V000/I00001", "set06/V001/I00001"],
             "imageSets/train-all-02.txt": ["set00/V000/I00000", "set00/V000/I00002", "set00/V001/I00000",
                                            "set00/V001/I00002"]}
    root = two_sets(tmp_path / "kaist", lists=lists)
    source = open_source(root)
    assert len(source.stems) == 6  # 12 frames, 6 named by no list
    assert any("6 frames of the listed videos are in no list" in note for note in source.notes)
    # their annotation files are no "label without an image" (real lists leave out most frames)
    assert not [p for p in source.global_problems if p.kind == "orphan_label"]
    config = load_config(None, [f"data.root={root}", f"output.root={tmp_path / 'runs'}"])
    data = prepare_data(config, **QUIET)
    assert data.splits["test"] == ["set06_V000_I00001", "set06_V001_I00001"]
    # the train list's two videos: one each to train and val (whole sequences)
    assert sorted(data.splits["train"] + data.splits["val"]) == ["set00_V000_I00000", "set00_V000_I00002",
                                                                 "set00_V001_I00000", "set00_V001_I00002"]
    assert {s[:10] for s in data.splits["train"]}.isdisjoint({s[:10] for s in data.splits["val"]})
    # the same list given as data.split.test_file (as the user would): the same test frames
    files = load_config(None, [f"data.root={root}", "data.split.test_file=imageSets/test-all-20.txt"])
    assert prepare_data(files, **QUIET).splits["test"] == ["set06_V000_I00001", "set06_V001_I00001"]


def test_without_lists_kaist_test_sets_are_the_test_split(tmp_path: Path) -> None:
    root = two_sets(tmp_path / "kaist")
    data = prepare_data(load_config(None, [f"data.root={root}"]), **QUIET)
    assert data.splits["test"] == [s for s in data.source.stems if s.startswith("set06")]
    assert not any(s.startswith("set06") for s in data.splits["train"] + data.splits["val"])


def test_transforms_keep_occlusion_and_ignore_regions_with_their_boxes() -> None:
    arrays = {"rgb": np.zeros((100, 200, 3), np.uint8)}
    boxes = np.array([[10, 10, 40, 90], [60, 10, 90, 90], [120, 10, 150, 90], [160, 10, 190, 90]], np.float32)
    labels = np.array([1, 2, 3, 4], np.int64)
    sample = Sample("s", arrays, boxes, labels, occlusion=labels * 10, ignore_boxes=np.array([[0, 0, 20, 20]],
                                                                                               np.float32))
    flip = Augmenter(AugmentConfig(hflip=1.0), [ModalityConfig(name="rgb", channels=3, mean=[0.5] * 3,
                                                               std=[0.5] * 3)])
    out = flip(sample, np.random.default_rng(0))
    assert out.ignore_boxes.tolist() == [[180, 0, 200, 20]]
    assert out.occlusion.tolist() == [10, 20, 30, 40] and out.boxes[0].tolist() == [160, 10, 190, 90]
    crop = Augmenter(AugmentConfig(hflip=0.0, crop_prob=1.0, crop_min_scale=0.3, crop_min_visible=0.9),
                     [ModalityConfig(name="rgb", channels=3, mean=[0.5] * 3, std=[0.5] * 3)])
    dropped = 0
    for seed in range(20):
        out = crop(sample, np.random.default_rng(seed))
        # whatever the crop dropped, each box keeps its own occlusion value (label x 10 here)
        assert out.occlusion.tolist() == (out.labels * 10).tolist()
        assert len(out.boxes) == len(out.labels)
        dropped += len(out.labels) < 4
    assert dropped > 0  # some crops did drop boxes


@pytest.fixture
def one_thread():
    """One intra-op thread for a tiny model: on a busy 2-core machine more threads only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_evaluation_reports_miss_rates_for_kaist(tmp_path: Path, one_thread, monkeypatch) -> None:
    from crossattentiondet import viz
    from crossattentiondet.engine.report import evaluate_split

    # rendering the split's plots is most of this test's time and none of its subject
    monkeypatch.setattr(viz, "_save", lambda fig, path: Path(path), raising=False)
    from crossattentiondet.engine.runtime import DistInfo
    from crossattentiondet.models import build_detector
    from tests.test_train import TINY

    root = two_sets(tmp_path / "kaist")
    (root / "annotations/set06/V000/I00001.txt").write_text(BUSY)
    config = load_config(None, [*TINY, f"data.root={root}", "model.streams=[[rgb],[thermal]]",
                                "eval.bootstrap=0", "data.split.group_by=auto"])
    data = prepare_data(config, **QUIET)
    model = build_detector(data.resolved_config, data.num_classes, load_pretrained=False).eval()
    lines: list[str] = []
    log = type("Log", (), {"info": staticmethod(lambda text, *a, **k: lines.append(text))})()
    summary = evaluate_split(model, data, "test", data.resolved_config, torch.device("cpu"), DistInfo(),
                             tmp_path / "eval", log)
    metrics = summary["metrics"]
    assert {"MR2_reasonable", "MR2_all", "MR2_day", "MR2_night"} <= set(metrics) and "mAP" in metrics
    # the test split is set06 (a day set) with 70 px tall persons: day and reasonable see the same objects,
    # night has no image, so no objects: undefined
    assert metrics["MR2_day"] == metrics["MR2_reasonable"] and 0 < metrics["MR2_reasonable"] <= 1
    assert np.isnan(metrics["MR2_night"])
    assert any(line.startswith("miss rate (MR^-2") for line in lines)
    # the ignore regions of the busy frame reached the evaluation from the labels
    from crossattentiondet.engine.evaluate import evaluate
    from crossattentiondet.engine.missrate import image_truths, split_miss_rates

    result = evaluate(model, data.loader("test", False, 2), "cpu", class_names=data.class_names)
    truths = {t.stem: t for t in image_truths(result.image_records, data.source, 1)}
    assert len(truths["set06_V000_I00001"].ignore_boxes) == 4 and truths["set06_V000_I00001"].occlusion.tolist() == [1]
    assert split_miss_rates(result, data, False) == {}  # eval.miss_rate=false
