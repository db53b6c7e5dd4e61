"""Plots: each writes one PNG of the expected size with real content."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from crossattentiondet import viz
from crossattentiondet.engine.evaluate import DetectionEvaluator
from crossattentiondet.models.detector import InputLayout

LAYOUT = InputLayout(
    modality_names=("rgb", "thermal", "event"),
    modality_channels=((0, 1, 2), (3,), (4,)),
    stream_channels=((0, 1, 2), (3, 4)),
    scale=(None,) * 5, mean=(0.5,) * 5, std=(0.25,) * 5,
)


def read_png(path) -> np.ndarray:  # noqa: ANN001
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)


def assert_size(pixels: np.ndarray, height: float, width: float) -> None:
    # matplotlib truncates fractional pixel sizes: allow one pixel
    assert abs(pixels.shape[0] - height) <= 1 and abs(pixels.shape[1] - width) <= 1, (pixels.shape, height, width)


def count_color(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(pixels - np.asarray(rgb)).sum(axis=-1) < tol).sum())


def sample_batch(n: int, height: int = 64, width: int = 96) -> tuple[list, list, list]:
    g = torch.Generator().manual_seed(0)
    images, targets, preds = [], [], []
    for _ in range(n):
        rgb = torch.randint(0, 256, (3, height, width), generator=g)
        # thermal in a narrow uint16 band (as a real sensor gives) and a sparse event frame
        thermal = 28000 + torch.randint(0, 800, (1, height, width), generator=g)
        event = (torch.rand((1, height, width), generator=g) > 0.97) * 200
        images.append(torch.cat([rgb, thermal, event]).to(torch.uint16))
        targets.append({"boxes": torch.tensor([[5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([1])})
        preds.append({"boxes": torch.tensor([[50.0, 10.0, 90.0, 60.0], [0.0, 0.0, 10.0, 10.0]]),
                      "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([2, 1])})
    return images, targets, preds


def test_modality_image_scales_each_modality_to_0_1() -> None:
    images, _, _ = sample_batch(1)
    thermal = viz.modality_image(images[0], (3,))
    rgb = viz.modality_image(images[0], (0, 1, 2))
    assert thermal.shape == (64, 96) and rgb.shape == (64, 96, 3)
    # the narrow uint16 band is stretched over the full display range
    assert thermal.min() == 0.0 and thermal.max() == 1.0 and thermal.std() > 0.2
    assert (viz.modality_image(torch.zeros((5, 8, 8), dtype=torch.uint8), (4,)) == 0).all()


def test_save_panels_grid_capped(tmp_path) -> None:
    images, targets, preds = sample_batch(20)
    path = viz.save_panels(images, targets, preds, LAYOUT, ["person", "car"], tmp_path / "panels.png",
                           max_panels=4, titles=[f"s{i}" for i in range(20)])
    assert path.exists() and list(tmp_path.iterdir()) == [path]  # one file, no per-image files
    pixels = read_png(path)
    cell = viz.PANEL_CELL_INCHES * viz.DPI
    # 3 modality columns; 4 rows (capped) of aspect 64/96
    assert_size(pixels, 4 * cell * 64 / 96, 3 * cell)
    # two panel files of the same two samples, with and without boxes: the difference is the drawing
    # (random RGB noise has a few green / red pixels of its own)
    bare = read_png(viz.save_panels(images[:2], None, None, LAYOUT, ["person", "car"], tmp_path / "bare.png"))
    drawn = read_png(viz.save_panels(images[:2], targets[:2], preds[:2], LAYOUT, ["person", "car"],
                                     tmp_path / "drawn.png"))
    assert_size(bare, 2 * cell * 64 / 96, 3 * cell)
    assert count_color(drawn, (0, 208, 0)) - count_color(bare, (0, 208, 0)) > 100  # ground truth
    assert count_color(drawn, (255, 32, 32)) - count_color(bare, (255, 32, 32)) > 100  # 0.9 detection + label


def test_save_panels_score_threshold(tmp_path) -> None:
    images, targets, preds = sample_batch(1)
    shown = read_png(viz.save_panels(images, targets, preds, LAYOUT, ["a", "b"], tmp_path / "a.png"))
    hidden = read_png(viz.save_panels(images, targets, preds, LAYOUT, ["a", "b"], tmp_path / "b.png",
                                      score_thresh=0.95))
    assert count_color(shown, (255, 32, 32)) - count_color(hidden, (255, 32, 32)) > 100
    assert count_color(hidden, (0, 208, 0)) == pytest.approx(count_color(shown, (0, 208, 0)), rel=0.02)


def evaluated_result():  # noqa: ANN201
    rng = np.random.default_rng(0)
    evaluator = DetectionEvaluator(["person", "car", "unused"])
    for i in range(8):
        gt = torch.tensor([[10.0, 10.0, 60.0, 70.0], [100.0, 40.0, 180.0, 120.0]])
        noise = torch.from_numpy(rng.normal(0, 6, (2, 4)).astype(np.float32))
        evaluator.update(
            [{"boxes": gt, "labels": torch.tensor([1, 2]), "image_id": torch.tensor(i)}],
            [{"boxes": torch.cat([gt + noise, torch.tensor([[150.0, 150.0, 200.0, 200.0]])]),
              "scores": torch.from_numpy(rng.random(3).astype(np.float32)), "labels": torch.tensor([1, 2, 1])}],
            [{"stem": str(i), "image_id": i, "height": 240, "width": 320}],
        )
    return evaluator.compute()


def test_plot_pr_curve(tmp_path) -> None:
    result = evaluated_result()
    path = viz.plot_pr_curve(result, tmp_path / "pr.png", result.class_names)
    pixels = read_png(path)
    assert pixels.shape[:2] == (500, 600)
    assert (pixels.std(axis=(0, 1)) > 10).all()
    assert count_color(pixels, (0, 0, 0), tol=30) > 200  # the mean curve


def test_plot_training_curves_tolerates_missing_columns(tmp_path) -> None:
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,loss,loss_classifier,lr,val_mAP,time\n"
        "1,1.2,0.6,0.01,,2026-01-01T00:00\n"
        "2,0.9,0.4,0.01,0.21,2026-01-01T00:10\n"
        "3,0.7,0.3,0.001,0.35,2026-01-01T00:20\n"
    )
    pixels = read_png(viz.plot_training_curves(csv_path, tmp_path / "curves.png"))
    assert pixels.shape[:2] == (380, 1300)
    assert (pixels.std(axis=(0, 1)) > 10).all()

    header_only = tmp_path / "empty.csv"
    header_only.write_text("epoch,loss\n")
    assert read_png(viz.plot_training_curves(header_only, tmp_path / "empty.png")).shape[:2] == (380, 1300)


def test_plot_robustness(tmp_path) -> None:
    rows = [{"zeroed": "none", "mAP": 0.62, "mAP_50": 0.9}, {"zeroed": "rgb", "mAP": 0.2, "mAP_50": 0.4},
            {"zeroed": "thermal", "mAP": 0.55, "mAP_50": float("nan")}, {"zeroed": "event", "mAP": 0.6, "mAP_50": None}]
    pixels = read_png(viz.plot_robustness(rows, tmp_path / "robust.png"))
    labels = ["all inputs", "no rgb", "no thermal", "no event"]
    # horizontal bars: a fixed width, a height that grows with the rows
    assert_size(pixels, viz.horizontal_bar_height(labels, 2) * viz.DPI, 8.0 * viz.DPI)
    assert read_png(viz.plot_robustness(rows[:2], tmp_path / "two.png")).shape[0] < pixels.shape[0]
    assert count_color(pixels, (0x30, 0x70, 0xB0), tol=20) > 500  # the mAP bars
    with pytest.raises(ValueError):
        viz.plot_robustness([], tmp_path / "none.png")


def drawn_figures(monkeypatch: pytest.MonkeyPatch, module: object) -> list:
    """Figures a plotting module would save, drawn (Agg) so their text has a place; nothing is written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures: list = []

    def keep(fig, path):  # noqa: ANN001, ANN202
        FigureCanvasAgg(fig).draw()
        figures.append(fig)
        return path

    monkeypatch.setattr(module, "_save", keep)
    return figures


