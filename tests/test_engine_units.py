"""Engine building blocks: lr scaling and schedules, optimizer groups, staged freezing, EMA, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from crossattentiondet.config import FreezeConfig, ScheduleConfig, TrainConfig, build_config
from crossattentiondet.engine.checkpoint import load_checkpoint, save_checkpoint
from crossattentiondet.engine.ema import ModelEMA
from crossattentiondet.engine.freeze import apply_freeze, frozen_stages
from crossattentiondet.engine.optim import (
    build_optimizer,
    effective_batch,
    lr_factor,
    scaled_lr,
)
from crossattentiondet.engine.phases import PhaseSchedule, resolve_phases
from crossattentiondet.engine.runtime import autocast, check_precision, resolve_device
from crossattentiondet.errors import ConfigError, TrainingError
from crossattentiondet.models import build_detector

TINY = {"mit": {"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4]},
        "detector": {"fpn_channels": 16, "box_head_dim": 32}}


def tiny_model():
    torch.manual_seed(0)
    return build_detector(build_config({"model": TINY}), 1)


@pytest.mark.parametrize("rule,expected", [("none", 0.02), ("linear", 0.01), ("sqrt", 0.02 * math.sqrt(0.5))])
def test_lr_scaling_by_effective_batch(rule: str, expected: float) -> None:
    train = TrainConfig(lr=0.02, batch_size=2, accumulation=2, lr_scaling=rule, base_batch=16)
    assert effective_batch(train, world_size=2) == 8
    assert scaled_lr(train, world_size=2) == pytest.approx(expected)


def test_step_schedule_matches_steplr_per_epoch() -> None:
    s = ScheduleConfig(type="step", step_size=15, gamma=0.1)
    # epochs 1-15 at the base lr, then x0.1 (torch's StepLR stepped once per epoch)
    assert lr_factor(14 * 10 + 9, s, iters_per_epoch=10, total_iters=200) == 1.0
    assert lr_factor(15 * 10, s, iters_per_epoch=10, total_iters=200) == pytest.approx(0.1)


def test_multistep_cosine_poly_and_warmup() -> None:
    ms = ScheduleConfig(type="multistep", milestones=[2, 4], gamma=0.5)
    assert [lr_factor(e * 10, ms, 10, 60) for e in (0, 2, 4)] == [1.0, 0.5, 0.25]
    cos = ScheduleConfig(type="cosine")
    assert lr_factor(0, cos, 10, 100) == 1.0 and lr_factor(50, cos, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, cos, 10, 100) == pytest.approx(0.0, abs=1e-12)
    poly = ScheduleConfig(type="poly", power=2.0)
    assert lr_factor(50, poly, 10, 100) == pytest.approx(0.25)
    warm = ScheduleConfig(type="constant", warmup_iters=10, warmup_factor=0.1)
    assert lr_factor(0, warm, 10, 100) == pytest.approx(0.1)
    assert lr_factor(5, warm, 10, 100) == pytest.approx(0.55)
    assert lr_factor(10, warm, 10, 100) == 1.0
    warm_epochs = ScheduleConfig(type="constant", warmup_epochs=0.5, warmup_iters=999, warmup_factor=0.0)
    assert lr_factor(5, warm_epochs, 10, 100) == 1.0  # warmup_epochs wins over warmup_iters


def test_cosine_min_lr_floor_in_optimizer() -> None:
    model = torch.nn.Linear(2, 2)
    train = TrainConfig(lr=0.1, epochs=2, schedule=ScheduleConfig(type="cosine", min_lr=0.01))
    opt = build_optimizer_for(model, train)
    sched = PhaseSchedule(opt)
    sched.start(resolve_phases(train)[0], updates_per_epoch=5, epoch=0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def build_optimizer_for(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": list(model.parameters()), "initial_lr": train.lr}], lr=train.lr)


def test_optimizer_groups_backbone_mult_and_no_decay() -> None:
    model = tiny_model()
    train = TrainConfig(lr=0.01, optimizer={"type": "adamw", "weight_decay": 0.05, "backbone_lr_mult": 0.1,
                                            "no_decay_norm_bias": True})
    opt = build_optimizer(model, train, 0.01)
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "heads", "heads_no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(0.001) and groups["heads"]["lr"] == pytest.approx(0.01)
    assert groups["heads_no_decay"]["weight_decay"] == 0.0 and groups["heads"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    stream_ids = {id(p) for p in model.backbone.encoder.streams.parameters()}
    assert all(id(p) in stream_ids for p in groups["backbone"]["params"] + groups["backbone_no_decay"]["params"])
    sgd = build_optimizer(model, TrainConfig(optimizer={"nesterov": True, "momentum": 0.9}), 0.01)
    assert sgd.param_groups[0]["nesterov"] is True and len(sgd.param_groups) == 2


def test_staged_freezing_all_and_progressive() -> None:
    f = FreezeConfig(epochs=2, mode="progressive", progressive_every=1)
    assert [frozen_stages(f, e) for e in range(6)] == [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3], [1, 2], [1], []]
    assert frozen_stages(FreezeConfig(epochs=1, mode="all"), 1) == []
    model = tiny_model()
    apply_freeze(model, FreezeConfig(epochs=1, mode="progressive"), 1)  # stages 1-3 frozen, stage 4 trainable
    stream = model.backbone.encoder.streams[0]
    assert not any(p.requires_grad for p in stream.block1.parameters())
    assert all(p.requires_grad for p in stream.block4.parameters())
    assert all(p.requires_grad for p in model.backbone.encoder.fusions.parameters())
    assert all(p.requires_grad for p in model.roi_heads.parameters())


def test_frozen_parameters_keep_optimizer_state_across_unfreezing() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 2)
    model(x).sum().backward()
    opt.step()
    first = model[0].weight.detach().clone()
    momentum = opt.state[model[0].weight]["momentum_buffer"].clone()
    model[0].weight.requires_grad_(False)
    opt.zero_grad(set_to_none=True)
    model(x).sum().backward()
    opt.step()
    assert torch.equal(model[0].weight, first)  # frozen: untouched
    assert torch.equal(opt.state[model[0].weight]["momentum_buffer"], momentum)  # state kept for later


def test_ema_tracks_weights_and_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(8, 2))  # changes BN running stats
    ema.update(model)
    start = ema.module[0].weight
    assert not torch.equal(start, model[0].weight)
    assert torch.allclose(ema.module[1].running_mean, 0.5 * model[1].running_mean, atol=1e-6)
    restored = ModelEMA(model, 0.5)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.module[0].weight, ema.module[0].weight)


def test_checkpoint_atomic_and_refuses_non_finite(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": {}, "epoch": 1})
    loaded = load_checkpoint(tmp_path)  # a run directory works too
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["weight"], model.weight)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="non-finite"):
        save_checkpoint(path, {"model": model.state_dict(), "config": {}, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1  # the good file is kept
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="cannot read"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(TrainingError, match="convert-original"):
        load_checkpoint(other)


def test_device_and_precision_checks() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="not a usable device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
            check_precision("fp16", torch.device("cpu"))
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
