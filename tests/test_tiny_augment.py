"""Tiny-object augmentation: copy-paste, mosaic, multi-scale resize, CLAHE / motion-blur parameters."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crossattentiondet.config import (
    AugmentConfig,
    ColorJitterConfig,
    ConfigError,
    CopyPasteConfig,
    DataConfig,
    ExperimentConfig,
    LoaderConfig,
    ModalityConfig,
)
from crossattentiondet.data import prepare_data
from crossattentiondet.data.sample import Sample
from crossattentiondet.data.transforms import (
    Augmenter,
    build_transforms,
    detection_only_options,
    motion_kernel,
)
from crossattentiondet.errors import DataError

QUIET = {"log": lambda _: None}
CLASSES = ["player", "ball"]
THERMAL_SCALE = 16383


def modalities() -> list[ModalityConfig]:
    return [ModalityConfig(name="rgb", channels=3, source=[0, 1, 2], mean=[0.5] * 3, std=[0.25] * 3),
            ModalityConfig(name="thermal", channels=1, source=[3], mean=[0.5], std=[0.5], scale=THERMAL_SCALE),
            ModalityConfig(name="event", channels=1, source=[4], mean=[0.5], std=[0.5])]


def off(**changes: object) -> AugmentConfig:
    """Every augmentation off (hflip included), then ``changes``."""
    return AugmentConfig(hflip=0.0).model_copy(update=changes)


def frame(seed: int, boxes: list[list[float]], labels: list[int], size: tuple[int, int] = (96, 80),
          occlusion: list[int] | None = None) -> Sample:
    """Random textures (uint8 rgb and event, 14-bit thermal in uint16) with the given boxes."""
    rng = np.random.default_rng(seed)
    width, height = size
    arrays = {"rgb": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
              "thermal": rng.integers(0, THERMAL_SCALE + 1, (height, width, 1)).astype(np.uint16),
              "event": rng.integers(0, 256, (height, width, 1), dtype=np.uint8)}
    return Sample(f"f{seed}", arrays, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64),
                  occlusion=None if occlusion is None else np.array(occlusion, np.int64))


def donors_of(frames: list[Sample]):
    """A DonorDraw over hand-made frames (distinct when there are enough, like FrameDonors)."""
    def draw(rng: np.random.Generator, count: int) -> list[Sample]:
        picks = rng.choice(len(frames), size=count, replace=count > len(frames))
        return [frames[int(i)] for i in picks]
    return draw


TARGET_BOXES = [[10, 10, 40, 50], [60, 30, 80, 70]]


def target() -> Sample:
    return frame(0, TARGET_BOXES, [1, 1], occlusion=[0, 2])


# donor boxes of distinct sizes, so a pasted box tells which donor object it is
DONORS = [frame(1, [[5.5, 6, 17, 14], [40, 40, 70, 75]], [2, 1], occlusion=[1, 0]),
          frame(2, [[50, 10, 58, 19.5], [20, 30, 32, 41]], [2, 2], occlusion=[0, 1])]


def covered(rect: np.ndarray, box: np.ndarray) -> float:
    w = max(0.0, min(rect[2], box[2]) - max(rect[0], box[0]))
    h = max(0.0, min(rect[3], box[3]) - max(rect[1], box[1]))
    return w * h / ((box[2] - box[0]) * (box[3] - box[1]))


# -------------------------------------------------------------------------------------------- copy-paste
@pytest.mark.parametrize("margin", [0.0, 0.25])
def test_copy_paste_pastes_the_donor_pixels_in_every_modality(margin: float) -> None:
    augment = off(copy_paste=CopyPasteConfig(prob=1.0, max_pastes=1, margin=margin))
    transform = build_transforms(augment, modalities(), train=True, class_names=CLASSES)
    donor_boxes = {(float(b[2] - b[0]), float(b[3] - b[1])): (d, j) for d in DONORS for j, b in enumerate(d.boxes)}
    pasted = 0
    for seed in range(20):
        before = target()
        out = transform(before, np.random.default_rng(seed), donors_of(DONORS))
        np.testing.assert_array_equal(out.boxes[:2], before.boxes)  # existing boxes kept, new ones appended
        assert len(out.boxes) == len(out.labels) == len(out.occlusion) <= 3
        if len(out.boxes) == 2:
            continue
        pasted += 1
        box = out.boxes[2]
        donor, j = donor_boxes[(float(box[2] - box[0]), float(box[3] - box[1]))]
        source_box = donor.boxes[j]
        assert out.labels[2] == donor.labels[j] and out.occlusion[2] == donor.occlusion[j]
        # the context window in the donor: the box plus margin x its side, whole pixels, inside the frame
        w, h = source_box[2] - source_box[0], source_box[3] - source_box[1]
        x0 = max(0, math.floor(source_box[0] - margin * w))
        y0 = max(0, math.floor(source_box[1] - margin * h))
        x1 = min(donor.width, math.ceil(source_box[2] + margin * w))
        y1 = min(donor.height, math.ceil(source_box[3] + margin * h))
        dx, dy = box[0] - source_box[0], box[1] - source_box[1]
        assert dx == int(dx) and dy == int(dy)  # whole-pixel shift: pixels copied, never resampled
        px, py = x0 + int(dx), y0 + int(dy)
        inside = np.zeros((before.height, before.width), bool)
        inside[py:py + y1 - y0, px:px + x1 - x0] = True
        for name, array in out.modalities.items():
            assert array.dtype == before.modalities[name].dtype
            np.testing.assert_array_equal(array[py:py + y1 - y0, px:px + x1 - x0], donor.modalities[name][y0:y1, x0:x1])
            np.testing.assert_array_equal(array[~inside], before.modalities[name][~inside])  # nothing else changed
        rect = np.array([px, py, px + x1 - x0, py + y1 - y0], np.float32)
        assert all(covered(rect, b) <= 0.3 + 1e-6 for b in before.boxes)
    assert pasted >= 15


def test_copy_paste_converts_donor_pixels_to_the_frame_scale() -> None:
    augment = off(copy_paste=CopyPasteConfig(prob=1.0, max_pastes=1, margin=0.0))
    transform = build_transforms(augment, modalities(), train=True)
    donor = frame(3, [[20, 20, 30, 30]], [1])
    donor.modalities["event"] = np.full((80, 96, 1), 1000, np.uint16)  # a 16-bit donor for an 8-bit modality
    out = transform(frame(0, [], []), np.random.default_rng(0), donors_of([donor]))
    x0, y0, x1, y1 = out.boxes[0].astype(int)
    assert out.modalities["event"].dtype == np.uint8
    assert np.all(out.modalities["event"][y0:y1, x0:x1] == round(1000 / 65535 * 255))


def test_copy_paste_respects_max_pastes_classes_and_size() -> None:
    many = [frame(10 + k, [[4 + 20 * i, 4 + 6 * k, 4 + 20 * i + s, 4 + 6 * k + s]
                           for i, s in enumerate((6, 10, 14, 18))], [2, 1, 2, 2]) for k in range(3)]
    counts = set()
    cp = CopyPasteConfig(prob=1.0, max_pastes=3, classes=["ball"], max_object_size=14, margin=0.1)
    transform = build_transforms(off(copy_paste=cp), modalities(), train=True, class_names=CLASSES)
    for seed in range(30):
        out = transform(frame(0, [], []), np.random.default_rng(seed), donors_of(many))
        new = out.boxes
        counts.add(len(new))
        assert np.all(out.labels == 2)  # only balls
        assert np.all(np.maximum(new[:, 2] - new[:, 0], new[:, 3] - new[:, 1]) <= 14)  # not the 18 px ball
        assert out.occlusion is None  # donors without occlusion annotations
    assert counts == {1, 2, 3}
    unlimited = build_transforms(off(copy_paste=CopyPasteConfig(prob=1.0, max_pastes=2)), modalities(), train=True)
    sizes = set()
    for seed in range(30):
        out = unlimited(frame(0, [], []), np.random.default_rng(seed), donors_of(many))
        assert 1 <= len(out.boxes) <= 2
        sizes |= {float(b[2] - b[0]) for b in out.boxes}
        assert set(out.labels.tolist()) <= {1, 2}
    assert 18.0 in sizes and 10.0 in sizes


def test_copy_paste_is_deterministic_and_leaves_its_input_alone() -> None:
    transform = build_transforms(off(copy_paste=CopyPasteConfig(prob=1.0, max_pastes=3)), modalities(), train=True)
    before = target()
    copies = {n: a.copy() for n, a in before.modalities.items()}
    a = transform(before, np.random.default_rng(7), donors_of(DONORS))
    b = transform(target(), np.random.default_rng(7), donors_of(DONORS))
    np.testing.assert_array_equal(a.boxes, b.boxes)
    for name in a.modalities:
        np.testing.assert_array_equal(a.modalities[name], b.modalities[name])
        np.testing.assert_array_equal(before.modalities[name], copies[name])
    assert len(before.boxes) == 2


def test_copy_paste_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown class names \\['goal'\\]"):
        Augmenter(off(copy_paste=CopyPasteConfig(prob=1.0, classes=["goal"])), modalities(), class_names=CLASSES)
    with pytest.raises(ConfigError, match="class names"):
        Augmenter(off(copy_paste=CopyPasteConfig(prob=1.0, classes=["ball"])), modalities())
    transform = build_transforms(off(copy_paste=CopyPasteConfig(prob=1.0)), modalities(), train=True)
    with pytest.raises(ConfigError, match="donors"):
        transform(target(), np.random.default_rng(0))
    segment = target()
    segment.mask = np.zeros((segment.height, segment.width), np.uint8)
    with pytest.raises(ConfigError, match="copy_paste.prob: detection only"):
        transform(segment, np.random.default_rng(0), donors_of(DONORS))
    assert detection_only_options(off(mosaic=0.5, copy_paste=CopyPasteConfig(prob=0.1))) == [
        "data.augment.mosaic", "data.augment.copy_paste.prob"]
    assert detection_only_options(AugmentConfig()) == []


# ------------------------------------------------------------------------------------------------ mosaic
def flat(value: int, boxes: list[list[float]], label: int, size: tuple[int, int] = (96, 80)) -> Sample:
    """A frame whose every pixel, in every modality, encodes ``value`` (to tell the mosaic's quadrants apart)."""
    width, height = size
    arrays = {"rgb": np.full((height, width, 3), value, np.uint8),
              "thermal": np.full((height, width, 1), value * 50, np.uint16),
              "event": np.full((height, width, 1), 255 - value, np.uint8)}
    return Sample(f"v{value}", arrays, np.array(boxes, np.float32).reshape(-1, 4),
                  np.full(len(boxes), label, np.int64))


def test_mosaic_uses_all_four_frames_and_keeps_boxes_inside() -> None:
    whole = [[0, 0, 96, 80]]  # a box over the whole frame shows how much of each frame is visible
    # plus small boxes near the corner each frame shows (the one that touches the centre)
    first = flat(10, [*whole, [86, 70, 92, 76]], 1)
    donors = [flat(60, [*whole, [2, 72, 8, 78]], 2), flat(110, [[0, 0, 48, 40]], 3, size=(48, 40)),  # scaled x2 to cover
              flat(160, [[0, 0, 192, 160], [4, 4, 10, 10]], 4, size=(192, 160))]  # scaled x0.5
    min_visible = 0.25
    transform = build_transforms(off(mosaic=1.0, crop_min_visible=min_visible), modalities(), train=True)
    centres = set()
    for seed in range(25):
        out = transform(first, np.random.default_rng(seed), lambda rng, count: donors[:count])
        assert {n: a.shape for n, a in out.modalities.items()} == {n: a.shape for n, a in first.modalities.items()}
        assert {n: a.dtype for n, a in out.modalities.items()} == {n: a.dtype for n, a in first.modalities.items()}
        rgb = out.modalities["rgb"][..., 0]
        assert set(np.unique(rgb).tolist()) == {10, 60, 110, 160}  # all four frames used
        np.testing.assert_array_equal(out.modalities["thermal"][..., 0], rgb.astype(np.uint16) * 50)
        # the quadrants meet at the centre: frame 0 top-left, then top-right, bottom-left, bottom-right
        cy, cx = int(np.argmax(rgb[:, 0] != 10)), int(np.argmax(rgb[0] != 10))
        centres.add((cx, cy))
        assert 24 <= cx <= 72 and 20 <= cy <= 60
        quads = {10: (0, 0, cx, cy), 60: (cx, 0, 96, cy), 110: (0, cy, cx, 80), 160: (cx, cy, 96, 80)}
        for value, (x0, y0, x1, y1) in quads.items():
            assert np.all(rgb[y0:y1, x0:x1] == value)
        assert np.all(out.boxes >= 0) and np.all(out.boxes[:, [0, 2]] <= 96) and np.all(out.boxes[:, [1, 3]] <= 80)
        for box, label in zip(out.boxes, out.labels):
            value = {1: 10, 2: 60, 3: 110, 4: 160}[int(label)]
            x0, y0, x1, y1 = quads[value]
            assert x0 <= box[0] < box[2] <= x1 and y0 <= box[1] < box[3] <= y1
        # whole-frame boxes: visible fraction = quadrant area / frame area; dropped below min_visible
        for value, label in ((10, 1), (60, 2), (110, 3), (160, 4)):
            x0, y0, x1, y1 = quads[value]
            expected = (x1 - x0) * (y1 - y0) / (96 * 80) >= min_visible
            # plus the small box near the centre corner, always inside its quadrant (label 3 has none)
            assert int(np.sum(out.labels == label)) == int(expected) + (label != 3), (seed, value)
        small = {label: out.boxes[(out.labels == label) & (out.boxes[:, 2] - out.boxes[:, 0] < 10)]
                 for label in (1, 2, 4)}
        np.testing.assert_allclose(small[1], [[cx - 10, cy - 10, cx - 4, cy - 4]])  # frame 0's bottom-right
        np.testing.assert_allclose(small[2], [[cx + 2, cy - 8, cx + 8, cy - 2]])  # frame 1's bottom-left
        np.testing.assert_allclose(small[4], [[cx + 2, cy + 2, cx + 5, cy + 5]])  # scaled by 0.5 with its frame
    assert len(centres) > 10


def test_mosaic_through_the_dataset_reads_three_donors(trees) -> None:
    root = trees.folders(frames={f"f{i}": [(0, 0.5, 0.5, 0.5, 0.5)] for i in range(8)}, size=(64, 48))
    config = ExperimentConfig(data=DataConfig(root=str(root), loader=LoaderConfig(num_workers=0),
                                              augment=off(mosaic=1.0)))
    dataset = prepare_data(config, **QUIET).dataset("train", train=True)
    image, target_, _ = dataset[(0, 1)]
    assert image.shape == (4, 48, 64)
    assert 1 <= len(target_["boxes"]) <= 4
    again, target_again, _ = dataset[(0, 1)]
    assert torch.equal(image, again) and torch.equal(target_["boxes"], target_again["boxes"])


# ------------------------------------------------------------------------------------------- multi-scale
def test_multi_scale_sizes_are_multiples_of_32_and_boxes_scale() -> None:
    boxes = np.array(TARGET_BOXES, np.float32)
    sample = frame(0, TARGET_BOXES, [1, 1])  # 96 x 80
    sample.mask = np.zeros((80, 96), np.uint8)
    sample.mask[10:50, 10:40] = 1
    transform = build_transforms(off(multi_scale=(40, 200)), modalities(), train=True)
    shorter = set()
    for seed in range(40):
        out = transform(sample, np.random.default_rng(seed))
        height, width = out.modalities["rgb"].shape[:2]
        assert height % 32 == 0 and 64 <= height <= 192  # the shorter side: 64, 96, ..., 192
        assert width == round(96 * height / 80)
        assert all(a.shape[:2] == (height, width) for a in out.modalities.values())
        shorter.add(height)
        np.testing.assert_allclose(out.boxes, boxes * np.array([width / 96, height / 80] * 2), rtol=1e-6)
        assert out.mask.shape == (height, width) and set(np.unique(out.mask).tolist()) == {0, 1}
        ys, xs = np.nonzero(out.mask)
        # the mask moved with the image: its rectangle is the first box, scaled
        assert abs(xs.min() - out.boxes[0, 0]) <= 1 and abs(xs.max() + 1 - out.boxes[0, 2]) <= 1
        assert abs(ys.min() - out.boxes[0, 1]) <= 1 and abs(ys.max() + 1 - out.boxes[0, 3]) <= 1
    assert shorter == {64, 96, 128, 160, 192}


def test_multi_scale_caps_the_longer_side() -> None:
    sample = frame(0, TARGET_BOXES, [1, 1], size=(160, 64))
    transform = build_transforms(off(multi_scale=(96, 128), multi_scale_max_size=250), modalities(), train=True)
    sizes = {transform(sample, np.random.default_rng(s)).modalities["rgb"].shape[:2] for s in range(20)}
    # 96 -> 240 long (fits), 128 -> 320 long, capped at 250 (shorter side 100)
    assert sizes == {(96, 240), (100, 250)}
    with pytest.raises(ConfigError, match="no multiple of 32"):
        build_transforms(off(multi_scale=(33, 63)), modalities(), train=True)


# ------------------------------------------------------------------------------------- CLAHE, motion blur
def test_clahe_uses_clip_limit_and_tiles() -> None:
    sample = frame(4, [], [])
    transform = build_transforms(off(clahe=1.0, clahe_clip_limit=4.0, clahe_tiles=4), modalities(), train=True)
    out = transform(sample, np.random.default_rng(0))
    expected = cv2.createCLAHE(clipLimit=4.0, tileGridSize=(4, 4)).apply(sample.modalities["event"][..., 0])
    np.testing.assert_array_equal(out.modalities["event"][..., 0], expected)
    default = build_transforms(off(clahe=1.0), modalities(), train=True)(sample, np.random.default_rng(0))
    assert not np.array_equal(default.modalities["event"], out.modalities["event"])


@pytest.mark.parametrize("max_kernel", [None, 9])
def test_motion_blur_kernel_size(max_kernel: int | None) -> None:
    sample = frame(5, [], [])
    transform = build_transforms(off(motion_blur=1.0, motion_blur_kernel=5, motion_blur_max_kernel=max_kernel),
                                 modalities(), train=True)
    sizes = set()
    for seed in range(30):
        out = transform(sample, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        rng.random(), rng.random()  # the hflip and motion-blur decisions
        angle = float(rng.uniform(0.0, 180.0))
        size = 5 if max_kernel is None else 2 * int(rng.integers(1, 5)) + 1
        sizes.add(size)
        expected = cv2.filter2D(sample.modalities["event"], -1, motion_kernel(size, angle),
                                borderType=cv2.BORDER_REFLECT)
        np.testing.assert_array_equal(out.modalities["event"][..., 0], expected)
    assert sizes == ({5} if max_kernel is None else {3, 5, 7, 9})


# ------------------------------------------------------------------------------------------ options off
def old_options() -> AugmentConfig:
    return AugmentConfig(hflip=0.5, scale_jitter=(0.8, 1.2), crop_prob=0.7, clahe=0.5, motion_blur=0.5, noise=0.5,
                         thermal_gain_offset=0.5, modality_dropout=0.5,
                         color_jitter=ColorJitterConfig(prob=0.5, brightness=0.3, contrast=0.3, saturation=0.3,
                                                        hue=0.05))


def test_new_options_off_change_nothing() -> None:
    """With copy-paste, mosaic and multi-scale off (in any spelling), every draw is the one of the defaults."""
    reference = build_transforms(old_options(), modalities(), train=True)
    variants = [old_options().model_copy(update={"copy_paste": CopyPasteConfig(prob=0.0, classes=["x"], max_pastes=5),
                                                 "mosaic": 0.0, "multi_scale": None, "multi_scale_max_size": 640})]
    for variant in variants:
        transform = build_transforms(variant, modalities(), train=True, class_names=CLASSES)
        assert not transform.uses_donors
        for seed in range(15):
            rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
            a = reference(frame(seed, TARGET_BOXES, [1, 2]), rng_a)
            b = transform(frame(seed, TARGET_BOXES, [1, 2]), rng_b, donors_of(DONORS))
            for name in a.modalities:
                np.testing.assert_array_equal(a.modalities[name], b.modalities[name])
            np.testing.assert_array_equal(a.boxes, b.boxes)
            np.testing.assert_array_equal(a.labels, b.labels)
            assert rng_a.random() == rng_b.random()  # the same number of draws


# ------------------------------------------------------------------------------------ dataset and loader
def tiny_config(root: Path, workers: int, **augment: object) -> ExperimentConfig:
    return ExperimentConfig(data=DataConfig(root=str(root), loader=LoaderConfig(num_workers=workers),
                                            augment=AugmentConfig(**augment)))


@pytest.fixture
def tiny_data(trees) -> Path:
    frames = {f"f{i:02d}": [(i % 2, 0.25, 0.3, 0.2, 0.3), (1, 0.7, 0.6, 0.1, 0.15)] for i in range(12)}
    return trees.folders(frames=frames, size=(96, 64), classes=CLASSES)


def test_dataset_copy_paste_is_deterministic_per_seed_epoch_index(tiny_data: Path) -> None:
    cp = CopyPasteConfig(prob=1.0, max_pastes=3)
    prepared = prepare_data(tiny_config(tiny_data, 0, copy_paste=cp), **QUIET)
    dataset = prepared.dataset("train", train=True, seed=3)
    native = {i: len(prepared.source.read(s).boxes) for i, s in enumerate(dataset.stems)}
    fresh = prepare_data(tiny_config(tiny_data, 0, copy_paste=cp), **QUIET).dataset("train", train=True, seed=3)
    grew = 0
    for index in reversed(range(len(dataset))):  # another order than the first dataset's
        image, target_, _ = dataset[(2, index)]
        image_b, target_b, _ = fresh[(2, index)]  # as after a restart
        assert torch.equal(image, image_b) and torch.equal(target_["boxes"], target_b["boxes"])
        grew += len(target_["boxes"]) > native[index]
    assert grew >= len(dataset) - 1
    other = [dataset[(3, i)][1]["boxes"] for i in range(len(dataset))]
    assert any(not torch.equal(o, dataset[(2, i)][1]["boxes"]) for i, o in enumerate(other))


def test_loader_with_workers_gives_the_in_process_batches(tiny_data: Path) -> None:
    augment = {"copy_paste": CopyPasteConfig(prob=0.8, max_pastes=2), "mosaic": 0.5, "multi_scale": (64, 96)}

    def batches(workers: int) -> list[tuple[list[torch.Tensor], list[torch.Tensor], list[str]]]:
        prepared = prepare_data(tiny_config(tiny_data, workers, **augment), **QUIET)
        loader = prepared.loader("train", train=True, batch_size=2, seed=11)
        out = []
        for epoch in (0, 1):  # persistent workers carry over to the second epoch
            loader.set_epoch(epoch)
            out += [(images, [t["boxes"] for t in targets], [m["stem"] for m in metas])
                    for images, targets, metas in loader]
        loader.close()
        return out

    in_process, workers = batches(0), batches(2)
    assert len(in_process) == len(workers) > 0
    for (img_a, box_a, stem_a), (img_b, box_b, stem_b) in zip(in_process, workers):
        assert stem_a == stem_b
        assert all(torch.equal(x, y) for x, y in zip(img_a, img_b))
        assert all(torch.equal(x, y) for x, y in zip(box_a, box_b))


def test_unreadable_donor_fails_cleanly_or_is_skipped(tiny_data: Path) -> None:
    config = tiny_config(tiny_data, 0, copy_paste=CopyPasteConfig(prob=1.0))
    prepared = prepare_data(config, **QUIET)
    stems = prepared.splits["train"]
    for stem in stems[1:]:  # only the frame at index 0 stays readable: every donor of it fails
        (tiny_data / "rgb" / f"{stem}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="donor"):
        prepared.dataset("train", train=True)[(0, 0)]
    skipping = prepare_data(config.model_copy(update={"data": config.data.model_copy(update={"on_error": "skip"})}),
                            **QUIET)
    dataset = skipping.dataset("train", train=True)
    dataset.stems = stems  # the split as it was when the files were fine
    assert dataset[(0, 0)] is None and dataset.skip_counter.value == 1


def test_a_donor_or_mosaic_frame_without_a_modality_is_a_donor_error() -> None:
    # a DonorReadError (what the dataset's data.on_error=skip catches), not a plain DataError
    from crossattentiondet.data.dataset import DonorReadError

    lacking = frame(3, [[20, 20, 30, 30]], [1])
    del lacking.modalities["thermal"]
    paste = build_transforms(off(copy_paste=CopyPasteConfig(prob=1.0, max_pastes=1, margin=0.0)), modalities(),
                             train=True)
    with pytest.raises(DonorReadError, match="donor frame lacks modality 'thermal'"):
        paste(frame(0, [], []), np.random.default_rng(0), donors_of([lacking]))
    mosaic = build_transforms(off(mosaic=1.0), modalities(), train=True)
    with pytest.raises(DonorReadError, match="mosaic frame lacks modality 'thermal'"):
        mosaic(frame(0, [[1, 1, 20, 20]], [1]), np.random.default_rng(0), donors_of([lacking] * 3))
