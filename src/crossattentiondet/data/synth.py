"""Synthetic RGB + thermal + event scenes where each modality carries different, partial evidence.

The built-in data set (used when ``data.root`` is not set, and by the demo, tests and benchmarks). It is
designed so that fusing modalities *must* pay off: every labelled object is visible in at least one
modality, and each single modality misses a substantial share of the objects, so a detector that sees all
three modalities can beat every single-modality detector by a clear margin.

Scene model
-----------
A data set is a series of *sequences* (video clips of 10-20 frames from a static camera). A sequence fixes
the scene (background, lighting, fog, street lamps, hot distractors, sensor noise levels) and a set of
objects with trajectories; objects move a little between frames (moving ones 1.5-3 px/frame, bouncing
off the borders), so neighbouring frames are near-duplicates and splits must group by sequence (stems
``seq003_000017`` = sequence 3, frame 17 of the data set).

Classes differ by shape and aspect (width / height), in whichever modality sees them:

==========  ======  ===================================================================
pedestrian  0.38    head circle, torso ellipse, two legs (tall)
car         2.1     rounded body, rounded cabin, two wheels (wide)
cyclist     0.9     two wheel rings, frame, rider torso and head
truck       2.6     cargo box, separate cab, three wheels (very wide)
animal      1.6     body ellipse, head circle, four thin legs
==========  ======  ===================================================================

(``classes=K`` uses the first K). Sizes: 30 % of the objects drawn small (sqrt(area) 8-28 px, narrowest
side ~5-6 px), the rest log-uniform from 32 px to 0.55 x the shorter image side; trucks 1.25x, animals
0.75x. Objects of a sequence never overlap by more than 15 % of the smaller box (small ones fit more
easily, so about half of the placed objects are COCO "small", area < 32^2). 6 % of the sequences are
empty (negative frames, empty label files); the others have 1-6 objects.

Evidence rules (independent per-object attributes ``hot`` 55 %, ``moving`` 62 %, ``lit`` 35 %):

* **RGB** (8-bit) draws every object with a colour whose luminance differs clearly from the background
  where it starts, then applies the sequence's lighting and fog: day (55 %, light 0.7-1) or night (45 %,
  light 0.03-0.1, pools of light under street lamps, lamp heads glowing, more sensor noise); ``lit``
  objects (headlights, lamps) stay bright at night. Fog (30 % of sequences, density 0.6-0.95) is a
  drifting, patchy veil, densest at the horizon, that washes out objects in its dense parts. So RGB sees
  objects by daylight outside dense fog and lit objects at night, and misses unlit objects at night and
  objects in fog.
* **Thermal** (14-bit counts 0-16383 in a 16-bit file; 8-bit in the npy layout) shows ``hot`` objects
  0.12-0.3 (of full scale) warmer than the ground where they start, with hotter parts (heads, wheels,
  cab); cold objects are at ambient temperature and invisible. Unlabelled hot distractors without the
  class shapes: lamp heads, round blobs (manholes, exhausts), heated pipes, warm windows; an uneven,
  sun-warmed background; blur, temporal and column (fixed-pattern) noise as in microbolometers.
* **Event** (8-bit accumulated event frame: 128 = no event, brighter = positive, darker = negative
  polarity, 40 per event) fires where the log-intensity changes by more than the sensor threshold
  between the previous and the current frame: edges (and inner parts) of ``moving`` objects only; static
  objects are invisible. Events do not depend on lighting or fog (the sensor's high dynamic range). Clutter:
  salt noise, hot pixels, flickering lamps, foliage moving in the wind.

Attributes are independent, except one fix-up: an object that is neither hot nor moving and whose
predicted RGB contrast is not safely (2.5x) above the visibility threshold all along its trajectory is
made moving (75 %) or hot (25 %), so that every labelled object is observable. Hot distractors are kept
off the objects' paths. Visibility is then *measured* on the rendered frames, not assumed: an object's
RGB and thermal evidence is the mean absolute change it makes to the noise-free image over its pixels
(the frame rendered with vs without it); visible at >= 0.08 of full scale and >= 3x the noise level for
RGB, >= 0.06 for thermal. Its event evidence is the share of its outline covered by object-caused events
(visible at >= 0.3). The rare object measured invisible in all three modalities (a hot object crossing
warm ground, 6 of 10,287 objects in the measurement below) is left unlabelled and counted
(``unobservable_dropped``). ``synth.json`` holds the parameters, these measurements for every object of
every frame (attributes, evidence, visibility) and a summary.

Measured (``python -m crossattentiondet.data.synth 3000``: 3000 frames, 160x128, 5 classes, seed 0):
10,281 labelled objects (3.4 per frame, 111 empty frames, 2.8 hot distractors per frame), 52 % COCO-small.

=====================  =====  =======  =====
visible in             RGB    thermal  event
=====================  =====  =======  =====
all objects            67.5%  63.7%    60.4%
small objects          68.1%  63.4%    57.3%
only in this modality  9.3%   10.4%    11.8%
=====================  =====  =======  =====

So each modality misses 32-40 % of the objects, and every labelled object is seen by at least one
(31 % by exactly one, 45 % by two, 23 % by all three). RGB by condition: clear day 100 %, foggy day 64 %,
lit objects at night 85 %, unlit at night 24 % (lamp pools only), foggy night 21 %. Thermal: hot 99.2 %,
cold 0 %; event: moving 99.9 %, static 0.1 %.

Fusion pays off in practice: a tiny dual-stream MiT (dims 16-128, depth 1 per stage) + FPN + Faster
R-CNN trained from scratch for 12 epochs (~6 CPU-minutes, 1 thread) on 300 frames (seed 1, 3 classes),
tested on 150 frames (seed 2), with flip / scale / crop augmentation, the single-modality models zeroing
the other modalities: all modalities (plus modality dropout 0.3) mAP 0.273 (AP50 0.465); thermal only
0.195 (0.344); event only 0.142 (0.232); RGB only 0.118 (0.227). One seed each: treat the margins as
indicative, not as confidence intervals.

Output formats
--------------
* ``npy`` (the original project's layout): ``images/<stem>.npy`` (H, W, 5) uint8 = RGB, thermal, event;
  ``labels/<stem>.txt`` YOLO ``class xc yc w h`` (normalised, 0-based ids; empty file = no objects);
  ``classes.txt``. Use :func:`~crossattentiondet.config.default_modalities`.
* ``folders``: ``rgb/<stem>.png`` (8-bit RGB), ``thermal/<stem>.png`` (16-bit, 14-bit counts 0-16383:
  use ``scale: 16383`` for the thermal modality), ``event/<stem>.png`` (8-bit), ``labels/<stem>.txt``,
  ``classes.txt``. ``synth.json`` ``modalities`` holds ready-made ``data.modalities`` entries for either
  layout (the folders ones with explicit scales 255 / 16383 / 255).

Deterministic: each sequence draws from its own generator seeded by (seed, sequence), each frame's noise
from (seed, sequence, frame) and a shared noise bank seeded by the seed, so the same seed gives
byte-identical files and a frame does not depend on how many frames are generated in total.
Vectorised numpy / OpenCV drawing, no per-pixel Python loops: on one core of the 2-core development
machine ~250 frames/s in the npy layout and ~180 frames/s in the folders layout (PNG encoding), writing
included, at 160x128 - about 15,000 and 11,000 frames per minute.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json, atomic_write_text

CLASS_NAMES: tuple[str, ...] = ("pedestrian", "car", "cyclist", "truck", "animal")
_ASPECT = (0.38, 2.1, 0.9, 2.6, 1.6)  # width / height per class
_SIZE_FACTOR = (1.0, 1.0, 1.0, 1.25, 0.75)
FORMATS = ("npy", "folders")
THERMAL_MAX = 16383  # 14-bit sensor counts stored in 16-bit files (folders format)
EVENT_NEUTRAL = 128
_EVENT_STEP = 40  # event-frame value change per accumulated event
_THERMAL_BLUR = 1.0  # Gaussian sigma (px): thermal optics resolve less than the RGB camera
_THERMAL_NOISE = 0.012  # temporal noise (0-1 scale)
_EVENT_THRESHOLD = 0.12  # log-intensity contrast threshold of the event sensor

# Visibility thresholds of the measurement (on the 0-1 scale of each modality's noise-free render).
RGB_MIN_CONTRAST = 0.08
THERMAL_MIN_CONTRAST = 0.06
EVENT_MIN_EDGE_SHARE = 0.3

# Attribute probabilities (before the observability fix-up).
P_HOT, P_MOVING, P_LIT = 0.55, 0.62, 0.35
P_NIGHT, P_FOG, P_SMALL, P_EMPTY = 0.45, 0.3, 0.3, 0.06
P_FORCE_HOT = 0.25  # share of fixed-up objects made hot (the others are made moving)
RELIABLE_MARGIN = 2.5  # predicted RGB contrast needed, in multiples of the visibility threshold

_SHIFT = 4  # OpenCV sub-pixel drawing: coordinates in 1/16 px, so slow motion still moves edges
_S = 1 << _SHIFT
_STEM = re.compile(r"^seq\d+_\d+$")


# ------------------------------------------------------------------------------------------- scene
@dataclass
class _Object:
    cls: int
    w: float
    h: float
    traj: np.ndarray  # (T + 1, 2) top-left x, y; row 0 is the position before the first frame
    hot: bool
    moving: bool
    lit: bool
    flip: bool
    colour: np.ndarray  # RGB reflectance of the body
    detail_colour: np.ndarray
    temp: float  # thermal intensity (0-1) of the body when hot
    lum: float  # luminance seen by the event sensor
    forced: str | None = None  # attribute set by the observability fix-up


@dataclass
class _Lamp:
    x: float
    y: float
    radius: float
    flicker: bool


@dataclass
class _Sequence:
    index: int
    length: int
    night: bool
    light: float
    fog_density: float
    fog_drift: float
    fog_big: np.ndarray  # (H, W + pad) fog field, cropped with a per-frame offset
    haze_big: np.ndarray  # (H, W + pad, 3) light scattered by the fog (airlight x fog)
    rgb_bg: np.ndarray  # (H, W, 3) reflectance
    illum: np.ndarray  # (H, W) static illumination (global light + lamp pools)
    emissive: np.ndarray  # (H, W, 3) light sources seen by the RGB camera
    thermal_bg: np.ndarray  # (H, W) 0-1
    thermal_empty: np.ndarray  # (H, W) the blurred thermal background: reference for thermal evidence
    event_lum: np.ndarray  # (H, W) luminance of the static scene for the event sensor
    foliage: np.ndarray  # (H, W) bool, pixels moving in the wind
    hot_pixels: np.ndarray  # (K,) flat indices of always-firing event pixels
    event_noise: float
    column_noise: np.ndarray  # (W,) thermal fixed-pattern noise
    lamps: list[_Lamp]
    objects: list[_Object] = field(default_factory=list)
    distractors: dict[str, int] = field(default_factory=dict)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled with cubic interpolation."""
    grid = rng.random((cells[1], cells[0])).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _make_background(rng: np.random.Generator, width: int, height: int, night: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Static RGB reflectance, thermal intensity, foliage mask and the horizon row of one scene."""
    horizon = int(height * rng.uniform(0.3, 0.5))
    rows = np.arange(height, dtype=np.float32)[:, None]
    sky_top, sky_low = rng.uniform(0.45, 0.75, 3), rng.uniform(0.6, 0.85, 3)
    sky_top[2] = max(sky_top[2], sky_top[0] + 0.1)  # bluish
    ground = rng.uniform(0.3, 0.55) + rng.uniform(-0.05, 0.05, 3)
    t = np.clip(rows / max(horizon, 1), 0, 1)[..., None]
    sky = sky_top * (1 - t) + sky_low * t
    rgb = np.where(rows[..., None] < horizon, sky, ground).astype(np.float32)
    rgb = np.broadcast_to(rgb, (height, width, 3)).copy()
    tex = _smooth_noise(rng, height, width, (6, 5))[..., None] - 0.5
    rgb += 0.12 * tex * (rows[..., None] >= horizon)
    thermal = np.where(rows < horizon, rng.uniform(0.12, 0.22), rng.uniform(0.32, 0.45)).astype(np.float32)
    thermal = np.broadcast_to(thermal, (height, width)).copy()
    thermal += 0.14 * (_smooth_noise(rng, height, width, (7, 5)) - 0.5)
    if not night:  # sun-warmed road
        thermal += 0.05 * (rows >= horizon)
    # buildings on the horizon, with windows (some warm in thermal)
    x = int(rng.integers(-10, 10))
    while x < width:
        bw = int(rng.integers(max(8, width // 12), max(12, width // 4)))
        top = int(rng.integers(max(0, horizon - height // 3), max(1, horizon - 4)))
        if rng.random() < 0.75:
            shade = rng.uniform(0.25, 0.7) + rng.uniform(-0.06, 0.06, 3)
            x0, x1 = max(x, 0), min(x + bw, width)
            rgb[top:horizon, x0:x1] = shade
            thermal[top:horizon, x0:x1] = rng.uniform(0.25, 0.38)
            step = max(3, bw // 4)
            for wy in range(top + 2, horizon - 3, step):
                for wx in range(x0 + 2, x1 - 2, step):
                    win = shade * rng.uniform(0.4, 1.4)
                    rgb[wy:wy + 2, wx:wx + 2] = np.clip(win, 0, 1)
                    if rng.random() < 0.3:  # a heated room: unlabelled warm square
                        thermal[wy:wy + 2, wx:wx + 2] += rng.uniform(0.1, 0.2)
        x += bw + int(rng.integers(0, max(2, width // 10)))
    # lane markings
    lane_y = int(rng.uniform(horizon + 0.3 * (height - horizon), height - 3))
    dash = int(rng.integers(6, 14))
    for lx in range(int(rng.integers(0, dash)), width, 2 * dash):
        rgb[lane_y:lane_y + 2, lx:lx + dash] = 0.85
    # foliage: green blobs near the horizon that sway in the wind (event clutter)
    foliage = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = int(rng.integers(0, width)), int(horizon + rng.integers(-6, 6))
        axes = (int(rng.integers(4, 14)), int(rng.integers(3, 9)))
        cv2.ellipse(foliage, (cx, cy), axes, 0, 0, 360, 1, -1)
    leaf = foliage.astype(bool)
    rgb[leaf] = np.array([0.15, 0.45, 0.15], np.float32) * rng.uniform(0.6, 1.2)
    rgb += rng.normal(0.0, 0.015, rgb.shape).astype(np.float32)  # fine static texture
    return np.clip(rgb, 0, 1), thermal, leaf, horizon


def _object_masks(obj: _Object, pos: np.ndarray, height: int, width: int
                  ) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]:
    """Anti-aliased body and detail masks (float 0-1) of ``obj`` at ``pos`` in a local patch.

    Returns ((y0, y1, x0, x1), body, detail): the patch's slice of the frame and the two masks.
    """
    x, y = float(pos[0]), float(pos[1])
    ix, iy = int(math.floor(x)) - 2, int(math.floor(y)) - 2
    pw, ph = int(math.ceil(obj.w)) + 5, int(math.ceil(obj.h)) + 5
    body = np.zeros((ph, pw), np.uint8)
    detail = np.zeros((ph, pw), np.uint8)
    ox, oy, w, h = x - ix, y - iy, obj.w, obj.h

    def px(u: float, v: float) -> tuple[float, float]:
        return ox + ((1.0 - u) if obj.flip else u) * w, oy + v * h

    def fix(p: tuple[float, float]) -> tuple[int, int]:
        return int(round(p[0] * _S)), int(round(p[1] * _S))

    def ellipse(canvases: tuple[np.ndarray, ...], u: float, v: float, au: float, av: float) -> None:
        for c in canvases:
            cv2.ellipse(c, fix(px(u, v)), (max(1, round(au * w * _S)), max(1, round(av * h * _S))),
                        0, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)

    def circle(canvases: tuple[np.ndarray, ...], u: float, v: float, r: float, thick: int = -1) -> None:
        for c in canvases:
            cv2.circle(c, fix(px(u, v)), max(1, round(r * _S)), 255, thick, cv2.LINE_AA, _SHIFT)

    def poly(canvases: tuple[np.ndarray, ...], pts: list[tuple[float, float]]) -> None:
        arr = np.array([fix(p) for p in pts], np.int32)
        for c in canvases:
            cv2.fillPoly(c, [arr], 255, cv2.LINE_AA, _SHIFT)

    def rect(canvases: tuple[np.ndarray, ...], u0: float, v0: float, u1: float, v1: float, r: float = 0.0) -> None:
        (xa, ya), (xb, yb) = px(u0, v0), px(u1, v1)
        xa, xb = min(xa, xb), max(xa, xb)
        r = min(r, (xb - xa) / 2, (yb - ya) / 2)
        if r < 0.5:
            poly(canvases, [(xa, ya), (xb, ya), (xb, yb), (xa, yb)])
            return
        pts = []
        for cx, cy, a0 in ((xb - r, ya + r, -90), (xb - r, yb - r, 0), (xa + r, yb - r, 90), (xa + r, ya + r, 180)):
            for k in range(4):
                a = math.radians(a0 + 30 * k)
                pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        poly(canvases, pts)

    both, b = (body, detail), (body,)
    if obj.cls == 0:  # pedestrian
        circle(both, 0.5, 0.11, 0.11 * h)
        ellipse(b, 0.5, 0.42, 0.5, 0.22)
        rect(b, 0.16, 0.56, 0.46, 1.0)
        rect(b, 0.54, 0.56, 0.84, 1.0)
    elif obj.cls == 1:  # car
        rect(b, 0.0, 0.35, 1.0, 0.82, 0.15 * h)
        rect(b, 0.2, 0.0, 0.78, 0.45, 0.15 * h)
        r = 0.19 * h
        circle(both, r / w + 0.03, 1.0 - r / h, r)
        circle(both, 0.97 - r / w, 1.0 - r / h, r)
    elif obj.cls == 2:  # cyclist
        r = min(0.22 * w, 0.24 * h)
        thick = max(1, round(0.3 * r))
        circle(b, r / w, 1.0 - r / h, r - thick / 2, thick)
        circle(b, 1.0 - r / w, 1.0 - r / h, r - thick / 2, thick)
        rect(b, r / w, 1.0 - r / h - 0.05, 1.0 - r / w, 1.0 - r / h + 0.02)
        poly(b, [px(0.45, 0.55), px(0.58, 0.55), px(0.62, 1.0 - r / h), px(0.4, 1.0 - r / h)])
        ellipse(b, 0.5, 0.4, 0.14, 0.2)
        circle(both, 0.5, 0.11, 0.1 * h)
    elif obj.cls == 3:  # truck
        rect(b, 0.0, 0.0, 0.7, 0.85)
        rect(both, 0.73, 0.3, 1.0, 0.85, 0.1 * h)
        r = 0.15 * h
        for u in (0.15, 0.52, 0.86):
            circle(both, u, 1.0 - r / h, r)
    else:  # animal
        ellipse(b, 0.45, 0.45, 0.36, 0.22)
        circle(both, 0.86, 0.28, min(0.14 * w, 0.2 * h))
        for u in (0.16, 0.3, 0.56, 0.68):
            rect(b, u, 0.55, u + 0.07, 1.0)
        rect(b, 0.0, 0.3, 0.12, 0.38)  # tail
    y0, x0 = iy, ix
    y1, x1 = iy + ph, ix + pw
    # clip the patch to the frame (objects stay inside by construction; this is a safety margin)
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
    sl = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    scale = np.float32(1.0 / 255.0)
    return (cy0, cy1, cx0, cx1), body[sl].astype(np.float32) * scale, detail[sl].astype(np.float32) * scale


def _sample_size(rng: np.random.Generator, cls: int, width: int, height: int) -> tuple[float, float]:
    short = min(width, height)
    if rng.random() < P_SMALL:
        s = math.exp(rng.uniform(math.log(8.0), math.log(28.0)))
    else:
        hi = max(34.0, 0.55 * short)
        s = math.exp(rng.uniform(math.log(32.0), math.log(hi)))
    s *= _SIZE_FACTOR[cls]
    a = _ASPECT[cls]
    w, h = s * math.sqrt(a), s / math.sqrt(a)
    shrink = min(1.0, 0.8 * width / w, 0.8 * height / h)
    return w * shrink, h * shrink


def _trajectory(rng: np.random.Generator, cls: int, w: float, h: float, moving: bool, frames: int,
                width: int, height: int) -> np.ndarray:
    lo = np.array([1.0, 1.0])
    hi = np.array([width - w - 1.0, height - h - 1.0])
    pos = lo + rng.random(2) * np.maximum(hi - lo, 0.0)
    out = np.empty((frames + 1, 2))
    if not moving:
        out[:] = pos
        return out
    speed = rng.uniform(1.5, 3.0) * max(1.0, min(width, height) / 128) ** 0.5
    # vehicles drive roughly horizontally; pedestrians and animals walk anywhere
    angle = rng.uniform(-0.3, 0.3) + (math.pi if rng.random() < 0.5 else 0.0) if cls in (1, 2, 3) \
        else rng.uniform(0, 2 * math.pi)
    vel = speed * np.array([math.cos(angle), math.sin(angle)])
    for t in range(frames + 1):
        out[t] = pos
        pos = pos + vel
        for k in range(2):  # bounce off the borders
            if pos[k] < lo[k] or pos[k] > hi[k]:
                vel[k] = -vel[k]
                pos[k] = min(max(pos[k], lo[k]), hi[k])
    return out


def _overlaps(a: np.ndarray, aw: float, ah: float, b: np.ndarray, bw: float, bh: float) -> bool:
    """True when two trajectories' boxes overlap by > 15 % of the smaller box at any frame."""
    ix = np.clip(np.minimum(a[:, 0] + aw, b[:, 0] + bw) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 1] + ah, b[:, 1] + bh) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    return bool(np.any(ix * iy > 0.15 * min(aw * ah, bw * bh)))


