"""Synthetic camouflaged-object scenes (RGB + thermal) with exact binary masks, for ``task: segment``.

The built-in segmentation data set (``cadet data synth OUT --task segment``; used when ``data.root`` is not
set). It is built so that a fused RGB + thermal model *can* beat each single modality, and so that neither
modality alone is enough:

* **RGB: camouflage.** Every image's background is a smooth multi-colour texture: ``K`` (3-4) Gaussian
  random fields with a 1/f-like spectrum, mapped to the scene's palette by a soft arg-max (softmax of
  ``texture_sharpness`` x fields), times a luminance field. An object is painted with *the same generator,
  the same palette and the same spectrum*: inside its mask every field is ``cos(t) * background + sin(t) *
  independent`` with ``t = texture_mix * pi / 2``. Mixing unit-variance Gaussian fields with weights whose
  squares sum to one keeps each field's distribution, so the object's colour and texture statistics (mean,
  std, spectrum) equal the background's for every ``texture_mix``; what shows it is only the seam where the
  texture stops continuing (0 = no seam at all, 1 = an independent realisation) and a faint 1-px shading of
  its inner boundary (``boundary_shade``).
* **Thermal: warm, but blurry and ambiguous.** Objects are ``heat`` warmer than the ground. The thermal
  image is rendered at ``1 / thermal_downsample`` of the RGB resolution (area-averaged), blurred
  (``thermal_blur``), given sensor noise at that resolution (``thermal_noise``) and upsampled back, so the
  boundary is imprecise by several pixels. Each image also holds ``distractors`` warm objects (sun-heated
  rocks) that are *thermally indistinguishable* from the objects: same shape generator, same size and heat
  distributions, placed in the same shuffled order (role drawn before placement). They are not in the mask.
* **RGB tells the rocks apart.** A rock has a colour far from the scene's palette, directional shading and a
  crisp dark outline (``distractor_contrast`` = 1; 0 makes rocks as camouflaged as the objects).

So RGB alone sees objects only through the weak seam cues; thermal alone finds every warm blob but cannot
tell objects from rocks and has blurry boundaries; together, "warm and not a rock" locates the object and the
RGB seam gives its exact outline. Whether a trained fused model actually beats each single modality is for
the training runs to measure (on validation data, several seeds); what the generator guarantees is checked
per pixel, without learning, by :func:`pixel_baselines` (best single threshold over the whole set, chosen on
the set itself, foreground IoU pooled over all pixels; 240 default images of 160x128, seeds 0 / 1 / 2):

=====================================================  =====================  ==========================
rule                                                    default knobs          knob changed
=====================================================  =====================  ==========================
everything foreground (chance)                          0.163 / 0.173 / 0.161
RGB only (best of R, G, B, luminance, either side)      0.178 / 0.185 / 0.177  ``texture_mix=1``: 0.178
thermal only (thermal > t)                              0.350 / 0.364 / 0.313  no rocks: 0.645; also sharp
                                                                               thermal: 0.858
fused rule (warm and colour near the image's median)    0.579 / 0.578 / 0.508  ``distractor_contrast=0``:
                                                                               0.351 (= thermal)
=====================================================  =====================  ==========================

(The RGB pixel statistics do not change with ``texture_mix``: only the spatial seam does. "Sharp thermal":
``thermal_downsample=1``, no blur, no noise, no ambient variation; what remains is the spread of ambient and
heat between scenes under one global threshold.)

Objects: ellipses, smooth radial blobs and corner-cut polygons, each 5-35 % of the image area (log-uniform),
1-``max_objects`` per image, none in ``p_empty`` of the images (empty masks, still with rocks). Shapes keep a
3-px gap to each other, so masks are exact: the RGB object pixels are exactly the mask pixels. Crowded draws
are scaled down as a whole to cover at most 45 % of the image, and are placed largest first (a shape with no
free spot is retried smaller, and left out, counted in ``synth.json``, only if that fails too); none of this
looks at the role, so objects and rocks keep one size distribution (measured: mean area 0.1288 for both over
1,500 images).

Layout (``folders``): ``rgb/<stem>.png`` (8-bit RGB), ``thermal/<stem>.png`` (8-bit, 1 channel),
``masks/<stem>.png`` (8-bit class ids 0 = background, 1 = object) and ``synth.json`` (parameters, knobs,
ready-made ``data.modalities`` entries, class names, per-image records and a summary). Stems are
``scene<SSSS>_<NNNNNN>``: ``scene_images`` consecutive images share a scene (palette, ambient temperature,
light direction) but never a texture realisation (only the iid sensor noise comes from a per-seed bank);
splits group by scene (``data.split.group_by=auto`` takes each ``scene<SSSS>`` prefix as a sequence).

Deterministic: each scene draws from a generator seeded by (seed, scene), each image from (seed, image) and a
per-seed bank of sensor noise, so the same seed gives byte-identical files and an image does not depend on
how many are generated (nor on the two writer threads' scheduling). Vectorised numpy / OpenCV (FFT-filtered
noise, polygon filling), no per-pixel Python loops; images are rendered and written on two threads. CPU
time per image is about 1.2x the detection generator's (:mod:`crossattentiondet.data.synth`, folders
layout), measured side by side on the loaded 2-core development machine (2.8 vs 2.3 CPU-s for 240 images of
160x128); PNG encoding is about a quarter of it.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.fft

from crossattentiondet.data.imageio import write_png
from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json

SEG_SYNTH_VERSION = 1
CLASS_NAMES: tuple[str, ...] = ("background", "object")
MODALITY_NAMES: tuple[str, ...] = ("rgb", "thermal")
SUBDIRS: tuple[str, ...] = ("rgb", "thermal", "masks")
STEM_PATTERN = re.compile(r"^scene\d{4,}_\d{6,}$")

_SPECTRUM_SLOPE = 1.6  # amplitude ~ 1 / (f + f0)^slope: blotchy, mostly low-frequency camouflage texture
_SPECTRUM_F0 = 0.02  # cycles / px: keeps the lowest frequencies from dominating completely
_LUMA_DETAIL = 0.12  # luminance modulation by its own texture field (fine detail in every colour patch)
_GAP = 3  # px kept free between shapes (and thermal blobs stay separate enough to count)
_AREA_BUDGET = 0.45  # at most this share of the image covered by shapes (all shrunk alike beyond it)
_SHRINK, _SHRINK_STEPS = 0.75, 4  # a shape with no free spot is retried at 75 % of its area, up to 4 times
_THREADS = 2  # images rendered and written in parallel (see generate_seg_dataset)
_RANDOM_TRIES = 12  # cheap random placements tried before the exhaustive search
_SHIFT = 4  # sub-pixel polygon filling (coordinates in 1/16 px)


# ------------------------------------------------------------------------------------------- knobs
@dataclass(frozen=True)
class SegSynthKnobs:
    """How hard each modality is. Defaults are the built-in data set; tune them on validation data only.

    * ``texture_mix`` (0-1): how different the object's texture realisation is from the background's
      (0: the background texture continues through the object, invisible in RGB; 1: an independent
      realisation, a clear seam). Colour/texture statistics are identical for every value.
    * ``boundary_shade`` (0-1): relative darkening of the object's 1-px inner boundary ring in RGB.
    * ``texture_sharpness`` (> 0): softmax gain of the palette mapping (higher: crisper colour patches).
    * ``p_empty`` (0-1): share of images without any object (empty mask; rocks still there).
    * ``max_objects`` (>= 1): objects per non-empty image, uniform in 1..max_objects.
    * ``distractors`` (min, max): warm distractors (rocks) per image, uniform in the range.
    * ``distractor_contrast`` (0-1): how plainly rocks show in RGB (1: distinct colour, shading and a dark
      outline; 0: as camouflaged as the objects, so RGB cannot tell them apart either).
    * ``area`` (min, max): size of each object and rock as a share of the image area (log-uniform).
    * ``heat`` (min, max): how much warmer than the ground objects and rocks are (0-1 of full scale).
    * ``thermal_downsample`` (>= 1): thermal rendered at 1/N of the RGB resolution, then upsampled.
    * ``thermal_blur`` (>= 0): Gaussian sigma of the thermal optics, in low-resolution thermal pixels.
    * ``thermal_noise`` (>= 0): thermal sensor noise std (0-1 scale) at the thermal resolution.
    * ``ambient_variation`` (>= 0): std of the smooth ground-temperature variation (0-1 scale).
    * ``rgb_noise`` (>= 0): RGB sensor noise std (0-1 scale).
    * ``scene_images`` (>= 1): consecutive images sharing one scene (palette, ambient, light direction).
    """

    texture_mix: float = 0.5
    boundary_shade: float = 0.06
    texture_sharpness: float = 3.0
    p_empty: float = 0.1
    max_objects: int = 2
    distractors: tuple[int, int] = (1, 2)
    distractor_contrast: float = 1.0
    area: tuple[float, float] = (0.05, 0.35)
    heat: tuple[float, float] = (0.12, 0.25)
    thermal_downsample: int = 4
    thermal_blur: float = 1.0
    thermal_noise: float = 0.02
    ambient_variation: float = 0.03
    rgb_noise: float = 0.02
    scene_images: int = 4

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> DataError:
            return DataError(f"synthetic segmentation data: {name} must be {want}, got {getattr(self, name)!r}")

        for name in ("texture_mix", "boundary_shade", "p_empty", "distractor_contrast"):
            if not _is_number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                raise bad(name, "a number in [0, 1]")
        for name in ("thermal_blur", "thermal_noise", "ambient_variation", "rgb_noise"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a number >= 0")
        if not _is_number(self.texture_sharpness) or self.texture_sharpness <= 0:
            raise bad("texture_sharpness", "a number > 0")
        for name in ("max_objects", "thermal_downsample", "scene_images"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if not _is_pair(self.distractors, _is_int) or not 0 <= self.distractors[0] <= self.distractors[1]:
            raise bad("distractors", "(min, max) integers with 0 <= min <= max")
        if not _is_pair(self.area, _is_number) or not 0 < self.area[0] <= self.area[1] <= 0.6:
            raise bad("area", "(min, max) image-area shares with 0 < min <= max <= 0.6")
        if not _is_pair(self.heat, _is_number) or not 0 < self.heat[0] <= self.heat[1] <= 0.5:
            raise bad("heat", "(min, max) with 0 < min <= max <= 0.5")
        # tuples, so that knobs compare and serialise the same however they were given
        object.__setattr__(self, "distractors", tuple(int(v) for v in self.distractors))
        object.__setattr__(self, "area", tuple(float(v) for v in self.area))
        object.__setattr__(self, "heat", tuple(float(v) for v in self.heat))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_pair(value: Any, ok: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(ok(v) for v in value)


# ------------------------------------------------------------------------------------------- scene
@dataclass
class SegScene:
    """One rendered image: ``rgb`` (H, W, 3) uint8, ``thermal`` (H, W) uint8, ``mask`` (H, W) uint8 0/1,
    ``distractors`` (H, W) uint8 0/1 (the rocks: warm, not in the mask; for tests and diagnostics only)."""

    stem: str
    rgb: np.ndarray
    thermal: np.ndarray
    mask: np.ndarray
    distractors: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _SceneStyle:
    palette: np.ndarray  # (K, 3) colours of the camouflage texture, 0-1
    ambient: float  # ground temperature, 0-1
    light: np.ndarray  # (2,) unit vector: where rock shading comes from
    illum_tilt: np.ndarray  # (2,) global illumination gradient across the image


@lru_cache(maxsize=64)
def _scene_style(seed: int, scene: int) -> _SceneStyle:
    rng = np.random.default_rng([seed, scene, 1])
    k = int(rng.integers(3, 5))
    base = rng.uniform(0.25, 0.65, 3)
    palette = np.clip(base + rng.uniform(-0.2, 0.2, (k, 3)), 0.05, 0.95)
    angle = rng.uniform(0, 2 * math.pi)
    return _SceneStyle(palette.astype(np.float32), float(rng.uniform(0.25, 0.45)),
                       np.array([math.cos(angle), math.sin(angle)], np.float32),
                       rng.uniform(-0.08, 0.08, 2).astype(np.float32))


@lru_cache(maxsize=16)
def _spectrum(height: int, width: int, step: float) -> np.ndarray:
    """1/f-like amplitude filter (rfft layout, zero at DC) for fields drawn on a grid of ``step`` full-resolution
    pixels, scaled so that filtered unit white noise has variance 1 (Parseval over the full spectrum)."""
    fy = np.fft.fftfreq(height)[:, None] / step
    full = (np.sqrt((np.fft.fftfreq(width)[None, :] / step) ** 2 + fy**2) + _SPECTRUM_F0) ** -_SPECTRUM_SLOPE
    full[0, 0] = 0.0
    half = (np.sqrt((np.fft.rfftfreq(width)[None, :] / step) ** 2 + fy**2) + _SPECTRUM_F0) ** -_SPECTRUM_SLOPE
    half[0, 0] = 0.0
    return (half / np.sqrt(np.mean(full**2))).astype(np.float32)


def _gaussian_fields(rng: np.random.Generator, n: int, height: int, width: int, step: float) -> np.ndarray:
    """``n`` stationary Gaussian random fields (n, height, width) on a grid of ``step`` full-resolution pixels.

    White noise filtered in the Fourier domain by a 1/f-like amplitude: exactly stationary (no edge effects of
    upsampled grids), mean 0 and variance 1 by construction (normalised by the spectrum, not per image), so an
    object's and the background's texture are draws of one Gaussian process at every pixel.
    """
    # the spectrum of white noise drawn directly (complex Gaussian, E|X|^2 = height * width as for the FFT of
    # unit white noise): half the random numbers and one FFT instead of two
    spec = rng.standard_normal((n, height, width // 2 + 1, 2), dtype=np.float32).view(np.complex64)[..., 0]
    spec *= _spectrum(height, width, float(step)) * np.float32(math.sqrt(height * width / 2))
    return scipy.fft.irfft2(spec, s=(height, width))


def _texture_fields(rng: np.random.Generator, n: int, height: int, width: int, step: int = 2) -> np.ndarray:
    """``n`` texture fields (n, H, W) drawn ``step`` times coarser and upsampled (cubic): the spectrum is
    mostly low-frequency, and it is ``step**2`` times cheaper."""
    small = _gaussian_fields(rng, n, -(-height // step), -(-width // step), step)
    out = np.empty((n, height, width), np.float32)
    for plane, target in zip(small, out):  # plane by plane into the output: no transposes or copies
        cv2.resize(plane, (width, height), dst=target, interpolation=cv2.INTER_CUBIC)
    return out


def _paint_texture(fields_: np.ndarray, palette: np.ndarray, sharpness: float) -> np.ndarray:
    """Fields (K + 1, H, W) -> RGB (3, H, W): a softmax over the first K picks the palette colour, the last
    modulates luminance. Channel-first throughout: reductions over planes are elementwise and fast."""
    k, height, width = fields_.shape[0] - 1, fields_.shape[1], fields_.shape[2]
    logits = sharpness * fields_[:k]
    weights = np.exp(logits - logits.max(axis=0))
    weights /= weights.sum(axis=0)
    rgb = (palette.T @ weights.reshape(k, -1)).reshape(3, height, width)
    return rgb * (1.0 + _LUMA_DETAIL * fields_[k])


_THETA = np.linspace(0, 2 * math.pi, 72, endpoint=False)  # outline vertices


def _unit_shape(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A closed outline (N, 2) around the origin with unit area: ellipse, smooth blob or corner-cut polygon."""
    kind = ("ellipse", "blob", "polygon")[int(rng.integers(0, 3))]
    theta = _THETA
    if kind == "polygon":  # random radii at 5-9 random angles, linearly joined, corners softened
        n = int(rng.integers(5, 10))
        corners = np.sort(rng.uniform(0, 2 * math.pi, n))
        radius = np.interp(theta, corners, rng.uniform(0.55, 1.0, n), period=2 * math.pi)
        radius = (np.roll(radius, 1) + 2 * radius + np.roll(radius, -1)) / 4
    else:
        radius = np.ones_like(theta)
        if kind == "blob":
            k = np.arange(2, 6)[:, None]
            amp = rng.uniform(0, 0.28, (4, 1)) / np.sqrt(k)
            radius = np.maximum(1 + (amp * np.cos(k * theta + rng.uniform(0, 2 * math.pi, (4, 1)))).sum(0), 0.3)
    pts = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    aspect = rng.uniform(1.0, 2.2)
    pts = pts * np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)])
    rot = rng.uniform(0, math.pi)
    c, s = math.cos(rot), math.sin(rot)
    pts = pts @ np.array([[c, s], [-s, c]])
    area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], -1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], -1)))
    return kind, pts / math.sqrt(area)


