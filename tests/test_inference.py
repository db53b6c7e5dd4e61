"""cadet eval and cadet predict on a tiny trained run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from crossattentiondet.cli import main


def test_eval_own_test_split_matches_training(tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = tiny_run
    assert main(["eval", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    final = json.loads((run / "final_results.json").read_text())
    # same split (the run's split.json), same weights (best.pt): the same numbers as at the end of training
    assert summary["images"] == final["training"]["test_images"]
    for key in ("mAP", "mAP_50", "mAR_100"):
        assert summary["metrics"][key] == pytest.approx(final["results"][key], nan_ok=True)
    out = Path(summary["out_dir"])
    assert out == run / "eval_test" and (out / "metrics.json").is_file() and (out / "predictions_test.json").is_file()
    # the same test images, the same resamples: the same bootstrap as at the end of training
    assert json.loads((out / "bootstrap_test.json").read_text())["samples"] == \
        json.loads((run / "bootstrap_test.json").read_text())["samples"]
    assert summary["bootstrap"]["ci95"] == final["results"]["mAP_ci95"]


def test_eval_on_another_data_set_and_errors(tiny_run: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run, root = tiny_run
    other = tmp_path / "other"
    shutil.copytree(root, other)
    assert main(["eval", str(run / "checkpoints" / "best.pt"), "--data", str(other), "--out", str(tmp_path / "ev"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 10 and summary["data_root"] == str(other)
    assert main(["eval", str(run), "--split", "all"]) == 2
    assert "--split all needs --data" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err


def test_predict_on_npy_files_and_unlabelled_folders(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run, root = tiny_run
    unlabelled = tmp_path / "unlabelled" / "images"
    shutil.copytree(root / "images", unlabelled)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(unlabelled), str(root / "images" / "f000.npy"), "--out", str(out),
                 "--score-thresh", "0", "--panels", "3"]) == 0
    result = json.loads((out / "detections.json").read_text())
    assert len(result["frames"]) == 11 and result["class_names"] == ["person", "car"]
    first = result["frames"][0]
    assert (first["height"], first["width"]) == (64, 64)
    for det in first["detections"]:
        assert len(det["box_xyxy"]) == 4 and det["class_name"] in ("person", "car") and 0 <= det["score"] <= 1
    assert (out / "panels.png").is_file()
    # a data root without any labels works for prediction
    assert main(["predict", str(run), str(tmp_path / "unlabelled"), "--out", str(tmp_path / "p2"), "--panels", "0"]) == 0
    assert not (tmp_path / "p2" / "panels.png").exists()
    capsys.readouterr()
    np.save(tmp_path / "three.npy", np.zeros((64, 64, 3), np.uint8))
    assert main(["predict", str(run), str(tmp_path / "three.npy"), "--out", str(tmp_path / "p3")]) == 2
    assert "three.npy" in capsys.readouterr().err
    assert main(["predict", str(run), str(tmp_path / "missing"), "--out", str(tmp_path / "p4")]) == 2
    # 16-bit frames for a model trained on 8-bit data: converted to the 8-bit range, and said so
    wide = tmp_path / "wide"
    wide.mkdir()
    np.save(wide / "hot.npy", np.full((64, 64, 5), 40000, np.uint16))
    capsys.readouterr()
    assert main(["predict", str(run), str(wide / "hot.npy"), "--out", str(tmp_path / "p6"), "--panels", "0"]) == 0
    assert "modality 'rgb': uint16 frames converted to the uint8 range the model was trained on" in capsys.readouterr().out
    # float frames (normalised, 0-1) are refused with one line, not run into 0 detections
    np.save(wide / "hot.npy", np.full((64, 64, 5), 0.5, np.float32))
    assert main(["predict", str(run), str(wide / "hot.npy"), "--out", str(tmp_path / "p6")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hot.npy: float32 array; expected uint8 or uint16" in err
    assert main(["predict", str(run), str(unlabelled), "--out", str(tmp_path / "p5"), "--score-thresh", "2"]) == 2
