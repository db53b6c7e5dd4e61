"""From per-run files to study tables: metrics per run, statistics per configuration, tests vs the baseline.

Per configuration (over its finished seeds): mean, standard deviation (ddof 1), n and the 95% confidence
interval of the mean (Student t). Against the matched baseline: the difference of means with its 95%
interval and Welch's t-test (unequal variances) p-value, and a plain flag ``distinguishable_from_noise``
that is "no" when p >= 0.05 or either side has fewer than 2 seeds. Holm's correction over all
configurations is added for mAP, since a study makes many comparisons at once.

Files (regenerated from the run directories, written atomically):
- ``summary_all_experiments.csv``: one row per run, the original project's columns first.
- ``summary.csv``: one row per run (``row=run``, the same columns) and one per configuration (``row=config``;
  ``exp_id`` is the configuration id; metric columns
  hold the mean over seeds, with _std, _ci95_low/high, _diff, _diff_ci95_low/high, _p_value,
  _distinguishable_from_noise). ``time_hr`` is training time (final_results.json training.train_time_s).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossattentiondet.io import atomic_write_text
from crossattentiondet.studies.plan import Configuration, PlannedRun, StudyPlan
from crossattentiondet.studies.state import RunState

TEST_METRICS = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large", "mAR_100")
VAL_METRICS = ("val_mAP", "val_mAP_50")
ACCURACY_METRICS = TEST_METRICS + VAL_METRICS
COST_METRICS = ("params_M", "backbone_gflops", "detector_gflops", "latency_ms", "time_hr")
ALL_METRICS = ACCURACY_METRICS + COST_METRICS
ALPHA = 0.05
# the original summary CSV named these columns so (run_cssa_ablations.py); other varied keys keep their dotted name
ORIGINAL_COLUMN_NAMES = {
    "model.fusion.stages": "stages", "model.fusion.cssa.switching_thresh": "threshold",
    "model.fusion.cssa.kernel_size": "kernel", "model.fusion.gaff.se_reduction": "se_reduction",
    "model.fusion.gaff.inter_shared": "inter_shared", "model.fusion.gaff.merge_bottleneck": "merge_bottleneck",
    "model.fusion.type": "fusion", "model.streams": "streams", "model.backbone": "backbone",
}


@dataclass
class Stats:
    """Mean, standard deviation (ddof 1), count and 95% confidence interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass
class Comparison:
    """A configuration minus the baseline: difference of means, its 95% interval, Welch p-value."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def distinguishable(self) -> bool:
        return math.isfinite(self.p_value) and self.p_value < ALPHA


@dataclass
class RunRecord:
    """One run's status and metrics (NaN where missing)."""

    run: PlannedRun
    state: RunState
    metrics: dict[str, float]


@dataclass
class ConfigResult:
    """One configuration's runs, statistics and comparisons with the baseline."""

    configuration: Configuration
    records: list[RunRecord]
    stats: dict[str, Stats] = field(default_factory=dict)
    vs_baseline: dict[str, Comparison] = field(default_factory=dict)
    mAP_p_holm: float = math.nan

    @property
    def n(self) -> int:
        return sum(1 for r in self.records if r.state.status == "finished")

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.records
                if r.state.status == "finished" and math.isfinite(r.metrics.get(metric, math.nan))]


@dataclass
class StudyResults:
    """Everything the summaries and the report are made of."""

    plan: StudyPlan
    records: list[RunRecord]
    configs: list[ConfigResult]
    baseline: ConfigResult | None
    varied_keys: list[str]

    def config(self, config_id: str) -> ConfigResult:
        for c in self.configs:
            if c.configuration.id == config_id:
                return c
        raise KeyError(config_id)


