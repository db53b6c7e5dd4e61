"""From per-run files to study tables: metrics per run, statistics per configuration, tests vs the baseline.

Per configuration (over its finished runs; with split seeds every (split seed, seed) run is one replicate):
mean, standard deviation (ddof 1), n and the 95% confidence interval of the mean (Student t). Against the
matched baseline: the difference of means with its 95% interval and Welch's t-test (unequal variances)
p-value, and a flag ``distinguishable_from_noise`` that is "no" when p >= 0.05 or either side has fewer than
2 runs. Holm's correction over all configurations is added for mAP, since a study makes many comparisons at
once; the report's verdict uses the Holm p-value.

Tasks. A study compares runs of one task; its metrics are the runs' (:class:`TaskMetrics`, from
final_results.json ``task`` and ``primary_metric``; older runs without them are detection runs scored by
mAP). Everything said here of mAP holds for the study's primary metric: detection mAP, segmentation
S-measure (binary, COD) or mIoU (semantic). Its columns carry its name (``Smeasure_p_holm``,
``val_Smeasure``, ...); a study whose runs disagree on the task or the primary metric is an error.
Segmentation studies have the test metrics of the task (:data:`COD_TEST_METRICS` or
:data:`SEMANTIC_TEST_METRICS`), the whole model's FLOPs as ``model_gflops``, and with several test sets
(``results_per_set``, e.g. CAMO, COD10K, CHAMELEON, NC4K) one ``<set>_<primary>`` column per set. Metrics
where smaller is better (MAE, and what a run's ``lower_is_better`` lists) are ranked that way.

Test-set sampling (the primary metric only). A run may leave ``bootstrap_test.json``: ``n_boot`` bootstrap replicates of
its test mAP, resampling test images with resamples that are a deterministic function of the test set's
image ids (``image_ids_hash``), so replicate b of two runs on one test set used the same images. The
seed-mean's replicate b is ``rep_b = mean over the configuration's runs of samples_r[b]`` and

    Var(mean) = s_seeds^2 / n + var_b(rep_b)

The two terms do not overlap and the second does not shrink with n: on a fixed test set, the spread between
seeds is training noise only (every seed is scored on the same images, so the test-sampling error is common
to all of them and cancels out of their spread), and that common error does not average out over seeds for
the same reason. The interval uses Student t with Welch-Satterthwaite degrees of freedom from the seed term
(the bootstrap term counted with infinite df; n - 1 when the seed spread is 0, an estimate from n runs
too), never narrower than the
seed-only interval (more df can outweigh more variance at a few seeds; see :func:`welch`). Against the
baseline the bootstrap term is ``var_b(rep_b(config) - rep_b(baseline))`` when both were scored on the
same test sets (equal sets of hashes: paired, which removes the test-set difficulty both share), else
``var_b(rep(config)) + var_b(rep(baseline))`` (independent), added to Welch's seed term. With split seeds the
runs of one configuration see different test sets; their between-run spread then holds test-set variation
too, so the combined interval is conservative. A configuration (or comparison) with a run lacking the file
(older runs) keeps the seed-only statistics, and says so (``mAP_test_sampling`` = "no").

Zero variance: when neither side has any spread (seed std 0 and no bootstrap spread) nothing can be tested;
p is NaN (never 0) and the difference is only compared with :data:`RESOLUTION`.

Files (regenerated from the run directories, written atomically):
- ``summary_all_experiments.csv``: one row per run, the original project's columns first.
- ``summary.csv``: one row per run (``row=run``, the same columns) and one per configuration (``row=config``;
  ``exp_id`` is the configuration id; metric columns
  hold the mean over runs, with _std (between runs), _ci95_low/high, _diff, _diff_ci95_low/high, _p_value,
  _distinguishable_from_noise (uncorrected p)). For mAP, _ci95_*, _diff_ci95_* and _p_value include test-set
  sampling where every run has bootstrap_test.json (``mAP_test_sampling`` yes/no); ``mAP_seed_ci95_*`` and
  ``mAP_seed_p_value`` are the seed-only ones, ``mAP_boot_std`` the bootstrap standard deviation (of the run's
  mAP on run rows, of the seed-mean on configuration rows), ``mAP_diff_paired`` whether the difference used
  shared resamples, ``mAP_p_holm`` / ``mAP_holm_comparisons`` Holm's p and its number of comparisons,
  ``mAP_verdict`` the report's verdict. ``time_hr`` is training time (final_results.json training.train_time_s).

Size bins. Detection runs evaluated with AI-TOD's bins (``eval.size_bins`` aitod or both) have
:data:`SIZE_BIN_METRICS` in their results; a study shows those columns (after COCO's) when any of its
finished runs has them, and not otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from crossattentiondet.engine.bootstrap import BOOTSTRAP_FILE, BootstrapResult, load_run_bootstrap
from crossattentiondet.io import atomic_write_text
from crossattentiondet.studies.plan import Configuration, PlannedRun, StudyPlan
from crossattentiondet.studies.state import RunState

# detection's columns (the module constants are detection's; a study uses its TaskMetrics, see below)
TEST_METRICS = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large", "mAR_100")
# AI-TOD's size bins (engine/evaluate.py, eval.size_bins aitod | both): columns only when a run has them
SIZE_BIN_METRICS = ("mAP_aitod", "mAP_verytiny", "mAP_tiny", "mAP_small_aitod", "mAP_medium_aitod")
VAL_METRICS = ("val_mAP", "val_mAP_50")
ACCURACY_METRICS = TEST_METRICS + VAL_METRICS
COST_METRICS = ("params_M", "backbone_gflops", "detector_gflops", "latency_ms", "time_hr")
ALL_METRICS = ACCURACY_METRICS + COST_METRICS
# segmentation: the columns COD papers print (binary), mIoU and pixel accuracy (semantic)
COD_TEST_METRICS = ("Smeasure", "meanEm", "maxEm", "adpEm", "wFmeasure", "MAE", "maxFm", "meanFm", "adpFm", "IoU",
                    "Dice")
SEMANTIC_TEST_METRICS = ("mIoU", "pixel_acc")
SEGMENT_COST_METRICS = ("params_M", "backbone_gflops", "model_gflops", "latency_ms", "time_hr")
# metrics where smaller is better, whatever a run's final_results.json "lower_is_better" adds
LOWER_IS_BETTER = frozenset({"MAE"})
ALPHA = 0.05
# smallest mAP difference (COCO metrics are 0..1) read as a difference when nothing varies and so nothing can
# be tested: below it two constant results are the same; above it they differ, untested
RESOLUTION = 1e-3
# the original summary CSV named these columns so (run_cssa_ablations.py); other varied keys keep their dotted name
ORIGINAL_COLUMN_NAMES = {
    "model.fusion.stages": "stages", "model.fusion.cssa.switching_thresh": "threshold",
    "model.fusion.cssa.kernel_size": "kernel", "model.fusion.gaff.se_reduction": "se_reduction",
    "model.fusion.gaff.inter_shared": "inter_shared", "model.fusion.gaff.merge_bottleneck": "merge_bottleneck",
    "model.fusion.type": "fusion", "model.streams": "streams", "model.backbone": "backbone",
}


@dataclass(frozen=True)
class TaskMetrics:
    """The metrics of one study's task: what its tables, tests and plots are about.

    ``test`` are keys of final_results.json ``results`` (columns of the same name), ``val`` keys of its
    ``validation`` (columns ``val_<key>``), ``sets`` the test sets of ``results_per_set`` whose primary
    metric gets a column ``<set>_<primary>`` (only with 2 or more sets), ``cost`` the model-size and time
    columns."""

    task: str
    primary: str
    test: tuple[str, ...]
    val: tuple[str, ...]
    cost: tuple[str, ...]
    lower_is_better: frozenset[str] = frozenset()
    sets: tuple[str, ...] = ()

    @property
    def val_columns(self) -> tuple[str, ...]:
        return tuple(f"val_{k}" for k in self.val)

    @property
    def val_primary(self) -> str:
        """The validation column of the primary metric (``val_mAP``)."""
        return f"val_{self.primary}"

    @property
    def set_columns(self) -> tuple[str, ...]:
        return tuple(self.set_column(s) for s in self.sets)

    def set_column(self, name: str) -> str:
        """The column of the primary metric on test set ``name`` (``CAMO_Smeasure``)."""
        return f"{name}_{self.primary}"

    @property
    def accuracy(self) -> tuple[str, ...]:
        return self.test + self.val_columns + self.set_columns

    @property
    def all(self) -> tuple[str, ...]:
        return self.accuracy + self.cost

    @property
    def gflops(self) -> str:
        """The whole model's FLOPs column (``detector_gflops`` for detection)."""
        return "detector_gflops" if "detector_gflops" in self.cost else "model_gflops"

    def lower_better(self, metric: str) -> bool:
        """Whether smaller values of ``metric`` (a result key or a ``val_``/set column) are better."""
        for prefix in ("val_", *(f"{s}_" for s in self.sets)):
            if metric.startswith(prefix) and metric.removeprefix(prefix) in self.test + self.val:
                metric = metric.removeprefix(prefix)
                break
        return metric in self.lower_is_better


