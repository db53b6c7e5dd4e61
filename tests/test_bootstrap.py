"""Bootstrap of test mAP over images: equal to COCO (faster-coco-eval), deterministic, paired, saved."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crossattentiondet.engine.bootstrap import (
    BOOTSTRAP_FILE,
    BootstrapResult,
    bootstrap_map,
    image_ids_hash,
    load_run_bootstrap,
    map_of_weights,
    match_detections,
    paired_difference,
    resample_weights,
    save_bootstrap,
)
from crossattentiondet.engine.evaluate import DetectionEvaluator

CLASSES = ["person", "car", "bicycle"]


def scene(seed: int, n_images: int, *, perfect: bool = False) -> list[dict[str, np.ndarray | int]]:
    """Images with 0-5 objects of 3 classes; every 5th image has no ground truth, every 7th no detections.
    Detections: localisation jitter, misses, duplicates, wrong classes, false positives, and scores from a
    few values so that ties (within and across images, TP against FP) are everywhere."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        n_gt = 0 if i % 5 == 0 else int(rng.integers(1, 6))
        xy = rng.uniform(0, 200, (n_gt, 2))
        gt_boxes = np.concatenate([xy, xy + rng.uniform(6, 80, (n_gt, 2))], axis=1)
        gt_labels = rng.integers(1, len(CLASSES) + 1, n_gt)
        boxes, scores, labels = [], [], []
        if perfect:
            boxes, scores, labels = list(gt_boxes), [0.9] * n_gt, list(gt_labels)
        elif i % 7 != 3:
            for box, label in zip(gt_boxes, gt_labels):
                for _ in range(int(rng.integers(0, 3))):  # 0: a miss, 2: a duplicate
                    boxes.append(box + rng.normal(0, 3, 4))
                    scores.append(float(rng.choice([0.4, 0.6, 0.8, 0.95])))
                    labels.append(label if rng.random() > 0.15 else int(rng.integers(1, len(CLASSES) + 1)))
            for _ in range(int(rng.integers(0, 4))):
                x, y, s = *rng.uniform(0, 200, 2), rng.uniform(6, 60)
                boxes.append(np.array([x, y, x + s, y + s]))
                scores.append(float(rng.choice([0.4, 0.6, 0.3])))
                labels.append(int(rng.integers(1, len(CLASSES) + 1)))
        images.append({"image_id": 100 + 3 * i, "gt_boxes": gt_boxes, "gt_labels": gt_labels,
                       "dt_boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                       "dt_scores": np.asarray(scores, dtype=np.float64), "dt_labels": np.asarray(labels, np.int64)})
    return images


def evaluator_of(images: list[dict], copies: np.ndarray | None = None) -> DetectionEvaluator:
    """The evaluator over ``images``; with ``copies``, image n added copies[n] times under new ids (in
    order, copies of one image next to each other): a bootstrap resample written out."""
    evaluator = DetectionEvaluator(CLASSES)
    new_id = 1
    for n, im in enumerate(images):
        for _ in range(1 if copies is None else int(copies[n])):
            image_id = im["image_id"] if copies is None else new_id
            new_id += 1
            evaluator.update([{"boxes": torch.tensor(im["gt_boxes"]).reshape(-1, 4),
                               "labels": torch.tensor(im["gt_labels"]), "image_id": image_id}],
                             [{"boxes": torch.tensor(im["dt_boxes"]), "scores": torch.tensor(im["dt_scores"]),
                               "labels": torch.tensor(im["dt_labels"])}])
    return evaluator


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_estimate_equals_faster_coco_eval(seed: int) -> None:
    images = scene(seed, 24)
    result = evaluator_of(images).compute()
    matches = match_detections(result)
    ones = np.ones((1, len(images)), np.int32)
    for metric in ("mAP", "mAP_50", "mAP_75"):
        assert map_of_weights(matches, ones, metric)[0] == pytest.approx(result.metrics[metric], abs=1e-6)
    boot = bootstrap_map(result, n_boot=50)
    assert boot.point == pytest.approx(result.metrics["mAP"], abs=1e-6)
    assert boot.n_images == 24 and boot.n_boot == 50 and boot.samples.shape == (50,)


def test_each_resample_equals_coco_on_the_resampled_images() -> None:
    # a weight w is w copies of the image: COCO on the written-out resample gives the same mAP, ties included
    images = scene(3, 12)
    matches = match_detections(evaluator_of(images))
    weights = resample_weights(matches.image_ids, 4)
    values = map_of_weights(matches, weights)
    for row, value in zip(weights, values):
        assert value == pytest.approx(evaluator_of(images, row).compute().metrics["mAP"], abs=1e-9)


def test_interval_widens_on_a_smaller_test_set() -> None:
    images = scene(4, 150)
    large = bootstrap_map(evaluator_of(images), n_boot=400)
    small = bootstrap_map(evaluator_of(images[:15]), n_boot=400)
    assert large.ci95[0] < large.point < large.ci95[1]
    assert small.ci95[1] - small.ci95[0] > 1.5 * (large.ci95[1] - large.ci95[0])
    assert small.std > large.std > 0


def test_interval_is_degenerate_only_when_every_resample_agrees() -> None:
    perfect = bootstrap_map(evaluator_of(scene(5, 20, perfect=True)), n_boot=200)
    assert perfect.point == 1.0 and np.all(perfect.samples == 1.0)
    assert perfect.ci95 == (1.0, 1.0) and perfect.std == 0.0
    imperfect = bootstrap_map(evaluator_of(scene(5, 20)), n_boot=200)
    assert np.ptp(imperfect.samples) > 0 and imperfect.ci95[0] < imperfect.ci95[1]


def test_resamples_depend_only_on_the_image_ids() -> None:
    ids = [7, 3, 11, 5, 2]
    w = resample_weights(ids, 30)
    assert w.shape == (30, 5) and np.all(w.sum(axis=1) == 5)
    assert np.array_equal(w, resample_weights(sorted(ids), 30))  # order of the records does not matter
    assert np.array_equal(w[:10], resample_weights(ids, 10))  # more resamples extend the same list
    assert image_ids_hash(ids) == image_ids_hash(sorted(ids)) != image_ids_hash([7, 3, 11, 5, 1])
    images = scene(6, 10)
    assert np.array_equal(bootstrap_map(evaluator_of(images), 20).samples,
                          bootstrap_map(evaluator_of(images[::-1]), 20).samples)


def test_paired_difference() -> None:
    images = scene(7, 30)
    a = bootstrap_map(evaluator_of(images), n_boot=300)
    same = paired_difference(a, a)
    assert same.point == 0.0 and same.ci95 == (0.0, 0.0) and np.all(same.samples == 0.0)
    # another "model" on the same test set: drop every third detection
    other = [{**im, "dt_boxes": im["dt_boxes"][::3], "dt_scores": im["dt_scores"][::3],
              "dt_labels": im["dt_labels"][::3]} for im in images]
    b = bootstrap_map(evaluator_of(other), n_boot=200)
    diff = paired_difference(a, b)
    assert diff.point == pytest.approx(a.point - b.point) and len(diff.samples) == 200  # common prefix
    assert np.array_equal(diff.samples, a.samples[:200] - b.samples)
    assert diff.ci95[0] <= diff.point <= diff.ci95[1]


def test_different_test_sets_refuse_to_pair() -> None:
    images = scene(8, 12)
    a = bootstrap_map(evaluator_of(images), n_boot=20)
    b = bootstrap_map(evaluator_of(images[1:]), n_boot=20)
    with pytest.raises(ValueError, match="different test sets"):
        paired_difference(a, b)


def test_file_round_trip_and_run_directory(tmp_path: Path) -> None:
    boot = bootstrap_map(evaluator_of(scene(9, 10)), n_boot=25)
    assert load_run_bootstrap(tmp_path) is None
    save_bootstrap(tmp_path / BOOTSTRAP_FILE, boot, split="test")
    loaded = load_run_bootstrap(tmp_path)
    assert isinstance(loaded, BootstrapResult)
    assert (loaded.metric, loaded.point, loaded.ci95, loaded.n_boot, loaded.n_images, loaded.image_ids_hash) == (
        boot.metric, boot.point, boot.ci95, boot.n_boot, boot.n_images, boot.image_ids_hash)
    assert np.allclose(loaded.samples, boot.samples, atol=5e-7, rtol=0)
    assert np.all(paired_difference(loaded, loaded).samples == 0.0)
    data = boot.to_json()
    assert set(data) >= {"metric", "point", "ci95", "std", "n_boot", "n_images", "image_ids_hash", "samples"}
    with pytest.raises(ValueError, match="missing"):
        BootstrapResult.from_json({"metric": "mAP"})


def test_no_ground_truth_gives_nan_not_a_number() -> None:
    images = [{**im, "gt_boxes": np.zeros((0, 4)), "gt_labels": np.zeros(0, np.int64)} for im in scene(10, 6)]
    boot = bootstrap_map(evaluator_of(images), n_boot=10)
    assert math.isnan(boot.point) and np.all(np.isnan(boot.samples)) and all(math.isnan(v) for v in boot.ci95)
    assert boot.to_json()["point"] is None and boot.to_json()["samples"][0] is None
    with pytest.raises(ValueError, match="no images"):
        bootstrap_map([], n_boot=10)


def test_config_key_and_run_files(tmp_path: Path) -> None:
    from crossattentiondet.config import ConfigError, load_config
    from crossattentiondet.engine.report import _bootstrap

    assert load_config(None, []).eval.bootstrap == 1000
    assert load_config(None, ["eval.bootstrap=0"]).eval.bootstrap == 0
    with pytest.raises(ConfigError):
        load_config(None, ["eval.bootstrap=-1"])
    messages: list[str] = []
    log = type("Log", (), {"info": staticmethod(messages.append)})
    result = evaluator_of(scene(11, 8)).compute()
    path = tmp_path / "bootstrap_test.json"
    summary = _bootstrap(result, 30, path, "test", log)
    assert summary is not None and path.is_file() and summary["point"] == pytest.approx(result.metrics["mAP"])
    assert _bootstrap(result, 0, path, "test", log) is None and not path.is_file()  # no stale interval left
    assert _bootstrap([], 30, path, "test", log) is None and "bootstrap of test mAP failed" in messages[-1]
