"""Evaluation outputs users read with their own tools: COCO ground truth next to the predictions (pycocotools
reproduces the metrics), confusion matrix, precision / recall / F1 vs score threshold, panel frame choice."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crossattentiondet import viz
from crossattentiondet.cli import main
from crossattentiondet.engine.evaluate import (
    METRIC_KEYS,
    DetectionEvaluator,
    confidence_curves,
    save_ground_truth,
    save_predictions,
)
from tests.test_train import frames
from tests.test_viz import LAYOUT, evaluated_result, sample_batch


def pycocotools_stats(gt_path: Path, predictions_path: Path) -> list[float]:
    """The 12 COCO numbers as pycocotools computes them from the two files (-1 where COCO says none)."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    predictions = json.loads(predictions_path.read_text())
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO(str(gt_path))
        if predictions:
            dt = gt.loadRes(str(predictions_path))
        else:
            # loadRes cannot take an empty list (it reads the first entry); an empty results object is what
            # it would build: the ground truth's images, no detections
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        coco_eval = COCOeval(gt, dt, "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return [float(v) for v in coco_eval.stats]


def assert_same_metrics(stats: list[float], metrics: dict[str, Any]) -> None:
    for key, value in zip(METRIC_KEYS, stats):
        mine = metrics[key]
        if value == -1:  # COCO's "no ground truth of this kind" is NaN / null here
            assert mine is None or np.isnan(mine), key
        else:
            assert mine == pytest.approx(value, abs=1e-6), key


def test_saved_ground_truth_and_predictions_reproduce_the_metrics_in_pycocotools(tmp_path: Path) -> None:
    result = evaluated_result()  # noisy boxes, a false positive per image: mAP well inside (0, 1)
    assert 0.1 < result.metrics["mAP"] < 0.9
    save_ground_truth(tmp_path / "gt.json", result.ground_truth(), "a test")
    save_predictions(tmp_path / "pred.json", result.predictions)
    gt = json.loads((tmp_path / "gt.json").read_text())
    assert [img["file_name"] for img in gt["images"]] == [str(i) for i in range(8)]  # the stems given as metas
    assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd"} <= set(gt["annotations"][0])
    assert "image_id" in gt["info"]["ids"] and gt["info"]["description"] == "a test"
    assert_same_metrics(pycocotools_stats(tmp_path / "gt.json", tmp_path / "pred.json"), result.metrics)


# --------------------------------------------------------------------------------------- hand-made case
CLASSES = ["person", "car", "bike"]
PERSON, CAR, BIKE = 1, 2, 3


def hand_made_records() -> list[Any]:
    """Three images with known outcomes at score 0.25 (rows true, columns predicted, as below)."""
    evaluator = DetectionEvaluator(CLASSES)
    images = [
        # image 0: person A and car B found; a person far from anything (FP); a second person on A (a
        # duplicate: FP); a low-scored person on B (below 0.25: not counted)
        ([[0, 0, 10, 10], [20, 20, 40, 40]], [PERSON, CAR],
         [[0, 0, 10, 10], [21, 21, 40, 40], [50, 50, 60, 60], [1, 0, 10, 10], [20, 20, 40, 40]],
         [0.9, 0.8, 0.7, 0.5, 0.1], [PERSON, CAR, PERSON, PERSON, PERSON]),
        # image 1: car C detected as a person (class confusion), bike D missed
        ([[0, 0, 20, 20], [30, 30, 50, 50]], [CAR, BIKE], [[1, 1, 20, 20]], [0.6], [PERSON]),
        # image 2: no ground truth, a car detection (FP)
        ([], [], [[5, 5, 15, 15]], [0.95], [CAR]),
    ]
    for i, (gt, gl, dt, ds, dl) in enumerate(images):
        evaluator.update([{"boxes": torch.tensor(gt, dtype=torch.float32).reshape(-1, 4),
                           "labels": torch.tensor(gl, dtype=torch.int64), "image_id": i}],
                         [{"boxes": torch.tensor(dt, dtype=torch.float32), "scores": torch.tensor(ds),
                           "labels": torch.tensor(dl)}],
                         [{"stem": f"img{i}", "image_id": i, "height": 64, "width": 64}])
    return evaluator.records()


def test_confusion_matrix_on_a_hand_made_case(tmp_path: Path) -> None:
    from crossattentiondet.engine.evaluate import confusion_matrix

    matrix = confusion_matrix(hand_made_records(), len(CLASSES), score_thresh=0.25, class_names=CLASSES)
    assert matrix.labels == [*CLASSES, "background"]
    # rows: true person, car, bike, background; columns: predicted person, car, bike, background (= missed)
    np.testing.assert_array_equal(matrix.counts, [
        [1, 0, 0, 0],  # person A found
        [1, 1, 0, 0],  # car C taken for a person, car B found
        [0, 0, 0, 1],  # bike D missed
        [2, 1, 0, 0],  # the far person and the duplicate, the car on an empty image
    ])
    normalized = matrix.normalized()
    np.testing.assert_allclose(normalized[1], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(normalized[3], [2 / 3, 1 / 3, 0, 0])
    # the low-scored person on (already found) car B counts once the threshold lets it in: background FP
    low = confusion_matrix(hand_made_records(), len(CLASSES), score_thresh=0.05)
    assert low.counts[3, 0] == 3 and low.counts[:3].tolist() == matrix.counts[:3].tolist()
    assert json.loads(json.dumps(matrix.to_json()))["counts"] == matrix.counts.tolist()
    pixels = viz.plot_confusion_matrix(matrix, tmp_path / "cm.png")
    assert pixels.is_file() and pixels.stat().st_size > 10_000


def test_confidence_curves_on_the_hand_made_case(tmp_path: Path) -> None:
    curves = confidence_curves(hand_made_records(), len(CLASSES), thresholds=np.array([0.25, 0.5, 0.8, 0.96]))
    p, r, f1 = curves.precision, curves.recall, curves.f1
    assert curves.num_gt.tolist() == [1, 2, 1]
    # person: scores 0.9 (TP), 0.7, 0.6, 0.5, 0.1 (FPs); 1 ground-truth box
    np.testing.assert_allclose(p[0, :3], [1 / 4, 1 / 4, 1.0])
    np.testing.assert_allclose(r[0, :3], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(f1[0], [2 / 5, 2 / 5, 1.0, 0.0])
    assert np.isnan(p[0, 3])  # no person detection at 0.96: precision undefined, not 0 or 1
    # car: 0.95 (FP on the empty image), 0.8 (TP); 2 boxes
    np.testing.assert_allclose(p[1, :3], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(r[1], [0.5, 0.5, 0.5, 0.0])
    # bike: never detected
    assert np.isnan(p[2]).all() and (r[2] == 0).all() and (f1[2] == 0).all()
    np.testing.assert_allclose(curves.all_recall, r.mean(axis=0))
    assert curves.best_f1() == pytest.approx((np.mean([1.0, 0.5, 0.0]), 0.8))  # mean over the classes
    # the diagonal of the confusion matrix is the true positives these curves count
    from crossattentiondet.engine.evaluate import confusion_matrix

    at = confusion_matrix(hand_made_records(), len(CLASSES), score_thresh=0.25)
    np.testing.assert_allclose(np.diag(at.counts)[:3], r[:, 0] * curves.num_gt)
    assert viz.plot_confidence_curves(curves, tmp_path / "cc.png", CLASSES).is_file()


# ------------------------------------------------------------------------------------------- panels
def test_panel_frames_are_spread_over_sequences() -> None:
    stems = [f"seq{s}_{i:04d}" for s in "ABC" for i in range(20)]
    three = viz.choose_panel_frames(stems, 3)
    assert three == ["seqA_0010", "seqB_0010", "seqC_0010"]  # one from the middle of each sequence
    six = viz.choose_panel_frames(stems, 6)
    assert sorted({s[:4] for s in six}) == ["seqA", "seqB", "seqC"] and len(set(six)) == 6
    assert all(sum(s.startswith(q) for s in six) == 2 for q in ("seqA", "seqB", "seqC"))
    assert [s[:4] for s in viz.choose_panel_frames(stems, 2)] == ["seqA", "seqC"]  # the ends, not two of A
    assert viz.choose_panel_frames(stems, 100) == sorted(stems)  # all there is, once each
    assert viz.choose_panel_frames(stems, 0) == []
    # one long clip (a single prefix): blocks of consecutive frames, so the picks are spread along it
    clip = [f"frame_{i:04d}" for i in range(40)]
    assert viz.choose_panel_frames(clip, 4) == ["frame_0005", "frame_0015", "frame_0025", "frame_0035"]


def test_panel_titles_name_each_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures: list[Any] = []
    monkeypatch.setattr(viz, "_save", lambda fig, path: figures.append(fig) or Path(path))
    images, targets, preds = sample_batch(2)
    viz.save_panels(images, targets, preds, LAYOUT, ["person", "car"], tmp_path / "p.png",
                    titles=["seqA_0010.npy", "seqB_0003.npy"])
    titles = [ax.get_title() for ax in figures[0].axes]
    assert titles == [f"{m}: seqA_0010.npy" for m in ("rgb", "thermal", "event")] + \
        [f"{m}: seqB_0003.npy" for m in ("rgb", "thermal", "event")]


# ------------------------------------------------------------------------------------ a tiny real run
@pytest.fixture(scope="module")
def run(tiny_run: tuple[Path, Path]) -> Path:
    return tiny_run[0]  # the shared one-epoch run (tests/conftest.py)


def test_run_writes_coco_ground_truth_that_pycocotools_reads(run: Path) -> None:
    gt_path, pred_path = run / "gt_test.json", run / "predictions_test.json"
    gt = json.loads(gt_path.read_text())
    split = json.loads((run / "split.json").read_text())
    test_stems = split.get("splits", split)["test"]
    # image ids: position of the frame in the data set's sorted stems; file_name: the stem
    all_stems = sorted(frames(10))
    assert sorted(img["file_name"] for img in gt["images"]) == sorted(test_stems)
    assert all(all_stems[img["id"]] == img["file_name"] for img in gt["images"])
    assert len(gt["annotations"]) == len(test_stems)  # one box per frame in frames()
    assert [c["name"] for c in gt["categories"]] == ["person", "car"]
    predictions = json.loads(pred_path.read_text())
    assert {p["image_id"] for p in predictions} <= {img["id"] for img in gt["images"]}
    final = json.loads((run / "final_results.json").read_text())
    assert_same_metrics(pycocotools_stats(gt_path, pred_path), final["results"])
    for name in ("confusion_matrix_test.png", "confidence_curves_test.png", "panels_test.png"):
        assert (run / "plots" / name).is_file(), name


def test_cadet_eval_writes_ground_truth_and_confusion_counts(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = Path(summary["out_dir"])
    assert json.loads((out / "gt_test.json").read_text()) == json.loads((run / "gt_test.json").read_text())
    assert_same_metrics(pycocotools_stats(out / "gt_test.json", out / "predictions_test.json"), summary["metrics"])
    confusion = summary["confusion_matrix"]
    counts = np.asarray(confusion["counts"])
    assert confusion["labels"] == ["person", "car", "background"] and confusion["score_thresh"] == 0.25
    # every ground-truth box is in exactly one cell of the class rows
    assert counts[:2].sum() == len(json.loads((out / "gt_test.json").read_text())["annotations"])
    assert (out / "plots" / "confusion_matrix_test.png").is_file()
