"""The Python API as the README shows it, and the input rules it shares with predict and eval --data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import crossattentiondet as cad
from crossattentiondet.cli import main
from crossattentiondet.data.inputs import ModalityInput, conform_frame
from crossattentiondet.engine.checkpoint import load_checkpoint
from crossattentiondet.errors import DataError


def frame_arrays(root: Path, stem: str) -> dict[str, np.ndarray]:
    array = np.load(root / "images" / f"{stem}.npy")
    return {"rgb": array[:, :, :3], "thermal": array[:, :, 3:4], "event": array[:, :, 4:5]}


def test_checkpoint_records_what_the_model_takes(tiny_run: tuple[Path, Path]) -> None:
    run, _ = tiny_run
    for name in ("best.pt", "last.pt"):
        inputs = load_checkpoint(run / "checkpoints" / name)["inputs"]
        assert inputs == {"rgb": {"channels": 3, "dtype": "uint8", "scale": 255.0},
                          "thermal": {"channels": 1, "dtype": "uint8", "scale": 255.0},
                          "event": {"channels": 1, "dtype": "uint8", "scale": 255.0}}
    model = cad.load(run)
    assert [m.name for m in model.modalities] == ["rgb", "thermal", "event"]
    assert model.class_names == ["person", "car"] and "uint8" in repr(model)


def test_predict_forms_agree_with_each_other_and_with_cadet_predict(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, root = tiny_run
    model = cad.load(run, device="cpu")
    stems = ["f000", "f001", "f002"]
    by_dict = model.predict([frame_arrays(root, s) for s in stems], score_thresh=0.0)
    assert len(by_dict) == 3 and all(len(d) > 0 for d in by_dict)  # score 0: the comparison is not vacuous
    by_array = model.predict([np.load(root / "images" / f"{s}.npy") for s in stems], score_thresh=0.0)
    by_path = model.predict([root / "images" / f"{s}.npy" for s in stems], score_thresh=0.0)
    for a, b, c in zip(by_dict, by_array, by_path):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.boxes, c.boxes)
        np.testing.assert_array_equal(a.labels, c.labels)
    assert [d.frame for d in by_path] == stems and by_dict[0].frame == "frame0"
    first = by_dict[0]
    assert first.boxes.shape == (len(first), 4) and first.boxes.dtype == np.float32
    assert set(first.labels.tolist()) <= {0, 1} and set(first.names) <= {"person", "car"}
    assert np.all(np.diff(first.scores) <= 0)
    # the command writes the same detections (labels there are the model's: 1 = first class)
    assert main(["predict", str(run), *[str(root / "images" / f"{s}.npy") for s in stems], "--out", str(tmp_path / "p"),
                 "--score-thresh", "0", "--panels", "0"]) == 0
    written = json.loads((tmp_path / "p" / "detections.json").read_text())["frames"]
    for frame, dets in zip(written, by_path):
        assert [d["label"] - 1 for d in frame["detections"]] == dets.labels.tolist()
        np.testing.assert_allclose([d["box_xyxy"] for d in frame["detections"]], dets.boxes, atol=0.01)


def test_predict_input_rules(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, root = tiny_run
    (tmp_path / "frame.png").write_bytes(b"")
    model = cad.load(run, device="cpu")
    arrays = frame_arrays(root, "f003")
    narrow = model.predict(arrays, score_thresh=0.0)[0]
    # the same frame in 16 bits (x * 257, as a 16-bit export of 8-bit data): converted, same detections
    wide = model.predict({k: v.astype(np.uint16) * np.uint16(257) for k, v in arrays.items()}, score_thresh=0.0)[0]
    np.testing.assert_array_equal(narrow.boxes, wide.boxes)
    # torch tensors are accepted like arrays
    tensors = model.predict({k: torch.from_numpy(v) for k, v in arrays.items()}, score_thresh=0.0)[0]
    np.testing.assert_array_equal(narrow.boxes, tensors.boxes)
    cases = [
        ({**arrays, "rgb": arrays["rgb"].astype(np.float32) / 255}, "modality 'rgb' is float32; the model takes the raw uint8"),
        ({**arrays, "thermal": arrays["thermal"].astype(np.int32)}, "modality 'thermal' is int32"),
        ({"rgb": arrays["rgb"], "thermal": arrays["thermal"]}, "modalities ['event'] missing"),
        ({**arrays, "depth": arrays["event"]}, "unknown modalities ['depth']"),
        ({**arrays, "rgb": arrays["rgb"][:, :, :2]}, "has shape (64, 64, 2); the model takes (H, W, 3)"),
        ({**arrays, "event": arrays["event"][:32]}, "modalities must be aligned"),
        (np.zeros((64, 64, 3), np.uint8), "3 channels, modality 'thermal' needs channels [3]"),
        (tmp_path / "frame.png", "give .npy frames"),
        (tmp_path / "nowhere.npy", "input not found"),
        ([], "no frames given"),
    ]
    for frame, message in cases:
        with pytest.raises(DataError) as err:
            model.predict(frame)
        assert message in str(err.value), (message, str(err.value))
    with pytest.raises(Exception, match="score_thresh"):
        model.predict(arrays, score_thresh=2)


def test_conform_frame_refuses_what_no_conversion_makes_right() -> None:
    twelve_bit = [ModalityInput("thermal", 1, "uint16", 4095.0)]
    with pytest.raises(DataError, match="above the scale 4095"):
        conform_frame("a", {"thermal": np.full((4, 4), 5000, np.uint16)}, twelve_bit)
    with pytest.raises(DataError, match="trained on uint16 data with scale 4095"):
        conform_frame("a", {"thermal": np.full((4, 4), 10, np.uint8)}, twelve_bit)
    notes: set[str] = set()
    sixteen = [ModalityInput("thermal", 1, "uint16", 65535.0)]
    out = conform_frame("a", {"thermal": np.array([[0, 1, 255]], np.uint8)}, sixteen, notes)
    assert out["thermal"].dtype == np.uint16 and out["thermal"].ravel().tolist() == [0, 257, 65535] and notes


def write_16bit_folders(root: Path, out: Path) -> Path:
    """The npy data set's scenes as a folders data set of 16-bit PNGs (x * 257), same labels."""
    for name in ("rgb", "thermal", "event", "labels"):
        (out / name).mkdir(parents=True)
    for path in sorted((root / "images").glob("*.npy")):
        array = np.load(path).astype(np.uint16) * np.uint16(257)
        cv2.imwrite(str(out / "rgb" / f"{path.stem}.png"), np.ascontiguousarray(array[:, :, 2::-1]))  # BGR on disk
        cv2.imwrite(str(out / "thermal" / f"{path.stem}.png"), array[:, :, 3])
        cv2.imwrite(str(out / "event" / f"{path.stem}.png"), array[:, :, 4])
        shutil.copy(root / "labels" / f"{path.stem}.txt", out / "labels" / f"{path.stem}.txt")
    shutil.copy(root / "classes.txt", out / "classes.txt")
    return out