def _place(rng: np.random.Generator, pts: np.ndarray, target_px: float, occupied: np.ndarray
           ) -> np.ndarray | None:
    """Rasterise the outline scaled to ``target_px`` pixels at a random free position (uniform over all the
    positions where it overlaps nothing in ``occupied``); None if there is none."""
    height, width = occupied.shape
    pts = pts * math.sqrt(target_px)
    extent = pts.max(axis=0) - pts.min(axis=0)
    shrink = min(1.0, 0.95 * (width - 2) / extent[0], 0.95 * (height - 2) / extent[1])  # must fit the image
    pts = (pts - pts.min(axis=0)) * shrink + rng.uniform(0, 1, 2)  # sub-pixel phase
    shape = np.zeros((int(math.ceil(pts[:, 1].max())) + 1, int(math.ceil(pts[:, 0].max())) + 1), np.uint8)
    cv2.fillPoly(shape, [np.round(pts * (1 << _SHIFT)).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    sh, sw = shape.shape
    if sh > height or sw > width:
        return None
    inside = shape.astype(bool)
    # uniform positions, rejected when they overlap: uniform over the free positions
    for y, x in rng.integers(0, (height - sh + 1, width - sw + 1), (_RANDOM_TRIES, 2)).tolist():
        if not occupied[y:y + sh, x:x + sw][inside].any():
            break
    else:  # crowded: the overlap at every offset in one correlation, then a uniform free one
        overlap = cv2.matchTemplate(occupied, shape.astype(np.float32), cv2.TM_CCORR)
        free = np.flatnonzero(overlap < 0.5)
        if free.size == 0:
            return None
        y, x = divmod(int(free[rng.integers(0, free.size)]), overlap.shape[1])
    mask = np.zeros((height, width), np.uint8)
    mask[y:y + sh, x:x + sw] = shape
    return mask


def _far_colour(rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    """A rock colour far from every palette colour (the best of a few random candidates)."""
    candidates = rng.uniform(0.05, 0.95, (12, 3)).astype(np.float32)
    dist = np.linalg.norm(candidates[:, None, :] - palette[None, :, :], axis=2).min(axis=1)
    return candidates[int(np.argmax(dist))]


@lru_cache(maxsize=4)
def _noise_bank(seed: int, height: int, width: int) -> np.ndarray:
    """Unit Gaussian noise (4, 2H, 2W) for one seed (RGB sensor noise, rock grain); images take (H, W) crops
    at random offsets."""
    return np.random.default_rng([seed, 3]).standard_normal((4, 2 * height, 2 * width), dtype=np.float32)


def _paint_rock(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray, light: np.ndarray, contrast: float,
                grain: np.ndarray) -> None:
    """Paint a sun-lit rock over ``rgb`` (3, H, W) in place: a colour far from the palette, shaded from the
    light's side, grainier than the texture (``grain``: (H, W) unit noise), with a crisp dark outline;
    ``contrast`` blends it with what is underneath (0 leaves the camouflage texture)."""
    x, y, w, h = cv2.boundingRect(mask)
    x0, y0 = max(0, x - 1), max(0, y - 1)  # one pixel of margin: the outline is found inside the crop
    x, y, w, h = x0, y0, min(mask.shape[1], x + w + 1) - x0, min(mask.shape[0], y + h + 1) - y0
    crop = mask[y:y + h, x:x + w]
    ys, xs = np.nonzero(crop)
    cy, cx, reach = ys.mean(), xs.mean(), math.sqrt(ys.size / math.pi)
    gy = np.arange(h, dtype=np.float32)[:, None] - cy
    gx = np.arange(w, dtype=np.float32)[None, :] - cx
    shade = 1.0 + 0.25 * np.clip((gx * light[0] + gy * light[1]) / reach, -1.5, 1.5)
    rock = colour[:, None, None] * (shade * (1.0 + 0.06 * grain[y:y + h, x:x + w]))  # (3, h, w)
    rock = np.where(_ring(crop), 0.45 * colour[:, None, None], rock)  # crisp dark outline
    view = rgb[:, y:y + h, x:x + w]
    view[:] = np.where(crop.astype(bool), (1 - contrast) * view + contrast * rock, view)


def _ring(mask: np.ndarray) -> np.ndarray:
    """The 1-px inner boundary of a binary mask."""
    return (mask - cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)).astype(bool)


def render_seg_scene(seed: int, index: int, size: tuple[int, int] = (160, 128),
                     knobs: SegSynthKnobs | None = None) -> SegScene:
    """Render image ``index`` of the data set with ``seed`` (see the module docstring for the scene model).

    ``size`` is (width, height). Independent of how many images the data set has.
    """
    knobs = knobs or SegSynthKnobs()
    width, height = size
    scene = index // knobs.scene_images
    style = _scene_style(seed, scene)
    rng = np.random.default_rng([seed, index, 2])
    k = len(style.palette)

    # --- shapes: objects and rocks come from one distribution (shape, size, heat drawn independently of the
    # role), placed largest first so that crowded images still fit everything; a shape with no free spot is
    # shrunk, and left out (counted) only if even that fails
    n_obj = 0 if rng.random() < knobs.p_empty else int(rng.integers(1, knobs.max_objects + 1))
    n_dis = int(rng.integers(knobs.distractors[0], knobs.distractors[1] + 1))
    roles = ["object"] * n_obj + ["rock"] * n_dis
    rng.shuffle(roles)
    lo, hi = math.log(knobs.area[0]), math.log(knobs.area[1])
    drawn = [(role, *_unit_shape(rng), math.exp(rng.uniform(lo, hi)) * width * height,
              float(rng.uniform(*knobs.heat))) for role in roles]
    total = sum(d[3] for d in drawn) / (width * height)
    if total > _AREA_BUDGET:  # a crowded draw is scaled down as a whole (whatever the roles)
        drawn = [(r, kd, p, t * _AREA_BUDGET / total, h) for r, kd, p, t, h in drawn]
    drawn.sort(key=lambda d: -d[3])
    occupied = np.zeros((height, width), np.float32)
    gap_kernel = np.ones((2 * _GAP + 1, 2 * _GAP + 1), np.uint8)
    shapes: list[tuple[str, str, np.ndarray, float]] = []  # role, kind, mask, heat
    dropped = {"object": 0, "rock": 0}
    for role, kind, pts, target, heat in drawn:
        mask = None
        for attempt in range(_SHRINK_STEPS + 1):  # no free spot: try smaller (whatever the role)
            mask = _place(rng, pts, target * _SHRINK**attempt, occupied)
            if mask is not None:
                break
        if mask is None:
            dropped[role] += 1
            continue
        np.maximum(occupied, cv2.dilate(mask, gap_kernel), out=occupied)
        shapes.append((role, kind, mask, heat))
    obj_mask = np.zeros((height, width), np.uint8)
    rock_mask = np.zeros((height, width), np.uint8)
    for role, _, mask, _ in shapes:
        (obj_mask if role == "object" else rock_mask)[:] |= mask

    # --- RGB: camouflage texture, objects as a partly independent realisation of the same texture
    fields_ = _texture_fields(rng, 2 * (k + 1), height, width)
    background, independent = fields_[:k + 1], fields_[k + 1:]
    theta = knobs.texture_mix * math.pi / 2
    inside = obj_mask.astype(np.float32)
    mixed = background + inside * ((math.cos(theta) - 1) * background + math.sin(theta) * independent)
    rgb = _paint_texture(mixed, style.palette, knobs.texture_sharpness)  # (3, H, W)
    if knobs.boundary_shade > 0:  # shapes never touch, so the union's ring is every object's own ring
        rgb *= 1.0 - knobs.boundary_shade * _ring(obj_mask)
    # sensor noise (and the rocks' grain) from a per-seed bank at a random offset: iid noise, independent of
    # the scene, and much cheaper than drawing it per image
    bank = _noise_bank(seed, height, width)
    dy, dx = int(rng.integers(0, height)), int(rng.integers(0, width))
    noise = bank[:, dy:dy + height, dx:dx + width]
    for role, _, mask, _ in shapes:
        if role == "rock" and knobs.distractor_contrast > 0:
            _paint_rock(rgb, mask, _far_colour(rng, style.palette), style.light, knobs.distractor_contrast,
                        bank[3, dy:dy + height, dx:dx + width])
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    rgb = rgb * (1.0 + style.illum_tilt[0] * xs + style.illum_tilt[1] * ys) + knobs.rgb_noise * noise[:3]
    rgb_u8 = np.ascontiguousarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))

    # --- thermal: warm blobs (objects and rocks alike) at low resolution, blurred, noisy
    temp = np.full((height, width), style.ambient, np.float32)
    for _, _, mask, heat in shapes:
        temp += heat * mask
    ds = knobs.thermal_downsample
    low_w, low_h = max(1, round(width / ds)), max(1, round(height / ds))
    low = cv2.resize(temp, (low_w, low_h), interpolation=cv2.INTER_AREA) if ds > 1 else temp
    # the ground's smooth temperature variation, drawn directly at the thermal resolution
    low = low + knobs.ambient_variation * _gaussian_fields(rng, 1, low_h, low_w, ds)[0]
    if knobs.thermal_blur > 0:
        low = cv2.GaussianBlur(low, (0, 0), knobs.thermal_blur, borderType=cv2.BORDER_REFLECT)
    low = low + knobs.thermal_noise * rng.standard_normal(low.shape, dtype=np.float32)
    thermal = cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR) if ds > 1 else low
    thermal_u8 = np.clip(thermal * 255 + 0.5, 0, 255).astype(np.uint8)

    stem = f"scene{scene:04d}_{index:06d}"
    meta = {
        "stem": stem, "scene": scene,
        "objects": [{"shape": kind, "area": round(float(m.sum()) / (width * height), 4), "heat": round(h, 4)}
                    for role, kind, m, h in shapes if role == "object"],
        "distractors": [{"shape": kind, "area": round(float(m.sum()) / (width * height), 4), "heat": round(h, 4)}
                        for role, kind, m, h in shapes if role == "rock"],
        "not_placed": dropped,
    }
    return SegScene(stem, rgb_u8, thermal_u8, obj_mask, rock_mask, meta)


