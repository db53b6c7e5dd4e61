"""What a run tells the user: iteration / epoch / evaluation progress lines with ETAs, TensorBoard's final
scalars, HParams and PR curves, and MLflow (runs continued on resume, one store per study)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from crossattentiondet.config import MlflowConfig, build_config, config_to_dict, load_config
from crossattentiondet.engine.evaluate import DetectionEvaluator
from crossattentiondet.engine.runlog import (
    HPARAM_KEYS,
    MLFLOW_RUN_FILE,
    RunLog,
    ThrottledProgress,
    TrainingClock,
    format_duration,
    hparams_of,
    pr_curve_counts,
)
from crossattentiondet.engine.trainer import train
from tests.conftest import DataTrees
from tests.test_train import TINY, frames

DURATION = r"(?:\d+d )?(?:\d+:)?\d\d:\d\d"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------ small parts
@pytest.mark.parametrize(("seconds", "text"), [
    (0, "00:00"), (42.4, "00:42"), (3599, "59:59"), (3723, "1:02:03"), (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d 03:04:05"),
    (math.nan, "--:--"), (math.inf, "--:--"), (-1, "--:--"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_throttled_progress_every_tenth_or_every_minute() -> None:
    clock, lines = FakeClock(), []
    progress = ThrottledProgress("test", 480, lines.append, clock=clock)
    for done in range(1, 101):  # 100 batches, 1 s each
        clock.now = float(done)
        progress(done, 100)
    assert len(lines) == 10  # at 10 %, 20 %, ..., 90 %, and the end
    assert lines[0] == "test: 48/480 images, 01:30 left"
    assert lines[4] == "test: 240/480 images, 00:50 left"
    assert lines[-1] == "test: 480/480 images in 01:40"
    progress(100, 100)
    assert len(lines) == 10  # the end is said once

    clock, slow_lines = FakeClock(), []
    slow = ThrottledProgress("val", 1000, slow_lines.append, clock=clock, every_s=60)
    for done in range(1, 11):  # 10 of 1000 batches, 40 s each: below 10 %; a line when a minute has passed
        clock.now = 40.0 * done
        slow(done, 1000)
    assert len(slow_lines) == 5 and slow_lines[0] == f"val: 2/1000 images, {format_duration(40 * 998)} left"


def test_throttled_progress_over_passes() -> None:
    clock, lines = FakeClock(), []
    progress = ThrottledProgress("test robustness", 10, lines.append, pass_batches=5, clock=clock)
    for done in range(1, 21):  # 4 passes of 5 batches
        clock.now = float(done)
        progress(done, 20)
    assert lines[0] == "test robustness: pass 1/4, 4/10 images, 00:18 left"  # 2 of 20 batches: 10 %
    assert "test robustness: pass 3/4, 10/10 images, 00:05 left" in lines
    assert lines[-1] == "test robustness: 4 passes of 10 images in 00:20"


def test_training_clock_etas() -> None:
    clock = FakeClock()
    eta = TrainingClock(epochs=3, iterations=10, clock=clock)
    eta.start_epoch()
    clock.now = 5.0
    assert eta.left(0, 5) == pytest.approx((5.0, 5.0 + 2 * 10.0))  # later epochs at this epoch's pace
    assert math.isnan(eta.run_left(0)) and all(math.isnan(v) for v in eta.left(0, 0))
    clock.now = 10.0
    eta.end_training()
    clock.now = 12.0  # 2 s of validation
    eta.end_epoch()
    assert eta.run_left(1) == pytest.approx(2 * 12.0)
    eta.start_epoch()
    clock.now = 12.0 + 4.0  # the second epoch is faster: its own pace for its rest
    epoch_left, run_left = eta.left(1, 5)
    assert epoch_left == pytest.approx(4.0) and run_left == pytest.approx(4.0 + 2.0 + 12.0)


def test_hparams_of_a_resolved_config() -> None:
    tree = config_to_dict(build_config({"model": {"backbone": "mit_b0", "fusion": {"type": "cssa", "stages": [2, 3]}},
                                        "train": {"lr": 0.02, "batch_size": 4}, "seed": 7}))
    hp = hparams_of(tree)
    assert set(hp) == set(HPARAM_KEYS)
    assert hp["model.backbone"] == "mit_b0" and hp["model.fusion.type"] == "cssa"
    assert json.loads(hp["model.fusion.stages"]) == [2, 3] and json.loads(hp["model.streams"]) == tree["model"]["streams"]
    assert hp["train.lr"] == 0.02 and hp["train.batch_size"] == 4 and hp["seed"] == 7
    assert all(isinstance(v, (bool, int, float, str)) for v in hp.values())


def _image(image_id: int, gt: list[tuple[list[float], int]], dt: list[tuple[list[float], float, int]]) -> tuple:
    target = {"boxes": torch.tensor([b for b, _ in gt], dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor([c for _, c in gt], dtype=torch.int64), "image_id": torch.tensor(image_id)}
    output = {"boxes": torch.tensor([b for b, _, _ in dt], dtype=torch.float32).reshape(-1, 4),
              "scores": torch.tensor([s for _, s, _ in dt], dtype=torch.float32),
              "labels": torch.tensor([c for _, _, c in dt], dtype=torch.int64)}
    return target, output, {"stem": f"f{image_id}", "image_id": image_id, "height": 100, "width": 100}


def test_pr_curve_counts_from_matched_detections() -> None:
    a, b, far = [10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 90.0, 90.0], [0.0, 70.0, 20.0, 95.0]
    c = [50.0, 5.0, 80.0, 35.0]
    evaluator = DetectionEvaluator(["a", "b", "c"])
    images = [
        # class a: A found (0.92), a box far from everything (0.63), A again (a duplicate: 0.34), B missed
        _image(1, [(a, 1), (b, 1)], [(a, 0.92, 1), (far, 0.63, 1), (a, 0.34, 1)]),
        # class b found (0.81); a class-a detection on the class-b box is a false positive of a (0.47)
        _image(2, [(c, 2)], [(c, 0.81, 2), (c, 0.47, 1)]),
    ]
    for target, output, meta in images:
        evaluator.update([target], [output], [meta])
    curves = pr_curve_counts(evaluator.compute())
    assert set(curves) == {"a", "b"}  # "c" has no ground truth: no curve
    at = {t: round(t * 100) for t in (0.0, 0.4, 0.5, 0.7, 0.85, 0.95)}  # threshold -> index (101 thresholds)
    expected_a = {0.0: (1, 3), 0.4: (1, 2), 0.5: (1, 1), 0.7: (1, 0), 0.85: (1, 0), 0.95: (0, 0)}
    for t, (tp, fp) in expected_a.items():
        i = at[t]
        assert (curves["a"]["tp"][i], curves["a"]["fp"][i], curves["a"]["fn"][i]) == (tp, fp, 2 - tp), t
        assert curves["a"]["recall"][i] == pytest.approx(tp / 2)
        assert curves["a"]["precision"][i] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert curves["b"]["tp"][at[0.7]] == 1 and curves["b"]["tp"][at[0.85]] == 0 and curves["b"]["fp"].sum() == 0
    assert not curves["a"]["tn"].any() and len(curves["a"]["tp"]) == 101


# ----------------------------------------------------------------------------------- one tiny real run
@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 1-epoch run with TensorBoard, robustness and a log line every update; what it echoed."""
    tmp = tmp_path_factory.mktemp("logging")
    root = DataTrees(tmp).npy("data", frames=frames(10), size=(64, 64), classes=["person", "car"])
    config = load_config(None, [*TINY, f"data.root={root}", f"output.root={tmp / 'runs'}", "name=logged",
                                "train.epochs=1", "train.log_every=1", "output.tensorboard=true",
                                "eval.robustness=true", "eval.bootstrap=0"])
    echoed: list[str] = []
    with pytest.MonkeyPatch.context() as patch:  # a batch job, even under `pytest -s` in a terminal
        patch.setattr("crossattentiondet.engine.trainer.stdout_is_terminal", lambda: False)
        result = train(config, echo=echoed.append)
    assert result.finished
    return {"run": result.run_dir, "echoed": echoed, "result": result}