# --------------------------------------------------------------------------------------------- statistics
def describe(values: list[float]) -> Stats:
    """Statistics of the finite ``values``; NaN where undefined (no values, or one value for std/CI)."""
    from scipy import stats as st

    vals = [v for v in values if math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return Stats(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(vals)
    if n == 1:
        return Stats(1, mean, math.nan, math.nan, math.nan)
    std = statistics.stdev(vals)
    half = float(st.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    return Stats(n, mean, std, mean - half, mean + half)


def welch(values: list[float], baseline: list[float]) -> Comparison:
    """Welch's t-test of ``values`` against ``baseline`` (p NaN when either has fewer than 2 values)."""
    from scipy import stats as st

    a = [v for v in values if math.isfinite(v)]
    b = [v for v in baseline if math.isfinite(v)]
    if not a or not b:
        return Comparison(math.nan, math.nan, math.nan, math.nan)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, math.nan, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical constant samples: scipy warns, p is NaN
        result = st.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(1 - ALPHA)
    p = float(result.pvalue)
    if not math.isfinite(p) and statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        p = 1.0 if diff == 0 else 0.0  # no noise at all: equal means are the same, others differ
    return Comparison(diff, float(interval.low), float(interval.high), p)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count)."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


# ------------------------------------------------------------------------------------------------ reading
def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def run_metrics(final: dict[str, Any] | None) -> dict[str, float]:
    """The study metrics of one run from its final_results.json (NaN for what it lacks)."""
    if final is None:
        return dict.fromkeys(ALL_METRICS, math.nan)
    results = final.get("results") or {}
    validation = final.get("validation") or {}
    model = final.get("model") or {}
    speed = final.get("speed") or {}
    training = final.get("training") or {}
    out = {k: _number(results.get(k)) for k in TEST_METRICS}
    out["val_mAP"] = _number(validation.get("mAP"))
    out["val_mAP_50"] = _number(validation.get("mAP_50"))
    params = model.get("params", speed.get("params"))
    out["params_M"] = _number(params) / 1e6
    out["backbone_gflops"] = _number(model.get("backbone_gflops", speed.get("backbone_gflops")))
    out["detector_gflops"] = _number(model.get("detector_gflops", speed.get("detector_gflops")))
    out["latency_ms"] = _number(speed.get("latency_ms_per_image"))
    out["time_hr"] = _number(training.get("train_time_s")) / 3600
    return out


def collect(plan: StudyPlan) -> StudyResults:
    """Read every planned run's files and compute the statistics."""
    records: list[RunRecord] = []
    configs: list[ConfigResult] = []
    runs_of: dict[str, list[PlannedRun]] = {}
    for run in plan.runs():
        runs_of.setdefault(run.config_id, []).append(run)
    for configuration in plan.configurations:
        if configuration.pending:
            continue
        mine = []
        for run in runs_of[configuration.id]:
            state = run.state()
            mine.append(RunRecord(run, state, run_metrics(state.final if state.status == "finished" else None)))
        records.extend(mine)
        result = ConfigResult(configuration, mine)
        result.stats = {m: describe(result.values(m)) for m in ALL_METRICS}
        configs.append(result)
    baseline = next((c for c in configs if c.configuration.id == plan.baseline_id), None)
    if baseline is not None:
        for c in configs:
            if c is baseline:
                continue
            c.vs_baseline = {m: welch(c.values(m), baseline.values(m)) for m in ACCURACY_METRICS}
        others = [c for c in configs if c is not baseline]
        for c, p in zip(others, holm([c.vs_baseline["mAP"].p_value for c in others])):
            c.mAP_p_holm = p
    varied: list[str] = []
    for c in plan.configurations:
        for key in c.changes:
            if key not in varied:
                varied.append(key)
    for key in plan.spec.id_fields.values():
        if key not in varied:
            varied.append(key)
    # the original summary had the studied module's settings as columns even where they did not vary
    fusion = plan.base_config.model.fusion.type
    for key in ORIGINAL_COLUMN_NAMES:
        if key.startswith(f"model.fusion.{fusion}.") and key not in varied:
            varied.append(key)
    return StudyResults(plan, records, configs, baseline, varied)


# ---------------------------------------------------------------------------------------------- writing
def column_name(key: str) -> str:
    """The summary column of a varied config key (the original project's name where it had one)."""
    return ORIGINAL_COLUMN_NAMES.get(key, key)


def format_value(key: str, value: Any) -> Any:
    """A config value as a CSV cell: stages as "2,3" (the original format), other lists as JSON."""
    if key == "model.fusion.stages" and isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def _config_value(configuration: Configuration, key: str) -> Any:
    if configuration.config is None:
        return ""
    node: Any = configuration.config.model_dump(mode="json")
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node.get(part) if isinstance(node, dict) else None
    return format_value(key, node)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else round(value, 6)
    return value


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k, "")) for k in columns})
    return buffer.getvalue()