DETECT_METRICS = TaskMetrics("detect", "mAP", TEST_METRICS, ("mAP", "mAP_50"), COST_METRICS)


def task_metrics(task: str = "detect", primary: str | None = None, lower_is_better: Any = (),
                 sets: Any = ()) -> TaskMetrics:
    """The :class:`TaskMetrics` of ``task`` scored by ``primary`` (None: the task's usual one: mAP, Smeasure).

    ``lower_is_better``: metric names the runs say are minimised (added to :data:`LOWER_IS_BETTER` for
    segmentation); ``sets``: the test sets of ``results_per_set``. Segmentation whose primary metric is a COD
    one (or None) is binary, else semantic (mIoU, pixel_acc); the primary metric comes first."""
    named = frozenset(str(m) for m in lower_is_better or ())
    if task == "detect":
        primary = primary or "mAP"
        if primary == "mAP" and not named:
            return DETECT_METRICS
        test = (primary, *(m for m in TEST_METRICS if m != primary))
        val = ("mAP", "mAP_50") if primary == "mAP" else (primary, "mAP")
        return TaskMetrics("detect", primary, test, val, COST_METRICS, named)
    primary = primary or "Smeasure"
    binary = primary in COD_TEST_METRICS
    usual = COD_TEST_METRICS if binary else SEMANTIC_TEST_METRICS
    test = (primary, *(m for m in usual if m != primary))
    second = "MAE" if binary else "pixel_acc"
    val = (primary,) if primary == second else (primary, second)
    sets = tuple(str(s) for s in sets or ())
    return TaskMetrics(task, primary, test, val, SEGMENT_COST_METRICS, LOWER_IS_BETTER | named,
                       sets if len(sets) > 1 else ())


