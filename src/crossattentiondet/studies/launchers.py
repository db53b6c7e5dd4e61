"""Where study runs execute: local worker slots, or a SLURM job array through submitit.

Local: ``max_parallel`` slots, each running one run subprocess at a time. With GPUs every slot gets its own
``CUDA_VISIBLE_DEVICES``; the CPU threads are split between the slots (``OMP_NUM_THREADS``). A plain pool,
no scheduler.

SLURM (optional extra ``crossattentiondet[slurm]``): every runnable run becomes one task of a job array. A
task trains its run exactly as the local runner does; when the cluster preempts it or its time runs out,
submitit calls :meth:`RunJob.checkpoint`, which stops the training process (its ``last.pt`` is the last
finished epoch) and requeues the same task, which then resumes. ``cadet study run --launcher slurm``
submits what is runnable and exits; a phase that selects from an earlier one is submitted by running the
same command again once the earlier phase has finished.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from crossattentiondet.config import ConfigError
from crossattentiondet.io import atomic_write_json
from crossattentiondet.studies.plan import PlannedRun, StudyPlan
from crossattentiondet.studies.runner import (
    RunOutcome,
    append_study_log,
    execute_run,
    execution_order,
    missing_data_root,
    prepare_study_tracking,
    record_unstartable,
    runnable,
    write_run_config,
)
from crossattentiondet.studies.state import QUEUED


# ------------------------------------------------------------------------------------------------ local
def visible_gpus() -> list[str]:
    """GPU ids the runs may use: CUDA_VISIBLE_DEVICES if set, else every device torch sees."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is not None:
        return [g.strip() for g in text.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def slot_environment(slot: int, slots: int, gpus: list[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of worker ``slot`` of ``slots``: its own GPU (round robin) and its share of CPU threads.

    An OMP_NUM_THREADS already set by the user is an upper bound (a shared machine)."""
    env = dict(os.environ if base is None else base)
    if slots <= 1:
        return env
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cpus // slots)
    user = env.get("OMP_NUM_THREADS", "")
    if user.isdigit() and int(user) > 0:
        threads = min(threads, int(user))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_local(plan: StudyPlan, runs: list[PlannedRun], *, max_parallel: int = 1,
              echo: Callable[[str], None] = print) -> list[RunOutcome]:
    """Train ``runs`` (their study_config.yaml written) on ``max_parallel`` local slots; returns outcomes.

    Ctrl-C stops the training processes (they keep their last finished epoch) and re-raises.
    ``max_parallel`` >= 1 (checked by :func:`~crossattentiondet.studies.runner.run_study`)."""
    gpus = visible_gpus() if max_parallel > 1 else []
    if gpus and max_parallel > len(gpus):
        echo(f"note: {max_parallel} parallel runs on {len(gpus)} GPU(s): runs share GPUs")
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(max_parallel):
        slots.put(slot)
    live: dict[int, subprocess.Popen[bytes]] = {}
    guard = threading.Lock()  # protects `live`
    guard_print = threading.Lock()  # keeps lines of parallel slots whole
    total = len(runs)
    counter = iter(range(1, total + 1))

    def locked_echo(line: str) -> None:
        with guard_print:
            echo(line)

    def one(run: PlannedRun) -> RunOutcome:
        assert run.run_dir is not None
        failed = _fail_without_data(plan, run, locked_echo)  # at once, no training process; the others go on
        if failed is not None:
            return failed
        slot = slots.get()
        try:
            env = slot_environment(slot, max_parallel, gpus)
            where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else ""

            def track(process: subprocess.Popen[bytes] | None) -> None:
                with guard:
                    if process is None:
                        live.pop(slot, None)
                    else:
                        live[slot] = process
                        resuming = " (resuming)" if "--resume" in list(process.args) else ""  # type: ignore[arg-type]
                        with guard_print:
                            echo(f"[{next(counter)}/{total}] {run.key}: started{where}{resuming}")

            outcome = execute_run(run.run_dir, env=env, on_process=track)
        finally:
            slots.put(slot)
        with guard_print:
            echo(_describe(run, outcome))
        append_study_log(plan.study_dir, _describe(run, outcome))
        return outcome

    outcomes: list[RunOutcome] = []
    pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="study-slot")
    try:
        futures = [pool.submit(one, run) for run in runs]
        for future in as_completed(futures):
            outcomes.append(future.result())
    except KeyboardInterrupt:
        with guard:
            for process in live.values():
                with contextlib.suppress(OSError):
                    process.send_signal(signal.SIGTERM)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return outcomes


def _describe(run: PlannedRun, outcome: RunOutcome) -> str:
    if outcome.status == "finished":
        from crossattentiondet.io import read_json

        assert run.run_dir is not None
        final = read_json(run.run_dir / "final_results.json")
        metric = str(final.get("primary_metric") or "mAP")  # older (detection) runs name none
        val = (final.get("validation") or {}).get(metric)
        test = (final.get("results") or {}).get(metric)
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        return f"{run.key}: finished in {outcome.seconds:.0f} s (val {metric} {fmt(val)}, test {metric} {fmt(test)})"
    if outcome.status == "failed":
        return f"{run.key}: FAILED: {outcome.error} (see {run.run_dir}/stdout.log)"
    if outcome.status == "held":
        return f"{run.key}: skipped, {outcome.error}"
    if outcome.status == "interrupted":
        return f"{run.key}: interrupted ({outcome.error}); rerun to resume"
    return f"{run.key}: {outcome.status}"


# ------------------------------------------------------------------------------------------------ SLURM
def _job_owner() -> str | None:
    """A token naming the cluster task running this process (stable across its requeues)."""
    try:
        import submitit

        env = submitit.JobEnvironment()
        return f"submitit:{env.job_id}"
    except (ImportError, RuntimeError):
        return None


class RunJob:
    """A picklable submitit task that trains one study run, and resumes it when requeued."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(run_dir)
        self._process: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}  # a live process handle is not part of the job

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir = state["run_dir"]
        self._process = None

    def _track(self, process: subprocess.Popen[bytes] | None) -> None:
        self._process = process

    def __call__(self) -> dict[str, Any]:
        """Train the run; returns its outcome (a failed run is recorded in its directory, not raised)."""
        env = dict(os.environ)
        cpus = env.get("SLURM_CPUS_PER_TASK", "")
        if cpus.isdigit() and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = cpus
        outcome = execute_run(Path(self.run_dir), env=env, owner=_job_owner(), on_process=self._track)
        append_study_log(Path(self.run_dir).parent.parent, f"{outcome.key}: {outcome.status} (cluster task)"
                         + (f": {outcome.error}" if outcome.error else ""))
        return {"run": outcome.key, "status": outcome.status, "error": outcome.error, "seconds": outcome.seconds}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption or timeout: stop training (last.pt holds the last finished
        epoch), mark the run queued again, and requeue this task, which resumes from last.pt."""
        from submitit.helpers import DelayedSubmission

        self.stop_training()
        with contextlib.suppress(OSError):
            atomic_write_json(Path(self.run_dir) / QUEUED, {"launcher": "submitit", "requeued": True,
                                                           "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        return DelayedSubmission(RunJob(self.run_dir))

    def stop_training(self, timeout_s: float = 60.0) -> None:
        """Terminate the training subprocess and reap it (safe inside a signal handler)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(OSError):
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # os.waitpid, not Popen.wait: the interrupted main thread may hold Popen's internal lock
            try:
                pid, _ = os.waitpid(process.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            time.sleep(0.1)
        with contextlib.suppress(OSError):
            process.kill()


DEFAULT_SLURM_PARAMETERS: dict[str, Any] = {"timeout_min": 24 * 60, "nodes": 1, "tasks_per_node": 1,
                                            "gpus_per_node": 1, "cpus_per_task": 8, "slurm_signal_delay_s": 120}


def make_executor(folder: Path, cluster: str = "slurm", parameters: dict[str, Any] | None = None) -> Any:
    """A submitit executor writing its files under ``folder``; ``cluster="local"`` runs jobs on this machine."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install 'crossattentiondet[slurm]'") from None
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"cannot submit to {cluster}: {str(err).splitlines()[0]}") from None
    params = dict(DEFAULT_SLURM_PARAMETERS) if cluster == "slurm" else {"timeout_min": 60}
    params.update(parameters or {})
    try:
        executor.update_parameters(**params)
    except (AssertionError, NameError, TypeError, ValueError) as err:
        raise ConfigError(f"submitit parameters: {str(err).splitlines()[0]}") from None
    return executor


def parse_parameters(texts: list[str]) -> dict[str, Any]:
    """``["slurm_partition=gpu", "timeout_min=240"]`` -> {"slurm_partition": "gpu", "timeout_min": 240}."""
    import yaml

    out: dict[str, Any] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm-param {text!r} must look like key=value (e.g. slurm_partition=gpu)")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _fail_without_data(plan: StudyPlan, run: PlannedRun, echo: Callable[[str], None]) -> RunOutcome | None:
    """Record ``run`` as failed when its data.root does not exist (None: it exists, the run can start)."""
    root = missing_data_root(run)
    if root is None:
        return None
    assert run.run_dir is not None
    outcome = record_unstartable(run.run_dir, run.key, f"data.root not found: {root}")
    line = _describe(run, outcome)
    echo(line)
    append_study_log(plan.study_dir, line)
    return outcome


def submit_study(plan: StudyPlan, executor: Any, *, retry_failed: bool = True, resubmit: bool = False,
                 max_runs: int | None = None, echo: Callable[[str], None] = print) -> list[Any]:
    """Submit every runnable run of ``plan`` as one job array; returns the submitit jobs.

    Runs already queued by an earlier submission are left alone unless ``resubmit`` (e.g. after cancelling
    the jobs). Pending phases are not submitted: submit again once their source phase has finished."""
    todo = [r for r in execution_order(plan, plan.runs()) if runnable(r, retry_failed, include_queued=resubmit)]
    if max_runs is not None:
        todo = todo[:max_runs]
    for run in [r for r in todo if missing_data_root(r) is not None]:  # recorded as failed, not submitted
        write_run_config(plan, run)
        _fail_without_data(plan, run, echo)
        todo.remove(run)
    if not todo:
        return []
    prepare_study_tracking(plan)  # here, not in the array's tasks, which would race to create the store
    for run in todo:
        assert run.run_dir is not None
        write_run_config(plan, run)
        atomic_write_json(run.run_dir / QUEUED, {"launcher": "submitit", "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    with executor.batch():
        jobs = [executor.submit(RunJob(run.run_dir)) for run in todo if run.run_dir is not None]
    for run, job in zip(todo, jobs):
        append_study_log(plan.study_dir, f"{run.key}: submitted as job {job.job_id}")
    echo(f"submitted {len(jobs)} run(s) as job array {jobs[0].job_id.split('_')[0]}" if jobs else "nothing submitted")
    return jobs