def _run_row(results: StudyResults, record: RunRecord) -> dict[str, Any]:
    configuration = record.run.configuration
    final = record.state.final or {}
    row: dict[str, Any] = {
        "exp_id": configuration.id, "seed": record.run.seed, "phase": configuration.phase,
        "phase_name": configuration.phase_name, "parent": configuration.parent or "",
        "backbone": configuration.config.model.backbone if configuration.config else "",
        "epochs": (final.get("training") or {}).get("epochs", record.state.epochs_done),
        "best_epoch": (final.get("training") or {}).get("best_epoch", ""),
        "status": record.state.status, "error": (record.state.failed or {}).get("error", ""),
        "run_dir": str(record.run.run_dir or ""),
    }
    for key in results.varied_keys:
        row[column_name(key)] = _config_value(configuration, key)
    row.update(record.metrics)
    return row


def summary_all_rows(results: StudyResults) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and columns of summary_all_experiments.csv (one per run, original columns first)."""
    varied = [column_name(k) for k in results.varied_keys if column_name(k) != "backbone"]
    columns = ["exp_id", "seed", *varied, "backbone", "epochs", "mAP", "mAP_50", "mAP_75", "mAP_small",
               "mAP_medium", "mAP_large", "params_M", "time_hr", "status", "phase", "phase_name", "parent",
               "val_mAP", "val_mAP_50", "mAR_100", "backbone_gflops", "detector_gflops", "latency_ms", "best_epoch",
               "error", "run_dir"]
    return [_run_row(results, r) for r in results.records], columns


def summary_rows(results: StudyResults) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and columns of summary.csv (run rows, then configuration rows)."""
    varied = [column_name(k) for k in results.varied_keys]
    original = [c for c in ("backbone", "epochs", "best_epoch") if c not in varied]  # of summary_all_experiments.csv
    columns = ["row", "exp_id", "seed", "phase", "phase_name", "parent", "status", "n", *varied, *original, "changes"]
    for metric in ALL_METRICS:
        columns += [metric, f"{metric}_std", f"{metric}_ci95_low", f"{metric}_ci95_high"]
        if metric in ACCURACY_METRICS:
            columns += [f"{metric}_diff", f"{metric}_diff_ci95_low", f"{metric}_diff_ci95_high", f"{metric}_p_value",
                        f"{metric}_distinguishable_from_noise"]
        if metric == "mAP":
            columns.append("mAP_p_holm")
    columns += ["error", "run_dir"]
    rows = []
    for record in results.records:
        row = _run_row(results, record)
        row.update({"row": "run", "n": 1 if record.state.status == "finished" else 0,
                    "changes": _changes_text(record.run.configuration)})
        rows.append(row)
    baseline_id = results.baseline.configuration.id if results.baseline else None
    for c in results.configs:
        configuration = c.configuration
        row = {"row": "config", "exp_id": configuration.id, "seed": "", "phase": configuration.phase,
               "phase_name": configuration.phase_name, "parent": configuration.parent or "",
               "status": f"{c.n}/{len(c.records)} finished", "n": c.n, "changes": _changes_text(configuration)}
        for key in results.varied_keys:
            row[column_name(key)] = _config_value(configuration, key)
        for metric, s in c.stats.items():
            row.update({metric: s.mean, f"{metric}_std": s.std, f"{metric}_ci95_low": s.ci_low,
                        f"{metric}_ci95_high": s.ci_high})
        for metric, comp in c.vs_baseline.items():
            row.update({f"{metric}_diff": comp.diff, f"{metric}_diff_ci95_low": comp.ci_low,
                        f"{metric}_diff_ci95_high": comp.ci_high, f"{metric}_p_value": comp.p_value,
                        f"{metric}_distinguishable_from_noise": "yes" if comp.distinguishable else "no"})
        if configuration.id == baseline_id:
            row["mAP_distinguishable_from_noise"] = "baseline"
        row["mAP_p_holm"] = c.mAP_p_holm
        rows.append(row)
    return rows, columns


def _changes_text(configuration: Configuration) -> str:
    if not configuration.changes:
        return "(base config)"
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in configuration.changes.items())


def write_summaries(plan: StudyPlan, results: StudyResults | None = None) -> dict[str, Path]:
    """Write summary.csv and summary_all_experiments.csv into the study directory; returns their paths."""
    results = results or collect(plan)
    out = {"summary": plan.study_dir / "summary.csv",
           "summary_all_experiments": plan.study_dir / "summary_all_experiments.csv"}
    rows, columns = summary_rows(results)
    atomic_write_text(out["summary"], _csv(rows, columns))
    rows, columns = summary_all_rows(results)
    atomic_write_text(out["summary_all_experiments"], _csv(rows, columns))
    return out
