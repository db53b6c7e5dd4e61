"""``cadet demo``: synthesise data, train the fused detector and every rival on the CPU, rank them honestly.

The models differ only in their input streams; data, split, recipe (augmentation and modality dropout
included), schedule and seed policy are the same for all:

- ``fused``: RGB | thermal + event, two streams fused by FRM+FFM after every stage (the original baseline);
- ``early``: early fusion, one stream of all five channels;
- ``rgb``, ``thermal``, ``event``: each modality alone (a single stream).

The test split is several hundred frames of whole sequences never seen in training. Each model's test mAP
comes with a 95% bootstrap interval over test images, and the fused model is compared with every rival on
the same resampled image sets (a paired bootstrap). With ``seeds > 1`` the intervals combine the seed
spread with test-set sampling (as studies do, ``studies/aggregate.py``). The recipe is the one chosen on
validation mAP in benchmarks/RESULTS.md (section 7.3, "Fusion vs single modalities").

Everything goes into one folder (default ./cadet_demo): data/ (the synthetic scenes), runs/<model>_seed<k>/
(ordinary run directories), REPORT.md with the ranking, the comparisons and plots. Rerunning reuses the
data and the finished runs.

``cadet demo --task segment`` does the same for camouflaged-object segmentation (default folder
./cadet_demo_segment): synthetic scenes where the object shares the background's colour and texture in RGB
but stands out in thermal, and four models that differ only in their input streams: ``fused`` (RGB |
thermal, FRM+FFM), ``early`` (one stream of RGB + thermal), ``rgb`` and ``thermal``. They are ranked by
their test primary metric (S-measure; mIoU for semantic data) with the same intervals and paired
differences. Its settings are :data:`SEGMENT_DEMO` (one dict, below the detection variants); the detection
demo's are the preset ``demo`` (presets/demo.yaml).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossattentiondet.config import ConfigError, ExperimentConfig, build_config, load_config
from crossattentiondet.io import atomic_write_json, atomic_write_text, ensure_writable_dir, read_json

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "fused": ("fused: two streams {streams}, {fusion}", []),  # streams and fusion of preset:demo
    "early": ("early fusion: RGB + thermal + event (one stream)", ["model.streams=[[rgb,thermal,event]]"]),
    "rgb": ("RGB only", ["model.streams=[[rgb]]"]),
    "thermal": ("thermal only", ["model.streams=[[thermal]]"]),
    "event": ("event only", ["model.streams=[[event]]"]),
}
FUSED = "fused"
# What the report shows of the rivals is their test mAP and its interval: their robustness table, speed and
# sample panels are not computed (evaluation settings only; training is the same for every model).
RIVAL_EVAL = ["eval.robustness=false", "eval.speed=false", "eval.panels=0"]

# ------------------------------------------------------------------------------ the segmentation demo
# `cadet demo --task segment`: the models differ only in their input streams, as in VARIANTS
SEGMENT_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "fused": ("fused: two streams {streams}, {fusion}", []),  # streams and fusion of SEGMENT_DEMO
    "early": ("early fusion: RGB + thermal (one stream)", ["model.streams=[[rgb,thermal]]"]),
    "rgb": ("RGB only", ["model.streams=[[rgb]]"]),
    "thermal": ("thermal only", ["model.streams=[[thermal]]"]),
}
# Every setting of the segmentation demo (the config all four models start from; command-line overrides come
# on top). Tiny on purpose: four models must train and be evaluated in under 5 minutes on 2 CPU cores.
# No data.root: task=segment trains on the built-in synthetic camouflaged RGB + thermal scenes, generated
# into <out>/data (data.synthetic.cache_dir, set by run_demo).
SEGMENT_DEMO: dict[str, Any] = {
    "name": "demo_segment",
    "task": "segment",
    "seed": 0,
    "data": {
        "synthetic": {"images": 400, "size": [96, 96], "seed": 0},
        # validation from the training share, never from the test share; a test split of ~180 images
        "split": {"train": 0.4, "val": 0.15, "test": 0.45},
        "augment": {"hflip": 0.5, "modality_dropout": 0.0},
        "loader": {"num_workers": 0},
    },
    "model": {
        "backbone": "mit_b0",
        "streams": [["rgb"], ["thermal"]],
        "mit": {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]},
        "drop_path_rate": 0.0,
        "fusion": {"type": "frm_ffm", "stages": [1, 2, 3, 4], "flow": "separate"},
        "seg": {"decoder": "unet", "size": 64, "head_channels": 16},
    },
    "train": {
        "epochs": 6,
        "batch_size": 8,
        "lr": 0.002,
        "optimizer": {"type": "adamw", "weight_decay": 0.01},
        "schedule": {"type": "cosine", "warmup_iters": 20, "min_lr": 0.00002},
        "grad_clip": 10.0,
        "precision": "fp32",
        "log_every": 10,
    },
    "eval": {"panels": 8, "speed": False, "bootstrap": 1000},
    "output": {"root": "runs"},
}
DEFAULT_OUT = {"detect": "cadet_demo", "segment": "cadet_demo_segment"}
DEMO_RECORD = "demo.json"  # which task a demo folder holds (one folder, one task)


def segment_demo_config(overrides: list[str] | None = None) -> ExperimentConfig:
    """The segmentation demo's config: :data:`SEGMENT_DEMO` plus dotted ``overrides``."""
    return build_config(copy.deepcopy(SEGMENT_DEMO), overrides, "demo --task segment")


