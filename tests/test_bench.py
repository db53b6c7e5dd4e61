"""`cadet bench` and engine.bench: every key reported, JSON output, one-line errors. No timed assertions."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from crossattentiondet.cli import bench_cmd
from crossattentiondet.config import ConfigError, load_config
from crossattentiondet.engine.bench import REPORT_KEYS, bench, random_batch
from crossattentiondet.errors import USER_ERRORS
from crossattentiondet.models.roi_pool import SparseMultiScaleRoIAlign

TINY = ["model.mit.embed_dims=[8,16,24,32]", "model.mit.depths=[1,1,1,1]", "model.mit.num_heads=[1,2,2,4]",
        "model.detector.fpn_channels=16", "model.detector.box_head_dim=32", "train.device=cpu"]


def run_cli(argv: list[str]) -> int:
    """Parse and run like ``cadet`` does: user errors become 'error: ...' on stderr and exit status 2.

    Once crossattentiondet.cli.bench_cmd is in COMMAND_MODULES this is ``crossattentiondet.cli.main(argv)``.
    """
    from crossattentiondet.cli import COMMAND_MODULES, main

    if "crossattentiondet.cli.bench_cmd" in COMMAND_MODULES:
        return main(argv)
    parser = argparse.ArgumentParser(prog="cadet")
    bench_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module")
def tiny_report() -> dict:
    config = load_config(None, TINY + ["train.epochs=3"])
    return bench(config, (64, 64), batch=2, steps=2, warmup=1, images=10, eval_images=4, runs=5)


def test_bench_reports_every_key_with_consistent_estimate(tiny_report: dict) -> None:
    r = tiny_report
    assert set(REPORT_KEYS) <= set(r)
    assert len(r["train_step_times_s"]) == 2 and r["train_step_s"] > 0
    assert r["infer_image_s"] == pytest.approx(r["infer_batch_s"] / r["infer_batch"])
    assert r["peak_mem_mb"] > 0 and r["peak_mem_mb"] >= r["base_mem_mb"] * 0.5
    # 10 images at batch 2 = 5 steps, plus 4 validation images per epoch; 3 epochs; 5 runs
    assert r["epoch_s"] == pytest.approx(5 * r["train_step_s"] + 4 * r["infer_image_s"])
    assert r["run_s"] == pytest.approx(3 * r["epoch_s"])
    assert r["study_s"] == pytest.approx(5 * r["run_s"])
    assert (r["size"], r["batch"], r["precision"], r["device"]) == ([64, 64], 2, "fp32", "cpu")


def test_cli_json_parses_and_has_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(["bench", *TINY, "--size", "64x48", "--steps", "1", "--warmup", "0", "--no-infer", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(REPORT_KEYS) <= set(report)
    assert report["size"] == [64, 48] and report["steps"] == 1
    assert report["infer_image_s"] is None  # not measured: null, not NaN (strict JSON)
    assert report["train_step_s"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--size", "0x5"], "must be positive"),
    (["--size", "64"], "WIDTHxHEIGHT"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--runs", "0"], "--runs must be >= 1"),
    (["train.precision=fp16"], "fp16 needs a CUDA device"),
])
def test_cli_bad_values_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [a for a in argv if "=" in a]
    flags = [a for a in argv if "=" not in a]
    code = run_cli(["bench", *TINY, *overrides, "--size", "64x64", "--steps", "1", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_library_rejects_bad_arguments() -> None:
    config = load_config(None, TINY)
    with pytest.raises(ConfigError, match="size"):
        bench(config, (0, 5))
    with pytest.raises(ConfigError, match="steps"):
        bench(config, (64, 64), steps=0)
    with pytest.raises(ConfigError, match="fp16"):
        bench(load_config(None, TINY + ["train.precision=fp16"]), (64, 64))


def test_random_batch_targets_are_valid_boxes() -> None:
    images, targets = random_batch(5, (50, 40), 3, 2, torch.device("cpu"))
    assert [tuple(i.shape) for i in images] == [(5, 40, 50)] * 3 and images[0].dtype == torch.uint8
    for t in targets:
        boxes = t["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 50).all() and (boxes[:, 3] <= 40).all()
        assert ((t["labels"] >= 1) & (t["labels"] <= 2)).all()


def test_duration_format() -> None:
    assert bench_cmd.format_duration(1.234) == "1.23 s"
    assert bench_cmd.format_duration(5400) == "90.0 min"
    assert bench_cmd.format_duration(9000) == "2.5 h"
    assert bench_cmd.format_duration(200000) == "2.3 d"
    assert bench_cmd.format_duration(math.nan) == "-"


def test_sparse_roi_align_matches_torchvision() -> None:
    """The CPU fast path of the box RoI pooling gives torchvision's values and gradients."""
    torch.manual_seed(0)
    names = ["0", "1", "2", "3", "pool"]
    feats = OrderedDict((n, torch.randn(2, 4, 64 // 2**i, 96 // 2**i, requires_grad=True)) for i, n in enumerate(names))
    xy = torch.rand(60, 2) * torch.tensor([400.0, 260.0]) - 10  # some boxes cross the border
    boxes = torch.cat((xy, xy + torch.rand(60, 2) ** 2 * 300 + 0.5), dim=1)
    per_image = [boxes[:35], boxes[35:]]
    shapes = [(256, 384)] * 2
    outputs, grads = [], []
    for pool in (MultiScaleRoIAlign(names, 7, 2), SparseMultiScaleRoIAlign(names, 7, 2)):
        out = pool(feats, per_image, shapes)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin())
        outputs.append(out.detach())
        grads.append([f.grad.clone() for f in feats.values()])
        for f in feats.values():
            f.grad = None
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    for new, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(new, ref, atol=1e-5, rtol=1e-5)
    empty = SparseMultiScaleRoIAlign(names, 7, 2)(feats, [torch.zeros(0, 4), torch.zeros(0, 4)], shapes)
    assert empty.shape == (0, 4, 7, 7)


def test_bf16_on_a_cpu_without_native_bf16_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossattentiondet.engine import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    notes = runtime.precision_notes(cpu, "bf16")
    assert len(notes) == 1 and "emulated" in notes[0] and "fp32" in notes[0]
    assert runtime.precision_notes(cpu, "fp32") == []
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.precision_notes(cpu, "bf16") == []