def test_iteration_and_epoch_lines(logged_run: dict[str, Any]) -> None:
    log = (logged_run["run"] / "training.log").read_text()
    iterations = re.findall(rf"epoch 1/1 iter (\d+)/(\d+): loss (\S+), lr (\S+), (\S+) img/s, "
                            rf"epoch ETA ({DURATION}), run ETA ({DURATION})$", log, re.M)
    assert iterations, log
    total = int(iterations[0][1])
    assert [int(i[0]) for i in iterations] == list(range(1, total + 1))  # train.log_every=1: every update
    for _, _, loss, lr, speed, epoch_eta, run_eta in iterations:
        assert float(loss) > 0 and float(lr) == pytest.approx(0.01) and float(speed) > 0
        assert epoch_eta == run_eta  # a 1-epoch run: the run ends with its epoch
    assert iterations[-1][5] == "00:00"
    (epoch_line,) = re.findall(rf"epoch 1/1: loss \S+, \S+ img/s, {DURATION}; val mAP \S+ mAP50 \S+ "
                               r"\(best \S+ at epoch 1\); run ETA 00:00$", log, re.M)
    # stdout is not a terminal: the lines are echoed too, in order
    echoed = "\n".join(logged_run["echoed"])
    assert "epoch 1/1 iter 1/" in echoed and epoch_line in echoed


