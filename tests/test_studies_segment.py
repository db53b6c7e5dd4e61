"""Studies of segmentation runs: the primary metric (S-measure, mIoU) everywhere detection studies use mAP.

Finished runs are faked with the files a segmentation run leaves (final_results.json with ``task`` and
``primary_metric``, bootstrap_test.json of the primary metric), as test_studies.py does for detection.
"""

from __future__ import annotations

import csv
import json
import math
import random
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from crossattentiondet.config import ConfigError
from crossattentiondet.engine.bootstrap import BootstrapResult, percentile_ci, save_bootstrap
from crossattentiondet.studies import aggregate
from crossattentiondet.studies.launchers import _describe
from crossattentiondet.studies.plan import StudySettings, build_plan
from crossattentiondet.studies.report import write_report
from crossattentiondet.studies.runner import RunOutcome
from crossattentiondet.studies.spec import SelectSpec, spec_from_dict

COD = {"Smeasure": 0.0, "meanEm": 0.0, "maxEm": 0.0, "adpEm": 0.0, "wFmeasure": 0.0, "MAE": 0.0, "maxFm": 0.0,
       "meanFm": 0.0, "adpFm": 0.0, "IoU": 0.0, "Dice": 0.0}
SETS = ("CAMO", "COD10K", "CHAMELEON", "NC4K")


def cod_metrics(s: float) -> dict[str, float]:
    """COD metrics that move together with the S-measure ``s`` (MAE the other way)."""
    return {**COD, "Smeasure": s, "meanEm": s + 0.05, "maxEm": s + 0.08, "adpEm": s + 0.06, "wFmeasure": s - 0.1,
            "MAE": round(0.5 - s / 2, 6), "maxFm": s - 0.02, "meanFm": s - 0.05, "adpFm": s - 0.04, "IoU": s - 0.2,
            "Dice": s - 0.1}


