"""Evaluation: COCO metrics identical to pycocotools, edge cases, files, and the model loops end to end."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch

from crossattentiondet.engine.evaluate import (
    METRIC_KEYS,
    DetectionEvaluator,
    EvalResult,
    evaluate,
    robustness_table,
    save_metrics,
    save_predictions,
)

CLASSES = ["person", "car", "bicycle"]


def _box(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y + h]


def synthetic_batches(seed: int = 0) -> list[tuple[list, list, list]]:
    """Six images, three classes, small/medium/large boxes, localisation jitter, false positives (also on
    a negative image and with the wrong class), missed objects, and a class-2 object of every size."""
    rng = np.random.default_rng(seed)
    images = []
    for image_id in range(1, 7):
        gt_boxes, gt_labels = [], []
        if image_id != 4:  # image 4 has no ground truth: a negative
            for size in (12, 20, 50, 80, 130, 200):
                x, y = rng.uniform(0, 300, 2)
                gt_boxes.append(_box(x, y, size * rng.uniform(0.7, 1.3), size * rng.uniform(0.7, 1.3)))
                gt_labels.append(int(rng.integers(1, 4)))
        dt_boxes, dt_scores, dt_labels = [], [], []
        for box, label in zip(gt_boxes, gt_labels):
            if rng.random() < 0.2:  # missed object
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
            dt_boxes.append((np.asarray(box) + jitter).tolist())
            dt_scores.append(float(rng.uniform(0.3, 1.0)))
            # sometimes the right place with the wrong class
            dt_labels.append(label if rng.random() > 0.15 else int(label % 3 + 1))
        for _ in range(int(rng.integers(2, 6))):  # false positives of assorted sizes
            x, y = rng.uniform(0, 350, 2)
            s = rng.uniform(8, 150)
            dt_boxes.append(_box(x, y, s, s * rng.uniform(0.5, 1.5)))
            dt_scores.append(float(rng.uniform(0.05, 0.9)))
            dt_labels.append(int(rng.integers(1, 4)))
        target = {"boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(gt_labels, dtype=torch.int64),
                  "image_id": torch.tensor(image_id)}
        output = {"boxes": torch.tensor(dt_boxes, dtype=torch.float32).reshape(-1, 4),
                  "scores": torch.tensor(dt_scores, dtype=torch.float32),
                  "labels": torch.tensor(dt_labels, dtype=torch.int64)}
        meta = {"stem": f"frame_{image_id:03d}", "image_id": image_id, "height": 480, "width": 640}
        images.append((target, output, meta))
    # batches of 2, as a loader would give them
    return [tuple(map(list, zip(*images[i:i + 2]))) for i in range(0, len(images), 2)]


def evaluator_with(batches: list) -> DetectionEvaluator:
    evaluator = DetectionEvaluator(CLASSES)
    for targets, outputs, metas in batches:
        evaluator.update(targets, outputs, metas)
    return evaluator


def pycocotools_eval(gt: dict, predictions: list[dict]):  # noqa: ANN201
    """The reference: pycocotools' own COCO / loadRes / COCOeval on the same data."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def test_metrics_equal_pycocotools() -> None:
    evaluator = evaluator_with(synthetic_batches())
    result = evaluator.compute()
    reference = pycocotools_eval(evaluator.ground_truth(), result.predictions)

    assert list(result.metrics) == METRIC_KEYS
    expected = [float("nan") if v == -1 else float(v) for v in reference.stats]
    np.testing.assert_allclose([result.metrics[k] for k in METRIC_KEYS], expected, atol=1e-6, rtol=0)
    # the case exercises every size range and is neither trivial nor perfect
    assert all(math.isfinite(result.metrics[k]) for k in METRIC_KEYS)
    assert 0.05 < result.metrics["mAP"] < 0.95
    assert result.num_images == 6

    # per-class AP from pycocotools' precision array (all IoUs / IoU 0.5, area all, 100 dets)
    precision = reference.eval["precision"]
    for k, name in enumerate(CLASSES):
        p = precision[:, :, k, 0, -1]
        assert result.per_class[name]["AP"] == pytest.approx(p[p > -1].mean(), abs=1e-6)
        assert result.per_class[name]["AP_50"] == pytest.approx(p[0][p[0] > -1].mean(), abs=1e-6)
        np.testing.assert_allclose(result.pr_precision[k], precision[0, :, k, 0, -1], atol=1e-6)
    np.testing.assert_allclose(result.pr_recall, np.linspace(0, 1, 101))


