"""Augmentation: geometry stays aligned across modalities and boxes, photometry hits the right modalities."""

from __future__ import annotations

import numpy as np
import pytest

from crossattentiondet.config import AugmentConfig, ColorJitterConfig, ModalityConfig, default_modalities
from crossattentiondet.data.sample import Sample
from crossattentiondet.data.transforms import build_transforms, identity, random_crop

H, W = 64, 80
THERMAL_SCALE = 16383  # a 14-bit sensor in a 16-bit file


def modalities() -> list[ModalityConfig]:
    mods = default_modalities()
    mods[1] = ModalityConfig(name="thermal", channels=1, source=[3], mean=[0.5], std=[0.5], scale=THERMAL_SCALE)
    return mods


def no_augment(**changes: object) -> AugmentConfig:
    """Everything off (hflip included), then ``changes``."""
    return AugmentConfig(hflip=0.0).model_copy(update=changes)


BOXES = np.array([[10, 8, 30, 40], [44, 20, 70, 50]], np.float32)
LABELS = np.array([1, 2], np.int64)
LEVELS = {1: 1.0, 2: 0.5}  # brightness of each labelled rectangle on the 0-1 scale


def boxes_sample() -> Sample:
    """Dark frames with one bright rectangle per box, at a brightness that encodes the label."""
    rgb = np.full((H, W, 3), 5, np.uint8)
    thermal = np.full((H, W, 1), 300, np.uint16)
    event = np.full((H, W, 1), 0, np.uint8)
    for (x0, y0, x1, y1), label in zip(BOXES.astype(int), LABELS):
        level = LEVELS[int(label)]
        rgb[y0:y1, x0:x1] = round(250 * level)
        thermal[y0:y1, x0:x1] = round(16000 * level)
        event[y0:y1, x0:x1] = round(250 * level)
    return Sample("frame", {"rgb": rgb, "thermal": thermal, "event": event}, BOXES.copy(), LABELS.copy())


