"""Ablation studies without training: specs, built-in plans and ids, phase selection, locks, statistics, report.

Finished runs are faked by writing the files a finished run leaves (final_results.json); the studies that
really train are in test_studies_runs.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from crossattentiondet.cli import study_cmd
from crossattentiondet.config import ConfigError
from crossattentiondet.studies import aggregate
from crossattentiondet.studies.builtin import BACKBONE_TABLE
from crossattentiondet.studies.plan import StudySettings, build_plan
from crossattentiondet.studies.report import write_report
from crossattentiondet.studies.runner import (
    execute_run,
    load_recorded_study,
    record_study,
    run_study,
    runnable,
    write_run_config,
)
from crossattentiondet.studies.spec import load_spec, spec_from_dict
from crossattentiondet.studies.state import LOCK, RunLock, read_run_state

CSSA_PHASE1 = ["exp_001_s1_t0.5", "exp_002_s2_t0.5", "exp_003_s3_t0.5", "exp_004_s4_t0.5", "exp_005_s23_t0.5",
               "exp_006_s34_t0.5", "exp_007_s1234_t0.5"]
GAFF_PHASE1 = ["exp_001_s1_r4_is0_mb0", "exp_002_s2_r4_is0_mb0", "exp_003_s3_r4_is0_mb0", "exp_004_s4_r4_is0_mb0",
               "exp_005_s23_r4_is0_mb0", "exp_006_s34_r4_is0_mb0", "exp_007_s234_r4_is0_mb0",
               "exp_008_s1234_r4_is0_mb0"]
# the phase-2 grid of seeds/000 section 3.2 in table order (SE r, shared, bottleneck), without the phase-1 point
GAFF_GRID = ["r4_is0_mb1", "r4_is1_mb0", "r4_is1_mb1", "r8_is0_mb0", "r8_is0_mb1", "r8_is1_mb0", "r8_is1_mb1"]


def cli(*argv: str) -> int:
    """Dispatch ``cadet study ...`` through a parser built here (the module is registered by the CLI)."""
    parser = argparse.ArgumentParser(prog="cadet")
    study_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", *argv])
    return int(args.func(args) or 0)


def plan_of(name: str, tmp_path: Path, seeds: int = 3, **settings: Any):
    return build_plan(load_spec(name), StudySettings(seeds=list(range(seeds)), output=tmp_path / name, **settings))


def ids(plan: Any, phase: int) -> list[str]:
    return [c.id for c in plan.configurations if c.phase == phase]


def fake_finished(run_dir: Path, val_map: float, test_map: float, *, params: int = 1_000_000, latency: float = 10.0,
                  small: float | None = 0.1) -> None:
    """The files a finished run leaves, as far as studies read them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = {
        "experiment_id": run_dir.name,
        "results": {"mAP": test_map, "mAP_50": min(1.0, test_map + 0.2), "mAP_75": test_map / 2, "mAP_small": small,
                    "mAP_medium": test_map, "mAP_large": None, "mAR_100": test_map + 0.1},
        "validation": {"mAP": val_map, "mAP_50": min(1.0, val_map + 0.2)},
        "training": {"epochs": 2, "best_epoch": 2, "train_time_s": 36.0},
        "model": {"backbone": "mit_b1", "params": params, "backbone_gflops": 1.5, "detector_gflops": 3.0},
        "speed": {"latency_ms_per_image": latency, "params": params},
    }
    (run_dir / "final_results.json").write_text(json.dumps(final))


# ------------------------------------------------------------------------------------------ built-in plans
@pytest.mark.parametrize("seeds", [1, 3])
def test_cssa_plan_has_the_original_ids_and_counts(tmp_path: Path, seeds: int) -> None:
    plan = plan_of("cssa", tmp_path, seeds)
    assert ids(plan, 0) == ["baseline"]
    assert ids(plan, 1) == CSSA_PHASE1
    phase2 = [c for c in plan.configurations if c.phase == 2]
    assert [c.id for c in phase2] == ["exp_008_s?_t0.3", "exp_009_s?_t0.7", "exp_010_s?_t0.3", "exp_011_s?_t0.7"]
    assert all(c.pending for c in phase2)
    runs = plan.runs()
    assert len(runs) == 12 * seeds
    assert sum(1 for r in runs if r.pending) == 4 * seeds and all(r.run_dir is None for r in runs if r.pending)
    assert "waiting for" in plan.waiting[2]
    # the matched baseline: the same recipe and flow with CSSA at no stage, i.e. FRM+FFM everywhere
    base = plan.configuration("baseline").config
    exp3 = plan.configuration("exp_003_s3_t0.5").config
    assert [base.model.fusion.module_for_stage(s) for s in (1, 2, 3, 4)] == ["frm_ffm"] * 4
    assert [exp3.model.fusion.module_for_stage(s) for s in (1, 2, 3, 4)] == ["frm_ffm", "frm_ffm", "cssa", "frm_ffm"]
    assert base.train == exp3.train and base.model.fusion.flow == exp3.model.fusion.flow == "separate"
    assert exp3.model.drop_path_rate == base.model.drop_path_rate == 0.1
    assert (exp3.train.epochs, exp3.train.batch_size, exp3.train.lr, exp3.train.optimizer.weight_decay,
            exp3.train.schedule.type) == (25, 2, 0.005, 0.0001, "constant")


@pytest.mark.parametrize("seeds", [1, 3])
def test_gaff_plan_has_the_original_ids_and_counts(tmp_path: Path, seeds: int) -> None:
    plan = plan_of("gaff", tmp_path, seeds)
    assert ids(plan, 0) == ["baseline"]
    assert ids(plan, 1) == GAFF_PHASE1
    phase2 = ids(plan, 2)
    assert len(phase2) == 21 and len(plan.runs()) == 30 * seeds
    assert phase2 == [f"exp_{n:03d}_s?_{GAFF_GRID[(n - 9) % 7]}" for n in range(9, 30)]
    train = plan.configuration("exp_004_s4_r4_is0_mb0").config.train
    assert (train.epochs, train.batch_size, train.lr, train.schedule.type) == (15, 16, 0.02, "step")


