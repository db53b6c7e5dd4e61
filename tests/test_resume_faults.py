"""Reliability of a run under faults: kills at random points, a kill between last.pt and metrics.csv,
leftover temp files, file permissions, a full disk, and a skipped non-finite batch (BatchNorm statistics)."""

from __future__ import annotations

import csv
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from crossattentiondet.engine import runlog
from crossattentiondet.engine.checkpoint import load_checkpoint, save_checkpoint
from crossattentiondet.engine.trainer import BatchNormGuard, train
from crossattentiondet.errors import TrainingError
from tests.test_train import cfg, frames, weights


@pytest.fixture
def data_root(trees) -> Path:  # noqa: ANN001
    return trees.npy("data", frames=frames(10), size=(64, 64), classes=["person", "car"])


EPOCH_KEYS = ("epoch", "loss", "loss_classifier", "loss_box_reg", "lr", "skipped_updates", "val_mAP")


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [{k: r[k] for k in EPOCH_KEYS} for r in csv.DictReader(f)]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


def test_kill_after_the_checkpoint_loses_no_metrics_row(data_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed after last.pt of the final epoch is renamed but before metrics.csv is written, and
    leaving half-written temp files: the row is in last.pt, metrics.csv is repaired on resume, the temp files
    are removed, and every file keeps the user's umask."""
    config = cfg(data_root, tmp_path, "name=killed", "train.epochs=2", "data.loader.num_workers=0")
    write = runlog.RunLog._write_epoch_csv

    def killed_at_epoch_2(self: runlog.RunLog) -> None:
        if self._epoch_rows and self._epoch_rows[-1]["epoch"] == 2:
            raise KeyboardInterrupt  # what the process sees of a kill at this point, without dying
        write(self)

    old_umask = os.umask(0o027)
    try:
        monkeypatch.setattr(runlog.RunLog, "_write_epoch_csv", killed_at_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train(config, echo=lambda _m: None)
        monkeypatch.setattr(runlog.RunLog, "_write_epoch_csv", write)
        run = tmp_path / "runs" / "killed"
        last = load_checkpoint(run / "checkpoints" / "last.pt")
        assert last["epoch"] == 2 and [r["epoch"] for r in epoch_rows(run)] == ["1"]  # the row is lost on disk
        leftovers = [run / "checkpoints" / ".last.pt.k1ll3d.tmp", run / ".metrics.csv.x8y7.tmp"]
        for path in leftovers:
            path.write_bytes(b"")
            os.utime(path, (time.time() - 60, time.time() - 60))  # from the killed process, before this one
        in_flight = run / ".run.lock.n0w.tmp"  # another process's write, begun after this run started: kept
        in_flight.write_bytes(b"{")
        os.utime(in_flight, (time.time() + 3600, time.time() + 3600))
        resumed = train(config, resume=True, echo=lambda _m: None)
    finally:
        os.umask(old_umask)
    assert resumed.finished and not any(p.exists() for p in leftovers) and in_flight.exists()
    rows = epoch_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    saved = last["training"]["metrics_rows"][-1]
    assert float(rows[1]["loss"]) == pytest.approx(saved["loss"], rel=1e-5)
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.csv", "final_results.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name  # mkstemp alone gives 0600


def test_full_disk_while_writing_a_checkpoint_is_one_clear_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"model": {"w": torch.ones(2)}, "epoch": 1})

    def full_disk(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        Path(f).write_bytes(b"PK")  # torch's zip writer fails part-way with this message
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1366")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingError, match=r"cannot write .*last\.pt: .*disk is full.*previous checkpoint is kept"):
        save_checkpoint(target, {"model": {"w": torch.zeros(2)}, "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(target)["epoch"] == 1  # the good file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # and no temp file is left


def test_batchnorm_guard_restores_running_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    model.train()
    model(torch.randn(2, 1, 4, 4))
    guard = BatchNormGuard(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    guard.snapshot()
    model(torch.randn(2, 1, 4, 4) * 1e30)
    assert not guard.finite()
    guard.restore()
    assert guard.finite()
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_skipped_bad_batch_leaves_no_trace_in_batchnorm(data_root: Path, tmp_path: Path) -> None:
    """One batch overflows a BatchNorm layer's statistics (as lr=1e6 did): the update is skipped, the
    running statistics stay finite and the run goes on to finish."""
    config = cfg(data_root, tmp_path, "name=overflow", "train.epochs=1", "data.loader.num_workers=0")
    calls = {"n": 0}
    original_build = __import__("crossattentiondet.models", fromlist=["build_detector"]).build_detector

    def build_with_a_bad_batch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = original_build(*args, **kwargs)
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))

        def overflow(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            if module.training:
                calls["n"] += 1
                if calls["n"] == 2:
                    return (inputs[0] * 1e30,)
            return None

        bn.register_forward_pre_hook(overflow)
        return model

    import crossattentiondet.models as models

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "build_detector", build_with_a_bad_batch)
        result = train(config, echo=lambda _m: None)
    assert result.finished and calls["n"] >= 3
    assert result.state.skipped_total == 1
    last = weights(result.run_dir / "checkpoints/last.pt")
    bad = [k for k, v in last.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad
    assert "BatchNorm statistics, update skipped" in (result.run_dir / "training.log").read_text()


# ------------------------------------------------------------------------------- SIGKILL, the real thing
def _child(config_args: list[str], resume: bool) -> None:
    """Train in a forked child with one thread (results must not depend on the thread count)."""
    try:
        torch.set_num_threads(1)
        from crossattentiondet.config import load_config

        train(load_config(None, config_args), resume=resume, echo=lambda _m: None)
        os._exit(0)
    except BaseException:  # noqa: BLE001 - a child must never return into pytest
        os._exit(1)


def _run_child(config_args: list[str], resume: bool, kill_when: Callable[[], bool] | None) -> int:
    """Fork a training child; SIGKILL it as soon as ``kill_when()`` says so. Returns its exit code."""
    pid = os.fork()
    if pid == 0:
        _child(config_args, resume)
    while kill_when is not None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if kill_when():
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _after(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


def _after_next_checkpoint(checkpoint: Path, then: float) -> Callable[[], bool]:
    """True ``then`` seconds after ``checkpoint`` changes (a kill at a random moment of the next epoch, its
    validation, its checkpoint writes or the final evaluation), so each child gets somewhere first."""
    stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    deadline: list[float] = []

    def due() -> bool:
        if not deadline and checkpoint.exists() and checkpoint.stat().st_mtime_ns != stamp:
            deadline.append(time.monotonic() + then)
        return bool(deadline) and time.monotonic() >= deadline[0]

    return due


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + SIGKILL")
def test_sigkill_at_random_points_then_resume_gives_identical_weights(data_root: Path, tmp_path: Path) -> None:
    """The default loader (2 persistent workers), killed N times at random moments, resumed each time:
    the same weights tensor by tensor, the same best epoch and metrics rows, no temp files left."""
    from tests.test_train import TINY

    loader_defaults = [t for t in TINY if not t.startswith("data.loader.num_workers")]
    assert not any("num_workers" in t for t in loader_defaults)
    base = [*loader_defaults, f"data.root={data_root}", f"output.root={tmp_path / 'runs'}", "train.epochs=3",
            "data.augment.hflip=0.5"]
    started = time.monotonic()
    assert _run_child([*base, "name=straight"], resume=False, kill_when=None) == 0
    duration = time.monotonic() - started
    rng = np.random.default_rng(20261202)
    killed_run = tmp_path / "runs" / "killed"
    last = killed_run / "checkpoints" / "last.pt"
    per_epoch = duration / 5  # 3 epochs plus start-up and the final evaluation, roughly
    kills = resumed_kills = 0
    for attempt in range(5):
        resume = last.exists()
        # the first kill anywhere in the first half (often before any checkpoint: a fresh start follows)
        when = _after(rng.uniform(0.05, 0.5) * duration) if attempt == 0 else \
            _after_next_checkpoint(last, rng.uniform(0.0, 1.2) * per_epoch)
        code = _run_child([*base, "name=killed"], resume=resume, kill_when=when)
        if code == 0:
            break
        assert code == -signal.SIGKILL, code
        kills += 1
        resumed_kills += resume
    else:
        assert _run_child([*base, "name=killed"], resume=True, kill_when=None) == 0
    assert kills >= 3 and resumed_kills >= 2, (kills, resumed_kills)
    straight = tmp_path / "runs" / "straight"
    assert_same_weights(weights(straight / "checkpoints/last.pt"), weights(killed_run / "checkpoints/last.pt"))
    best_a, best_b = load_checkpoint(straight / "checkpoints/best.pt"), load_checkpoint(killed_run / "checkpoints/best.pt")
    assert best_a["epoch"] == best_b["epoch"]
    assert_same_weights(best_a["model"], best_b["model"])
    assert epoch_rows(killed_run) == epoch_rows(straight)
    assert not list(killed_run.rglob("*.tmp"))