def run_task(final: dict[str, Any]) -> tuple[str, str]:
    """(task, primary metric) of a run's final_results.json; runs from before tasks existed are (detect, mAP)."""
    task = str(final.get("task") or "detect")
    primary = final.get("primary_metric")
    if not primary:
        results = final.get("results") or {}
        primary = "mAP" if task == "detect" else "Smeasure" if "Smeasure" in results or "mIoU" not in results else "mIoU"
    return task, str(primary)


def _configured_task(config: Any) -> tuple[str, str]:
    """(task, primary metric) a configuration will have, before any run says so (segmentation: binary unless the
    data are semantic, as far as the config tells)."""
    task = getattr(config, "task", "detect")
    if task == "detect":
        return "detect", "mAP"
    semantic = (config.data.layout == "mfnet" or (config.model.num_classes or 2) > 2
                or len(config.data.names or []) > 2)
    return task, "mIoU" if semantic else "Smeasure"


def study_metrics(plan: StudyPlan, finals: list[tuple[str, dict[str, Any]]]) -> TaskMetrics:
    """The metrics of a study from its finished runs' final_results.json (``finals``: (run key, contents)),
    or from its configurations while no run has finished. One study, one task: runs (or configurations) of
    different tasks or primary metrics are a :class:`ConfigError` naming one of each."""
    from crossattentiondet.config import ConfigError

    seen: dict[tuple[str, str], str] = {}
    lower: set[str] = set()
    sets: list[str] = []
    for key, final in finals:
        seen.setdefault(run_task(final), key)
        lower.update(str(m) for m in final.get("lower_is_better") or ())
        for name in final.get("results_per_set") or {}:
            if name not in sets:
                sets.append(str(name))
    what = "runs"
    if not seen:
        what = "configurations"
        for c in plan.configurations:
            if c.config is not None:
                seen.setdefault(_configured_task(c.config), c.id)
    if len(seen) > 1:
        listed = ", ".join(f"{key}: {task} ({primary})" for (task, primary), key in seen.items())
        raise ConfigError(f"study {plan.study_dir}: its {what} are of different tasks or primary metrics ({listed}); "
                          "a study compares runs of one task: put the others in a study of their own")
    task, primary = next(iter(seen)) if seen else ("detect", "mAP")
    return with_size_bins(task_metrics(task, primary, lower, sets), [final for _, final in finals])


