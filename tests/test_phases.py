"""train.phases: per-phase batch/lr/schedule/freezing, optimizer state and schedule across unfreezing, exact
resume inside a phase, starting at a later phase from another run's weights, fp16 overflows counted."""

from __future__ import annotations

import contextlib
import csv
import math
from pathlib import Path

import pytest
import torch

from crossattentiondet.config import ConfigError, ScheduleConfig, TrainConfig, build_config
from crossattentiondet.engine import evaluate as engine_evaluate
from crossattentiondet.engine import trainer as trainer_module
from crossattentiondet.engine.optim import schedule_factor
from crossattentiondet.engine.phases import PhaseSchedule, resolve_phases
from crossattentiondet.engine.trainer import train
from crossattentiondet.errors import TrainingError

TINY = ["task=segment", "model.backbone=mit_b0", "model.mit.embed_dims=[8,16,32,64]", "model.mit.num_heads=[1,1,1,1]",
        "model.mit.depths=[1,1,1,1]", "model.streams=[[rgb],[thermal]]", "model.seg.size=32",
        "model.seg.head_channels=8", "data.loader.num_workers=0", "data.synthetic.images=20",
        "data.synthetic.size=[32,32]", "train.optimizer.type=adamw", "eval.bootstrap=0", "eval.panels=0",
        "eval.plots=false", "eval.speed=false", "eval.robustness=false", "output.tensorboard=false"]
# stage 1: backbone frozen at batch 4; stage 2: batch 2, backbone at 0.1x, progressive unfreezing, warmup
PHASES = {"train": {"epochs": 3, "phases": [
    {"name": "s1", "epochs": 1, "batch_size": 4, "lr": 0.003, "freeze": "backbone",
     "schedule": {"type": "cosine", "min_lr": 0.0003}},
    {"name": "s2", "batch_size": 2, "lr": 0.002, "backbone_lr_mult": 0.1, "freeze": "progressive",
     "unfreeze_steps": 2, "schedule": {"type": "cosine", "min_lr": 0.0001, "warmup_epochs": 1}}]}}


def _quiet(_message: str) -> None:
    pass


def _config(tmp_path: Path, name: str, *extra: str) -> object:
    return build_config(PHASES, [*TINY, f"output.root={tmp_path}", f"name={name}",
                                 f"data.synthetic.cache_dir={tmp_path / 'scenes'}", *extra])


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def test_warmup_scales_every_group_by_one_factor() -> None:
    train_cfg = TrainConfig.model_validate(
        {"epochs": 4, "optimizer": {"backbone_lr_mult": 0.1},
         "phases": [{"epochs": 4, "lr": 0.01, "schedule": {"type": "cosine", "warmup_epochs": 2, "min_lr": 0.001}}]})
    [phase] = resolve_phases(train_cfg)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.AdamW([{"params": [params[0]], "name": "heads"}, {"params": [params[1]], "name": "backbone"}])
    schedule = PhaseSchedule(opt)
    schedule.start(phase, updates_per_epoch=5, epoch=0)
    heads, backbone = [], []
    for _ in range(20):
        heads.append(schedule.lr_of("heads"))
        backbone.append(schedule.lr_of("backbone"))
        schedule.step()
    assert heads[0] < heads[5] < heads[9]  # warming up
    assert all(b == pytest.approx(0.1 * h) for h, b in zip(heads, backbone))  # the 0.1x survives the warmup
    assert heads[0] == pytest.approx(0.01 * schedule_factor(0, phase.schedule, 5, 20, 0.01))
    assert min(heads) >= 0.001 - 1e-12  # never below min_lr, warmup included (the floor applies after it)