def textured_sample(seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(40, 200, (H, W, 3), dtype=np.uint8)
    thermal = rng.integers(2000, 12000, (H, W, 1), dtype=np.uint16)
    event = rng.integers(100, 156, (H, W, 1), dtype=np.uint8)
    return Sample("tex", {"rgb": rgb, "thermal": thermal, "event": event}, BOXES.copy(), LABELS.copy())


def bright_extent(array: np.ndarray, box: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """Pixel extent (x0, y0, x1, y1) of the bright pixels around ``box``."""
    plane = array.reshape(array.shape[0], array.shape[1], -1).max(axis=2).astype(np.float64)
    x0, y0, x1, y1 = box
    pad = 3
    ys, xs = slice(max(0, int(y0) - pad), int(np.ceil(y1)) + pad), slice(max(0, int(x0) - pad), int(np.ceil(x1)) + pad)
    mask = plane[ys, xs] >= threshold
    rows, cols = np.nonzero(mask)
    return cols.min() + xs.start, rows.min() + ys.start, cols.max() + 1 + xs.start, rows.max() + 1 + ys.start


@pytest.mark.parametrize("seed", range(12))
def test_geometry_keeps_boxes_on_their_content_in_every_modality(seed: int) -> None:
    augment = no_augment(hflip=0.5, scale_jitter=(0.6, 1.5), crop_prob=1.0, crop_min_scale=0.5, crop_min_visible=0.3)
    transform = build_transforms(augment, modalities(), train=True)
    out = transform(boxes_sample(), np.random.default_rng(seed))
    full = {"rgb": 250, "thermal": 16000, "event": 250}
    assert len(out.boxes) == len(out.labels)
    for box, label in zip(out.boxes, out.labels):
        level = LEVELS[int(label)]
        for name, array in out.modalities.items():
            # bright pixels of this rectangle (above the other rectangle's level for label 1)
            threshold = full[name] * level * (0.75 if level == 1.0 else 0.4)
            ex0, ey0, ex1, ey1 = bright_extent(array, box, threshold)
            tol = 1.5  # resampling blurs edges by about a pixel
            assert abs(ex0 - box[0]) <= tol and abs(ey0 - box[1]) <= tol, (name, box, (ex0, ey0, ex1, ey1))
            assert abs(ex1 - box[2]) <= tol and abs(ey1 - box[3]) <= tol, (name, box, (ex0, ey0, ex1, ey1))
            inner = array[int(np.ceil(box[1])) + 1:int(box[3]) - 1, int(np.ceil(box[0])) + 1:int(box[2]) - 1]
            if inner.size:
                assert abs(float(inner.mean()) - full[name] * level) < 0.1 * full[name], (name, label)


def test_hflip_mirrors_boxes_and_all_modalities() -> None:
    transform = build_transforms(no_augment(hflip=1.0), modalities(), train=True)
    sample = boxes_sample()
    out = transform(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out.boxes[0], [W - 30, 8, W - 10, 40])
    for name in sample.modalities:
        np.testing.assert_array_equal(out.modalities[name], sample.modalities[name][:, ::-1])


def test_scale_jitter_resizes_every_modality_and_boxes() -> None:
    transform = build_transforms(no_augment(scale_jitter=(2.0, 2.0)), modalities(), train=True)
    out = transform(boxes_sample(), np.random.default_rng(0))
    for array in out.modalities.values():
        assert array.shape[:2] == (2 * H, 2 * W) and array.ndim == 3
    np.testing.assert_allclose(out.boxes, BOXES * 2)


def test_crop_drops_mostly_outside_boxes_and_keeps_the_rest_clipped() -> None:
    # coordinate images reveal where each crop window was
    ys, xs = np.mgrid[0:H, 0:W]
    arrays = {"x": xs.astype(np.uint16)[..., None], "y": ys.astype(np.uint16)[..., None]}
    boxes = np.array([[0, 0, 20, 20], [60, 44, 80, 64], [30, 20, 50, 40], [5, 50, 79, 63], [40, 10, 40, 30]],
                     np.float32)  # the last one has zero width
    labels = np.arange(1, len(boxes) + 1, dtype=np.int64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    rng = np.random.default_rng(0)
    dropped_some = kept_partial = False
    for _ in range(200):
        out, kept_boxes, kept_labels = random_crop(arrays, boxes, labels, rng, 0.4, 0.5)
        x0, y0 = int(out["x"][0, 0, 0]), int(out["y"][0, 0, 0])
        ch, cw = out["x"].shape[:2]
        window = np.array([x0, y0, x0 + cw, y0 + ch], np.float32)
        inter_w = np.clip(np.minimum(boxes[:, 2], window[2]) - np.maximum(boxes[:, 0], window[0]), 0, None)
        inter_h = np.clip(np.minimum(boxes[:, 3], window[3]) - np.maximum(boxes[:, 1], window[1]), 0, None)
        visible = np.divide(inter_w * inter_h, area, out=np.zeros_like(area), where=area > 0)
        expected = (visible >= 0.5) & (area > 0)
        np.testing.assert_array_equal(kept_labels, labels[expected])
        assert 5 not in kept_labels  # zero-area boxes never survive
        assert np.all(kept_boxes[:, 2] > kept_boxes[:, 0]) and np.all(kept_boxes[:, 3] > kept_boxes[:, 1])
        assert np.all(kept_boxes >= 0) and np.all(kept_boxes[:, [0, 2]] <= cw) and np.all(kept_boxes[:, [1, 3]] <= ch)
        np.testing.assert_allclose(kept_boxes, np.clip(boxes[expected] - window[[0, 1, 0, 1]], 0, [cw, ch, cw, ch]))
        dropped_some |= not expected[:4].all()
        kept_partial |= bool(np.any(expected & (visible < 1)))
    assert dropped_some and kept_partial


def test_crop_without_min_visible_still_drops_boxes_outside_the_window() -> None:
    arrays = {"a": np.zeros((H, W, 1), np.uint8)}
    boxes = np.array([[0, 0, 4, 4], [76, 60, 80, 64]], np.float32)
    rng = np.random.default_rng(1)
    for _ in range(50):
        _, kept, _labels = random_crop(arrays, boxes, np.array([1, 2]), rng, 0.3, 0.0)
        assert np.all((kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1]) > 0)


def all_on() -> AugmentConfig:
    return AugmentConfig(
        hflip=0.5, scale_jitter=(0.8, 1.2), crop_prob=1.0, clahe=1.0, motion_blur=1.0, noise=1.0,
        thermal_gain_offset=1.0, modality_dropout=0.5,
        color_jitter=ColorJitterConfig(prob=1.0, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
    )


def test_dtypes_shapes_and_value_range_are_preserved() -> None:
    transform = build_transforms(all_on(), modalities(), train=True)
    for seed in range(10):
        sample = textured_sample(seed)
        out = transform(sample, np.random.default_rng(seed))
        for name, array in out.modalities.items():
            assert array.dtype == sample.modalities[name].dtype
            assert array.ndim == 3 and array.shape[2] == sample.modalities[name].shape[2]
        assert out.modalities["thermal"].max() <= THERMAL_SCALE  # 14-bit data stays 14-bit
        assert out.boxes.dtype == np.float32 and out.labels.dtype == np.int64


def test_input_sample_is_not_modified() -> None:
    sample = textured_sample()
    before = {k: v.copy() for k, v in sample.modalities.items()}
    build_transforms(all_on(), modalities(), train=True)(sample, np.random.default_rng(0))
    for name, array in sample.modalities.items():
        np.testing.assert_array_equal(array, before[name])
    np.testing.assert_array_equal(sample.boxes, BOXES)


def test_eval_transform_is_identity() -> None:
    transform = build_transforms(all_on(), modalities(), train=False)
    sample = textured_sample()
    assert transform is identity
    assert transform(sample, np.random.default_rng(0)) is sample


def test_same_generator_seed_gives_the_same_result() -> None:
    transform = build_transforms(all_on(), modalities(), train=True)
    a = transform(textured_sample(), np.random.default_rng(123))
    b = transform(textured_sample(), np.random.default_rng(123))
    c = transform(textured_sample(), np.random.default_rng(124))
    for name in a.modalities:
        np.testing.assert_array_equal(a.modalities[name], b.modalities[name])
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert any(a.modalities[n].shape != c.modalities[n].shape or not np.array_equal(a.modalities[n], c.modalities[n])
               for n in a.modalities)


def test_modality_dropout_replaces_one_modality_by_its_mean() -> None:
    mods = modalities()
    transform = build_transforms(no_augment(modality_dropout=1.0), mods, train=True)
    means = {"rgb": np.array([124, 116, 104]), "thermal": np.array([8192]), "event": np.array([128])}
    dropped = []
    for seed in range(60):
        sample = textured_sample(seed)
        out = transform(sample, np.random.default_rng(seed))
        changed = [n for n in out.modalities if not np.array_equal(out.modalities[n], sample.modalities[n])]
        assert len(changed) == 1  # exactly one, never all
        name = changed[0]
        assert np.all(out.modalities[name] == means[name].astype(out.modalities[name].dtype))
        assert out.modalities[name].dtype == sample.modalities[name].dtype
        dropped.append(name)
    assert set(dropped) == {"rgb", "thermal", "event"}
    # after the model's normalisation the dropped modality is zero up to half a quantisation step
    for m in mods:
        full = m.scale or 255
        value = means[m.name] / full
        assert np.all(np.abs((value - np.array(m.mean)) / np.array(m.std)) <= 0.5 / full / min(m.std) + 1e-9)


def test_modality_dropout_never_drops_a_single_modality() -> None:
    mods = [modalities()[0]]
    transform = build_transforms(no_augment(modality_dropout=1.0), mods, train=True)
    sample = textured_sample()
    sample.modalities = {"rgb": sample.modalities["rgb"]}
    out = transform(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out.modalities["rgb"], sample.modalities["rgb"])


def test_modality_dropout_picks_only_modalities_the_model_uses() -> None:
    """A single-modality model never loses its only input; a two-modality one drops only among its own."""
    mods = modalities()
    single = build_transforms(no_augment(modality_dropout=1.0), mods, train=True, used=["thermal"])
    pair = build_transforms(no_augment(modality_dropout=1.0), mods, train=True, used=["rgb", "thermal"])
    dropped_pair = set()
    for seed in range(40):
        sample = textured_sample(seed)
        out = single(sample, np.random.default_rng(seed))
        assert all(np.array_equal(out.modalities[n], sample.modalities[n]) for n in sample.modalities)
        out = pair(sample, np.random.default_rng(seed))
        changed = [n for n in out.modalities if not np.array_equal(out.modalities[n], sample.modalities[n])]
        assert len(changed) == 1
        dropped_pair.add(changed[0])
    assert dropped_pair == {"rgb", "thermal"}


def test_dataset_modality_dropout_follows_the_model_streams(trees) -> None:
    from crossattentiondet.config import ExperimentConfig
    from crossattentiondet.data.dataset import prepare_data

    root = trees.npy(frames={f"frame{i:03d}": [(0, 0.5, 0.5, 0.5, 0.5)] for i in range(10)})
    base = ["data.augment.hflip=0", "data.augment.modality_dropout=1.0", "data.loader.num_workers=0",
            f"data.root={root}"]
    from crossattentiondet.config import load_config

    for streams, zero, expect in (("[[rgb]]", "[]", ["rgb"]), ("[[rgb],[thermal]]", "[thermal]", ["rgb"]),
                                  ("[[rgb],[thermal,event]]", "[]", ["rgb", "thermal", "event"])):
        config: ExperimentConfig = load_config(None, [*base, f"model.streams={streams}",
                                                     f"model.zero_modalities={zero}"])
        prepared = prepare_data(config, log=lambda _: None)
        transform = prepared.dataset("train", train=True).transform
        assert transform.dropout_candidates == expect, streams


def changed_modalities(augment: AugmentConfig, seed: int = 0) -> set[str]:
    transform = build_transforms(augment, modalities(), train=True)
    sample = textured_sample(seed)
    out = transform(sample, np.random.default_rng(seed))
    return {n for n in out.modalities if not np.array_equal(out.modalities[n], sample.modalities[n])}


def test_color_jitter_changes_only_rgb() -> None:
    jitter = ColorJitterConfig(prob=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    assert changed_modalities(no_augment(color_jitter=jitter)) == {"rgb"}


def test_thermal_gain_offset_changes_only_thermal() -> None:
    augment = no_augment(thermal_gain_offset=1.0, thermal_gain=(1.3, 1.4), thermal_offset=(0.05, 0.1))
    assert changed_modalities(augment) == {"thermal"}


def test_clahe_changes_rgb_luminance_and_single_channel_modalities() -> None:
    assert changed_modalities(no_augment(clahe=1.0)) == {"rgb", "thermal", "event"}


def test_motion_blur_and_noise_change_every_modality() -> None:
    assert changed_modalities(no_augment(motion_blur=1.0, motion_blur_kernel=5)) == {"rgb", "thermal", "event"}
    assert changed_modalities(no_augment(noise=1.0, noise_std=0.05)) == {"rgb", "thermal", "event"}


def test_photometric_transforms_off_change_nothing() -> None:
    assert changed_modalities(no_augment()) == set()


def test_unknown_modality_names_are_ignored() -> None:
    augment = no_augment(thermal_gain_offset=1.0, thermal_gain=(1.3, 1.4), rgb_modalities=["rgb", "nir"],
                         thermal_modalities=["lwir"], color_jitter=ColorJitterConfig(prob=1.0, brightness=0.5))
    assert changed_modalities(augment) == {"rgb"}


def test_16bit_photometry_works_on_the_modality_scale() -> None:
    transform = build_transforms(no_augment(noise=1.0, noise_std=0.01, clahe=1.0), modalities(), train=True)
    sample = textured_sample()
    out = transform(sample, np.random.default_rng(0))
    thermal = out.modalities["thermal"]
    assert thermal.dtype == np.uint16 and thermal.max() <= THERMAL_SCALE
    assert len(np.unique(thermal)) > 256  # still more than 8 bits of information