@dataclass
class ModelSummary:
    """One model over its seeds: mean test value of the primary metric (mAP, Smeasure, ...) and its 95%
    interval, the validation values, the bootstrap replicates."""

    name: str
    description: str
    run_dirs: list[Path]
    test_values: list[float]
    val_values: list[float]
    replicates: np.ndarray  # mean over seeds of each bootstrap replicate (shared resamples across models)
    image_ids_hash: str  # the test set the replicates resample
    mean: float
    ci: tuple[float, float]
    finals: list[dict[str, Any]]
    metric: str = "mAP"
    lower_is_better: bool = False

    @property
    def test_maps(self) -> list[float]:  # the detection demo's name
        return self.test_values

    @property
    def val_maps(self) -> list[float]:
        return self.val_values


@dataclass
class Comparison:
    """fused - other: difference of the mean test metric, its 95% interval and how to read it."""

    other: str
    diff: float
    ci: tuple[float, float]
    verdict: str


def _check_folder(out: Path, task: str) -> None:
    """One demo folder holds one task's demo: its runs would otherwise be reused by the other task."""
    path = out / DEMO_RECORD
    recorded = None
    if path.is_file():
        try:
            recorded = read_json(path).get("task")
        except (OSError, ValueError, AttributeError):
            recorded = None
    elif (out / "runs").is_dir() and any((out / "runs").iterdir()):
        recorded = "detect"  # a demo folder from before segmentation existed
    if recorded is not None and recorded != task:
        raise ConfigError(f"--out {out}: holds a {recorded} demo; the {task} demo needs a folder of its own "
                          f"(default ./{DEFAULT_OUT[task]})")
    if recorded is None:
        atomic_write_json(path, {"task": task})