def test_schedules_restart_and_one_cycle() -> None:
    restart = ScheduleConfig(type="cosine_restart", restart_epochs=2, t_mult=2)
    # cycles of 2 then 4 epochs (10 updates each epoch): back at the top at epochs 2 and 6
    assert schedule_factor(20, restart, 10, 100, 1.0) == pytest.approx(1.0)
    assert schedule_factor(60, restart, 10, 100, 1.0) == pytest.approx(1.0)
    assert schedule_factor(40, restart, 10, 100, 1.0) == pytest.approx(0.5)
    one = ScheduleConfig(type="onecycle", pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert schedule_factor(0, one, 10, 100, 1.0) == pytest.approx(1 / 25)
    assert schedule_factor(30, one, 10, 100, 1.0) == pytest.approx(1.0)
    assert schedule_factor(100, one, 10, 100, 1.0) == pytest.approx(1 / 25e4)


def test_phased_run_keeps_optimizer_state_and_follows_the_schedule(tmp_path: Path) -> None:
    result = train(_config(tmp_path, "phased"), echo=_quiet)
    assert result.finished
    rows = _rows(result.run_dir)
    assert [r["phase"] for r in rows] == ["s1", "s2", "s2"]
    assert [r["frozen_stages"] for r in rows] == ["1 2 3 4", "1 2 3", ""]  # progressive, 2 steps
    log = (result.run_dir / "training.log").read_text()
    assert "phase 1/2 s1: epochs 1-1, batch 4 x accumulation 1" in log
    assert "phase 2/2 s2: epochs 2-3, batch 2 x accumulation 1" in log

    final = _last(result.run_dir)
    config = build_config(final["training"]["user_config"])
    phases = resolve_phases(config.train)
    train_frames = len(__import__("json").loads((result.run_dir / "split.json").read_text())["splits"]["train"])
    upe = [math.ceil(train_frames / p.batch_size) for p in phases]
    # the lr logged at the end of each epoch is the phase's schedule at that update, every group scaled alike
    for row, (phase, updates, done) in zip(rows, [(phases[0], upe[0], 1), (phases[1], upe[1], 1),
                                                   (phases[1], upe[1], 2)]):
        want = phase.lr * schedule_factor(updates * done, phase.schedule, updates, updates * phase.epochs, phase.lr)
        assert float(row["lr"]) == pytest.approx(want, rel=1e-6)
    assert float(rows[2]["lr_backbone"]) == pytest.approx(0.1 * float(rows[2]["lr"]), rel=1e-6)

    # one optimizer for the whole run: a head parameter's Adam step counts every update of both phases; the
    # backbone's first stage trained only in the last epoch (its state starts there, nothing was rebuilt)
    from crossattentiondet.engine.optim import build_optimizer
    from crossattentiondet.tasks import get_task

    model = get_task("segment").build_model(config, 2, load_pretrained=False)
    optimizer = build_optimizer(model, config.train, phases[0].lr)
    optimizer.load_state_dict(final["training"]["optimizer"])
    params = dict(model.named_parameters())
    head = params[next(n for n in params if n.startswith("decoder."))]
    stage1 = params[next(n for n in params if n.startswith("backbone.encoder.streams.0.patch_embed1"))]
    assert float(optimizer.state[head]["step"]) == upe[0] + 2 * upe[1]
    assert float(optimizer.state[stage1]["step"]) == upe[1]


def test_resume_inside_a_phase_is_exact_and_start_phase_uses_init_from(tmp_path: Path) -> None:
    whole = train(_config(tmp_path, "whole"), echo=_quiet)
    part = train(_config(tmp_path, "part"), stop_after_epoch=2, echo=_quiet)  # stops inside phase 2
    assert not part.finished and part.state.epoch == 2
    resumed = train(None, resume=part.run_dir, echo=_quiet)
    a, b = _last(whole.run_dir), _last(resumed.run_dir)
    assert all(torch.equal(a["training"]["model"][k], b["training"]["model"][k]) for k in a["training"]["model"])
    assert [r["lr"] for r in _rows(whole.run_dir)] == [r["lr"] for r in _rows(resumed.run_dir)]

    # `--resume-from stage1/best.pt --skip-stage1`: phase 2 only, from the other run's weights
    best = whole.run_dir / "checkpoints" / "best.pt"
    stage2 = train(_config(tmp_path, "stage2", f"model.init_from={best}", "train.start_phase=2"), echo=_quiet)
    rows = _rows(stage2.run_dir)
    assert [r["epoch"] for r in rows] == ["2", "3"] and {r["phase"] for r in rows} == {"s2"}
    log = (stage2.run_dir / "training.log").read_text()
    assert "model.init_from: loaded" in log and "starting at phase 2 (s2, epoch 2)" in log
    loaded = int(log.split("model.init_from: loaded ")[1].split()[0])
    assert loaded == len(torch.load(best, map_location="cpu", weights_only=False)["model"])

    with pytest.raises(ConfigError, match="does not exist"):
        train(_config(tmp_path, "missing", f"model.init_from={tmp_path / 'nope.pt'}"), echo=_quiet)
    foreign = tmp_path / "foreign.pth"
    torch.save({"model_state_dict": {"sdta.0.weight": torch.zeros(3)}}, foreign)
    with pytest.raises(ConfigError, match="match this model"):
        train(_config(tmp_path, "foreign", f"model.init_from={foreign}"), echo=_quiet)


def test_fp16_overflows_are_skipped_and_counted_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GradScaler that starts far too high overflows at first (fp16 activation gradients pass 65504): the
    updates are skipped and counted, the scale comes down and training goes on."""

    class HighScaler(torch.amp.GradScaler):
        def __init__(self, device: str, enabled: bool = True) -> None:
            super().__init__(device, init_scale=2.0 ** 40, enabled=enabled)

    # fp16 on the CPU, for this test only: training under fp16 autocast, evaluation in fp32
    monkeypatch.setattr(trainer_module, "check_precision", lambda *_: None)
    monkeypatch.setattr(engine_evaluate, "autocast_context", lambda *_: contextlib.nullcontext())
    monkeypatch.setattr(trainer_module.torch.amp, "GradScaler", HighScaler)
    one_phase = ["train.epochs=1", "train.batch_size=2", "train.precision=fp16", "train.max_nonfinite=2"]
    config = build_config({}, [*TINY, f"output.root={tmp_path}", "name=fp16",
                               f"data.synthetic.cache_dir={tmp_path / 'scenes'}", *one_phase])
    result = train(config, echo=_quiet)
    assert result.finished and result.state.overflow_total >= 3  # more than max_nonfinite: not fatal
    assert int(_rows(result.run_dir)[0]["overflow_skips"]) == result.state.overflow_total
    assert result.state.skipped_total == 0  # overflows are not "non-finite" failures
    assert "skipped by the GradScaler" in (result.run_dir / "training.log").read_text()

    config = build_config({}, [*TINY, f"output.root={tmp_path}", "name=fp16b", "train.max_overflow_streak=2",
                               f"data.synthetic.cache_dir={tmp_path / 'scenes'}", *one_phase])
    with pytest.raises(TrainingError, match="consecutive fp16 updates overflowed"):
        train(config, echo=_quiet)


def test_detection_trains_in_phases_too(tmp_path: Path, trees) -> None:
    """The phases live in the engine: a detector gets them as the segmenter does."""
    from tests.test_train import TINY as DETECT_TINY
    from tests.test_train import frames

    root = trees.npy("data", frames=frames(8), size=(64, 64), classes=["person", "car"])
    phases = {"train": {"epochs": 2, "phases": [{"epochs": 1, "batch_size": 2, "freeze": "backbone"},
                                                 {"batch_size": 1, "lr": 0.005}]}}
    config = build_config(phases, [*DETECT_TINY, f"data.root={root}", f"output.root={tmp_path}", "name=det",
                                   "eval.bootstrap=0", "eval.plots=false"])
    result = train(config, echo=_quiet)
    rows = _rows(result.run_dir)
    assert result.finished and [r["phase"] for r in rows] == ["phase1", "phase2"]
    assert [r["frozen_stages"] for r in rows] == ["1 2 3 4", ""]
    assert float(rows[1]["lr"]) == pytest.approx(0.005)  # constant schedule: the phase's own lr


def test_a_phase_schedule_changes_only_its_keys_and_short_progressive_phases_end_unfrozen() -> None:
    raw = {"epochs": 4, "schedule": {"type": "cosine", "min_lr": 0.001},
           "phases": [{"epochs": 2, "schedule": {"warmup_epochs": 1}, "freeze": "progressive"}, {}]}
    train_cfg = TrainConfig.model_validate(raw)
    first = resolve_phases(train_cfg)[0]
    assert (first.schedule.type, first.schedule.min_lr, first.schedule.warmup_epochs) == ("cosine", 0.001, 1.0)
    again = TrainConfig.model_validate(train_cfg.model_dump())  # a saved config reads back the same
    assert resolve_phases(again)[0].schedule == first.schedule
    # 2 epochs, 3 unfreeze steps: the last epoch trains every stage all the same
    assert [first.frozen_stages(e, train_cfg.freeze) for e in (0, 1)] == [[1, 2, 3], []]