def test_plans_of_backbones_modalities_and_fusion(tmp_path: Path) -> None:
    plan = plan_of("backbones", tmp_path)
    assert ids(plan, 1) == [f"mit_b{i}" for i in range(6)] and plan.baseline_id == "mit_b1"
    for c in plan.configurations:
        t = c.config.train
        row = BACKBONE_TABLE[c.id]
        assert c.config.model.backbone == c.id and t.batch_size * t.accumulation == 16
        assert (t.batch_size, t.accumulation, t.precision, c.config.model.grad_checkpointing) == \
            (row["batch_size"], row["accumulation"], row["precision"], row["grad_checkpointing"])
    b4 = plan.configuration("mit_b4").config
    assert (b4.train.batch_size, b4.train.accumulation, b4.train.precision, b4.model.grad_checkpointing) == \
        (2, 8, "fp16", True)

    plan = plan_of("modalities", tmp_path)
    assert ids(plan, 1) == ["all", "rgb_thermal", "rgb_event", "thermal_event", "rgb", "thermal", "event"]
    assert plan.baseline_id == "all"
    assert plan.configuration("thermal_event").config.model.streams == [["thermal"], ["event"]]
    assert plan.configuration("event").config.model.streams == [["event"]]

    plan = plan_of("fusion", tmp_path)
    assert ids(plan, 1) == ["early_fusion", "add", "concat", "frm_ffm", "cssa", "gaff"]
    assert plan.baseline_id == "frm_ffm"
    configs = [c.config for c in plan.configurations]
    assert all(c.model.fusion.stages == [1, 2, 3, 4] and c.train == configs[0].train for c in configs)
    assert [c.model.fusion.type for c in configs[1:]] == ["add", "concat", "frm_ffm", "cssa", "gaff"]
    assert plan.configuration("early_fusion").config.model.streams == [["rgb", "thermal", "event"]]


