"""Segmentation data checks and statistics, and ``cadet data check|stats|synth`` for segmentation data."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from crossattentiondet.cli import main
from crossattentiondet.config import DataConfig, ModalityConfig, SplitConfig
from crossattentiondet.segmentation.checks import check_seg_source, format_seg_stats, seg_stats
from crossattentiondet.segmentation.layouts import open_seg_source
from tests.conftest import write_image
from tests.test_seg_layouts import (
    CAM,
    CAM_TEST,
    RGB_DEPTH,
    H,
    W,
    cod10k_tree,
    folders_tree,
    mfnet_tree,
    pixels,
)


def test_every_problem_is_named_in_one_report(tmp_path: Path) -> None:
    root = folders_tree(tmp_path / "f", stems=("a", "b", "c", "d", "e", "f", "g", "h"))
    (root / "masks" / "b.png").unlink()  # missing GT
    write_image(root / "masks" / "c.png", np.ones((H + 2, W), np.uint8))  # GT of another size
    write_image(root / "masks" / "d.png", np.full((H, W), 2, np.uint8))  # ids 0/2 in a binary data set
    write_image(root / "masks" / "e.png", np.zeros((H, W), np.uint8))  # empty
    (root / "rgb" / "f.png").write_bytes((root / "rgb" / "f.png").read_bytes()[:60])  # truncated
    write_image(root / "depth" / "g.png", np.zeros((H, W + 4), np.uint16))  # modalities of different sizes
    (root / "depth" / "h.png").unlink()  # missing modality
    write_image(root / "masks" / "zz.png", np.zeros((H, W), np.uint8))  # GT without a frame
    report = check_seg_source(open_seg_source(root, RGB_DEPTH), workers=2)
    found = {(p.kind, str(Path(p.path).relative_to(root)), p.severity) for p in report.problems}
    assert {
        ("missing_mask", "rgb/b.png", "error"),
        ("mask_size", "masks/c.png", "error"),
        ("mask_values", "masks/d.png", "error"),
        ("empty_mask", "masks/e.png", "warning"),
        ("unreadable", "rgb/f.png", "error"),
        ("size_mismatch", "rgb/g.png", "error"),
        ("missing_partner", "rgb/h.png", "error"),
        ("orphan_mask", "masks/zz.png", "warning"),
    } == found
    from crossattentiondet.data.problems import SEGMENTATION_KINDS

    assert SEGMENTATION_KINDS <= {kind for kind, _, _ in found}  # every segmentation kind is reachable
    assert report.frames == 8 and report.empty_masks == 1 and report.empty_stems == ["e"]
    assert report.bad_stems == {"b", "c", "d", "f", "g", "h"}
    messages = {Path(p.path).name: p.message for p in report.problems}
    assert messages["c.png"].startswith(f"mask is {W}x{H + 2}, the frame is {W}x{H}")
    assert "values 2 in a binary mask" in messages["d.png"]
    assert messages["e.png"].startswith("1 of 8 masks have no object pixel")
    assert report.summary() == ("8 frames (folders layout, modalities rgb, depth, binary): 6 errors in 6 "
                                "frames, 2 warnings, 1 empty masks")
    assert report.describe_errors(2).count(";") == 2 and "... and 4 more" in report.describe_errors(2)
    # the readable masks' pixels: a and e (all background) only
    assert report.class_pixels.tolist() == [2 * H * W - 48, 48]
    assert report.to_dict()["class_pixels"] == {"background": 2 * H * W - 48, "object": 48}


def test_semantic_masks_values_ignore_and_colour(tmp_path: Path) -> None:
    root = mfnet_tree(tmp_path / "mf", lists=False)
    bad = np.zeros((H, W), np.uint8)
    bad[3, 3], bad[4, 4] = 12, 9  # K = 9: ids 0..8
    write_image(root / "labels" / "00002D.png", bad)
    colour = np.zeros((H, W, 3), np.uint8)
    colour[:, :, 0] = 1
    write_image(root / "labels" / "00003N.png", colour)
    report = check_seg_source(open_seg_source(root, DataConfig()))
    values = [p for p in report.errors if p.kind == "mask_values"]
    assert [Path(p.path).name for p in values] == ["00002D.png", "00003N.png"]
    assert values[0].message == "values 9, 12 outside the 9 classes (ids 0..8, 255 = ignore) in 2 pixels"
    assert values[1].message.startswith("colour mask: expected one channel of class ids 0..8")
    assert report.ignore_pixels == 3 * 4  # the three good labels' 255 pixels
    assert int(report.class_pixels.sum()) == 3 * (H * W - 4)
    assert report.dtypes == {"rgb": "uint8", "thermal": "uint8"}


def test_cod_gts_scales_and_mixed_depth(tmp_path: Path) -> None:
    source = open_seg_source(cod10k_tree(tmp_path / "cod"), DataConfig())
    report = check_seg_source(source, split=SplitConfig())
    assert report.ok and not report.problems  # anti-aliased 0-255 GTs are fine
    assert report.scales == {"rgb": 255.0} and report.split == {"train": 2, "val": 1, "test": 2}
    assert any(n.startswith("split (the data set's test partition") for n in report.notes)
    root = folders_tree(tmp_path / "f")
    assert check_seg_source(open_seg_source(root, RGB_DEPTH)).scales == {"rgb": 255.0, "depth": 65535.0}
    write_image(root / "depth" / "a.png", pixels(3, 1))  # one 8-bit depth map among 16-bit ones
    mixed = check_seg_source(open_seg_source(root, RGB_DEPTH))
    assert [p.kind for p in mixed.errors] == ["mixed_depth"]
    assert "data.modalities[1].scale" in mixed.errors[0].message
    scaled = RGB_DEPTH.model_copy(update={"modalities": [RGB_DEPTH.modalities[0], ModalityConfig(
        name="depth", channels=1, mean=[0.5], std=[0.25], scale=1000.0)]})
    assert check_seg_source(open_seg_source(root, scaled)).scales["depth"] == 1000.0


def test_stats_numbers_on_a_known_case(tmp_path: Path) -> None:
    root = tmp_path / "known"
    for stem, value, size in (("a", 51, 6), ("b", 102, 0)):
        write_image(root / "rgb" / f"{stem}.png", np.full((10, 10, 3), value, np.uint8))
        mask = np.zeros((10, 10), np.uint8)
        mask[:size, :5] = 1  # a: 30 of 100 pixels, b: empty
        write_image(root / "masks" / f"{stem}.png", mask)
    stats = seg_stats(open_seg_source(root, DataConfig(), "folders"))
    assert stats["frames"] == 2 and stats["unreadable"] == 0 and stats["partitions"] == {"none": 2}
    assert stats["class_pixels"] == {"background": 170, "object": 30}
    assert stats["class_frequency"] == {"background": 0.85, "object": 0.15}
    assert stats["class_images"] == {"background": 2, "object": 1}
    assert stats["foreground_fraction"] == {"mean": 0.15, "median": 0.15, "min": 0.0, "max": 0.3}
    assert stats["empty_masks"] == 1 and stats["image_sizes"] == {"10x10": 2}
    rgb = stats["channels"]["rgb"]
    assert rgb["mean"] == [0.3] * 3 and rgb["std"] == [0.1] * 3 and rgb["scale"] == 255.0
    text = format_seg_stats(stats)
    assert "background 0.8500, object 0.1500" in text and "mean 0.1500, median 0.1500" in text


def test_cli_check_and_stats_on_segmentation_trees(tmp_path: Path, capsys) -> None:
    root = cod10k_tree(tmp_path / "COD10K-v3")
    assert main(["data", "check", str(root)]) == 0  # found to be cod10k: the segmentation check
    out = capsys.readouterr().out
    assert "5 frames (cod10k layout, modalities rgb, binary): 0 errors, 0 warnings, 0 empty masks" in out
    assert "note: COD10K protocol: 1 NonCAM training images left out" in out
    (root / "Test" / "GT_Object" / f"{CAM_TEST[1]}.png").write_bytes(b"not a png")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"error: {root / 'Test' / 'GT_Object' / CAM_TEST[1]}.png: unreadable" in out
    assert main(["data", "check", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "segment" and report["errors"] == 1
    assert report["problems"][0]["kind"] == "unreadable"

    folders = folders_tree(tmp_path / "rgbd")
    config = tmp_path / "rgbd.yaml"
    config.write_text("data:\n  modalities:\n"
                      "    - {name: rgb, channels: 3, mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}\n"
                      "    - {name: depth, channels: 1, mean: [0.5], std: [0.2]}\n"
                      "model:\n  streams: [[rgb], [depth]]\n")
    assert main(["data", "check", str(folders), "--task", "segment", "--config", str(config)]) == 0
    assert "4 frames (folders layout, modalities rgb, depth, binary)" in capsys.readouterr().out
    assert main(["data", "check", str(folders), "task=segment", "--config", str(config)]) == 0
    capsys.readouterr()
    # modality folders + masks/ without box labels: segmentation; with a labels/ folder: detection
    assert main(["data", "check", str(folders), "--config", str(config)]) == 0
    assert "(folders layout, modalities rgb, depth, binary)" in capsys.readouterr().out
    (folders / "labels").mkdir()
    assert main(["data", "check", str(folders), "--config", str(config)]) == 1
    assert "missing label: no label file for frame 'a'" in capsys.readouterr().out
    assert main(["data", "check", str(folders), "--config", str(config), "--task", "segment"]) == 0
    capsys.readouterr()
    (folders / "labels").rmdir()

    out_dir = tmp_path / "stats"
    assert main(["data", "stats", str(folders), "--layout", "cod10k", "--out", str(out_dir)]) == 2
    assert "rgbd: not a COD10K tree: expected Train/Image/" in capsys.readouterr().err
    (root / "Test" / "GT_Object" / f"{CAM_TEST[1]}.png").unlink()
    assert main(["data", "stats", str(root), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "frames 5 (1 with errors), layout cod10k, binary" in out and "partitions: train 3, test 2" in out
    stats = json.loads((out_dir / "stats.json").read_text())
    assert stats["task"] == "segment" and stats["frames"] == 5 and stats["groups"] == 3
    assert main(["data", "stats", str(root), "--out", str(out_dir), "--histograms"]) == 2
    assert "--histograms: not available for segmentation" in capsys.readouterr().err
    assert CAM[0] in open_seg_source(root, DataConfig()).items


def test_cli_synth_segment_calls_the_scene_generator(tmp_path: Path, capsys, monkeypatch) -> None:
    calls = []

    def fake(out: Path, images: int, size: tuple[int, int], seed: int) -> Path:
        calls.append((out, images, size, seed))
        return out

    module = types.ModuleType("crossattentiondet.segmentation.synth")
    module.generate_seg_dataset = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "crossattentiondet.segmentation.synth", module)
    out = tmp_path / "scenes"
    assert main(["data", "synth", str(out), "--task", "segment", "--images", "6", "--size", "40x30",
                 "--seed", "4"]) == 0
    assert calls == [(out, 6, (40, 30), 4)]
    assert "wrote 6 synthetic segmentation scenes (40x30" in capsys.readouterr().out
    assert main(["data", "synth", str(out), "--task", "segment", "--classes", "2"]) == 2
    assert "--classes and --format are for detection data" in capsys.readouterr().err
    assert len(calls) == 1


@pytest.mark.parametrize("layout", ["sinet", "mfnet"])
def test_cli_check_finds_the_other_layouts(tmp_path: Path, capsys, layout: str) -> None:
    from tests.test_seg_layouts import sinet_tree

    root = sinet_tree(tmp_path / "t") if layout == "sinet" else mfnet_tree(tmp_path / "t")
    assert main(["data", "check", str(root)]) == 0
    assert f"{layout} layout" in capsys.readouterr().out
