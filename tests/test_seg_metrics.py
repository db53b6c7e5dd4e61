"""Segmentation metrics: COD measures equal PySODMetrics (the field's reference), hand-computed cases, the
semantic confusion matrix, and ``evaluate_map_folders`` (``cadet eval --pred --gt``)."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import torch

from crossattentiondet.errors import DataError
from crossattentiondet.segmentation import metrics as metrics_module
from crossattentiondet.segmentation.maps import evaluate_map_folders
from crossattentiondet.segmentation.metrics import (
    COD_METRICS,
    IMAGE_METRICS,
    BinaryMetrics,
    ConfusionMatrix,
    image_metrics,
)


def _blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    gt = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(3, w // 2)), int(rng.integers(3, h // 2)))
        cv2.ellipse(gt, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return gt


def _noisy(rng: np.random.Generator, gt: np.ndarray, blur: float, noise: float) -> np.ndarray:
    pred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), blur) + rng.normal(0, noise, gt.shape)
    return np.clip(pred, 0, 255).astype(np.uint8)


def _test_set() -> list[tuple[np.ndarray, np.ndarray]]:
    """(pred, gt 0-255) pairs of different sizes covering the special cases of every measure."""
    rng = np.random.default_rng(7)
    cases = []
    for h, w in [(40, 57), (64, 64), (90, 48), (71, 83), (55, 90)]:
        gt = _blobs(rng, h, w)
        cases.append((_noisy(rng, gt, float(rng.uniform(1, 4)), float(rng.uniform(5, 60))), gt))
    gt = _blobs(rng, 60, 70)
    cases.append((np.zeros_like(gt), gt))  # all-zero prediction
    cases.append((gt.copy(), gt))  # perfect prediction
    cases.append((np.full_like(gt, 100), gt))  # constant, not normalised
    empty = np.zeros((50, 66), np.uint8)
    cases.append((rng.integers(0, 256, empty.shape).astype(np.uint8), empty))  # all-empty GT
    cases.append((np.zeros_like(empty), empty))  # empty GT, empty prediction
    full = np.full((45, 52), 255, np.uint8)
    cases.append((_noisy(rng, full, 2, 40), full))  # all-foreground GT
    soft = cv2.GaussianBlur(_blobs(rng, 80, 61), (0, 0), 2)  # anti-aliased GT (values between 0 and 255)
    cases.append(((_noisy(rng, soft, 3, 10) // 32 * 32).astype(np.uint8), soft))  # quantised prediction
    # GT filling the top S-measure regions and a constant intermediate prediction there: the reference's
    # score depends on NumPy's mean of the constant being exact, which is reproduced
    top = np.zeros((48, 62), np.uint8)
    top[:24] = 255
    pred = np.full(top.shape, 13, np.uint8)
    pred[0, 0], pred[0, 1] = 0, 255
    cases.append((pred, top))
    ragged = _blobs(rng, 66, 58) * (rng.random((66, 58)) < 0.6)  # speckled GT: many equidistant neighbours
    cases.append((_noisy(rng, ragged.astype(np.uint8), 1, 20), ragged.astype(np.uint8)))
    one = np.zeros((41, 43), np.uint8)
    one[20, 9] = 255  # a one-pixel object
    cases.append((_noisy(rng, one, 1, 30), one))
    return cases


def _reference(cases: list[tuple[np.ndarray, np.ndarray]], smeasure: type | None = None) -> tuple[list, dict]:
    """Per-image and dataset-level values from PySODMetrics."""
    sod = pytest.importorskip("py_sod_metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        s, e, wf, mae, f = (smeasure or sod.Smeasure)(), sod.Emeasure(), sod.WeightedFmeasure(), sod.MAE(), sod.Fmeasure()
    for pred, gt in cases:
        for metric in (s, e, wf, mae, f):
            metric.step(pred, gt)
    per_image = [{"Smeasure": s.sms[i], "meanEm": np.mean(e.changeable_ems[i]), "adpEm": e.adaptive_ems[i],
                  "wFmeasure": wf.weighted_fms[i], "MAE": mae.maes[i], "meanFm": np.mean(f.changeable_fms[i]),
                  "adpFm": f.adaptive_fms[i]} for i in range(len(cases))]
    em, fm = e.get_results()["em"], f.get_results()["fm"]
    dataset = {"Smeasure": s.get_results()["sm"], "meanEm": em["curve"].mean(), "maxEm": em["curve"].max(),
               "adpEm": em["adp"], "wFmeasure": wf.get_results()["wfm"], "MAE": mae.get_results()["mae"],
               "maxFm": fm["curve"].max(), "meanFm": fm["curve"].mean(), "adpFm": fm["adp"]}
    return per_image, dataset


def test_cod_metrics_equal_pysodmetrics() -> None:
    cases = _test_set()
    ref_images, ref_all = _reference(cases)
    metrics = BinaryMetrics()
    for i, ((pred, gt), ref) in enumerate(zip(cases, ref_images)):
        mine = metrics.update(pred, gt, name=f"img{i}")
        for key, value in ref.items():
            assert mine[key] == pytest.approx(value, abs=1e-6), (i, key)
    results = metrics.results()
    assert tuple(results) == COD_METRICS
    for key, value in ref_all.items():
        assert results[key] == pytest.approx(value, abs=1e-6), key
    assert 0 < results["IoU"] < 1 and 0 < results["Dice"] < 1


def test_binary_class_id_gt_equals_0_255_gt() -> None:
    pred, gt = _test_set()[0]
    as_ids, _, _ = image_metrics(pred, (gt > 128).astype(np.uint8))
    assert as_ids == image_metrics(pred, gt)[0]


def test_empty_smeasure_region_counts_zero_where_reference_gives_nan() -> None:
    """Foreground centroid in the last row: two S-measure regions are empty (zero weight). PySODMetrics
    returns NaN; here they contribute 0, otherwise the reference's formula."""
    sod = pytest.importorskip("py_sod_metrics")

    class EmptyRegionZero(sod.Smeasure):
        def ssim(self, pred: np.ndarray, gt: np.ndarray) -> float:
            return 0.0 if pred.size == 0 else super().ssim(pred, gt)

    gt = np.zeros((30, 40), np.uint8)
    gt[-1, 5:12] = 255
    pred = np.random.default_rng(0).integers(0, 256, gt.shape).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = sod.Smeasure()
        plain.step(pred, gt)
    assert math.isnan(plain.sms[0])
    ref_images, _ = _reference([(pred, gt)], smeasure=EmptyRegionZero)
    assert image_metrics(pred, gt)[0]["Smeasure"] == pytest.approx(ref_images[0]["Smeasure"], abs=1e-9)


