"""``cadet data synth --task tiny``: deterministic tiny-object scenes in the coco layout."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossattentiondet.cli import main
from crossattentiondet.cli.data_cmd import TINY_IMAGES, TINY_SIZE
from crossattentiondet.data import check_dataset, open_source, synth_tiny
from crossattentiondet.data.synth_tiny import generate_tiny_dataset, render_frame
from crossattentiondet.errors import DataError

SIZE = (128, 96)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data", 24, SIZE, seed=3)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def coco_files(root: Path) -> dict[str, dict]:
    return {split: json.loads((root / split / "annotations" / "annotations.json").read_text())
            for split in ("train", "val", "test")}


def test_same_seed_same_bytes(tiny: Path, tmp_path: Path) -> None:
    again = generate_tiny_dataset(tmp_path / "again", 24, SIZE, seed=3)
    first, second = files_of(tiny), files_of(again)
    assert sorted(first) == sorted(second) and len(first) == 24 * 2 + 3 + 1
    assert all(first[name] == second[name] for name in first)
    other = files_of(generate_tiny_dataset(tmp_path / "other", 24, SIZE, seed=4))
    assert other["train/images/000000.png"] != first["train/images/000000.png"]
    # a frame depends on its index, not on how many frames are made
    assert np.array_equal(render_frame(3, 5, SIZE).images["rgb"],
                          cv2.cvtColor(cv2.imread(str(tiny / "train" / "images" / "000005.png")), cv2.COLOR_BGR2RGB))


def test_layout_on_disk_and_metadata(tiny: Path) -> None:
    coco = coco_files(tiny)
    assert {s: len(c["images"]) for s, c in coco.items()} == {"train": 16, "val": 4, "test": 4}
    assert coco["train"]["categories"][0]["name"] == "player" and coco["train"]["categories"][1]["name"] == "ball"
    assert [c["id"] for c in coco["val"]["categories"]] == [1, 2]
    for split, c in coco.items():
        for image in c["images"]:
            assert (tiny / split / "images" / image["file_name"]).is_file()
            assert (tiny / split / "thermal" / image["file_name"]).is_file()
    meta = json.loads((tiny / "synth.json").read_text())
    assert meta["generator"] == "crossattentiondet.data.synth_tiny" and meta["layout"] == "coco"
    assert meta["summary"]["frames"] == 24 and meta["params"] == {"images": 24, "size": list(SIZE), "seed": 3,
                                                                   "event": False}


def test_box_sizes_in_range_and_both_tiny_bins() -> None:
    players, balls = [], []
    for index in range(60):
        frame = render_frame(0, index, SIZE)
        for (x, y, w, h), category in zip(frame.boxes, frame.categories):
            assert x >= 0 and y >= 0 and x + w <= SIZE[0] and y + h <= SIZE[1]
            (players if category == 1 else balls).append((w, h))
    heights = np.array([h for _, h in players])
    assert heights.min() >= 17 and heights.max() <= 61, (heights.min(), heights.max())  # 20-60 px drawn
    assert all(0.25 < w / h < 0.75 for w, h in players)
    sides = np.array([np.sqrt(w * h) for w, h in balls])
    assert sides.min() >= 4 and sides.max() <= 15
    very_tiny, tiny = (sides < 8).sum(), ((sides >= 8) & (sides < 16)).sum()
    assert very_tiny >= 10 and tiny >= 10, (very_tiny, tiny)  # AI-TOD's two smallest bins both occur


def ring_contrast(image: np.ndarray, box: list[float]) -> float:
    """|mean inside the ball's disc - mean in a ring around it| on the 0-1 scale (our own measurement)."""
    gray = image.astype(np.float64).mean(axis=2) / 255.0 if image.ndim == 3 else image / 255.0
    x, y, w, _ = box
    r, cx, cy = w / 2, x + w / 2, y + w / 2
    yy, xx = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
    dist = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy)
    return float(abs(gray[dist <= max(r - 0.5, 0.7)].mean() - gray[(dist >= r + 2) & (dist <= r + 5)].mean()))