def test_plan_json_lists_every_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("plan", "cssa", "--json", "--seeds", "2", "--output", str(tmp_path / "s")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 24
    assert all({"id", "phase", "seed", "run_dir", "changes", "status", "pending"} <= set(r) for r in rows)
    assert [r["id"] for r in rows[:4]] == ["baseline", "baseline", "exp_001_s1_t0.5", "exp_001_s1_t0.5"]
    assert [r["seed"] for r in rows[:2]] == [0, 1]
    assert rows[2]["changes"] == {"model.fusion.stages": [1]} and rows[2]["status"] == "pending"
    assert rows[2]["run_dir"] == str(tmp_path / "s" / "exp_001_s1_t0.5" / "seed0")
    pending = [r for r in rows if r["pending"]]
    assert len(pending) == 8 and all(r["phase"] == 2 and r["run_dir"] is None for r in pending)
    assert pending[0]["changes"] == {"model.fusion.cssa.switching_thresh": 0.3}
    assert cli("plan", "gaff", "--seeds", "1,", "--output", str(tmp_path / "g")) == 0
    text = capsys.readouterr().out
    assert "exp_029_s?_r8_is1_mb1" in text and "30 configurations" in text and "= 30 runs" in text
    assert cli("plan", "cssa", "--print-spec") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert spec_from_dict(printed).phases[1].select.top_k == 2  # the printed spec is a valid spec file


def test_quick_keeps_ids_and_phases_and_shrinks_the_runs(tmp_path: Path) -> None:
    plan = build_plan(load_spec("backbones"), StudySettings(quick=True, seeds=[0]))
    assert str(plan.study_dir) == os.path.join("studies", "backbones-quick")
    assert ids(plan, 1) == [f"mit_b{i}" for i in range(6)]
    b5 = plan.configuration("mit_b5").config
    assert b5.train.epochs == 1 and b5.data.root is None and b5.model.mit.embed_dims == [8, 16, 24, 32]
    assert b5.train.precision == "fp32"  # fp16 needs CUDA; quick runs anywhere
    assert b5.model.backbone == "mit_b5" and b5.train.accumulation == 8  # the study's own settings stay
    quick = plan_of("gaff", tmp_path, 1, quick=True)
    assert ids(quick, 1) == GAFF_PHASE1 and len(ids(quick, 2)) == 21


def test_quick_keeps_what_a_study_varies(tmp_path: Path) -> None:
    spec = spec_from_dict({"name": "epochs_sweep", "seeds": 1, "id_format": "exp_{n:03d}_e{e}",
                           "id_fields": {"e": "train.epochs"},
                           "phases": [{"name": "sweep", "axes": {"train.epochs": [5, 10],
                                                                 "train.precision": ["fp16"]}}]})
    plan = build_plan(spec, StudySettings(quick=True, seeds=[0], output=tmp_path / "s"))
    configs = {c.id: c.config for c in plan.configurations if c.phase == 1}
    assert sorted(c.train.epochs for c in configs.values()) == [5, 10]  # varied: kept
    assert {c.train.precision for c in configs.values()} == {"fp32"}  # forced: fp16 cannot run on a CPU
    assert all(list(c.model.mit.embed_dims) == [8, 16, 24, 32] for c in configs.values())  # not varied: shrunk


def test_overrides_apply_to_every_configuration(tmp_path: Path) -> None:
    plan = plan_of("cssa", tmp_path, 1, overrides=["train.epochs=3", "data.root=/data/x", "model.fusion.flow=fused"])
    assert {(c.config.train.epochs, c.config.data.root, c.config.model.fusion.flow)
            for c in plan.configurations if not c.pending} == {(3, "/data/x", "fused")}
    with pytest.raises(ConfigError, match="train.epoch' is not a config key.*train.epochs"):
        plan_of("cssa", tmp_path, 1, overrides=["train.epoch=3"])


def test_relative_base_is_read_next_to_the_spec_and_remembered(tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("base: preset:recipe_baseline\ntrain: {epochs: 4}\n")
    (folder / "s.yaml").write_text(yaml.safe_dump({"name": "s", "base": "recipe.yaml", "seeds": 1,
                                                   "phases": [{"name": "a", "axes": {"train.lr": [0.01]}}]}))
    plan = build_plan(load_spec(str(folder / "s.yaml")), StudySettings(output=tmp_path / "out"))
    assert (plan.base_config.train.epochs, plan.base_config.train.batch_size) == (4, 16)
    record_study(plan)
    assert build_plan(*load_recorded_study(tmp_path / "out")).base_config.train.epochs == 4


# ---------------------------------------------------------------------------------------------- spec errors
BASE_SPEC: dict[str, Any] = {"name": "s", "phases": [{"name": "p1", "axes": {"train.lr": [0.01, 0.02]}}]}


@pytest.mark.parametrize("change,message", [
    ({"phase": []}, "unknown key 'phase' (did you mean 'phases'?)"),
    ({"phases": [{"name": "p1", "axs": {"train.lr": [1]}}]}, "unknown key 'phases[0].axs' (did you mean 'axes'?)"),
    ({"phases": [{"name": "p1", "axes": {"model.fusion.stage": [[1]]}}]},
     "'model.fusion.stage' is not a config key (did you mean 'model.fusion.stages'?)"),
    ({"phases": [{"name": "p1", "axes": {"train.lr": [0.1]}},
                 {"name": "p2", "select": {"top_k": 2}, "axes": {"train.epochs": [2]}}]},
     "phases[1].select.top_k: 2 is more than the 1 configurations of phase 'p1'"),
    ({"phases": [{"name": "p1", "axes": {"model.fusion.stages": [[5]]}}]}, "phases[0] (p1) point 1: model.fusion: stages must be in 1..4, got [5]"),
    ({"phases": [{"name": "p1", "axes": {"train.lr": []}}]}, "axis 'train.lr' has no values"),
    ({"phases": [{"name": "p1", "select": {"top_k": 1}, "axes": {"train.lr": [1]}}]}, "cannot select"),
    ({"id_format": "x{lr}"}, "id_format uses ['lr'], which id_fields does not define"),
    ({"id_format": "x"}, "two configurations get the id 'x'"),
    ({"baseline": "nope"}, "baseline 'nope' is not the id of a configuration"),
    ({"seeds": 0}, "seeds: needs at least 1 seed"),
])
def test_spec_errors_are_one_line_and_name_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE_SPEC, **change}))
    with pytest.raises(ConfigError) as err:
        build_plan(load_spec(str(path)), StudySettings(output=tmp_path / "out"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_study_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a built-in study"):
        load_spec("no_such_study")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(str(bad))


# ------------------------------------------------------------------------------------------------ selection
def test_phase2_selection_follows_validation_never_test(tmp_path: Path) -> None:
    seeds = [0, 1]
    study = tmp_path / "cssa"
    # validation ranks exp_003 ([3]) then exp_006 ([3,4]); test would rank exp_001 and exp_002 first
    val = {cid: 0.30 + 0.01 * i for i, cid in enumerate(CSSA_PHASE1)}
    val["exp_003_s3_t0.5"], val["exp_006_s34_t0.5"] = 0.60, 0.55
    test = {cid: 0.9 - 0.05 * i for i, cid in enumerate(CSSA_PHASE1)}
    for cid in CSSA_PHASE1[:-1]:
        for seed in seeds:
            fake_finished(study / cid / f"seed{seed}", val[cid] + 0.001 * seed, test[cid])
    fake_finished(study / CSSA_PHASE1[-1] / "seed0", val[CSSA_PHASE1[-1]], test[CSSA_PHASE1[-1]])
    (study / CSSA_PHASE1[-1] / "seed1").mkdir(parents=True)
    (study / CSSA_PHASE1[-1] / "seed1" / "failed.json").write_text(json.dumps({"error": "CUDA out of memory"}))
    settings = StudySettings(seeds=seeds, output=study)

    waiting = build_plan(load_spec("cssa"), settings, record_selection=True)
    assert "waiting for 1 of 14 runs" in waiting.waiting[2] and "failed" in waiting.waiting[2]
    assert not (study / "selection_phase2.json").exists()

    fake_finished(study / CSSA_PHASE1[-1] / "seed1", val[CSSA_PHASE1[-1]], test[CSSA_PHASE1[-1]])
    (study / CSSA_PHASE1[-1] / "seed1" / "failed.json").unlink()
    look = build_plan(load_spec("cssa"), settings)  # plan/status look without recording
    assert not (study / "selection_phase2.json").exists()
    plan = build_plan(load_spec("cssa"), settings, record_selection=True)
    assert look.selections[2].selected == plan.selections[2].selected == ["exp_003_s3_t0.5", "exp_006_s34_t0.5"]
    assert ids(plan, 2) == ["exp_008_s3_t0.3", "exp_009_s3_t0.7", "exp_010_s34_t0.3", "exp_011_s34_t0.7"]
    assert plan.configuration("exp_010_s34_t0.3").config.model.fusion.stages == [3, 4]
    assert plan.configuration("exp_010_s34_t0.3").config.model.fusion.cssa.switching_thresh == 0.3
    recorded = json.loads((study / "selection_phase2.json").read_text())
    assert recorded["metric"] == "validation.mAP" and recorded["ranking"][0]["id"] == "exp_003_s3_t0.5"
    assert recorded["ranking"][0]["mean"] == pytest.approx(0.6005)
    # the recorded selection never changes, even when later results would rank otherwise
    fake_finished(study / "exp_001_s1_t0.5" / "seed0", 0.99, 0.1)
    assert build_plan(load_spec("cssa"), settings, record_selection=True).selections[2].selected == \
        ["exp_003_s3_t0.5", "exp_006_s34_t0.5"]


def test_gaff_phase2_ids_after_selection(tmp_path: Path) -> None:
    study = tmp_path / "gaff"
    ranking = {"exp_004_s4_r4_is0_mb0": 0.7, "exp_006_s34_r4_is0_mb0": 0.6, "exp_001_s1_r4_is0_mb0": 0.5}
    for cid in GAFF_PHASE1:
        fake_finished(study / cid / "seed0", ranking.get(cid, 0.1), 0.5)
    plan = build_plan(load_spec("gaff"), StudySettings(seeds=[0], output=study), record_selection=True)
    phase2 = ids(plan, 2)
    assert len(phase2) == 21 and phase2[3] == "exp_012_s4_r8_is0_mb0"
    assert phase2 == [f"exp_{n:03d}_s{s}_{GAFF_GRID[(n - 9) % 7]}"
                      for n, s in zip(range(9, 30), ["4"] * 7 + ["34"] * 7 + ["1"] * 7)]
    g = plan.configuration("exp_011_s4_r4_is1_mb1").config.model.fusion.gaff
    assert (g.se_reduction, g.inter_shared, g.merge_bottleneck) == (4, True, True)


def test_select_with_missing_ranks_on_finished_seeds(tmp_path: Path) -> None:
    spec = spec_from_dict({"name": "s", "seeds": 2, "phases": [
        {"name": "a", "axes": {"train.lr": [0.01, 0.02, 0.03]}},
        {"name": "b", "select": {"top_k": 1}, "axes": {"train.epochs": [2]}}]})
    study = tmp_path / "s"
    for i, lr_id in enumerate(("exp_001", "exp_002")):
        for seed in (0, 1):
            fake_finished(study / lr_id / f"seed{seed}", 0.2 + 0.1 * i, 0.5)
    fake_finished(study / "exp_003" / "seed0", 0.9, 0.5)  # seed 1 of exp_003 never finished
    assert 2 in build_plan(spec, StudySettings(output=study)).waiting
    plan = build_plan(spec, StudySettings(output=study, select_with_missing=True), record_selection=True)
    assert plan.selections[2].selected == ["exp_003"] and plan.selections[2].missing == ["exp_003/seed1 (pending)"]
    assert plan.configuration("exp_004").config.train.lr == 0.03


# ----------------------------------------------------------------------------------------------------- locks
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_live_lock_is_respected_and_stale_lock_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "exp" / "seed0"
    holder = RunLock(run_dir)
    assert holder.acquire()
    assert read_run_state(run_dir).status == "running"
    other = RunLock(run_dir)
    assert not other.acquire() and other.holder is not None and other.holder.pid == os.getpid()
    assert execute_run(run_dir).status == "held"  # never starts training a run another process holds
    holder.release()
    assert not (run_dir / LOCK).exists()

    (run_dir / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename, "token": "old"}))
    assert read_run_state(run_dir).status == "pending"
    taker = RunLock(run_dir)
    assert taker.acquire() and json.loads((run_dir / LOCK).read_text())["token"] == taker.info.token
    taker.release()

    (run_dir / LOCK).write_text(json.dumps({"pid": 1, "host": "another-node", "token": "remote"}))
    assert read_run_state(run_dir).status == "running"  # another host: live while it is touched
    old = time.time() - 3600
    os.utime(run_dir / LOCK, (old, old))
    assert read_run_state(run_dir).status == "pending" and RunLock(run_dir).acquire()