def test_ground_truth_and_prediction_formats(tmp_path) -> None:
    evaluator = evaluator_with(synthetic_batches())
    gt = evaluator.ground_truth()
    assert [c["name"] for c in gt["categories"]] == CLASSES
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3]
    assert {img["id"] for img in gt["images"]} == {1, 2, 3, 4, 5, 6}
    assert gt["images"][0] == {"id": 1, "file_name": "frame_001", "height": 480, "width": 640}
    ann = gt["annotations"][0]
    assert ann["id"] >= 1 and ann["iscrowd"] == 0
    assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])
    assert not any(a["image_id"] == 4 for a in gt["annotations"])

    result = evaluator.compute()
    first_target, first_output = synthetic_batches()[0][0][0], synthetic_batches()[0][1][0]
    pred = result.predictions[0]
    assert set(pred) == {"image_id", "category_id", "bbox", "score"}
    x1, y1, x2, y2 = first_output["boxes"][0].tolist()
    assert pred["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.006)
    assert pred["bbox"] == [round(v, 2) for v in pred["bbox"]]
    assert pred["image_id"] == int(first_target["image_id"])
    assert isinstance(pred["category_id"], int) and isinstance(pred["score"], float)
    assert any(p["image_id"] == 4 for p in result.predictions)  # detections on the negative image kept

    path = tmp_path / "predictions_test.json"
    save_predictions(path, result.predictions)
    assert json.loads(path.read_text()) == result.predictions


def test_no_predictions_gives_zeros() -> None:
    batches = synthetic_batches()
    for _, outputs, _ in batches:
        for o in outputs:
            o.update(boxes=torch.zeros((0, 4)), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64))
    result = evaluator_with(batches).compute()
    assert result.predictions == []
    assert all(result.metrics[k] == 0.0 for k in METRIC_KEYS), result.metrics
    assert all(v["AP"] == 0.0 for v in result.per_class.values())