def run_demo(out_dir: str | Path | None = None, *, overrides: list[str] | None = None, seeds: int = 1,
             echo: Callable[[str], None] = print, task: str = "detect") -> dict[str, Any]:
    """Run the demo of ``task`` (detect or segment) into ``out_dir`` (None: ./cadet_demo or
    ./cadet_demo_segment); returns the ranking (mean test value of the primary metric and its CI per model),
    the comparisons with the fused model and the report path."""
    if task not in DEFAULT_OUT:
        raise ConfigError(f"--task must be one of {', '.join(DEFAULT_OUT)}, got {task!r}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    start = time.perf_counter()
    out = ensure_writable_dir(out_dir if out_dir is not None else DEFAULT_OUT[task], "--out")  # before minutes of work
    if task == "segment":
        base = segment_demo_config(overrides)
        variants = SEGMENT_VARIANTS
    else:
        base = load_config("preset:demo", overrides)
        variants = VARIANTS
    if base.task != task:
        raise ConfigError(f"demo --task {task}: the overrides set task={base.task}; use --task {base.task}")
    if base.eval.bootstrap < 2:
        raise ConfigError("demo: eval.bootstrap must be at least 2 (the demo's intervals are bootstrap intervals)")
    _check_folder(out, task)
    data_root = out / "data"
    if task == "segment":
        # the task's own synthetic scenes, made by the first run into the demo folder and reused by the others
        data_keys = [f"data.synthetic.cache_dir={data_root}"]

        def make(extra: list[str]) -> ExperimentConfig:
            return segment_demo_config([*data_keys, *extra])
    else:
        from crossattentiondet.data.synth import generate_dataset

        synth = base.data.synthetic
        if not (data_root / "synth.json").is_file():
            echo(f"demo: generating {synth.images} synthetic frames ({synth.size[0]}x{synth.size[1]}) in {data_root}")
            generate_dataset(data_root, synth.images, tuple(synth.size), synth.classes, "npy", synth.seed)

        def make(extra: list[str]) -> ExperimentConfig:
            return load_config("preset:demo", [f"data.root={data_root}", *extra])
    # no "|" in a description: it ends up in markdown tables
    descriptions = {name: text.format(streams=" and ".join(f"({' + '.join(s)})" for s in base.model.streams),
                                      fusion=base.model.fusion.type.upper().replace("FRM_FFM", "FRM+FFM"))
                    for name, (text, _) in variants.items()}
    from crossattentiondet.engine.trainer import train  # torch: only once the request is known to be sound

    runs: dict[str, list[Path]] = {name: [] for name in variants}
    for seed in range(seeds):
        for name, (_, extra) in variants.items():
            description = descriptions[name]
            config = make([f"output.root={out / 'runs'}", f"name={name}_seed{seed}", *extra,
                           *(RIVAL_EVAL if name != FUSED else []), *(overrides or []), f"seed={seed}"])
            echo(f"demo: training {name} ({description}), seed {seed}, {config.train.epochs} epochs")
            resume = (config.run_dir / "checkpoints" / "last.pt").is_file()
            result = train(config, resume=resume, echo=lambda m: echo(f"  {m}"))
            runs[name].append(Path(result.run_dir))
    models = [summarise(name, descriptions[name], dirs) for name, dirs in runs.items()]
    metric = _common_metric(models)
    ranking = rank(models)
    fused = next(m for m in models if m.name == FUSED)
    comparisons = [compare(fused, m, seeds) for m in models if m.name != FUSED]
    elapsed = time.perf_counter() - start
    if task == "segment":
        report = write_segment_report(out, ranking, comparisons, seeds, elapsed)
    else:
        report = write_report(out, ranking, comparisons, seeds, elapsed)
    echo("")
    echo(f"demo finished in {elapsed / 60:.1f} min; test {metric} (95% CI, {_noise_text(seeds)}):")
    for position, m in enumerate(ranking, 1):
        echo(f"  {position}. {m.description:<52} {m.mean:.3f} ({m.ci[0]:.3f}-{m.ci[1]:.3f})")
    for c in comparisons:
        echo(f"  fused - {c.other:<8} {c.diff:+.3f} ({c.ci[0]:+.3f} to {c.ci[1]:+.3f}): {c.verdict}")
    echo(f"  {headline(comparisons)}")
    echo(f"  report:  {report}")
    echo(f"  runs:    {out / 'runs'}")
    return {"task": task, "metric": metric,
            "ranking": [{"model": m.name, metric: m.mean, "ci95": list(m.ci), f"val_{metric}": _mean(m.val_values)}
                        for m in ranking],
            "comparisons": [{"other": c.other, "diff": c.diff, "ci95": list(c.ci), "verdict": c.verdict}
                            for c in comparisons],
            "report": str(report), "seconds": elapsed}


# ------------------------------------------------------------------------------------------ statistics
def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def summarise(name: str, description: str, run_dirs: list[Path], metric: str | None = None) -> ModelSummary:
    """Mean test value of ``metric`` (None: the runs' primary metric, mAP for runs that name none) over the seeds'
    runs and its 95% interval: the bootstrap percentile interval over test images for one seed; for several,
    seed spread and test sampling combined (``describe_combined``)."""
    from crossattentiondet.engine.bootstrap import load_run_bootstrap, percentile_ci
    from crossattentiondet.studies.aggregate import LOWER_IS_BETTER, describe_combined, run_task

    finals = [read_json(d / "final_results.json") for d in run_dirs]
    if metric is None:
        primaries = {run_task(f)[1] for f in finals}
        if len(primaries) != 1:
            raise ConfigError(f"demo: the runs of {name} have different primary metrics ({', '.join(sorted(primaries))})")
        metric = primaries.pop()
    lower = metric in LOWER_IS_BETTER or any(metric in (f.get("lower_is_better") or ()) for f in finals)
    missing = [str(d) for d, f in zip(run_dirs, finals) if (f.get("results") or {}).get(metric) is None]
    if missing:
        raise ConfigError(f"demo: {missing[0]}/final_results.json has no test {metric}")
    test_values = [float(f["results"][metric]) for f in finals]
    val_values = [float((f.get("validation") or {}).get(metric, math.nan)) for f in finals]
    boots = [load_run_bootstrap(d) for d in run_dirs]
    if any(b is None for b in boots):
        raise ConfigError(f"demo: a run of {name} has no bootstrap_test.json (eval.bootstrap=0?); the demo needs it")
    other = [b.metric for b in boots if b.metric != metric]
    if other:
        raise ConfigError(f"demo: a run of {name} has a bootstrap of {other[0]}, not of its test {metric}")
    if len({b.image_ids_hash for b in boots}) != 1:
        raise ConfigError(f"demo: the runs of {name} were tested on different test sets; remove {run_dirs[0].parent}")
    n_boot = min(b.n_boot for b in boots)
    replicates = np.mean([b.samples[:n_boot] for b in boots], axis=0)
    mean = statistics.fmean(test_values)
    if len(run_dirs) == 1:
        ci = percentile_ci(replicates)
    else:
        stats = describe_combined(test_values, float(np.nanvar(replicates, ddof=1)))
        ci = (stats.ci_low, stats.ci_high)
    return ModelSummary(name, description, run_dirs, test_values, val_values, replicates, boots[0].image_ids_hash,
                        mean, ci, finals, metric, lower)


def _common_metric(models: list[ModelSummary]) -> str:
    metrics = {m.metric for m in models}
    if len(metrics) != 1:
        raise ConfigError(f"demo: the models were scored by different metrics ({', '.join(sorted(metrics))})")
    return metrics.pop()


def rank(models: list[ModelSummary]) -> list[ModelSummary]:
    """Best first by the mean test metric (smallest first where smaller is better); NaN last."""
    def key(m: ModelSummary) -> float:
        if not math.isfinite(m.mean):
            return math.inf
        return m.mean if m.lower_is_better else -m.mean

    return sorted(models, key=key)


def compare(fused: ModelSummary, other: ModelSummary, seeds: int) -> Comparison:
    """fused - other, paired over the same bootstrap resamples of the test images (and Welch over seeds); the
    verdict follows the metric's direction."""
    from crossattentiondet.engine.bootstrap import percentile_ci
    from crossattentiondet.studies.aggregate import welch

    if fused.image_ids_hash != other.image_ids_hash:
        raise ConfigError(f"demo: {fused.name} and {other.name} were tested on different test sets; cannot pair them")
    if fused.metric != other.metric:
        raise ConfigError(f"demo: {fused.name} ({fused.metric}) and {other.name} ({other.metric}) measure different "
                          "metrics; cannot compare them")
    n = min(len(fused.replicates), len(other.replicates))
    deltas = fused.replicates[:n] - other.replicates[:n]
    diff = fused.mean - other.mean
    if seeds == 1:
        ci = percentile_ci(deltas)
    else:
        result = welch(fused.test_values, other.test_values, float(np.nanvar(deltas, ddof=1)), paired=True)
        ci = (result.ci_low, result.ci_high)
    sign = -1.0 if fused.lower_is_better else 1.0
    if not all(math.isfinite(v) for v in ci):
        verdict = "cannot tell (no interval)"
    elif min(sign * ci[0], sign * ci[1]) > 0:
        verdict = "fused better"
    elif max(sign * ci[0], sign * ci[1]) < 0:
        verdict = f"{other.name} better"
    else:
        verdict = "within noise"
    return Comparison(other.name, diff, ci, verdict)


def headline(comparisons: list[Comparison]) -> str:
    """One sentence: does the fused model beat every rival, whichever way it comes out."""
    beaten = [c.other for c in comparisons if c.verdict == "fused better"]
    losing = [c.other for c in comparisons if c.verdict.endswith(" better") and c.verdict != "fused better"]
    if len(beaten) == len(comparisons):
        return "verdict: the fused model beats every single modality and early fusion, beyond the noise."
    parts = []
    if beaten:
        parts.append(f"beats {', '.join(beaten)}")
    if losing:
        parts.append(f"loses to {', '.join(losing)}")
    tied = [c.other for c in comparisons if c.other not in beaten and c.other not in losing]
    if tied:
        parts.append(f"cannot be told apart from {', '.join(tied)}")
    return "verdict: the fused model " + "; ".join(parts) + "."


def _noise_text(seeds: int) -> str:
    if seeds == 1:
        return "1 seed: the interval covers test-image sampling only, not seed-to-seed spread"
    return f"{seeds} seeds: the interval covers seed spread and test-image sampling"


# ------------------------------------------------------------------------------------------------ report
def _fmt(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _split_text(final: dict[str, Any], run_dir: Path, unit: str = "frames", group_unit: str = "sequences") -> str:
    try:
        split = read_json(run_dir / "split.json")
    except (OSError, ValueError):
        return ""
    if not isinstance(split, dict):
        return ""
    sizes = {k: len(v) for k, v in split.get("splits", split).items() if isinstance(v, list)}
    groups = split.get("group_counts") or {}
    parts = [f"{k} {sizes[k]} {unit}" + (f" ({groups[k]} {group_unit})" if k in groups else "")
             for k in ("train", "val", "test") if k in sizes]
    return ", ".join(parts)


def write_report(out: Path, ranking: list[ModelSummary], comparisons: list[Comparison], seeds: int,
                 elapsed: float) -> Path:
    """REPORT.md: the ranking with intervals, the paired comparisons, robustness, per-class AP and plots."""
    from crossattentiondet import viz

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    viz.plot_ap_bars([m.description for m in ranking], [m.finals[0]["results"] for m in ranking],
                     plots / "models.png", title="Test AP of each model (seed 0)")
    fused = next(m for m in ranking if m.name == FUSED)
    first = fused.finals[0]
    lines = [
        "# CrossAttentionDet demo",
        "",
        f"Synthetic RGB + thermal + event scenes ({out / 'data'}): night, fog, cold objects and static objects "
        "hide different objects from different sensors. Every model uses the same data, split, recipe "
        "(augmentation and modality dropout included) and seeds; only the input streams differ.",
        "",
        f"Split (whole sequences, never inside one): {_split_text(first, fused.run_dirs[0])}.",
        f"Noise: {_noise_text(seeds)}. Intervals are 95 %; differences are paired over the same "
        "bootstrap resamples of the test images.",
        "",
        f"**{headline(comparisons)}**",
        "",
        "| rank | model | test mAP | 95% CI | test mAP_50 | val mAP | parameters | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for position, m in enumerate(ranking, 1):
        params = m.finals[0].get("model", {}).get("params")
        params_text = f"{params:,}" if params else "n/a"
        map50 = _mean([float(f["results"].get("mAP_50", math.nan)) for f in m.finals])
        train_s = _mean([float(f["training"]["train_time_s"]) for f in m.finals])
        lines.append(f"| {position} | {m.description} | {_fmt(m.mean)} | {_fmt(m.ci[0])}-{_fmt(m.ci[1])} | "
                     f"{_fmt(map50)} | {_fmt(_mean(m.val_values))} | {params_text} | {train_s:.0f} s |")
    lines += ["", "| comparison | difference in test mAP | 95% CI | reading |", "|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| fused - {c.other} | {c.diff:+.3f} | {c.ci[0]:+.3f} to {c.ci[1]:+.3f} | {c.verdict} |")
    lines += ["", "![test AP of each model](plots/models.png)", "",
              "A demo is small: its test split is a few hundred frames and its seeds few. The seed-averaged "
              "comparison over more seeds, with the recipe chosen on validation data, is in "
              "benchmarks/RESULTS.md (section 7.3, \"Fusion vs single modalities\").", "",
              "## Missing-modality robustness of the fused model (seed 0)", "",
              "| input | mAP | mAP_50 |", "|---|---|---|"]
    for row in first.get("robustness", []):
        label = "all modalities" if row["zeroed"] == "none" else f"{row['zeroed']} zeroed"
        lines.append(f"| {label} | {_fmt(row.get('mAP'))} | {_fmt(row.get('mAP_50'))} |")
    lines += ["", "## Per-class AP of the fused model (seed 0)", "", "| class | AP | AP_50 | objects |",
              "|---|---|---|---|"]
    for cls, ap in first.get("per_class", {}).items():
        lines.append(f"| {cls} | {_fmt(ap.get('AP'))} | {_fmt(ap.get('AP_50'))} | {ap.get('num_gt', '')} |")
    fused_dir = fused.run_dirs[0]
    rel = fused_dir.relative_to(out)
    lines += ["", "## Plots of the fused model (seed 0)", "",
              f"![training curves]({rel}/plots/training_curves.png)", "",
              f"![precision-recall]({rel}/plots/pr_curve_test.png)", "",
              f"![robustness]({rel}/plots/robustness_test.png)", "",
              f"![test samples]({rel}/plots/panels_test.png)", "",
              "## Next steps", "",
              f"- evaluate again: `cadet eval {fused_dir}`",
              f"- detect on new frames: `cadet predict {fused_dir} FRAMES... --out predictions`",
              "- more seeds: `cadet demo --seeds 3` (finished runs are reused)",
              "- train on your data: `cadet train data.root=/path/to/data` (see README)",
              "", f"Demo total time: {elapsed / 60:.1f} min.", ""]
    path = out / "REPORT.md"
    atomic_write_text(path, "\n".join(lines))
    return path


# the columns of the segmentation demo's tables: the COD metrics where the runs have them (binary), else
# the semantic ones; metrics a run lacks are left out
SEGMENT_TABLE_METRICS = ("Smeasure", "wFmeasure", "meanEm", "maxEm", "MAE", "IoU", "Dice", "mIoU", "pixel_acc")
SEGMENT_RANKING_EXTRA = ("wFmeasure", "MAE", "pixel_acc")  # beside the primary metric in the ranking


def _present(finals: list[dict[str, Any]], keys: tuple[str, ...], section: str = "results") -> list[str]:
    return [k for k in keys if any((f.get(section) or {}).get(k) is not None for f in finals)]


def _value(final: dict[str, Any], key: str, section: str = "results") -> float:
    value = (final.get(section) or {}).get(key)
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def write_segment_report(out: Path, ranking: list[ModelSummary], comparisons: list[Comparison], seeds: int,
                         elapsed: float) -> Path:
    """REPORT.md of the segmentation demo: the ranking by the test primary metric with intervals, the paired
    comparisons, every test metric, the fused model's missing-modality table and plots."""
    from crossattentiondet.studies import plots

    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    fused = next(m for m in ranking if m.name == FUSED)
    metric = fused.metric
    first = fused.finals[0]
    better = "smaller is better" if fused.lower_is_better else "larger is better"
    plots.plot_metric_bars([m.description for m in ranking], [m.mean for m in ranking], [m.ci for m in ranking],
                           plot_dir / "models.png", f"Test {metric} of each model (mean over {seeds} seed"
                           f"{'' if seeds == 1 else 's'}, 95% CI)", f"test {metric} ({better})")
    all_finals = [f for m in ranking for f in m.finals]
    columns = [k for k in _present(all_finals, SEGMENT_TABLE_METRICS) if k != metric]
    extra_columns = [k for k in _present(all_finals, SEGMENT_RANKING_EXTRA) if k != metric][:2]
    lower = [k for k in (metric, *columns) if k in ("MAE",) or any(k in (f.get("lower_is_better") or ())
                                                                  for f in all_finals)]
    lines = [
        "# CrossAttentionDet segmentation demo",
        "",
        f"Synthetic camouflaged scenes ({out / 'data'}): each object shares the background's colour and texture "
        "in RGB, visible there only through subtle boundary and texture cues, but stands out in thermal. Every "
        "model uses the same data, split, recipe and seeds; only the input streams differ. Metrics are computed "
        "per image at the ground truth's resolution and averaged over the test images.",
        "",
        f"Split (validation carved from the training share): {_split_text(first, fused.run_dirs[0], 'images', 'groups')}.",
        f"Noise: {_noise_text(seeds)}. Intervals are 95 %; differences are paired over the same "
        "bootstrap resamples of the test images.",
        "",
        f"**{headline(comparisons)}**",
        "",
        f"| rank | model | test {metric} | 95% CI | " + "".join(f"test {k} | " for k in extra_columns)
        + f"val {metric} | parameters | train time |",
        "|---" * (7 + len(extra_columns)) + "|",
    ]
    for position, m in enumerate(ranking, 1):
        params = (m.finals[0].get("model") or {}).get("params")
        params_text = f"{params:,}" if params else "n/a"
        extra = "".join(f"{_fmt(_mean([_value(f, k) for f in m.finals]))} | " for k in extra_columns)
        train_s = _mean([_value(f, "train_time_s", "training") for f in m.finals])
        lines.append(f"| {position} | {m.description} | {_fmt(m.mean)} | {_fmt(m.ci[0])}-{_fmt(m.ci[1])} | {extra}"
                     f"{_fmt(_mean(m.val_values))} | {params_text} | "
                     + (f"{train_s:.0f} s |" if math.isfinite(train_s) else "n/a |"))
    lines += ["", f"| comparison | difference in test {metric} | 95% CI | reading |", "|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| fused - {c.other} | {c.diff:+.3f} | {c.ci[0]:+.3f} to {c.ci[1]:+.3f} | {c.verdict} |")
    lines += ["", f"![test {metric} of each model](plots/models.png)", "",
              f"A demo is small: its test split is a couple of hundred images and its seeds few; {metric}: "
              f"{better}.", ""]
    table = [metric, *columns]
    lines += [f"## Every test metric (mean over {seeds} seed{'' if seeds == 1 else 's'})", "",
              "Smaller is better for " + ", ".join(lower) + "; larger for the others." if lower else
              "Larger is better for every column.", "",
              "| model | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
    for m in ranking:
        lines.append(f"| {m.description} | " + " | ".join(_fmt(_mean([_value(f, k) for f in m.finals])) for k in table)
                     + " |")
    per_set = first.get("results_per_set") or {}
    if len(per_set) > 1:
        names = list(per_set)
        lines += ["", f"## Test {metric} per test set (seed 0)", "", "| model | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for m in ranking:
            sets = m.finals[0].get("results_per_set") or {}
            lines.append(f"| {m.description} | " + " | ".join(_fmt(_value(sets, metric, n)) for n in names) + " |")
    robustness = first.get("robustness") or []
    if robustness:
        shown = [k for k in (metric, "wFmeasure", "MAE", "IoU", "pixel_acc")
                 if k in table and any(row.get(k) is not None for row in robustness)]
        lines += ["", "## Missing-modality robustness of the fused model (seed 0)", "",
                  "| input | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
        for row in robustness:
            label = "all modalities" if row.get("zeroed") == "none" else f"{row.get('zeroed')} zeroed"
            lines.append(f"| {label} | " + " | ".join(_fmt(row.get(k)) for k in shown) + " |")
    fused_dir = fused.run_dirs[0]
    rel = fused_dir.relative_to(out) if fused_dir.is_relative_to(out) else fused_dir
    # link what the run drew (which plots a segmentation run writes is its task's business)
    run_plots = sorted((fused_dir / "plots").glob("*.png")) if (fused_dir / "plots").is_dir() else []
    lines.append("")
    if run_plots:
        lines += ["## Plots of the fused model (seed 0)", ""]
        for path in run_plots:
            lines += [f"![{path.stem.replace('_', ' ')}]({rel}/plots/{path.name})", ""]
    lines += ["## Next steps", "",
              f"- evaluate again: `cadet eval {fused_dir}`",
              f"- segment new images: `cadet predict {fused_dir} IMAGES... --out predictions`",
              "- more seeds: `cadet demo --task segment --seeds 3` (finished runs are reused)",
              "- train on your data: `cadet train task=segment data.root=/path/to/COD10K-v3` (see README)",
              "", f"Demo total time: {elapsed / 60:.1f} min.", ""]
    path = out / "REPORT.md"
    atomic_write_text(path, "\n".join(lines))
    return path
