"""AI-TOD size bins (eval.size_bins): per-bin AP / AR known by construction, bin edges, 1500 vs 100 detections,
coco mode unchanged, the detections-per-image note, and the study tables that show the bins."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from crossattentiondet.engine.evaluate import (
    AITOD_METRIC_KEYS,
    METRIC_KEYS,
    DetectionEvaluator,
    coco_metrics,
    evaluate,
    metric_keys,
    run_coco_eval,
    summarize_by_name,
)


def square(x: float, y: float, side: float) -> list[float]:
    """An xyxy box of ``side`` x ``side`` px at (x, y)."""
    return [x, y, x + side, y + side]


def evaluated(gt: list[tuple[list[float], int]], dt: list[tuple[list[float], int, float]], size_bins: str,
              image_id: int = 1, classes: tuple[str, ...] = ("ball",)) -> Any:
    """An EvalResult of one 2000x2000 image: ``gt`` (xyxy box, label), ``dt`` (xyxy box, label, score)."""
    evaluator = DetectionEvaluator(list(classes), size_bins)
    target = {"boxes": torch.tensor([b for b, _ in gt], dtype=torch.float64).reshape(-1, 4),
              "labels": torch.tensor([c for _, c in gt], dtype=torch.int64), "image_id": image_id}
    output = {"boxes": torch.tensor([b for b, _, _ in dt], dtype=torch.float64).reshape(-1, 4),
              "labels": torch.tensor([c for _, c, _ in dt], dtype=torch.int64),
              "scores": torch.tensor([s for _, _, s in dt], dtype=torch.float64)}
    evaluator.update([target], [output], [{"image_id": image_id, "stem": "f", "height": 2000, "width": 2000}])
    return evaluator.compute()


# sides per AI-TOD bin: very tiny < 8 px, tiny 8-16, small 16-32, medium >= 32 (sqrt of area)
SIDES = {"verytiny": (4.0, 6.0), "tiny": (10.0, 12.0), "small_aitod": (20.0, 24.0), "medium_aitod": (40.0, 60.0)}


def one_of_each(detect: set[str]) -> tuple[list[Any], list[Any]]:
    """Two boxes per AI-TOD bin, far apart; perfect detections (score 0.9, 0.8) for the bins in ``detect``."""
    gt, dt = [], []
    for row, (label, sides) in enumerate(SIDES.items()):
        for col, side in enumerate(sides):
            box = square(100.0 + 200 * col, 100.0 + 200 * row, side)
            gt.append((box, 1))
            if label in detect:
                dt.append((box, 1, 0.9 - 0.1 * col))
    return gt, dt


def test_keys_of_each_mode_are_named_and_never_collide() -> None:
    assert metric_keys("coco") == METRIC_KEYS
    aitod = metric_keys("aitod")
    both = metric_keys("both")
    assert both == METRIC_KEYS + AITOD_METRIC_KEYS and len(set(both)) == len(both)
    # COCO's size-dependent keys are not in aitod; AI-TOD's small/medium are named apart from COCO's
    assert not {"mAP_small", "mAP_medium", "mAP_large", "mAR_small"} & set(aitod)
    assert {"mAP_verytiny", "mAP_tiny", "mAR_verytiny", "mAR_tiny", "mAP_small_aitod", "mAP_medium_aitod"} <= set(aitod)
    assert {"mAP", "mAP_50", "mAP_75", "mAR_100"} <= set(aitod)
    with pytest.raises(ValueError, match="size_bins must be one of"):
        metric_keys("tiny")
    with pytest.raises(ValueError, match="size_bins must be one of"):
        DetectionEvaluator(["a"], "aitod-ish")


def test_perfect_very_tiny_detections_only() -> None:
    gt, dt = one_of_each({"verytiny"})
    m = evaluated(gt, dt, "aitod").metrics
    assert list(m) == metric_keys("aitod")
    assert m["mAP_verytiny"] == pytest.approx(1.0) and m["mAR_verytiny"] == pytest.approx(1.0)
    for label in ("tiny", "small_aitod", "medium_aitod"):  # ground truth there, nothing found: 0, not NaN
        assert m[f"mAP_{label}"] == 0.0 and m[f"mAR_{label}"] == 0.0, label
    # 2 of 8 boxes found, both ranked first: precision 1 up to recall 0.25 (26 of the 101 recall thresholds)
    assert m["mAP_aitod"] == pytest.approx(26 / 101) and m["mAR_aitod"] == pytest.approx(0.25)


def test_each_bin_alone_and_a_bin_without_ground_truth_is_nan() -> None:
    for label in SIDES:
        gt, dt = one_of_each({label})
        m = evaluated(gt, dt, "aitod").metrics
        assert m[f"mAP_{label}"] == pytest.approx(1.0), label
        assert all(m[f"mAP_{o}"] == 0.0 for o in SIDES if o != label), (label, m)
    # no medium ground truth at all (a detection there is a false positive of the medium bin, but the bin has
    # nothing to find): NaN, never 0 or -1
    gt = [(square(100, 100, 5), 1), (square(400, 400, 12), 1)]
    dt = [(square(100, 100, 5), 1, 0.9), (square(800, 800, 50), 1, 0.8)]
    result = evaluated(gt, dt, "aitod")
    assert math.isnan(result.metrics["mAP_medium_aitod"]) and math.isnan(result.metrics["mAR_medium_aitod"])
    assert math.isnan(result.metrics["mAP_small_aitod"])
    assert result.metrics["mAP_verytiny"] == pytest.approx(1.0) and result.metrics["mAP_tiny"] == 0.0
    saved = json.loads(json.dumps(result.summary(), allow_nan=False))  # null in files
    assert saved["metrics"]["mAP_medium_aitod"] is None and saved["size_bins"] == "aitod"
    assert saved["max_dets"] == {"coco": 100, "aitod": 1500}


@pytest.mark.parametrize("edge", [8.0, 16.0, 32.0])
def test_a_box_on_a_bin_edge_counts_in_both_neighbouring_bins(edge: float) -> None:
    # the official AI-TOD toolkit's ranges are COCOeval's inclusive [lo, hi]: one ground-truth box with
    # sqrt(area) exactly `edge`, found exactly, is in the bin ending at `edge` and in the one starting there
    # (found: AP / AR 1 in both); the other bins hold nothing (NaN)
    gt = [(square(100.0, 100.0, edge), 1)]
    dt = [(square(100.0, 100.0, edge), 1, 0.9)]
    m = evaluated(gt, dt, "aitod").metrics
    upper = {8.0: "tiny", 16.0: "small_aitod", 32.0: "medium_aitod"}[edge]
    lower = {8.0: "verytiny", 16.0: "tiny", 32.0: "small_aitod"}[edge]
    for label in (lower, upper):
        assert m[f"mAR_{label}"] == pytest.approx(1.0) and m[f"mAP_{label}"] == pytest.approx(1.0), label
    for label in set(SIDES) - {lower, upper}:
        assert math.isnan(m[f"mAR_{label}"]) and math.isnan(m[f"mAP_{label}"]), label
    # and an undetected edge box is a miss in both bins: AR 0 there, not NaN
    m = evaluated([(square(100.0, 100.0, edge), 1), (square(600.0, 600.0, 4.0), 1)],
                  [(square(600.0, 600.0, 4.0), 1, 0.9)], "aitod").metrics
    assert m[f"mAR_{upper}"] == 0.0
    # the lower bin has the missed edge box, plus the found 4 px box when it is the very tiny bin
    assert m[f"mAR_{lower}"] == pytest.approx(0.5 if lower == "verytiny" else 0.0)


def crowd(n: int, side: float = 10.0) -> tuple[list[Any], list[Any]]:
    """``n`` tiny objects of one class on one image, each found exactly (distinct scores)."""
    gt = [(square(20.0 + 40 * (i % 40), 20.0 + 40 * (i // 40), side), 1) for i in range(n)]
    dt = [(box, 1, 0.99 - 0.0005 * i) for i, (box, _) in enumerate(gt)]
    return gt, dt


def test_1500_detections_count_where_100_do_not() -> None:
    gt, dt = crowd(150)
    m = evaluated(gt, dt, "both").metrics
    # COCO stops at the 100 best of the image's 150 (all correct): recall 100/150, precision 1 up to it,
    # i.e. 67 of the 101 recall thresholds (0 .. 0.66)
    assert m["mAR_100"] == pytest.approx(100 / 150) and m["mAP"] == pytest.approx(67 / 101)
    assert m["mAP_small"] == pytest.approx(67 / 101)
    # AI-TOD's 1500 take all of them
    assert m["mAR_aitod"] == pytest.approx(1.0) and m["mAP_aitod"] == pytest.approx(1.0)
    assert m["mAP_tiny"] == pytest.approx(1.0) and m["mAR_tiny"] == pytest.approx(1.0)
    # up to 100 objects both agree
    gt, dt = crowd(80)
    m = evaluated(gt, dt, "both").metrics
    assert m["mAP"] == m["mAP_aitod"] == pytest.approx(1.0)


def mixed_scene(rng: np.random.Generator) -> list[tuple[list[Any], list[Any]]]:
    """Images of 3 classes with boxes of every size, noisy detections, false positives and one image with
    more than 100 detections of a class (where coco and the 1500-detection evaluation differ)."""
    images = []
    for image in range(6):
        n = 130 if image == 0 else int(rng.integers(0, 12))
        gt, dt = [], []
        for _ in range(n):
            side = float(rng.choice([3, 6, 8, 11, 16, 25, 32, 45, 96, 150]))
            x, y = (float(v) for v in rng.uniform(0, 1700, 2))
            label = int(rng.integers(1, 4)) if image else 1
            gt.append((square(x, y, side), label))
            if rng.random() < 0.8:
                jitter = rng.normal(0, side * 0.08, 4)
                dt.append(((np.array(square(x, y, side)) + jitter).tolist(), label, float(rng.random())))
        for _ in range(int(rng.integers(0, 6))):
            x, y = (float(v) for v in rng.uniform(0, 1700, 2))
            dt.append((square(x, y, float(rng.uniform(2, 80))), int(rng.integers(1, 4)), float(rng.random())))
        images.append((gt, dt))
    return images


def evaluate_scene(images: list[tuple[list[Any], list[Any]]], size_bins: str) -> Any:
    evaluator = DetectionEvaluator(["a", "b", "c"], size_bins)
    for image_id, (gt, dt) in enumerate(images, start=1):
        target = {"boxes": torch.tensor([b for b, _ in gt], dtype=torch.float64).reshape(-1, 4),
                  "labels": torch.tensor([c for _, c in gt], dtype=torch.int64), "image_id": image_id}
        output = {"boxes": torch.tensor([b for b, _, _ in dt], dtype=torch.float64).reshape(-1, 4),
                  "labels": torch.tensor([c for _, c, _ in dt], dtype=torch.int64),
                  "scores": torch.tensor([s for _, _, s in dt], dtype=torch.float64)}
        evaluator.update([target], [output], [{"image_id": image_id, "height": 2000, "width": 2000}])
    return evaluator.compute()


def test_coco_mode_is_cocos_standard_evaluation_and_both_keeps_it() -> None:
    images = mixed_scene(np.random.default_rng(3))
    coco = evaluate_scene(images, "coco")
    # the previous output: COCOeval's own 12 summary numbers, in order, -1 as NaN
    reference = run_coco_eval(coco.ground_truth(), coco.predictions)
    expected = [float("nan") if v == -1 else v for v in np.asarray(reference.stats)[:12].tolist()]
    assert list(coco.metrics) == METRIC_KEYS
    np.testing.assert_allclose([coco.metrics[k] for k in METRIC_KEYS], expected, rtol=0, atol=0)
    assert 0 < coco.metrics["mAP"] < 1 and coco.metrics["mAR_100"] < 1
    assert "notes" not in coco.summary() and coco.notes == []
    # both: the same COCO numbers and per-class APs (read by name from the combined evaluation)
    both = evaluate_scene(images, "both")
    assert [both.metrics[k] for k in METRIC_KEYS] == pytest.approx([coco.metrics[k] for k in METRIC_KEYS], nan_ok=True,
                                                                     abs=1e-12)
    assert list(both.per_class) == list(coco.per_class)
    for name, stats in coco.per_class.items():
        assert both.per_class[name] == pytest.approx(stats, abs=1e-12, nan_ok=True), name
    np.testing.assert_allclose(both.pr_precision, coco.pr_precision, atol=1e-12)
    # the 130-object image: the 1500-detection numbers see more
    assert both.metrics["mAR_aitod"] > both.metrics["mAR_100"]
    # and aitod's COCO-overall keys equal coco's
    aitod = evaluate_scene(images, "aitod")
    for key in ("mAP", "mAP_50", "mAP_75", "mAR_1", "mAR_10", "mAR_100"):
        assert aitod.metrics[key] == pytest.approx(coco.metrics[key], abs=1e-12), key
    for key in AITOD_METRIC_KEYS:
        assert aitod.metrics[key] == pytest.approx(both.metrics[key], abs=1e-12, nan_ok=True), key


def test_metrics_are_read_by_name_not_position() -> None:
    gt, dt = one_of_each({"tiny"})
    result = evaluated(gt, dt, "aitod")
    # the same evaluation with the area ranges listed in another order gives the same numbers by name
    from crossattentiondet.engine.evaluate import AITOD_AREA_RANGES, COCO_AREA_RANGES

    ranges = dict(reversed(list({**COCO_AREA_RANGES, **AITOD_AREA_RANGES}.items())))
    coco_eval = run_coco_eval(result.ground_truth(), result.predictions, area_ranges=ranges,
                              max_dets=[1500, 100, 10, 1])
    again = summarize_by_name(coco_eval, metric_keys("aitod"))
    assert again == pytest.approx(result.metrics, nan_ok=True)
    assert again["mAP_tiny"] == pytest.approx(1.0) and again["mAP_verytiny"] == 0.0
    # a metric whose area range the evaluation lacks is an error, not a wrong number
    coco_only = run_coco_eval(result.ground_truth(), result.predictions)
    with pytest.raises(ValueError, match="verytiny"):
        summarize_by_name(coco_only, ["mAP_verytiny"])
    _, metrics = coco_metrics(result.ground_truth(), result.predictions, "aitod")
    assert metrics == pytest.approx(result.metrics, nan_ok=True)


class FixedDetector(nn.Module):
    """A 'model' that returns the given detections for every image, with a detections-per-image limit."""

    def __init__(self, output: dict[str, torch.Tensor], cap: int | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.output = output
        if cap is not None:
            self.detections_per_img = cap

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [dict(self.output) for _ in images]


def test_a_model_capped_below_1500_is_noted_not_claimed() -> None:
    gt, dt = crowd(20)
    output = {"boxes": torch.tensor([b for b, _, _ in dt]), "scores": torch.tensor([s for _, _, s in dt]),
              "labels": torch.ones(len(dt), dtype=torch.int64)}
    target = {"boxes": torch.tensor([b for b, _ in gt]), "labels": torch.ones(len(gt), dtype=torch.int64),
              "image_id": 0}
    loader = [([torch.zeros(3, 32, 32)], [target], [{"image_id": 0, "stem": "a", "height": 2000, "width": 2000}])]
    capped = FixedDetector(output, 100)
    result = evaluate(capped, loader, "cpu", class_names=["ball"], size_bins="aitod")
    assert len(result.notes) == 1 and "100" in result.notes[0] and "1500" in result.notes[0]
    assert result.summary()["notes"] == result.notes and result.max_detections_per_image == 20
    assert evaluate(capped, loader, "cpu", class_names=["ball"], size_bins="coco").notes == []
    # a model at AI-TOD's limit (explicit, or read from the model) has nothing to note
    assert evaluate(capped, loader, "cpu", class_names=["ball"], size_bins="both", max_detections=1500).notes == []
    assert evaluate(FixedDetector(output, 1500), loader, "cpu", class_names=["ball"], size_bins="both").notes == []
    # one that says nothing: the note says what was seen
    unknown = evaluate(FixedDetector(output, None), loader, "cpu", class_names=["ball"], size_bins="aitod")
    assert len(unknown.notes) == 1 and "20" in unknown.notes[0]
    # a torchvision-style limit on a submodule is found too
    wrapped = nn.Sequential()
    wrapped.add_module("inner", FixedDetector(output, 50))
    from crossattentiondet.engine.evaluate import detection_cap

    assert detection_cap(wrapped) == 50 and detection_cap(FixedDetector(output, None)) is None


# ------------------------------------------------------------------------------------------------- studies
def test_study_tables_show_the_aitod_bins_only_when_runs_have_them(tmp_path: Path) -> None:
    from crossattentiondet.studies.aggregate import SIZE_BIN_METRICS
    from crossattentiondet.studies.plan import StudySettings, build_plan
    from crossattentiondet.studies.report import write_report
    from crossattentiondet.studies.spec import spec_from_dict
    from tests.test_studies import fake_finished

    def study(name: str, bins: bool) -> tuple[str, list[str]]:
        spec = spec_from_dict({"name": name, "seeds": 2, "baseline": "a", "phases": [
            {"name": "p", "points": [{"id": "a", "set": {}}, {"id": "b", "set": {"train.lr": 0.02}}]}]})
        root = tmp_path / name
        for cid, value in (("a", 0.5), ("b", 0.3)):
            for seed in (0, 1):
                run = root / cid / f"seed{seed}"
                fake_finished(run, value, value + 0.01 * seed)
                if bins:
                    final = json.loads((run / "final_results.json").read_text())
                    final["results"].update({"mAP_aitod": value, "mAP_verytiny": value / 4 + 0.01 * seed,
                                             "mAP_tiny": value / 2, "mAP_small_aitod": value,
                                             "mAP_medium_aitod": None})
                    (run / "final_results.json").write_text(json.dumps(final))
        plan = build_plan(spec, StudySettings(output=root))
        text = write_report(plan).read_text()
        with open(root / "summary_all_experiments.csv", newline="") as f:
            columns = next(csv.reader(f))
        return text, columns

    text, columns = study("with_bins", True)
    assert all(k in columns for k in SIZE_BIN_METRICS)
    assert columns.index("mAP_verytiny") > columns.index("mAP_large")
    assert "## AP by AI-TOD object size" in text
    section = text.split("## AP by AI-TOD object size", 1)[1]
    assert "| configuration | all | very tiny | tiny | small | medium |" in section
    row = next(line for line in section.splitlines() if line.startswith("| a |"))
    # configuration a: all 0.5, very tiny 0.125 and 0.135 over its two seeds, tiny 0.25, small 0.5, medium null
    assert row == "| a | 0.500 ± 0.000 | 0.130 ± 0.007 | 0.250 ± 0.000 | 0.500 ± 0.000 | n/a |"
    text, columns = study("without_bins", False)
    assert not any(k in columns for k in SIZE_BIN_METRICS)
    assert "AI-TOD" not in text and "## AP by object size" in text