def test_evaluate_16bit_copy_of_the_data_gives_the_same_map(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run, root = tiny_run
    overrides = ["eval.bootstrap=0", "model.detector.score_thresh=0.0"]  # every detection counts: a non-zero mAP
    narrow = cad.evaluate(run, data=root, out=tmp_path / "e8", overrides=overrides)
    capsys.readouterr()
    wide = cad.evaluate(run, data=write_16bit_folders(root, tmp_path / "wide"), out=tmp_path / "e16", overrides=overrides)
    said = capsys.readouterr().out
    assert "modality 'thermal' is uint16 with scale 65535 here, the model was trained on uint8 data with scale 255" in said
    assert narrow["images"] == wide["images"] == 10
    # the same detections (a one-epoch model's mAP is ~0, so the detections themselves are compared)
    a = json.loads((tmp_path / "e8" / "predictions_test.json").read_text())
    b = json.loads((tmp_path / "e16" / "predictions_test.json").read_text())
    assert len(a) > 10 and len(a) == len(b)
    assert [(d["image_id"], d["category_id"]) for d in a] == [(d["image_id"], d["category_id"]) for d in b]
    np.testing.assert_allclose([d["bbox"] for d in a], [d["bbox"] for d in b], atol=0.05)
    np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4)
    for key in ("mAP", "mAP_50", "mAR_100"):
        assert wide["metrics"][key] == pytest.approx(narrow["metrics"][key], abs=1e-6)


