"""``cadet study list|plan|run|status|report``: ablation studies (grids, phases, seeds) run, resumed and reported."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any

from crossattentiondet.cli.common import print_json
from crossattentiondet.config import ConfigError

QUICK_NOTE = " (QUICK SMOKE TEST: tiny models on synthetic data; numbers are not results)"
SPEC_HELP = ("a built-in study (cssa, gaff, backbones, modalities, fusion), a study YAML file, or a study "
             "directory (its recorded spec and settings)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="ablation studies: plan, run (resumable, parallel, SLURM), status, report",
        description="Ablation studies as first-class objects: a base config, configurations (axes or points, in "
                    "phases where a later phase builds on the best of an earlier one by VALIDATION mAP), a "
                    "matched baseline and several seeds. Runs are idempotent: finished runs are skipped, partial "
                    "ones resume, failed ones are retried.")
    actions = p.add_subparsers(dest="study_command", metavar="ACTION")
    actions.required = True

    q = actions.add_parser("list", help="the built-in studies")
    q.set_defaults(func=cmd_list)

    q = actions.add_parser("plan", help="list every run without running anything",
                           description="List every configuration and run (id, phase, seeds, config keys that differ "
                                       "from the base). Phases waiting for a selection are listed with placeholders.")
    _add_common(q)
    q.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    q.add_argument("--print-spec", action="store_true", help="print the study spec as YAML (to copy and edit)")
    q.set_defaults(func=cmd_plan)

    q = actions.add_parser("run", help="run what is not finished (skip finished, resume partial, retry failed)",
                           description="Run every unfinished run, phase after phase (locally), or submit them as a "
                                       "SLURM job array (--launcher slurm: submits what is runnable and exits; run "
                                       "the command again when a phase has finished to submit the next one).")
    _add_common(q)
    q.add_argument("--max-parallel", type=int, default=1, metavar="N",
                   help="runs at once (local): one per GPU via CUDA_VISIBLE_DEVICES, or N CPU processes")
    q.add_argument("--max-runs", type=int, default=None, metavar="N", help="start at most N runs, then stop")
    q.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local subprocesses (default), a SLURM job array through submitit, or submitit's local "
                        "executor (the SLURM code path on this machine)")
    q.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit executor parameter, e.g. slurm_partition=gpu timeout_min=600 gpus_per_node=1 "
                        "(repeatable)")
    q.add_argument("--resubmit", action="store_true", help="submit runs already queued by an earlier submission")
    q.add_argument("--no-retry-failed", action="store_true", help="leave failed runs failed")
    q.add_argument("--no-report", action="store_true", help="do not regenerate REPORT.md and plots at the end")
    q.set_defaults(func=cmd_run)

    q = actions.add_parser("status", help="finished / running / partial / failed / queued / pending per run")
    _add_common(q)
    q.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    q.set_defaults(func=cmd_status)

    q = actions.add_parser("report", help="write REPORT.md, summary CSVs and plots into the study directory")
    _add_common(q)
    q.set_defaults(func=cmd_report)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="changes to the base config of every configuration, e.g. data.root=/data train.epochs=5")
    p.add_argument("--seeds", metavar="N|LIST", help="number of seeds (3: seeds 0,1,2) or a list (0,1 or 5,)")
    p.add_argument("--output", metavar="DIR", help="study directory (default studies/<name>, studies/<name>-quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny model, synthetic data, 1 epoch: the whole study on a CPU in minutes "
                        "(checks the pipeline; its numbers are not results, and the report says so)")
    p.add_argument("--base", metavar="CONFIG", help="replace the spec's base config (e.g. preset:recipe_cssa_a100)")
    p.add_argument("--select-with-missing", action="store_true",
                   help="let a phase select on the seeds that finished when some runs failed")


def parse_seeds(text: str | None) -> list[int] | None:
    """'3' -> [0, 1, 2] (a count); '0,1' or '5,' -> explicit seeds."""
    if text is None:
        return None
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: a count (3) or a comma list of seeds (0,1,2 or 5,)") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: needs at least one seed, all distinct and >= 0")
    return seeds


def study_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """(spec, settings) from the command line; settings not given are taken from the study directory's
    study.json when it exists (so `cadet study status cssa` sees the overrides `run` was given)."""
    from crossattentiondet.studies.plan import StudySettings, default_study_dir
    from crossattentiondet.studies.runner import STUDY_RECORD, load_recorded_study
    from crossattentiondet.studies.spec import load_spec

    recorded = None
    path = Path(args.spec)
    if path.is_dir():
        spec, recorded = load_recorded_study(path)
        output = Path(args.output) if args.output else path
    else:
        spec = load_spec(args.spec)
        output = Path(args.output) if args.output else default_study_dir(spec, args.quick)
        if (output / STUDY_RECORD).is_file():
            _, recorded = load_recorded_study(output)
    settings = StudySettings(seeds=parse_seeds(args.seeds), overrides=list(args.overrides or []), quick=args.quick,
                             base=args.base, output=output, select_with_missing=args.select_with_missing)
    if recorded is not None:
        settings.seeds = settings.seeds or recorded.seeds
        settings.overrides = settings.overrides or recorded.overrides
        settings.base = settings.base or recorded.base
        settings.quick = settings.quick or recorded.quick
        settings.select_with_missing = settings.select_with_missing or recorded.select_with_missing
    return spec, settings


def cmd_list(args: argparse.Namespace) -> int:
    from crossattentiondet.studies.builtin import BUILTIN_STUDIES
    from crossattentiondet.studies.plan import build_plan
    from crossattentiondet.studies.spec import load_spec

    for name in BUILTIN_STUDIES:
        spec = load_spec(name)
        plan = build_plan(spec)
        phases = ", ".join(f"{p.name} {sum(1 for c in plan.configurations if c.phase == i)}"
                           for i, p in enumerate(spec.phases, start=1))
        print(f"{name:<11} {len(plan.configurations)} configurations ({phases}), baseline "
              f"{plan.baseline_id}, {len(plan.seeds)} seeds: {spec.description}")
    return 0


def _run_json(plan: Any, run: Any, state: Any = None) -> dict[str, Any]:
    c = run.configuration
    state = state if state is not None else run.state()
    return {"id": c.id, "phase": c.phase, "phase_name": c.phase_name, "seed": run.seed, "split_seed": run.split_seed,
            "run": run.key, "run_dir": str(run.run_dir) if run.run_dir else None, "changes": c.changes,
            "status": "pending" if run.pending else state.status, "pending": run.pending, "parent": c.parent}


def cmd_plan(args: argparse.Namespace) -> int:
    import yaml

    from crossattentiondet.studies.plan import build_plan
    from crossattentiondet.studies.spec import spec_to_dict

    spec, settings = study_from_args(args)
    if args.print_spec:
        print(yaml.safe_dump(spec_to_dict(spec), sort_keys=False), end="")
        return 0
    plan = build_plan(spec, settings)
    if args.json:
        print_json([_run_json(plan, run) for run in plan.runs()])
        return 0
    names = plan.phase_names()
    rows = []
    for c in plan.configurations:
        runs = [r for r in plan.runs() if r.configuration is c]
        status = "awaits selection" if c.pending else _status_text([r.state().status for r in runs])
        changes = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in c.changes.items())
        rows.append([f"{c.phase} {names.get(c.phase, '')}", c.id, status, changes or "(base config)"])
    print(f"study {spec.name} in {plan.study_dir}, seeds {','.join(str(s) for s in plan.seeds)}"
          + (f", split seeds {','.join(str(s) for s in plan.split_seeds)}" if plan.split_seeds else ""))
    _print_table(["phase", "configuration", "runs", "changes from the base"], rows)
    print(_plan_line(plan))
    for index, why in plan.waiting.items():
        print(f"phase {index} ({spec.phases[index - 1].name}): {why}")
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """Plain aligned columns (greppable, never truncated; the last column is free width)."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row[:-1], widths[:-1])) + "  " + str(row[-1]))