def test_progress_lines_of_validation_test_and_robustness(logged_run: dict[str, Any]) -> None:
    log = (logged_run["run"] / "training.log").read_text()
    final = json.loads((logged_run["run"] / "final_results.json").read_text())
    val_images, test_images = final["training"]["val_images"], final["training"]["test_images"]
    assert re.search(rf"epoch 1 val: {val_images}/{val_images} images in {DURATION}$", log, re.M)
    assert re.search(rf"^\S+ \S+ test: {test_images}/{test_images} images in {DURATION}$", log, re.M)
    passes = len(final["robustness"])
    assert passes == 4  # all inputs, then rgb, thermal, event zeroed
    assert re.search(rf"test robustness: pass 1/{passes}, \d+/{test_images} images, {DURATION} left$", log, re.M)
    assert re.search(rf"test robustness: {passes} passes of {test_images} images in {DURATION}$", log, re.M)
    # progress comes before the result line it leads to
    assert log.index("test robustness: 4 passes") < log.index("test: mAP")


def test_tensorboard_final_scalars_hparams_and_pr_curves(logged_run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    run = logged_run["run"]
    final = json.loads((run / "final_results.json").read_text())
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"test/mAP", "test/mAP_50", "hparams/test_mAP", "hparams/val_mAP", "epoch/loss", "train/loss"} <= scalars
    (test_map,) = events.Scalars("test/mAP")
    assert test_map.value == pytest.approx(final["results"]["mAP"])
    assert events.Scalars("hparams/val_mAP")[-1].value == pytest.approx(final["validation"]["mAP"])

    plugin = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/experiment"]).experiment
    assert {"hparams/test_mAP", "hparams/val_mAP"} <= {m.name.tag for m in experiment.metric_infos}
    start = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    hp = start.hparams
    assert hp["model.backbone"].string_value == "mit_b0" and hp["train.epochs"].number_value == 1
    assert hp["train.lr"].number_value == pytest.approx(0.01) and hp["train.precision"].string_value == "fp32"
    assert json.loads(hp["model.streams"].string_value) == final["config"]["model"]["streams"]

    with_truth = {name for name, c in final["per_class"].items() if c["num_gt"] > 0}
    assert with_truth
    assert {t for t in events.Tags()["tensors"] if t.startswith("pr_curve_test/")} == {
        f"pr_curve_test/{name}" for name in with_truth}
    for name in with_truth:
        (event,) = events.Tensors(f"pr_curve_test/{name}")
        tp, fp, tn, fn, precision, recall = tensor_util.make_ndarray(event.tensor_proto)
        assert len(tp) == 101 and np.all(tp + fn == final["per_class"][name]["num_gt"]) and not tn.any()
        assert np.all(np.diff(tp) <= 0) and np.all(np.diff(fp) <= 0)  # fewer detections at higher thresholds
        assert np.all((precision >= 0) & (precision <= 1)) and np.all((recall >= 0) & (recall <= 1))