# ------------------------------------------------------------------------------------------- output
def _check_args(images: Any, size: Any, seed: Any) -> tuple[int, int]:
    if not _is_int(images) or images < 1:
        raise DataError(f"synthetic segmentation data: images must be an integer >= 1, got {images!r}")
    try:
        width, height = (int(v) for v in size)
        ok = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"synthetic segmentation data: size must be (width, height), got {size!r}") from None
    if not ok or width < 32 or height < 32:
        raise DataError(f"synthetic segmentation data: size must be whole pixels >= 32x32 (width, height), "
                        f"got {size!r}")
    if not _is_int(seed) or seed < 0:
        raise DataError(f"synthetic segmentation data: seed must be an integer >= 0, got {seed!r}")
    return width, height


def modalities_hint() -> list[dict[str, Any]]:
    """``data.modalities`` entries for a generated data set: folder sources, explicit 8-bit scales."""
    from crossattentiondet.config import default_modalities

    out = []
    for m in default_modalities():
        if m.name in MODALITY_NAMES:
            entry = m.model_dump(mode="json")
            entry.update(source=m.name, scale=255.0)
            out.append(entry)
    return out


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over ``synth.json`` image records: objects, rocks, empty masks, sizes."""
    n = max(1, len(records))
    objects = [o for r in records for o in r["objects"]]
    rocks = [d for r in records for d in r["distractors"]]
    return {
        "images": len(records),
        "scenes": len({r["scene"] for r in records}),
        "empty_masks": sum(not r["objects"] for r in records),
        "objects_per_image": round(len(objects) / n, 3),
        "distractors_per_image": round(len(rocks) / n, 3),
        "mean_object_area": round(float(np.mean([o["area"] for o in objects])), 4) if objects else 0.0,
        "mean_distractor_area": round(float(np.mean([d["area"] for d in rocks])), 4) if rocks else 0.0,
        "foreground_share": round(sum(o["area"] for o in objects) / n, 4),
        "not_placed": {role: sum(r["not_placed"][role] for r in records) for role in ("object", "rock")},
    }


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete images of an earlier, larger run in the same folder (only generator-named PNGs)."""
    for sub in SUBDIRS:
        for path in (out / sub).iterdir():
            if path.suffix == ".png" and STEM_PATTERN.match(path.stem) and path.stem not in keep:
                path.unlink()


