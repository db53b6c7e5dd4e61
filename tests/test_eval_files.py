"""``cadet eval --pred DETECTIONS.json --gt COCO_GT.json``: any detector's COCO results scored as runs are, its
bad inputs, and the --size-bins / --tile / --overlap flags of ``cadet eval RUN`` and ``cadet predict``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from crossattentiondet.cli import main
from crossattentiondet.engine.coco_files import evaluate_detection_files
from crossattentiondet.engine.evaluate import METRIC_KEYS, DetectionEvaluator, metric_keys
from crossattentiondet.errors import DataError

# category ids as other data sets have them (not 1..K), names from the file
CATEGORIES = [{"id": 3, "name": "ball"}, {"id": 7, "name": "player"}]


def ground_truth() -> dict[str, Any]:
    """Two images: very tiny balls (5 px) and tiny ones (12 px), medium players (40 x 60)."""
    annotations = []
    boxes = {10: [(3, [100, 100, 5, 5]), (3, [300, 300, 12, 12]), (7, [500, 500, 40, 60])],
             11: [(3, [50, 60, 5, 5]), (7, [200, 200, 40, 60])]}
    for image_id, items in boxes.items():
        for category, box in items:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    return {"images": [{"id": 10, "file_name": "a.png", "width": 1000, "height": 800},
                       {"id": 11, "file_name": "b.png", "width": 1000, "height": 800}],
            "annotations": annotations, "categories": CATEGORIES}


def detections(gt: dict[str, Any], keep: Any = lambda ann: ann["bbox"][2] < 8) -> list[dict[str, Any]]:
    """Perfect detections of the ground-truth boxes ``keep`` selects (default: the very tiny balls)."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in gt["annotations"] if keep(a)]


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_files_give_the_per_bin_numbers_known_by_construction(tmp_path: Path) -> None:
    gt = ground_truth()
    result = evaluate_detection_files(write(tmp_path, "dt.json", detections(gt)), write(tmp_path, "gt.json", gt),
                                      "aitod")
    m = result["metrics"]
    assert list(m) == metric_keys("aitod")
    assert m["mAP_verytiny"] == pytest.approx(1.0) and m["mAR_verytiny"] == pytest.approx(1.0)
    assert m["mAP_tiny"] == 0.0 and m["mAR_tiny"] == 0.0 and m["mAP_medium_aitod"] == 0.0
    assert math.isnan(m["mAP_small_aitod"])  # no 16-32 px object in the ground truth
    # per class by the file's names; the players were all missed
    assert result["per_class"]["player"]["AP"] == 0.0 and result["per_class"]["player"]["num_gt"] == 2
    assert result["per_class"]["ball"]["num_gt"] == 3 and 0 < result["per_class"]["ball"]["AP"] < 1
    assert (result["num_images"], result["num_ground_truth"], result["num_predictions"]) == (2, 5, 2)
    assert result["max_dets"] == {"coco": 100, "aitod": 1500}
    assert result["notes"] and "100" in result["notes"][0]  # no image had more than 100 detections


def test_files_equal_the_evaluation_of_a_run(tmp_path: Path) -> None:
    """The same boxes through the run evaluator (labels 1..K) and through files with other category ids."""
    import torch

    gt = ground_truth()
    preds = detections(gt, keep=lambda a: a["id"] != 2)
    preds.append({"image_id": 11, "category_id": 7, "bbox": [600, 600, 30, 30], "score": 0.95})  # a false positive
    by_name = {3: 1, 7: 2}
    evaluator = DetectionEvaluator(["ball", "player"], "both")
    for image in gt["images"]:
        def xyxy(b: list[float]) -> list[float]:
            return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        dts = [p for p in preds if p["image_id"] == image["id"]]
        evaluator.update(
            [{"boxes": torch.tensor([xyxy(a["bbox"]) for a in anns], dtype=torch.float64),
              "labels": torch.tensor([by_name[a["category_id"]] for a in anns]), "image_id": image["id"]}],
            [{"boxes": torch.tensor([xyxy(p["bbox"]) for p in dts], dtype=torch.float64).reshape(-1, 4),
              "labels": torch.tensor([by_name[p["category_id"]] for p in dts], dtype=torch.int64),
              "scores": torch.tensor([p["score"] for p in dts], dtype=torch.float64)}])
    run = evaluator.compute()
    files = evaluate_detection_files(write(tmp_path, "dt.json", preds), write(tmp_path, "gt.json", gt), "both")
    assert files["metrics"] == pytest.approx(run.metrics, nan_ok=True)
    for name in ("ball", "player"):
        assert files["per_class"][name] == pytest.approx(run.per_class[name], nan_ok=True)
    # coco: exactly COCO's keys; a dict with "annotations" is read like the list
    coco = evaluate_detection_files(write(tmp_path, "dt2.json", {"annotations": preds}), tmp_path / "gt.json")
    assert list(coco["metrics"]) == METRIC_KEYS and coco["notes"] == []
    assert coco["metrics"]["mAP"] == pytest.approx(run.metrics["mAP"])


