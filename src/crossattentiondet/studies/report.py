"""REPORT.md of a study: status, selections, per-phase tables with confidence intervals and tests against the
matched baseline, plots (mAP per configuration, sensitivity, grids, accuracy vs cost, AP by size), the
modality table, failures, every run. Regenerated from the run directories each time.

The numbers are the study's primary metric (:class:`~crossattentiondet.studies.aggregate.TaskMetrics`):
mAP for detection, S-measure or mIoU for segmentation, where a segmentation study adds a table of all its
test metrics (the COD columns) and, with several test sets, one of the primary metric per set instead of
AP by object size.

Verdicts use Holm-corrected p-values (the number of comparisons is printed); a study run with ``--quick``
(recorded in study.json) is labelled a smoke test in the header, the table headers and the plot titles."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from crossattentiondet.io import atomic_write_text, read_json
from crossattentiondet.studies import plots
from crossattentiondet.studies.aggregate import (
    ALPHA,
    BOOTSTRAP_FILE,
    RESOLUTION,
    SIZE_BIN_METRICS,
    ConfigResult,
    StudyResults,
    collect,
    verdict,
    write_summaries,
)
from crossattentiondet.studies.plan import StudyPlan
from crossattentiondet.studies.runner import STUDY_RECORD, status_counts

QUICK_BANNER = "QUICK SMOKE TEST: tiny models on synthetic data; numbers are not results"
SEEDS_ONLY_MARK = "†"  # an interval without the test-sampling term (runs without bootstrap_test.json)
_AITOD_HEADERS = {"mAP_aitod": "all", "mAP_verytiny": "very tiny", "mAP_tiny": "tiny", "mAP_small_aitod": "small",
                  "mAP_medium_aitod": "medium"}


def is_quick_study(plan: StudyPlan) -> bool:
    """Whether the study ran with --quick: its settings say so, or the study directory's study.json does
    (so a report of a quick study says so however it is built)."""
    if plan.settings.quick:
        return True
    path = plan.study_dir / STUDY_RECORD
    try:
        return bool(read_json(path).get("settings", {}).get("quick")) if path.is_file() else False
    except (OSError, ValueError, AttributeError):
        return False


def _f(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_std(c: ConfigResult, metric: str) -> str:
    s = c.stats[metric]
    if s.n == 0:
        return "n/a"
    return _f(s.mean) + (f" ± {_f(s.std)}" if s.n > 1 else "")


def _ci(c: ConfigResult, metric: str) -> str:
    s = c.stats[metric]
    if not math.isfinite(s.ci_low):
        return "n/a"
    mark = f" {SEEDS_ONLY_MARK}" if metric == c.primary and c.test_sampling is None else ""
    return f"[{_f(s.ci_low)}, {_f(s.ci_high)}]{mark}"


def _changes(c: ConfigResult) -> str:
    if not c.configuration.changes:
        return "(base config)"
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in c.configuration.changes.items()).replace("|", "/")


def _p(value: float) -> str:
    return "<0.001" if math.isfinite(value) and value < 0.001 else _f(value)


def _verdict(c: ConfigResult, results: StudyResults) -> tuple[str, str, str, str]:
    """(difference with CI, p-value, Holm-corrected p-value, plain-words flag) against the baseline; the flag
    follows the Holm p (see :func:`~crossattentiondet.studies.aggregate.verdict`)."""
    flag = verdict(c, results)
    if results.baseline is None:
        return "n/a", "n/a", "n/a", flag
    if c is results.baseline:
        return "—", "—", "—", flag
    comp = c.vs_baseline.get(results.metrics.primary)
    if comp is None or not math.isfinite(comp.diff):
        return "n/a", "n/a", "n/a", flag
    diff = f"{comp.diff:+.3f}" + (f" [{comp.ci_low:+.3f}, {comp.ci_high:+.3f}]" if math.isfinite(comp.ci_low) else "")
    if math.isfinite(comp.ci_low) and not comp.test_sampling:
        diff += f" {SEEDS_ONLY_MARK}"
    return diff, _p(comp.p_value), _p(c.primary_p_holm), flag


def _comparisons(results: StudyResults) -> str:
    m = results.holm_comparisons
    return f"{m} comparison{'' if m == 1 else 's'}"


def _holm_header(results: StudyResults) -> str:
    return f"p (Holm, {_comparisons(results)})"


def _config_table(configs: list[ConfigResult], results: StudyResults, tag: str = "") -> list[str]:
    m = results.metrics
    name = m.primary
    lines = [f"| configuration | changes | runs | test {name}{tag} | 95% CI{tag} | Δ {name} vs baseline [95% CI]{tag} | "
             f"p (uncorrected) | {_holm_header(results)} | distinguishable from noise? (Holm p < {ALPHA}) | "
             f"val {name}{tag} | params (M) | GFLOPs (2 per multiply-add) | latency (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        diff, p, p_holm, flag = _verdict(c, results)
        lines.append(f"| {c.configuration.id} | {_changes(c)} | {c.n}/{len(c.records)} | {_mean_std(c, name)} | "
                     f"{_ci(c, name)} | {diff} | {p} | {p_holm} | {flag} | {_mean_std(c, m.val_primary)} | "
                     f"{_f(c.stats['params_M'].mean, 2)} | {_f(c.stats[m.gflops].mean, 2)} | "
                     f"{_f(c.stats['latency_ms'].mean, 1)} |")
    return lines


def _recipe(plan: StudyPlan) -> str:
    t = plan.base_config.train
    data = f"data: {plan.base_config.data.root or 'built-in synthetic scenes'}"
    if t.phases:  # each phase has its own batch, lr and schedule (engine/phases.py)
        from crossattentiondet.engine.phases import resolve_phases

        momentum = f"momentum {t.optimizer.momentum:g}, " if t.optimizer.type == "sgd" else ""
        phases = "; ".join(p.describe(len(t.phases)) for p in resolve_phases(t))
        return (f"{plan.base_config.model.backbone}, {t.epochs} epochs in {len(t.phases)} phases, "
                f"{t.optimizer.type} ({momentum}weight decay {t.optimizer.weight_decay:g}), {t.precision}: "
                f"{phases}; {data}")
    schedule = t.schedule.type + (f" (step {t.schedule.step_size:g} epochs, gamma {t.schedule.gamma:g})"
                                  if t.schedule.type == "step" else "")
    return (f"{plan.base_config.model.backbone}, {t.epochs} epochs, batch {t.batch_size} x accumulation "
            f"{t.accumulation}, {t.optimizer.type} lr {t.lr:g} (momentum {t.optimizer.momentum:g}, weight decay "
            f"{t.optimizer.weight_decay:g}), {schedule} schedule, {t.precision}; {data}")


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _phase_plots(results: StudyResults, index: int, members: list[ConfigResult], plot_dir: Path,
                 tag: str = "") -> list[str]:
    plan = results.plan
    phase = plan.spec.phases[index - 1]
    metric = results.metrics.primary
    lines: list[str] = []
    if not members:
        return lines
    path = plots.plot_config_bars(([results.baseline] if results.baseline and results.baseline not in members
                                   else []) + members, results.baseline,
                                  plot_dir / f"phase{index}_{phase.name}_{metric}.png",
                                  f"Phase {index} ({phase.name}): {metric} per configuration (mean over runs, 95% CI){tag}",
                                  metric=metric)
    lines += [f"![phase {index} {metric}](plots/{path.name})", ""]
    if phase.select is None:
        return lines
    by_parent: dict[str, list[ConfigResult]] = {}
    for c in members:
        by_parent.setdefault(c.configuration.parent or "?", []).append(c)
    keys = list(phase.axes)
    if len(keys) == 1 and not phase.points and _numeric(phase.axes[keys[0]]):
        key = keys[0]
        curves: dict[str, list[tuple[float, ConfigResult]]] = {}
        for parent_id, children in by_parent.items():
            parent = results.config(parent_id)
            points = [(_value(parent, key), parent)] + [(_value(c, key), c) for c in children]
            curves[parent_id] = [(float(x), c) for x, c in points if isinstance(x, (int, float))]
        path = plots.plot_sensitivity(curves, key, results.baseline,
                                      plot_dir / f"phase{index}_{phase.name}_sensitivity.png", note=tag, metric=metric)
        lines += [f"![sensitivity to {key}](plots/{path.name})", ""]
    else:
        label_keys = keys or sorted({k for c in members for k in c.configuration.changes})
        groups = {parent_id: [(plots.short_label(results.config(parent_id), label_keys), results.config(parent_id))]
                  + [(plots.short_label(c, label_keys), c) for c in children] for parent_id, children in by_parent.items()}
        path = plots.plot_grid(groups, results.baseline, plot_dir / f"phase{index}_{phase.name}_grid.png",
                               f"Phase {index} ({phase.name}): test {metric} per grid point, grouped by the "
                               f"configuration it builds on{tag}", metric=metric)
        lines += [f"![phase {index} grid](plots/{path.name})", ""]
    return lines


def _value(c: ConfigResult, key: str) -> Any:
    node: Any = c.configuration.config.model_dump(mode="json") if c.configuration.config else {}
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _modality_section(results: StudyResults, tag: str = "") -> list[str]:
    keys = ("model.streams", "model.zero_modalities")
    if not any(k in c.configuration.changes for c in results.configs for k in keys):
        return []
    names = [m.name for m in results.plan.base_config.data.modalities]
    metric = results.metrics.primary
    lines = ["## Modalities", "", "| configuration | " + " | ".join(names) + f" | streams | test {metric}{tag} | "
             f"Δ vs baseline{tag} | p (uncorrected) | {_holm_header(results)} | "
             f"distinguishable from noise? (Holm p < {ALPHA}) |",
             "|---" * (len(names) + 7) + "|"]
    for c in results.configs:
        config = c.configuration.config
        if config is None:
            continue
        used = {m for s in config.model.streams for m in s} - set(config.model.zero_modalities)
        diff, p, p_holm, flag = _verdict(c, results)
        streams = " / ".join("+".join(s) for s in config.model.streams)
        lines.append(f"| {c.configuration.id} | " + " | ".join("yes" if n in used else "—" for n in names)
                     + f" | {streams} | {_mean_std(c, metric)} | {diff} | {p} | {p_holm} | {flag} |")
    return [*lines, ""]


def _how_to_read(results: StudyResults) -> list[str]:
    """The paragraph that says what the intervals and verdicts mean, and which rows lack the test-set term."""
    plan = results.plan
    metric = results.metrics.primary
    replicate = "run (every split seed x seed pair)" if plan.split_seeds else "seed"
    lines = [f"How to read: every number is the mean over runs (one per {replicate}) with its 95% confidence "
             f"interval. For test {metric} the interval covers both seed variation and test-set sampling: Var = "
             "s_seeds^2 / n + the bootstrap variance of the seed mean over test images (from each run's "
             f"{BOOTSTRAP_FILE}; on one fixed test set the spread between seeds holds no test-sampling noise, and "
             "that noise does not average out over seeds because all seeds share the test set); Student t with "
             "Welch-Satterthwaite degrees of freedom. Differences from the baseline use the same bootstrap "
             "resamples on both sides when they were scored on the same test set (paired). "
             f"{SEEDS_ONLY_MARK} marks intervals from seed variation only (runs without {BOOTSTRAP_FILE}).",
             "",
             f"Verdicts: a difference is called distinguishable from noise only when its Holm-corrected p < {ALPHA} "
             f"(Welch's t-test, with the test-sampling term where the runs have it; Holm over the "
             f"{_comparisons(results)} with the baseline that have a p-value, {metric}, all phases) with at "
             "least 2 runs on both sides. When neither side varies at all (seed "
             f"std 0, no bootstrap spread) nothing can be tested: 'no variance: cannot test' when |Δ| <= "
             f"{RESOLUTION:g} {metric} (the resolution), else 'no variance: differs by more than the resolution, "
             f"untested'. Later phases were chosen on validation {_selection_metric(results)} only; test results "
             "were not used for any decision.", ""]
    if results.metrics.lower_better(metric):
        lines[-2] += f" Smaller {metric} is better."
    lacking = [c for c in results.configs if c.n and c.test_sampling is None]
    if lacking:
        names = ", ".join(f"`{c.configuration.id}` ({c.test_sampling_note})" for c in lacking)
        lines += [f"Without the test-sampling term ({SEEDS_ONLY_MARK}, seed variation only): {names}.", ""]
    return lines


def _selection_metric(results: StudyResults) -> str:
    """What later phases were selected on: the recorded selections' metric, else the study's primary metric
    (a spec's default ``mAP`` stands for the primary metric of a segmentation study)."""
    recorded = list(dict.fromkeys(s.metric for s in results.plan.selections.values()))
    return ", ".join(recorded) if recorded else results.metrics.primary


def _cost_and_size_sections(results: StudyResults, plot_dir: Path, tag: str) -> list[str]:
    """Accuracy vs cost, then AP by object size (detection) or the segmentation metric tables."""
    m = results.metrics
    lines = [f"## Accuracy vs cost{tag}", "", "Parameters and FLOPs are per image at the evaluation size (FLOPs count 2 "
             "per multiply-add, twice what fvcore/mmdet papers call FLOPs); latency "
             "is the median of the run's inference timing on its own device (compare runs from one machine "
             "only).", ""]
    path = plots.plot_pareto(results, plot_dir / "pareto.png", note=tag)
    lines += [f"![accuracy vs cost](plots/{path.name})", ""]
    if m.task == "detect":
        lines += [f"## AP by object size{tag}", "", "| configuration | small | medium | large |", "|---|---|---|---|"]
        for c in results.configs:
            lines.append(f"| {c.configuration.id} | {_mean_std(c, 'mAP_small')} | {_mean_std(c, 'mAP_medium')} | "
                         f"{_mean_std(c, 'mAP_large')} |")
        path = plots.plot_ap_by_size(results, plot_dir / "ap_by_size.png", note=tag)
        lines += ["", f"![AP by size](plots/{path.name})", ""]
        bins = [k for k in m.test if k in SIZE_BIN_METRICS]
        if bins:  # runs evaluated with eval.size_bins aitod | both
            lines += [f"## AP by AI-TOD object size{tag}", "", "AI-TOD's bins by sqrt(box area): very tiny < 8 px, "
                      "tiny 8-16, small 16-32, medium >= 32, at up to 1500 detections per image (a run whose model "
                      "returns fewer says so in its final_results.json notes). Mean ± standard deviation over "
                      "runs.", "", "| configuration | " + " | ".join(_AITOD_HEADERS.get(k, k) for k in bins) + " |",
                      "|---" * (len(bins) + 1) + "|"]
            for c in results.configs:
                lines.append(f"| {c.configuration.id} | " + " | ".join(_mean_std(c, k) for k in bins) + " |")
            lines.append("")
        return lines
    lower = [k for k in m.test if m.lower_better(k)]
    lines += [f"## Test metrics{tag}", "", "Mean ± standard deviation over runs, per image at the ground truth's "
              "resolution" + (f"; smaller is better for {', '.join(lower)}" if lower else "") + ".", "",
              "| configuration | " + " | ".join(m.test) + " |", "|---" * (len(m.test) + 1) + "|"]
    for c in results.configs:
        lines.append(f"| {c.configuration.id} | " + " | ".join(_mean_std(c, k) for k in m.test) + " |")
    lines.append("")
    if m.sets:
        lines += [f"## {m.primary} per test set{tag}", "", "Each test set scored on its own (mean ± standard deviation "
                  "over runs).", "", "| configuration | " + " | ".join(m.sets) + " |", "|---" * (len(m.sets) + 1) + "|"]
        for c in results.configs:
            lines.append(f"| {c.configuration.id} | "
                         + " | ".join(_mean_std(c, m.set_column(s)) for s in m.sets) + " |")
        path = plots.plot_per_set(results, plot_dir / "per_test_set.png", note=tag)
        lines += ["", f"![{m.primary} per test set](plots/{path.name})", ""]
    return lines


def write_report(plan: StudyPlan, results: StudyResults | None = None) -> Path:
    """Write REPORT.md, the summary CSVs and the plots into the study directory; returns REPORT.md's path."""
    results = results or collect(plan)
    write_summaries(plan, results)
    study_dir = plan.study_dir
    plot_dir = study_dir / "plots"
    counts = status_counts(plan)
    runs_per_config = len(plan.replicates())
    n_pending_selection = sum(1 for c in plan.configurations if c.pending) * runs_per_config
    quick = is_quick_study(plan)
    tag = " (quick)" if quick else ""
    lines = [f"# Study `{plan.spec.name}`" + (f" — {QUICK_BANNER}" if quick else ""), ""]
    if quick:
        lines += [f"> **{QUICK_BANNER}.** `--quick` runs every configuration with a tiny model on small synthetic "
                  "data for about one epoch, to check that the study runs end to end. Its numbers (marked "
                  "\"(quick)\") say nothing about the methods; run the study without --quick for results.", ""]
    if plan.spec.description:
        lines += [plan.spec.description, ""]
    splits = (f"; split seeds (data.split.seed): {', '.join(str(s) for s in plan.split_seeds)}, each run repeated "
              "over them" if plan.split_seeds else "")
    lines += [f"- recipe: {_recipe(plan)}",
              f"- seeds: {', '.join(str(s) for s in plan.seeds)}{splits}; configurations: "
              f"{sum(1 for c in plan.configurations if not c.pending)} known"
              + (f" + {sum(1 for c in plan.configurations if c.pending)} awaiting selection" if n_pending_selection else ""),
              f"- matched baseline: `{plan.baseline_id}`" if plan.baseline_id else "- no matched baseline",
              "- runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
              "- files: summary.csv (runs and configurations with statistics), summary_all_experiments.csv (one row "
              "per run), plots/, each run in <configuration>/" + ("split<j>_seed<k>/" if plan.split_seeds else
                                                                   "seed<k>/"), ""]
    lines += _how_to_read(results)
    if quick:
        lines += ["All numbers below are from the quick smoke test and are marked (quick).", ""]
    failed = [r for r in results.records if r.state.status == "failed"]
    if failed:
        lines += ["## Failed runs", "", "| run | error | log |", "|---|---|---|"]
        for r in failed:
            error = str((r.state.failed or {}).get("error", "")).replace("|", "/")
            lines.append(f"| {r.run.key} | {error} | {r.run.run_dir}/stdout.log |")
        lines += ["", "`cadet study run` retries failed runs.", ""]
    baseline_rows = [results.baseline] if results.baseline and results.baseline.configuration.phase == 0 else []
    for index, phase in enumerate(plan.spec.phases, start=1):
        members = [c for c in results.configs if c.configuration.phase == index]
        pending = [c for c in plan.configurations if c.phase == index and c.pending]
        lines += [f"## Phase {index}: {phase.name}", ""]
        selection = plan.selections.get(index)
        if selection is not None:
            lines += [f"Builds on the top {selection.top_k} configurations of phase {selection.source_phase} by "
                      f"validation {selection.metric} (mean over seeds):", "",
                      "| rank | configuration | validation mean | std | runs | selected |", "|---|---|---|---|---|---|"]
            for rank, row in enumerate(selection.ranking, start=1):
                lines.append(f"| {rank} | {row['id']} | {_f(row.get('mean'))} | {_f(row.get('std'))} | {row.get('n')} | "
                             f"{'yes' if row['id'] in selection.selected else ''} |")
            if selection.missing:
                lines.append(f"\nRanked without {len(selection.missing)} missing run(s): {', '.join(selection.missing)}")
            lines.append("")
        if pending:
            lines += [f"{len(pending)} configurations ({len(pending) * runs_per_config} runs) await the selection: "
                      f"{plan.waiting.get(index, '')}.", ""]
        if members:
            lines += [*_config_table(baseline_rows + members, results, tag), ""]
            lines += _phase_plots(results, index, members, plot_dir, tag)
    if results.configs:
        lines += _cost_and_size_sections(results, plot_dir, tag)
    lines += _modality_section(results, tag)
    metric = results.metrics.primary
    lines += ["## Runs", "", f"| run | status | epochs | val {metric}{tag} | test {metric}{tag} | train time (h) | note |",
              "|---|---|---|---|---|---|---|"]
    for r in results.records:
        note = str((r.state.failed or {}).get("error", ""))[:120].replace("|", "/")
        if r.state.status == "running" and r.state.lock is not None:
            note = r.state.lock.describe()
        lines.append(f"| {r.run.key} | {r.state.status} | {r.state.epochs_done} | "
                     f"{_f(r.metrics[results.metrics.val_primary])} | {_f(r.metrics[metric])} | "
                     f"{_f(r.metrics['time_hr'], 3)} | {note} |")
    lines.append("")
    path = study_dir / "REPORT.md"
    atomic_write_text(path, "\n".join(lines))
    return path
