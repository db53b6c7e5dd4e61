"""A study configuration whose data.root does not exist fails alone: it is recorded as failed (failed.json,
status, report) without a training process, and the other runs go on, with or without retrying failed runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from crossattentiondet.cli import main
from crossattentiondet.config import ConfigError
from crossattentiondet.studies import launchers
from crossattentiondet.studies.launchers import submit_study
from crossattentiondet.studies.plan import StudySettings, build_plan
from crossattentiondet.studies.runner import RunOutcome, run_study
from crossattentiondet.studies.spec import spec_from_dict
from tests.conftest import DataTrees
from tests.test_train import TINY, frames


def spec_with_broken_point(missing: Path, good_root: Path | None = None, **extra: Any) -> dict[str, Any]:
    """Two points and no baseline: ``good`` (the shared data.root) and ``broken`` (a data.root that is not there)."""
    base = {key: yaml.safe_load(value) for key, value in (t.split("=", 1) for t in TINY)}
    shared = {**base, "train.epochs": 1, **({"data.root": str(good_root)} if good_root else {})}
    return {"name": "faults", "seeds": 1, "baseline": None, "set": shared, **extra,
            "phases": [{"name": "data", "points": [{"id": "good", "set": {}},
                                                   {"id": "broken", "set": {"data.root": str(missing)}}]}]}


def test_missing_data_root_fails_one_run_without_training_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_local records the broken run itself; execute_run (the training process) only sees the good one."""
    missing = tmp_path / "no_such_data"
    spec = spec_from_dict(spec_with_broken_point(missing))
    settings = StudySettings(output=tmp_path / "study")
    trained: list[str] = []

    def fake_execute(run_dir: Path, **kwargs: Any) -> RunOutcome:
        trained.append(f"{run_dir.parent.name}/{run_dir.name}")
        return RunOutcome(trained[-1], "interrupted", error="fake")

    monkeypatch.setattr(launchers, "execute_run", fake_execute)
    messages: list[str] = []
    summary = run_study(spec, settings, write_report=False, echo=messages.append)
    assert trained == ["good/seed0"]
    assert sorted((o.key, o.status) for o in summary.outcomes) == [("broken/seed0", "failed"), ("good/seed0", "interrupted")]
    failed = json.loads((tmp_path / "study" / "broken" / "seed0" / "failed.json").read_text())
    assert failed["error"] == f"data.root not found: {missing}" and failed["attempts"] == 1
    assert failed["exit"] == "not started"
    assert any(m.startswith(f"broken/seed0: FAILED: data.root not found: {missing}") for m in messages)
    assert "error: data.root not found" in (tmp_path / "study" / "broken" / "seed0" / "stdout.log").read_text()
    assert (tmp_path / "study" / "broken" / "seed0" / "study_config.yaml").is_file()

    # retried (default): recorded again, still without a training process; not retried: left failed
    trained.clear()
    again = run_study(spec, settings, write_report=False, echo=lambda m: None)
    assert ("broken/seed0", "failed") in [(o.key, o.status) for o in again.outcomes] and trained == ["good/seed0"]
    assert json.loads((tmp_path / "study" / "broken" / "seed0" / "failed.json").read_text())["attempts"] == 2
    trained.clear()
    kept = run_study(spec, settings, retry_failed=False, write_report=False, echo=lambda m: None)
    assert [o.key for o in kept.outcomes] == ["good/seed0"] and kept.counts["failed"] == 1


def test_every_configuration_without_data_still_stops_the_study(tmp_path: Path) -> None:
    spec = spec_from_dict(spec_with_broken_point(tmp_path / "a", good_root=tmp_path / "b"))
    with pytest.raises(ConfigError, match="configuration 'good': data.root not found: .*no configuration's data.root"):
        run_study(spec, StudySettings(output=tmp_path / "study"), write_report=False, echo=lambda m: None)
    assert not (tmp_path / "study").exists()


def test_submit_records_the_broken_run_and_submits_the_others(tmp_path: Path) -> None:
    spec = spec_from_dict(spec_with_broken_point(tmp_path / "missing"))
    plan = build_plan(spec, StudySettings(output=tmp_path / "study"))

    class Job:
        def __init__(self, n: int) -> None:
            self.job_id = f"7_{n}"

    class Executor:
        submitted: list[str] = []

        def batch(self) -> Any:
            import contextlib

            return contextlib.nullcontext()

        def submit(self, job: Any) -> Job:
            self.submitted.append(job.run_dir)
            return Job(len(self.submitted))

    executor = Executor()
    messages: list[str] = []
    jobs = submit_study(plan, executor, echo=messages.append)
    assert len(jobs) == 1 and executor.submitted == [str(tmp_path / "study" / "good" / "seed0")]
    assert (tmp_path / "study" / "broken" / "seed0" / "failed.json").is_file()
    assert not (tmp_path / "study" / "broken" / "seed0" / "queued.json").exists()
    assert any("broken/seed0: FAILED: data.root not found" in m for m in messages)


@pytest.mark.slow
def test_tiny_study_with_a_missing_data_root_finishes_the_other_runs(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # really trains the good run (one tiny epoch in a subprocess); the broken one never starts a process
    root = DataTrees(tmp_path).npy("data", frames=frames(10), size=(64, 64), classes=["person", "car"])
    missing = tmp_path / "moved_away"
    spec_path = tmp_path / "faults.yaml"
    spec_path.write_text(yaml.safe_dump(spec_with_broken_point(missing, good_root=root)))
    out = tmp_path / "study"
    assert main(["study", "run", str(spec_path), "--output", str(out)]) == 1  # 1: some run failed, not an error
    printed = capsys.readouterr()
    assert "1 failed, 1 finished" in printed.out and "Traceback" not in printed.err
    assert (out / "good" / "seed0" / "final_results.json").is_file()
    report = (out / "REPORT.md").read_text()
    assert "## Failed runs" in report and f"| broken/seed0 | data.root not found: {missing}" in report

    # again without retrying failed runs: nothing trains, the failure is reported, not raised
    assert main(["study", "run", str(out), "--no-retry-failed", "--no-report"]) == 1
    assert "1 failed, 1 finished" in capsys.readouterr().out
    assert json.loads((out / "broken" / "seed0" / "failed.json").read_text())["attempts"] == 1
    assert main(["study", "status", str(out), "--json"]) == 0
    rows = {r["run"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["broken/seed0"]["status"] == "failed"
    assert rows["broken/seed0"]["error"] == f"data.root not found: {missing}"
    assert rows["good/seed0"]["status"] == "finished"
