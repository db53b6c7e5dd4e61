"""Synthetic camouflaged RGB + thermal scenes (task: segment): layout, determinism, exact masks, and the design
that makes fusion necessary (camouflage in RGB, warm distractors and blur in thermal)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from crossattentiondet.config import ModalityConfig
from crossattentiondet.errors import DataError
from crossattentiondet.segmentation.synth import (
    SEG_SYNTH_VERSION,
    STEM_PATTERN,
    SegScene,
    SegSynthKnobs,
    generate_seg_dataset,
    pixel_baselines,
    render_seg_scene,
)

SIZE = (160, 128)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def render(n: int, seed: int, **knobs: object) -> list[SegScene]:
    settings = SegSynthKnobs(**knobs)
    return [render_seg_scene(seed, i, SIZE, settings) for i in range(n)]


@pytest.fixture(scope="module")
def scenes() -> list[SegScene]:
    """40 default scenes, in memory (the same arrays the generator writes)."""
    return render(40, seed=11)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, record_testsuite_property: Callable[[str, object], None]
            ) -> Path:
    out = tmp_path_factory.mktemp("seg_synth")
    start = time.perf_counter()
    generate_seg_dataset(out, 16, SIZE, seed=4)
    record_testsuite_property("seg_synth_images_per_second", round(16 / (time.perf_counter() - start), 1))
    return out


# ------------------------------------------------------------------------------------------- layout
def test_layout_dtypes_and_metadata(written: Path) -> None:
    stems = sorted(p.stem for p in (written / "rgb").glob("*.png"))
    assert len(stems) == 16 and all(STEM_PATTERN.match(s) for s in stems)
    for sub in ("thermal", "masks"):
        assert sorted(p.stem for p in (written / sub).glob("*.png")) == stems
    for stem in stems[:4]:
        rgb, thermal, mask = (read(written / sub / f"{stem}.png") for sub in ("rgb", "thermal", "masks"))
        assert rgb.dtype == thermal.dtype == mask.dtype == np.uint8
        assert rgb.shape == (128, 160, 3) and thermal.shape == mask.shape == (128, 160)
        assert set(np.unique(mask).tolist()) <= {0, 1}
    meta = json.loads((written / "synth.json").read_text())
    assert meta["task"] == "segment" and meta["version"] == SEG_SYNTH_VERSION
    assert meta["params"] == {"images": 16, "size": [160, 128], "seed": 4}
    assert meta["class_names"] == ["background", "object"]
    assert meta["knobs"]["texture_mix"] == SegSynthKnobs().texture_mix
    mods = [ModalityConfig(**m) for m in meta["modalities"]]  # ready-made data.modalities entries
    assert [(m.name, m.channels, m.source, m.scale) for m in mods] == [("rgb", 3, "rgb", 255.0),
                                                                       ("thermal", 1, "thermal", 255.0)]
    assert [r["stem"] for r in meta["images"]] == stems
    assert meta["summary"]["empty_masks"] == sum(not r["objects"] for r in meta["images"])


def test_files_are_the_rendered_scenes_and_masks_are_exact(written: Path) -> None:
    # the written files are exactly the in-memory render, and the mask is exactly where the RGB was repainted
    for index in (0, 5, 11):
        scene = render_seg_scene(4, index, SIZE)
        assert np.array_equal(read(written / "rgb" / f"{scene.stem}.png"), scene.rgb)
        assert np.array_equal(read(written / "thermal" / f"{scene.stem}.png"), scene.thermal)
        assert np.array_equal(read(written / "masks" / f"{scene.stem}.png"), scene.mask)
        assert not (scene.mask & scene.distractors).any()  # rocks are never labelled
    knobs = SegSynthKnobs(texture_mix=0.0, boundary_shade=0.0)  # no cue at all: the object vanishes in RGB
    cued = SegSynthKnobs(texture_mix=1.0, boundary_shade=0.0)
    for index in range(6):
        plain, other = render_seg_scene(4, index, SIZE, knobs), render_seg_scene(4, index, SIZE, cued)
        changed = (plain.rgb != other.rgb).any(axis=2)
        assert np.array_equal(plain.mask, other.mask)
        assert not changed[plain.mask == 0].any()  # the texture cue lives strictly inside the mask...
        if plain.mask.any():
            assert changed[plain.mask == 1].mean() > 0.8  # ...and covers it


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    a = files(generate_seg_dataset(tmp_path / "a", 6, SIZE, seed=7))
    b = files(generate_seg_dataset(tmp_path / "b", 6, SIZE, seed=7))
    c = files(generate_seg_dataset(tmp_path / "c", 6, SIZE, seed=8))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.startswith(("rgb/", "thermal/")))
    # an image does not depend on how many are generated, and a smaller rerun removes the extra files
    generate_seg_dataset(tmp_path / "a", 3, SIZE, seed=7)
    small = {k: v for k, v in files(tmp_path / "a").items() if k.endswith(".png")}
    assert small == {k: v for k, v in a.items() if k.endswith(".png") and int(Path(k).stem.split("_")[1]) < 3}


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    for kwargs, word in (({"images": 0}, "images"), ({"size": (16, 16)}, "size"), ({"seed": -1}, "seed"),
                         ({"texture_mix": 1.5}, "texture_mix"), ({"distractors": (2, 1)}, "distractors"),
                         ({"area": (0.3, 0.1)}, "area"), ({"thermal_downsample": 0}, "thermal_downsample"),
                         ({"colour": 3}, "unknown knob")):
        with pytest.raises(DataError, match=word):
            generate_seg_dataset(tmp_path / "bad", **{"images": 2, **kwargs})
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="folder"):
        generate_seg_dataset(tmp_path / "file", 2)


# ------------------------------------------------------------------------------------------- design
def test_some_masks_are_empty_and_objects_are_sized_as_documented(scenes: list[SegScene]) -> None:
    empty = sum(not s.mask.any() for s in scenes)
    assert 1 <= empty <= 10
    areas = [o["area"] for s in scenes for o in s.meta["objects"]]
    assert min(areas) > 0.01 and max(areas) < 0.4 and 1 <= np.mean([len(s.meta["objects"]) for s in scenes]) <= 2
    assert sum(len(s.meta["distractors"]) for s in scenes) >= len(scenes)  # at least one rock per image


def test_rgb_camouflage_same_colour_statistics_inside_and_outside(scenes: list[SegScene]) -> None:
    mask = np.stack([s.mask for s in scenes]).astype(bool)
    rock = np.stack([s.distractors for s in scenes]).astype(bool)
    ground = ~mask & ~rock
    rgb = np.stack([s.rgb for s in scenes]).astype(np.float32)
    assert np.abs(rgb[mask].mean(0) - rgb[ground].mean(0)).max() < 8  # of 255
    ratio = rgb[mask].std(0) / rgb[ground].std(0)
    assert np.all((ratio > 0.85) & (ratio < 1.18))
    # distance of each pixel's colour from its image's median colour: objects like the ground, rocks far off
    median = np.median(rgb.reshape(len(scenes), -1, 3), axis=1)[:, None, None, :]
    dist = np.linalg.norm(rgb - median, axis=3)
    assert abs(dist[mask].mean() - dist[ground].mean()) < 4
    assert dist[rock].mean() > dist[ground].mean() + 50


def test_thermal_objects_and_rocks_are_equally_warm(scenes: list[SegScene]) -> None:
    mask = np.stack([s.mask for s in scenes]).astype(bool)
    rock = np.stack([s.distractors for s in scenes]).astype(bool)
    thermal = np.stack([s.thermal for s in scenes]).astype(np.float32)
    ground = thermal[~mask & ~rock].mean()
    assert thermal[mask].mean() > ground + 20
    assert thermal[rock].mean() > ground + 20  # distractors: warm and outside the mask
    assert abs(thermal[mask].mean() - thermal[rock].mean()) < 8  # thermal alone cannot tell them apart
    # per image too: every image with a rock has a warm region outside its mask
    for s in scenes:
        if s.distractors.any():
            assert s.thermal[s.distractors == 1].mean() > s.thermal[(s.mask == 0) & (s.distractors == 0)].mean() + 10


def test_pixel_statistics_need_both_modalities(scenes: list[SegScene]) -> None:
    """Best-threshold pixel rules: thermal is clearly imperfect, RGB is at chance, the fused rule beats both."""
    base = pixel_baselines(scenes)
    assert 0.2 < base["thermal"] < 0.55
    assert base["rgb"] < base["all_foreground"] + 0.05
    assert base["fused"] > max(base["thermal"], base["rgb"]) + 0.15


def test_the_knobs_move_the_difficulty_where_documented() -> None:
    # no rocks: thermal alone gets much better, but stays imperfect (low resolution, blur, noise)...
    no_rocks = pixel_baselines(render(30, seed=12, distractors=(0, 0)))
    assert 0.5 < no_rocks["thermal"] < 0.9
    # ...and a sharp, full-resolution, noiseless thermal image does clearly better: the blur costs IoU
    sharp = pixel_baselines(render(30, seed=12, distractors=(0, 0), thermal_downsample=1, thermal_blur=0.0,
                                   thermal_noise=0.0, ambient_variation=0.0))
    assert sharp["thermal"] > no_rocks["thermal"] + 0.1
    # rocks as camouflaged as the objects: the colour rule no longer helps the thermal one
    hidden = pixel_baselines(render(30, seed=12, distractor_contrast=0.0))
    assert hidden["fused"] < hidden["thermal"] + 0.05