def test_cli_prints_json_and_writes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = ground_truth()
    pred, gt_path = write(tmp_path, "dt.json", detections(gt)), write(tmp_path, "gt.json", gt)
    out = tmp_path / "out"
    assert main(["eval", "--pred", str(pred), "--gt", str(gt_path), "--size-bins", "both", "--json",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["size_bins"] == "both" and list(printed["metrics"]) == metric_keys("both")
    assert printed["metrics"]["mAP_verytiny"] == pytest.approx(1.0) and printed["metrics"]["mAP_small_aitod"] is None
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == printed["metrics"] and printed["out_dir"] == str(out)
    # the table: every metric by name, n/a for the empty bin, the note
    assert main(["eval", "--pred", str(pred), "--gt", str(gt_path), "--size-bins", "aitod"]) == 0
    text = capsys.readouterr().out
    assert "mAP_verytiny" in text and "1.0000" in text and "n/a" in text and "note:" in text
    assert "mAP_small " not in text and "2 images, 5 ground-truth boxes, 2 detections" in text
    # default: coco
    assert main(["eval", "--pred", str(pred), "--gt", str(gt_path), "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["metrics"]) == METRIC_KEYS


def test_1500_detections_per_image_through_files(tmp_path: Path) -> None:
    boxes = [[10.0 + 30 * (i % 30), 10.0 + 30 * (i // 30), 10.0, 10.0] for i in range(120)]
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "bird"}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)]}
    preds = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - 0.001 * i} for i, b in enumerate(boxes)]
    m = evaluate_detection_files(write(tmp_path, "dt.json", preds), write(tmp_path, "gt.json", gt), "both")
    assert m["metrics"]["mAR_100"] == pytest.approx(100 / 120) and m["metrics"]["mAR_aitod"] == pytest.approx(1.0)
    assert m["metrics"]["mAP_tiny"] == pytest.approx(1.0) and m["notes"] == []  # area w*h where the file has none


def test_file_areas_that_differ_from_the_box_are_kept_and_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = ground_truth()
    # a 12 x 12 ball (box area 144, tiny) with a mask area of 49 (very tiny by the file), and one 0.5 % off
    gt["annotations"][1]["area"] = 49.0
    gt["annotations"][2]["area"] = 40 * 60 * 1.005
    dt = detections(gt, keep=lambda ann: ann["bbox"][2] == 12)  # only the 12 px ball is found
    pred, gt_path = write(tmp_path, "dt.json", dt), write(tmp_path, "gt.json", gt)
    result = evaluate_detection_files(pred, gt_path, "aitod")
    # the file's area decides the bin: the found ball is very tiny (beside 2 missed 5 px balls), not tiny
    assert result["metrics"]["mAR_verytiny"] == pytest.approx(1 / 3) and math.isnan(result["metrics"]["mAR_tiny"])
    area_notes = [n for n in result["notes"] if "w*h" in n]
    assert len(area_notes) == 1 and area_notes[0].startswith("1 of 5 annotation(s)") and "box areas" in area_notes[0]
    assert main(["eval", "--pred", str(pred), "--gt", str(gt_path)]) == 0
    assert "1 of 5 annotation(s)" in capsys.readouterr().out
    # areas equal to w*h: no note
    assert not [n for n in evaluate_detection_files(pred, write(tmp_path, "gt2.json", ground_truth()))["notes"]
                if "w*h" in n]


GOOD_GT = ground_truth()
GOOD_DT = detections(GOOD_GT)


@pytest.mark.parametrize(("which", "content", "message"), [
    ("pred", "[{not json", "not valid JSON"),
    ("gt", "{\"images\": [", "not valid JSON"),
    ("pred", {"images": []}, "no 'annotations'"),
    ("pred", 42, "must be a list"),
    ("pred", [[1, 2, 3]], "detection 0 must be an object"),
    ("pred", [{"image_id": 10, "bbox": [1, 2, 3, 4], "score": 0.5}], "no 'category_id'"),
    ("pred", [{**GOOD_DT[0], "image_id": 99}, {**GOOD_DT[0], "image_id": 98}],
     "2 detection(s) name image ids that are not in"),
    ("pred", [{**GOOD_DT[0], "category_id": 5}], "category_id 5 is not a category of"),
    ("pred", [{**GOOD_DT[0], "bbox": [1, 2, float("nan"), 4]}], "not a finite number"),
    ("pred", [{**GOOD_DT[0], "bbox": [1, 2, -3, 4]}], "negative width or height"),
    ("pred", [{**GOOD_DT[0], "bbox": [1, 2, 3]}], "bbox must be [x, y, width, height]"),
    ("pred", [{**GOOD_DT[0], "score": "high"}], "score 'high' is not a finite number"),
    ("gt", [], "a COCO ground truth is a JSON object"),
    ("gt", GOOD_DT, "a COCO ground truth is a JSON object"),
    ("gt", {"annotations": [], "categories": CATEGORIES}, "no 'images'"),
    ("gt", {**GOOD_GT, "images": []}, "has no images"),
    ("gt", {**GOOD_GT, "categories": []}, "has no categories"),
    ("gt", {**GOOD_GT, "images": [*GOOD_GT["images"], {"id": 10}]}, "image id 10 is listed twice"),
    ("gt", {**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "image_id": 5}]}, "image_id 5 is not in 'images'"),
    ("gt", {**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "category_id": 1}]},
     "category_id 1 is not in 'categories'"),
    ("gt", {**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "bbox": [0, 0, 5, -1]}]},
     "negative width or height"),
    ("gt", {**GOOD_GT, "annotations": [{**GOOD_GT["annotations"][0], "bbox": [0, 0, 5, float("inf")]}]},
     "not a finite number"),
])
def test_bad_input_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str,
                                           content: Any, message: str) -> None:
    files = {"pred": GOOD_DT, "gt": GOOD_GT}
    files[which] = content
    pred = write(tmp_path, "detections.json", files["pred"] if isinstance(files["pred"], str)
                 else json.dumps(files["pred"]))
    gt = write(tmp_path, "coco_gt.json", files["gt"] if isinstance(files["gt"], str) else json.dumps(files["gt"]))
    assert main(["eval", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    named = pred if which == "pred" else gt
    assert err.startswith(f"error: {named}:") and message in err and err.count("\n") == 1, err
    with pytest.raises(DataError, match=str(named)):
        evaluate_detection_files(pred, gt)


def test_missing_files_and_misused_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = write(tmp_path, "gt.json", GOOD_GT)
    pred = write(tmp_path, "dt.json", GOOD_DT)
    cases = [
        (["--pred", str(tmp_path / "nothing.json"), "--gt", str(gt)], f"{tmp_path / 'nothing.json'}: no such file"),
        (["--pred", str(pred), "--gt", str(tmp_path / "none.json")], f"{tmp_path / 'none.json'}: no such file"),
        (["--pred", str(pred)], "--pred and --gt go together"),
        (["--pred", str(pred), "--gt", str(gt), "--split", "test"], "give no checkpoint"),
        (["--pred", str(pred), "--gt", str(gt), "--tile", "64"], "scored as they are"),
        (["--pred", str(pred), "--gt", str(gt), "--classes", "3"], "--classes 3: for saved segmentation maps"),
        (["--pred", str(tmp_path), "--gt", str(tmp_path), "--size-bins", "aitod"], "not with saved maps"),
    ]
    for argv, message in cases:
        assert main(["eval", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit):  # argparse: not a choice
        main(["eval", "--pred", str(pred), "--gt", str(gt), "--size-bins", "tiny"])
    capsys.readouterr()


# ------------------------------------------------------------------------------------------ run flags
def test_size_bins_and_tile_flags_become_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import crossattentiondet.engine.inference as inference

    seen: dict[str, Any] = {}

    def fake_evaluate(path: Any, **kwargs: Any) -> dict[str, Any]:
        seen["eval"] = kwargs["overrides"]
        return {"split": "test", "data_root": "d", "images": 1, "checkpoint": str(path), "metrics": {"mAP": 0.5},
                "out_dir": str(tmp_path), "notes": ["a note"]}

    def fake_predict(path: Any, inputs: Any, out: Any, **kwargs: Any) -> Path:
        seen["predict"] = kwargs["overrides"]
        return Path(out)

    monkeypatch.setattr(inference, "evaluate_checkpoint", fake_evaluate)
    monkeypatch.setattr(inference, "predict", fake_predict)
    assert main(["eval", "runs/x", "--size-bins", "aitod", "--tile", "640", "--overlap", "0.25",
                 "train.device=cpu"]) == 0
    assert seen["eval"] == ["eval.size_bins=aitod", "eval.tile_overlap=0.25", "eval.tile=640", "train.device=cpu"]
    assert "note: a note" in capsys.readouterr().out
    assert main(["eval", "runs/x", "--json"]) == 0 and seen["eval"] == []
    capsys.readouterr()
    assert main(["predict", "runs/x", "frames", "--out", str(tmp_path / "p"), "--tile", "512"]) == 0
    assert seen["predict"] == ["eval.tile=512"]
    assert main(["predict", "runs/x", "frames", "--out", str(tmp_path / "p")]) == 0 and seen["predict"] == []
    # a flag and an override of the same key, an overlap without tiles, an overlap out of range
    for argv, message in [
        (["eval", "runs/x", "--size-bins", "aitod", "eval.size_bins=coco"], "--size-bins aitod conflicts"),
        (["eval", "runs/x", "--tile", "64", "--overlap", "1.5"], "below 1"),
        (["predict", "runs/x", "f", "--out", str(tmp_path / "p"), "--overlap", "1.0"], "below 1"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    # --overlap alone applies to the tile the run's config (or an override) sets: passed on, with a note
    # only when no tile is given here
    assert main(["eval", "runs/x", "--overlap", "0.3"]) == 0 and seen["eval"] == ["eval.tile_overlap=0.3"]
    assert "applies to the run's eval.tile" in capsys.readouterr().err
    assert main(["eval", "runs/x", "--overlap", "0.3", "eval.tile=320"]) == 0
    assert seen["eval"] == ["eval.tile_overlap=0.3", "eval.tile=320"] and "note" not in capsys.readouterr().err
    assert main(["predict", "runs/x", "f", "--out", str(tmp_path / "p"), "--overlap", "0.1"]) == 0
    assert seen["predict"] == ["eval.tile_overlap=0.1"]
    capsys.readouterr()


@pytest.mark.slow
def test_eval_a_run_with_aitod_bins(tiny_run: tuple[Path, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = tiny_run
    final = json.loads((run / "final_results.json").read_text())
    assert main(["eval", str(run), "--size-bins", "both", "--out", str(tmp_path / "ev"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(metric_keys("both")) <= set(summary["metrics"]) and summary["size_bins"] == "both"
    for key in METRIC_KEYS:  # the COCO numbers of the run, unchanged by the extra bins
        assert summary["metrics"][key] == pytest.approx(final["results"][key], nan_ok=True, abs=1e-9), key
    # the tiny model returns at most 100 detections per image: said, not claimed as 1500
    assert any("at most 100" in note for note in summary["notes"])
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["max_dets"] == {"coco": 100, "aitod": 1500} and "mAP_verytiny" in saved["metrics"]


@pytest.mark.slow
def test_eval_a_run_with_tiles(tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("crossattentiondet.engine.tiling")
    run, _ = tiny_run
    assert main(["eval", str(run), "--tile", "32", "--overlap", "0.25", "--out", str(tmp_path / "ev"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # the 64 x 64 test frames ran as 32 x 32 tiles: said in the summary, metrics as usual
    assert summary["tiling"] == {"tile": 32, "overlap": 0.25, "nms_iou": 0.5}
    assert list(summary["metrics"])[: len(METRIC_KEYS)] == METRIC_KEYS and summary["size_bins"] == "coco"
    assert (tmp_path / "ev" / "predictions_test.json").is_file()
