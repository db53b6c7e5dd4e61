"""Bad data sets through the command line: each one is reported by name, on one line, before training starts.

Table-driven: every case builds one broken tree, runs ``cadet data check ROOT`` in-process and checks the exit
status and the messages; cases whose problem must stop training also run ``cadet train data.root=ROOT`` and
check that it refuses with a one-line ``error:`` before any model is built.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from crossattentiondet.cli import main
from crossattentiondet.config import DataConfig, ExperimentConfig
from crossattentiondet.data import prepare_data
from crossattentiondet.errors import DataError
from tests.conftest import DataTrees, write_image

Builder = Callable[[DataTrees, Path], Path]


@dataclass(frozen=True)
class Case:
    id: str
    build: Builder  # writes the bad tree under tmp_path, returns the data root
    code: int  # exit status of `cadet data check`: 2 cannot open, 1 problems listed, 0 only warnings
    expected: tuple[str, ...]  # in the check's output (stderr for code 2, stdout otherwise)
    absent: tuple[str, ...] = ()  # misleading texts the output must not contain
    train: tuple[str, ...] | None = None  # the problem stops `cadet train`: substrings of its one-line error
    args: tuple[str, ...] = ()  # more arguments of `cadet data check`


# ------------------------------------------------------------------------------------------ builders
def duplicate_classes_txt(trees: DataTrees, tmp: Path) -> Path:
    return trees.folders("root", classes=["car", "car", "car"])


def duplicate_coco_categories(trees: DataTrees, tmp: Path) -> Path:
    return trees.folders("root", labels="coco", classes=["car", "car"])


def duplicate_coco_image_ids(trees: DataTrees, tmp: Path) -> Path:
    root = trees.folders("root", labels="coco")
    coco = json.loads((root / "annotations.json").read_text())
    coco["images"][1]["id"] = coco["images"][0]["id"]
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def npy_header(shape: tuple[int, ...], dtype: str = "|u1") -> bytes:
    """A version 1.0 .npy header (padded to 64 bytes as numpy does)."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def npy_absurd_shape(trees: DataTrees, tmp: Path) -> Path:
    root = trees.npy("root")
    (root / "images" / "frame002.npy").write_bytes(npy_header((100000, 100000, 5)) + bytes(100))
    return root


def npy_random_bytes(trees: DataTrees, tmp: Path) -> Path:
    root = trees.npy("root")
    (root / "images" / "frame002.npy").write_bytes(np.random.default_rng(1).bytes(600))
    return root


def scale_exceeded(trees: DataTrees, tmp: Path) -> Path:
    root = trees.folders("root")
    write_image(root / "rgb" / "frame002.png", np.full((32, 48, 3), 40000, np.uint16))
    (root / "synth.json").write_text(json.dumps({"modalities": [{"name": "rgb", "scale": 255.0}]}))
    return root


def scale_hides_mixed_depth(trees: DataTrees, tmp: Path) -> Path:
    root = trees.folders("root")
    write_image(root / "thermal" / "frame001.png", np.full((32, 48), 200, np.uint8))
    (root / "cadet_data.json").write_text(json.dumps({"modalities": [{"name": "thermal", "scale": 65535.0}]}))
    return root


BOM = b"\xef\xbb\xbf"


def yolo_with_bom(trees: DataTrees, tmp: Path) -> Path:
    root = trees.folders("root")
    for path in [*(root / "labels").glob("*.txt"), root / "classes.txt"]:
        path.write_bytes(BOM + path.read_bytes())
    return root


def coco_with_bom(trees: DataTrees, tmp: Path) -> Path:
    root = trees.folders("root", labels="coco")
    (root / "annotations.json").write_bytes(BOM + (root / "annotations.json").read_bytes())
    return root


def without_boxes(trees: DataTrees, tmp: Path) -> Path:
    return trees.folders("root", frames={f"frame{i:03d}": [] for i in range(6)})


def root_is_a_file(trees: DataTrees, tmp: Path) -> Path:
    path = tmp / "data.json"
    path.write_text("{}")
    return path


def empty_images_and_labels(trees: DataTrees, tmp: Path) -> Path:
    root = tmp / "root"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    return root


def empty_modality_folders(trees: DataTrees, tmp: Path) -> Path:
    root = tmp / "root"
    for name in ("rgb", "thermal", "labels"):
        (root / name).mkdir(parents=True)
    return root


def broken_image_link(trees: DataTrees, tmp: Path) -> Path:
    root = trees.folders("root")
    (root / "rgb" / "frame001.png").unlink()
    os.symlink(tmp / "moved" / "frame001.png", root / "rgb" / "frame001.png")
    return root


def broken_npy_link(trees: DataTrees, tmp: Path) -> Path:
    root = trees.npy("root")
    (root / "images" / "frame001.npy").unlink()
    os.symlink(tmp / "moved" / "frame001.npy", root / "images" / "frame001.npy")
    return root


