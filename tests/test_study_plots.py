"""Study plots: long configuration names stay readable, confidence intervals stay inside [0, 1]."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from crossattentiondet.studies import plots
from crossattentiondet.studies.aggregate import Stats
from tests.test_viz import assert_labels_apart, drawn_figures

METRICS = ("mAP", "val_mAP", "mAP_small", "mAP_medium", "mAP_large")


def config(cid: str, mean: float, half: float, parent: str | None = None) -> Any:
    """A stand-in for a ConfigResult: an id and the same mean +- half interval for every metric."""
    stats = {m: Stats(3, mean, 0.1, mean - half, mean + half) for m in METRICS}
    return SimpleNamespace(configuration=SimpleNamespace(id=cid, config=None, parent=parent), stats=stats)


def error_segments(fig: Any) -> np.ndarray:
    """End points (N, 2, 2) of every error bar drawn in the figure."""
    segments = []
    for ax in fig.axes:
        for container in ax.containers:
            bars = getattr(container, "errorbar", None)
            lines = bars.lines if bars is not None else getattr(container, "lines", None)
            if lines is None:
                continue
            for collection in lines[2]:
                segments += [np.asarray(s) for s in collection.get_segments()]
    return np.asarray(segments)


LONG_IDS = ["fusion_cssa_stage1-2-3-4_threshold0.5_separate-flow_seed-averaged",
            "fusion_gaff_stage2-3_inter-shared_se-reduction8_fused-flow", "baseline", "rgb_only_backbone_mit_b2",
            "thermal_event_early_fusion_single_stream_with_modality_dropout_0.3"]


def test_config_bars_keep_long_names_apart_and_intervals_in_0_1(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    figures = drawn_figures(monkeypatch, plots)
    # intervals that leave [0, 1] on both sides (a t-interval over 3 seeds easily does)
    configs = [config(cid, mean, 0.3) for cid, mean in zip(LONG_IDS, (0.05, 0.9, 0.5, 0.95, 0.1))]
    plots.plot_config_bars(configs, configs[2], tmp_path / "bars.png", "Phase 1: a long title " * 5)
    plots.plot_ap_by_size(SimpleNamespace(configs=configs), tmp_path / "sizes.png")
    for fig in figures:
        assert_labels_apart(fig)
        ends = error_segments(fig)[:, :, 0]  # x of both ends: the bars are horizontal
        assert len(ends) >= 2 * len(configs)
        assert ends.min() >= 0.0 and ends.max() <= 1.0
        assert ends.min() == pytest.approx(0.0) and ends.max() == pytest.approx(1.0)  # clipped, not dropped


def test_sensitivity_and_grid_intervals_are_clipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = drawn_figures(monkeypatch, plots)
    points = [(1.0, config("a", 0.02, 0.2)), (2.0, config("b", 0.5, 0.1)), (4.0, config("c", 0.99, 0.2))]
    plots.plot_sensitivity({"parent": points}, "model.fusion.cssa.switching_thresh", None, tmp_path / "s.png")
    groups = {cid: [("x=1", config(cid, 0.97, 0.3)), ("x=2", config(cid, 0.03, 0.3))] for cid in LONG_IDS[:3]}
    plots.plot_grid(groups, None, tmp_path / "g.png", "grid")
    for fig in figures:
        ends = error_segments(fig)[:, :, 1]  # vertical error bars
        assert ends.min() == pytest.approx(0.0) and ends.max() == pytest.approx(1.0)
    assert_labels_apart(figures[1], axis="x")  # group names under the grid's bars, wrapped
