"""Running a study: one run at a time in its own subprocess, idempotently, phase after phase.

- A run with final metrics is skipped; a run with ``last.pt`` resumes; a failed run is retried (its
  ``failed.json`` is removed once it succeeds); a run locked by a live process elsewhere is left alone.
- Each run trains in ``python -m crossattentiondet train --config <run>/study_config.yaml [--resume]``, so an
  out-of-memory crash or a non-finite loss ends that run only: it is recorded as failed with its last error
  line and the study goes on. A run whose data.root does not exist is recorded as failed without starting a
  process (the study stops before anything when no configuration's data.root exists).
- Study-level files (study.json, summaries, report) are regenerated from the per-run files and written
  atomically, so several study processes can work on one directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossattentiondet.config import ConfigError
from crossattentiondet.io import atomic_write_json, atomic_write_text, ensure_writable_dir, read_json
from crossattentiondet.studies.plan import (
    IDENTITY_KEYS,
    PlannedRun,
    StudyPlan,
    StudySettings,
    build_plan,
    selection_path,
)
from crossattentiondet.studies.spec import StudySpec, spec_from_dict, spec_to_dict
from crossattentiondet.studies.state import (
    FAILED,
    FINAL_RESULTS,
    HEARTBEAT_S,
    INHERITED_TOKEN_ENV,
    LAST_CHECKPOINT,
    QUEUED,
    STDOUT_LOG,
    STUDY_CONFIG,
    RunLock,
)

STUDY_RECORD = "study.json"
STUDY_LOG = "study.log"
# config keys that may differ between the run on disk and the plan (paths, devices, loaders, logging)
COMPARE_IGNORED = (*IDENTITY_KEYS, "train.device", "data.loader.", "train.log_every", "train.print_every",
                   "output.tensorboard", "output.mlflow.")
# a training process ended by these signals was interrupted (Ctrl-C, cluster preemption), not broken
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
INTERRUPT_CODES = {-int(s) for s in INTERRUPT_SIGNALS} | {128 + int(s) for s in INTERRUPT_SIGNALS}


@dataclass
class RunOutcome:
    """What happened to one run in this invocation."""

    key: str
    status: str  # finished | failed | interrupted | held (locked elsewhere) | skipped (already finished)
    seconds: float = 0.0
    error: str = ""
    resumed: bool = False


@dataclass
class StudyRunSummary:
    """The result of :func:`run_study`."""

    study_dir: Path
    outcomes: list[RunOutcome] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # status -> runs, after this invocation

    def of(self, status: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == status]


# ------------------------------------------------------------------------------------------- one run
def train_command(run_dir: Path) -> list[str]:
    """The command that trains (or resumes) the run in ``run_dir``."""
    command = [sys.executable, "-m", "crossattentiondet", "train", "--config", str(Path(run_dir) / STUDY_CONFIG)]
    if (Path(run_dir) / LAST_CHECKPOINT).is_file():
        command.append("--resume")
    return command


def last_error_line(log_path: Path, limit: int = 400) -> str:
    """The most telling line of a failed run's output: the CLI's ``error:`` line, else the exception line."""
    try:
        lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    attempt = max((i for i, line in enumerate(lines) if line.startswith("=== attempt")), default=-1)
    lines = [line for line in lines[attempt + 1:] if line]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()[:limit]
    for line in reversed(lines):
        if "Error" in line.split(":", 1)[0] or "Exception" in line.split(":", 1)[0]:
            return line[:limit]
    return lines[-1][:limit] if lines else ""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of host memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"


def execute_run(run_dir: Path, *, env: dict[str, str] | None = None, owner: str | None = None,
                on_process: Callable[[subprocess.Popen[bytes] | None], None] | None = None) -> RunOutcome:
    """Train the run in ``run_dir`` (its ``study_config.yaml`` must exist) in a subprocess, under its lock.

    Returns at once with status ``held`` if another live process holds the run, ``skipped`` if it has
    finished. ``on_process`` is told the subprocess (and None when it ends), e.g. to stop it on preemption.
    """
    run_dir = Path(run_dir)
    key = f"{run_dir.parent.name}/{run_dir.name}"
    lock = RunLock(run_dir, owner)
    if not lock.acquire():
        holder = lock.holder.describe() if lock.holder else "another process"
        return RunOutcome(key, "held", error=f"locked by {holder}")
    start = time.perf_counter()
    try:
        if (run_dir / FINAL_RESULTS).is_file():  # finished by someone else since the plan was read
            return RunOutcome(key, "skipped")
        (run_dir / QUEUED).unlink(missing_ok=True)
        command = train_command(run_dir)
        resumed = "--resume" in command
        log_path = run_dir / STDOUT_LOG
        with log_path.open("a", encoding="utf-8") as log:
            log.write(f"=== attempt {time.strftime('%Y-%m-%d %H:%M:%S')}{' (resume)' if resumed else ''}: "
                      f"{' '.join(command)}\n")
            log.flush()
            # the trainer takes the run's lock too: given this lock's token it joins it instead of refusing it
            child_env = {**(os.environ if env is None else env), INHERITED_TOKEN_ENV: lock.info.token}
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        lock.set_child(process.pid)
        if on_process is not None:
            on_process(process)
        try:
            while True:
                try:
                    code = process.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    lock.heartbeat()
        finally:
            if process.poll() is None:  # this process is being interrupted: do not leave the run training
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
            if on_process is not None:
                on_process(None)
        seconds = time.perf_counter() - start
        if code == 0 and (run_dir / FINAL_RESULTS).is_file():
            (run_dir / FAILED).unlink(missing_ok=True)
            return RunOutcome(key, "finished", seconds, resumed=resumed)
        if code in INTERRUPT_CODES:
            return RunOutcome(key, "interrupted", seconds, error=_describe_exit(code), resumed=resumed)
        error = last_error_line(log_path) or "no output"
        if code == 0:
            error = f"the trainer exited without final results ({error})"
        previous = read_json(run_dir / FAILED) if (run_dir / FAILED).is_file() else {}
        atomic_write_json(run_dir / FAILED, {
            "error": error, "exit": _describe_exit(code), "returncode": code, "log": str(log_path),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "attempts": int(previous.get("attempts", 0)) + 1,
            "resumed": resumed})
        return RunOutcome(key, "failed", seconds, error=error, resumed=resumed)
    finally:
        lock.release()


# ----------------------------------------------------------------------------------------- the study
def write_run_config(plan: StudyPlan, run: PlannedRun) -> Path:
    """Write ``study_config.yaml`` of ``run`` (atomically) and return its path.

    With ``output.mlflow.enabled`` the run is tracked in the study's MLflow store (:func:`study_tracking`).
    """
    assert run.run_dir is not None
    path = run.run_dir / STUDY_CONFIG
    tree = plan.run_config(run)
    mlflow = tree["output"]["mlflow"]
    if mlflow["enabled"]:
        tracking = study_tracking(plan, run, mlflow.get("tracking_uri"))
        mlflow.update({**tracking, "tags": {**(mlflow.get("tags") or {}), **tracking["tags"]}})
    atomic_write_text(path, yaml.safe_dump(tree, sort_keys=False))
    return path


def study_experiment(plan: StudyPlan) -> str:
    """The MLflow experiment of a study: its name (``<name>-quick`` for --quick, so smoke tests never mix
    with results in a shared tracking server)."""
    return plan.spec.name + ("-quick" if plan.settings.quick else "")


def study_tracking_uri(plan: StudyPlan) -> str:
    """The study's own MLflow store: ``sqlite:///<study>/mlflow.db`` (artefacts in ``<study>/mlruns``)."""
    from crossattentiondet.engine.runlog import default_tracking_uri

    return default_tracking_uri(plan.study_dir)