def generate_seg_dataset(out: Path, images: int = 240, size: tuple[int, int] = (160, 128), seed: int = 0,
                         **knobs: Any) -> Path:
    """Write ``images`` synthetic camouflaged RGB + thermal scenes with masks to ``out``; return ``out``.

    ``size`` is (width, height). ``knobs`` are :class:`SegSynthKnobs` fields (how hard each modality is).
    Layout: ``rgb/``, ``thermal/``, ``masks/`` PNGs (all 8-bit) and ``synth.json``. Same arguments ->
    byte-identical files. Raises :class:`~crossattentiondet.errors.DataError` for bad arguments.
    """
    width, height = _check_args(images, size, seed)
    unknown = sorted(set(knobs) - {f.name for f in fields(SegSynthKnobs)})
    if unknown:
        raise DataError(f"synthetic segmentation data: unknown knob(s) {', '.join(unknown)}; known: "
                        f"{', '.join(f.name for f in fields(SegSynthKnobs))}")
    settings = SegSynthKnobs(**knobs)
    images, seed = int(images), int(seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: synthetic data output must be a folder, this is a file")
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    def make(index: int) -> dict[str, Any]:
        scene = render_seg_scene(seed, index, (width, height), settings)
        for sub, array in (("rgb", scene.rgb), ("thermal", scene.thermal), ("masks", scene.mask)):
            write_png(out / sub / f"{scene.stem}.png", array)
        return scene.meta

    # two threads: OpenCV, the FFT and large numpy operations release the GIL, so rendering one image overlaps
    # encoding another; every image has its own generator, so the files do not depend on the scheduling
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        records = list(pool.map(make, range(images)))
    _remove_stale(out, {r["stem"] for r in records})
    atomic_write_json(out / "synth.json", {
        "generator": "crossattentiondet.segmentation.synth", "task": "segment", "version": SEG_SYNTH_VERSION,
        "params": {"images": images, "size": [width, height], "seed": seed},
        "knobs": {name: list(v) if isinstance(v, tuple) else v for name, v in asdict(settings).items()},
        "layout": "folders", "masks": "masks",
        "class_names": list(CLASS_NAMES),
        # ready-made ``data.modalities`` entries (valid ModalityConfig fields) for this layout
        "modalities": modalities_hint(),
        "dtypes": {"rgb": "uint8", "thermal": "uint8", "masks": "uint8"},
        "summary": summarize(records),
        "images": records,
    })
    return out


# ------------------------------------------------------------------------------------------- baselines
def pixel_baselines(scenes: list[SegScene]) -> dict[str, float]:
    """Best-threshold per-pixel foreground IoU (pooled over all pixels) of trivial rules, no learning.

    ``thermal``: thermal > t; ``rgb``: the best of R, G, B and luminance, either side of a threshold;
    ``fused``: thermal > t and the pixel's colour within d of its image's median colour (rocks are not);
    ``all_foreground``: everything predicted object (chance level). Every threshold is tried and the best
    kept, on these scenes themselves (an optimistic bound for each rule): the numbers describe the design,
    not a model.
    """
    mask = np.stack([s.mask for s in scenes]).astype(bool).ravel()
    thermal = np.stack([s.thermal for s in scenes]).ravel()
    rgb = np.stack([s.rgb for s in scenes])
    luma = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    median = np.median(rgb.reshape(len(scenes), -1, 3), axis=1)[:, None, None, :]
    colour_dist = np.linalg.norm(rgb.astype(np.float32) - median, axis=3).ravel()
    out = {"all_foreground": float(mask.mean()), "thermal": _best_threshold_iou(thermal, mask)}
    out["rgb"] = max(_best_threshold_iou(c.ravel(), mask) for c in (rgb[..., 0], rgb[..., 1], rgb[..., 2], luma))
    out["fused"] = max(_best_threshold_iou(thermal, mask, colour_dist < d) for d in (30.0, 45.0, 60.0, 80.0, 100.0))
    return out


def _best_threshold_iou(score: np.ndarray, mask: np.ndarray, gate: np.ndarray | None = None) -> float:
    """Best IoU of ``score > t`` or ``score <= t`` (within ``gate``) against ``mask`` over all 256 levels of an
    8-bit score: histograms of the positives and negatives give every threshold's counts at once."""
    keep = np.ones_like(mask) if gate is None else gate
    pos = np.bincount(score[mask & keep], minlength=256).astype(np.float64)
    neg = np.bincount(score[~mask & keep], minlength=256).astype(np.float64)
    positives = float(mask.sum())  # positives outside the gate are missed by every threshold
    best = 0.0
    for tp, fp in ((np.cumsum(pos[::-1]), np.cumsum(neg[::-1])), (np.cumsum(pos), np.cumsum(neg))):
        best = max(best, float(np.max(tp / np.maximum(1.0, fp + positives))))
    return best


def _main(argv: list[str]) -> None:
    """Speed and baselines: ``python -m crossattentiondet.segmentation.synth [IMAGES [OUT]]``."""
    import tempfile

    images = int(argv[0]) if argv else 240
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(argv[1]) if len(argv) > 1 else Path(tmp)
        start = time.perf_counter()
        generate_seg_dataset(target, images, seed=0)
        elapsed = time.perf_counter() - start
        summary = json.loads((target / "synth.json").read_text(encoding="utf-8"))["summary"]
    print(json.dumps(summary, indent=2))
    print(f"{images} images in {elapsed:.2f} s = {images / elapsed:.0f} images/s (including writing)")
    scenes = [render_seg_scene(0, i) for i in range(images)]  # the same images, in memory
    print(json.dumps({k: round(v, 3) for k, v in pixel_baselines(scenes).items()}))


if __name__ == "__main__":
    _main(sys.argv[1:])