def _status_text(statuses: list[str]) -> str:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _plan_line(plan: Any) -> str:
    per_phase = {}
    for c in plan.configurations:
        per_phase[c.phase] = per_phase.get(c.phase, 0) + 1
    names = plan.phase_names()
    parts = [f"{n} {names.get(p, p)}" + (" (pending selection)" if any(c.pending for c in plan.configurations
                                                                      if c.phase == p) else "")
             for p, n in sorted(per_phase.items())]
    splits = f" x {len(plan.split_seeds)} split seed(s)" if plan.split_seeds else ""
    return (f"{len(plan.configurations)} configurations ({', '.join(parts)}) x {len(plan.seeds)} seed(s){splits} = "
            f"{len(plan.runs())} runs")


def cmd_run(args: argparse.Namespace) -> int:
    from crossattentiondet.io import ensure_writable_dir
    from crossattentiondet.studies.runner import run_study

    spec, settings = study_from_args(args)
    # before any planning or training: a read-only or full disk is reported now, not after the first run
    ensure_writable_dir(settings.output, "--output" if args.output else "study directory")
    if args.launcher != "local":
        return _submit(args, spec, settings)
    # `kill` (SIGTERM) stops the study like Ctrl-C: its training processes are stopped, their runs stay resumable
    signal.signal(signal.SIGTERM, _raise_interrupt)
    summary = run_study(spec, settings, max_parallel=args.max_parallel, max_runs=args.max_runs,
                        retry_failed=not args.no_retry_failed, write_report=not args.no_report)
    counts = summary.counts
    print(f"study {spec.name} in {summary.study_dir}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if not args.no_report:
        print(f"report: {summary.study_dir / 'REPORT.md'}" + (QUICK_NOTE if settings.quick else ""))
    return 1 if counts.get("failed") else 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _submit(args: argparse.Namespace, spec: Any, settings: Any) -> int:
    from crossattentiondet.studies.aggregate import write_summaries
    from crossattentiondet.studies.launchers import make_executor, parse_parameters, submit_study
    from crossattentiondet.studies.plan import build_plan
    from crossattentiondet.studies.runner import check_data_roots, check_plan_matches_disk, record_study

    cluster = "slurm" if args.launcher == "slurm" else "local"
    plan = build_plan(spec, settings, record_selection=True)
    check_data_roots(plan)
    check_plan_matches_disk(plan)
    record_study(plan)
    executor = make_executor(plan.study_dir / "submitit", cluster, parse_parameters(args.slurm_param))
    jobs = submit_study(plan, executor, retry_failed=not args.no_retry_failed, resubmit=args.resubmit,
                        max_runs=args.max_runs)
    for index, why in plan.waiting.items():
        print(f"phase {index} ({spec.phases[index - 1].name}) is not submitted yet: {why}; run this command "
              "again when it has finished")
    if cluster == "local" and jobs:
        for job in jobs:
            outcome = job.result()  # a run's own failure is recorded in its directory, not raised
            print(f"{outcome['run']}: {outcome['status']}" + (f": {outcome['error']}" if outcome["error"] else ""))
        write_summaries(build_plan(spec, settings))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from crossattentiondet.studies.aggregate import run_metrics, run_task
    from crossattentiondet.studies.plan import build_plan

    spec, settings = study_from_args(args)
    plan = build_plan(spec, settings)
    rows = []
    names = set()
    for run in plan.runs():
        state = run.state()
        row = _run_json(plan, run, state)
        metrics = run_metrics(state.final) if state.final else {}
        metric = run_task(state.final)[1] if state.final else "mAP"  # segmentation runs: Smeasure / mIoU
        if state.final:
            names.add(metric)
        row.update({"epochs_done": state.epochs_done, "metric": metric, f"val_{metric}": metrics.get(f"val_{metric}"),
                    f"test_{metric}": metrics.get(metric),
                    "error": (state.failed or {}).get("error"),
                    "held_by": state.lock.describe() if state.status == "running" and state.lock else None})
        rows.append(row)
    if args.json:
        print_json(rows)
        return 0
    fmt = lambda v: "" if v is None or v != v else f"{v:.4f}"  # noqa: E731
    shown = names.pop() if len(names) == 1 else "mAP"  # a study is one task: one primary metric
    table = [[r["run"], str(r["phase"]), "pending selection" if r["pending"] else r["status"],
              str(r["epochs_done"]), fmt(r.get(f"val_{shown}")), fmt(r.get(f"test_{shown}")),
              (r["error"] or r["held_by"] or "")[:120]]
             for r in rows]
    print(f"study {spec.name} in {plan.study_dir}")
    _print_table(["run", "phase", "status", "epochs", f"val {shown}", f"test {shown}", "note"], table)
    print(_status_text([r["status"] for r in rows]) + f" (of {len(rows)} runs)")
    for index, why in plan.waiting.items():
        print(f"phase {index} ({spec.phases[index - 1].name}) is pending: {why}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from crossattentiondet.studies.plan import build_plan
    from crossattentiondet.studies.report import is_quick_study, write_report

    spec, settings = study_from_args(args)
    plan = build_plan(spec, settings)
    path = write_report(plan)
    print(f"report: {path} (summary.csv, summary_all_experiments.csv, plots/ next to it)"
          + (QUICK_NOTE if is_quick_study(plan) else ""))
    return 0