def assert_labels_apart(fig, axis: str = "y") -> None:  # noqa: ANN001
    """No two tick labels of any axes of ``fig`` overlap, and all lie inside the figure."""
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        assert len(boxes) >= 2
        for i, a in enumerate(boxes):
            assert a.x0 >= 0 and a.y0 >= 0 and a.x1 <= fig.bbox.width and a.y1 <= fig.bbox.height
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (a, b)


def test_long_bar_labels_never_overlap(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = drawn_figures(monkeypatch, viz)
    labels = ["fused two-stream (rgb) and (thermal + event), FRM+FFM at stages 1-4, flow separate",
              "early fusion: one stream of all channels (rgb + thermal + event) with modality dropout",
              "rgb", "thermal_alone_with_a_very_long_configuration_identifier_without_any_spaces_at_all",
              "event alone", "cssa_stage3_threshold0.5_fused_flow_seed0"]
    rows = [{"mAP": 0.1 * i, "mAP_50": 0.15 * i} for i in range(len(labels))]
    viz.plot_ap_bars(labels, rows, tmp_path / "bars.png")
    fig = figures[0]
    assert_labels_apart(fig)
    shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    # every label complete (wrapped, not cut), first row on top, no line longer than the wrap width
    assert ["".join(s.split()) for s in shown] == ["".join(label.split()) for label in labels]
    assert all(len(line) <= viz.LABEL_CHARS for s in shown for line in s.split("\n"))
    assert fig.axes[0].yaxis_inverted()


def test_wrap_label_breaks_at_spaces_and_name_separators() -> None:
    assert viz.wrap_label("short", 10) == "short"
    assert viz.wrap_label("one two three four", 9) == "one two\nthree\nfour"
    assert viz.wrap_label("cssa_stage3_thresh0.5", 12) == "cssa_stage3_\nthresh0.5"
    wrapped = viz.wrap_label("x" * 25, 10)
    assert wrapped.split("\n") == ["x" * 10, "x" * 10, "x" * 5]
    assert "".join(viz.wrap_label("a-b_c d/e=f", 3).split("\n")).replace(" ", "") == "a-b_cd/e=f"


def test_clipped_errors_keep_intervals_inside_0_1() -> None:
    errors = viz.clipped_errors([0.05, 0.5, 0.97, float("nan"), 0.4], [-0.1, 0.4, 0.9, 0.1, float("nan")],
                                [0.2, 0.6, 1.1, 0.3, float("nan")])
    np.testing.assert_allclose(errors, [[0.05, 0.1, 0.07, 0, 0], [0.15, 0.1, 0.03, 0, 0]], atol=1e-12)


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, crossattentiondet.viz, crossattentiondet.engine.evaluate; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
