"""The synthetic RGB + thermal + event data set: formats, determinism, labels and the evidence design."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossattentiondet.config import ModalityConfig, default_modalities
from crossattentiondet.data.synth import CLASS_NAMES, THERMAL_MAX, generate_dataset
from crossattentiondet.errors import DataError

STEM = re.compile(r"^seq\d{3}_\d{6}$")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_labels(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.array(rows, np.float64).reshape(-1, 5)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, record_testsuite_property: Callable[[str, object], None]) -> Path:
    """300 frames with all five classes: enough for the visibility statistics."""
    out = tmp_path_factory.mktemp("synth_big")
    start = time.perf_counter()
    generate_dataset(out, 300, classes=5, seed=3)
    fps = 300 / (time.perf_counter() - start)
    record_testsuite_property("synth_frames_per_second", round(fps, 1))
    print(f"\nsynthetic data: {fps:.0f} frames/s at 160x128 (npy, including writing)")
    return out


@pytest.fixture(scope="module")
def meta(big: Path) -> dict:
    return json.loads((big / "synth.json").read_text())


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    for fmt in ("npy", "folders"):
        a = files(generate_dataset(tmp_path / f"a_{fmt}", 24, fmt=fmt, seed=7))
        b = files(generate_dataset(tmp_path / f"b_{fmt}", 24, fmt=fmt, seed=7))
        c = files(generate_dataset(tmp_path / f"c_{fmt}", 24, fmt=fmt, seed=8))
        assert a == b
        assert a != c


def test_a_frame_does_not_depend_on_how_many_frames_are_generated(tmp_path: Path) -> None:
    short = files(generate_dataset(tmp_path / "short", 12, seed=5))
    long = files(generate_dataset(tmp_path / "long", 40, seed=5))
    frames = [k for k in short if k.startswith(("images/", "labels/"))]
    assert len(frames) == 24
    assert all(short[k] == long[k] for k in frames)


def test_npy_layout(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "npy", 30, size=(96, 64), classes=2, seed=1)
    images = sorted((out / "images").glob("*.npy"))
    labels = sorted((out / "labels").glob("*.txt"))
    assert len(images) == len(labels) == 30
    assert [p.stem for p in images] == [p.stem for p in labels]
    assert all(STEM.match(p.stem) for p in images)
    assert (out / "classes.txt").read_text().splitlines() == list(CLASS_NAMES[:2])
    meta = json.loads((out / "synth.json").read_text())
    assert [ModalityConfig.model_validate(m) for m in meta["modalities"]] == default_modalities()
    array = np.load(images[0])
    assert array.shape == (64, 96, 5) and array.dtype == np.uint8
    # several sequences, each a run of consecutive frame numbers
    sequences = {p.stem.split("_")[0] for p in images}
    assert 2 <= len(sequences) <= 3
    numbers = [int(p.stem.split("_")[1]) for p in images]
    assert numbers == list(range(30))


def test_folders_layout_and_dtypes(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "folders", 12, fmt="folders", seed=2)
    stems = sorted(p.stem for p in (out / "labels").glob("*.txt"))
    assert len(stems) == 12
    for sub in ("rgb", "thermal", "event"):
        assert sorted(p.stem for p in (out / sub).glob("*.png")) == stems
    rgb = cv2.imread(str(out / "rgb" / f"{stems[0]}.png"), cv2.IMREAD_UNCHANGED)
    thermal = np.stack([cv2.imread(str(out / "thermal" / f"{s}.png"), cv2.IMREAD_UNCHANGED) for s in stems])
    event = cv2.imread(str(out / "event" / f"{stems[0]}.png"), cv2.IMREAD_UNCHANGED)
    assert rgb.shape == (128, 160, 3) and rgb.dtype == np.uint8
    assert thermal.shape == (12, 128, 160) and thermal.dtype == np.uint16
    assert event.shape == (128, 160) and event.dtype == np.uint8
    # a 14-bit sensor range with more than 8 bits of real information
    assert 255 < thermal.max() <= THERMAL_MAX
    assert len(np.unique(thermal[0])) > 256
    meta = json.loads((out / "synth.json").read_text())
    hint = [ModalityConfig.model_validate(m) for m in meta["modalities"]]  # usable as data.modalities
    assert [(m.name, m.source, m.scale) for m in hint] == [
        ("rgb", "rgb", 255), ("thermal", "thermal", THERMAL_MAX), ("event", "event", 255)]


def test_labels_are_valid_yolo_and_match_the_metadata(big: Path, meta: dict) -> None:
    for frame in meta["frames"]:
        rows = read_labels(big / "labels" / f"{frame['stem']}.txt")
        labelled = [o for o in frame["objects"] if o["labelled"]]
        assert len(rows) == len(labelled)
        if len(rows) == 0:
            continue
        assert np.all((rows[:, 0] >= 0) & (rows[:, 0] < 5) & (rows[:, 0] == rows[:, 0].round()))
        assert np.all((rows[:, 1:] >= 0) & (rows[:, 1:] <= 1))
        assert np.all(rows[:, 3:] > 0)
        xc, yc, w, h = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
        assert np.all((xc - w / 2 >= -1e-6) & (xc + w / 2 <= 1 + 1e-6) & (yc - h / 2 >= -1e-6) & (yc + h / 2 <= 1 + 1e-6))
        boxes = np.array([o["box"] for o in labelled])
        np.testing.assert_allclose(xc * 160, (boxes[:, 0] + boxes[:, 2]) / 2, atol=0.01)
        np.testing.assert_allclose(yc * 128, (boxes[:, 1] + boxes[:, 3]) / 2, atol=0.01)
        np.testing.assert_allclose(w * 160, boxes[:, 2] - boxes[:, 0], atol=0.01)
        np.testing.assert_allclose(h * 128, boxes[:, 3] - boxes[:, 1], atol=0.01)
        assert [int(c) for c in rows[:, 0]] == [o["class"] for o in labelled]


def test_classes_and_sizes_include_small_objects(meta: dict) -> None:
    objects = [o for f in meta["frames"] for o in f["objects"] if o["labelled"]]
    assert {o["class_name"] for o in objects} == set(CLASS_NAMES)
    areas = np.array([o["area"] for o in objects])
    sides = np.array([min(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for o in objects])
    assert 0.25 < np.mean(areas < 32 * 32) < 0.75  # COCO "small"
    assert sides.min() < 7  # down to ~6 px
    assert np.mean(areas > 48 * 48) > 0.1  # and large ones


def test_every_object_is_visible_somewhere_and_every_modality_misses_many(meta: dict) -> None:
    objects = [o for f in meta["frames"] for o in f["objects"] if o["labelled"]]
    assert len(objects) > 500
    assert all(any(o["visible"].values()) for o in objects)
    for modality in ("rgb", "thermal", "event"):
        missed = np.mean([not o["visible"][modality] for o in objects])
        assert 0.2 <= missed <= 0.5, (modality, missed)
        # and each modality is the only one to see some objects: fusion has something to gain everywhere
        only = np.mean([o["visible"][modality] and sum(o["visible"].values()) == 1 for o in objects])
        assert only > 0.03, (modality, only)
    # objects seen by no sensor are rare and are left unlabelled (never a label without evidence)
    dropped = sum(f["unobservable_dropped"] for f in meta["frames"])
    assert dropped <= 0.01 * len(objects)
    assert meta["summary"]["visible"].keys() == {"rgb", "thermal", "event"}


def test_evidence_follows_the_attributes(meta: dict) -> None:
    objects = [(f, o) for f in meta["frames"] for o in f["objects"] if o["labelled"]]
    hot = np.array([o["hot"] for _, o in objects])
    thermal = np.array([o["visible"]["thermal"] for _, o in objects])
    moving = np.array([o["moving"] for _, o in objects])
    event = np.array([o["visible"]["event"] for _, o in objects])
    assert thermal[hot].mean() > 0.97 and thermal[~hot].mean() < 0.05  # cold objects are invisible
    assert event[moving].mean() > 0.97 and event[~moving].mean() < 0.05  # static objects are invisible
    rgb = np.array([o["visible"]["rgb"] for _, o in objects])
    clear_day = np.array([not f["night"] and f["fog"] < 0.2 for f, _ in objects])
    dark = np.array([f["night"] and not o["lit"] and f["fog"] < 0.2 for f, o in objects])
    foggy = np.array([f["fog"] > 0.5 for f, _ in objects])
    assert rgb[clear_day].mean() > 0.9
    assert rgb[dark].mean() < 0.3  # unlit objects at night
    assert rgb[foggy].mean() < rgb[clear_day].mean() - 0.3


def test_hot_distractors_and_event_clutter_exist(big: Path, meta: dict) -> None:
    assert meta["summary"]["hot_distractors_per_frame"] >= 1
    frame = meta["frames"][0]
    array = np.load(big / "images" / f"{frame['stem']}.npy")
    event = array[..., 4]
    labelled = np.zeros(event.shape, bool)
    for o in frame["objects"]:
        x0, y0, x1, y1 = (int(v) for v in o["box"])
        labelled[max(0, y0 - 2):y1 + 3, max(0, x0 - 2):x1 + 3] = True
    # events (values away from the neutral 128) fire outside every object: noise / flicker / foliage
    assert np.mean(event[~labelled] != 128) > 0.002


def test_empty_frames_have_empty_label_files(tmp_path: Path) -> None:
    # some sequences have no objects (negatives); look through a few small data sets for one
    for seed in range(20):
        out = generate_dataset(tmp_path / f"e{seed}", 60, size=(64, 48), classes=1, seed=seed)
        meta = json.loads((out / "synth.json").read_text())
        empty = [f["stem"] for f in meta["frames"] if not any(o["labelled"] for o in f["objects"])]
        if empty:
            break
    assert empty
    assert all((out / "labels" / f"{s}.txt").read_text() == "" for s in empty)


def test_rerun_with_fewer_frames_removes_stale_frames(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate_dataset(out, 20, seed=0)
    generate_dataset(out, 5, seed=0)
    assert len(list((out / "images").glob("*.npy"))) == 5
    assert len(list((out / "labels").glob("*.txt"))) == 5


@pytest.mark.parametrize(("kwargs", "bad"), [
    ({"images": 0}, "0"),
    ({"images": 2.5}, "2.5"),
    ({"size": (0, 128)}, "(0, 128)"),
    ({"size": (160,)}, "(160,)"),
    ({"classes": 6}, "6"),
    ({"classes": 0}, "0"),
    ({"fmt": "png"}, "png"),
])
def test_bad_arguments_are_reported(tmp_path: Path, kwargs: dict, bad: str) -> None:
    args = {"images": 4, **kwargs}
    with pytest.raises(DataError, match=re.escape(bad)):
        generate_dataset(tmp_path / "x", **args)