def study_tracking(plan: StudyPlan, run: PlannedRun, tracking_uri: str | None = None) -> dict[str, Any]:
    """``output.mlflow`` of a study run: one store per study (a tracking server given in the config is
    kept), the study as the experiment, tags study / configuration / phase / seed (/ split_seed), and a run
    name that says which configuration and seed it is (the run's key, e.g. ``exp_001_s3/seed1``)."""
    from crossattentiondet.engine.runlog import RUN_NAME_TAG

    tags: dict[str, Any] = {"study": study_experiment(plan), "configuration": run.config_id,
                            "phase": run.configuration.phase_name, "seed": str(run.seed)}
    if run.split_seed is not None:
        tags["split_seed"] = str(run.split_seed)
    tags[RUN_NAME_TAG] = run.key
    return {"tracking_uri": tracking_uri or study_tracking_uri(plan), "experiment": study_experiment(plan),
            "tags": tags}


def prepare_study_tracking(plan: StudyPlan) -> None:
    """Create the study's MLflow store and experiment once, before runs start in parallel (concurrent first
    connections would race to create the SQLite schema). A no-op unless a configuration enables MLflow."""
    enabled = [c.config.output.mlflow for c in plan.configurations if c.config is not None
               and c.config.output.mlflow.enabled]
    if not enabled:
        return
    from crossattentiondet.engine.runlog import open_mlflow_experiment

    for uri in sorted({m.tracking_uri or study_tracking_uri(plan) for m in enabled}):
        open_mlflow_experiment(uri, study_experiment(plan))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def check_plan_matches_disk(plan: StudyPlan) -> None:
    """Refuse to mix results: every run directory on disk must hold the configuration the plan gives it.

    A spec whose points were reordered, or other overrides, would otherwise silently attach old results to
    new configurations."""
    for run in plan.runs():
        if run.run_dir is None or not (run.run_dir / STUDY_CONFIG).is_file():
            continue
        try:
            on_disk = _flatten(yaml.safe_load((run.run_dir / STUDY_CONFIG).read_text(encoding="utf-8")) or {})
        except (OSError, yaml.YAMLError):
            continue  # unreadable: it will be rewritten before the run trains again
        planned = _flatten(plan.run_config(run))
        for key in sorted(set(on_disk) | set(planned)):
            if key.startswith(COMPARE_IGNORED):
                continue
            if on_disk.get(key) != planned.get(key):
                raise ConfigError(f"{run.run_dir} was trained with {key}={on_disk.get(key)!r}, the plan now says "
                                  f"{planned.get(key)!r} (spec, seeds or overrides changed?); use the original "
                                  "settings or another --output")


