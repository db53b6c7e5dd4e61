"""Training-time augmentation of multi-modal samples.

:func:`build_transforms` turns an :class:`~crossattentiondet.config.AugmentConfig` into a callable
``(sample, rng) -> sample``. All randomness comes from the generator it is given (the dataset seeds it per
(seed, epoch, index)), so augmented epochs are reproducible and a resumed run sees the same samples.

Order: first the frame-mixing transforms, which need other training frames ("donors", drawn by the dataset
with the sample's own generator, see :class:`DonorDraw`): mosaic (four frames in a 2x2 grid), then
copy-paste (objects of donor frames pasted in, onto the mosaic when both fire), so that everything after
them treats pasted objects like native ones. Then geometric transforms (horizontal flip, vertical flip,
rotation by a multiple of 90 degrees, scale jitter, random crop, multi-scale resize last, so the output's
shorter side is exactly the drawn size) move every modality, the boxes and the segmentation mask together
(the per-box extras travel with their boxes: ``occlusion`` stays aligned when a crop drops boxes,
``ignore_boxes`` are flipped, rotated, scaled and clipped like boxes, and kept while any part of them is in
the window; the mask of class ids is resampled with the nearest neighbour, pixel-centre aligned like the
images, so it keeps its values, 255 = ignore included); then photometric transforms (RGB colour jitter,
CLAHE, motion blur, noise, thermal gain/offset), which never touch the mask; modality dropout comes last, so
a dropped modality is exactly its mean and not a noisy mean.

Vertical flip and rotation (``vflip``, ``rot90``; for segmentation, off by default) draw from the generator
only when their probability is above zero, so with them off every other decision sees the same random
numbers as before they existed (seeded detection runs are unchanged). A rotation by 90 or 270 degrees swaps
the frame's height and width. The same holds for every later option: mosaic, copy-paste, multi-scale and a
random motion-blur kernel size (``motion_blur_max_kernel``) draw only when enabled, so with them off a seeded
run sees the very numbers it saw before they existed.

Mosaic (``mosaic``: probability): the sample and three donor frames fill the four quadrants around a centre
drawn uniformly in the middle half of each axis; the output has the sample's size and modalities. A frame of
another size is first scaled (keeping its aspect) to cover the output; each quadrant shows the frame's corner
that touches the centre (YOLO-style). Boxes are clipped to their quadrant, and those keeping less than
``crop_min_visible`` of their area are dropped (ignore regions: kept while any part is visible), as in a crop.

Copy-paste (``copy_paste``, Ghiasi et al. 2021, box version): with ``prob``, 1..``max_pastes`` objects (their
box plus ``margin`` x its width / height of context on each side, whole pixels) are cut from donor frames
(only labels in ``classes``, only boxes whose longer side is at most ``max_object_size``; donors are read
until enough objects are found, at most ``max_pastes + 2`` donors) and pasted at their native size, in every
modality at once, at a random place where the pasted patch covers at most 30 % of the area of any box already
in the frame (objects, ignore regions and earlier pastes; 10 tries, else that object is left out). So no
existing box is dropped and every pasted box is fully visible; boxes and labels are appended. Donor pixels
keep their values when the donor's modality has the frame's dtype and scale, and are rescaled on the 0-1
scale otherwise. Ignore regions of donors are not pasted (the context may show unlabelled parts of their
neighbours: keep ``margin`` small in crowded data). ``occlusion`` stays aligned with the boxes: the donor's
values are appended; when any frame involved (mosaic or copy-paste) does not annotate occlusion, the
result has ``occlusion=None``.

Multi-scale (``multi_scale: [min, max]``): the shorter side is drawn among the multiples of 32 in [min, max];
if the longer side would then exceed ``multi_scale_max_size``, the frame is scaled so that the longer side is
exactly that instead (DETR's rule; the shorter side is then smaller than drawn). Boxes follow the per-axis
ratio, the mask is resized with the nearest neighbour.

Segmentation: mosaic and copy-paste are detection-only; a sample with a mask raises ConfigError when they are
on (see :func:`detection_only_options`). Multi-scale moves the mask with the image.

Arrays stay in their native dtype (uint8 or uint16) and value range: photometric transforms work on the
0-1 scale of each modality (raw / full scale, the full scale being ``ModalityConfig.scale`` if set, else
255 for uint8 and 65535 for uint16), round back and clip to [0, full scale]. Inputs are never modified in
place. Scale jitter changes the image size (Faster R-CNN batches images of different sizes by padding);
it resizes with area averaging when shrinking and bilinear interpolation when enlarging.

Modality dropout replaces one randomly chosen modality among those the model sees (``used``; never when it
sees fewer than two) by its normalisation mean
(``ModalityConfig.mean`` x full scale, rounded to the nearest representable value). After the model's
normalisation ``(x / scale - mean) / std`` that is the zero input - within half a quantisation step - which
is exactly what test-time modality zeroing (``model.zero_modalities``, robustness evaluation) feeds the
network; so the model is trained on the same "missing sensor" signal it is evaluated with, not on black
frames, which would be a strongly negative, out-of-distribution input after normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import replace

import cv2
import numpy as np

from crossattentiondet.config import AugmentConfig, ConfigError, ModalityConfig
from crossattentiondet.data.sample import Sample
from crossattentiondet.errors import DataError


def _donor_error(message: str) -> DataError:
    """The dataset's DonorReadError (a DataError) for a bad donor frame, so ``data.on_error=skip`` applies to
    it as to any unreadable frame (imported here: the dataset module imports this one)."""
    from crossattentiondet.data.dataset import DonorReadError

    return DonorReadError(message)

Transform = Callable[[Sample, np.random.Generator], Sample]
# ``donors(rng, count)``: ``count`` other training frames (raw, all modalities), drawn with ``rng``. The
# training dataset passes one to transforms whose ``uses_donors`` is true (``transform(sample, rng, donors)``).
DonorDraw = Callable[[np.random.Generator, int], list[Sample]]

PASTE_MAX_COVER = 0.3  # a pasted patch may cover at most this fraction of any box already in the frame
PASTE_PLACE_TRIES = 10  # random places tried per pasted object before leaving it out
PASTE_EXTRA_DONORS = 2  # donors read beyond max_pastes while looking for enough eligible objects

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

# The mask rides through the geometric helpers inside the arrays dict under this key (no modality can be named
# so: names come from the config), so a crop cuts it with the very same window as the modalities.
MASK_KEY = "\x00mask"


def identity(sample: Sample, rng: np.random.Generator) -> Sample:
    """The evaluation transform: returns the sample unchanged."""
    return sample


def build_transforms(augment: AugmentConfig, modalities: list[ModalityConfig], train: bool,
                     used: list[str] | None = None, class_names: list[str] | None = None) -> Transform:
    """The sample transform for training (``train=True``: :class:`Augmenter`) or evaluation (identity).

    ``used`` names the modalities the model sees (``ModelConfig.used_modalities()``; None: all of
    ``modalities``): modality dropout picks only among them. ``class_names`` (label l is
    ``class_names[l - 1]``) is needed only to resolve ``copy_paste.classes``.
    """
    if not train:
        return identity
    return Augmenter(augment, modalities, used, class_names)


def detection_only_options(augment: AugmentConfig) -> list[str]:
    """The keys of ``augment`` that are on but work only for detection (mosaic, copy-paste), as dotted names.

    A segmentation task can refuse them up front with one ConfigError instead of failing on the first sample.
    """
    keys = []
    if augment.mosaic > 0:
        keys.append("data.augment.mosaic")
    if augment.copy_paste.prob > 0:
        keys.append("data.augment.copy_paste.prob")
    return keys


def dtype_max(dtype: np.dtype) -> float:
    """255 for uint8, 65535 for uint16 (the value that maps to 1.0 when ``ModalityConfig.scale`` is unset)."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise TypeError(f"augmentation supports uint8 and uint16 arrays, got {dtype}")