def test_negatives_only_count_as_false_positives() -> None:
    """Detections on an image without ground truth lower AP; the same image without detections does not."""
    gt_image = ({"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.tensor([1]),
                 "image_id": torch.tensor(1)},
                {"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "scores": torch.tensor([0.5]),
                 "labels": torch.tensor([1])},
                {"stem": "a", "image_id": 1, "height": 100, "width": 100})
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "image_id": torch.tensor(2)}
    meta2 = {"stem": "b", "image_id": 2, "height": 100, "width": 100}
    no_dets = {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    high_fp = {"boxes": torch.tensor([[20.0, 20.0, 70.0, 70.0]]), "scores": torch.tensor([0.9]),
               "labels": torch.tensor([1])}

    clean = DetectionEvaluator(["obj"])
    clean.update([gt_image[0], empty], [gt_image[1], no_dets], [gt_image[2], meta2])
    noisy = DetectionEvaluator(["obj"])
    noisy.update([gt_image[0], empty], [gt_image[1], high_fp], [gt_image[2], meta2])
    a, b = clean.compute(), noisy.compute()
    assert a.num_images == b.num_images == 2
    assert a.metrics["mAP_50"] == pytest.approx(1.0)
    assert b.metrics["mAP_50"] == pytest.approx(0.5)  # the false positive outranks the true positive
    assert b.metrics["mAR_100"] == pytest.approx(1.0)


def test_missing_size_is_nan_and_null_in_json(tmp_path) -> None:
    """COCO's -1 (no ground truth of that size / class) becomes NaN, and null in the metrics file."""
    target = {"boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0]]), "labels": torch.tensor([1]), "image_id": torch.tensor(7)}
    output = {"boxes": torch.tensor([[1.0, 1.0, 50.0, 50.0]]), "scores": torch.tensor([0.8]), "labels": torch.tensor([1])}
    evaluator = DetectionEvaluator(["medium_thing", "never_seen"])
    evaluator.update([target], [output], [{"stem": "x", "image_id": 7, "height": 64, "width": 64}])
    result = evaluator.compute()
    assert result.metrics["mAP_medium"] > 0.5
    for key in ("mAP_small", "mAP_large", "mAR_small", "mAR_large"):
        assert math.isnan(result.metrics[key]), key
    assert math.isnan(result.per_class["never_seen"]["AP"]) and result.per_class["never_seen"]["num_gt"] == 0
    assert result.per_class["medium_thing"]["num_gt"] == 1
    assert np.isnan(result.pr_precision[1]).all() and np.isfinite(result.pr_precision[0]).all()

    path = tmp_path / "metrics.json"
    save_metrics(path, result)
    text = path.read_text()
    assert "NaN" not in text
    saved = json.loads(text)
    assert saved["metrics"]["mAP_small"] is None
    assert saved["metrics"]["mAP_medium"] == pytest.approx(result.metrics["mAP_medium"])
    assert saved["per_class"]["never_seen"]["AP"] is None
    assert saved["num_images"] == 1 and saved["num_predictions"] == 1
    assert len(saved["pr_curve"]["recall"]) == 101


def test_per_class_names_and_values() -> None:
    result = evaluator_with(synthetic_batches()).compute()
    assert list(result.per_class) == CLASSES
    for name, stats in result.per_class.items():
        assert set(stats) == {"AP", "AP_50", "AP_75", "num_gt"}
        assert 0.0 <= stats["AP"] <= stats["AP_50"] <= 1.0, name
    assert sum(s["num_gt"] for s in result.per_class.values()) == result.num_ground_truth == 30


def test_update_rejects_bad_input_and_skips_duplicates() -> None:
    batches = synthetic_batches()
    evaluator = evaluator_with(batches)
    evaluator.update(*batches[0])  # the same two images again (DistributedSampler padding)
    result = evaluator.compute()
    assert result.duplicates_skipped == 2 and result.num_images == 6

    bad = DetectionEvaluator(["only"])
    with pytest.raises(ValueError, match="labels must be in 1..1"):
        bad.update(*batches[0])
    with pytest.raises(ValueError, match="no images"):
        DetectionEvaluator(["a"]).compute()
    targets, outputs, metas = batches[0]
    with pytest.raises(ValueError, match="disagree"):
        DetectionEvaluator(CLASSES).update(targets, outputs, [dict(m, image_id=99) for m in metas])


# ------------------------------------------------------------------------------ end to end with a model
def tiny_detector():  # noqa: ANN201
    from crossattentiondet.config import build_config
    from crossattentiondet.models import build_detector

    cfg = build_config({"model": {
        "mit": {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4]},
        "detector": {"fpn_channels": 32, "box_head_dim": 64},
    }})
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=2, load_pretrained=False)
    # an untrained head scores everything near 1/3: keep all detections so the outputs are not empty
    model.roi_heads.score_thresh = 0.0
    return model


def tiny_loader(n: int = 3, batch: int = 2) -> list:
    g = torch.Generator().manual_seed(1)
    samples = []
    for i in range(n):
        image = torch.randint(0, 256, (5, 64, 64), dtype=torch.uint8, generator=g)
        target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1 + i % 2]),
                  "image_id": torch.tensor(i)}
        samples.append((image, target, {"stem": f"s{i}", "image_id": i, "height": 64, "width": 64}))
    return [tuple(map(list, zip(*samples[j:j + batch]))) for j in range(0, n, batch)]


@pytest.fixture(scope="module", autouse=True)
def single_thread():  # noqa: ANN201
    # One intra-op thread: these tensors are tiny, and on a busy 2-core machine OpenMP threads waiting for
    # each other made a 64x64 forward ~50x slower (3.5 s instead of 0.07 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():  # noqa: ANN201
    return tiny_detector()


def test_evaluate_end_to_end(model) -> None:
    assert model.layout.modality_names == ("rgb", "thermal", "event")  # the default 5-channel layout
    model.train()
    model.set_zero_modalities(["event"])
    result = evaluate(model, tiny_loader(), "cpu", class_names=["a", "b"], zero_modalities=["thermal"])
    assert isinstance(result, EvalResult)
    assert result.num_images == 3 and result.num_ground_truth == 3
    assert list(result.metrics) == METRIC_KEYS
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in result.metrics.values())
    assert result.predictions, "score_thresh 0 should leave detections"
    assert {p["image_id"] for p in result.predictions} <= {0, 1, 2}
    assert all(p["category_id"] in (1, 2) and len(p["bbox"]) == 4 for p in result.predictions)
    # previous zeroing and training mode are back
    assert model.zero_modalities == ["event"] and model.training
    model.set_zero_modalities([])