def fake_segment_run(run_dir: Path, val: float, test: float, *, primary: str = "Smeasure",
                     per_set: bool = True, lower: list[str] | None = None, task: str = "segment") -> None:
    """The final_results.json a finished segmentation run leaves (the lead's contract)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    results = cod_metrics(test) if primary in COD else {"mIoU": test, "pixel_acc": test + 0.2, "IoU_car": test}
    validation = cod_metrics(val) if primary in COD else {"mIoU": val, "pixel_acc": val + 0.2}
    results[primary], validation[primary] = test, val
    final = {
        "experiment_id": run_dir.name, "task": task, "primary_metric": primary,
        "lower_is_better": ["MAE"] if lower is None else lower, "config": {},
        "results": results, "results_ci95": {primary: [test - 0.02, test + 0.02]},
        "results_per_set": ({name: cod_metrics(test - 0.05 * i) for i, name in enumerate(SETS)} if per_set else {}),
        "validation": validation,
        "robustness": [{"zeroed": "none", **results}, {"zeroed": "thermal", **cod_metrics(test / 2)}],
        "training": {"epochs": 3, "best_epoch": 2, "best_val_metric": val, "select": primary, "skipped_updates": 0,
                     "stopped_early": False, "train_time_s": 72.0, "train_images": 100, "val_images": 20,
                     "test_images": 60},
        "model": {"params": 2_000_000, "backbone_gflops": 0.5, "model_gflops": 1.25},
        "speed": {"latency_ms_per_image": 4.0},
    }
    (run_dir / "final_results.json").write_text(json.dumps(final))


def shared_noise(test_set: str, n_boot: int = 200, scale: float = 0.02) -> np.ndarray:
    rng = random.Random(test_set)
    return np.array([rng.gauss(0.0, scale) for _ in range(n_boot)])


def fake_bootstrap(run_dir: Path, metric: str, point: float, test_set: str = "synthetic-test") -> None:
    """bootstrap_test.json of ``metric``: replicate b = point + the test set's noise b + a little of the run's own."""
    rng = np.random.default_rng(zlib.crc32(str(run_dir).encode()))
    samples = point + shared_noise(test_set) + rng.normal(0.0, 0.002, 200)
    save_bootstrap(run_dir / "bootstrap_test.json",
                   BootstrapResult(metric, point, samples, percentile_ci(samples), 60, 200, test_set))


def segment_study(tmp_path: Path, per_config: dict[str, list[float]], *, primary: str = "Smeasure",
                  bootstrap: bool = True, select: dict[str, Any] | None = None, **run: Any):
    """Configurations ``baseline`` (RGB + thermal fused), ``rgb``, ``thermal``... with the given test values per
    seed (validation = test); returns the plan."""
    seeds = len(per_config["baseline"])
    streams = {"rgb": [["rgb"]], "thermal": [["thermal"]], "early": [["rgb", "thermal"]]}
    points = [{"id": cid, "set": {"model.streams": streams[cid]}} for cid in per_config if cid != "baseline"]
    phases: list[dict[str, Any]] = [{"name": "modalities", "points": points}]
    if select is not None:
        phases.append({"name": "lr", "select": select, "axes": {"train.lr": [0.05]}})
    spec = spec_from_dict({"name": "seg", "seeds": seeds, "set": {"task": "segment", "model.streams": [["rgb"], ["thermal"]]},
                           "phases": phases})
    plan = build_plan(spec, StudySettings(output=tmp_path / "seg"))
    for r in plan.runs():
        if r.config_id not in per_config:
            continue
        value = per_config[r.config_id][plan.seeds.index(r.seed)]
        fake_segment_run(r.run_dir, value, value, primary=primary, **run)
        if bootstrap:
            fake_bootstrap(r.run_dir, primary, value)
    return plan


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """REPORT.md without drawing (drawing is most of a report's time; one test below draws everything)."""
    from crossattentiondet.studies import plots

    def skip(*args: Any, **kwargs: Any) -> Path:
        return next(a for a in args if isinstance(a, Path))

    for name in ("plot_config_bars", "plot_sensitivity", "plot_grid", "plot_pareto", "plot_ap_by_size", "plot_per_set"):
        monkeypatch.setattr(plots, name, skip)


def config_rows(plan: Any) -> dict[str, dict[str, str]]:
    return {r["exp_id"]: r for r in csv.DictReader((plan.study_dir / "summary.csv").open()) if r["row"] == "config"}


# ---------------------------------------------------------------------------------------------- metrics
def test_task_metrics_follow_the_task_and_its_primary_metric() -> None:
    assert aggregate.task_metrics() is aggregate.DETECT_METRICS
    assert aggregate.DETECT_METRICS.all == aggregate.ALL_METRICS  # detection's columns are unchanged
    cod = aggregate.task_metrics("segment", "Smeasure", ["MAE"], SETS)
    assert cod.test == aggregate.COD_TEST_METRICS and cod.val_columns == ("val_Smeasure", "val_MAE")
    assert cod.set_columns == tuple(f"{s}_Smeasure" for s in SETS) and cod.gflops == "model_gflops"
    assert cod.lower_better("MAE") and cod.lower_better("val_MAE") and not cod.lower_better("Smeasure")
    assert not cod.lower_better("CAMO_Smeasure")
    semantic = aggregate.task_metrics("segment", "mIoU", (), ["mfnet"])
    assert semantic.test == ("mIoU", "pixel_acc") and semantic.sets == ()  # one test set: no per-set columns
    assert aggregate.run_task({"results": {"mAP": 0.3}}) == ("detect", "mAP")  # runs from before tasks
    assert aggregate.run_task({"task": "segment", "results": {"mIoU": 0.3}}) == ("segment", "mIoU")


def test_run_metrics_of_a_segmentation_run(tmp_path: Path) -> None:
    fake_segment_run(tmp_path / "r", 0.7, 0.8)
    final = json.loads((tmp_path / "r" / "final_results.json").read_text())
    metrics = aggregate.run_metrics(final)  # the run's own task when the study's is not given
    assert metrics["Smeasure"] == 0.8 and metrics["val_Smeasure"] == 0.7 and metrics["MAE"] == pytest.approx(0.1)
    assert metrics["model_gflops"] == 1.25 and metrics["params_M"] == 2.0 and metrics["time_hr"] == 0.02
    assert "mAP" not in metrics
    with_sets = aggregate.run_metrics(final, aggregate.task_metrics("segment", "Smeasure", (), SETS))
    assert with_sets["COD10K_Smeasure"] == pytest.approx(0.75) and with_sets["NC4K_Smeasure"] == pytest.approx(0.65)
    assert math.isnan(aggregate.run_metrics(None, aggregate.task_metrics("segment"))["Smeasure"])


# ------------------------------------------------------------------------------------------- the study
def test_segmentation_study_tables_tests_and_report(tmp_path: Path) -> None:
    values = {"baseline": [0.80, 0.81, 0.82], "rgb": [0.60, 0.62, 0.61], "thermal": [0.79, 0.83, 0.80]}
    plan = segment_study(tmp_path, values)
    results = aggregate.collect(plan)
    assert results.metrics.task == "segment" and results.metrics.primary == "Smeasure"
    rgb = results.config("rgb")
    assert rgb.test_sampling is not None and rgb.vs_baseline["Smeasure"].paired is True
    assert rgb.vs_baseline["Smeasure"].diff == pytest.approx(-0.2)
    assert aggregate.verdict(rgb, results) == "yes: worse than the baseline"
    assert aggregate.verdict(results.config("thermal"), results).startswith("no: within seed and test-set noise")
    # MAE falls as the S-measure rises: a lower MAE is the better one
    assert rgb.vs_baseline["MAE"].diff == pytest.approx(0.1) and results.metrics.lower_better("MAE")

    report = write_report(plan).read_text()
    rows = config_rows(plan)
    assert rows["rgb"]["Smeasure_verdict"] == "yes: worse than the baseline"
    assert rows["rgb"]["Smeasure_test_sampling"] == "yes" and rows["rgb"]["Smeasure_diff_paired"] == "yes"
    assert float(rows["rgb"]["Smeasure_p_holm"]) < 0.05 and rows["rgb"]["Smeasure_holm_comparisons"] == "2"
    assert float(rows["baseline"]["val_Smeasure"]) == pytest.approx(0.81)
    assert float(rows["baseline"]["COD10K_Smeasure"]) == pytest.approx(0.76)
    assert float(rows["baseline"]["model_gflops"]) == 1.25
    header = next(csv.reader((plan.study_dir / "summary.csv").open()))
    assert not [c for c in header if "mAP" in c] and "wFmeasure_ci95_low" in header
    all_header = next(csv.reader((plan.study_dir / "summary_all_experiments.csv").open()))
    assert all_header[all_header.index("epochs") + 1:][:3] == ["Smeasure", "meanEm", "maxEm"]

    for needle in ("| test Smeasure | 95% CI | Δ Smeasure vs baseline", "## Test metrics", "## Smeasure per test set",
                   "| CAMO | COD10K | CHAMELEON | NC4K |", "## Modalities", "val Smeasure", "smaller is better for MAE"):
        assert needle in report, needle
    assert "mAP" not in report and "AP by object size" not in report
    for name in ("phase1_modalities_Smeasure.png", "per_test_set.png", "pareto.png"):
        assert (plan.study_dir / "plots" / name).stat().st_size > 5000, name


def test_a_lower_is_better_primary_metric_ranks_ascending(tmp_path: Path, no_plots: None) -> None:
    # a task scored by an error: the configuration with the smaller value is the better one
    values = {"baseline": [0.30, 0.31, 0.29], "rgb": [0.10, 0.11, 0.12]}
    plan = segment_study(tmp_path, values, primary="MAE")
    results = aggregate.collect(plan)
    assert results.metrics.primary == "MAE" and results.metrics.lower_better("MAE")
    assert aggregate.verdict(results.config("rgb"), results) == "yes: better than the baseline"
    text = write_report(plan).read_text()
    assert "Smaller MAE is better." in text
    from crossattentiondet.studies.plots import pareto_front

    assert pareto_front([(1.0, 0.1), (2.0, 0.3)], lower_is_better=True) == [0]
    assert pareto_front([(1.0, 0.1), (2.0, 0.3)]) == [0, 1]


def test_semantic_study_uses_miou(tmp_path: Path, no_plots: None) -> None:
    plan = segment_study(tmp_path, {"baseline": [0.5, 0.52], "rgb": [0.4, 0.41]}, primary="mIoU", per_set=False,
                         lower=[])
    results = aggregate.collect(plan)
    assert results.metrics.test == ("mIoU", "pixel_acc") and results.metrics.sets == ()
    text = write_report(plan).read_text()
    assert "| test mIoU |" in text and "per test set" not in text
    assert float(config_rows(plan)["baseline"]["pixel_acc"]) == pytest.approx(0.71)


def test_runs_without_bootstrap_keep_seed_only_intervals(tmp_path: Path, no_plots: None) -> None:
    plan = segment_study(tmp_path, {"baseline": [0.8, 0.81, 0.82], "rgb": [0.6, 0.61, 0.6]}, bootstrap=False)
    for r in plan.runs():  # a bootstrap of another metric is not one of the primary metric
        fake_bootstrap(r.run_dir, "MAE", 0.1)
    results = aggregate.collect(plan)
    assert all(c.test_sampling is None for c in results.configs)
    assert "no bootstrap_test.json in 3 of 3 runs" in results.config("rgb").test_sampling_note
    text = write_report(plan, results).read_text()
    assert config_rows(plan)["rgb"]["Smeasure_test_sampling"] == "no"
    assert "Without the test-sampling term" in text and "[0." in text and "†" in text


def test_a_study_mixing_tasks_is_an_error(tmp_path: Path) -> None:
    plan = segment_study(tmp_path, {"baseline": [0.8, 0.81], "rgb": [0.6, 0.61]})
    detection = {"results": {"mAP": 0.3}, "validation": {"mAP": 0.3}}  # an old detection run: no "task"
    (plan.study_dir / "rgb" / "seed1" / "final_results.json").write_text(json.dumps(detection))
    with pytest.raises(ConfigError, match=r"different tasks or primary metrics \(baseline/seed0: segment \(Smeasure\), rgb/seed1: detect \(mAP\)\)"):
        aggregate.collect(plan)


def test_no_finished_run_yet_takes_the_task_from_the_configurations(tmp_path: Path, no_plots: None) -> None:
    spec = spec_from_dict({"name": "empty", "seeds": 1, "set": {"task": "segment"},
                           "phases": [{"name": "p", "axes": {"train.lr": [0.01]}}]})
    plan = build_plan(spec, StudySettings(output=tmp_path / "empty"))
    assert aggregate.collect(plan).metrics.primary == "Smeasure"
    assert "| test Smeasure |" in write_report(plan).read_text()


def test_launcher_line_names_the_primary_metric(tmp_path: Path) -> None:
    fake_segment_run(tmp_path / "r", 0.7, 0.8)
    run = SimpleNamespace(run_dir=tmp_path / "r", key="exp_001/seed0")
    line = _describe(run, RunOutcome("exp_001/seed0", "finished", 12.0))  # type: ignore[arg-type]
    assert line == "exp_001/seed0: finished in 12 s (val Smeasure 0.7000, test Smeasure 0.8000)"


# ------------------------------------------------------------------------------------------- selection
def test_select_spec_mode_and_metric_follow_the_runs() -> None:
    assert spec_from_dict({"name": "s", "phases": [{"name": "a", "axes": {"x.y": [1]}},
                                                   {"name": "b", "select": {"top_k": 1, "metric": "MAE"},
                                                    "axes": {"x.y": [2]}}]}).phases[1].select.mode == "min"
    select = SelectSpec(top_k=1)
    segment = {"task": "segment", "primary_metric": "Smeasure", "lower_is_better": ["MAE"]}
    assert select.resolve([segment, segment]) == ("Smeasure", "max")
    assert select.resolve([{"results": {"mAP": 0.2}}]) == ("mAP", "max")  # detection, old or new
    assert select.resolve([]) == ("mAP", "max")
    assert SelectSpec(top_k=1, metric="wFmeasure").resolve([segment]) == ("wFmeasure", "max")
    assert SelectSpec(top_k=1, metric="MAE").resolve([segment]) == ("MAE", "min")
    error = {"task": "segment", "primary_metric": "MAE"}
    assert select.resolve([error]) == ("MAE", "min")
    assert SelectSpec(top_k=1, mode="max").resolve([error]) == ("MAE", "max")  # the spec said so
    with pytest.raises(ConfigError, match="different primary metrics"):
        select.resolve([segment, {"task": "segment", "primary_metric": "mIoU"}])


def test_phase_selection_of_a_segmentation_study_uses_validation_smeasure(tmp_path: Path, no_plots: None) -> None:
    values = {"baseline": [0.80, 0.81], "rgb": [0.60, 0.62], "thermal": [0.85, 0.86]}
    plan = segment_study(tmp_path, values, select={"top_k": 1})
    plan = build_plan(plan.spec, StudySettings(output=plan.study_dir), record_selection=True)
    selection = plan.selections[2]
    assert selection.metric == "Smeasure" and selection.selected == ["thermal"]
    assert "by validation Smeasure" in write_report(plan).read_text()
