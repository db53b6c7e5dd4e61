"""End-to-end training: run directory, resume, non-finite guard, early stopping, seed flags, bad data, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crossattentiondet.cli import main
from crossattentiondet.config import ConfigError, load_config
from crossattentiondet.engine.checkpoint import load_checkpoint
from crossattentiondet.engine.trainer import train
from crossattentiondet.errors import DataError, TrainingError
from crossattentiondet.models.detector import MultiModalFasterRCNN

# a tiny detector and loader; every test adds data.root and output.root
TINY = [
    "model.backbone=mit_b0", "model.mit.embed_dims=[8,16,24,32]", "model.mit.depths=[1,1,1,1]",
    "model.mit.num_heads=[1,2,2,4]", "model.detector.fpn_channels=16", "model.detector.box_head_dim=32",
    "model.detector.anchor_sizes=[[8],[16],[32],[64],[128]]", "model.detector.rpn.batch_size_per_image=32",
    "model.detector.roi.batch_size_per_image=32", "model.detector.rpn.pre_nms_top_n_train=200",
    "model.detector.rpn.post_nms_top_n_train=100", "model.detector.rpn.pre_nms_top_n_test=100",
    "model.detector.rpn.post_nms_top_n_test=50", "data.loader.num_workers=0", "data.split.group_by=none",
    "data.split.train=0.6", "data.split.val=0.2", "data.split.test=0.2", "train.batch_size=2", "train.lr=0.01",
    "eval.speed=false", "eval.robustness=false", "eval.panels=0", "output.tensorboard=false",
]


def frames(n: int) -> dict[str, list[tuple[int, float, float, float, float]]]:
    rng = np.random.default_rng(1)
    return {f"f{i:03d}": [(int(rng.integers(0, 2)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)), 0.3, 0.4)]
            for i in range(n)}


@pytest.fixture
def data_root(trees) -> Path:
    return trees.npy("data", frames=frames(10), size=(64, 64), classes=["person", "car"])


def cfg(data_root: Path, tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"data.root={data_root}", f"output.root={tmp_path / 'runs'}", *extra])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["training"]["model"]


def test_run_directory_contents(data_root: Path, tmp_path: Path) -> None:
    config = cfg(data_root, tmp_path, "name=full", "train.epochs=2", "eval.speed=true", "eval.robustness=true",
                 "eval.panels=2", "output.tensorboard=true", "train.iteration_csv=true", "train.log_every=1")
    result = train(config)
    run = result.run_dir
    assert run == tmp_path / "runs" / "full" and result.finished
    for name in ("config.yaml", "split.json", "training.log", "metrics.csv", "metrics_per_batch.csv", "metrics.json",
                 "final_results.json", "model_info.json", "predictions_test.json", "checkpoints/best.pt",
                 "checkpoints/last.pt", "plots/pr_curve_test.png", "plots/panels_test.png",
                 "plots/training_curves.png", "plots/robustness_test.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    assert (run / "metrics_per_epoch.csv").resolve() == (run / "metrics.csv").resolve()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["loss"]) > 0 and r["loss_classifier"] and r["lr"] and r["val_mAP"] != "" for r in rows)
    final = json.loads((run / "final_results.json").read_text())
    assert final["experiment_id"] == "full"
    assert set(final["results"]) >= {"mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large", "mAR_100"}
    assert final["training"]["epochs"] == 2 and final["model"]["backbone"] == "mit_b0"
    assert [r["zeroed"] for r in final["robustness"]] == ["none", "rgb", "thermal", "event"]
    assert final["speed"]["params"] > 0 and final["speed"]["images_per_s"] > 0
    predictions = json.loads((run / "predictions_test.json").read_text())
    assert all(set(p) == {"image_id", "category_id", "bbox", "score"} for p in predictions)
    # the 95% CI of test mAP over test images: its point is the reported mAP
    boot = json.loads((run / "bootstrap_test.json").read_text())
    assert boot["metric"] == "mAP" and boot["n_boot"] == 1000 == len(boot["samples"])
    assert boot["n_images"] == final["training"]["test_images"]
    assert boot["point"] == pytest.approx(final["results"]["mAP"], abs=1e-6, nan_ok=True)
    assert final["results"]["mAP_ci95"] == boot["ci95"]
    resolved = load_config(run / "config.yaml")
    assert resolved.data.modalities[0].scale == 255.0 and resolved.model.num_classes == 2
    split = json.loads((run / "split.json").read_text())
    assert sorted(sum(split["splits"].values(), [])) == sorted(frames(10))


def test_resume_gives_identical_weights(data_root: Path, tmp_path: Path) -> None:
    # accumulation with a remainder, EMA, augmentation, progressive unfreezing and warmup+cosine all resume
    common = ["train.epochs=4", "train.accumulation=3", "train.ema.enabled=true", "train.ema.decay=0.9",
              "data.augment.hflip=0.5", "data.augment.noise=0.5", "train.freeze.epochs=1",
              "train.freeze.mode=progressive", "train.schedule.type=cosine", "train.schedule.warmup_iters=2"]
    straight = train(cfg(data_root, tmp_path, "name=straight", *common))
    first = train(cfg(data_root, tmp_path, "name=resumed", *common), stop_after_epoch=2)
    assert not first.finished and first.state.epoch == 2
    rows = list(csv.DictReader((first.run_dir / "metrics.csv").open()))
    assert len(rows) == 2
    second = train(cfg(data_root, tmp_path, "name=resumed", *common), resume=True)
    assert second.finished and second.state.epoch == 4
    a, b = weights(straight.run_dir / "checkpoints/last.pt"), weights(second.run_dir / "checkpoints/last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ema_a = load_checkpoint(straight.run_dir / "checkpoints/last.pt")["training"]["ema"]
    ema_b = load_checkpoint(second.run_dir / "checkpoints/last.pt")["training"]["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert [r["epoch"] for r in csv.DictReader((second.run_dir / "metrics.csv").open())] == ["1", "2", "3", "4"]
    # validation used the EMA weights
    best = load_checkpoint(second.run_dir / "checkpoints/last.pt")
    assert not torch.equal(best["model"]["roi_heads.box_predictor.cls_score.weight"],
                           best["training"]["model"]["roi_heads.box_predictor.cls_score.weight"])
    assert second.test_metrics == pytest.approx(straight.test_metrics, nan_ok=True)


def test_resume_guards(data_root: Path, tmp_path: Path) -> None:
    config = cfg(data_root, tmp_path, "name=guard", "train.epochs=1")
    train(config)
    with pytest.raises(ConfigError, match="--resume"):
        train(config)
    with pytest.raises(ConfigError, match="model.backbone"):
        train(cfg(data_root, tmp_path, "name=guard", "train.epochs=2", "model.backbone=mit_b1"), resume=True)
    messages: list[str] = []
    result = train(config, resume=True, echo=messages.append)
    assert result.finished and any("already finished" in m for m in messages)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(cfg(data_root, tmp_path, "name=never"), resume=True)
    # more epochs on a finished run: continues from its last.pt
    longer = train(cfg(data_root, tmp_path, "name=guard", "train.epochs=2"), resume=True)
    assert longer.state.epoch == 2


def test_non_finite_losses_are_skipped_then_stop_the_run(data_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    original = MultiModalFasterRCNN.forward
    calls = {"n": 0, "bad": {2, 3}}

    def flaky(self, images, targets=None):  # noqa: ANN001, ANN202
        out = original(self, images, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] in calls["bad"]:
                out["loss_classifier"] = out["loss_classifier"] * float("nan")
        return out

    monkeypatch.setattr(MultiModalFasterRCNN, "forward", flaky)
    result = train(cfg(data_root, tmp_path, "name=flaky", "train.epochs=1"))
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert rows[0]["skipped_updates"] == "2" and result.state.skipped_total == 2
    log = (result.run_dir / "training.log").read_text()
    assert "non-finite" in log and "batch files: f0" in log
    assert all(torch.isfinite(v).all() for v in weights(result.run_dir / "checkpoints/last.pt").values()
               if v.is_floating_point())

    calls.update(n=0, bad=set(range(100)))
    with pytest.raises(TrainingError, match="3 consecutive updates had non-finite"):
        train(cfg(data_root, tmp_path, "name=broken", "train.epochs=1", "train.max_nonfinite=3"))
    assert not (tmp_path / "runs" / "broken" / "checkpoints" / "last.pt").exists()


def test_early_stopping(data_root: Path, tmp_path: Path) -> None:
    # lr 0: the validation metric cannot improve after the first validation
    result = train(cfg(data_root, tmp_path, "name=early", "train.epochs=6", "train.lr=1e-12",
                       "train.early_stopping.patience=2"))
    assert result.finished and result.state.stopped_early and result.state.epoch == 3
    assert len(list(csv.DictReader((result.run_dir / "metrics.csv").open()))) == 3


def test_validation_every_n_epochs_and_epoch_checkpoints(data_root: Path, tmp_path: Path) -> None:
    result = train(cfg(data_root, tmp_path, "name=every", "train.epochs=3", "train.val_every=2",
                       "train.checkpoint_every=2", "train.precision=bf16"))
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert [r["val_mAP"] != "" for r in rows] == [False, True, True]  # epoch 2 and the last epoch
    assert (result.run_dir / "checkpoints" / "epoch_002.pt").is_file()
    assert load_checkpoint(result.run_dir / "checkpoints" / "best.pt")["epoch"] in (2, 3)


def test_compile_and_channels_last_options(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_compile = torch.compile

    def recording_compile(fn, **kwargs):  # noqa: ANN001, ANN202
        calls.append((getattr(fn, "__qualname__", str(fn)), kwargs))
        return real_compile(fn, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    # the eager backend exercises the torch.compile path without a long inductor compilation; two training
    # steps and no evaluation (tracing the eval-mode graphs too would cost a minute on 2 cores)
    result = train(cfg(data_root, tmp_path, "name=compiled", "train.epochs=2", "train.compile=true",
                       "train.compile_backend=eager", "train.channels_last=true", "train.max_iters_per_epoch=2",
                       "data.split.val=0", "data.split.train=0.8"), stop_after_epoch=1)
    assert not result.finished and result.state.epoch == 1 and result.state.global_step == 2
    assert result.state.skipped_total == 0  # both compiled steps updated the weights
    assert calls == [("MultiModalBackbone.forward", {"backend": "eager", "dynamic": True})]


def test_seed_script_flags(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "cssa_ablations" / "exp_003"
    code = main(["train", "--data", str(data_root / "images"), "--labels", str(data_root / "labels"),
                 "--backbone", "mit_b0", "--epochs", "1", "--batch-size", "2", "--lr", "0.005", "--cssa-stages", "3",
                 "--cssa-thresh", "0.5", "--output-dir", str(out), *[o for o in TINY if not o.startswith("train.")]])
    assert code == 0, capsys.readouterr().err
    resolved = load_config(out / "config.yaml")
    fusion = resolved.model.fusion
    assert (fusion.type, fusion.stages, fusion.cssa.switching_thresh, fusion.flow) == ("cssa", [3], 0.5, "fused")
    assert (resolved.train.epochs, resolved.train.batch_size, resolved.train.lr) == (1, 2, 0.005)
    assert resolved.data.images_dir == str(data_root / "images")
    assert (out / "final_results.json").is_file()
    assert main(["train", "--gaff-stages", "2,3", "--cssa-thresh", "0.3"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main(["train", "--cssa-stages", "5"]) == 2
    assert "digits 1-4" in capsys.readouterr().err


def test_train_refuses_bad_data_and_skips_when_asked(data_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (data_root / "images" / "f004.npy").write_bytes(b"\x93NUMPY broken")
    (data_root / "labels" / "f005.txt").write_text("0 0.5 0.5 0.2\n")
    args = ["train", *TINY, f"data.root={data_root}", f"output.root={tmp_path / 'runs'}", "train.epochs=1"]
    assert main([*args, "name=refused"]) == 2
    err = capsys.readouterr().err
    assert "f004.npy" in err and "f005.txt" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "refused" / "checkpoints").exists()
    assert main([*args, "name=skipping", "data.on_error=skip"]) == 0
    log = (tmp_path / "runs" / "skipping" / "training.log").read_text()
    assert "skip" in log and "2" in log


def test_mlflow_local_store(data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    result = train(cfg(data_root, tmp_path, "name=tracked", "train.epochs=1", "output.mlflow.enabled=true"))
    import mlflow

    assert (tmp_path / "runs" / "mlflow.db").is_file() and result.finished
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("crossattentiondet").experiment_id])
    assert run.info.run_name == "tracked"
    assert {"loss", "test_mAP"} <= set(run.data.metrics) and run.data.params["train.epochs"] == "1"
    assert (tmp_path / "runs" / "mlruns").is_dir()  # artifacts (final_results.json)


def test_ddp_two_processes_on_cpu(data_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "crossattentiondet", "train", *TINY, f"data.root={data_root}", f"output.root={tmp_path / 'runs'}",
           "name=ddp", "train.epochs=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    log = (run / "training.log").read_text()
    assert "x2 (DDP)" in log and "effective batch 4" in log
    assert log.count(f"run {run} on ") == 1  # only rank 0 writes
    final = json.loads((run / "final_results.json").read_text())
    assert final["training"]["epochs"] == 2 and final["results"]["mAP"] is not None
    # the test split was evaluated over both ranks' shards, each image once
    predictions = json.loads((run / "predictions_test.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert {p["image_id"] for p in predictions} <= set(range(10)) and len(split["splits"]["test"]) == 2


def test_prepare_data_error_is_data_error(tmp_path: Path) -> None:
    with pytest.raises((DataError, FileNotFoundError, ConfigError)):
        train(load_config(None, [*TINY, f"data.root={tmp_path / 'missing'}", f"output.root={tmp_path}"]))