def test_evaluate_zeroing_changes_outputs_and_max_batches(model) -> None:
    loader = tiny_loader()
    full = evaluate(model, loader, "cpu", class_names=["a", "b"], max_batches=1)
    assert full.num_images == 2  # one batch of two
    no_rgb = evaluate(model, loader, "cpu", class_names=["a", "b"], zero_modalities=["rgb"], max_batches=1)
    assert [p["score"] for p in full.predictions] != [p["score"] for p in no_rgb.predictions]
    assert model.zero_modalities == []


def test_evaluate_bf16_and_fp16_guard(model) -> None:
    result = evaluate(model, tiny_loader(2), "cpu", precision="bf16", class_names=["a", "b"])
    assert result.num_images == 2 and all(math.isfinite(p["score"]) for p in result.predictions)
    with pytest.raises(ValueError, match="fp16"):
        evaluate(model, tiny_loader(2), "cpu", precision="fp16", class_names=["a", "b"])
    with pytest.raises(ValueError, match="precision"):
        evaluate(model, tiny_loader(2), "cpu", precision="int8", class_names=["a", "b"])


def test_robustness_table(model) -> None:
    model.set_zero_modalities([])
    rows = robustness_table(model, tiny_loader(), "cpu", precision="fp32", class_names=["a", "b"],
                            modalities=["rgb", "thermal", "event"])
    assert [r["zeroed"] for r in rows] == ["none", "rgb", "thermal", "event"]
    assert all(set(r) == {"zeroed", *METRIC_KEYS} for r in rows)
    assert model.zero_modalities == []
    with pytest.raises(ValueError, match="unknown modalities"):
        robustness_table(model, tiny_loader(), "cpu", class_names=["a", "b"], modalities=["lidar"])


def test_robustness_skips_unused_and_already_zeroed_modalities() -> None:
    from crossattentiondet.config import build_config
    from crossattentiondet.models import build_detector

    # RGB + thermal single-stream model with RGB zeroed: event is loaded but never read
    cfg = build_config({"model": {
        "streams": [["rgb", "thermal"]], "zero_modalities": ["rgb"],
        "mit": {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4]},
        "detector": {"fpn_channels": 32, "box_head_dim": 64},
    }})
    rgb_only = build_detector(cfg, num_classes=2, load_pretrained=False)
    rows = robustness_table(rgb_only, tiny_loader(2), "cpu", class_names=["a", "b"])
    assert [r["zeroed"] for r in rows] == ["none", "thermal"]  # rgb is already zeroed, event is unused
    assert rgb_only.zero_modalities == ["rgb"]



def test_synchronize_merges_ranks(monkeypatch) -> None:
    """Two "ranks" each evaluate half of the batches; after synchronize() both see the whole split.

    torch.distributed is stubbed (a real 2-process gloo group costs ~10 s of process start-up): the stub
    pickles each rank's payload as all_gather_object does, so the records must survive that trip.
    """
    import pickle

    batches = synthetic_batches()
    expected = evaluator_with(batches).compute()
    rank0, rank1 = DetectionEvaluator(CLASSES), DetectionEvaluator(CLASSES)
    for targets, outputs, metas in batches[0::2]:
        rank0.update(targets, outputs, metas)
    for targets, outputs, metas in batches[1::2] + batches[:1]:  # rank 1 repeats batch 0 (sampler padding)
        rank1.update(targets, outputs, metas)

    payloads: dict[int, object] = {}
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)

    def all_gather_object(out: list, obj: object) -> None:
        out[:] = [pickle.loads(pickle.dumps(payloads[r])) for r in range(2)]

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    payloads[0] = (list(rank0._records.values()), rank0._duplicates)
    payloads[1] = (list(rank1._records.values()), rank1._duplicates)
    for evaluator in (rank0, rank1):
        evaluator.synchronize()
        result = evaluator.compute()
        assert result.num_images == 6 and result.duplicates_skipped == 2
        assert result.predictions == expected.predictions
        np.testing.assert_allclose([result.metrics[k] for k in METRIC_KEYS],
                                   [expected.metrics[k] for k in METRIC_KEYS], atol=1e-12)
