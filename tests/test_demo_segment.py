"""`cadet demo --task segment`: the ranking, paired comparisons and REPORT.md from segmentation run directories.

The unit tests write the run directories by hand (final_results.json and bootstrap_test.json as a segmentation
run leaves them); the end-to-end test trains the four models and is marked slow.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from crossattentiondet.cli import main
from crossattentiondet.config import ConfigError
from crossattentiondet.demo import (
    FUSED,
    SEGMENT_DEMO,
    SEGMENT_VARIANTS,
    VARIANTS,
    compare,
    headline,
    rank,
    run_demo,
    segment_demo_config,
    summarise,
    write_segment_report,
)
from crossattentiondet.engine.bootstrap import BootstrapResult, percentile_ci, save_bootstrap
from crossattentiondet.io import read_json

N_BOOT = 300


def resample_noise() -> np.ndarray:
    """How hard each bootstrap resample of the test images is: shared by every model scored on them."""
    return np.random.default_rng(7).normal(0.0, 0.03, N_BOOT)


def write_run(run_dir: Path, smeasure: float, *, own: float = 0.004, metric: str = "Smeasure",
              test_set: str = "synthetic-abc", robustness: bool = False) -> None:
    """A finished segmentation run: final_results.json and bootstrap_test.json of its primary metric."""
    run_dir.mkdir(parents=True, exist_ok=True)
    results = {"Smeasure": smeasure, "meanEm": smeasure + 0.05, "maxEm": smeasure + 0.08, "adpEm": smeasure + 0.06,
               "wFmeasure": smeasure - 0.1, "MAE": round(0.5 - smeasure / 2, 6), "maxFm": smeasure - 0.02,
               "meanFm": smeasure - 0.05, "adpFm": smeasure - 0.04, "IoU": smeasure - 0.2, "Dice": smeasure - 0.1}
    final = {
        "experiment_id": run_dir.name, "task": "segment", "primary_metric": metric, "lower_is_better": ["MAE"],
        "config": {}, "results": results, "results_ci95": {metric: [smeasure - 0.05, smeasure + 0.05]},
        "results_per_set": {}, "validation": {**results, "Smeasure": smeasure - 0.01},
        "robustness": ([{"zeroed": "none", **results}, {"zeroed": "thermal", **results, "Smeasure": 0.5},
                        {"zeroed": "rgb", **results, "Smeasure": smeasure - 0.02}] if robustness else []),
        "training": {"epochs": 2, "best_epoch": 2, "best_val_metric": smeasure - 0.01, "select": metric,
                     "skipped_updates": 0, "stopped_early": False, "train_time_s": 30.0, "train_images": 160,
                     "val_images": 60, "test_images": 80},
        "model": {"params": 123_456}, "speed": {},
    }
    (run_dir / "final_results.json").write_text(json.dumps(final))
    (run_dir / "split.json").write_text(json.dumps({"splits": {"train": ["a"] * 160, "val": ["b"] * 60,
                                                              "test": ["c"] * 80}}))
    rng = np.random.default_rng(zlib.crc32(str(run_dir).encode()))
    samples = results[metric] + resample_noise() + rng.normal(0.0, own, N_BOOT)
    save_bootstrap(run_dir / "bootstrap_test.json",
                   BootstrapResult(metric, results[metric], samples, percentile_ci(samples), 80, N_BOOT, test_set))


SCORES = {"fused": 0.86, "early": 0.84, "rgb": 0.62, "thermal": 0.858}


def summaries(out: Path, seeds: int = 1, scores: dict[str, float] = SCORES) -> list:
    models = []
    for name, score in scores.items():
        dirs = []
        for seed in range(seeds):
            run = out / "runs" / f"{name}_seed{seed}"
            write_run(run, score + 0.01 * seed, robustness=name == FUSED)
            dirs.append(run)
        models.append(summarise(name, SEGMENT_VARIANTS[name][0].format(streams="(rgb) and (thermal)",
                                                                       fusion="FRM+FFM"), dirs))
    return models


def test_ranking_comparisons_and_report_from_run_directories(tmp_path: Path) -> None:
    models = summaries(tmp_path)
    assert {m.metric for m in models} == {"Smeasure"}
    ranking = rank(models)
    assert [m.name for m in ranking] == ["fused", "thermal", "early", "rgb"]
    fused = ranking[0]
    assert fused.mean == pytest.approx(0.86) and fused.ci[0] < 0.86 < fused.ci[1]
    comparisons = {c.other: c for c in (compare(fused, m, 1) for m in models if m.name != FUSED)}
    assert comparisons["rgb"].verdict == "fused better" and comparisons["rgb"].diff == pytest.approx(0.24)
    # shared resamples: the test-set noise cancels, so 0.02 is beyond the noise though each CI is ~0.12 wide
    assert comparisons["early"].verdict == "fused better" and fused.ci[1] - fused.ci[0] > 0.08
    assert comparisons["thermal"].verdict == "within noise"
    assert "beats early, rgb; cannot be told apart from thermal" in headline(list(comparisons.values()))

    (fused.run_dirs[0] / "plots").mkdir()
    (fused.run_dirs[0] / "plots" / "training_curves.png").write_bytes(b"png")
    report = write_segment_report(tmp_path, ranking, list(comparisons.values()), 1, 65.0)
    text = report.read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| [1-4] \|", line)]
    assert len(rows) == 4 and all(line.count("|") == rows[0].count("|") for line in rows)
    assert [float(line.split("|")[3]) for line in rows] == [0.86, 0.858, 0.84, 0.62]
    assert all(re.search(r"\| \d\.\d{3}-\d\.\d{3} \|", line) for line in rows)
    assert "| rank | model | test Smeasure | 95% CI | test wFmeasure | test MAE | val Smeasure |" in text
    assert len([line for line in text.splitlines() if line.startswith("| fused - ")]) == 3
    assert "1 seed: the interval covers test-image sampling only" in text
    assert "Split (validation carved from the training share): train 160 images, val 60 images, test 80 images" in text
    assert "## Every test metric" in text and "Smaller is better for MAE" in text
    assert "| thermal zeroed | 0.500 |" in text  # the fused model's missing-modality table
    assert "mAP" not in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / link).is_file(), link
    assert (tmp_path / "plots" / "models.png").stat().st_size > 5000


def test_several_seeds_combine_seed_spread_and_test_sampling(tmp_path: Path) -> None:
    one = summaries(tmp_path / "one", 1)
    two = summaries(tmp_path / "two", 2)
    assert two[0].test_values == pytest.approx([0.86, 0.87]) and two[0].mean == pytest.approx(0.865)
    assert two[0].ci[1] - two[0].ci[0] > one[0].ci[1] - one[0].ci[0]  # seed spread on top, at 1 degree of freedom
    c = compare(two[0], two[2], 2)
    assert c.diff == pytest.approx(0.24) and c.ci[0] < 0.24 < c.ci[1]


def test_bad_run_directories_are_named(tmp_path: Path) -> None:
    write_run(tmp_path / "a", 0.8)
    write_run(tmp_path / "b", 0.8, test_set="another-test-set")
    write_run(tmp_path / "c", 0.8)
    save_bootstrap(tmp_path / "c" / "bootstrap_test.json",
                   BootstrapResult("MAE", 0.1, np.full(N_BOOT, 0.1), (0.1, 0.1), 80, N_BOOT, "synthetic-abc"))
    with pytest.raises(ConfigError, match="has a bootstrap of MAE, not of its test Smeasure"):
        summarise("c", "c", [tmp_path / "c"])
    with pytest.raises(ConfigError, match="tested on different test sets"):
        summarise("ab", "ab", [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigError, match="tested on different test sets; cannot pair"):
        compare(summarise("a", "a", [tmp_path / "a"]), summarise("b", "b", [tmp_path / "b"]), 1)
    (tmp_path / "a" / "bootstrap_test.json").unlink()
    with pytest.raises(ConfigError, match="has no bootstrap_test.json"):
        summarise("a", "a", [tmp_path / "a"])


def test_a_lower_is_better_metric_ranks_ascending(tmp_path: Path) -> None:
    models = []
    for name, smeasure in (("fused", 0.9), ("rgb", 0.5)):  # MAE 0.05 and 0.25
        write_run(tmp_path / name, smeasure, metric="MAE")
        models.append(summarise(name, name, [tmp_path / name]))
    assert models[0].lower_is_better and [m.name for m in rank(models[::-1])] == ["fused", "rgb"]
    c = compare(models[0], models[1], 1)
    assert c.diff == pytest.approx(-0.2) and c.ci[1] < 0 and c.verdict == "fused better"


def test_segment_demo_settings_are_one_recipe_for_four_models() -> None:
    config = segment_demo_config()
    assert config.task == "segment" and config.data.root is None  # the built-in synthetic scenes
    assert config.model.backbone == "mit_b0" and config.model.seg.size in (64, 96)
    assert config.model.streams == [["rgb"], ["thermal"]] and config.eval.bootstrap >= 2
    assert set(SEGMENT_VARIANTS) == {"fused", "early", "rgb", "thermal"}
    assert all(all(o.startswith("model.streams=") for o in extra) for _, extra in SEGMENT_VARIANTS.values())
    assert SEGMENT_DEMO["task"] == "segment" and set(VARIANTS) > set(SEGMENT_VARIANTS)
    assert segment_demo_config(["train.epochs=1"]).train.epochs == 1
    assert config.data.split.test * config.data.synthetic.images >= 150


def test_segment_demo_refuses_bad_requests_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "demo.json").write_text(json.dumps({"task": "detect"}))
    with pytest.raises(ConfigError, match="holds a detect demo; the segment demo needs a folder of its own"):
        run_demo(tmp_path / "det", task="segment")
    with pytest.raises(ConfigError, match="the overrides set task=detect"):
        run_demo(tmp_path / "x", task="segment", overrides=["task=detect"])
    with pytest.raises(ConfigError, match="eval.bootstrap must be at least 2"):
        run_demo(tmp_path / "x", task="segment", overrides=["eval.bootstrap=0"])
    with pytest.raises(SystemExit):
        main(["demo", "--task", "classify"])
    assert "invalid choice" in capsys.readouterr().err


TINY_SEGMENT = ["data.synthetic.images=48", "data.synthetic.size=[48,48]", "model.seg.size=32", "train.epochs=1",
                "train.batch_size=4", "model.mit.embed_dims=[8,16,24,32]", "model.mit.num_heads=[1,2,2,4]",
                "eval.panels=2", "eval.bootstrap=200", "output.tensorboard=false"]


@pytest.mark.slow
def test_segment_demo_trains_every_model_and_ranks_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--task", "segment", "--out", str(out), *TINY_SEGMENT]) == 0
    printed = capsys.readouterr().out
    assert "verdict: the fused model" in printed and "test Smeasure (95% CI" in printed
    assert all(f"fused - {name}" in printed for name in SEGMENT_VARIANTS if name != FUSED)
    configs = {}
    for name in SEGMENT_VARIANTS:
        run = out / "runs" / f"{name}_seed0"
        final = read_json(run / "final_results.json")
        assert final["task"] == "segment" and 0.0 <= final["results"][final["primary_metric"]] <= 1.0
        assert read_json(run / "bootstrap_test.json")["metric"] == final["primary_metric"]
        configs[name] = final["config"]
    assert configs["fused"]["model"]["streams"] == [["rgb"], ["thermal"]]
    assert configs["early"]["model"]["streams"] == [["rgb", "thermal"]]
    for single in ("rgb", "thermal"):
        assert configs[single]["model"]["streams"] == [[single]]
    for name, config in configs.items():  # one recipe: only the streams differ
        for section in ("train", "data"):
            assert config[section] == configs["fused"][section], (name, section)
        assert config["model"]["seg"] == configs["fused"]["model"]["seg"] and config["model"]["mit"] == \
            configs["fused"]["model"]["mit"], name
    report = (out / "REPORT.md").read_text()
    rows = [line for line in report.splitlines() if re.match(r"\| [1-4] \|", line)]
    assert len(rows) == 4 and all(re.search(r"\| \d\.\d{3}-\d\.\d{3} \|", line) for line in rows)
    values = [float(line.split("|")[3]) for line in rows]
    assert values == sorted(values, reverse=True)
    assert len([line for line in report.splitlines() if line.startswith("| fused - ")]) == 3
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / link).is_file(), link
    stamp = (out / "runs" / "fused_seed0" / "final_results.json").stat().st_mtime_ns
    assert main(["demo", "--task", "segment", "--out", str(out), *TINY_SEGMENT]) == 0  # reuses the finished runs
    assert (out / "runs" / "fused_seed0" / "final_results.json").stat().st_mtime_ns == stamp