class Augmenter:
    """Callable ``(sample, rng) -> sample`` applying the configured augmentations.

    A class rather than a closure so that DataLoader worker processes can pickle it.
    """

    def __init__(self, augment: AugmentConfig, modalities: list[ModalityConfig],
                 used: list[str] | None = None, class_names: list[str] | None = None) -> None:
        self.cfg = augment
        self.modalities = {m.name: m for m in modalities}
        # Dropout candidates: only what the model sees. Blanking a modality it ignores wastes the draw; picking
        # among loaded-but-unused ones would also let a single-modality model lose its only input.
        self.dropout_candidates = [n for n in self.modalities if used is None or n in used]
        # names that do not match a 3-channel (rgb) or any (thermal) modality are ignored
        self.rgb = [m.name for m in modalities if m.name in augment.rgb_modalities and m.channels == 3]
        self.thermal = [m.name for m in modalities if m.name in augment.thermal_modalities]
        if augment.scale_jitter is not None and min(augment.scale_jitter) <= 0:
            raise ValueError(f"augment.scale_jitter factors must be > 0, got {augment.scale_jitter}")
        if min(augment.thermal_gain) < 0:
            raise ValueError(f"augment.thermal_gain must be >= 0, got {augment.thermal_gain}")
        # copy-paste class filter as 1-based labels (None: every class)
        self.paste_labels: np.ndarray | None = None
        wanted = augment.copy_paste.classes
        if wanted is not None and augment.copy_paste.prob > 0:
            if not wanted:
                raise ConfigError("data.augment.copy_paste.classes is empty, so nothing could be pasted; "
                                  "use null for every class")
            if class_names is None:
                raise ConfigError("data.augment.copy_paste.classes needs the data set's class names "
                                  "(build_transforms(..., class_names=...))")
            unknown = [c for c in wanted if c not in class_names]
            if unknown:
                raise ConfigError(f"data.augment.copy_paste.classes: unknown class names {unknown} "
                                  f"(the data set has {list(class_names)})")
            self.paste_labels = np.array([list(class_names).index(c) + 1 for c in wanted], np.int64)
        # multi-scale candidates: the multiples of 32 in [min, max]
        self.multi_scale_sides: list[int] | None = None
        if augment.multi_scale is not None:
            lo, hi = augment.multi_scale
            sides = list(range(-(-lo // 32) * 32, hi + 1, 32))
            if not sides:
                raise ConfigError(f"data.augment.multi_scale {list(augment.multi_scale)} holds no multiple of 32")
            self.multi_scale_sides = sides

    @property
    def uses_donors(self) -> bool:
        """True when mosaic or copy-paste is on: the call then needs ``donors`` (other training frames)."""
        return self.cfg.mosaic > 0 or self.cfg.copy_paste.prob > 0

    # ------------------------------------------------------------------------------------ helpers
    def full_scale(self, name: str, array: np.ndarray) -> float:
        """The raw value of 1.0 for this modality: its configured ``scale`` (at most the dtype's max)."""
        top = dtype_max(array.dtype)
        m = self.modalities.get(name)
        return min(float(m.scale), top) if m is not None and m.scale is not None else top

    # --------------------------------------------------------------------------------------- call
    def __call__(self, sample: Sample, rng: np.random.Generator, donors: DonorDraw | None = None) -> Sample:
        cfg = self.cfg
        if self.uses_donors:
            if sample.mask is not None:
                raise ConfigError(f"{' and '.join(detection_only_options(cfg))}: detection only, but the "
                                  f"samples have segmentation masks; turn them off for this task")
            # drawn only when enabled (see the module docstring): off, the draws below are unchanged
            if cfg.mosaic > 0 and rng.random() < cfg.mosaic:
                sample = mosaic(sample, self._donors(donors)(rng, 3), rng, cfg.crop_min_visible, self.conform)
            if cfg.copy_paste.prob > 0 and rng.random() < cfg.copy_paste.prob:
                sample = self.copy_paste(sample, self._donors(donors), rng)
        arrays = dict(sample.modalities)
        boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(sample.labels, np.int64).reshape(-1)
        occlusion = sample.occlusion
        count = len(boxes)
        # ignore regions ride along with the boxes through every geometric step, split off again at the end
        boxes = np.concatenate([boxes, np.asarray(sample.ignore_boxes, np.float32).reshape(-1, 4)])
        if sample.mask is not None:
            arrays[MASK_KEY] = check_mask(sample)
        # Decisions are drawn from ``rng`` in a fixed order, so one generator state gives one result.
        if rng.random() < cfg.hflip:
            arrays, boxes = hflip(arrays, boxes)
        # drawn only when enabled: with both off, the draws below are the ones they were before these existed
        if cfg.vflip > 0 and rng.random() < cfg.vflip:
            arrays, boxes = vflip(arrays, boxes)
        if cfg.rot90 > 0 and rng.random() < cfg.rot90:
            arrays, boxes = rot90(arrays, boxes, int(rng.integers(1, 4)))
        if cfg.scale_jitter is not None:
            lo, hi = sorted(cfg.scale_jitter)
            factor = float(rng.uniform(lo, hi))
            if factor != 1.0:
                arrays, boxes = rescale(arrays, boxes, factor)
        if cfg.crop_prob > 0 and rng.random() < cfg.crop_prob:
            arrays, boxes, keep = crop_window(arrays, boxes, rng, cfg.crop_min_scale, cfg.crop_min_visible,
                                              any_visible=np.arange(len(boxes)) >= count)
            labels = labels[keep[:count]]
            occlusion = occlusion[keep[:count]] if occlusion is not None else None
            count = int(keep[:count].sum())
            boxes = boxes[keep]
        if self.multi_scale_sides is not None:
            side = self.multi_scale_sides[int(rng.integers(len(self.multi_scale_sides)))]
            arrays, boxes = resize_shorter_side(arrays, boxes, side, cfg.multi_scale_max_size)
        boxes, ignore_boxes = boxes[:count], boxes[count:]
        mask = arrays.pop(MASK_KEY, None)  # out before photometry: never jittered, blurred or dropped

        jitter = cfg.color_jitter
        if jitter.prob > 0:
            for name in self.rgb:
                if name in arrays and rng.random() < jitter.prob:
                    arrays[name] = color_jitter(arrays[name], self.full_scale(name, arrays[name]), rng,
                                                jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        if cfg.clahe > 0:
            for name in list(arrays):
                if arrays[name].shape[-1] in (1, 3) and rng.random() < cfg.clahe:
                    arrays[name] = clahe(arrays[name], self.full_scale(name, arrays[name]),
                                         cfg.clahe_clip_limit, cfg.clahe_tiles)
        if cfg.motion_blur > 0 and rng.random() < cfg.motion_blur:
            angle = float(rng.uniform(0.0, 180.0))
            size = cfg.motion_blur_kernel
            if cfg.motion_blur_max_kernel is not None:  # an odd length in [3, max], drawn after the angle
                size = 2 * int(rng.integers(1, (cfg.motion_blur_max_kernel - 1) // 2 + 1)) + 1
            kernel = motion_kernel(size, angle)
            arrays = {name: _filter(a, kernel) for name, a in arrays.items()}
        if cfg.noise > 0 and rng.random() < cfg.noise:
            arrays = {name: gaussian_noise(a, self.full_scale(name, a), cfg.noise_std, rng)
                      for name, a in arrays.items()}
        if cfg.thermal_gain_offset > 0:
            for name in self.thermal:
                if name in arrays and rng.random() < cfg.thermal_gain_offset:
                    gain = float(rng.uniform(*cfg.thermal_gain))
                    offset = float(rng.uniform(*cfg.thermal_offset))
                    arrays[name] = gain_offset(arrays[name], self.full_scale(name, arrays[name]), gain, offset)

        candidates = [n for n in self.dropout_candidates if n in arrays]
        # never all of them: with fewer than two modalities the model sees, there is nothing to drop
        if cfg.modality_dropout > 0 and len(candidates) >= 2 and rng.random() < cfg.modality_dropout:
            name = candidates[int(rng.integers(len(candidates)))]
            arrays[name] = self.mean_image(name, arrays[name])
        return replace(sample, modalities=arrays, boxes=boxes, labels=labels, occlusion=occlusion,
                       ignore_boxes=ignore_boxes, mask=mask)

    # ---------------------------------------------------------------------------- frame mixing
    @staticmethod
    def _donors(donors: DonorDraw | None) -> DonorDraw:
        if donors is None:
            raise ConfigError("data.augment.mosaic / copy_paste need other training frames: call the transform "
                              "with donors=... (the training DetectionDataset does)")
        return donors

    def conform(self, name: str, array: np.ndarray, like: np.ndarray) -> np.ndarray:
        """A donor's ``array`` of modality ``name`` in the dtype and value scale of the frame's ``like``."""
        channels = like.shape[2] if like.ndim == 3 else 1
        if (array.shape[2] if array.ndim == 3 else 1) != channels:
            raise DataError(f"modality {name!r}: a donor frame has {array.shape} pixels, the frame "
                            f"{like.shape}: cannot mix frames with different channels")
        array = array.reshape(array.shape[0], array.shape[1], *like.shape[2:])
        full_from, full_to = self.full_scale(name, array), self.full_scale(name, like)
        if array.dtype == like.dtype and full_from == full_to:
            return array
        return _from_unit(_to_unit(array, full_from), full_to, like.dtype)

    def paste_candidates(self, donor: Sample) -> np.ndarray:
        """Indices of the donor's boxes copy-paste may take (class filter, size limit, positive area)."""
        boxes = np.asarray(donor.boxes, np.float32).reshape(-1, 4)
        labels = np.asarray(donor.labels, np.int64).reshape(-1)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ok = (w > 0) & (h > 0)
        if self.paste_labels is not None:
            ok &= np.isin(labels, self.paste_labels)
        limit = self.cfg.copy_paste.max_object_size
        if limit is not None:
            ok &= np.maximum(w, h) <= limit
        return np.flatnonzero(ok)

    def copy_paste(self, sample: Sample, donors: DonorDraw, rng: np.random.Generator) -> Sample:
        """Paste 1..``max_pastes`` donor objects into ``sample`` (see the module docstring for the rules)."""
        cp = self.cfg.copy_paste
        wanted = int(rng.integers(1, cp.max_pastes + 1))
        height, width = sample.height, sample.width
        arrays = {name: a.copy() for name, a in sample.modalities.items()}  # inputs are never changed in place
        boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4)
        occupied = np.concatenate([boxes, np.asarray(sample.ignore_boxes, np.float32).reshape(-1, 4)])
        new_boxes: list[np.ndarray] = []
        new_labels: list[int] = []
        new_occlusion: list[int] = []
        occlusion_known = sample.occlusion is not None
        for _ in range(wanted + PASTE_EXTRA_DONORS):
            if len(new_boxes) >= wanted:
                break
            donor = donors(rng, 1)[0]
            candidates = self.paste_candidates(donor)
            if len(candidates) == 0:
                continue
            donor_boxes = np.asarray(donor.boxes, np.float32).reshape(-1, 4)
            for j in rng.permutation(candidates):
                if len(new_boxes) >= wanted:
                    break
                x0, y0, x1, y1 = context_window(donor_boxes[j], cp.margin, donor.height, donor.width)
                patch_w, patch_h = x1 - x0, y1 - y0
                if patch_w > width or patch_h > height:
                    continue
                for _try in range(PASTE_PLACE_TRIES):
                    px = int(rng.integers(0, width - patch_w + 1))
                    py = int(rng.integers(0, height - patch_h + 1))
                    if max_covered_fraction(np.array([px, py, px + patch_w, py + patch_h], np.float32),
                                            occupied) <= PASTE_MAX_COVER:
                        break
                else:
                    continue  # no free place: this object is left out
                for name, array in arrays.items():
                    if name not in donor.modalities:
                        raise _donor_error(f"{donor.stem}: donor frame lacks modality {name!r}")
                    crop = donor.modalities[name][y0:y1, x0:x1]
                    array[py:py + patch_h, px:px + patch_w] = self.conform(name, crop, array)
                box = donor_boxes[j] + np.array([px - x0, py - y0, px - x0, py - y0], np.float32)
                # inside the patch (a donor box reaching past its frame edge would otherwise stick out)
                box = np.clip(box, [px, py, px, py], [px + patch_w, py + patch_h] * 2).astype(np.float32)
                new_boxes.append(box)
                new_labels.append(int(np.asarray(donor.labels).reshape(-1)[j]))
                occupied = np.concatenate([occupied, box[None]])
                if donor.occlusion is None:
                    occlusion_known = False
                else:
                    new_occlusion.append(int(np.asarray(donor.occlusion).reshape(-1)[j]))
        if not new_boxes:
            return replace(sample, modalities=arrays)
        occlusion = None
        if occlusion_known:
            occlusion = np.concatenate([np.asarray(sample.occlusion, np.int64).reshape(-1),
                                        np.asarray(new_occlusion, np.int64)])
        return replace(sample, modalities=arrays, boxes=np.concatenate([boxes, np.stack(new_boxes)]),
                       labels=np.concatenate([np.asarray(sample.labels, np.int64).reshape(-1),
                                              np.asarray(new_labels, np.int64)]),
                       occlusion=occlusion)

    def mean_image(self, name: str, array: np.ndarray) -> np.ndarray:
        """An array like ``array`` filled with the modality's normalisation mean (zero after normalisation)."""
        mean = np.asarray(self.modalities[name].mean, np.float64) * self.full_scale(name, array)
        value = np.clip(np.rint(mean), 0, dtype_max(array.dtype)).astype(array.dtype)
        out = np.empty_like(array)
        out[...] = value if array.ndim == 3 else value[0]  # (C,) broadcasts over (H, W, C)
        return out


# ------------------------------------------------------------------------------------- geometric
def check_mask(sample: Sample) -> np.ndarray:
    """``sample.mask`` if it is an (H, W) integer array of the frame's size, else a :class:`DataError`."""
    mask = np.asarray(sample.mask)
    if mask.ndim != 2 or mask.shape != (sample.height, sample.width):
        raise DataError(f"{sample.stem}: mask has shape {mask.shape}, expected (H, W) = "
                        f"({sample.height}, {sample.width}) like its images")
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{sample.stem}: mask must hold integer class ids (uint8), got dtype {mask.dtype}")
    return mask


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W[, C]) array of any dtype to ``size`` = (width, height).

    Pixel-centre aligned (output pixel centre -> the input pixel containing it), like the area and bilinear
    resizes of the images, so a resized mask stays on its resized image; values are only ever copied.
    """
    new_w, new_h = size
    height, width = array.shape[:2]
    rows = np.minimum(((np.arange(new_h) + 0.5) * (height / new_h)).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(new_w) + 0.5) * (width / new_w)).astype(np.int64), width - 1)
    return np.ascontiguousarray(array[rows[:, None], cols[None, :]])


def hflip(arrays: dict[str, np.ndarray], boxes: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Mirror every modality left-right and the boxes with them."""
    width = next(iter(arrays.values())).shape[1]
    out = {name: np.ascontiguousarray(a[:, ::-1]) for name, a in arrays.items()}
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return out, flipped


def vflip(arrays: dict[str, np.ndarray], boxes: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Mirror every array upside down and the boxes with them."""
    height = next(iter(arrays.values())).shape[0]
    out = {name: np.ascontiguousarray(a[::-1]) for name, a in arrays.items()}
    flipped = boxes.copy()
    flipped[:, 1] = height - boxes[:, 3]
    flipped[:, 3] = height - boxes[:, 1]
    return out, flipped


def rot90(arrays: dict[str, np.ndarray], boxes: np.ndarray, k: int
          ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rotate every array by ``k`` x 90 degrees counter-clockwise (as :func:`numpy.rot90`) and the boxes.

    Odd ``k`` swaps height and width. Boxes are in pixel-edge coordinates, so a box covering whole pixels
    covers exactly the rotated pixels.
    """
    k %= 4
    height, width = next(iter(arrays.values())).shape[:2]
    out = {name: np.ascontiguousarray(np.rot90(a, k, axes=(0, 1))) for name, a in arrays.items()}
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    if k == 0:
        turned = boxes.copy()
    elif k == 1:  # (x, y) -> (y, W - x)
        turned = np.stack([y0, width - x1, y1, width - x0], axis=1)
    elif k == 2:  # (x, y) -> (W - x, H - y)
        turned = np.stack([width - x1, height - y1, width - x0, height - y0], axis=1)
    else:  # (x, y) -> (H - y, x)
        turned = np.stack([height - y1, x0, height - y0, x1], axis=1)
    return out, turned.astype(np.float32, copy=False).reshape(-1, 4)


def rescale(arrays: dict[str, np.ndarray], boxes: np.ndarray, factor: float,
            nearest: Collection[str] = (MASK_KEY,)) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Resize every array by ``factor`` (boxes follow the exact per-axis ratio of the rounded size).

    Arrays named in ``nearest`` (the mask of class ids) are resized with the nearest neighbour, the others
    with area averaging when shrinking and bilinear interpolation when enlarging.
    """
    height, width = next(iter(arrays.values())).shape[:2]
    new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
    return resize_to(arrays, boxes, (new_w, new_h), cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR, nearest)


def resize_to(arrays: dict[str, np.ndarray], boxes: np.ndarray, size: tuple[int, int], interpolation: int,
              nearest: Collection[str] = (MASK_KEY,)) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Resize every array to ``size`` = (width, height) and scale the boxes by the per-axis ratios.

    ``interpolation`` (an OpenCV flag) for the images; arrays named in ``nearest`` use the nearest neighbour.
    """
    height, width = next(iter(arrays.values())).shape[:2]
    new_w, new_h = size
    out = {name: resize_nearest(a, (new_w, new_h)) if name in nearest
           else cv_resize(a, (new_w, new_h), interpolation) for name, a in arrays.items()}
    scaled = boxes * np.array([new_w / width, new_h / height, new_w / width, new_h / height], np.float32)
    return out, scaled


def shorter_side_size(height: int, width: int, side: int, max_size: int | None = None) -> tuple[int, int]:
    """(width, height) with the shorter side ``side``, or the longer side ``max_size`` if it would exceed it."""
    scale = side / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_shorter_side(arrays: dict[str, np.ndarray], boxes: np.ndarray, side: int, max_size: int | None = None,
                        nearest: Collection[str] = (MASK_KEY,)) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Multi-scale resize: shorter side to ``side``, longer side capped at ``max_size`` (:func:`shorter_side_size`).

    Area averaging when shrinking, bilinear when enlarging (like :func:`rescale`); boxes scaled with the image.
    """
    height, width = next(iter(arrays.values())).shape[:2]
    new_w, new_h = shorter_side_size(height, width, side, max_size)
    if (new_w, new_h) == (width, height):
        return arrays, boxes
    shrink = new_w * new_h < width * height
    return resize_to(arrays, boxes, (new_w, new_h), cv2.INTER_AREA if shrink else cv2.INTER_LINEAR, nearest)


def context_window(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """The whole-pixel window (x0, y0, x1, y1) around ``box`` plus ``margin`` x its side, inside the frame."""
    bx0, by0, bx1, by1 = (float(v) for v in box)
    mx, my = margin * (bx1 - bx0), margin * (by1 - by0)
    # clamped so that even a box (partly) outside the frame gives a non-empty window inside it
    x0 = min(max(0, math.floor(bx0 - mx)), width - 1)
    y0 = min(max(0, math.floor(by0 - my)), height - 1)
    x1 = min(width, math.ceil(bx1 + mx))
    y1 = min(height, math.ceil(by1 + my))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def max_covered_fraction(rect: np.ndarray, boxes: np.ndarray) -> float:
    """The largest fraction of any box's area that ``rect`` (xyxy) covers (0 with no boxes of positive area)."""
    if len(boxes) == 0:
        return 0.0
    inter_w = np.clip(np.minimum(boxes[:, 2], rect[2]) - np.maximum(boxes[:, 0], rect[0]), 0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], rect[3]) - np.maximum(boxes[:, 1], rect[1]), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    covered = np.divide(inter_w * inter_h, area, out=np.zeros_like(area), where=area > 0)
    return float(covered.max())


def mosaic(sample: Sample, donors: list[Sample], rng: np.random.Generator, min_visible: float,
           conform: Callable[[str, np.ndarray, np.ndarray], np.ndarray]) -> Sample:
    """Four frames (``sample`` then three ``donors``) in a 2x2 grid around a random centre, at ``sample``'s size.

    Quadrants: top-left ``sample``, top-right, bottom-left, bottom-right the donors in order; each shows its
    frame's corner at the centre (frames of another size first scaled, keeping the aspect, to cover the
    output). Boxes are clipped to their quadrant and dropped when keeping less than ``min_visible`` of their
    area; ignore regions are kept while any part is visible. ``conform(name, donor_array, like)`` converts
    donor pixels to the frame's dtype and scale. Frames smaller than 2x2 px are returned unchanged.
    """
    height, width = sample.height, sample.width
    if height < 2 or width < 2:
        return sample
    cx = int(rng.integers(max(1, round(width * 0.25)), min(width - 1, round(width * 0.75)) + 1))
    cy = int(rng.integers(max(1, round(height * 0.25)), min(height - 1, round(height * 0.75)) + 1))
    quadrants = [(0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height)]
    out = {name: np.empty_like(a) for name, a in sample.modalities.items()}
    boxes_out, labels_out, occlusion_out, ignore_out = [], [], [], []
    occlusion_known = True
    for frame, (qx0, qy0, qx1, qy1) in zip([sample, *donors], quadrants, strict=True):
        arrays = dict(frame.modalities)
        boxes = np.concatenate([np.asarray(frame.boxes, np.float32).reshape(-1, 4),
                                np.asarray(frame.ignore_boxes, np.float32).reshape(-1, 4)])
        count = len(np.asarray(frame.boxes).reshape(-1, 4))
        factor = max(width / frame.width, height / frame.height)
        if factor != 1.0:
            arrays, boxes = rescale(arrays, boxes, factor)
        fh, fw = next(iter(arrays.values())).shape[:2]
        qw, qh = qx1 - qx0, qy1 - qy0
        sx0 = fw - qw if qx0 == 0 else 0  # the corner of the frame that touches the centre
        sy0 = fh - qh if qy0 == 0 else 0
        for name, target in out.items():
            if name not in arrays:
                raise _donor_error(f"{frame.stem}: mosaic frame lacks modality {name!r}")
            target[qy0:qy1, qx0:qx1] = conform(name, arrays[name][sy0:sy0 + qh, sx0:sx0 + qw], target)
        shifted = boxes + np.array([qx0 - sx0, qy0 - sy0, qx0 - sx0, qy0 - sy0], np.float32)
        clipped = shifted.copy()
        clipped[:, [0, 2]] = np.clip(shifted[:, [0, 2]], qx0, qx1)
        clipped[:, [1, 3]] = np.clip(shifted[:, [1, 3]], qy0, qy1)
        kept_w, kept_h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        area = np.maximum((shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1]), 0)
        is_ignore = np.arange(len(boxes)) >= count
        keep = (kept_w > 0) & (kept_h > 0) & ((kept_w * kept_h >= min_visible * area) | is_ignore)
        objects = keep & ~is_ignore
        boxes_out.append(clipped[objects])
        labels_out.append(np.asarray(frame.labels, np.int64).reshape(-1)[objects[:count]])
        ignore_out.append(clipped[keep & is_ignore])
        if frame.occlusion is None:
            occlusion_known = False
        else:
            occlusion_out.append(np.asarray(frame.occlusion, np.int64).reshape(-1)[objects[:count]])
    return replace(sample, modalities=out, boxes=np.concatenate(boxes_out).astype(np.float32, copy=False),
                   labels=np.concatenate(labels_out), ignore_boxes=np.concatenate(ignore_out),
                   occlusion=np.concatenate(occlusion_out) if occlusion_known else None)


def random_crop(arrays: dict[str, np.ndarray], boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                min_scale: float, min_visible: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Crop a random window (each side >= ``min_scale`` of the image) from every modality.

    Boxes are clipped to the window; boxes keeping less than ``min_visible`` of their area, and boxes of
    zero area, are dropped together with their labels.
    """
    out, clipped, keep = crop_window(arrays, boxes, rng, min_scale, min_visible)
    return out, clipped[keep], labels[keep]


def crop_window(arrays: dict[str, np.ndarray], boxes: np.ndarray, rng: np.random.Generator, min_scale: float,
                min_visible: float, any_visible: np.ndarray | None = None
                ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`random_crop`'s window: the cropped arrays, every box clipped to it, and which boxes to keep.

    The keep mask lets callers drop per-box data (labels, occlusion) in step. Boxes flagged in
    ``any_visible`` (ignore regions) are kept while any part of them is in the window. With no boxes at all
    (segmentation) it is a plain random window: empty boxes and keep come back.
    """
    height, width = next(iter(arrays.values())).shape[:2]
    crop_w = max(1, min(width, round(width * float(rng.uniform(min_scale, 1.0)))))
    crop_h = max(1, min(height, round(height * float(rng.uniform(min_scale, 1.0)))))
    x0 = int(rng.integers(0, width - crop_w + 1))
    y0 = int(rng.integers(0, height - crop_h + 1))
    out = {name: np.ascontiguousarray(a[y0:y0 + crop_h, x0:x0 + crop_w]) for name, a in arrays.items()}
    shifted = boxes - np.array([x0, y0, x0, y0], np.float32)
    clipped = np.empty_like(shifted)
    clipped[:, [0, 2]] = np.clip(shifted[:, [0, 2]], 0, crop_w)
    clipped[:, [1, 3]] = np.clip(shifted[:, [1, 3]], 0, crop_h)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept_w = clipped[:, 2] - clipped[:, 0]
    kept_h = clipped[:, 3] - clipped[:, 1]
    kept = kept_w * kept_h
    visible = kept >= min_visible * np.maximum(area, 0)
    if any_visible is not None:
        visible = visible | any_visible
    keep = (kept_w > 0) & (kept_h > 0) & visible
    return out, clipped, keep


def cv_resize(array: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``cv2.resize`` to ``size`` = (width, height) for any number of channels, keeping the channel axis.

    OpenCV resizes at most 4 channels at a time (area and bilinear alike): wider stacks go in chunks of 4.
    """
    if array.ndim == 3 and array.shape[2] > 4:
        return np.concatenate([cv_resize(np.ascontiguousarray(array[..., i:i + 4]), size, interpolation)
                               for i in range(0, array.shape[2], 4)], axis=2)
    return _keep_shape(cv2.resize(array, size, interpolation=interpolation), array)


def _keep_shape(result: np.ndarray, like: np.ndarray) -> np.ndarray:
    """OpenCV drops a trailing channel axis of length 1; put it back."""
    if like.ndim == 3 and result.ndim == 2:
        return result[..., None]
    return result


# ----------------------------------------------------------------------------------- photometric
def _to_unit(array: np.ndarray, full: float) -> np.ndarray:
    return array.astype(np.float32) * np.float32(1.0 / full)


def _from_unit(unit: np.ndarray, full: float, dtype: np.dtype) -> np.ndarray:
    return np.clip(np.rint(unit * np.float32(full)), 0, full).astype(dtype)


def color_jitter(array: np.ndarray, full: float, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float, hue: float) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter of an (H, W, 3) RGB array (torchvision semantics)."""
    x = _to_unit(array, full)
    b = float(rng.uniform(max(0.0, 1 - brightness), 1 + brightness))
    c = float(rng.uniform(max(0.0, 1 - contrast), 1 + contrast))
    s = float(rng.uniform(max(0.0, 1 - saturation), 1 + saturation))
    h = float(rng.uniform(-hue, hue))
    x = np.clip(x * b, 0, 1)
    gray_mean = float((x @ _LUMA).mean())
    x = np.clip((x - gray_mean) * c + gray_mean, 0, 1)
    gray = (x @ _LUMA)[..., None]
    x = np.clip((x - gray) * s + gray, 0, 1)
    if h != 0.0:
        hsv = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2HSV)  # float input: hue in degrees
        hsv[..., 0] = np.mod(hsv[..., 0] + h * 360.0, 360.0)
        x = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1)
    return _from_unit(x, full, array.dtype)


def clahe(array: np.ndarray, full: float, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation in the native dtype (8- or 16-bit).

    One channel: applied directly. Three channels: applied to the luminance, and the colour channels are
    scaled by the luminance ratio, so hue and saturation are kept.
    """
    height, width = array.shape[:2]
    grid = (max(1, min(tiles, width // 8)), max(1, min(tiles, height // 8)))
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=grid)
    top = dtype_max(array.dtype)
    # OpenCV's CLAHE maps onto the dtype's whole range; stretch [0, full] onto it and back, so that e.g.
    # 14-bit thermal counts in a 16-bit array stay 14-bit
    stretch = np.float32(top / full)
    if array.ndim == 2 or array.shape[-1] == 1:
        plane = array.reshape(height, width)
        if stretch != 1:
            plane = np.clip(np.rint(plane.astype(np.float32) * stretch), 0, top).astype(array.dtype)
        out = op.apply(np.ascontiguousarray(plane))
        if stretch != 1:
            out = np.clip(np.rint(out.astype(np.float32) / stretch), 0, full).astype(array.dtype)
        return out.reshape(array.shape)
    x = array.astype(np.float32)
    luma = (x @ _LUMA) * stretch
    equalised = op.apply(np.clip(np.rint(luma), 0, top).astype(array.dtype)).astype(np.float32)
    ratio = equalised / np.maximum(luma, 1e-3)
    return np.clip(np.rint(x * ratio[..., None]), 0, full).astype(array.dtype)


def motion_kernel(size: int, angle_deg: float) -> np.ndarray:
    """A normalised line kernel of odd length ``size`` (rounded up) through the centre at ``angle_deg``."""
    size = size + 1 - size % 2
    centre = size // 2
    # bilinear splats of points along the line: symmetric about the centre, so blurring shifts nothing
    t = np.linspace(-centre, centre, 8 * size)
    x = centre + t * math.cos(math.radians(angle_deg))
    y = centre + t * math.sin(math.radians(angle_deg))
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    kernel = np.zeros((size + 1, size + 1), np.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    kernel = kernel[:size, :size].astype(np.float32)
    return kernel / kernel.sum()


def _filter(array: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # ddepth=-1 keeps the dtype; OpenCV rounds and saturates
    return _keep_shape(cv2.filter2D(array, -1, kernel, borderType=cv2.BORDER_REFLECT), array)


def gaussian_noise(array: np.ndarray, full: float, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add zero-mean Gaussian noise of ``std`` (0-1 scale) in raw units."""
    noise = rng.standard_normal(array.shape, dtype=np.float32) * np.float32(std * full)
    return np.clip(np.rint(array.astype(np.float32) + noise), 0, full).astype(array.dtype)


def gain_offset(array: np.ndarray, full: float, gain: float, offset: float) -> np.ndarray:
    """Thermal camera calibration drift: ``x * gain + offset`` (offset on the 0-1 scale)."""
    out = array.astype(np.float32) * np.float32(gain) + np.float32(offset * full)
    return np.clip(np.rint(out), 0, full).astype(array.dtype)
