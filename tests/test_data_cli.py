"""``cadet data`` commands (through ``crossattentiondet.cli.main``), statistics and conversion."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossattentiondet.cli import main
from crossattentiondet.config import ConfigError, DataConfig
from crossattentiondet.data import compute_stats, convert_dataset, open_source
from crossattentiondet.errors import DataError
from tests.conftest import write_image


@pytest.fixture
def constant_frames(tmp_path: Path) -> Path:
    """Two 100x100 frames with known pixel values and one small, one medium and one large box."""
    root = tmp_path / "const"
    write_image(root / "rgb" / "a.png", np.full((100, 100, 3), 51, np.uint8))  # 0.2
    write_image(root / "rgb" / "b.png", np.full((100, 100, 3), 102, np.uint8))  # 0.4
    write_image(root / "thermal" / "a.png", np.full((100, 100), 13107, np.uint16))  # 0.2
    write_image(root / "thermal" / "b.png", np.full((100, 100), 39321, np.uint16))  # 0.6
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.5 0.5\n")  # 10x10 small, 50x50 medium
    (root / "labels" / "b.txt").write_text("1 0.5 0.5 0.98 0.98\n")  # 98x98 = 9604 >= 96^2: large
    (root / "classes.txt").write_text("person\ncar\n")
    return root


def test_check_command(trees, capsys) -> None:
    root = trees.folders(frames=trees.default_frames(3))
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    # three frames are one block: the data is fine, the split is not (train 1 group, val and test empty)
    assert "3 frames (folders layout, modalities rgb, thermal, 2 classes): 0 errors, 3 warnings" in out
    assert "warning: " in out and "the val split is empty" in out and "the test split is empty" in out
    (root / "labels" / "frame001.txt").write_text("0 0.5 0.5\n")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "error: " in out and "frame001.txt: line 1: expected 5 numbers" in out
    assert main(["data", "check", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 1 and report["problems"][0]["kind"] == "bad_label"
    assert report["problems"][0]["stem"] == "frame001" and report["ok"] is False


def test_check_command_json_names_the_new_problem_kinds(trees, capsys) -> None:
    root = trees.folders(frames={f"frame{i:03d}": [] for i in range(3)}, classes=["car", "car"])
    assert main(["data", "check", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    kinds = {(p["kind"], p["severity"], p["stem"]) for p in report["problems"]}
    assert ("duplicate_class", "error", None) in kinds
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "1 errors (data-set wide)" in out  # not "1 errors in 0 frames"
    (root / "classes.txt").write_text("car\n")
    assert main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["kind"] for p in report["problems"] if p["kind"] == "no_boxes"] == ["no_boxes"]


def test_check_command_layout_and_config(trees, tmp_path: Path, capsys) -> None:
    frames = {"010001": [(0, 0.5, 0.5, 0.5, 0.5)], "010002": []}
    root = trees.folders(frames=frames, folder_of={"rgb": "visible", "thermal": "infrared"},
                         labels="voc", classes=["person"])
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  names: [person]\n")
    assert main(["data", "check", str(root), "--layout", "llvip", "--config", str(config)]) == 0
    assert "llvip layout" in capsys.readouterr().out
    assert main(["data", "check", str(root), "--layout", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown layout 'nonsense'") and err.count("\n") == 1
    assert main(["data", "check", str(tmp_path / "absent")]) == 2
    assert "data root not found" in capsys.readouterr().err


def test_check_command_warns_about_few_groups_and_takes_split_settings(trees, capsys) -> None:
    box = [(0, 0.5, 0.5, 0.5, 0.5)]
    root = trees.folders(frames={f"video{c}-{f:04d}": box for c in range(4) for f in range(3)})
    assert main(["data", "check", str(root)]) == 0  # warnings only
    out = capsys.readouterr().out
    assert "warning: " in out and "the val split has only 1 independent group (sequences, 3 frames)" in out
    assert "the test split has only 1 independent group" in out
    assert main(["data", "check", str(root), "data.split.test=0", "data.split.val=0.3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"]["counts"]["test"] == 0 and report["split"]["grouping"] == "sequences"
    few = [p for p in report["problems"] if p["kind"] == "few_groups"]
    assert few and all("test split" not in p["message"] for p in few)
    two = trees.folders("two", frames={f"video{c}-{f:04d}": box for c in range(2) for f in range(3)})
    assert main(["data", "check", str(two)]) == 1  # two clips cannot fill three splits
    assert "only 2 sequences" in capsys.readouterr().out


def test_stats_numbers_on_a_known_case(constant_frames: Path) -> None:
    stats = compute_stats(constant_frames)
    assert stats["images"] == 2 and stats["unreadable"] == 0 and stats["negatives"] == 0
    assert stats["boxes"]["total"] == 3 and stats["boxes"]["per_image"] == 1.5
    assert stats["boxes"]["per_class"] == {"person": 1, "car": 2}
    assert stats["boxes"]["sizes"] == {"small": 1, "medium": 1, "large": 1}
    assert stats["boxes"]["sizes_per_class"]["car"] == {"small": 0, "medium": 1, "large": 1}
    assert stats["image_sizes"] == {"100x100": 2}
    rgb, thermal = stats["channels"]["rgb"], stats["channels"]["thermal"]
    assert rgb["scale"] == 255.0 and thermal["scale"] == 65535.0
    np.testing.assert_allclose(rgb["mean"], [0.3] * 3, atol=1e-6)
    np.testing.assert_allclose(rgb["std"], [0.1] * 3, atol=1e-6)
    np.testing.assert_allclose(thermal["mean"], [0.4], atol=1e-6)
    np.testing.assert_allclose(thermal["std"], [0.2], atol=1e-6)


def tree_listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_stats_command_saves_json_and_histograms(constant_frames: Path, tmp_path: Path, capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_listing(constant_frames)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["data", "stats", str(constant_frames)]) == 0
    out = capsys.readouterr().out
    assert "boxes 3 (1.5 per image): person 1, car 2" in out and "box sizes (COCO): small 1, medium 1, large 1" in out
    assert json.loads((cwd / "stats.json").read_text())["images"] == 2  # the current folder by default
    target, hist = tmp_path / "s.json", tmp_path / "hist"
    assert main(["data", "stats", str(constant_frames), "--out", str(target), "--histograms", str(hist),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(target.read_text())
    assert sorted(p.name for p in hist.iterdir()) == ["histogram_rgb.png", "histogram_thermal.png"]
    assert cv2.imread(str(hist / "histogram_rgb.png")) is not None
    # --out a folder, --histograms without a folder: everything in --out
    folder = tmp_path / "report"
    assert main(["data", "stats", str(constant_frames), "--out", str(folder), "--histograms"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["histogram_rgb.png", "histogram_thermal.png", "stats.json"]
    assert f"saved {folder / 'stats.json'}" in capsys.readouterr().out
    # an override right after --histograms is an override, not the histogram folder
    assert main(["data", "stats", str(constant_frames), "--out", str(tmp_path / "r2"), "--histograms",
                 "data.layout=folders"]) == 0
    assert (tmp_path / "r2" / "histogram_rgb.png").is_file() and not (cwd / "data.layout=folders").exists()
    assert tree_listing(constant_frames) == before  # nothing was written into the data set


def test_stats_refuses_to_write_into_the_data_set(constant_frames: Path, capsys,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_listing(constant_frames)
    for args, option in ((["--out", str(constant_frames / "stats")], "--out"),
                         (["--out", str(constant_frames / "rgb" / "s.json")], "--out"),
                         (["--out", str(constant_frames.parent / "elsewhere"), "--histograms",
                           str(constant_frames / "rgb")], "--histograms")):
        assert main(["data", "stats", str(constant_frames), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {option} ") and f"is inside the data set {constant_frames}" in err, err
    monkeypatch.chdir(constant_frames / "rgb")  # the default, the current folder, is inside it too
    assert main(["data", "stats", str(constant_frames)]) == 2
    assert "error: the current folder" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="inside the data set"):  # the library keeps the rule too
        compute_stats(constant_frames, histograms_dir=constant_frames / "hist")
    assert tree_listing(constant_frames) == before
    assert not (constant_frames.parent / "elsewhere").exists()  # refused before anything was made


def test_convert_round_trip(trees, tmp_path: Path, capsys) -> None:
    frames = {"a": [(0, 0.3, 0.4, 0.2, 0.3)], "b": [], "c": [(1, 0.5, 0.5, 0.5, 0.5), (0, 0.2, 0.2, 0.1, 0.1)]}
    src = trees.folders(frames=frames)
    npy = tmp_path / "as_npy"
    assert main(["data", "convert", str(src), str(npy), "--to", "npy"]) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    array = np.load(npy / "images" / "a.npy")
    assert array.shape == (32, 48, 4) and array.dtype == np.uint16  # thermal is 16-bit
    original = open_source(src)
    np.testing.assert_array_equal(array[:, :, :3], original.read("a").modalities["rgb"])
    assert (npy / "labels" / "b.txt").read_text() == ""  # negatives are kept
    converted = open_source(npy)
    assert converted.layout == "original" and converted.modality_names == ["rgb", "thermal"]
    back = tmp_path / "back"
    result = convert_dataset(npy, back, "folders")
    assert result.frames == 3 and result.layout == "folders"
    assert cv2.imread(str(back / "rgb" / "a.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint8  # scale 255 kept
    assert cv2.imread(str(back / "thermal" / "a.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    returned = open_source(back)
    for stem in frames:
        first, last = original.read(stem), returned.read(stem)
        for name in ("rgb", "thermal"):
            np.testing.assert_array_equal(first.modalities[name], last.modalities[name])
        np.testing.assert_allclose(first.boxes, last.boxes, atol=1e-3)
        assert first.labels.tolist() == last.labels.tolist()
    assert returned.class_names == ["person", "car"]


def test_convert_to_coco_reads_back_as_folders(trees, tmp_path: Path, capsys) -> None:
    frames = {"a": [(0, 0.3, 0.4, 0.2, 0.3)], "b": [], "c": [(1, 0.5, 0.5, 0.5, 0.5), (0, 0.2, 0.2, 0.1, 0.1)]}
    src = trees.folders(frames=frames, labels="voc")
    dst = tmp_path / "as_coco"
    assert main(["data", "convert", str(src), str(dst), "--to", "coco"]) == 0
    assert "wrote 3 frames" in capsys.readouterr().out
    assert sorted(p.name for p in dst.iterdir()) == ["annotations.json", "cadet_data.json", "rgb", "thermal"]
    coco = json.loads((dst / "annotations.json").read_text())
    assert [img["file_name"] for img in coco["images"]] == ["a.png", "b.png", "c.png"]
    original = open_source(src)
    assert [c["name"] for c in coco["categories"]] == original.class_names == ["car", "person"]  # VOC: sorted
    assert len(coco["annotations"]) == 3 and len({a["id"] for a in coco["annotations"]}) == 3
    assert main(["data", "check", str(dst)]) == 0
    returned = open_source(dst)
    assert returned.layout == "folders" and returned.labels.format == "coco"
    assert returned.class_names == original.class_names and returned.stems == ["a", "b", "c"]
    for stem in frames:
        first, last = original.read(stem), returned.read(stem)
        np.testing.assert_allclose(first.boxes, last.boxes, atol=1e-3)
        assert first.labels.tolist() == last.labels.tolist()
        for name in ("rgb", "thermal"):
            np.testing.assert_array_equal(first.modalities[name], last.modalities[name])


def test_convert_refuses_errors_and_occupied_destination(trees, tmp_path: Path, capsys) -> None:
    src = trees.folders(frames=trees.default_frames(3))
    (src / "labels" / "frame000.txt").write_text("0 2 2 0.1 0.1\n")
    with pytest.raises(DataError, match="source has errors"):
        convert_dataset(src, tmp_path / "out", "npy")
    result = convert_dataset(src, tmp_path / "out", "npy", DataConfig(on_error="skip"))
    assert result.frames == 2 and result.skipped == 1
    assert main(["data", "convert", str(src), str(tmp_path / "out"), "--to", "npy"]) == 2
    assert "destination exists and is not an empty folder" in capsys.readouterr().err
    assert main(["data", "convert", str(src), str(tmp_path / "x"), "--to", "hdf5"]) == 2
    assert "--to must be npy, folders or coco" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_synth_command(tmp_path: Path, capsys) -> None:
    pytest.importorskip("crossattentiondet.data.synth")
    out = tmp_path / "syn"
    assert main(["data", "synth", str(out), "--images", "4", "--size", "64x48", "--classes", "2",
                 "--format", "folders", "--seed", "3"]) == 0
    assert "wrote 4 synthetic frames" in capsys.readouterr().out
    assert len(list((out / "thermal").glob("*.png"))) == 4
    assert main(["data", "check", str(out)]) == 0
    assert "folders layout, modalities rgb, thermal, event" in capsys.readouterr().out
    assert main(["data", "synth", str(tmp_path / "bad"), "--size", "64by48"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --size must look like WIDTHxHEIGHT (e.g. 160x128), got '64by48'\n"