def with_size_bins(metrics: TaskMetrics, finals: list[dict[str, Any]]) -> TaskMetrics:
    """``metrics`` with the :data:`SIZE_BIN_METRICS` that any of ``finals`` (final_results.json contents)
    has in its results added to the test metrics (detection only; unchanged when none has them)."""
    if metrics.task != "detect":
        return metrics
    present = tuple(k for k in SIZE_BIN_METRICS if k not in metrics.test
                    and any(k in (final.get("results") or {}) for final in finals))
    return replace(metrics, test=metrics.test + present) if present else metrics


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
    """A configuration minus the baseline: difference of means, its 95% interval, Welch p-value.

    ``boot_std`` is the test-sampling part of the difference's standard error (0 when not included),
    ``test_sampling`` whether it is included, ``paired`` whether it used shared resamples (None: not
    included), ``seed_p_value`` the seed-only Welch p, ``no_variance`` that neither side varies at all (p NaN)."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    seed_p_value: float = math.nan
    boot_std: float = 0.0
    test_sampling: bool = False
    paired: bool | None = None
    no_variance: bool = False

    @property
    def distinguishable(self) -> bool:
        return math.isfinite(self.p_value) and self.p_value < ALPHA

    @property
    def beyond_resolution(self) -> bool:
        """|difference| above :data:`RESOLUTION` (what can be said when there is no variance to test with)."""
        return math.isfinite(self.diff) and abs(self.diff) > RESOLUTION


@dataclass
class MeanBootstrap:
    """Bootstrap replicates of a configuration's mean over runs: rep_b = mean_r samples_r[b]."""

    replicates: list[float]
    hashes: frozenset[str]  # the test sets the runs were scored on

    @property
    def var(self) -> float:
        return _finite_variance(self.replicates)

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


@dataclass
class RunRecord:
    """One run's status and metrics (NaN where missing), and its test-set bootstrap if it has one."""

    run: PlannedRun
    state: RunState
    metrics: dict[str, float]
    bootstrap: BootstrapResult | None = None  # of the primary test metric; None: no usable bootstrap_test.json


@dataclass
class ConfigResult:
    """One configuration's runs, statistics and comparisons with the baseline."""

    configuration: Configuration
    records: list[RunRecord]
    # the primary metric's: seed + test-sampling CI where available
    stats: dict[str, Stats] = field(default_factory=dict)
    vs_baseline: dict[str, Comparison] = field(default_factory=dict)
    primary_p_holm: float = math.nan  # Holm-corrected p of the primary metric against the baseline
    primary_seed: Stats | None = None  # seed-only statistics of the primary metric
    test_sampling: MeanBootstrap | None = None  # None: some finished run has no bootstrap_test.json
    test_sampling_note: str = ""  # why test sampling is not included
    primary: str = "mAP"  # the study's primary test metric

    @property
    def n(self) -> int:
        return sum(1 for r in self.records if r.state.status == "finished")

    @property
    def mAP_p_holm(self) -> float:  # noqa: N802 (the name detection studies have always used)
        return self.primary_p_holm

    @property
    def mAP_seed(self) -> Stats | None:  # noqa: N802
        return self.primary_seed

    def finished_records(self, metric: str | None = None) -> list[RunRecord]:
        """Finished runs with a finite ``metric`` (None: the primary one)."""
        metric = metric or self.primary
        return [r for r in self.records
                if r.state.status == "finished" and math.isfinite(r.metrics.get(metric, math.nan))]

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.finished_records(metric)]