# ------------------------------------------------------------------------------------------------ MLflow
def test_mlflow_run_continues_on_resume_and_survives_a_failing_store(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    cfg = MlflowConfig(enabled=True, experiment="exp", tags={"mlflow.runName": "cfg/seed3", "seed": 3})
    run_dir = tmp_path / "runs" / "seed3"
    first = RunLog(run_dir, True, tensorboard=False, mlflow=cfg, echo=lambda m: None)
    first.epoch({"epoch": 1, "loss": 2.0}, 1)
    first.close()  # stopped before its final evaluation
    record = json.loads((run_dir / MLFLOW_RUN_FILE).read_text())
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert client.get_run(record["run_id"]).info.status == "KILLED"
    second = RunLog(run_dir, True, tensorboard=False, mlflow=cfg, echo=lambda m: None)  # the resumed run
    second.epoch({"epoch": 2, "loss": 1.0}, 2)
    (run_dir / "config.yaml").write_text("seed: 3\n")
    second.final({"mAP": 0.25}, [run_dir / "config.yaml"])
    second.close()

    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.run_id == record["run_id"] and run.info.run_name == "cfg/seed3" and run.info.status == "FINISHED"
    assert run.data.tags["seed"] == "3" and run.data.metrics["test_mAP"] == 0.25
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]

    # a store that fails mid-run: one warning, no more MLflow calls, the training goes on
    third = RunLog(tmp_path / "runs" / "other", True, tensorboard=False, mlflow=cfg, echo=lambda m: None)

    def locked(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(mlflow, "log_metrics", locked)
    third.epoch({"epoch": 1, "loss": 2.0}, 1)
    third.epoch({"epoch": 2, "loss": 1.0}, 2)
    third.close()
    warnings = [line for line in (tmp_path / "runs" / "other" / "training.log").read_text().splitlines()
                if "MLflow" in line]
    assert len(warnings) == 1 and "log_metrics failed (RuntimeError: database is locked)" in warnings[0]
    assert mlflow.active_run() is None  # ended, so the next run in this process can start its own


def test_study_runs_share_one_mlflow_store(tmp_path: Path) -> None:
    """The runner's part: every run config of a study points at the study's store, experiment and tags; a
    run logged with such a config lands there under its name. (That RunLog writes what a run does is
    tested above; a study that trains two runs with MLflow costs a minute here.)"""
    mlflow = pytest.importorskip("mlflow")
    from crossattentiondet.config import load_config
    from crossattentiondet.studies.plan import StudySettings, build_plan
    from crossattentiondet.studies.runner import prepare_study_tracking, write_run_config
    from crossattentiondet.studies.spec import load_spec

    spec_path = tmp_path / "tracked.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "tracked", "base": "preset:recipe_cssa", "seeds": [1],
        "set": {"model.fusion.type": "cssa", "model.mit.depths": [1, 1, 1, 1], "eval.speed": False},
        "baseline": {"model.fusion.stages": []},
        "phases": [{"name": "stages", "axes": {"model.fusion.stages": [[4]]}}],
    }))
    study = tmp_path / "study"
    plan = build_plan(load_spec(str(spec_path)), StudySettings(quick=True, output=study,
                                                               overrides=["output.mlflow.enabled=true"]))
    prepare_study_tracking(plan)  # the store and experiment exist before parallel runs start
    uri = f"sqlite:///{study.resolve() / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    assert client.get_experiment_by_name("tracked-quick") is not None
    runs = list(plan.runs())
    assert len(runs) == 2
    for run in runs:
        config = load_config(write_run_config(plan, run))
        tracked = config.output.mlflow
        assert (tracked.enabled, tracked.tracking_uri, tracked.experiment) == (True, uri, "tracked-quick")
        assert {k: tracked.tags[k] for k in ("study", "configuration", "seed", "mlflow.runName")} == {
            "study": "tracked-quick", "configuration": run.config_id, "seed": "1",
            "mlflow.runName": f"{run.config_id}/seed1"}
        log = RunLog(config.run_dir, True, tensorboard=False, mlflow=tracked, echo=lambda m: None)
        log.final({"mAP": 0.5}, [])
        log.close()
    logged = client.search_runs([client.get_experiment_by_name("tracked-quick").experiment_id])
    assert sorted(r.info.run_name for r in logged) == sorted(f"{r.config_id}/seed1" for r in runs)
    assert all(r.info.status == "FINISHED" and r.data.tags["study"] == "tracked-quick" for r in logged)
    assert not list(study.glob("*/*/mlflow.db"))  # one store, the study's