def record_study(plan: StudyPlan) -> None:
    """Write ``study.json`` (spec and settings), so ``cadet study status DIR`` can rebuild the plan."""
    path = plan.study_dir / STUDY_RECORD
    created = time.strftime("%Y-%m-%d %H:%M:%S")
    if path.is_file():
        created = read_json(path).get("created", created)
    settings = plan.settings.to_dict()
    settings["seeds"] = plan.seeds
    source_dir = str(plan.spec.source_dir.resolve()) if plan.spec.source_dir else None
    atomic_write_json(path, {"spec": spec_to_dict(plan.spec), "spec_dir": source_dir, "settings": settings,
                             "created": created, "updated": time.strftime("%Y-%m-%d %H:%M:%S")})


def load_recorded_study(study_dir: Path) -> tuple[StudySpec, StudySettings]:
    """The spec and settings a study directory was run with (from its study.json)."""
    path = Path(study_dir) / STUDY_RECORD
    if not path.is_file():
        raise ConfigError(f"{study_dir} is not a study directory (no {STUDY_RECORD})")
    data = read_json(path)
    spec_dir = data.get("spec_dir")
    spec = spec_from_dict(data["spec"], str(path), Path(spec_dir) if spec_dir else None)
    s = data.get("settings", {})
    settings = StudySettings(seeds=s.get("seeds"), overrides=list(s.get("overrides", [])), quick=bool(s.get("quick")),
                             base=s.get("base"), output=Path(study_dir),
                             select_with_missing=bool(s.get("select_with_missing")))
    return spec, settings