@dataclass
class StudyResults:
    """Everything the summaries and the report are made of."""

    plan: StudyPlan
    records: list[RunRecord]
    configs: list[ConfigResult]
    baseline: ConfigResult | None
    varied_keys: list[str]
    holm_comparisons: int = 0  # finite p-values of the primary metric Holm's correction is over
    metrics: TaskMetrics = DETECT_METRICS

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


def _quantile(df: float) -> float:
    """Two-sided 95% quantile of Student t with ``df`` degrees of freedom (normal for infinite df)."""
    from scipy import stats as st

    return float(st.norm.ppf(1 - ALPHA / 2)) if not math.isfinite(df) else float(st.t.ppf(1 - ALPHA / 2, df))


def _two_sided_p(t: float, df: float) -> float:
    from scipy import stats as st

    return float(2 * (st.norm.sf(abs(t)) if not math.isfinite(df) else st.t.sf(abs(t), df)))


def describe_combined(values: list[float], boot_var: float) -> Stats:
    """Statistics of the mean of ``values`` whose 95% interval also covers test-set sampling.

    Var = s^2 / n + ``boot_var`` (the bootstrap variance of the mean, see the module docstring), with
    Welch-Satterthwaite degrees of freedom from the seed term alone (the bootstrap term has infinite df).
    ``boot_var`` 0 gives exactly :func:`describe`; the interval is never narrower than the seed-only one
    (see :func:`welch`). With one value there is no seed term: CI NaN."""
    base = describe(values)
    if base.n < 2 or not math.isfinite(boot_var) or boot_var <= 0:
        return base
    seed_var = base.std ** 2 / base.n
    total = seed_var + boot_var
    # a zero seed spread measured on n runs is an estimate too: keep its n - 1 degrees of freedom
    df = base.n - 1 if seed_var == 0 else total ** 2 / (seed_var ** 2 / (base.n - 1))
    half = max(_quantile(df) * math.sqrt(total), (base.ci_high - base.ci_low) / 2)
    return Stats(base.n, base.mean, base.std, base.mean - half, base.mean + half)


