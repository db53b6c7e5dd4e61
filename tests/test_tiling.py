"""Tiled (sliced) inference: windows, merging across window borders, the engine's and the API's predict paths."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from crossattentiondet.config import ConfigError, build_config, config_to_dict
from crossattentiondet.engine.tiling import TiledDetector, maybe_tiled, tile_windows
from crossattentiondet.models.detector import InputLayout

# data.modalities defaults: rgb (channels 0-2), thermal (3), event (4)
CONFIG = build_config({})


class BrightSquares(nn.Module):
    """A perfect detector of bright regions: each connected region above 127 in channel c is a box of class
    c + 1 (c = 0, 1), scored by its area (a region cut by a window border scores lower than the whole one)."""

    def __init__(self, cap: int = 100) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # a parameter, for the device lookup
        self.layout = InputLayout.from_config(CONFIG)
        self.num_classes = 2
        self.detections_per_img = cap
        self.zero_channels: list[int] = []
        self.calls: list[list[tuple[int, int]]] = []  # (width, height) of the images of each call

    def set_zero_modalities(self, modalities: list[str] | tuple[str, ...]) -> None:
        self.zero_channels = self.layout.channels_of(list(modalities))

    @property
    def zero_modalities(self) -> list[str]:
        return [n for n, c in zip(self.layout.modality_names, self.layout.modality_channels)
                if set(c) <= set(self.zero_channels)]

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls.append([(int(img.shape[-1]), int(img.shape[-2])) for img in images])
        outputs = []
        for img in images:
            boxes, scores, labels = [], [], []
            for channel in (0, 1):
                if channel in self.zero_channels:
                    continue
                regions, _ = ndimage.label(img[channel].cpu().numpy() > 127)
                for ys, xs in ndimage.find_objects(regions):
                    area = (xs.stop - xs.start) * (ys.stop - ys.start)
                    boxes.append([xs.start, ys.start, xs.stop, ys.stop])
                    scores.append(area / (area + 100))
                    labels.append(channel + 1)
            outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "scores": torch.tensor(scores, dtype=torch.float32),
                            "labels": torch.tensor(labels, dtype=torch.int64)})
        return outputs


def frame(width: int, height: int, squares: list[tuple[int, int, int, int, int]]) -> torch.Tensor:
    """A dark (5, height, width) uint8 frame with bright squares (channel, x0, y0, x1, y1)."""
    image = torch.full((5, height, width), 20, dtype=torch.uint8)
    for channel, x0, y0, x1, y1 in squares:
        image[channel, y0:y1, x0:x1] = 230
    return image


# --------------------------------------------------------------------------------------------- windows
@pytest.mark.parametrize(("width", "height", "tile", "overlap"), [
    (160, 120, 64, 0.25), (640, 480, 256, 0.2), (1000, 300, 320, 0.5), (65, 64, 64, 0.2), (100, 100, 64, 0.0),
    (1920, 1080, 640, 0.2),
])
def test_windows_cover_every_pixel_and_overlap(width: int, height: int, tile: int, overlap: float) -> None:
    windows = tile_windows(width, height, tile, overlap)
    covered = np.zeros((height, width), np.int32)
    for x0, y0, x1, y1 in windows:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (min(tile, width), min(tile, height))  # never padded nor upscaled
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    stride = math.floor(tile * (1 - overlap) + 1e-9)
    for axis, length in ((0, width), (1, height)):
        starts = sorted({w[axis] for w in windows})
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length  # flush with the far edge
        gaps = np.diff(starts)
        # neighbours overlap by at least `overlap` of a tile; all but the last step are exactly the stride
        assert all(tile - g >= tile * overlap - 1e-9 for g in gaps)
        assert all(g == stride for g in gaps[:-1])
    assert len(windows) == len({w[0] for w in windows}) * len({w[1] for w in windows})


def test_frame_smaller_than_the_tile_is_one_window_of_its_size() -> None:
    assert tile_windows(40, 30, 64, 0.2) == [(0, 0, 40, 30)]
    assert tile_windows(64, 64, 64, 0.2) == [(0, 0, 64, 64)]
    # smaller along one axis only: windows are as tall as the frame
    assert {(y0, y1) for _, y0, _, y1 in tile_windows(200, 30, 64, 0.2)} == {(0, 30)}
    model = BrightSquares()
    image = frame(40, 30, [(0, 5, 5, 15, 12)])
    [out] = TiledDetector(model, 64)([image])
    assert model.calls == [[(40, 30)]]  # the whole frame, once
    assert out["boxes"].tolist() == [[5.0, 5.0, 15.0, 12.0]]


@pytest.mark.parametrize(("args", "words"), [
    ((64, 64, 16, 1.0), "eval.tile_overlap"), ((64, 64, 16, -0.1), "eval.tile_overlap"),
    ((64, 64, 0, 0.2), "eval.tile"), ((0, 64, 16, 0.2), "0x64"),
])
def test_bad_window_settings_are_config_errors(args: tuple[int, int, int, float], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        tile_windows(*args)


def test_bad_detector_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="eval.tile_nms_iou"):
        TiledDetector(BrightSquares(), 64, 0.2, 0.0)
    with pytest.raises(ConfigError, match="eval.tile_overlap"):
        TiledDetector(BrightSquares(), 64, 1.5)


# --------------------------------------------------------------------------------------------- merging
def test_object_across_window_borders_is_found_once_in_frame_coordinates() -> None:
    # 160x120, tile 64, overlap 0.25: x windows start at 0, 48, 96; y windows at 0, 48, 56
    across_x = (0, 60, 20, 74, 34)  # cut at x = 64 by the first column of windows (a 4 px sliver there)
    across_corner = (0, 100, 58, 112, 70)  # cut at x = 112 and y = 64
    squares = [across_x, across_corner]
    image = frame(160, 120, squares)
    model = BrightSquares()
    tiled = TiledDetector(model, 64, 0.25, 0.5, windows_per_batch=4)
    [out] = tiled([image])
    assert [len(call) for call in model.calls] == [4, 4, 1]  # 9 windows, 4 per call
    assert all(size == (64, 64) for call in model.calls for size in call)
    found = sorted(out["boxes"].tolist())
    assert found == sorted([float(v) for v in s[1:]] for s in squares)
    assert out["labels"].tolist() == [1, 1]
    # the rule for cut boxes is what removes the slivers: NMS alone (IoU 4/14 with the whole box) keeps them
    [plain] = TiledDetector(BrightSquares(), 64, 0.25, 0.5, cut_containment=1.01)([image])
    assert len(plain["boxes"]) > len(squares)


def test_cut_box_is_kept_when_no_other_window_sees_the_object() -> None:
    # a square larger than the overlap: no window holds it whole, every window sees a piece of it
    image = frame(160, 64, [(0, 40, 10, 120, 30)])
    [out] = TiledDetector(BrightSquares(), 64, 0.25)([image])
    assert len(out["boxes"]) >= 1
    # the pieces together still cover the object
    boxes = out["boxes"]
    assert float(boxes[:, 0].min()) == 40 and float(boxes[:, 2].max()) == 120


def test_classwise_nms_keeps_overlapping_boxes_of_different_classes() -> None:
    # the same square in channel 0 (class 1) and channel 1 (class 2), inside the overlap of two windows:
    # each class is seen whole by two windows, so each has a duplicate to remove
    image = frame(160, 64, [(0, 50, 20, 60, 30), (1, 51, 21, 61, 31)])  # IoU 0.68
    model = BrightSquares()
    [out] = TiledDetector(model, 64, 0.25)([image])
    raw = [len(o["boxes"]) for o in BrightSquares()([image[:, :, x0:x1] for x0, _, x1, _ in tile_windows(160, 64, 64, 0.25)])]
    assert sum(raw) == 4  # two windows x two classes, before merging
    assert sorted(zip(out["labels"].tolist(), out["boxes"].tolist())) == [
        (1, [50.0, 20.0, 60.0, 30.0]), (2, [51.0, 21.0, 61.0, 31.0])]


class ManyBoxes(nn.Module):
    """A stub detector that returns ``cap`` distinct, non-overlapping boxes per window, wherever it is."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.detections_per_img = cap

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for img in images:
            width = int(img.shape[-1])
            per_row = width // 4
            boxes = [[4.0 * (i % per_row) + 1, 4.0 * (i // per_row) + 1, 4.0 * (i % per_row) + 3,
                      4.0 * (i // per_row) + 3] for i in range(self.detections_per_img)]
            outputs.append({"boxes": torch.tensor(boxes), "scores": torch.linspace(0.9, 0.1, len(boxes)),
                            "labels": torch.ones(len(boxes), dtype=torch.int64)})
        return outputs


def test_merged_cap_is_the_window_cap_times_the_windows() -> None:
    # 8 windows of a 256 x 128 frame, 20 boxes (the model's cap) in each, all 2 px and apart within a window;
    # windows overlap, so some boxes coincide across windows and NMS merges them, but far more than one
    # window's 20 remain: the merged frame keeps up to 20 x 8
    windows = tile_windows(256, 128, 64, 0.0)
    assert len(windows) == 8
    model = ManyBoxes(20)
    tiled = TiledDetector(model, 64, 0.0)
    [out] = tiled(torch.zeros(1, 3, 128, 256))
    assert tiled.frame_cap(8) == 160 and len(out["boxes"]) == 160  # no overlap: no duplicates, all kept
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)
    # an explicit cap is the frame's, whatever its windows
    [out] = TiledDetector(model, 64, 0.0, detections_per_img=30)(torch.zeros(1, 3, 128, 256))
    assert len(out["boxes"]) == 30
    with pytest.raises(ConfigError, match="detections_per_img"):
        TiledDetector(model, 64, 0.0, detections_per_img=0)


def test_an_explicit_cap_keeps_the_highest_first() -> None:
    squares = [(0, 8 + 30 * i, 8, 8 + 30 * i + 4 + 2 * i, 20) for i in range(5)]  # widths 4, 6, ..., 12
    image = frame(160, 64, squares)
    [out] = TiledDetector(BrightSquares(), 64, 0.25, detections_per_img=3)([image])
    assert len(out["scores"]) == 3
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)
    assert sorted(b[2] - b[0] for b in out["boxes"].tolist()) == [8.0, 10.0, 12.0]  # the 3 largest regions


def test_several_frames_share_calls_and_keep_their_own_detections() -> None:
    first, second = frame(160, 120, [(0, 60, 20, 74, 34)]), frame(100, 70, [(1, 5, 40, 20, 55)])
    model = BrightSquares()
    out = TiledDetector(model, 64, 0.25, windows_per_batch=5)([first, second])
    assert sum(len(call) for call in model.calls) == 9 + len(tile_windows(100, 70, 64, 0.25))
    assert out[0]["boxes"].tolist() == [[60.0, 20.0, 74.0, 34.0]] and out[0]["labels"].tolist() == [1]
    assert out[1]["boxes"].tolist() == [[5.0, 40.0, 20.0, 55.0]] and out[1]["labels"].tolist() == [2]


def test_frame_without_objects_gives_empty_detections() -> None:
    [out] = TiledDetector(BrightSquares(), 64, 0.25)([frame(160, 120, [])])
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].dtype == torch.int64


# --------------------------------------------------------------------------------------------- the model's face
def test_wrapper_reads_as_the_model_and_refuses_training() -> None:
    model = BrightSquares()
    tiled = maybe_tiled(model, CONFIG.eval.model_copy(update={"tile": 64}))
    assert isinstance(tiled, TiledDetector) and not tiled.training and not model.training
    assert maybe_tiled(model, CONFIG.eval) is model  # eval.tile None: unchanged
    assert tiled.layout is model.layout and tiled.num_classes == 2 and tiled.window_detections_per_img == 100
    assert tiled.detections_per_img is None  # no explicit cap: the model's per window
    assert next(tiled.parameters()) is model.anchor
    tiled.set_zero_modalities(["thermal"])
    assert tiled.zero_modalities == ["thermal"] == model.zero_modalities
    assert getattr(tiled, "module", tiled) is tiled  # engine code unwrapping DDP's .module keeps the tiles
    assert tiled.eval() is tiled
    with pytest.raises(RuntimeError, match="inference"):
        tiled.train()
    with pytest.raises(RuntimeError, match="inference"):
        tiled([frame(64, 64, [])], [{"boxes": torch.zeros(0, 4)}])
    retiled = maybe_tiled(tiled, CONFIG.eval.model_copy(update={"tile": 96, "tile_overlap": 0.5}))
    assert retiled.detector is model and (retiled.tile, retiled.overlap) == (96, 0.5)
    copied = copy.deepcopy(tiled)
    assert copied.detector is not model and copied.tile == 64 and copied.layout == model.layout


def test_evaluate_and_robustness_table_run_on_the_tiled_model() -> None:
    from crossattentiondet.engine.evaluate import evaluate, robustness_table

    squares = [[(0, 60, 20, 74, 34)], [(1, 100, 58, 112, 70), (0, 10, 80, 22, 92)]]
    batches = [([frame(160, 120, s) for s in squares],
                [{"boxes": torch.tensor([q[1:] for q in s], dtype=torch.float32),
                  "labels": torch.tensor([q[0] + 1 for q in s]), "image_id": torch.tensor(i)} for i, s in enumerate(squares)],
                [{"stem": f"f{i}", "image_id": i, "height": 120, "width": 160} for i in range(2)])]
    model = BrightSquares()
    tiled = TiledDetector(model, 64, 0.25)
    result = evaluate(tiled, batches, "cpu", class_names=["a", "b"])
    assert result.metrics["mAP"] == pytest.approx(1.0)
    # predictions are in frame coordinates (COCO xywh)
    assert sorted(p["bbox"] for p in result.predictions) == sorted(
        [float(q[1]), float(q[2]), float(q[3] - q[1]), float(q[4] - q[2])] for s in squares for q in s)
    rows = robustness_table(tiled, batches, "cpu", class_names=["a", "b"], modalities=["rgb", "thermal"])
    by_name = {r["zeroed"]: r["mAP"] for r in rows}
    assert by_name["none"] == pytest.approx(1.0) and by_name["rgb"] == pytest.approx(0.0)
    assert model.zero_modalities == []  # restored after each pass


# --------------------------------------------------------------------------------------------- a real detector
TINY = ["model.backbone=mit_b0", "model.mit.embed_dims=[8,16,24,32]", "model.mit.depths=[1,1,1,1]",
        "model.mit.num_heads=[1,1,1,1]", "model.detector.fpn_channels=16", "model.detector.box_head_dim=32",
        "model.detector.anchor_sizes=[[8],[16],[32],[64],[128]]", "model.detector.rpn.pre_nms_top_n_test=100",
        "model.detector.rpn.post_nms_top_n_test=50", "model.detector.score_thresh=0.0",
        "model.detector.detections_per_img=40"]


def test_tiny_faster_rcnn_tiled_gives_frame_coordinate_boxes() -> None:
    from crossattentiondet.models import build_detector

    torch.manual_seed(0)
    model = build_detector(build_config({}, TINY), 2, load_pretrained=False).eval()
    image = torch.randint(0, 256, (5, 120, 160), dtype=torch.uint8)
    tiled = TiledDetector(model, 64, 0.25)
    with torch.inference_mode():
        [out] = tiled([image])
        windows = tile_windows(160, 120, 64, 0.25)
        per_window = model([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows])
    assert 0 < len(out["boxes"]) <= 40 * len(windows) and tiled.window_detections_per_img == 40
    boxes = out["boxes"]
    assert float(boxes[:, [0, 2]].min()) >= 0 and float(boxes[:, [0, 2]].max()) <= 160
    assert float(boxes[:, [1, 3]].min()) >= 0 and float(boxes[:, [1, 3]].max()) <= 120
    assert float(boxes[:, 0].max()) > 64 or float(boxes[:, 1].max()) > 64  # found beyond the first window
    # every merged box is a window's box shifted by that window's origin (same score and class; batches of
    # another size round differently in the last bit)
    shifted = torch.cat([o["boxes"] + torch.tensor([x0, y0, x0, y0]) for o, (x0, y0, _, _) in zip(per_window, windows)])
    scores = torch.cat([o["scores"] for o in per_window])
    labels = torch.cat([o["labels"] for o in per_window])
    for box, score, label in zip(boxes, out["scores"], out["labels"]):
        match = ((shifted - box).abs().amax(dim=1) < 1e-3) & ((scores - score).abs() < 1e-5) & (labels == label)
        assert bool(match.any())


# --------------------------------------------------------------------------------------------- predict paths
def _checkpoint(config_tree: dict) -> dict:
    return {"path": "stub.pt", "class_names": ["ball", "player"], "config": config_tree}


def _frame_arrays(width: int, height: int, squares: list[tuple[int, int, int, int, int]]) -> dict[str, np.ndarray]:
    image = frame(width, height, squares).numpy()
    return {"rgb": image[:3].transpose(1, 2, 0), "thermal": image[3], "event": image[4]}


def test_write_detections_tiles_when_eval_tile_is_set(tmp_path: Path) -> None:
    from crossattentiondet.engine.inference import write_detections

    config = build_config({}, ["eval.tile=64", "eval.tile_overlap=0.25"])
    model = BrightSquares()
    messages: list[str] = []
    path = write_detections(model, config, _checkpoint(config_to_dict(config)),
                            [("big", _frame_arrays(160, 120, [(0, 60, 20, 74, 34)]))], tmp_path, score_thresh=0.0,
                            panels=0, echo=messages.append)
    written = json.loads(path.read_text())
    assert written["tiling"] == {"tile": 64, "overlap": 0.25, "nms_iou": 0.5}
    [record] = written["frames"]
    assert (record["width"], record["height"]) == (160, 120)
    assert [(d["box_xyxy"], d["class_name"]) for d in record["detections"]] == [([60.0, 20.0, 74.0, 34.0], "ball")]
    assert all(size == (64, 64) for call in model.calls for size in call) and len(model.calls) == 2  # 9 windows
    assert any("tiled inference: 64 px" in m for m in messages)
    # eval.tile unset: the whole frame in one call
    whole = BrightSquares()
    untiled = build_config({})
    path = write_detections(whole, untiled, _checkpoint(config_to_dict(untiled)),
                            [("big", _frame_arrays(160, 120, [(0, 60, 20, 74, 34)]))], tmp_path / "w", score_thresh=0.0,
                            panels=0, echo=lambda _m: None)
    assert whole.calls == [[(160, 120)]] and json.loads(path.read_text())["tiling"] is None


def test_api_predict_tile_keyword(tmp_path: Path) -> None:
    from crossattentiondet.api import Detector

    detector = Detector(BrightSquares(), CONFIG, _checkpoint(config_to_dict(CONFIG)))
    arrays = _frame_arrays(160, 120, [(1, 100, 58, 112, 70)])
    [dets] = detector.predict(arrays, tile=64, overlap=0.25, score_thresh=0.0)
    assert dets.boxes.tolist() == [[100.0, 58.0, 112.0, 70.0]] and dets.names == ["player"]
    assert all(size == (64, 64) for call in detector.model.calls for size in call)
    with pytest.raises(ConfigError, match="tile=16"):
        detector.predict(arrays, tile=16)
    with pytest.raises(ConfigError, match="overlap=1.0"):
        detector.predict(arrays, tile=64, overlap=1.0)


def test_api_overlap_without_any_tile_is_a_config_error() -> None:
    from crossattentiondet.api import Detector
    from crossattentiondet.errors import DataError

    plain = Detector(BrightSquares(), CONFIG, {"config": config_to_dict(CONFIG)})
    for kwargs in ({"overlap": 0.3}, {"nms_iou": 0.4}):
        with pytest.raises(ConfigError, match="needs a tile"):
            plain.predict([], **kwargs)
    # a tile in the run's config: the overlap applies to it (the call gets as far as the frames)
    tiled_config = build_config({}, ["eval.tile=64"])
    tiled = Detector(BrightSquares(), tiled_config, {"config": config_to_dict(tiled_config)})
    with pytest.raises(DataError, match="no frames given"):
        tiled.predict([], overlap=0.3)
    with pytest.raises(DataError, match="no frames given"):
        plain.predict([], tile=64, overlap=0.3)


def test_a_lower_predict_threshold_lowers_the_models_own_cut_off(tmp_path: Path) -> None:
    """`cadet predict --score-thresh 0.0`: the model's model.detector.score_thresh must not hide detections below
    it; the model's own value is restored afterwards."""
    from crossattentiondet.engine.inference import detect_frames

    class Thresholded(BrightSquares):
        score_thresh = 0.05

        def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            self.seen = self.score_thresh
            outs = super().forward(images)
            return [{k: v[o["scores"] >= self.score_thresh] for k, v in o.items()} for o in
                    ({**o, "scores": o["scores"] * 0.01} for o in outs)]  # every score below 0.05

    config = build_config({})
    model = Thresholded()
    frames = [("f", _frame_arrays(96, 64, [(0, 10, 10, 24, 24)]))]
    [low] = detect_frames(model, config, _checkpoint(config_to_dict(config)), frames, score_thresh=0.0,
                          echo=lambda _m: None)
    assert model.seen == 0.0 and len(low["boxes"]) == 1 and model.score_thresh == 0.05
    [high] = detect_frames(model, config, _checkpoint(config_to_dict(config)), frames, score_thresh=0.3,
                           echo=lambda _m: None)
    assert model.seen == 0.05 and len(high["boxes"]) == 0
