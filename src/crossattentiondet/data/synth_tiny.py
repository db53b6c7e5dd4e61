"""Synthetic tiny-object scenes: a 4-15 px ball and 20-60 px players on grass, in RGB + thermal (+ event).

``cadet data synth --task tiny OUT`` writes them; they exercise what tiny-object detection needs (the DETR
head, small anchors, AI-TOD size bins, tiled inference) and the ``coco`` layout, on a CPU in minutes.

Scene model (one independent scene per frame, from a generator seeded by (seed, frame index)):

* **Background**: a football pitch: green grass whose colour and brightness vary per frame, mowing stripes
  (bands 30-90 px wide, lighter and darker, at a small angle to an image axis), low-frequency patches and a
  fine grass texture, sometimes white field lines. Thermal: ground at ambient temperature with its own
  smooth variation, the stripes faintly, column (fixed-pattern) and temporal noise, slightly blurred optics.
* **Players** (``player``, 20-60 px tall, width 0.38-0.5 of the height; 1-10 per frame by image area, boxes
  overlapping at most 20 %): a rough person: head, torso and arms in the team's jersey colour (two teams per
  frame), shorts, legs with a stride; drawn anti-aliased at sub-pixel positions. Warm in thermal (skin
  warmest, clothes a little cooler): players are clear in both modalities.
* **Ball** (``ball``, one in 92 % of the frames): a disc of diameter uniform in 4-15 px, so that AI-TOD's
  *very tiny* (sqrt(area) < 8 px) and *tiny* (8-16 px) bins both hold many balls, placed off the players. In
  **RGB** its brightness differs from the grass under it by only 3-7 % of full scale (a worn ball on
  sunlit grass): hard to see, near the sensor noise. In **thermal** it is 45-80 levels warmer than the ground
  (a ball heated by play and sun): clear. Fusion pays off for the ball; players need neither modality's help.
* **Event** (optional, ``event=True``): objects move between the previous and the current frame (players
  0-2.5 px, the ball 3-9 px); the event frame (128 = no event, +-40 per polarity) fires where the noise-free
  log-intensity changes by more than 0.05, plus 0.1 % salt noise. The ball is visible there when moving
  fast enough to cross the threshold.

Output: the ``coco`` layout (:mod:`.layouts`): ``train/ val/ test/`` (70 / 15 / 15 % of the frames, at least
one each), each with ``images/<stem>.png`` (8-bit RGB), ``thermal/<stem>.png`` (8-bit), optionally
``event/<stem>.png``, and ``annotations/annotations.json`` (COCO: categories 1 ``player``, 2 ``ball``, boxes
``[x, y, w, h]`` in pixels, ids per file). ``synth.json`` at the root holds the parameters, ready-made
``data.modalities`` entries (scale 255 each), per-frame records (boxes, ball diameter and its measured
contrast in each modality) and a summary. The measured contrast of a ball is the absolute difference of the
mean value inside its disc and in a ring around it, on the written 0-1 image (noise included).

Deterministic: the same arguments give byte-identical files (PNG is lossless and its encoding fixed); a
frame depends only on the seed and its index, not on how many frames are generated.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json, read_json

GENERATOR = "crossattentiondet.data.synth_tiny"
VERSION = 1
CATEGORIES = ({"id": 1, "name": "player", "supercategory": "person"},
              {"id": 2, "name": "ball", "supercategory": "sports"})
SPLIT_SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}
DEFAULT_SIZE = (640, 480)  # width, height: the frame size of the tiny-object benchmarks
DEFAULT_IMAGES = 240
MIN_SIZE = 64  # a 60 px player must fit
BALL_DIAMETER = (4.0, 15.0)  # px, uniform: AI-TOD very tiny (< 8) and tiny (8-16) both occur
PLAYER_HEIGHT = (20.0, 60.0)  # px
PLAYER_ASPECT = (0.38, 0.5)  # width / height
P_BALL = 0.92  # share of frames with a ball
BALL_RGB_CONTRAST = (0.03, 0.07)  # brightness change on the grass, 0-1 scale: near the noise
BALL_THERMAL_EXCESS = (45.0, 80.0)  # levels above the ground (8-bit): clear
RGB_NOISE = 3.0  # sensor noise sigma, 8-bit levels
THERMAL_NOISE = 2.0
THERMAL_BLUR = 0.7  # Gaussian sigma (px): thermal optics resolve a little less
EVENT_NEUTRAL, EVENT_STEP, EVENT_THRESHOLD = 128, 40, 0.05
MAX_PLAYER_OVERLAP = 0.2  # intersection over the smaller box
_TEAM_COLOURS = ((200, 30, 30), (30, 60, 200), (235, 235, 235), (230, 200, 30), (25, 25, 30), (240, 120, 20),
                 (120, 40, 160), (90, 170, 230))
_SKIN = ((235, 190, 160), (200, 150, 110), (150, 100, 70), (95, 65, 45))
_SHORTS = ((240, 240, 240), (25, 25, 35), (20, 40, 120))


@dataclass
class _Player:
    height: float
    width: float
    jersey: tuple[int, ...]
    shorts: tuple[int, ...]
    skin: tuple[int, ...]
    stride: float  # leg spread, share of the width
    swing: float  # arm swing, share of the width
    heat: float  # thermal level of the clothes (skin is warmer)
    x: float  # top-left corner of the player's cell
    y: float
    velocity: tuple[float, float] = (0.0, 0.0)


@dataclass
class _Ball:
    diameter: float
    cx: float
    cy: float
    rgb_delta: float  # signed brightness change, 8-bit levels
    thermal_excess: float
    velocity: tuple[float, float] = (0.0, 0.0)


@dataclass
class _Scene:
    rgb: np.ndarray  # (H, W, 3) float32 background, 8-bit scale
    thermal: np.ndarray  # (H, W) float32 background
    players: list[_Player] = field(default_factory=list)
    ball: _Ball | None = None


# ------------------------------------------------------------------------------------------ background
def _smooth(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid resized with cubic interpolation."""
    grid = rng.uniform(-1.0, 1.0, (max(2, height // cell + 2), max(2, width // cell + 2))).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)


def _background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Grass with mowing stripes, patches, texture and sometimes field lines; its thermal image."""
    base = np.array([rng.uniform(40, 75), rng.uniform(105, 150), rng.uniform(30, 60)], np.float32)
    base *= rng.uniform(0.75, 1.1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(-0.25, 0.25) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
    period = rng.uniform(60, 180)  # a light and a dark band
    phase = rng.uniform(0, 2 * math.pi)
    wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase)
    stripes = np.tanh(4.0 * wave)  # soft-edged bands
    patches = _smooth(rng, height, width, 48)
    texture = cv2.GaussianBlur(rng.normal(0.0, 1.0, (height, width)).astype(np.float32), (0, 0), 0.6)
    shade = 1.0 + 0.07 * stripes + 0.06 * patches + 0.05 * texture
    rgb = base[None, None, :] * shade[..., None]
    ambient = rng.uniform(85, 110)
    thermal = (ambient + 6.0 * _smooth(rng, height, width, 64) + 2.0 * stripes
               + 1.5 * rng.normal(0.0, 1.0, (1, width)).astype(np.float32))  # column pattern of the sensor
    for _ in range(int(rng.integers(0, 3))):  # white field lines (painted: a little cooler)
        lines = np.zeros((height, width), np.uint8)
        thick = int(rng.integers(2, 4))
        if rng.random() < 0.5:
            x = int(rng.integers(0, width))
            cv2.line(lines, (x, 0), (x + int(rng.integers(-width // 8, width // 8 + 1)), height - 1), 255, thick,
                     cv2.LINE_AA)
        else:
            y = int(rng.integers(0, height))
            cv2.line(lines, (0, y), (width - 1, y + int(rng.integers(-height // 8, height // 8 + 1))), 255, thick,
                     cv2.LINE_AA)
        alpha = lines.astype(np.float32) / 255.0 * 0.85
        rgb = rgb * (1 - alpha[..., None]) + np.float32(225.0) * alpha[..., None]
        thermal = thermal - 4.0 * alpha
    return rgb.astype(np.float32), thermal.astype(np.float32)


# ------------------------------------------------------------------------------------------ objects
_SHIFT = 4  # OpenCV sub-pixel drawing: coordinates in 1/16 px
_S = 1 << _SHIFT


def _player_parts(p: _Player, x: float, y: float) -> tuple[int, int, dict[str, np.ndarray]]:
    """Anti-aliased masks (0-1) of a player's parts in a patch whose top-left pixel is (ox, oy)."""
    ox, oy = int(math.floor(x)) - 2, int(math.floor(y)) - 2
    fx, fy = x - ox, y - oy  # the cell's corner inside the patch
    h, w = p.height, p.width
    shape = (int(math.ceil(h)) + 5, int(math.ceil(w)) + 5)

    def pt(u: float, v: float) -> tuple[int, int]:
        return int(round((fx + u * w) * _S)), int(round((fy + v * h) * _S))

    def blank() -> np.ndarray:
        return np.zeros(shape, np.uint8)

    legs, shorts, jersey, head = blank(), blank(), blank(), blank()
    leg = max(1, int(round(0.075 * h)))
    for side in (-1, 1):
        cv2.line(legs, pt(0.5 + side * 0.13, 0.58), pt(0.5 + side * (0.15 + p.stride), 0.97), 255, leg,
                 cv2.LINE_AA, _SHIFT)
        cv2.line(jersey, pt(0.5 + side * 0.3, 0.24), pt(0.5 + side * (0.38 + p.swing), 0.5), 255,
                 max(1, int(round(0.06 * h))), cv2.LINE_AA, _SHIFT)
    cv2.fillPoly(shorts, [np.array([pt(0.22, 0.46), pt(0.78, 0.46), pt(0.8, 0.62), pt(0.2, 0.62)], np.int32)], 255,
                 cv2.LINE_AA, _SHIFT)
    cv2.ellipse(jersey, pt(0.5, 0.34), (int(round(0.3 * w * _S)), int(round(0.14 * h * _S))), 0, 0, 360, 255, -1,
                cv2.LINE_AA, _SHIFT)
    cv2.circle(head, pt(0.5, 0.1), int(round(0.085 * h * _S)), 255, -1, cv2.LINE_AA, _SHIFT)
    parts = {"legs": legs, "shorts": shorts, "jersey": jersey, "head": head}
    return ox, oy, {name: mask.astype(np.float32) / 255.0 for name, mask in parts.items()}


def _ball_coverage(ball: _Ball, cx: float, cy: float) -> tuple[int, int, np.ndarray]:
    """Anti-aliased disc coverage (0-1, analytic: 1 px ramp at the rim) in a patch at (ox, oy)."""
    r = ball.diameter / 2
    ox, oy = int(math.floor(cx - r)) - 2, int(math.floor(cy - r)) - 2
    size = int(math.ceil(ball.diameter)) + 5
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.hypot(xx + ox + 0.5 - cx, yy + oy + 0.5 - cy)
    return ox, oy, np.clip(r + 0.5 - dist, 0.0, 1.0)


def _blend(image: np.ndarray, ox: int, oy: int, alpha: np.ndarray, value: np.ndarray | float) -> None:
    """image[patch] = image * (1 - alpha) + value * alpha, clipped to the image, in place."""
    height, width = image.shape[:2]
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + alpha.shape[1], width), min(oy + alpha.shape[0], height)
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    region = image[y0:y1, x0:x1]
    if region.ndim == 3:
        a = a[..., None]
    image[y0:y1, x0:x1] = region * (1 - a) + np.asarray(value, np.float32) * a


def _local_mean(image: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """Mean of ``image`` in a square of half-side ``radius`` around (cx, cy) (per channel)."""
    height, width = image.shape[:2]
    x0, x1 = max(0, int(cx - radius)), min(width, int(cx + radius) + 1)
    y0, y1 = max(0, int(cy - radius)), min(height, int(cy + radius) + 1)
    return image[y0:y1, x0:x1].reshape(-1, *image.shape[2:]).mean(axis=0)


def _compose(scene: _Scene, shift: float
             ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int] | None]]:
    """The noise-free RGB and thermal images with every object at ``position - shift * velocity`` (0: now,
    1: the previous frame), and each player's tight box (x0, y0, x1, y1) in pixels (None if not drawn)."""
    rgb, thermal = scene.rgb.copy(), scene.thermal.copy()
    boxes: list[tuple[int, int, int, int] | None] = []
    for p in scene.players:
        x, y = p.x - shift * p.velocity[0], p.y - shift * p.velocity[1]
        ox, oy, parts = _player_parts(p, x, y)
        skin_heat = p.heat + 22.0
        for name, colour, heat in (("legs", p.skin, skin_heat), ("shorts", p.shorts, p.heat - 6.0),
                                   ("jersey", p.jersey, p.heat), ("head", p.skin, skin_heat + 8.0)):
            _blend(rgb, ox, oy, parts[name], np.array(colour, np.float32))
            _blend(thermal, ox, oy, parts[name], heat)
        ys, xs = np.nonzero(np.maximum.reduce(list(parts.values())) > 0.3)
        height, width = thermal.shape
        if len(xs):  # the tight box of the drawn player (alpha > 0.3), in the image
            x0, y0 = max(0, int(xs.min()) + ox), max(0, int(ys.min()) + oy)
            x1, y1 = min(width, int(xs.max()) + ox + 1), min(height, int(ys.max()) + oy + 1)
            boxes.append((x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None)
        else:
            boxes.append(None)
    if scene.ball is not None:
        b = scene.ball
        cx, cy = b.cx - shift * b.velocity[0], b.cy - shift * b.velocity[1]
        ox, oy, cover = _ball_coverage(b, cx, cy)
        # the ball's colour is the grass under it, a little brighter or darker, desaturated (a worn ball)
        under = _local_mean(scene.rgb, b.cx, b.cy, b.diameter)
        ball_rgb = 0.6 * under + 0.4 * float(under.mean()) + b.rgb_delta  # same brightness + delta, greyer
        _blend(rgb, ox, oy, cover, ball_rgb)
        ground = float(_local_mean(scene.thermal, b.cx, b.cy, b.diameter))
        _blend(thermal, ox, oy, cover, ground + b.thermal_excess)
    return rgb, thermal, boxes


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _make_scene(rng: np.random.Generator, width: int, height: int) -> _Scene:
    rgb, thermal = _background(rng, width, height)
    scene = _Scene(rgb, thermal)
    teams = rng.choice(len(_TEAM_COLOURS), 2, replace=False)
    most = int(np.clip(width * height / 24000, 2, 10))
    count = int(rng.integers(max(1, most // 3), most + 1))
    cells: list[tuple[float, float, float, float]] = []
    for _ in range(count):
        for _attempt in range(40):
            h = float(rng.uniform(*PLAYER_HEIGHT))
            w = h * float(rng.uniform(*PLAYER_ASPECT))
            if h + 4 > height or w + 4 > width:
                continue
            x, y = float(rng.uniform(2, width - w - 2)), float(rng.uniform(2, height - h - 2))
            cell = (x, y, x + w, y + h)
            if all(_overlap(cell, other) <= MAX_PLAYER_OVERLAP for other in cells):
                break
        else:
            continue
        cells.append(cell)
        team = int(teams[int(rng.integers(0, 2))])
        scene.players.append(_Player(
            height=h, width=w, jersey=_TEAM_COLOURS[team], shorts=_SHORTS[int(rng.integers(0, len(_SHORTS)))],
            skin=_SKIN[int(rng.integers(0, len(_SKIN)))], stride=float(rng.uniform(0.0, 0.2)),
            swing=float(rng.uniform(-0.05, 0.12)), heat=float(rng.uniform(165, 190)), x=x, y=y,
            velocity=(float(rng.uniform(-2.5, 2.5)), float(rng.uniform(-2.5, 2.5)))))
    if rng.random() < P_BALL:
        d = float(rng.uniform(*BALL_DIAMETER))
        for _attempt in range(60):
            cx, cy = float(rng.uniform(d / 2 + 2, width - d / 2 - 2)), float(rng.uniform(d / 2 + 2, height - d / 2 - 2))
            box = (cx - d / 2 - 3, cy - d / 2 - 3, cx + d / 2 + 3, cy + d / 2 + 3)
            if all(_overlap(box, cell) == 0 for cell in cells):
                speed, direction = float(rng.uniform(3, 9)), float(rng.uniform(0, 2 * math.pi))
                sign = 1.0 if rng.random() < 0.7 else -1.0  # mostly a little brighter than the grass
                scene.ball = _Ball(d, cx, cy, sign * float(rng.uniform(*BALL_RGB_CONTRAST)) * 255.0,
                                   float(rng.uniform(*BALL_THERMAL_EXCESS)),
                                   (speed * math.cos(direction), speed * math.sin(direction)))
                break
    return scene


# ------------------------------------------------------------------------------------------ frames
@dataclass
class TinyFrame:
    """One rendered frame: uint8 images per modality, COCO boxes ``[x, y, w, h]`` with category ids, and
    what was measured (the ball's diameter and contrast per modality)."""

    images: dict[str, np.ndarray]
    boxes: list[list[float]]
    categories: list[int]
    meta: dict[str, Any]


def disc_contrast(image: np.ndarray, cx: float, cy: float, r: float) -> float:
    """|mean inside the disc - mean in the ring r+2..r+5 around it| of a uint8 image on the 0-1 scale (the
    luminance, as the mean of the channels, for RGB): how much a ball of radius ``r`` at (cx, cy) stands out."""
    size = int(r + 6)
    x0, y0 = max(0, int(cx) - size), max(0, int(cy) - size)
    patch = image[y0:int(cy) + size + 1, x0:int(cx) + size + 1].astype(np.float32) / 255.0
    patch = patch.mean(axis=2) if patch.ndim == 3 else patch
    yy, xx = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
    dist = np.hypot(xx + x0 + 0.5 - cx, yy + y0 + 0.5 - cy)
    inside, ring = patch[dist <= max(r - 0.5, 0.7)], patch[(dist >= r + 2) & (dist <= r + 5)]
    if not inside.size or not ring.size:
        return 0.0
    return float(abs(inside.mean() - ring.mean()))


def render_frame(seed: int, index: int, size: tuple[int, int], event: bool = False) -> TinyFrame:
    """Frame ``index`` of the scenes of ``seed`` at ``size`` (width, height); deterministic."""
    width, height = size
    rng = np.random.default_rng([seed, index])
    scene = _make_scene(rng, width, height)
    rgb, thermal, player_boxes = _compose(scene, 0.0)
    noise = np.random.default_rng([seed, index, 1])
    rgb_out = np.clip(rgb + noise.normal(0.0, RGB_NOISE, rgb.shape) + 0.5, 0, 255).astype(np.uint8)
    thermal_blur = cv2.GaussianBlur(thermal, (0, 0), THERMAL_BLUR)
    thermal_out = np.clip(thermal_blur + noise.normal(0.0, THERMAL_NOISE, thermal.shape) + 0.5, 0, 255
                          ).astype(np.uint8)
    images = {"rgb": rgb_out, "thermal": thermal_out}
    if event:
        before, _, _ = _compose(scene, 1.0)
        change = np.log1p(rgb.mean(axis=2)) - np.log1p(before.mean(axis=2))
        frame = np.full((height, width), float(EVENT_NEUTRAL), np.float32)
        frame += EVENT_STEP * (change > EVENT_THRESHOLD) - EVENT_STEP * (change < -EVENT_THRESHOLD)
        salt = noise.random((height, width)) < 0.001
        frame[salt] = EVENT_NEUTRAL + EVENT_STEP * np.where(noise.random(int(salt.sum())) < 0.5, 1, -1)
        images["event"] = np.clip(frame, 0, 255).astype(np.uint8)
    boxes: list[list[float]] = []
    categories: list[int] = []
    players = []
    for p, tight in zip(scene.players, player_boxes):
        if tight is None:
            continue
        box = [float(tight[0]), float(tight[1]), float(tight[2] - tight[0]), float(tight[3] - tight[1])]
        boxes.append(box)
        categories.append(1)
        players.append({"box": box, "height": round(p.height, 2)})
    meta: dict[str, Any] = {"players": players, "ball": None}
    if scene.ball is not None:
        b = scene.ball
        r = b.diameter / 2
        box = [round(b.cx - r, 2), round(b.cy - r, 2), round(b.diameter, 2), round(b.diameter, 2)]
        boxes.append(box)
        categories.append(2)
        meta["ball"] = {
            "box": box, "diameter": round(b.diameter, 3),
            "bin": "very_tiny" if b.diameter < 8 else "tiny",
            "contrast": {name: round(disc_contrast(images[name], b.cx, b.cy, r), 4) for name in images}}
    return TinyFrame(images, [[round(v, 2) for v in box] for box in boxes], categories, meta)


# ------------------------------------------------------------------------------------------ writing
def split_counts(images: int) -> dict[str, int]:
    """Frames per split for ``images`` frames: 70 / 15 / 15 %, at least one in val and test."""
    val = max(1, round(images * SPLIT_SHARES["val"]))
    test = max(1, round(images * SPLIT_SHARES["test"]))
    return {"train": images - val - test, "val": val, "test": test}


def _check_args(images: Any, size: Any, seed: Any) -> tuple[int, int]:
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)) or images < 3:
        raise DataError(f"tiny synthetic data: images must be an integer >= 3 (train, val and test get frames), "
                        f"got {images!r}")
    try:
        width, height = (int(v) for v in size)
        whole = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"tiny synthetic data: size must be (width, height), got {size!r}") from None
    if not whole or width < MIN_SIZE or height < MIN_SIZE:
        raise DataError(f"tiny synthetic data: size must be whole pixels >= {MIN_SIZE}x{MIN_SIZE} (players are up "
                        f"to {PLAYER_HEIGHT[1]:g} px tall), got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"tiny synthetic data: seed must be an integer >= 0, got {seed!r}")
    return width, height


def _write_png(path: Path, image: np.ndarray) -> None:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise DataError(f"{path}: could not write image")


def _prepare_out(out: Path) -> None:
    """``out`` must be a folder that is empty or holds an earlier tiny synthetic data set (replaced)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: synthetic data output must be a folder, this is a file")
    if not out.is_dir() or not any(out.iterdir()):
        return
    meta = out / "synth.json"
    try:
        ours = meta.is_file() and read_json(meta).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        leftovers = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if leftovers:
            raise DataError(f"{out}: not empty and not a tiny synthetic data set (holds {', '.join(leftovers[:5])}); "
                            "choose an empty or new folder")
        return
    for split in SPLIT_SHARES:  # an earlier run of this generator: its split folders are replaced
        shutil.rmtree(out / split, ignore_errors=True)


def summarize(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, ball size bins and mean ball contrast per modality from ``synth.json`` frame records."""
    balls = [f["ball"] for f in frames if f["ball"] is not None]
    out: dict[str, Any] = {"frames": len(frames), "players": sum(len(f["players"]) for f in frames),
                           "balls": len(balls)}
    out["players_per_frame"] = round(out["players"] / max(1, len(frames)), 3)
    out["ball_bins"] = {name: sum(b["bin"] == name for b in balls) for name in ("very_tiny", "tiny")}
    if balls:
        out["ball_contrast"] = {m: round(float(np.mean([b["contrast"][m] for b in balls])), 4)
                                for m in balls[0]["contrast"]}
    return out


def generate_tiny_dataset(out: Path, images: int = DEFAULT_IMAGES, size: tuple[int, int] = DEFAULT_SIZE,
                          seed: int = 0, event: bool = False) -> Path:
    """Write ``images`` tiny-object frames (see the module docstring) to ``out`` in the coco layout; return it.

    ``size`` is (width, height); ``event`` adds an ``event/`` modality folder. Same arguments -> byte-identical
    files. DataError for bad arguments or an ``out`` folder holding something else.
    """
    width, height = _check_args(images, size, seed)
    images, seed, out = int(images), int(seed), Path(out)
    _prepare_out(out)
    modalities = ["rgb", "thermal"] + (["event"] if event else [])
    folders = {"rgb": "images", "thermal": "thermal", "event": "event"}
    counts = split_counts(images)
    records: list[dict[str, Any]] = []
    index = 0
    for split, count in counts.items():
        for name in modalities:
            (out / split / folders[name]).mkdir(parents=True, exist_ok=True)
        (out / split / "annotations").mkdir(parents=True, exist_ok=True)
        coco: dict[str, Any] = {"info": {"description": f"tiny synthetic scenes ({GENERATOR}), {split}",
                                         "version": str(VERSION)},
                                "images": [], "annotations": [], "categories": [dict(c) for c in CATEGORIES]}
        for image_id in range(1, count + 1):
            frame = render_frame(seed, index, (width, height), event)
            stem = f"{index:06d}"
            for name in modalities:
                _write_png(out / split / folders[name] / f"{stem}.png", frame.images[name])
            coco["images"].append({"id": image_id, "file_name": f"{stem}.png", "width": width, "height": height})
            for box, category in zip(frame.boxes, frame.categories):
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                            "category_id": category, "bbox": box,
                                            "area": round(box[2] * box[3], 2), "iscrowd": 0})
            records.append({"stem": stem, "split": split, **frame.meta})
            index += 1
        atomic_write_json(out / split / "annotations" / "annotations.json", coco)
    atomic_write_json(out / "synth.json", {
        "generator": GENERATOR, "version": VERSION, "layout": "coco",
        "params": {"images": images, "size": [width, height], "seed": seed, "event": event},
        "class_names": [c["name"] for c in CATEGORIES], "splits": counts,
        "modalities": _modalities_hint(modalities),
        "rules": {"ball_diameter": list(BALL_DIAMETER), "player_height": list(PLAYER_HEIGHT), "p_ball": P_BALL,
                  "ball_rgb_contrast": list(BALL_RGB_CONTRAST), "ball_thermal_excess": list(BALL_THERMAL_EXCESS),
                  "rgb_noise": RGB_NOISE, "thermal_noise": THERMAL_NOISE},
        "summary": summarize(records),
        "frames": records,
    })
    return out


def _modalities_hint(modalities: list[str]) -> list[dict[str, Any]]:
    """``data.modalities`` entries for the written tree: default mean/std, folder names, scale 255 (8-bit)."""
    from crossattentiondet.config import default_modalities

    source = {"rgb": "images", "thermal": "thermal", "event": "event"}
    out = []
    for m in default_modalities():
        if m.name in modalities:
            out.append({**m.model_dump(mode="json"), "source": source[m.name], "scale": 255.0})
    return out