def test_ball_faint_in_rgb_clear_in_thermal(tiny: Path) -> None:
    rgb, thermal = [], []
    for split, coco in coco_files(tiny).items():
        names = {image["id"]: image["file_name"] for image in coco["images"]}
        for ann in coco["annotations"]:
            if ann["category_id"] != 2:
                continue
            name = names[ann["image_id"]]
            rgb.append(ring_contrast(cv2.imread(str(tiny / split / "images" / name)), ann["bbox"]))
            thermal.append(ring_contrast(cv2.imread(str(tiny / split / "thermal" / name), cv2.IMREAD_UNCHANGED),
                                         ann["bbox"]))
    assert len(rgb) >= 15
    rgb_a, thermal_a = np.array(rgb), np.array(thermal)
    assert rgb_a.mean() < 0.08 and thermal_a.mean() > 0.12  # faint next to the noise, clear
    assert rgb_a.mean() * 2 < thermal_a.mean()
    assert (rgb_a < thermal_a).mean() >= 0.9


def test_reads_back_with_the_coco_layout_and_checks_clean(tiny: Path, capsys) -> None:
    source = open_source(tiny)
    assert source.layout == "coco" and source.modality_names == ["rgb", "thermal"]
    assert source.class_names == ["player", "ball"]
    coco = coco_files(tiny)
    first = coco["val"]["images"][0]
    stem = "val_" + Path(first["file_name"]).stem
    boxes = [a["bbox"] for a in coco["val"]["annotations"] if a["image_id"] == first["id"]]
    sample = source.read(stem)
    np.testing.assert_allclose(sample.boxes, [[x, y, x + w, y + h] for x, y, w, h in boxes], atol=1e-4)
    assert sample.labels.tolist() == [a["category_id"] for a in coco["val"]["annotations"]
                                      if a["image_id"] == first["id"]]
    report = check_dataset(source, check_split=True)
    assert report.ok and report.split.counts() == {"train": 16, "val": 4, "test": 4}
    assert main(["data", "check", str(tiny)]) == 0
    assert "24 frames (coco layout, modalities rgb, thermal, 2 classes): 0 errors" in capsys.readouterr().out


def test_cli_with_event_and_bad_options(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["data", "synth", str(out), "--task", "tiny", "--images", "6", "--size", "96x80", "--seed", "1",
                 "--event"]) == 0
    assert "wrote 6 tiny-object frames (96x80, rgb + thermal + event" in capsys.readouterr().out
    assert open_source(out).modality_names == ["rgb", "thermal", "event"]
    event = cv2.imread(str(out / "train" / "event" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert event.dtype == np.uint8 and (event != 128).any() and (event == 128).mean() > 0.5
    # running again over its own output replaces it; another folder's content is refused
    assert main(["data", "synth", str(out), "--task", "tiny", "--images", "3", "--size", "96x80"]) == 0
    assert len(list((out / "train" / "images").iterdir())) == 1
    other = tmp_path / "busy"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and not a tiny synthetic data set"):
        generate_tiny_dataset(other, 3, (96, 80))
    capsys.readouterr()
    assert main(["data", "synth", str(tmp_path / "x"), "--task", "tiny", "--classes", "2"]) == 2
    assert "--task tiny has its two classes" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "x"), "--task", "tiny", "--format", "folders"]) == 2
    assert "--task tiny writes the coco layout" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "x"), "--task", "tiny", "--size", "32x32"]) == 2
    assert "size must be whole pixels >= 64x64" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "y"), "--event"]) == 2
    assert "--event is for --task tiny" in capsys.readouterr().err
    # the CLI's stated defaults are the generator's
    assert TINY_SIZE == synth_tiny.DEFAULT_SIZE and TINY_IMAGES == synth_tiny.DEFAULT_IMAGES
