"""FLOPs and multiply-adds: the convention, known counts, what model-info and the run files report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from crossattentiondet.cli import main
from crossattentiondet.config import load_config
from crossattentiondet.engine.modelinfo import FLOPS_CONVENTION, count_forward_flops
from crossattentiondet.models import build_detector
from tests.test_train import TINY, frames


def test_known_multiply_adds_of_a_conv_and_a_linear() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 10, 12)
    # every output value (2 x 8 x 10 x 12) is a sum of 3 x 3 x 3 products
    macs = 2 * 8 * 10 * 12 * (3 * 3 * 3)
    with torch.no_grad():
        assert count_forward_flops(lambda: conv(x)) == {"flops": 2 * macs, "macs": macs}
    linear = nn.Linear(16, 5)
    with torch.no_grad():
        assert count_forward_flops(lambda: linear(torch.randn(4, 16))) == {"flops": 2 * 4 * 16 * 5, "macs": 4 * 16 * 5}
    # a grouped (depthwise) conv: each output value sums 3 x 3 products of one input channel
    depthwise = nn.Conv2d(4, 4, kernel_size=3, padding=1, groups=4, bias=False)
    with torch.no_grad():
        assert count_forward_flops(lambda: depthwise(torch.randn(1, 4, 6, 6)))["macs"] == 4 * 6 * 6 * 9


def test_model_info_reports_both_and_states_the_convention(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model-info", *TINY, "--size", "64x48", "--json"]) == 0
    flops = json.loads(capsys.readouterr().out)["flops"]
    assert flops["size"] == [64, 48] and flops["convention"] == FLOPS_CONVENTION
    for part in ("backbone", "detector"):
        assert flops[f"{part}_gmacs"] > 0
        assert flops[f"{part}_gflops"] == pytest.approx(2 * flops[f"{part}_gmacs"], abs=2e-3)
    assert flops["detector_gmacs"] > flops["backbone_gmacs"]
    # more than the FPN's 3x3 output conv of the stride-4 level alone (16 -> 16 channels, 16 x 12 pixels)
    assert flops["backbone_gmacs"] * 1e9 > 16 * 16 * 9 * 16 * 12
    assert main(["model-info", *TINY, "--size", "64x48"]) == 0
    text = capsys.readouterr().out
    assert f"{flops['detector_gmacs']:.2f} GMACs" in text and f"{flops['detector_gflops']:.2f} GFLOPs" in text
    assert "2 per multiply-add" in text and "fvcore/mmdet" in text


def test_evaluation_speed_block_has_gflops_gmacs_and_convention(trees, tmp_path: Path) -> None:
    from crossattentiondet.data import prepare_data
    from crossattentiondet.engine.report import speed_and_size

    root = trees.npy("data", frames=frames(5), size=(64, 48), classes=["person", "car"])
    config = load_config(None, [*TINY, f"data.root={root}", f"output.root={tmp_path / 'runs'}", "eval.speed_iters=1"])
    data = prepare_data(config, log=lambda _m: None)
    torch.manual_seed(0)
    model = build_detector(data.resolved_config, data.num_classes, load_pretrained=False).eval()
    speed = speed_and_size(model, data, "test", data.resolved_config, torch.device("cpu"))
    assert speed["eval_size"] == [64, 48] and speed["flops_convention"] == FLOPS_CONVENTION
    for part in ("backbone", "detector"):
        assert speed[f"{part}_gmacs"] > 0
        assert speed[f"{part}_gflops"] == pytest.approx(2 * speed[f"{part}_gmacs"], abs=2e-3)