def append_study_log(study_dir: Path, line: str) -> None:
    """One line in study.log (O_APPEND: lines of concurrent study processes do not interleave)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with (study_dir / STUDY_LOG).open("a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def runnable(run: PlannedRun, retry_failed: bool = True, include_queued: bool = True) -> bool:
    """Whether ``run`` should be started now: not pending selection, not finished, not running elsewhere."""
    if run.pending:
        return False
    status = run.state().status
    return status in ("pending", "partial") or (status == "failed" and retry_failed) or \
        (status == "queued" and include_queued)


def execution_order(plan: StudyPlan, runs: list[PlannedRun]) -> list[PlannedRun]:
    """Seed-major within each step (baseline and fixed phases first), so a complete first picture of every
    configuration exists before further seeds are trained."""
    position = {c.id: i for i, c in enumerate(plan.configurations)}
    seed_index = {s: i for i, s in enumerate(plan.seeds)}
    selected = {i for i, p in enumerate(plan.spec.phases, start=1) if p.select is not None}

    def key(run: PlannedRun) -> tuple[int, int, int]:
        phase = run.configuration.phase
        return (phase if phase in selected else 0, seed_index[run.seed], position[run.config_id])

    return sorted(runs, key=key)


def _missing_root(config: Any) -> str | None:
    root = config.data.root if config is not None else None
    if root is not None and not Path(root).expanduser().exists():
        return str(root)
    return None


def missing_data_root(run: PlannedRun) -> str | None:
    """The configured ``data.root`` of ``run`` when that path does not exist (None: it exists or is unset)."""
    return _missing_root(run.configuration.config)


def check_data_roots(plan: StudyPlan) -> None:
    """Fail before any run starts when NO configuration's data.root exists (a shared setting is wrong: every
    run would fail). When only some are missing, those runs are recorded as failed and the others run
    (:func:`record_unstartable`)."""
    configurations = [c for c in plan.configurations if c.config is not None]
    missing = [(c.id, root) for c in configurations if (root := _missing_root(c.config)) is not None]
    if configurations and len(missing) == len(configurations):
        config_id, root = missing[0]
        every = " (no configuration's data.root exists)" if len(missing) > 1 else ""
        raise ConfigError(f"study '{plan.spec.name}', configuration '{config_id}': data.root not found: {root}{every}")


def record_unstartable(run_dir: Path, key: str, error: str) -> RunOutcome:
    """Record a run that cannot start (its data.root does not exist) as failed, without a training process:
    ``failed.json`` and an attempt in ``stdout.log``, as a run whose trainer failed at once would leave."""
    lock = RunLock(run_dir)
    if not lock.acquire():
        holder = lock.holder.describe() if lock.holder else "another process"
        return RunOutcome(key, "held", error=f"locked by {holder}")
    try:
        if (run_dir / FINAL_RESULTS).is_file():
            return RunOutcome(key, "skipped")
        (run_dir / QUEUED).unlink(missing_ok=True)
        log_path = run_dir / STDOUT_LOG
        with log_path.open("a", encoding="utf-8") as log:
            log.write(f"=== attempt {time.strftime('%Y-%m-%d %H:%M:%S')}: not started\nerror: {error}\n")
        previous = read_json(run_dir / FAILED) if (run_dir / FAILED).is_file() else {}
        atomic_write_json(run_dir / FAILED, {
            "error": error, "exit": "not started", "returncode": None, "log": str(log_path),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "attempts": int(previous.get("attempts", 0)) + 1,
            "resumed": False})
        return RunOutcome(key, "failed", error=error)
    finally:
        lock.release()


def run_study(spec: StudySpec, settings: StudySettings | None = None, *, max_parallel: int = 1,
              max_runs: int | None = None, retry_failed: bool = True, write_report: bool = True,
              echo: Callable[[str], None] = print) -> StudyRunSummary:
    """Run every unfinished run of the study locally, phase after phase, and regenerate the summaries.

    ``max_parallel`` runs at once (one per GPU, or CPU threads split between them); ``max_runs`` stops
    after starting that many runs (a time-boxed session; rerun to continue). A phase that selects from an
    earlier one runs in the same invocation once the earlier phase has finished.
    """
    from crossattentiondet.studies.launchers import run_local

    settings = settings or StudySettings()
    if max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1, got {max_parallel}")
    if max_runs is not None and max_runs < 1:
        raise ConfigError(f"--max-runs must be >= 1, got {max_runs}")
    plan = build_plan(spec, settings, record_selection=True)
    check_data_roots(plan)
    check_plan_matches_disk(plan)
    ensure_writable_dir(plan.study_dir, "study directory")
    record_study(plan)
    prepare_study_tracking(plan)
    summary = StudyRunSummary(plan.study_dir)
    attempted: set[str] = set()
    announced = set(plan.selections)
    skipped = sum(1 for r in plan.runs() if not r.pending and r.state().status == "finished")
    if skipped:
        echo(f"study {spec.name}: {skipped} run(s) already finished, not run again")
    while True:
        todo = [r for r in execution_order(plan, plan.runs())
                if r.key not in attempted and runnable(r, retry_failed)]
        if max_runs is not None:
            todo = todo[: max(0, max_runs - sum(1 for o in summary.outcomes if o.status != "held"))]
        if not todo:
            break
        for run in todo:
            write_run_config(plan, run)
        outcomes = run_local(plan, todo, max_parallel=max_parallel, echo=echo)
        summary.outcomes.extend(outcomes)
        attempted.update(r.key for r in todo)
        plan = build_plan(spec, settings, record_selection=True)  # may select and open the next phase
        for index, selection in plan.selections.items():
            if index not in announced:
                announced.add(index)
                echo(f"phase {index} ({plan.spec.phases[index - 1].name}) builds on {', '.join(selection.selected)} "
                     f"(best validation {selection.metric}, mean over seeds; {selection_path(plan.study_dir, index).name})")
    summary.waiting = dict(plan.waiting)
    for index, why in plan.waiting.items():
        echo(f"phase {index} ({plan.spec.phases[index - 1].name}) is pending: {why}")
    from crossattentiondet.studies.aggregate import write_summaries

    write_summaries(plan)
    if write_report:
        from crossattentiondet.studies.report import write_report as make_report

        make_report(plan)
    summary.counts = status_counts(plan)
    return summary


def status_counts(plan: StudyPlan) -> dict[str, int]:
    """Runs per status (pending-selection runs count as pending)."""
    counts: dict[str, int] = {}
    for run in plan.runs():
        status = "pending" if run.pending else run.state().status
        counts[status] = counts.get(status, 0) + 1
    return counts