CASES = [
    Case("duplicate-classes-txt", duplicate_classes_txt, 1,
         ("classes.txt: class names listed more than once: 'car' (lines 1, 2, 3)",),
         train=("classes.txt: class names listed more than once: 'car'",)),
    Case("duplicate-coco-categories", duplicate_coco_categories, 1,
         ("annotations.json: category names listed more than once in 'categories': 'car' (ids 1, 2)",),
         train=("annotations.json: category names listed more than once",)),
    Case("duplicate-coco-image-ids", duplicate_coco_image_ids, 1,
         ("annotations.json: image ids used by more than one entry of 'images': 1 (frame000.png, frame001.png)",),
         train=("annotations.json: image ids used by more than one entry",)),
    Case("npy-absurd-shape", npy_absurd_shape, 1,
         ("frame002.npy: unreadable or truncated .npy file: its header says shape (100000, 100000, 5) uint8",
          "1 errors in 1 frames"),
         absent=("MemoryError",), train=("frame002.npy: unreadable or truncated .npy file",)),
    Case("npy-random-bytes", npy_random_bytes, 1, ("frame002.npy: not a valid .npy file",),
         absent=("pickled",)),
    Case("declared-scale-exceeded", scale_exceeded, 1,
         ("rgb/frame002.png: uint16 values up to 40000 above the declared scale 255 of modality 'rgb' (synth.json)",),
         train=("frame002.png: uint16 values up to 40000 above the declared scale 255",)),
    Case("declared-scale-hides-mixed-depth", scale_hides_mixed_depth, 1,
         ("thermal/frame001.png: mixed 8-bit and 16-bit files for modality 'thermal'", "declared scale is 65535 "
          "(cadet_data.json)"),
         train=("frame001.png: mixed 8-bit and 16-bit files for modality 'thermal'",)),
    Case("yolo-labels-with-bom", yolo_with_bom, 0, ("6 frames", "0 errors"), absent=("error:", "\\ufeff")),
    Case("coco-with-bom", coco_with_bom, 0, ("6 frames", "0 errors"), absent=("error:", "unreadable COCO")),
    Case("no-box-at-all", without_boxes, 0,
         ("warning: ", "labels: not a single box in the 6 readable frames: training would learn nothing (mAP NaN)",)),
    Case("root-is-a-file", root_is_a_file, 2, ("data.json: the data root is a file, not a folder",),
         absent=("not found",), train=("data.json: the data root is a file, not a folder",)),
    Case("empty-images-and-labels", empty_images_and_labels, 2,
         ("no frames to read, the folders images/ and labels/ are empty",), absent=("cannot tell",),
         train=("no frames to read, the folders images/ and labels/ are empty",)),
    Case("empty-images-and-labels-original-layout", empty_images_and_labels, 2,
         ("no frames to read, the folders images/ and labels/ are empty",), args=("--layout", "original")),
    Case("empty-modality-folders", empty_modality_folders, 2,
         ("no frames to read, the folders rgb/, thermal/ and labels/ are empty",)),
    Case("broken-image-link", broken_image_link, 1,
         ("rgb/frame001.png: broken symbolic link: it points to", "moved/frame001.png, which does not exist"),
         absent=("label without an image", "missing partner"), train=("frame001.png: broken symbolic link",)),
    Case("broken-npy-link", broken_npy_link, 1,
         ("images/frame001.npy: broken symbolic link: it points to",),
         absent=("label without an image",), train=("frame001.npy: broken symbolic link",)),
]


def assert_one_line_error(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_data_check_reports_bad_input(case: Case, trees: DataTrees, tmp_path: Path, capsys) -> None:
    root = case.build(trees, tmp_path)
    code = main(["data", "check", str(root), *case.args])
    out, err = capsys.readouterr()
    assert code == case.code, out + err
    if case.code == 2:
        assert_one_line_error(err)
        assert out == ""
        text = err
    else:
        assert err == "" and "Traceback" not in out
        assert all(line.startswith(("note: ", "warning: ", "error: ")) for line in out.splitlines()[:-1]), out
        text = out
    for expected in case.expected:
        assert expected in text, text
    for absent in case.absent:
        assert absent not in text, text


TRAIN_CASES = [c for c in CASES if c.train is not None]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c.id for c in TRAIN_CASES])
def test_prepare_data_refuses_bad_input(case: Case, trees: DataTrees, tmp_path: Path) -> None:
    root = case.build(trees, tmp_path)
    logged: list[str] = []
    with pytest.raises(DataError) as info:
        prepare_data(ExperimentConfig(data=DataConfig(root=str(root))), run_dir=tmp_path / "run", log=logged.append)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message  # the CLI prints it as one `error:` line
    for expected in case.train or ():
        assert expected in message, message
    assert not (tmp_path / "run" / "split.json").exists()  # refused before the split, long before training


def test_train_command_refuses_bad_input_before_training(trees: DataTrees, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    import crossattentiondet.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built: training started on bad data")

    monkeypatch.setattr(crossattentiondet.models, "build_detector", no_model)
    case = next(c for c in CASES if c.id == "declared-scale-exceeded")
    root = case.build(trees, tmp_path)
    code = main(["train", f"data.root={root}", f"output.root={tmp_path / 'runs'}", "name=bad", "train.epochs=1",
                 "train.device=cpu", "data.loader.num_workers=0"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert_one_line_error(err)
    assert "data check of" in err and case.train[0] in err, err
    assert not (tmp_path / "runs" / "bad" / "config.yaml").exists()  # written right after the data are ready


def test_prepare_data_warns_when_there_is_no_box(trees: DataTrees, tmp_path: Path) -> None:
    root = without_boxes(trees, tmp_path)
    logged: list[str] = []
    prepare_data(ExperimentConfig(data=DataConfig(root=str(root))), log=logged.append)
    warned = [line for line in logged if "not a single box" in line]
    assert warned and warned[0].startswith("data: warning: ") and "mAP NaN" in warned[0]
