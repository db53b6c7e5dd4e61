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
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossattentiondet.config import ConfigError, load_config
from crossattentiondet.io import atomic_write_text, ensure_writable_dir, read_json

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


@dataclass
class ModelSummary:
    """One model over its seeds: test mAP mean and 95% interval, validation mAP, the bootstrap replicates."""

    name: str
    description: str
    run_dirs: list[Path]
    test_maps: list[float]
    val_maps: list[float]
    replicates: np.ndarray  # mean over seeds of each bootstrap replicate (shared resamples across models)
    image_ids_hash: str  # the test set the replicates resample
    mean: float
    ci: tuple[float, float]
    finals: list[dict[str, Any]]


@dataclass
class Comparison:
    """fused - other: difference of mean test mAP, its 95% interval and how to read it."""

    other: str
    diff: float
    ci: tuple[float, float]
    verdict: str


def run_demo(out_dir: str | Path = "cadet_demo", *, overrides: list[str] | None = None, seeds: int = 1,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the ranking (mean test mAP and CI per model) and the report path."""
    from crossattentiondet.data.synth import generate_dataset
    from crossattentiondet.engine.trainer import train

    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    start = time.perf_counter()
    out = ensure_writable_dir(out_dir, "--out")  # before minutes of data generation and training
    base = load_config("preset:demo", overrides)
    if base.eval.bootstrap < 2:
        raise ConfigError("demo: eval.bootstrap must be at least 2 (the demo's intervals are bootstrap intervals)")
    synth = base.data.synthetic
    data_root = out / "data"
    if not (data_root / "synth.json").is_file():
        echo(f"demo: generating {synth.images} synthetic frames ({synth.size[0]}x{synth.size[1]}) in {data_root}")
        generate_dataset(data_root, synth.images, tuple(synth.size), synth.classes, "npy", synth.seed)
    # no "|" in a description: it ends up in markdown tables
    descriptions = {name: text.format(streams=" and ".join(f"({' + '.join(s)})" for s in base.model.streams),
                                      fusion=base.model.fusion.type.upper().replace("FRM_FFM", "FRM+FFM"))
                    for name, (text, _) in VARIANTS.items()}
    runs: dict[str, list[Path]] = {name: [] for name in VARIANTS}
    for seed in range(seeds):
        for name, (_, extra) in VARIANTS.items():
            description = descriptions[name]
            config = load_config("preset:demo", [f"data.root={data_root}", f"output.root={out / 'runs'}",
                                                 f"name={name}_seed{seed}", *extra,
                                                 *(RIVAL_EVAL if name != FUSED else []), *(overrides or []),
                                                 f"seed={seed}"])
            echo(f"demo: training {name} ({description}), seed {seed}, {config.train.epochs} epochs")
            resume = (config.run_dir / "checkpoints" / "last.pt").is_file()
            result = train(config, resume=resume, echo=lambda m: echo(f"  {m}"))
            runs[name].append(Path(result.run_dir))
    models = [summarise(name, descriptions[name], dirs) for name, dirs in runs.items()]
    ranking = sorted(models, key=lambda m: -m.mean if math.isfinite(m.mean) else math.inf)
    fused = next(m for m in models if m.name == FUSED)
    comparisons = [compare(fused, m, seeds) for m in models if m.name != FUSED]
    elapsed = time.perf_counter() - start
    report = write_report(out, ranking, comparisons, seeds, elapsed)
    echo("")
    echo(f"demo finished in {elapsed / 60:.1f} min; test mAP (95% CI, {_noise_text(seeds)}):")
    for rank, m in enumerate(ranking, 1):
        echo(f"  {rank}. {m.description:<52} {m.mean:.3f} ({m.ci[0]:.3f}-{m.ci[1]:.3f})")
    for c in comparisons:
        echo(f"  fused - {c.other:<8} {c.diff:+.3f} ({c.ci[0]:+.3f} to {c.ci[1]:+.3f}): {c.verdict}")
    echo(f"  {headline(comparisons)}")
    echo(f"  report:  {report}")
    echo(f"  runs:    {out / 'runs'}")
    return {"ranking": [{"model": m.name, "mAP": m.mean, "ci95": list(m.ci), "val_mAP": _mean(m.val_maps)}
                        for m in ranking],
            "comparisons": [{"other": c.other, "diff": c.diff, "ci95": list(c.ci), "verdict": c.verdict}
                            for c in comparisons],
            "report": str(report), "seconds": elapsed}


# ------------------------------------------------------------------------------------------ statistics
def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def summarise(name: str, description: str, run_dirs: list[Path]) -> ModelSummary:
    """Mean test mAP over the seeds' runs and its 95% interval: the bootstrap percentile interval over test
    images for one seed; for several, seed spread and test sampling combined (``describe_combined``)."""
    from crossattentiondet.engine.bootstrap import load_run_bootstrap, percentile_ci
    from crossattentiondet.studies.aggregate import describe_combined

    finals = [read_json(d / "final_results.json") for d in run_dirs]
    test_maps = [float(f["results"]["mAP"]) for f in finals]
    val_maps = [float((f.get("validation") or {}).get("mAP", math.nan)) for f in finals]
    boots = [load_run_bootstrap(d) for d in run_dirs]
    if any(b is None for b in boots):
        raise ConfigError(f"demo: a run of {name} has no bootstrap_test.json (eval.bootstrap=0?); the demo needs it")
    if len({b.image_ids_hash for b in boots}) != 1:
        raise ConfigError(f"demo: the runs of {name} were tested on different test sets; remove {run_dirs[0].parent}")
    n_boot = min(b.n_boot for b in boots)
    replicates = np.mean([b.samples[:n_boot] for b in boots], axis=0)
    mean = statistics.fmean(test_maps)
    if len(run_dirs) == 1:
        ci = percentile_ci(replicates)
    else:
        stats = describe_combined(test_maps, float(np.nanvar(replicates, ddof=1)))
        ci = (stats.ci_low, stats.ci_high)
    return ModelSummary(name, description, run_dirs, test_maps, val_maps, replicates, boots[0].image_ids_hash, mean,
                        ci, finals)


def compare(fused: ModelSummary, other: ModelSummary, seeds: int) -> Comparison:
    """fused - other, paired over the same bootstrap resamples of the test images (and Welch over seeds)."""
    from crossattentiondet.engine.bootstrap import percentile_ci
    from crossattentiondet.studies.aggregate import welch

    if fused.image_ids_hash != other.image_ids_hash:
        raise ConfigError(f"demo: {fused.name} and {other.name} were tested on different test sets; cannot pair them")
    n = min(len(fused.replicates), len(other.replicates))
    deltas = fused.replicates[:n] - other.replicates[:n]
    diff = fused.mean - other.mean
    if seeds == 1:
        ci = percentile_ci(deltas)
    else:
        result = welch(fused.test_maps, other.test_maps, float(np.nanvar(deltas, ddof=1)), paired=True)
        ci = (result.ci_low, result.ci_high)
    if not all(math.isfinite(v) for v in ci):
        verdict = "cannot tell (no interval)"
    elif ci[0] > 0:
        verdict = "fused better"
    elif ci[1] < 0:
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


def _split_text(final: dict[str, Any], run_dir: Path) -> str:
    try:
        split = read_json(run_dir / "split.json")
    except (OSError, ValueError):
        return ""
    sizes = {k: len(v) for k, v in split.get("splits", split).items() if isinstance(v, list)}
    groups = split.get("group_counts") or {}
    parts = [f"{k} {sizes[k]} frames" + (f" ({groups[k]} sequences)" if k in groups else "")
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
    for rank, m in enumerate(ranking, 1):
        params = m.finals[0].get("model", {}).get("params")
        params_text = f"{params:,}" if params else "n/a"
        map50 = _mean([float(f["results"].get("mAP_50", math.nan)) for f in m.finals])
        train_s = _mean([float(f["training"]["train_time_s"]) for f in m.finals])
        lines.append(f"| {rank} | {m.description} | {_fmt(m.mean)} | {_fmt(m.ci[0])}-{_fmt(m.ci[1])} | "
                     f"{_fmt(map50)} | {_fmt(_mean(m.val_maps))} | {params_text} | {train_s:.0f} s |")
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
