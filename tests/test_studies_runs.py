"""Studies that really train (tiny model, synthetic data, CPU): end to end with parallel runs and a failing
configuration, a stopped study that continues without redoing finished runs, and the submitit launcher
(local executor) with a preempted task that is requeued and resumes."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from crossattentiondet.cli import study_cmd
from crossattentiondet.config import load_config
from crossattentiondet.engine.trainer import train
from crossattentiondet.studies.launchers import RunJob, make_executor, submit_study
from crossattentiondet.studies.plan import StudySettings, build_plan
from crossattentiondet.studies.runner import run_study, write_run_config
from crossattentiondet.studies.spec import load_spec

# on top of --quick: one MiT block per stage and no timing (except where the report's cost plots are checked)
FAST = {"model.mit.depths": [1, 1, 1, 1], "eval.speed": False}


def write_spec(tmp_path: Path, *, seeds: int, extra_phase: dict[str, Any] | None = None,
               speed: bool = False) -> Path:
    spec = {
        "name": "tiny", "base": "preset:recipe_cssa", "seeds": seeds,
        "set": {"model.fusion.type": "cssa", **FAST, "eval.speed": speed},
        "baseline": {"model.fusion.stages": []},
        "id_format": "exp_{n:03d}_s{stages}", "id_fields": {"stages": "model.fusion.stages"},
        "phases": [{"name": "stages", "axes": {"model.fusion.stages": [[3], [4]]}}, *([extra_phase] if extra_phase else [])],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cadet")
    study_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", *argv])
    return int(args.func(args) or 0)


def attempts(run_dir: Path) -> list[str]:
    """The attempt headers the runner wrote into stdout.log (one per training process started)."""
    return [line for line in (run_dir / "stdout.log").read_text().splitlines() if line.startswith("=== attempt")]


def test_tiny_study_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 2 configurations + the matched baseline x 2 seeds, 1 epoch, two runs at a time
    spec = write_spec(tmp_path, seeds=2, speed=True)
    out = tmp_path / "study"
    assert cli("run", str(spec), "--quick", "--output", str(out), "--max-parallel", "2", "--no-report") == 0
    assert "6 finished" in capsys.readouterr().out
    assert cli("status", str(out), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(f"{r['id']}/seed{r['seed']}" for r in rows) == [
        f"{c}/seed{s}" for c in ("baseline", "exp_001_s3", "exp_002_s4") for s in (0, 1)]
    assert {r["status"] for r in rows} == {"finished"}
    # one synthetic data set for the whole study; every run trained with its own seed and stages
    assert len(list((out / "_synthetic").iterdir())) == 1 and not (out / "baseline" / "_synthetic").exists()
    final = json.loads((out / "exp_002_s4" / "seed1" / "final_results.json").read_text())
    assert final["config"]["seed"] == 1 and final["config"]["model"]["fusion"]["stages"] == [4]
    assert final["config"]["model"]["mit"]["embed_dims"] == [8, 16, 24, 32] and final["training"]["epochs"] == 1

    assert cli("report", str(out)) == 0
    for name in ("REPORT.md", "summary.csv", "summary_all_experiments.csv", "study.json", "plots/pareto.png",
                 "plots/phase1_stages_mAP.png", "plots/ap_by_size.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "summary.csv").open()))
    configs = {r["exp_id"]: r for r in rows if r["row"] == "config"}
    assert sum(1 for r in rows if r["row"] == "run") == 6 and set(configs) == {"baseline", "exp_001_s3", "exp_002_s4"}
    for key in ("mAP", "mAP_std", "mAP_ci95_low", "mAP_ci95_high", "params_M", "latency_ms"):
        assert configs["exp_001_s3"][key] != "", key
    assert configs["exp_001_s3"]["n"] == "2" and configs["exp_001_s3"]["mAP_distinguishable_from_noise"] in ("yes", "no")
    assert float(configs["exp_001_s3"]["params_M"]) != float(configs["baseline"]["params_M"])
    assert "(baseline)" in (out / "REPORT.md").read_text()
    # a --quick study says on its first line that it is a smoke test, not results
    assert "QUICK SMOKE TEST" in (out / "REPORT.md").read_text().splitlines()[0]
    run_rows = [r for r in rows if r["row"] == "run"]
    assert all(r["backbone"] and r["epochs"] == "1" and r["best_epoch"] == "1" for r in run_rows)  # original columns

    # nothing left to do: rerunning starts no training process
    before = {p: p.stat().st_mtime for p in out.glob("*/seed*/final_results.json")}
    assert cli("run", str(out), "--no-report") == 0
    assert {p: p.stat().st_mtime for p in out.glob("*/seed*/final_results.json")} == before
    assert "6 run(s) already finished" in capsys.readouterr().out


def test_stopped_study_continues_without_redoing_finished_runs(tmp_path: Path) -> None:
    # plus a configuration whose data is broken: its run fails, is recorded, and the study goes on
    broken = {"name": "broken", "points": [{"id": "broken_split", "set": {"data.split.train_file": "/nonexistent/x.txt"}}]}
    spec = load_spec(str(write_spec(tmp_path, seeds=1, extra_phase=broken)))
    settings = StudySettings(quick=True, output=tmp_path / "study",
                             overrides=["train.epochs=2", "train.max_iters_per_epoch=2", "eval.bootstrap=0"])
    first = run_study(spec, settings, max_runs=1, write_report=False, echo=lambda m: None)
    assert [o.status for o in first.outcomes] == ["finished"] and first.counts == {"finished": 1, "pending": 3}
    done = tmp_path / "study" / "baseline" / "seed0"
    mtime = (done / "final_results.json").stat().st_mtime

    # a run killed after its first epoch: last.pt, no final results (trained here as the subprocess would)
    plan = build_plan(spec, settings)
    partial = next(r for r in plan.runs() if r.config_id == "exp_001_s3")
    stopped = train(load_config(write_run_config(plan, partial)), stop_after_epoch=1, echo=lambda m: None)
    assert not stopped.finished and (partial.run_dir / "checkpoints" / "last.pt").is_file()
    assert partial.state().status == "partial"

    messages: list[str] = []
    second = run_study(spec, settings, echo=messages.append)
    assert sorted((o.key, o.status, o.resumed) for o in second.outcomes) == [
        ("broken_split/seed0", "failed", False), ("exp_001_s3/seed0", "finished", True),
        ("exp_002_s4/seed0", "finished", False)]
    assert second.counts == {"finished": 3, "failed": 1}
    assert (done / "final_results.json").stat().st_mtime == mtime and len(attempts(done)) == 1
    resumed = partial.run_dir
    assert attempts(resumed)[0].endswith("--resume")
    assert "resumed from" in (resumed / "training.log").read_text()
    assert [r["epoch"] for r in csv.DictReader((resumed / "metrics.csv").open())] == ["1", "2"]  # epoch 1 not redone

    failed = json.loads((tmp_path / "study" / "broken_split" / "seed0" / "failed.json").read_text())
    assert failed["error"] == "split file not found: /nonexistent/x.txt (data.split.train_file)"
    assert failed["returncode"] == 2 and failed["attempts"] == 1
    assert any("broken_split/seed0: FAILED: split file not found" in m for m in messages)
    report = (tmp_path / "study" / "REPORT.md").read_text()
    assert "## Failed runs" in report and "| broken_split/seed0 | split file not found" in report


def test_submitit_local_executor_runs_and_requeues_a_preempted_run(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    spec = load_spec(str(write_spec(tmp_path, seeds=1)))
    settings = StudySettings(quick=True, output=tmp_path / "study",
                             overrides=["train.epochs=3", "train.max_iters_per_epoch=2", "eval.bootstrap=0"])
    plan = build_plan(spec, settings, record_selection=True)
    runs = [r for r in plan.runs() if r.config_id in ("baseline", "exp_001_s3")]
    executor = make_executor(tmp_path / "submitit", "local", {"timeout_min": 10})
    jobs = submit_study(plan, executor, max_runs=2, echo=lambda m: None)
    assert len(jobs) == 2
    assert build_plan(spec, settings).runs()[2].state().status == "pending"
    target = runs[1].run_dir
    assert target is not None

    # preempt the second task once its run has a checkpoint, as SLURM does: the preemption signal to the task
    # process (the lock's holder); submitit calls RunJob.checkpoint and requeues the task
    deadline = time.time() + 240
    while not (target / "checkpoints" / "last.pt").is_file():
        assert time.time() < deadline, "the submitted run never wrote a checkpoint"
        assert jobs[1].state in ("RUNNING", "UNKNOWN"), (target / "stdout.log").read_text()
        time.sleep(0.05)
    os.kill(json.loads((target / ".lock").read_text())["pid"], signal.SIGUSR2)
    results = [job.result() for job in jobs]
    assert [r["status"] for r in results] == ["finished", "finished"]
    assert all((r.run_dir / "final_results.json").is_file() for r in runs)
    headers = attempts(target)
    assert len(headers) == 2 and headers[1].endswith("--resume")  # the requeued task resumed from last.pt
    assert [r["epoch"] for r in csv.DictReader((target / "metrics.csv").open())] == ["1", "2", "3"]
    assert not (target / "queued.json").exists() and not (target / ".lock").exists()
    assert build_plan(spec, settings).runs()[1].state().status == "finished"


def test_run_job_checkpoint_requeues_the_same_run(tmp_path: Path) -> None:
    helpers = pytest.importorskip("submitit.helpers")

    job = RunJob(tmp_path / "study" / "exp_001" / "seed0")
    (tmp_path / "study" / "exp_001" / "seed0").mkdir(parents=True)
    delayed = job.checkpoint()
    assert isinstance(delayed, helpers.DelayedSubmission) and isinstance(delayed.function, RunJob)
    assert delayed.function.run_dir == job.run_dir and delayed.args == ()
    assert json.loads((Path(job.run_dir) / "queued.json").read_text())["requeued"] is True