def test_nearest_foreground_breaks_ties_like_scipy() -> None:
    """The weighted F-measure's background error comes from the nearest foreground pixel; among equidistant
    ones the reference (SciPy's feature transform) picks one in particular, and so must we."""
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(3)
    fg = (rng.random((48, 61)) < 0.08) | (cv2.dilate(_blobs(rng, 48, 61), np.ones((3, 3), np.uint8)) > 0)
    fg &= rng.random(fg.shape) < 0.7  # speckled: many ties
    near_y, near_x = distance_transform_edt(~fg, return_distances=False, return_indices=True)
    band = np.flatnonzero(cv2.dilate(fg.view(np.uint8), np.ones((7, 7), np.uint8)) > fg.view(np.uint8))
    assert len(band) > 500
    expected = (near_y * fg.shape[1] + near_x).ravel()[band]
    assert np.array_equal(metrics_module._nearest_foreground(fg, band), expected)


def test_merge_of_halves_equals_all_at_once() -> None:
    cases = _test_set()
    whole, first, second = BinaryMetrics(), BinaryMetrics(), BinaryMetrics()
    for i, (pred, gt) in enumerate(cases):
        whole.update(pred, gt, name=str(i))
        (first if i < len(cases) // 2 else second).update(pred, gt, name=str(i))
    merged = BinaryMetrics()
    merged.merge(first.state())
    merged.merge(second.state())
    assert len(merged) == len(whole) == len(cases)
    assert merged.per_image() == whole.per_image()
    for key, value in whole.results().items():
        assert merged.results()[key] == pytest.approx(value, abs=1e-12), key
    with pytest.raises(ValueError, match="missing"):
        merged.merge({"name": np.array(["x"])})


def test_hand_computed_cases() -> None:
    # min-max normalised map [[0, 1], [1, 1]] vs GT [[0, 1], [1, 0]]: one pixel off by 1
    scores, _, _ = image_metrics(np.array([[0, 255], [255, 255]], np.uint8), np.array([[0, 1], [1, 0]], np.uint8))
    assert scores["MAE"] == pytest.approx(0.25)
    # a constant map is not normalised: 100 / 255 everywhere
    assert image_metrics(np.full((3, 4), 100, np.uint8), np.zeros((3, 4), np.uint8))[0]["MAE"] == pytest.approx(100 / 255)
    # IoU / Dice at pred / 255 >= 0.5 on the raw map (min-max normalising would turn 127 into 127/200 > 0.5)
    scores, _, _ = image_metrics(np.array([[127, 128], [200, 0]], np.uint8), np.array([[1, 1], [0, 0]], np.uint8))
    assert scores["IoU"] == pytest.approx(1 / 3) and scores["Dice"] == pytest.approx(0.5)
    empty = np.zeros((5, 6), np.uint8)
    for low_pred in (empty, np.full_like(empty, 127)):  # both empty at 0.5: a perfect score
        scores, _, _ = image_metrics(low_pred, empty)
        assert scores["IoU"] == 1.0 and scores["Dice"] == 1.0
    scores, _, _ = image_metrics(np.full_like(empty, 200), empty)
    assert scores["IoU"] == 0.0 and scores["Dice"] == 0.0
    assert all(math.isnan(v) for v in BinaryMetrics().results().values())
    with pytest.raises(ValueError, match="one size"):
        BinaryMetrics().update(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        BinaryMetrics().update(np.zeros((4, 5), np.float32), np.zeros((4, 5), np.uint8))


def test_per_image_rows_name_every_image() -> None:
    metrics = BinaryMetrics()
    pred, gt = _test_set()[1]
    metrics.update(pred, gt, name="a")
    metrics.update(gt, gt)
    rows = metrics.per_image()
    assert [r["name"] for r in rows] == ["a", "1"]
    assert set(rows[0]) == {"name", *IMAGE_METRICS}
    assert rows[1]["IoU"] == 1.0 and rows[1]["MAE"] == 0.0 and rows[1]["Smeasure"] == pytest.approx(1.0)


def test_confusion_matrix_hand_example() -> None:
    gt = np.array([[0, 0, 1], [1, 255, 0]], np.uint8)
    pred = np.array([[0, 1, 1], [0, 2, 0]], np.uint8)  # the 2 lies on an ignore pixel
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    assert cm.matrix.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    res = cm.results(["bg", "a", "b"])
    assert res["IoU_bg"] == pytest.approx(2 / 4) and res["IoU_a"] == pytest.approx(1 / 3)
    assert math.isnan(res["IoU_b"])  # in neither GT nor prediction: excluded from the mean
    assert res["mIoU"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert res["pixel_acc"] == pytest.approx(3 / 5)
    tensors = ConfusionMatrix(3)
    tensors.update(torch.from_numpy(pred), torch.from_numpy(gt))
    tensors.all_reduce()  # no process group: unchanged
    assert tensors.matrix.tolist() == cm.matrix.tolist()
    with pytest.raises(ValueError, match="class id 3"):
        cm.update(pred, np.array([[0, 3, 1], [1, 0, 0]], np.uint8))
    with pytest.raises(ValueError, match="prediction holds class id 5"):
        cm.update(np.full((2, 3), 5, np.uint8), gt)
    with pytest.raises(ValueError, match="integer"):
        cm.update(pred.astype(np.float32), gt)
    with pytest.raises(ValueError, match="class names"):
        cm.results(["bg", "a"])


def _write(folder, arrays: dict[str, np.ndarray], ext: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        assert cv2.imwrite(str(folder / f"{stem}{ext}"), array)


def test_map_folders_equal_binary_metrics(tmp_path) -> None:
    cases = _test_set()[:6]
    stems = [f"im{i}" for i in range(len(cases))]
    _write(tmp_path / "gt", {s: gt for s, (_, gt) in zip(stems, cases)})
    _write(tmp_path / "pred", {s: pred for s, (pred, _) in zip(stems, cases)})
    result = evaluate_map_folders(tmp_path / "pred", tmp_path / "gt")
    expected = BinaryMetrics()
    for stem, (pred, gt) in zip(stems, cases):
        expected.update(pred, gt, name=stem)
    assert result.images == len(cases) and result.per_set == {}
    assert result.metrics == expected.results()
    assert result.per_image == expected.per_image()
    assert result.to_dict()["metrics"] == result.metrics


def test_map_folders_resize_prediction_to_gt_bilinear(tmp_path) -> None:
    pred, gt = _test_set()[1]
    small = cv2.resize(pred, (gt.shape[1] // 2, gt.shape[0] // 2), interpolation=cv2.INTER_AREA)
    _write(tmp_path / "gt", {"a": gt})
    _write(tmp_path / "pred", {"a": small}, ext=".jpg")  # any image extension matches by stem
    result = evaluate_map_folders(tmp_path / "pred", tmp_path / "gt")
    read_back = cv2.imread(str(tmp_path / "pred" / "a.jpg"), cv2.IMREAD_GRAYSCALE)
    expected = BinaryMetrics()
    expected.update(cv2.resize(read_back, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR), gt)
    assert result.metrics == expected.results()


def test_map_folders_name_missing_extra_and_unreadable(tmp_path) -> None:
    gt = np.zeros((20, 30), np.uint8)
    gt[5:10, 5:20] = 255
    _write(tmp_path / "gt", {"a": gt, "b": gt, "c": gt})
    _write(tmp_path / "pred", {"a": gt, "B": gt, "zz": gt})  # stems are case-sensitive
    with pytest.raises(DataError, match=r"2 ground-truth images have no prediction: b, c; "
                                        r"2 predictions have no ground truth: B, zz"):
        evaluate_map_folders(tmp_path / "pred", tmp_path / "gt")
    for stem in ("B", "zz"):
        (tmp_path / "pred" / f"{stem}.png").unlink()
    _write(tmp_path / "pred", {"b": gt})
    (tmp_path / "pred" / "c.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"c\.png: unreadable"):
        evaluate_map_folders(tmp_path / "pred", tmp_path / "gt")
    with pytest.raises(DataError, match="not found"):
        evaluate_map_folders(tmp_path / "nothing", tmp_path / "gt")


def test_map_folders_test_sets_and_semantic(tmp_path) -> None:
    cases = _test_set()
    for set_name, part in (("CAMO", cases[:2]), ("NC4K", cases[2:5])):
        _write(tmp_path / "gt" / set_name, {f"x{i}": gt for i, (_, gt) in enumerate(part)})
        _write(tmp_path / "pred" / set_name, {f"x{i}": pred for i, (pred, _) in enumerate(part)})
    result = evaluate_map_folders(tmp_path / "pred", tmp_path / "gt")
    assert sorted(result.per_set) == ["CAMO", "NC4K"] and result.images == 5
    camo = BinaryMetrics()
    for pred, gt in cases[:2]:
        camo.update(pred, gt)
    assert result.per_set["CAMO"] == camo.results()
    assert [r["name"] for r in result.per_image][:2] == ["CAMO/x0", "CAMO/x1"]
    _write(tmp_path / "pred" / "CHAMELEON", {"y": cases[0][0]})
    with pytest.raises(DataError, match="CHAMELEON/"):
        evaluate_map_folders(tmp_path / "pred", tmp_path / "gt")

    gt_ids = np.array([[0, 0, 1, 2], [2, 255, 1, 0]], np.uint8)
    pred_ids = np.array([[0, 1, 1, 2], [2, 2, 0, 0]], np.uint8)
    _write(tmp_path / "sem_gt", {"m": gt_ids})
    _write(tmp_path / "sem_pred", {"m": pred_ids})
    sem = evaluate_map_folders(tmp_path / "sem_pred", tmp_path / "sem_gt", num_classes=3, class_names=["bg", "a", "b"])
    cm = ConfusionMatrix(3)
    cm.update(pred_ids, gt_ids)
    assert sem.metrics == cm.results(["bg", "a", "b"]) and sem.images == 1
    _write(tmp_path / "sem_gt", {"m": np.full((2, 4), 7, np.uint8)})
    with pytest.raises(DataError, match=r"sem_gt/m\.png: ground truth holds class id 7"):
        evaluate_map_folders(tmp_path / "sem_pred", tmp_path / "sem_gt", num_classes=3)