def test_only_one_of_many_concurrent_takers_gets_a_stale_lock(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename, "token": "stale"}))
    locks = [RunLock(run_dir) for _ in range(8)]
    results: list[bool] = []
    barrier = threading.Barrier(len(locks))

    def take(lock: RunLock) -> None:
        barrier.wait()
        results.append(lock.acquire())

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_requeued_cluster_task_takes_its_own_lock_back(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    first = RunLock(run_dir, owner="submitit:42")
    assert first.acquire()
    assert not RunLock(run_dir, owner="submitit:43").acquire()
    assert RunLock(run_dir, owner="submitit:42").acquire()


def test_runner_skips_finished_and_locked_runs(tmp_path: Path) -> None:
    spec = spec_from_dict({"name": "s", "seeds": 1, "baseline": None,
                           "phases": [{"name": "a", "axes": {"train.lr": [0.01, 0.02]}}]})
    settings = StudySettings(output=tmp_path / "s")
    fake_finished(tmp_path / "s" / "exp_001" / "seed0", 0.5, 0.5)
    holder = RunLock(tmp_path / "s" / "exp_002" / "seed0")
    assert holder.acquire()
    plan = build_plan(spec, settings)
    assert [runnable(r) for r in plan.runs()] == [False, False]
    messages: list[str] = []
    summary = run_study(spec, settings, write_report=False, echo=messages.append)
    assert summary.outcomes == [] and summary.counts == {"finished": 1, "running": 1}
    assert "1 run(s) already finished" in messages[0]
    holder.release()


@pytest.mark.parametrize(("overrides", "kwargs", "message"), [
    (["data.root=/no/such/data"], {}, "configuration 'exp_001': data.root not found: /no/such/data"),
    ([], {"max_parallel": 0}, "--max-parallel must be >= 1, got 0"),
    ([], {"max_runs": 0}, "--max-runs must be >= 1, got 0"),
])
def test_runner_rejects_bad_input_before_writing_anything(tmp_path: Path, overrides: list[str],
                                                          kwargs: dict[str, Any], message: str) -> None:
    spec = spec_from_dict({"name": "s", "seeds": 1, "baseline": None,
                           "phases": [{"name": "a", "axes": {"train.lr": [0.01, 0.02]}}]})
    settings = StudySettings(output=tmp_path / "s", overrides=overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_study(spec, settings, write_report=False, echo=lambda m: None, **kwargs)
    assert not (tmp_path / "s").exists()


def test_runner_selects_and_runs_the_next_phase_in_the_same_invocation(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from crossattentiondet.studies import launchers
    from crossattentiondet.studies.runner import RunOutcome

    spec = spec_from_dict({"name": "s", "seeds": 2, "phases": [
        {"name": "a", "axes": {"train.lr": [0.01, 0.02, 0.03]}},
        {"name": "b", "select": {"top_k": 1}, "axes": {"train.epochs": [2, 3]}}]})
    batches: list[list[str]] = []
    validation = {"baseline": 0.1, "exp_001": 0.2, "exp_002": 0.5, "exp_003": 0.3}

    def fake_run_local(plan: Any, runs: list[Any], **kwargs: Any) -> list[RunOutcome]:
        batches.append([r.key for r in runs])
        for r in runs:
            fake_finished(r.run_dir, validation.get(r.config_id, 0.4), 0.9 - validation.get(r.config_id, 0.4))
        return [RunOutcome(r.key, "finished") for r in runs]

    monkeypatch.setattr(launchers, "run_local", fake_run_local)
    summary = run_study(spec, StudySettings(output=tmp_path / "s"), write_report=False, echo=lambda m: None)
    assert batches == [
        [f"{c}/seed{s}" for s in (0, 1) for c in ("baseline", "exp_001", "exp_002", "exp_003")],  # seed-major
        [f"{c}/seed{s}" for s in (0, 1) for c in ("exp_004", "exp_005")]]
    assert summary.counts == {"finished": 12} and summary.waiting == {}
    plan = build_plan(spec, StudySettings(output=tmp_path / "s"))
    assert plan.configuration("exp_005").config.train.lr == 0.02  # built on exp_002, the best on validation
    assert plan.configuration("exp_005").config.train.epochs == 3


def test_a_changed_spec_cannot_reuse_other_results(tmp_path: Path) -> None:
    spec = spec_from_dict({"name": "s", "seeds": 1, "phases": [{"name": "a", "axes": {"train.lr": [0.01]}}]})
    settings = StudySettings(output=tmp_path / "s")
    plan = build_plan(spec, settings)
    write_run_config(plan, plan.runs()[1])
    moved = spec_from_dict({"name": "s", "seeds": 1, "phases": [{"name": "a", "axes": {"train.lr": [0.03]}}]})
    with pytest.raises(ConfigError, match="train.lr=0.01.*0.03"):
        run_study(moved, settings, write_report=False)


def test_parallel_slots_get_their_own_gpu_and_a_share_of_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossattentiondet.studies.launchers import slot_environment, visible_gpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    env = slot_environment(1, 2, ["0", "1"], base={})
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == "8"
    assert slot_environment(2, 3, ["4", "5"], base={})["CUDA_VISIBLE_DEVICES"] == "4"  # more slots than GPUs: shared
    env = slot_environment(3, 4, [], base={"OMP_NUM_THREADS": "2"})
    assert env["OMP_NUM_THREADS"] == "2" and "CUDA_VISIBLE_DEVICES" not in env  # the user's limit is an upper bound
    assert slot_environment(0, 1, ["0"], base={"X": "1"}) == {"X": "1"}  # one slot: the environment as it is
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]


# ---------------------------------------------------------------------------------------------- statistics
def test_statistics_match_textbook_values() -> None:
    s = aggregate.describe([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert (s.ci_low, s.ci_high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))
    one = aggregate.describe([0.4, math.nan])
    assert one.n == 1 and math.isnan(one.std) and math.isnan(one.ci_low)
    comp = aggregate.welch([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    # t = 3 / sqrt(2/3) = 3.674 on 4 degrees of freedom
    assert comp.diff == 3.0 and comp.p_value == pytest.approx(0.02131, abs=1e-4) and comp.distinguishable
    assert (comp.ci_low, comp.ci_high) == pytest.approx((3 - 2.776445 * math.sqrt(2 / 3), 3 + 2.776445 * math.sqrt(2 / 3)))
    unequal = aggregate.welch([0.50, 0.52, 0.51, 0.90], [0.50, 0.51])
    assert unequal.p_value > 0.05 and not unequal.distinguishable
    few = aggregate.welch([0.9], [0.1, 0.2])
    assert few.diff == pytest.approx(0.75) and math.isnan(few.p_value) and not few.distinguishable
    assert aggregate.holm([0.01, 0.04, math.nan, 0.03]) == pytest.approx([0.03, 0.06, math.nan, 0.06], nan_ok=True)


def test_summaries_and_report_from_run_files(tmp_path: Path) -> None:
    spec = spec_from_dict({
        "name": "rep", "seeds": 3, "baseline": {"model.fusion.stages": []},
        "set": {"model.fusion.type": "cssa"}, "id_format": "exp_{n:03d}_s{stages}_t{thresh}",
        "id_fields": {"stages": "model.fusion.stages", "thresh": "model.fusion.cssa.switching_thresh"},
        "phases": [{"name": "stage_placement", "axes": {"model.fusion.stages": [[3], [4], [3, 4]]}},
                   {"name": "threshold", "select": {"top_k": 2}, "axes": {"model.fusion.cssa.switching_thresh": [0.3]}}]})
    study = tmp_path / "rep"
    per_config = {"baseline": [0.50, 0.51, 0.49], "exp_001_s3_t0.5": [0.60, 0.61, 0.62],  # clearly better
                  "exp_002_s4_t0.5": [0.45, 0.58, 0.50], "exp_003_s34_t0.5": [0.52, 0.47, 0.55]}
    for i, (cid, values) in enumerate(per_config.items()):
        for seed, value in enumerate(values):
            fake_finished(study / cid / f"seed{seed}", value, value, params=1_000_000 * (i + 1), latency=5.0 + i)
    (study / "exp_003_s34_t0.5" / "seed2" / "final_results.json").unlink()
    (study / "exp_003_s34_t0.5" / "seed2" / "failed.json").write_text(json.dumps({"error": "loss is NaN"}))
    plan = build_plan(spec, StudySettings(output=study, select_with_missing=True), record_selection=True)
    assert plan.selections[2].selected == ["exp_001_s3_t0.5", "exp_002_s4_t0.5"]
    for seed in range(3):
        fake_finished(study / "exp_004_s3_t0.3" / f"seed{seed}", 0.6, 0.6 + 0.01 * seed)
    report = write_report(plan)

    rows = list(csv.DictReader((study / "summary.csv").open()))
    config_rows = {r["exp_id"]: r for r in rows if r["row"] == "config"}
    assert sum(1 for r in rows if r["row"] == "run") == 3 * 6 and set(config_rows) == set(per_config) | \
        {"exp_004_s3_t0.3", "exp_005_s4_t0.3"}
    better = config_rows["exp_001_s3_t0.5"]
    assert float(better["mAP"]) == pytest.approx(0.61) and float(better["mAP_std"]) == pytest.approx(0.01)
    assert better["n"] == "3" and float(better["mAP_ci95_low"]) < 0.61 < float(better["mAP_ci95_high"])
    assert float(better["mAP_diff"]) == pytest.approx(0.11) and float(better["mAP_p_value"]) < 0.01
    assert better["mAP_distinguishable_from_noise"] == "yes"
    assert config_rows["exp_002_s4_t0.5"]["mAP_distinguishable_from_noise"] == "no"
    partial = config_rows["exp_003_s34_t0.5"]
    assert partial["n"] == "2" and partial["status"] == "2/3 finished"
    assert config_rows["exp_005_s4_t0.3"]["n"] == "0" and config_rows["exp_005_s4_t0.3"]["mAP"] == ""
    all_rows = list(csv.DictReader((study / "summary_all_experiments.csv").open()))
    # the original project's columns (exp_id, stages, threshold, kernel, backbone, epochs, mAP...), plus seed
    assert list(all_rows[0])[:9] == ["exp_id", "seed", "stages", "threshold", "kernel", "backbone", "epochs", "mAP",
                                     "mAP_50"]
    assert (all_rows[0]["threshold"], all_rows[0]["kernel"], all_rows[0]["stages"]) == ("0.5", "3", "none")
    assert {r["status"] for r in all_rows} == {"finished", "failed", "pending"}
    assert [r["stages"] for r in all_rows if r["exp_id"] == "exp_003_s34_t0.5"][0] == "3,4"

    text = report.read_text()
    for needle in ("## Failed runs", "loss is NaN", "## Phase 1: stage_placement", "## Phase 2: threshold",
                   "yes: better than the baseline", "no: within seed noise", "selected", "## Accuracy vs cost",
                   "## AP by object size", "exp_003_s34_t0.5/seed2 | failed"):
        assert needle in text, needle
    for name in ("phase1_stage_placement_mAP.png", "phase2_threshold_sensitivity.png", "pareto.png",
                 "ap_by_size.png"):
        assert (study / "plots" / name).stat().st_size > 5000, name


def test_grid_and_modality_report_sections(tmp_path: Path) -> None:
    spec = spec_from_dict({
        "name": "mods", "seeds": 2, "baseline": "all",
        "phases": [{"name": "m", "points": [{"id": "all", "set": {}}, {"id": "rgb", "set": {"model.streams": [["rgb"]]}}]},
                   {"name": "g", "select": {"top_k": 1},
                    "axes": {"train.lr": [0.01, 0.02], "train.optimizer.nesterov": [True]}}]})
    study = tmp_path / "mods"
    for cid, value in (("all", 0.6), ("rgb", 0.4)):
        for seed in (0, 1):
            fake_finished(study / cid / f"seed{seed}", value + 0.01 * seed, value)
    plan = build_plan(spec, StudySettings(output=study), record_selection=True)
    assert ids(plan, 2) == ["exp_003", "exp_004"]
    text = write_report(plan).read_text()
    assert "## Modalities" in text and "| rgb | yes | — | — | rgb |" in text
    assert (study / "plots" / "phase2_g_grid.png").is_file()


def test_status_and_report_commands_read_a_study_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "st", "seeds": 1, "baseline": None,
                                         "phases": [{"name": "a", "axes": {"train.lr": [0.01, 0.02]}}]}))
    out = tmp_path / "st"
    fake_finished(out / "exp_001" / "seed0", 0.5, 0.4)
    (out / "exp_002" / "seed0").mkdir(parents=True)
    (out / "exp_002" / "seed0" / "failed.json").write_text(json.dumps({"error": "CUDA out of memory"}))
    record_study(build_plan(load_spec(str(spec_path)), StudySettings(output=out, overrides=["train.epochs=2"])))
    assert cli("status", str(out), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["status"]) for r in rows] == [("exp_001", "finished"), ("exp_002", "failed")]
    assert rows[0]["test_mAP"] == 0.4 and rows[1]["error"] == "CUDA out of memory"
    assert cli("status", str(spec_path), "--output", str(out)) == 0
    text = capsys.readouterr().out
    assert "exp_002/seed0" in text and "CUDA out of memory" in text and "1 finished, 1 failed" in text
    assert cli("report", str(out)) == 0
    assert "| exp_002/seed0 | failed |" in (out / "REPORT.md").read_text()
    # the directory remembers the overrides it was run with
    assert build_plan(*load_recorded_study(out)).base_config.train.epochs == 2


# ------------------------------------------------------------------ test-set sampling, Holm, zero variance, quick
LRS = [0.01, 0.02, 0.03, 0.04]


def small_study(tmp_path: Path, per_config: dict[str, list[float]], name: str = "b", **spec: Any):
    """A study whose configurations are ``baseline``, ``exp_001``, ... with the given test mAP per seed (all runs
    finished); returns its plan."""
    seeds = len(per_config["baseline"])
    others = [c for c in per_config if c != "baseline"]
    raw = {"name": name, "seeds": seeds, "phases": [{"name": "p", "axes": {"train.lr": LRS[:len(others)]}}], **spec}
    plan = build_plan(spec_from_dict(raw), StudySettings(output=tmp_path / name))
    for run in plan.runs():
        value = per_config[run.config_id][plan.seeds.index(run.seed)]
        fake_finished(run.run_dir, value, value)
    return plan


def shared_noise(image_ids_hash: str, n_boot: int = 200, scale: float = 0.02) -> list[float]:
    """The test-set part of replicate b: the same for every run scored on one test set (same resamples)."""
    import random

    rng = random.Random(image_ids_hash)
    return [rng.gauss(0.0, scale) for _ in range(n_boot)]


def fake_bootstrap(run_dir: Path, point: float, image_ids_hash: str = "testset-a", *, own: float = 0.002,
                   n_boot: int = 200, scale: float = 0.02) -> list[float]:
    """bootstrap_test.json as the evaluator leaves it: replicate b = point + the test set's noise b + a little
    of the run's own (how the model's errors fall on the resampled images)."""
    import random

    rng = random.Random(f"{run_dir}")
    samples = [point + s + rng.gauss(0.0, own) for s in shared_noise(image_ids_hash, n_boot, scale)]
    std = float(statistics_stdev(samples))
    (run_dir / "bootstrap_test.json").write_text(json.dumps({
        "metric": "mAP", "point": point, "ci95": [min(samples), max(samples)], "std": std, "n_boot": n_boot,
        "n_images": 40, "image_ids_hash": image_ids_hash, "samples": samples}))
    return samples


def statistics_stdev(values: list[float]) -> float:
    import statistics

    return statistics.stdev(values) if len(values) > 1 else 0.0


def config_rows(plan: Any) -> dict[str, dict[str, str]]:
    return {r["exp_id"]: r for r in csv.DictReader((plan.study_dir / "summary.csv").open()) if r["row"] == "config"}


def test_ci_covers_test_sampling_when_runs_have_bootstraps(tmp_path: Path) -> None:
    import statistics

    values = {"baseline": [0.50, 0.52, 0.51], "exp_001": [0.55, 0.56, 0.54]}
    without = small_study(tmp_path, values, name="old")
    old = aggregate.collect(without)
    seed_only = aggregate.describe(values["exp_001"])
    c = old.config("exp_001")
    assert c.test_sampling is None and "no bootstrap_test.json in 3 of 3 runs" in c.test_sampling_note
    assert (c.stats["mAP"].ci_low, c.stats["mAP"].ci_high) == (seed_only.ci_low, seed_only.ci_high)  # unchanged
    assert c.vs_baseline["mAP"].p_value == aggregate.welch(values["exp_001"], values["baseline"]).p_value

    plan = small_study(tmp_path, values, name="new")
    samples = {run.key: fake_bootstrap(run.run_dir, values[run.config_id][run.seed]) for run in plan.runs()}
    results = aggregate.collect(plan)
    c = results.config("exp_001")
    combined, seed = c.stats["mAP"], c.mAP_seed
    assert (seed.ci_low, seed.ci_high) == pytest.approx((seed_only.ci_low, seed_only.ci_high))
    assert combined.mean == pytest.approx(0.55) and combined.ci_high - combined.ci_low > seed.ci_high - seed.ci_low
    # Var = s^2 / n + var_b(rep_b), rep_b the mean over the configuration's runs of their replicate b
    reps = [statistics.fmean(samples[f"exp_001/seed{k}"][b] for k in range(3)) for b in range(200)]
    assert c.test_sampling.std == pytest.approx(statistics.stdev(reps))
    total = 0.01 ** 2 / 3 + statistics.variance(reps)
    df = total ** 2 / ((0.01 ** 2 / 3) ** 2 / 2)
    from scipy import stats as st

    assert combined.ci_high - 0.55 == pytest.approx(st.t.ppf(0.975, df) * math.sqrt(total))
    aggregate.write_summaries(plan, results)
    rows = config_rows(plan)
    assert rows["exp_001"]["mAP_test_sampling"] == "yes" and float(rows["exp_001"]["mAP_boot_std"]) > 0.005
    assert float(rows["exp_001"]["mAP_ci95_low"]) < float(rows["exp_001"]["mAP_seed_ci95_low"])
    text = write_report(without).read_text()
    assert "Without the test-sampling term" in text and "`exp_001` (no bootstrap_test.json in 3 of 3 runs)" in text
    assert "†" in text
    assert "Without the test-sampling term" not in write_report(plan).read_text()


def test_difference_uses_the_same_resamples_on_the_same_test_set(tmp_path: Path) -> None:
    import statistics

    values = {"baseline": [0.50, 0.52, 0.51], "exp_001": [0.55, 0.56, 0.54]}
    plan = small_study(tmp_path, values, name="paired")
    samples = {run.key: fake_bootstrap(run.run_dir, values[run.config_id][run.seed]) for run in plan.runs()}
    comp = aggregate.collect(plan).config("exp_001").vs_baseline["mAP"]
    rep = {cid: [statistics.fmean(samples[f"{cid}/seed{k}"][b] for k in range(3)) for b in range(200)]
           for cid in values}
    paired_var = statistics.variance([x - y for x, y in zip(rep["exp_001"], rep["baseline"])])
    assert comp.paired is True and comp.test_sampling
    assert comp.boot_std == pytest.approx(math.sqrt(paired_var))
    # the shared test-set difficulty cancels: far smaller than treating the two sides as independent
    assert comp.boot_std < 0.3 * math.sqrt(statistics.variance(rep["exp_001"]) + statistics.variance(rep["baseline"]))
    seed_only = aggregate.welch(values["exp_001"], values["baseline"])
    # a noise term added never makes the difference look more certain than seed noise alone
    assert comp.ci_high - comp.ci_low >= seed_only.ci_high - seed_only.ci_low
    assert comp.seed_p_value == pytest.approx(seed_only.p_value) and comp.p_value >= seed_only.p_value
    paired_width = comp.ci_high - comp.ci_low

    # another test set for the configuration (different split): independent, the variances add
    other = small_study(tmp_path, values, name="unpaired")
    for run in other.runs():
        fake_bootstrap(run.run_dir, values[run.config_id][run.seed],
                       "testset-a" if run.config_id == "baseline" else "testset-b")
    results = aggregate.collect(other)
    comp = results.config("exp_001").vs_baseline["mAP"]
    assert comp.paired is False
    assert comp.boot_std ** 2 == pytest.approx(results.config("exp_001").test_sampling.var
                                               + results.baseline.test_sampling.var)
    assert comp.ci_high - comp.ci_low > 1.2 * paired_width  # the shared test-set noise no longer cancels
    assert comp.p_value > seed_only.p_value
    aggregate.write_summaries(other, results)
    assert config_rows(other)["exp_001"]["mAP_diff_paired"] == "no"


def test_verdict_uses_holm_and_says_how_many_comparisons(tmp_path: Path) -> None:
    # each configuration alone: p = 0.021 (t = 3.67 on 4 df); Holm over 3 comparisons: 0.064
    values = {"baseline": [0.10, 0.20, 0.30], "exp_001": [0.40, 0.50, 0.60], "exp_002": [0.40, 0.50, 0.60],
              "exp_003": [0.40, 0.50, 0.60]}
    plan = small_study(tmp_path, values, name="holm")
    results = aggregate.collect(plan)
    assert results.holm_comparisons == 3
    c = results.config("exp_001")
    assert c.vs_baseline["mAP"].p_value == pytest.approx(0.02131, abs=1e-4)
    assert c.mAP_p_holm == pytest.approx(3 * 0.02131, abs=3e-4)
    text = write_report(plan, results).read_text()
    assert "yes: better than the baseline" not in text
    assert "no: within seed noise after Holm correction (uncorrected p < 0.05)" in text
    assert "p (Holm, 3 comparisons)" in text and "Holm over the 3 comparisons" in text
    row = config_rows(plan)["exp_001"]
    assert row["mAP_holm_comparisons"] == "3" and row["mAP_verdict"].startswith("no: within seed noise after Holm")
    assert float(row["mAP_p_holm"]) == pytest.approx(0.0639, abs=1e-3)


def test_constant_runs_cannot_be_tested(tmp_path: Path) -> None:
    comp = aggregate.welch([0.6, 0.6, 0.6], [0.5, 0.5, 0.5])
    assert comp.no_variance and math.isnan(comp.p_value) and not comp.distinguishable  # never "p = 0"
    assert aggregate.holm([math.nan, 0.01]) == pytest.approx([math.nan, 0.01], nan_ok=True)
    values = {"baseline": [0.5, 0.5, 0.5], "exp_001": [0.5, 0.5, 0.5], "exp_002": [0.6, 0.6, 0.6],
              "exp_003": [0.5004, 0.5004, 0.5004]}
    plan = small_study(tmp_path, values, name="const")
    for run in plan.runs():  # bootstraps without spread (every resample scores the same) change nothing
        value = values[run.config_id][run.seed]
        fake_bootstrap(run.run_dir, value, own=0.0, scale=0.0)
    results = aggregate.collect(plan)
    verdicts = {c.configuration.id: aggregate.mAP_verdict(c, results) for c in results.configs}
    assert verdicts == {"baseline": "(baseline)", "exp_001": "no variance: cannot test",
                        "exp_002": "no variance: differs by more than the resolution, untested",
                        "exp_003": "no variance: cannot test"}
    assert results.holm_comparisons == 0 and all(math.isnan(c.mAP_p_holm) for c in results.configs)
    text = write_report(plan, results).read_text()
    assert "no variance: cannot test" in text and "0.001 mAP (the resolution)" in text
    assert "yes:" not in text and "| 0.000 |" not in text  # no p = 0


def test_split_seeds_repeat_every_run_and_old_ids_stay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = {"name": "sp", "seeds": 2, "split_seeds": [0, 1],
           "phases": [{"name": "a", "axes": {"train.lr": [0.01, 0.02]}},
                      {"name": "b", "select": {"top_k": 1}, "axes": {"train.epochs": [3]}}]}
    spec = spec_from_dict(raw)
    study = tmp_path / "sp"
    plan = build_plan(spec, StudySettings(output=study))
    assert plan.split_seeds == [0, 1] and len(plan.runs()) == 4 * 4
    first = [r for r in plan.runs() if r.config_id == "baseline"]
    assert [r.key for r in first] == ["baseline/split0_seed0", "baseline/split0_seed1", "baseline/split1_seed0",
                                      "baseline/split1_seed1"]
    assert first[2].run_dir == study / "baseline" / "split1_seed0"
    tree = plan.run_config(first[2])
    assert (tree["name"], tree["seed"], tree["data"]["split"]["seed"]) == ("split1_seed0", 0, 1)
    # the selection waits for, and averages over, every (split seed, seed) run
    for run in plan.runs():
        if not run.pending:
            val = {"baseline": 0.3, "exp_001": 0.2, "exp_002": 0.5}[run.config_id] + 0.01 * (run.split_seed or 0)
            fake_finished(run.run_dir, val, val)
            fake_bootstrap(run.run_dir, val, f"split{run.split_seed}")
    plan = build_plan(spec, StudySettings(output=study), record_selection=True)
    assert plan.selections[2].selected == ["exp_002"] and plan.selections[2].ranking[0]["n"] == 4
    results = aggregate.collect(plan)
    assert results.config("exp_002").n == 4 and results.config("exp_002").test_sampling.hashes == {"split0", "split1"}
    assert results.config("exp_002").vs_baseline["mAP"].paired is True  # the same two test sets on both sides
    write_report(plan, results)
    run_rows = [r for r in csv.DictReader((study / "summary.csv").open()) if r["row"] == "run"]
    assert {(r["split_seed"], r["seed"]) for r in run_rows} == {("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")}
    record_study(plan)
    assert cli("plan", str(study), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["split_seed"] == 0 and rows[0]["run"] == "baseline/split0_seed0"

    # without split_seeds: seed<k> folders, the config's own split seed
    old = build_plan(spec_from_dict({**raw, "split_seeds": None}), StudySettings(output=tmp_path / "old"))
    assert old.split_seeds is None and [r.key for r in old.runs()[:2]] == ["baseline/seed0", "baseline/seed1"]
    assert old.runs()[0].run_dir == tmp_path / "old" / "baseline" / "seed0"
    assert old.run_config(old.runs()[0])["data"]["split"]["seed"] == 42 and old.runs()[0].split_seed is None
    with pytest.raises(ConfigError, match="sets data.split.seed, which split_seeds sets"):
        build_plan(spec_from_dict({**raw, "phases": [{"name": "a", "axes": {"data.split.seed": [1, 2]}}]}),
                   StudySettings(output=tmp_path / "bad"))


def test_quick_study_report_says_it_is_a_smoke_test(tmp_path: Path) -> None:
    spec = spec_from_dict({"name": "q", "seeds": 2, "phases": [{"name": "a", "axes": {"train.lr": [0.01]}}]})
    out = tmp_path / "q"
    plan = build_plan(spec, StudySettings(quick=True, output=out))
    record_study(plan)  # what `cadet study run --quick` records in the study directory
    for run in plan.runs():
        fake_finished(run.run_dir, 0.3 + 0.01 * run.seed, 0.3 + 0.01 * run.seed)
    # rebuilt without --quick (as a later `cadet study report` or a Python caller might): still a smoke test
    text = write_report(build_plan(spec, StudySettings(output=out))).read_text()
    header = text.splitlines()[0]
    assert "QUICK SMOKE TEST: tiny models on synthetic data; numbers are not results" in header
    assert "| test mAP (quick) | 95% CI (quick) |" in text and "## Accuracy vs cost (quick)" in text
    assert cli("report", str(out)) == 0
    assert "QUICK SMOKE TEST" in (out / "REPORT.md").read_text().splitlines()[0]
    normal = build_plan(spec, StudySettings(output=tmp_path / "n"))
    for run in normal.runs():
        fake_finished(run.run_dir, 0.3, 0.3 + 0.01 * run.seed)
    text = write_report(normal).read_text()
    assert "QUICK" not in text and "(quick)" not in text


def test_constant_seeds_with_test_sampling_keep_the_seed_degrees_of_freedom() -> None:
    """Three identical runs per side are not proof of zero seed noise: no normal approximation (p was 1e-23)."""
    from scipy import stats as st

    comp = aggregate.welch([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], 1e-4, paired=True)
    t = 0.1 / math.sqrt(1e-4)
    assert comp.p_value == pytest.approx(2 * st.t.sf(t, 2), rel=1e-6)
    assert comp.p_value > 1e-3
    combined = aggregate.describe_combined([0.5, 0.5, 0.5], 1e-4)
    assert combined.ci_high - combined.ci_low == pytest.approx(2 * st.t.ppf(0.975, 2) * 0.01, rel=1e-6)