def _fog_at(seq: _Sequence, t: int, width: int, field: np.ndarray | None = None) -> np.ndarray:
    """The fog field (or ``field``) of frame ``t``: a window sliding over the sequence's wider field."""
    off = int(round(t * seq.fog_drift))
    return (seq.fog_big if field is None else field)[:, off:off + width]


def _make_sequence(seed: int, index: int, width: int, height: int, classes: int) -> _Sequence:
    rng = np.random.default_rng([seed, index])
    length = int(rng.integers(10, 21))
    night = bool(rng.random() < P_NIGHT)
    light = float(rng.uniform(0.03, 0.1) if night else rng.uniform(0.7, 1.0))
    rgb_bg, thermal_bg, foliage, horizon = _make_background(rng, width, height, night)
    # fog: a veil denser towards the horizon, with drifting patches
    fog_density = float(rng.uniform(0.6, 0.95)) if rng.random() < P_FOG else float(rng.uniform(0.0, 0.1))
    fog_drift = float(rng.uniform(0.0, 1.5))
    pad = int(math.ceil(fog_drift * 21)) + 1
    rows = np.arange(height, dtype=np.float32)[:, None]
    depth = np.clip(1.0 - np.abs(rows - horizon) / height, 0, 1)
    patches = _smooth_noise(rng, height, width + pad, (5, 3))
    fog_big = np.clip(fog_density * (0.2 + 0.5 * depth + 0.7 * patches), 0, 0.97).astype(np.float32)

    illum = np.full((height, width), light, np.float32)
    emissive = np.zeros((height, width, 3), np.float32)
    lamps: list[_Lamp] = []
    for _ in range(int(rng.integers(0, 4))):
        lx, ly = float(rng.uniform(0, width)), float(rng.uniform(0.05, 0.6) * height)
        lamp = _Lamp(lx, ly, float(rng.uniform(1.5, 3.0)), bool(rng.random() < 0.5))
        lamps.append(lamp)
        cv2.line(rgb_bg, (int(lx), int(ly)), (int(lx), height), (0.3, 0.3, 0.32), 1)
        cv2.circle(thermal_bg, (int(lx), int(ly)), int(round(lamp.radius)), float(rng.uniform(0.7, 0.95)), -1,
                   cv2.LINE_AA)
        if night:
            cv2.circle(emissive, (int(lx), int(ly)), int(round(lamp.radius)), (1.0, 0.9, 0.6), -1, cv2.LINE_AA)
            # a pool of light on the ground below the lamp
            gy = float(min(height - 1, ly + rng.uniform(0.3, 0.6) * height))
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
            sigma = rng.uniform(0.08, 0.16) * width
            illum += 0.6 * np.exp(-((xx - lx) ** 2 + (yy - gy) ** 2) / (2 * sigma**2))
    illum = np.clip(illum, 0, 1)

    # objects: placed so that trajectories do not overlap
    count = 0 if rng.random() < P_EMPTY else int(rng.integers(1, 7))
    objects: list[_Object] = []
    event_lum_bg = _luminance(rgb_bg)
    for _ in range(count):
        for _attempt in range(30):
            cls = int(rng.integers(0, classes))
            w, h = _sample_size(rng, cls, width, height)
            hot, moving, lit = bool(rng.random() < P_HOT), bool(rng.random() < P_MOVING), bool(rng.random() < P_LIT)
            traj = _trajectory(rng, cls, w, h, moving, length, width, height)
            if not any(_overlaps(traj, w, h, o.traj, o.w, o.h) for o in objects):
                break
        else:
            continue
        cx, cy = traj[1, 0] + w / 2, traj[1, 1] + h / 2
        local = rgb_bg[int(cy), int(cx)]
        bg_lum = float(_luminance(local))
        # a colour whose luminance differs clearly from the background where the object starts
        if bg_lum > 0.45:
            target = rng.uniform(0.04, max(0.05, bg_lum - 0.28))
        else:
            target = rng.uniform(min(0.9, bg_lum + 0.28), 0.95)
        base = rng.uniform(0.25, 1.0, 3)
        colour = np.clip(base * target / max(float(_luminance(base)), 1e-3), 0, 1).astype(np.float32)
        # hot objects are 0.12-0.3 warmer than the ground where they start: a contrast that varies a
        # little as they move over warmer or cooler ground
        temp = min(0.95, float(thermal_bg[int(cy), int(cx)]) + float(rng.uniform(0.12, 0.3)))
        obj = _Object(cls, w, h, traj, hot, moving, lit, bool(rng.random() < 0.5), colour,
                      (colour * 0.35).astype(np.float32), temp, float(_luminance(colour)))
        # observability fix-up: an object that is neither hot nor moving must have reliable RGB evidence
        # all along its trajectory (predicted contrast, with a safety margin for anti-aliasing, detail
        # parts and noise), else it becomes hot or moving
        if not (obj.hot or obj.moving) and not _rgb_reliable(obj, rgb_bg, illum, fog_big, fog_drift, light):
            if rng.random() < P_FORCE_HOT:
                obj.hot, obj.forced = True, "hot"
            else:
                moving_traj = _trajectory(rng, cls, w, h, True, length, width, height)
                if any(_overlaps(moving_traj, w, h, o.traj, o.w, o.h) for o in objects):
                    obj.hot, obj.forced = True, "hot"
                else:
                    obj.moving, obj.traj, obj.forced = True, moving_traj, "moving"
        objects.append(obj)

    # static hot distractors (not labelled), kept off the objects' paths so they never hide or fake the
    # thermal evidence of a labelled object
    distractors = {"lamps": len(lamps), "blobs": 0, "pipes": 0}
    for _ in range(int(rng.integers(1, 6))):
        r = float(rng.uniform(2.0, 8.0) * max(1.0, min(width, height) / 128))
        x, y = float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r))
        if _clear_of_paths(objects, x - 2 * r, y - 2 * r, x + 2 * r, y + 2 * r):
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
            thermal_bg += float(rng.uniform(0.3, 0.5)) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r**2))
            distractors["blobs"] += 1
    for _ in range(int(rng.integers(0, 3))):
        y = int(rng.integers(horizon, height - 2))
        x0 = int(rng.integers(0, width // 2))
        x1 = int(min(width, x0 + rng.integers(width // 6, width // 2)))
        if _clear_of_paths(objects, x0, y - 2, x1, y + 3):
            thermal_bg[y:y + 2, x0:x1] += float(rng.uniform(0.25, 0.4))
            distractors["pipes"] += 1
    thermal_bg = np.clip(thermal_bg, 0, 1)

    hot_pixels = rng.choice(height * width, size=max(1, height * width // 1000), replace=False)
    return _Sequence(
        index=index, length=length, night=night, light=light, fog_density=fog_density, fog_drift=fog_drift,
        fog_big=fog_big, haze_big=_haze(fog_big, light), rgb_bg=rgb_bg, illum=illum, emissive=emissive,
        thermal_bg=thermal_bg, thermal_empty=cv2.GaussianBlur(thermal_bg, (0, 0), _THERMAL_BLUR),
        event_lum=event_lum_bg, foliage=foliage, hot_pixels=hot_pixels,
        event_noise=float(rng.uniform(0.003, 0.015)),
        column_noise=rng.normal(0.0, 0.006, width).astype(np.float32),
        lamps=lamps, objects=objects, distractors=distractors,
    )


def _clear_of_paths(objects: list[_Object], x0: float, y0: float, x1: float, y1: float) -> bool:
    """True when the rectangle stays 2 px away from every object's box along its whole trajectory."""
    for o in objects:
        ox0, oy0 = o.traj[:, 0].min() - 2, o.traj[:, 1].min() - 2
        ox1, oy1 = o.traj[:, 0].max() + o.w + 2, o.traj[:, 1].max() + o.h + 2
        if x0 < ox1 and ox0 < x1 and y0 < oy1 and oy0 < y1:
            return False
    return True


def _rgb_noise(light: float) -> float:
    """Standard deviation (0-1 scale) of the RGB sensor noise: higher gain, more noise in the dark."""
    return 0.008 + 0.025 * (1 - light)


def _haze(fog: np.ndarray, light: float) -> np.ndarray:
    """Airlight added by fog: bright in daylight, dim at night."""
    airlight = np.array([0.75, 0.77, 0.8], np.float32) * np.float32(0.25 + 0.75 * light)
    return fog[..., None] * airlight


def _rgb_reliable(obj: _Object, rgb_bg: np.ndarray, illum: np.ndarray, fog_big: np.ndarray, fog_drift: float,
                  light: float) -> bool:
    """Whether the object's predicted RGB contrast stays well above the visibility threshold (all frames)."""
    height, width = illum.shape
    need = RELIABLE_MARGIN * max(RGB_MIN_CONTRAST, 3 * _rgb_noise(light))
    centres = obj.traj[1:] + np.array([obj.w / 2, obj.h / 2])
    for t, (cx, cy) in enumerate(centres):
        xi, yi = min(int(cx), width - 1), min(int(cy), height - 1)
        bg_light = float(illum[yi, xi]) * 0.97
        obj_light = max(bg_light, 0.9 if obj.lit else 0.0)
        fog = float(fog_big[yi, int(round(t * fog_drift)) + xi])
        contrast = float(np.max(np.abs(obj.colour * obj_light - rgb_bg[yi, xi] * bg_light))) * (1 - fog)
        if contrast < need:
            return False
    return True


# ------------------------------------------------------------------------------------------- frames
@dataclass
class _Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    thermal: np.ndarray  # (H, W) float 0-1 (quantised per format)
    event: np.ndarray  # (H, W) uint8
    boxes: np.ndarray  # (N, 4) float xyxy
    classes: list[int]
    meta: dict[str, Any]


def _evidence(img: np.ndarray, background: np.ndarray, inside: np.ndarray) -> float:
    """How much an object changes the noise-free image: mean |render - render without objects| over its pixels.

    ``img`` and ``background`` are the object's patch; for colour images the per-pixel difference is the
    largest over the channels.
    """
    if not inside.any():
        return 0.0
    diff = np.abs(img - background)
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    return float(diff[inside].mean())


def _noise_bank(seed: int, width: int, height: int) -> np.ndarray:
    """Standard normal noise (2H, 2W, 4) shared by all frames of a data set (RGB channels + thermal)."""
    return np.random.default_rng([seed, 2**32 - 1]).standard_normal((2 * height, 2 * width, 4), dtype=np.float32)


def _render_frame(seq: _Sequence, t: int, seed: int, width: int, height: int, noise: np.ndarray) -> _Frame:
    rng = np.random.default_rng([seed, seq.index, t])
    # nearer (bigger) objects are drawn last
    order = sorted(range(len(seq.objects)), key=lambda k: seq.objects[k].w * seq.objects[k].h)
    refl = seq.rgb_bg.copy()
    light_drift = float(rng.uniform(0.97, 1.03))
    illum_bg = seq.illum * np.float32(light_drift)
    illum = illum_bg.copy()
    thermal = seq.thermal_bg.copy()
    lum_now = seq.event_lum.copy()
    lum_prev = seq.event_lum.copy()
    drawn = []
    for k in order:
        obj = seq.objects[k]
        sl, body, detail = _object_masks(obj, obj.traj[t + 1], height, width)
        y0, y1, x0, x1 = sl
        view = (slice(y0, y1), slice(x0, x1))
        m3 = body[..., None]
        d3 = detail[..., None]
        refl[view] = refl[view] * (1 - m3) + obj.colour * m3
        refl[view] = refl[view] * (1 - d3) + obj.detail_colour * d3
        if obj.lit:
            illum[view] = np.maximum(illum[view], 0.9 * body)
        if obj.hot:
            thermal[view] = thermal[view] * (1 - body) + obj.temp * body
            thermal[view] = thermal[view] * (1 - detail) + min(1.0, obj.temp + 0.12) * detail
        lum_detail = obj.lum * 0.35
        lum_now[view] = lum_now[view] * (1 - body) + obj.lum * body
        lum_now[view] = lum_now[view] * (1 - detail) + lum_detail * detail
        if obj.moving:
            psl, pbody, pdetail = _object_masks(obj, obj.traj[t], height, width)
        else:
            psl, pbody, pdetail = sl, body, detail
        py0, py1, px0, px1 = psl
        pview = (slice(py0, py1), slice(px0, px1))
        lum_prev[pview] = lum_prev[pview] * (1 - pbody) + obj.lum * pbody
        lum_prev[pview] = lum_prev[pview] * (1 - pdetail) + lum_detail * pdetail
        drawn.append((k, sl, body))

    # RGB: reflectance x illumination + light sources, then fog (airlight dims at night), then noise
    fog = _fog_at(seq, t, width)[..., None]
    haze = _fog_at(seq, t, width, seq.haze_big)
    rgb_clean = refl * (illum[..., None] * (1 - fog))
    rgb_clean += haze
    if seq.night:  # light sources only shine at night
        rgb_clean += seq.emissive * (1 - fog)
    np.minimum(rgb_clean, 1.0, out=rgb_clean)  # every term is >= 0
    rgb_noise = _rgb_noise(seq.light)
    # sensor noise: a random window of the noise bank (drawing fresh Gaussian noise costs more than all the
    # rendering), random sign, so consecutive frames get different noise
    oy, ox = int(rng.integers(0, noise.shape[0] - height + 1)), int(rng.integers(0, noise.shape[1] - width + 1))
    window = noise[oy:oy + height, ox:ox + width]
    sign = np.float32(1.0 if rng.random() < 0.5 else -1.0)
    rgb = window[..., :3] * np.float32(255 * rgb_noise) * sign
    rgb += rgb_clean * np.float32(255)
    rgb += np.float32(0.5)
    rgb_u8 = np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)

    # thermal: blur (low optical resolution), temporal noise + fixed column pattern
    thermal_clean = cv2.GaussianBlur(thermal, (0, 0), _THERMAL_BLUR)
    thermal_out = window[..., 3] * (np.float32(_THERMAL_NOISE) * sign)
    thermal_out += thermal_clean
    thermal_out += seq.column_noise[None, :]
    np.clip(thermal_out, 0, 1, out=thermal_out)

    # events: log-intensity change of the scene between the previous and this frame
    dlog = np.log(lum_now + 0.05) - np.log(lum_prev + 0.05)
    counts = np.minimum(np.floor(np.abs(dlog) / _EVENT_THRESHOLD), 3)
    obj_events = np.sign(dlog) * counts
    events = obj_events.copy()
    # clutter: salt noise, hot pixels, foliage in the wind, flickering lamps
    salt = rng.random((height, width), dtype=np.float32) < seq.event_noise
    events[salt & (events == 0)] = rng.choice([-1.0, 1.0], size=int((salt & (events == 0)).sum()))
    events.flat[seq.hot_pixels] = 1.0
    if seq.foliage.any():
        leaves = np.flatnonzero(seq.foliage)
        sway = leaves[rng.random(leaves.size) < 0.2]
        events.flat[sway] = rng.choice([-1.0, 1.0], size=sway.size)
    for lamp in seq.lamps:
        if lamp.flicker and rng.random() < 0.7:
            r = int(round(lamp.radius * 2.5))
            y0, y1 = max(0, int(lamp.y) - r), min(height, int(lamp.y) + r + 1)
            x0, x1 = max(0, int(lamp.x) - r), min(width, int(lamp.x) + r + 1)
            fire = rng.random((y1 - y0, x1 - x0)) < 0.5
            events[y0:y1, x0:x1][fire] = float(rng.choice([-2.0, 2.0]))
    event_u8 = np.clip(EVENT_NEUTRAL + events * _EVENT_STEP, 0, 255).astype(np.uint8)

    # measure per-object evidence on the noise-free renders
    rgb_threshold = max(RGB_MIN_CONTRAST, 3 * rgb_noise)
    kernel = np.ones((3, 3), np.uint8)
    fired = cv2.dilate((obj_events != 0).astype(np.uint8), kernel).astype(bool)
    boxes, classes, objects_meta = [], [], []
    dropped = 0
    for k, sl, body in sorted(drawn, key=lambda d: d[0]):
        obj = seq.objects[k]
        inside = body > 0.5
        y0, y1, x0, x1 = sl
        view = (slice(y0, y1), slice(x0, x1))
        # the same pixels without objects: the reference for the object's RGB evidence
        emissive = seq.emissive[view] if seq.night else 0.0
        rgb_empty = np.clip((seq.rgb_bg[view] * illum_bg[view][..., None] + emissive) * (1 - fog[view])
                            + haze[view], 0, 1)
        c_rgb = _evidence(rgb_clean[view], rgb_empty, inside)
        c_th = _evidence(thermal_clean[view], seq.thermal_empty[view], inside)
        solid = inside.astype(np.uint8)
        edge = (cv2.dilate(solid, kernel) - cv2.erode(solid, kernel)).astype(bool)
        e_share = float(fired[y0:y1, x0:x1][edge].mean()) if edge.any() else 0.0
        visible = {"rgb": c_rgb >= rgb_threshold, "thermal": c_th >= THERMAL_MIN_CONTRAST,
                   "event": e_share >= EVENT_MIN_EDGE_SHARE}
        x, y = obj.traj[t + 1]
        box = [float(x), float(y), float(x + obj.w), float(y + obj.h)]
        record = {
            "id": k, "class": obj.cls, "class_name": CLASS_NAMES[obj.cls], "box": [round(v, 3) for v in box],
            "area": round(obj.w * obj.h, 2), "hot": obj.hot, "moving": obj.moving, "lit": obj.lit,
            "forced": obj.forced, "visible": visible,
            "evidence": {"rgb": round(c_rgb, 4), "thermal": round(c_th, 4), "event": round(e_share, 4)},
        }
        if not any(visible.values()):
            dropped += 1  # not observable by any sensor: not a fair label (see module docstring)
            record["labelled"] = False
        else:
            record["labelled"] = True
            boxes.append(box)
            classes.append(obj.cls)
        objects_meta.append(record)
    meta = {
        "sequence": seq.index, "frame_in_sequence": t, "night": seq.night, "light": round(seq.light * light_drift, 4),
        "fog": round(seq.fog_density, 4), "rgb_noise": round(rgb_noise, 4), "objects": objects_meta,
        "unobservable_dropped": dropped, "distractors": dict(seq.distractors),
    }
    return _Frame(rgb_u8, thermal_out, event_u8, np.array(boxes, np.float32).reshape(-1, 4), classes, meta)


# ------------------------------------------------------------------------------------------- output
def _check_args(images: Any, size: Any, classes: Any, fmt: Any, seed: Any) -> tuple[int, int]:
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)) or images < 1:
        raise DataError(f"synthetic data: images must be an integer >= 1, got {images!r}")
    try:
        width, height = (int(v) for v in size)
        ok = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"synthetic data: size must be (width, height), got {size!r}") from None
    if not ok or width < 32 or height < 32:
        raise DataError(f"synthetic data: size must be whole pixels >= 32x32 (width, height), got {size!r}")
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or not 1 <= classes <= len(CLASS_NAMES):
        raise DataError(f"synthetic data: classes must be 1..{len(CLASS_NAMES)}, got {classes!r}")
    if fmt not in FORMATS:
        raise DataError(f"synthetic data: format must be one of {'|'.join(FORMATS)}, got {fmt!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"synthetic data: seed must be an integer >= 0, got {seed!r}")
    return width, height


def _yolo_lines(boxes: np.ndarray, classes: list[int], width: int, height: int) -> str:
    lines = []
    for (x0, y0, x1, y1), c in zip(boxes.tolist(), classes):
        xc, yc = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        lines.append(f"{c} {xc:.6f} {yc:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise DataError(f"{path}: could not write image")


def summarize(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-modality visibility rates and object statistics from ``synth.json`` frame records."""
    objs = [o for f in frames for o in f["objects"] if o.get("labelled", True)]
    n = len(objs)
    out: dict[str, Any] = {"frames": len(frames), "objects": n,
                           "unobservable_dropped": sum(f["unobservable_dropped"] for f in frames)}
    if n == 0:
        return out
    mods = ("rgb", "thermal", "event")
    out["visible"] = {m: round(sum(o["visible"][m] for o in objs) / n, 4) for m in mods}
    out["missed"] = {m: round(1 - out["visible"][m], 4) for m in mods}
    seen = [sum(o["visible"][m] for m in mods) for o in objs]
    out["seen_by"] = {str(k): round(seen.count(k) / n, 4) for k in (0, 1, 2, 3)}
    out["only_one_modality"] = {m: round(sum(o["visible"][m] and s == 1 for o, s in zip(objs, seen)) / n, 4)
                                for m in mods}
    out["small_share"] = round(sum(o["area"] < 32 * 32 for o in objs) / n, 4)
    out["per_class"] = {name: sum(o["class_name"] == name for o in objs) for name in CLASS_NAMES}
    out["objects_per_frame"] = round(n / max(1, len(frames)), 3)
    out["empty_frames"] = sum(not any(o.get("labelled", True) for o in f["objects"]) for f in frames)
    out["hot_distractors_per_frame"] = round(
        sum(f["distractors"]["lamps"] + f["distractors"]["blobs"] + f["distractors"]["pipes"] for f in frames)
        / max(1, len(frames)), 3)
    return out


def generate_dataset(out: Path, images: int, size: tuple[int, int] = (160, 128), classes: int = 3,
                     fmt: str = "npy", seed: int = 0) -> Path:
    """Write a synthetic RGB + thermal + event data set of ``images`` frames to ``out``; return ``out``.

    ``size`` is (width, height); ``classes`` in 1..5 (pedestrian, car, cyclist, truck, animal);
    ``fmt`` is ``npy`` (the original layout: ``images/*.npy`` (H, W, 5) uint8 + ``labels/*.txt``) or
    ``folders`` (``rgb/``, 16-bit ``thermal/``, ``event/`` PNGs + ``labels/``). ``synth.json`` records the
    parameters, per-object attributes and measured per-modality visibility, and a summary. Same seed ->
    byte-identical files. Raises :class:`~crossattentiondet.errors.DataError` for bad arguments.
    """
    width, height = _check_args(images, size, classes, fmt, seed)
    images, classes, seed = int(images), int(classes), int(seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: synthetic data output must be a folder, this is a file")
    subdirs = ("images", "labels") if fmt == "npy" else ("rgb", "thermal", "event", "labels")
    for sub in subdirs:
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = list(CLASS_NAMES[:classes])
    frames_meta: list[dict[str, Any]] = []
    sequences: list[dict[str, int]] = []
    written: set[str] = set()
    noise = _noise_bank(seed, width, height)
    index, seq_index = 0, 0
    while index < images:
        seq = _make_sequence(seed, seq_index, width, height, classes)
        n = min(seq.length, images - index)
        sequences.append({"sequence": seq_index, "length": seq.length, "frames": n, "first": index})
        for t in range(n):
            frame = _render_frame(seq, t, seed, width, height, noise)
            stem = f"seq{seq_index:03d}_{index:06d}"
            if fmt == "npy":
                thermal8 = np.clip(frame.thermal * 255 + 0.5, 0, 255).astype(np.uint8)
                stack = np.concatenate([frame.rgb, thermal8[..., None], frame.event[..., None]], axis=2)
                np.save(out / "images" / f"{stem}.npy", stack)
            else:
                thermal16 = np.clip(frame.thermal * THERMAL_MAX + 0.5, 0, THERMAL_MAX).astype(np.uint16)
                _write_png(out / "rgb" / f"{stem}.png", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
                _write_png(out / "thermal" / f"{stem}.png", thermal16)
                _write_png(out / "event" / f"{stem}.png", frame.event)
            (out / "labels" / f"{stem}.txt").write_text(_yolo_lines(frame.boxes, frame.classes, width, height),
                                                        encoding="utf-8")
            frames_meta.append({"stem": stem, **frame.meta})
            written.add(stem)
            index += 1
        seq_index += 1
    _remove_stale(out, subdirs, written)
    atomic_write_text(out / "classes.txt", "\n".join(names) + "\n")
    atomic_write_json(out / "synth.json", {
        "generator": "crossattentiondet.data.synth", "version": 1,
        "params": {"images": images, "size": [width, height], "classes": classes, "format": fmt, "seed": seed},
        "class_names": names,
        # ready-made ``data.modalities`` entries (valid ModalityConfig fields) for this layout
        "modalities": _modalities_hint(fmt),
        "dtypes": {"rgb": "uint8", "thermal": "uint8" if fmt == "npy" else "uint16", "event": "uint8"},
        "event_neutral": EVENT_NEUTRAL,
        "rules": {"p_hot": P_HOT, "p_moving": P_MOVING, "p_lit": P_LIT, "p_night": P_NIGHT, "p_fog": P_FOG,
                  "p_small": P_SMALL, "rgb_min_contrast": RGB_MIN_CONTRAST,
                  "thermal_min_contrast": THERMAL_MIN_CONTRAST, "event_min_edge_share": EVENT_MIN_EDGE_SHARE},
        "summary": summarize(frames_meta),
        "sequences": sequences,
        "frames": frames_meta,
    })
    return out


def _modalities_hint(fmt: str) -> list[dict[str, Any]]:
    """``data.modalities`` for a generated data set: the default mean/std, and sources and scales per layout.

    The folders layout names explicit scales (255, 16383, 255), because a batch mixing uint8 and uint16
    modalities must not fall back to one dtype's maximum for all of them.
    """
    from crossattentiondet.config import default_modalities

    out = []
    for m in default_modalities():
        entry = m.model_dump(mode="json")
        if fmt == "folders":
            entry["source"] = m.name
            entry["scale"] = float(THERMAL_MAX if m.name == "thermal" else 255)
        out.append(entry)
    return out


def _remove_stale(out: Path, subdirs: tuple[str, ...], keep: set[str]) -> None:
    """Delete frames of an earlier, larger synthetic run in the same folder (only generator-named files)."""
    for sub in subdirs:
        for path in (out / sub).iterdir():
            if path.suffix in (".npy", ".png", ".txt") and _STEM.match(path.stem) and path.stem not in keep:
                path.unlink()


def _main(argv: list[str]) -> None:
    """Measure visibility rates and speed: ``python -m crossattentiondet.data.synth [FRAMES [OUT]]``."""
    import tempfile

    frames = int(argv[0]) if argv else 1000
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(argv[1]) if len(argv) > 1 else Path(tmp)
        start = time.perf_counter()
        generate_dataset(target, frames, classes=len(CLASS_NAMES), seed=0)
        elapsed = time.perf_counter() - start
        summary = json.loads((target / "synth.json").read_text(encoding="utf-8"))["summary"]
    print(json.dumps(summary, indent=2))
    print(f"{frames} frames in {elapsed:.2f} s = {frames / elapsed:.0f} frames/s (npy, including writing)")


if __name__ == "__main__":
    _main(sys.argv[1:])