def welch(values: list[float], baseline: list[float], boot_var: float = 0.0, *,
          paired: bool | None = None) -> Comparison:
    """Welch's t-test of ``values`` against ``baseline`` (p NaN when either has fewer than 2 values).

    ``boot_var`` is the test-sampling variance of the difference of means (0: seed noise only); it is added
    to Welch's seed term, the degrees of freedom are Welch-Satterthwaite's over the seed terms (the bootstrap
    term counted with infinite df), and n - 1 of the smaller side when both seed spreads are 0 (a zero spread
    seen in 3 runs is no proof of zero noise). Adding that term raises
    the degrees of freedom, which at a few seeds can outweigh the larger variance (a 3-seed t quantile is
    4.30, a normal's 1.96); a noise source added must never make a result look more certain, so the
    interval is never narrower, and p never smaller, than the seed-only ones. When nothing varies at all
    (both seed spreads 0, no bootstrap spread) there is nothing to test: p is NaN and ``no_variance`` set."""
    a = [v for v in values if math.isfinite(v)]
    b = [v for v in baseline if math.isfinite(v)]
    boot_var = boot_var if math.isfinite(boot_var) and boot_var > 0 else 0.0
    with_boot = paired is not None
    extra = {"boot_std": math.sqrt(boot_var), "test_sampling": with_boot, "paired": paired}
    if not a or not b:
        return Comparison(math.nan, math.nan, math.nan, math.nan, **extra)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, **extra)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    seed_var = va + vb
    seed_p, seed_half = math.nan, 0.0
    if seed_var > 0:
        df_seed = seed_var ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        seed_p = _two_sided_p(diff / math.sqrt(seed_var), df_seed)
        seed_half = _quantile(df_seed) * math.sqrt(seed_var)
    total = seed_var + boot_var
    if total == 0:
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan, no_variance=True, **extra)
    # both seed spreads 0 (constant runs): still estimated from few runs, so no normal approximation
    df = (min(len(a), len(b)) - 1 if seed_var == 0
          else total ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)))
    half = max(_quantile(df) * math.sqrt(total), seed_half)
    p = _two_sided_p(diff / math.sqrt(total), df)
    if math.isfinite(seed_p):
        p = max(p, seed_p)
    return Comparison(diff, diff - half, diff + half, p, seed_p, **extra)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count)."""
    finite = sorted((min(1.0, max(0.0, p)), i) for i, p in enumerate(p_values) if math.isfinite(p))
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


# where a run's whole-model FLOPs may be (detection writes detector_gflops)
_MODEL_GFLOPS_KEYS = ("model_gflops", "gflops", "segmenter_gflops", "detector_gflops")


def _first(sources: list[dict[str, Any]], keys: tuple[str, ...]) -> Any:
    for source in sources:
        for key in keys:
            if source.get(key) is not None:
                return source[key]
    return None


def run_metrics(final: dict[str, Any] | None, metrics: TaskMetrics | None = None) -> dict[str, float]:
    """The study metrics of one run from its final_results.json (NaN for what it lacks). ``metrics``: the
    study's; None: the run's own task and primary metric (detection's for runs that name none)."""
    if metrics is None:
        metrics = task_metrics(*run_task(final)) if final is not None else DETECT_METRICS
    if final is None:
        return dict.fromkeys(metrics.all, math.nan)
    results = final.get("results") or {}
    validation = final.get("validation") or {}
    model = final.get("model") or {}
    speed = final.get("speed") or {}
    training = final.get("training") or {}
    out = {k: _number(results.get(k)) for k in metrics.test}
    for key in metrics.val:
        out[f"val_{key}"] = _number(validation.get(key))
    per_set = final.get("results_per_set") or {}
    for name in metrics.sets:
        out[metrics.set_column(name)] = _number((per_set.get(name) or {}).get(metrics.primary))
    params = model.get("params", speed.get("params"))
    out["params_M"] = _number(params) / 1e6
    out["backbone_gflops"] = _number(model.get("backbone_gflops", speed.get("backbone_gflops")))
    if metrics.gflops == "detector_gflops":
        out["detector_gflops"] = _number(model.get("detector_gflops", speed.get("detector_gflops")))
    else:
        out[metrics.gflops] = _number(_first([model, speed], _MODEL_GFLOPS_KEYS))
    out["latency_ms"] = _number(speed.get("latency_ms_per_image"))
    out["time_hr"] = _number(training.get("train_time_s")) / 3600
    return out


def usable_bootstrap(run_dir: Path | None, metric: str = "mAP") -> BootstrapResult | None:
    """A run's test-set bootstrap of ``metric`` (``bootstrap_test.json``), or None when it has none or it is
    unusable (unreadable, another metric, fewer than 2 finite replicates). NaN replicates (a resample without
    ground truth) stay in place: replicate b must line up across runs."""
    if run_dir is None or not (Path(run_dir) / BOOTSTRAP_FILE).is_file():
        return None
    try:
        result = load_run_bootstrap(Path(run_dir))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if result is None or result.metric != metric or np.isfinite(result.samples).sum() < 2:
        return None
    return result


def _finite_variance(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.variance(finite) if len(finite) > 1 else 0.0


def mean_bootstrap(records: list[RunRecord]) -> MeanBootstrap | None:
    """rep_b = mean over ``records`` of their replicate b (None unless every record has a bootstrap).

    Replicates are aligned by index; when runs have different n_boot, the first min(n_boot) are used (the
    resamples are a function of the test set and b, so the shorter list is a prefix of the longer one). A
    replicate that is NaN in any run is NaN and left out of the variances."""
    boots = [r.bootstrap for r in records if r.bootstrap is not None]
    if not boots or len(boots) != len(records):
        return None
    n_boot = min(len(b.samples) for b in boots)
    reps = [statistics.fmean(b.samples[i] for b in boots) for i in range(n_boot)]
    return MeanBootstrap(reps, frozenset(b.image_ids_hash for b in boots))


def difference_boot_var(config: MeanBootstrap, baseline: MeanBootstrap) -> tuple[float, bool]:
    """(bootstrap variance of config mean - baseline mean, paired?). Paired (replicate b minus replicate b)
    when both were scored on the same test sets (equal sets of image-id hashes), else independent (the
    variances add)."""
    if config.hashes == baseline.hashes and all(config.hashes):
        return _finite_variance([x - y for x, y in zip(config.replicates, baseline.replicates)]), True
    return config.var + baseline.var, False


def collect(plan: StudyPlan) -> StudyResults:
    """Read every planned run's files and compute the statistics."""
    records: list[RunRecord] = []
    configs: list[ConfigResult] = []
    runs_of: dict[str, list[PlannedRun]] = {}
    for run in plan.runs():
        runs_of.setdefault(run.config_id, []).append(run)
    states = {run.key: run.state() for c in plan.configurations if not c.pending for run in runs_of[c.id]}
    metrics = study_metrics(plan, [(key, state.final) for key, state in states.items()
                                   if state.status == "finished" and state.final is not None])
    primary = metrics.primary
    for configuration in plan.configurations:
        if configuration.pending:
            continue
        mine = []
        for run in runs_of[configuration.id]:
            state = states[run.key]
            finished = state.status == "finished"
            mine.append(RunRecord(run, state, run_metrics(state.final if finished else None, metrics),
                                  usable_bootstrap(run.run_dir, primary) if finished else None))
        records.extend(mine)
        result = ConfigResult(configuration, mine, primary=primary)
        result.stats = {m: describe(result.values(m)) for m in metrics.all}
        result.primary_seed = result.stats[primary]
        used = result.finished_records(primary)
        result.test_sampling = mean_bootstrap(used)
        if result.test_sampling is not None:
            result.stats[primary] = describe_combined(result.values(primary), result.test_sampling.var)
        elif used:
            lacking = sum(1 for r in used if r.bootstrap is None)
            result.test_sampling_note = f"no {BOOTSTRAP_FILE} in {lacking} of {len(used)} runs"
        configs.append(result)
    baseline = next((c for c in configs if c.configuration.id == plan.baseline_id), None)
    holm_m = 0
    if baseline is not None:
        for c in configs:
            if c is baseline:
                continue
            c.vs_baseline = {m: welch(c.values(m), baseline.values(m)) for m in metrics.accuracy}
            if c.test_sampling is not None and baseline.test_sampling is not None:
                boot_var, paired = difference_boot_var(c.test_sampling, baseline.test_sampling)
                c.vs_baseline[primary] = welch(c.values(primary), baseline.values(primary), boot_var, paired=paired)
        others = [c for c in configs if c is not baseline]
        p_values = [c.vs_baseline[primary].p_value for c in others]
        holm_m = sum(1 for p in p_values if math.isfinite(p))
        for c, p in zip(others, holm(p_values)):
            c.primary_p_holm = p
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
    return StudyResults(plan, records, configs, baseline, varied, holm_m, metrics)


# ---------------------------------------------------------------------------------------------- verdict
def verdict(c: ConfigResult, results: StudyResults) -> str:
    """The plain-words verdict on a configuration's primary metric against the baseline (Holm-corrected p);
    "better" follows the metric's direction."""
    baseline = results.baseline
    if baseline is None:
        return "no baseline"
    if c is baseline:
        return "(baseline)"
    comp = c.vs_baseline.get(results.metrics.primary)
    if comp is None or not math.isfinite(comp.diff):
        return "no results"
    if c.n < 2 or baseline.n < 2:
        return "not testable (fewer than 2 runs)"
    if comp.no_variance:
        # constant results on both sides: a test would divide by zero; only the size of the gap can be read
        return ("no variance: differs by more than the resolution, untested" if comp.beyond_resolution
                else "no variance: cannot test")
    noise = "seed and test-set noise" if comp.test_sampling else "seed noise"
    if math.isfinite(c.primary_p_holm) and c.primary_p_holm < ALPHA:
        better = comp.diff < 0 if results.metrics.lower_better(results.metrics.primary) else comp.diff > 0
        return "yes: " + ("better" if better else "worse") + " than the baseline"
    if comp.distinguishable:
        return f"no: within {noise} after Holm correction (uncorrected p < {ALPHA})"
    return f"no: within {noise}"


mAP_verdict = verdict  # the name detection studies have always used


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
        "exp_id": configuration.id, "seed": record.run.seed,
        "split_seed": "" if record.run.split_seed is None else record.run.split_seed, "phase": configuration.phase,
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
    p = results.metrics.primary
    if record.state.status == "finished":
        row[f"{p}_test_sampling"] = "yes" if record.bootstrap is not None else "no"
        row[f"{p}_boot_std"] = record.bootstrap.std if record.bootstrap is not None else math.nan
    return row


def summary_all_rows(results: StudyResults) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and columns of summary_all_experiments.csv (one per run, original columns first)."""
    varied = [column_name(k) for k in results.varied_keys if column_name(k) != "backbone"]
    m = results.metrics
    if m.task == "detect" and m.primary == "mAP":
        bins = [k for k in m.test if k in SIZE_BIN_METRICS]  # AI-TOD's, when the runs have them
        columns = ["exp_id", "seed", *varied, "backbone", "epochs", "mAP", "mAP_50", "mAP_75", "mAP_small",
                   "mAP_medium", "mAP_large", *bins, "params_M", "time_hr", "status", "phase", "phase_name", "parent",
                   "val_mAP", "val_mAP_50", "mAR_100", "backbone_gflops", "detector_gflops", "latency_ms",
                   "best_epoch", "split_seed", "error", "run_dir"]
    else:  # the same order: identity, test metrics, size and time, status, validation, the rest
        columns = ["exp_id", "seed", *varied, "backbone", "epochs", *m.test, "params_M", "time_hr", "status", "phase",
                   "phase_name", "parent", *m.val_columns, *m.set_columns, "backbone_gflops", m.gflops, "latency_ms",
                   "best_epoch", "split_seed", "error", "run_dir"]
    return [_run_row(results, r) for r in results.records], columns


def summary_rows(results: StudyResults) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and columns of summary.csv (run rows, then configuration rows)."""
    varied = [column_name(k) for k in results.varied_keys]
    original = [c for c in ("backbone", "epochs", "best_epoch") if c not in varied]  # of summary_all_experiments.csv
    columns = ["row", "exp_id", "seed", "split_seed", "phase", "phase_name", "parent", "status", "n", *varied,
               *original, "changes"]
    p = results.metrics.primary
    for metric in results.metrics.all:
        columns += [metric, f"{metric}_std", f"{metric}_ci95_low", f"{metric}_ci95_high"]
        if metric in results.metrics.accuracy:
            columns += [f"{metric}_diff", f"{metric}_diff_ci95_low", f"{metric}_diff_ci95_high", f"{metric}_p_value",
                        f"{metric}_distinguishable_from_noise"]
        if metric == p:
            columns += [f"{p}_p_holm", f"{p}_holm_comparisons", f"{p}_verdict", f"{p}_test_sampling", f"{p}_boot_std",
                        f"{p}_seed_ci95_low", f"{p}_seed_ci95_high", f"{p}_seed_p_value", f"{p}_diff_paired"]
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
            row[f"{p}_distinguishable_from_noise"] = "baseline"
        row[f"{p}_p_holm"] = c.primary_p_holm
        if results.baseline is not None:
            row[f"{p}_holm_comparisons"] = results.holm_comparisons
        row[f"{p}_verdict"] = verdict(c, results)
        if c.primary_seed is not None:
            row.update({f"{p}_seed_ci95_low": c.primary_seed.ci_low, f"{p}_seed_ci95_high": c.primary_seed.ci_high})
        if c.n:
            row[f"{p}_test_sampling"] = "yes" if c.test_sampling is not None else "no"
        row[f"{p}_boot_std"] = c.test_sampling.std if c.test_sampling is not None else math.nan
        comp = c.vs_baseline.get(p)
        if comp is not None:
            row[f"{p}_seed_p_value"] = comp.seed_p_value
            row[f"{p}_diff_paired"] = "" if comp.paired is None else "yes" if comp.paired else "no"
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
