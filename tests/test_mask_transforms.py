"""Segmentation masks through augmentation and the resize policy: on their images, with their values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossattentiondet.config import (
    AugmentConfig,
    ColorJitterConfig,
    ConfigError,
    ModalityConfig,
    default_modalities,
)
from crossattentiondet.data.sample import Sample
from crossattentiondet.data.transforms import build_transforms, crop_window, hflip, rescale, resize_nearest
from crossattentiondet.errors import DataError
from crossattentiondet.segmentation.resize import ResizeInfo, resize_image, resize_sample, restore_prediction

H, W = 48, 64
CLASSES = (1, 2)  # foreground classes; 0 background, 255 ignore
VALUES = {0, 1, 2, 255}


def modalities() -> list[ModalityConfig]:
    mods = default_modalities()
    mods[1] = ModalityConfig(name="thermal", channels=1, source=[3], mean=[0.5], std=[0.5])
    return mods


def no_augment(**changes: object) -> AugmentConfig:
    return AugmentConfig(hflip=0.0).model_copy(update=changes)


def mask_pattern() -> np.ndarray:
    """Classes 1 and 2 (a rectangle and an off-centre disc), background 0, an ignore band (255)."""
    mask = np.zeros((H, W), np.uint8)
    mask[6:20, 5:29] = 1
    ys, xs = np.mgrid[0:H, 0:W]
    mask[(ys - 30) ** 2 + (xs - 45) ** 2 <= 9 ** 2] = 2
    mask[40:45, 10:60] = 255
    return mask


def encoded_sample(mask: np.ndarray | None = None, stem: str = "seg") -> Sample:
    """Images that spell the mask out: rgb channel c is bright on class c + 1 (channel 2 on background);
    16-bit thermal: 20000 x class id; 8-bit event: 100 x class id; 0 in the ignore band."""
    mask = mask_pattern() if mask is None else mask
    rgb = np.zeros(mask.shape + (3,), np.uint8)
    rgb[..., 0] = 200 * (mask == 1)
    rgb[..., 1] = 200 * (mask == 2)
    rgb[..., 2] = 200 * (mask == 0)
    known = np.where(mask == 255, 0, mask).astype(np.int64)
    thermal = (20000 * known).astype(np.uint16)[..., None]
    event = (100 * known).astype(np.uint8)[..., None]
    return Sample(stem, {"rgb": rgb, "thermal": thermal, "event": event}, mask=mask.copy())


def decode(sample: Sample, name: str) -> np.ndarray:
    """The class map the image ``name`` spells (nearest encoded level)."""
    a = sample.modalities[name].astype(np.float64)
    if name in ("rgb", "multi"):  # multi: rgb, event, rgb's red again
        return np.array([1, 2, 0])[np.argmax(a[..., :3], axis=2)]
    step = 20000.0 if name == "thermal" else 100.0
    return np.clip(np.rint(a[..., 0] / step), 0, 2).astype(np.int64)


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood is a single known class: resampling cannot blur them."""
    padded = np.pad(mask, 1, mode="edge")
    same = np.ones(mask.shape, bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
    return same & (mask != 255)


def centroid(weights: np.ndarray) -> np.ndarray:
    """(y, x) centre of mass, pixel centres at integer coordinates."""
    ys, xs = np.mgrid[0:weights.shape[0], 0:weights.shape[1]]
    w = weights.astype(np.float64)
    return np.array([(w * ys).sum(), (w * xs).sum()]) / w.sum()


def assert_aligned(out: Sample, exact: bool) -> list[np.ndarray]:
    """The mask says what the images show: everywhere known (``exact``: no resampling) or on the interior.

    Returns, per class, the (y, x) offset of the mask's centroid from the image's: each within 0.6 pixel (a
    one-pixel shift fails); a nearest-neighbour resize off by half a pixel shows as a mean offset over seeds.
    """
    mask = out.mask
    assert mask is not None and mask.dtype == np.uint8 and mask.shape == (out.height, out.width)
    assert set(np.unique(mask).tolist()) <= VALUES
    where = (mask != 255) if exact else interior(mask)
    assert where.mean() > 0.3
    for name in out.modalities:
        decoded = decode(out, name)
        np.testing.assert_array_equal(decoded[where], mask[where], err_msg=name)
    # rgb codes each class in its own channel: its intensity is the class's mass, which resampling conserves
    # (thermal and event are ordinal codes: a 2|0 edge blurs into a 1)
    rgb = out.modalities["rgb"]
    offsets = []
    for c in CLASSES:
        if (mask == c).sum() >= 20:
            offset = centroid(mask == c) - centroid(rgb[..., c - 1])
            assert np.all(np.abs(offset) < 0.6), (c, offset)
            offsets.append(offset)
    return offsets


GEOMETRIC = {
    "hflip": dict(hflip=1.0),
    "vflip": dict(vflip=1.0),
    "rot90": dict(rot90=1.0),
    "scale_down": dict(scale_jitter=(0.55, 0.9)),
    "scale_up": dict(scale_jitter=(1.1, 1.7)),
    "crop": dict(crop_prob=1.0, crop_min_scale=0.5),
    "all": dict(hflip=0.5, vflip=0.5, rot90=0.5, scale_jitter=(0.6, 1.6), crop_prob=0.8, crop_min_scale=0.5),
}


@pytest.mark.parametrize("name", GEOMETRIC)
def test_every_geometric_transform_keeps_the_mask_on_its_images(name: str) -> None:
    transform = build_transforms(no_augment(**GEOMETRIC[name]), modalities(), train=True)
    exact = "scale" not in name and name != "all"
    counts, offsets = [], []
    for seed in range(25):
        sample = encoded_sample()
        out = transform(sample, np.random.default_rng(seed))
        offsets += assert_aligned(out, exact=exact)
        for array, before in zip(out.modalities.values(), sample.modalities.values()):
            assert array.dtype == before.dtype and array.shape[2] == before.shape[2]
        counts.append(int((out.mask == 255).sum()))
        if name in ("hflip", "vflip", "rot90"):  # pure permutations of pixels: every value count is kept
            np.testing.assert_array_equal(np.bincount(out.mask.ravel(), minlength=256),
                                          np.bincount(sample.mask.ravel(), minlength=256))
    assert max(counts) > 0  # the ignore band survives (nearest neighbour never blends it away)
    assert np.all(np.abs(np.mean(offsets, axis=0)) < 0.15), np.mean(offsets, axis=0)  # no systematic offset


def test_the_centroid_check_sees_a_one_pixel_shift() -> None:
    out = encoded_sample()
    out.mask = np.roll(out.mask, 1, axis=1)
    with pytest.raises(AssertionError):
        assert_aligned(out, exact=False)


def test_nearest_resize_is_centre_aligned_and_copies_values() -> None:
    mask = mask_pattern()
    for size in ((32, 24), (100, 75), (64, 48), (37, 61)):
        out = resize_nearest(mask, size)
        assert out.shape == (size[1], size[0]) and out.dtype == np.uint8
        assert set(np.unique(out).tolist()) <= VALUES
    # exact 2x: every pixel becomes a 2x2 block, halving picks one pixel of each block
    np.testing.assert_array_equal(resize_nearest(mask, (2 * W, 2 * H)), mask.repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(resize_nearest(mask.repeat(2, 0).repeat(2, 1), (W, H)), mask)
    assert resize_nearest(mask.astype(np.int64), (10, 10)).dtype == np.int64


def test_rot90_swaps_height_and_width_and_uses_every_quarter_turn() -> None:
    transform = build_transforms(no_augment(rot90=1.0), modalities(), train=True)
    seen = set()
    for seed in range(30):
        sample = encoded_sample()
        out = transform(sample, np.random.default_rng(seed))
        ks = [k for k in (1, 2, 3) if out.mask.shape == np.rot90(sample.mask, k).shape
              and np.array_equal(out.mask, np.rot90(sample.mask, k))]
        assert len(ks) == 1  # always a real rotation, never the identity
        k = ks[0]
        assert out.mask.shape == ((W, H) if k % 2 else (H, W))
        for name, array in out.modalities.items():
            np.testing.assert_array_equal(array, np.rot90(sample.modalities[name], k, axes=(0, 1)))
        seen.add(k)
    assert seen == {1, 2, 3}


BOXES = np.array([[4, 6, 20, 30], [30, 10, 60, 22], [40, 30, 47, 46]], np.float32)
LABELS = np.array([1, 2, 3], np.int64)


def boxes_sample(with_mask: bool = False) -> Sample:
    """One rectangle per box at a brightness 60 x label; the mask (optional) marks the same rectangles."""
    rgb = np.full((H, W, 3), 10, np.uint8)
    thermal = np.full((H, W, 1), 500, np.uint16)
    mask = np.zeros((H, W), np.uint8)
    for (x0, y0, x1, y1), label in zip(BOXES.astype(int), LABELS):
        rgb[y0:y1, x0:x1] = 60 * label
        thermal[y0:y1, x0:x1] = 15000 * label
        mask[y0:y1, x0:x1] = label
    ignore = np.array([[50, 40, 62, 47]], np.float32)
    return Sample("det", {"rgb": rgb, "thermal": thermal}, BOXES.copy(), LABELS.copy(),
                  occlusion=np.array([0, 1, 2], np.int64), ignore_boxes=ignore,
                  mask=mask if with_mask else None)


@pytest.mark.parametrize("option", ["vflip", "rot90", "both"])
def test_vflip_and_rot90_move_boxes_onto_their_rectangles(option: str) -> None:
    changes = {"vflip": dict(vflip=1.0), "rot90": dict(rot90=1.0),
               "both": dict(vflip=0.5, rot90=0.7, hflip=0.5)}
    mods = modalities()[:2]
    transform = build_transforms(no_augment(**changes[option]), mods, train=True)
    for seed in range(12):
        out = transform(boxes_sample(), np.random.default_rng(seed))
        assert out.boxes.dtype == np.float32 and out.boxes.shape == (3, 4)
        np.testing.assert_array_equal(out.labels, LABELS)
        for box, label in zip(out.boxes, out.labels):
            for name, level in (("rgb", 60), ("thermal", 15000)):
                plane = out.modalities[name][..., 0]
                ys, xs = np.nonzero(plane == level * label)
                # the rectangle's pixels are exactly the box (pixel-edge coordinates)
                extent = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                np.testing.assert_array_equal(extent, box, err_msg=name)
        assert out.ignore_boxes.shape == (1, 4)
        widths = out.ignore_boxes[:, 2:] - out.ignore_boxes[:, :2]
        assert sorted(widths[0].tolist()) == [7.0, 12.0]  # the ignore region turned with the frame


def test_crop_window_works_without_boxes() -> None:
    arrays = {"rgb": np.zeros((H, W, 3), np.uint8), "m": mask_pattern()}
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, boxes, keep = crop_window(arrays, np.zeros((0, 4), np.float32), rng, 0.5, 0.4,
                                       any_visible=np.zeros(0, bool))
        assert boxes.shape == (0, 4) and keep.shape == (0,)
        assert out["rgb"].shape[:2] == out["m"].shape
        assert 0.5 * H - 1 <= out["m"].shape[0] <= H and 0.5 * W - 1 <= out["m"].shape[1] <= W


PHOTOMETRIC = {
    "color_jitter": dict(color_jitter=ColorJitterConfig(prob=1.0, brightness=0.5, contrast=0.5,
                                                        saturation=0.5, hue=0.1)),
    "noise": dict(noise=1.0, noise_std=0.1),
    "blur": dict(motion_blur=1.0, motion_blur_kernel=7),
    "clahe": dict(clahe=1.0),
    "thermal_gain": dict(thermal_gain_offset=1.0, thermal_gain=(1.2, 1.3), thermal_offset=(0.05, 0.1)),
    "dropout": dict(modality_dropout=1.0),
}


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_transforms_never_touch_the_mask(name: str) -> None:
    transform = build_transforms(no_augment(**PHOTOMETRIC[name]), modalities(), train=True)
    for seed in range(3):
        sample = encoded_sample()
        out = transform(sample, np.random.default_rng(seed))
        np.testing.assert_array_equal(out.mask, sample.mask)
        assert out.mask.dtype == np.uint8
        # the transform did run (so an untouched mask means something)
        assert any(not np.array_equal(out.modalities[n], sample.modalities[n]) for n in out.modalities)


def test_everything_on_keeps_mask_values_and_leaves_the_input_alone() -> None:
    augment = AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5, scale_jitter=(0.7, 1.4), crop_prob=1.0,
                            **{k: v for cfg in PHOTOMETRIC.values() for k, v in cfg.items()})
    transform = build_transforms(augment, modalities(), train=True)
    for seed in range(10):
        sample = encoded_sample()
        before = sample.mask.copy()
        out = transform(sample, np.random.default_rng(seed))
        np.testing.assert_array_equal(sample.mask, before)
        assert out.mask.shape == (out.height, out.width) and set(np.unique(out.mask).tolist()) <= VALUES


def test_defaults_reproduce_the_detection_output_with_or_without_a_mask() -> None:
    """vflip = rot90 = 0 draws nothing new: a mask changes no random number, and the geometry is the
    hflip -> scale -> crop sequence the detector has always had (replayed here by hand)."""
    augment = AugmentConfig(hflip=0.5, scale_jitter=(0.7, 1.3), crop_prob=0.7, noise=0.5,
                            color_jitter=ColorJitterConfig(prob=0.5, brightness=0.3))
    transform = build_transforms(augment, modalities()[:2], train=True)
    for seed in range(15):
        plain = transform(boxes_sample(False), np.random.default_rng(seed))
        masked = transform(boxes_sample(True), np.random.default_rng(seed))
        assert plain.mask is None
        for name in plain.modalities:
            np.testing.assert_array_equal(plain.modalities[name], masked.modalities[name])
        for field in ("boxes", "labels", "occlusion", "ignore_boxes"):
            np.testing.assert_array_equal(getattr(plain, field), getattr(masked, field))
        # the old order of draws, by hand (geometry only: no photometric option is on but noise/jitter,
        # whose draws come after, so the geometry must match exactly)
        rng = np.random.default_rng(seed)
        sample = boxes_sample(False)
        arrays, boxes = dict(sample.modalities), np.concatenate([sample.boxes, sample.ignore_boxes])
        if rng.random() < 0.5:
            arrays, boxes = hflip(arrays, boxes)
        factor = float(rng.uniform(0.7, 1.3))
        arrays, boxes = rescale(arrays, boxes, factor)
        if rng.random() < 0.7:
            arrays, boxes, keep = crop_window(arrays, boxes, rng, augment.crop_min_scale,
                                              augment.crop_min_visible, any_visible=np.arange(len(boxes)) >= 3)
            boxes = boxes[keep]
        for name in arrays:
            assert arrays[name].shape == plain.modalities[name].shape
        assert len(plain.boxes) + len(plain.ignore_boxes) == len(boxes)
        np.testing.assert_array_equal(np.concatenate([plain.boxes, plain.ignore_boxes]), boxes)


def test_a_mask_of_the_wrong_shape_or_dtype_is_a_clear_error() -> None:
    transform = build_transforms(no_augment(hflip=1.0), modalities(), train=True)
    sample = encoded_sample(stem="bad/frame7")
    sample.mask = sample.mask[:-2]
    with pytest.raises(DataError, match="bad/frame7.*shape"):
        transform(sample, np.random.default_rng(0))
    sample = encoded_sample(stem="bad/frame8")
    sample.mask = sample.mask.astype(np.float32)
    with pytest.raises(DataError, match="bad/frame8.*integer"):
        transform(sample, np.random.default_rng(0))


# --------------------------------------------------------------------------------------------- resize
def wide_sample() -> Sample:
    """30 x 50 frame: the encoded modalities and mask, plus a 5-channel uint8 (OpenCV resizes 4 at most)."""
    mask = resize_nearest(mask_pattern(), (50, 30))
    sample = encoded_sample(mask)
    m = sample.modalities
    m["multi"] = np.concatenate([m["rgb"], m["event"], m["rgb"][..., :1]], axis=2)
    sample.boxes = np.array([[5, 3, 25, 15]], np.float32)
    sample.labels = np.array([1], np.int64)
    return sample


def test_square_resize_shapes_dtypes_and_mask() -> None:
    sample = wide_sample()
    out, info = resize_sample(sample, "square", 32)
    assert info == ResizeInfo(valid_hw=(32, 32), orig_hw=(30, 50))
    for name, array in out.modalities.items():
        before = sample.modalities[name]
        assert array.shape == (32, 32, before.shape[2]) and array.dtype == before.dtype, name
    assert out.mask.shape == (32, 32) and out.mask.dtype == np.uint8
    assert set(np.unique(out.mask).tolist()) == set(np.unique(sample.mask).tolist())
    np.testing.assert_allclose(out.boxes, [[5 * 32 / 50, 3 * 32 / 30, 25 * 32 / 50, 15 * 32 / 30]], rtol=1e-6)
    assert_aligned(out, exact=False)
    multi = out.modalities["multi"]  # every channel resized like its own modality, in and beyond the first 4
    np.testing.assert_array_equal(multi[..., :3], out.modalities["rgb"])
    np.testing.assert_array_equal(multi[..., 3:4], out.modalities["event"])
    np.testing.assert_array_equal(multi[..., 4], out.modalities["rgb"][..., 0])
    assert sample.modalities["rgb"].shape == (30, 50, 3)  # the input is left alone


def test_keep_aspect_pads_to_32_with_zeros_and_ignore() -> None:
    sample = wide_sample()
    out, info = resize_sample(sample, "keep_aspect", 80)
    assert info == ResizeInfo(valid_hw=(48, 80), orig_hw=(30, 50))
    assert out.mask.shape == (64, 96)
    assert np.all(out.mask[48:] == 255) and np.all(out.mask[:, 80:] == 255)
    for name, array in out.modalities.items():
        assert array.shape[:2] == (64, 96) and array.dtype == sample.modalities[name].dtype
        assert not array[48:].any() and not array[:, 80:].any()
    valid = Sample("v", {n: a[:48, :80] for n, a in out.modalities.items()},
                   mask=out.mask[:48, :80].copy())
    assert_aligned(valid, exact=False)
    assert set(np.unique(valid.mask).tolist()) == set(np.unique(sample.mask).tolist())
    # a tall frame: the height becomes the size
    tall, info = resize_sample(encoded_sample(mask_pattern().T.copy()), "keep_aspect", 40)
    assert info.valid_hw == (40, 30) and tall.mask.shape == (64, 32)


def test_evaluation_keeps_the_mask_at_its_own_resolution() -> None:
    sample = wide_sample()
    out, info = resize_sample(sample, "keep_aspect", 64, resize_mask=False)
    np.testing.assert_array_equal(out.mask, sample.mask)
    assert info.orig_hw == sample.mask.shape and out.modalities["rgb"].shape[:2] == (64, 64)


def test_each_axis_gets_its_own_filter() -> None:
    # width 90 -> 30 (shrinks: area = mean of 3 columns), height 20 -> 30 (grows); rows are identical
    row = np.random.default_rng(1).integers(0, 65536, 90).astype(np.uint16)
    image = np.tile(row, (20, 1))[..., None]
    out = resize_image(image, (30, 30))
    assert out.shape == (30, 30, 1) and out.dtype == np.uint16
    expected = np.rint(row.astype(np.float64).reshape(30, 3).mean(axis=1))
    np.testing.assert_allclose(out[..., 0], np.tile(expected, (30, 1)), atol=1)


def test_bad_policy_or_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.seg.resize"):
        resize_sample(wide_sample(), "stretch", 32)
    with pytest.raises(ConfigError, match="model.seg.size"):
        resize_sample(wide_sample(), "square", 0)


@pytest.mark.parametrize("policy,size", [("square", 32), ("keep_aspect", 80), ("keep_aspect", 40)])
def test_restore_prediction_returns_the_original_size(policy: str, size: int) -> None:
    sample = wide_sample()
    out, info = resize_sample(sample, policy, size)
    ph, pw = out.height, out.width
    vh, vw = info.valid_hw
    # a constant map, garbage in the padding: the padding never leaks back
    prob = torch.full((2, ph, pw), 0.7)
    prob[:, vh:, :] = 50.0
    prob[:, :, vw:] = 50.0
    restored = restore_prediction(prob, info)
    assert restored.shape == (2, 30, 50) and restored.dtype == torch.float32
    torch.testing.assert_close(restored, torch.full((2, 30, 50), 0.7))
    # a linear map of the original coordinates, sampled at the working pixel centres, comes back exactly
    # (bilinear interpolation is exact on linear functions; the outermost pixels are clamped)
    sy, sx = vh / 30, vw / 50
    ys = (torch.arange(ph, dtype=torch.float64) + 0.5) / sy - 0.5
    xs = (torch.arange(pw, dtype=torch.float64) + 0.5) / sx - 0.5
    linear = (0.02 * xs[None, :] + 0.03 * ys[:, None] + 0.1)[None].float()
    restored = restore_prediction(linear, info)[0]
    truth = 0.02 * torch.arange(50.0)[None, :] + 0.03 * torch.arange(30.0)[:, None] + 0.1
    torch.testing.assert_close(restored[2:-2, 2:-2], truth[2:-2, 2:-2], atol=1e-5, rtol=0)


def test_restore_prediction_at_the_original_size_is_a_crop() -> None:
    info = ResizeInfo(valid_hw=(30, 50), orig_hw=(30, 50))
    prob = torch.rand(1, 32, 64)
    torch.testing.assert_close(restore_prediction(prob, info), prob[:, :30, :50])
    assert restore_prediction(torch.ones(1, 30, 50, dtype=torch.uint8), info).dtype == torch.float32
    with pytest.raises(ValueError, match="C, H, W"):
        restore_prediction(torch.rand(30, 50), info)
    with pytest.raises(ValueError, match="smaller"):
        restore_prediction(torch.rand(1, 20, 50), info)
