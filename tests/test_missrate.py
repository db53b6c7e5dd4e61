"""Log-average miss rate MR^-2 (engine/missrate.py): matching with ignore regions, the curve, its sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossattentiondet.config import ConfigError, load_config
from crossattentiondet.engine.missrate import (
    FPPI_POINTS,
    GENERIC_SUBSETS,
    KAIST_SUBSETS,
    ImageTruth,
    Subset,
    log_average_miss_rate,
    match_image,
    miss_rate_curve,
    miss_rate_wanted,
    miss_rates,
    person_label,
)

ALL = Subset("all")


def image(stem: str, gt: list[list[float]], dets: list[tuple[list[float], float]], *, ignore=(), occlusion=None,
          size: tuple[int, int] = (200, 200)) -> ImageTruth:
    return ImageTruth(stem, size[0], size[1], np.asarray(gt, float).reshape(-1, 4),
                      np.asarray([d for d, _ in dets], float).reshape(-1, 4), np.asarray([s for _, s in dets], float),
                      None if occlusion is None else np.asarray(occlusion), np.asarray(ignore, float).reshape(-1, 4))


def test_the_fppi_points_are_the_toolbox_ones() -> None:
    assert len(FPPI_POINTS) == 9
    assert FPPI_POINTS[0] == pytest.approx(0.01) and FPPI_POINTS[-1] == pytest.approx(1.0)
    assert np.diff(np.log10(FPPI_POINTS)) == pytest.approx([0.25] * 8)


def test_hand_computed_case() -> None:
    # A: objects G1, G2; detections .9 on G1 (TP), .8 far away (FP), .4 on G2 (TP)
    # B: object G3 and an ignore region; .7 inside the region (ignored: neither TP nor FP), .6 far away (FP),
    #    .3 overlapping G3 with IoU 1/3 < 0.5 (FP)
    # C: no object; .5 (FP)
    a = image("a", [[0, 0, 10, 20], [50, 0, 60, 20]],
              [([0, 0, 10, 20], 0.9), ([100, 100, 110, 120], 0.8), ([50, 1, 60, 20], 0.4)])
    b = image("b", [[0, 0, 10, 20]], [([32, 2, 42, 22], 0.7), ([80, 80, 90, 100], 0.6), ([5, 0, 15, 20], 0.3)],
              ignore=[[30, 0, 60, 30]])
    c = image("c", [], [([10, 10, 20, 30], 0.5)])
    curve = miss_rate_curve([a, b, c], ALL)
    # 3 images, 3 objects; counted detections by score (the .7 one is ignored):
    #   .9 TP -> FPPI 0,   MR 2/3      .8 FP -> 1/3, 2/3      .6 FP -> 2/3, 2/3
    #   .5 FP -> 1,   2/3              .4 TP -> 1,   1/3      .3 FP -> 4/3, 1/3
    assert curve.num_images == 3 and curve.num_objects == 3
    assert curve.scores.tolist() == [0.9, 0.8, 0.6, 0.5, 0.4, 0.3]
    assert curve.fppi == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 4 / 3])
    assert curve.miss_rate == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3])
    # sampled at 10^-2 ... 10^0: the 8 points below 1 take the last detection with FPPI <= the point, which is
    # the .9 (FPPI 0) or, for 10^-0.25 = 0.562, the .8 (FPPI 1/3): miss rate 2/3; at FPPI 1 the last detection
    # with FPPI <= 1 is the .4: miss rate 1/3
    assert curve.sampled() == pytest.approx([2 / 3] * 8 + [1 / 3])
    # MR^-2 = exp((8 ln(2/3) + ln(1/3)) / 9) = exp(-4.342333 / 9) = exp(-0.482481) = 0.617250
    assert log_average_miss_rate([a, b, c], ALL) == pytest.approx(0.617250, abs=1e-6)


def test_a_curve_that_never_reaches_low_fppi() -> None:
    # one image, two objects; the top detection is a false positive, so FPPI jumps straight to 1: the points
    # 10^-2 ... 10^-0.25 are never reached and count as miss rate 1; at 10^0 the TP after it gives 1/2
    one = image("x", [[0, 0, 10, 20], [40, 0, 50, 20]], [([100, 100, 110, 120], 0.9), ([0, 0, 10, 20], 0.8)])
    curve = miss_rate_curve([one], ALL)
    assert curve.sampled() == pytest.approx([1.0] * 8 + [0.5])
    # MR^-2 = exp((8 ln 1 + ln 0.5) / 9) = 0.5^(1/9) = 0.925875
    assert curve.log_average() == pytest.approx(0.5 ** (1 / 9))
    assert curve.log_average() == pytest.approx(0.925875, abs=1e-6)


def test_no_detections_is_miss_rate_one_and_no_objects_is_undefined() -> None:
    assert log_average_miss_rate([image("x", [[0, 0, 10, 20]], [])], ALL) == 1.0
    assert math.isnan(log_average_miss_rate([image("x", [], [([0, 0, 10, 20], 0.9)])], ALL))


def test_ignore_regions_use_the_detection_area_and_take_any_number_of_detections() -> None:
    region = [[0, 0, 100, 100]]
    # both detections lie inside the region: IoU with it is only 0.01, intersection / detection area is 1
    kinds = match_image(region, [True], [[10, 10, 20, 20], [50, 50, 60, 60]], [0.9, 0.8])
    assert kinds.tolist() == [-1, -1]
    # half of this detection is outside: 0.5 still matches (>= the threshold, as the toolbox does), 0.4 not
    assert match_image(region, [True], [[90, 0, 110, 10]], [0.5]).tolist() == [-1]
    assert match_image(region, [True], [[94, 0, 109, 10]], [0.5]).tolist() == [0]


def test_an_object_is_preferred_to_an_ignore_region_and_matched_once() -> None:
    gt = [[0, 0, 10, 20], [0, 0, 100, 100]]  # an object inside an ignore region
    # the higher-scored detection takes the object; the second one on it is then a match of the region
    kinds = match_image(gt, [False, True], [[0, 0, 10, 20], [0, 0, 10, 19]], [0.9, 0.8])
    assert kinds.tolist() == [1, -1]
    # without the region the duplicate is a false positive
    assert match_image(gt[:1], [False], [[0, 0, 10, 20], [0, 0, 10, 19]], [0.9, 0.8]).tolist() == [1, 0]
    # order of the inputs does not matter: results come back in the given order
    assert match_image(gt, [False, True], [[0, 0, 10, 19], [0, 0, 10, 20]], [0.8, 0.9]).tolist() == [-1, 1]


def test_ignore_regions_keep_false_positives_and_misses_out_of_the_curve() -> None:
    gt = [[0, 0, 10, 20]]
    plain = image("x", gt, [([0, 0, 10, 20], 0.9), ([40, 0, 50, 20], 0.95)])
    region = image("x", gt, [([0, 0, 10, 20], 0.9), ([40, 0, 50, 20], 0.95)], ignore=[[35, 0, 60, 30]])
    # the .95 is a false positive before the TP: FPPI 1 at the first point, miss rate 1 below it
    assert log_average_miss_rate([plain], ALL) == pytest.approx(math.exp(math.log(1e-10) / 9))
    # inside the region it is not counted: the TP comes at FPPI 0, miss rate 0 at every point (1e-10 floor)
    assert log_average_miss_rate([region], ALL) == pytest.approx(1e-10)


def test_reasonable_turns_small_and_heavily_occluded_objects_into_ignore_boxes() -> None:
    tall, small, occluded = [0, 0, 30, 80], [50, 0, 60, 30], [100, 0, 130, 80]
    one = image("x", [tall, small, occluded], [([0, 0, 30, 80], 0.9), ([52, 2, 58, 28], 0.8)],
                occlusion=[0, 0, 2])
    reasonable = GENERIC_SUBSETS[0]
    curve = miss_rate_curve([one], reasonable)
    # only the tall object counts; the detection on the small one matches it as an ignore box (not an FP)
    assert curve.num_objects == 1 and curve.miss_rate.tolist() == [0.0]
    every = miss_rate_curve([one], ALL)
    assert every.num_objects == 3  # all: three objects, two found (the .8 has IoU 0.6 with the small one)
    assert every.miss_rate == pytest.approx([2 / 3, 1 / 3])
    # without occlusion labels every object counts as visible
    unlabelled = image("x", [tall, occluded], [([0, 0, 30, 80], 0.9)])
    assert miss_rate_curve([unlabelled], reasonable).num_objects == 2


def test_kaist_subsets_day_night_and_border() -> None:
    box = [[100, 100, 130, 180]]  # 80 px tall, no occlusion
    day = image("set01_V000_I00019", box, [([100, 100, 130, 180], 0.9)], occlusion=[0], size=(640, 512))
    night = image("set10_V001_I00039", box, [], occlusion=[0], size=(640, 512))
    values = miss_rates([day, night], KAIST_SUBSETS)
    assert values["MR2_day"] == pytest.approx(1e-10)  # found: miss rate 0 everywhere (floor 1e-10)
    assert values["MR2_night"] == 1.0  # missed, no detections
    # reasonable over both: one of two found from FPPI 0 on
    assert values["MR2_reasonable"] == pytest.approx(0.5) and values["MR2_all"] == pytest.approx(0.5)
    # an object reaching within 5 px of the image edge is an ignore box in the KAIST subsets
    edge = image("set01_V000_I00020", [[0, 100, 30, 180]], [], occlusion=[0], size=(640, 512))
    assert miss_rate_curve([edge], KAIST_SUBSETS[0]).num_objects == 0
    assert miss_rate_curve([edge], GENERIC_SUBSETS[0]).num_objects == 1


def test_when_miss_rate_is_computed() -> None:
    assert miss_rate_wanted("auto", "kaist", ["person"])
    assert miss_rate_wanted("auto", "llvip", ["person"])
    assert not miss_rate_wanted("auto", "flir", ["person", "car", "bicycle"])
    assert not miss_rate_wanted("auto", "folders", ["car"])
    assert miss_rate_wanted(True, "flir", ["person", "car"]) and not miss_rate_wanted(False, "kaist", ["person"])
    assert person_label(["car", "Person"]) == 2 and person_label(["car"]) == 1 and person_label(["a", "b"]) is None


def test_eval_miss_rate_config_values() -> None:
    assert load_config(None, []).eval.miss_rate == "auto"
    assert load_config(None, ["eval.miss_rate=false"]).eval.miss_rate is False
    with pytest.raises(ConfigError, match="eval.miss_rate"):
        load_config(None, ["eval.miss_rate=sometimes"])


def test_detections_below_the_subset_height_range_are_dropped_before_matching() -> None:
    # one 60 px person found at 0.9; ten 30 px boxes on background score higher. For "reasonable" (>= 55 px)
    # the toolbox drops detections shorter than 55 / 1.25 = 44 px first, so the person is found at FPPI 0
    person = [[10, 10, 40, 70]]
    small = [([100 + i, 100, 115 + i, 130], 0.95) for i in range(10)]
    frame = image("a", person, [([10, 10, 40, 70], 0.9), *small])
    reasonable = Subset("reasonable", 55.0, (0, 1))
    assert log_average_miss_rate([frame], reasonable) == pytest.approx(1e-10)
    # without a height range (min_height 0) the ten boxes are false positives before the person: FPPI 10
    assert log_average_miss_rate([frame], Subset("any", 0.0)) == pytest.approx(1.0)
    # "all" is every person at least 20 px tall, as in the Caltech/KAIST protocol
    assert dict((s.name, s.min_height) for s in KAIST_SUBSETS)["all"] == 20.0
    assert dict((s.name, s.min_height) for s in GENERIC_SUBSETS)["all"] == 20.0