def test_train_and_the_readme_resume_commands(tmp_path: Path, trees, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_train import TINY, frames

    root = trees.npy("data", frames=frames(10), size=(64, 64), classes=["person", "car"])
    monkeypatch.chdir(tmp_path)  # runs/my_run, exactly as the README writes it
    tree = dict(t.split("=", 1) for t in TINY)
    overrides = {**{k: json.loads(v) if v[:1] in "[0123456789tf" else v for k, v in tree.items()},
                 "data.root": str(root), "name": "my_run", "train.epochs": 1, "eval.bootstrap": 0}
    first = cad.train(overrides=overrides)
    assert first.finished and first.state.epoch == 1 and first.run_dir == Path("runs/my_run")

    def epochs() -> int:
        return len((tmp_path / "runs" / "my_run" / "metrics.csv").read_text().strip().splitlines()) - 1

    # the run's own config with the override on top (not the defaults + the override)
    assert main(["train", "--resume", "runs/my_run", "train.epochs=2"]) == 0 and epochs() == 2
    assert main(["train", "--config", "runs/my_run/config.yaml", "--resume"]) == 0  # the resolved config is the run's
    assert "already finished (2 epochs)" in capsys.readouterr().out
    # --resume does not take the override that follows it for a path
    assert main(["train", "--config", "runs/my_run/config.yaml", "--resume", "train.epochs=3"]) == 0 and epochs() == 3
    assert cad.train(resume="runs/my_run", overrides={"train.epochs": 3}).state.epoch == 3
    capsys.readouterr()
    assert main(["train", "--resume", "runs/my_run", "model.backbone=mit_b1"]) == 2
    assert "cannot resume" in capsys.readouterr().err and epochs() == 3
    assert main(["train", "--resume", "runs/nothing_here"]) == 2
    assert "runs/nothing_here" in capsys.readouterr().err
    with pytest.raises(Exception, match="list of key=value strings or a dict"):
        cad.train(overrides="train.epochs=1")


def test_default_run_name_picks_a_free_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crossattentiondet.config import load_config
    from crossattentiondet.engine.trainer import _free_default_name

    said: list[str] = []
    config = load_config(None, [f"output.root={tmp_path}"])
    assert _free_default_name(config, said.append).name == "run" and not said  # nothing there yet: run
    (tmp_path / "run" / "checkpoints").mkdir(parents=True, exist_ok=True)
    assert _free_default_name(config, said.append).name == "run2"
    assert said == [f"{tmp_path / 'run'} is taken: this run is {tmp_path / 'run2'} (name=run2)"]
    (tmp_path / "run2" / "x").mkdir()
    assert _free_default_name(config, said.append).name == "run3"
    named = load_config(None, [f"output.root={tmp_path}", "name=mine"])
    assert _free_default_name(named, said.append).name == "mine"  # an explicit name keeps its directory
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun: every rank must agree, so no renaming
    assert _free_default_name(config, said.append).name == "run"


def test_values_that_fit_the_training_range_are_taken_as_they_are() -> None:
    eight = [ModalityInput("rgb", 3, "uint8", 255.0)]
    # 8-bit values in a 16-bit container (one (H, W, C) array of 8-bit RGB beside 16-bit thermal)
    out = conform_frame("a", {"rgb": np.full((2, 2, 3), 200, np.uint16)}, eight)
    assert out["rgb"].dtype == np.uint8 and int(out["rgb"].max()) == 200
    # uint8 frames for a model trained on mixed 8/16-bit files with scale 255
    mixed = [ModalityInput("thermal", 1, "uint16", 255.0)]
    out = conform_frame("a", {"thermal": np.full((2, 2), 7, np.uint8)}, mixed)
    assert out["thermal"].dtype == np.uint16 and int(out["thermal"].max()) == 7


def test_all_channel_arrays_for_a_model_trained_on_folders() -> None:
    from crossattentiondet.config import load_config
    from crossattentiondet.engine.inference import split_channels

    config = load_config(None, ["data.modalities=[{name: rgb, channels: 3, source: rgb, mean: [0.5,0.5,0.5], "
                                "std: [0.2,0.2,0.2]}, {name: thermal, channels: 1, source: thermal, mean: [0.5], "
                                "std: [0.2]}]", "model.streams=[[rgb],[thermal]]"])
    array = np.arange(2 * 2 * 4, dtype=np.uint8).reshape(2, 2, 4)
    arrays = split_channels(array, config, "frame0")
    np.testing.assert_array_equal(arrays["rgb"], array[:, :, :3])
    np.testing.assert_array_equal(arrays["thermal"], array[:, :, 3:])
    with pytest.raises(DataError, match="5 channels; the model takes 4 in this order: rgb 3, thermal 1"):
        split_channels(np.zeros((2, 2, 5), np.uint8), config, "frame0")


def test_resume_with_the_default_name_continues_the_latest_run(tmp_path: Path) -> None:
    import os
    import time

    from crossattentiondet.config import load_config
    from crossattentiondet.engine.trainer import _latest_default_run

    config = load_config(None, [f"output.root={tmp_path}"])
    assert _latest_default_run(config) == tmp_path / "run"  # nothing there: the default (and its error later)
    for name, age in (("run", 100), ("run2", 10), ("run3", 50), ("runaway", 0)):
        path = tmp_path / name / "checkpoints" / "last.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (time.time() - age, time.time() - age))
    assert _latest_default_run(config) == tmp_path / "run2"  # the newest of run, run2, ...; not "runaway"
    named = load_config(None, [f"output.root={tmp_path}", "name=run3"])
    assert _latest_default_run(named) == tmp_path / "run3"
