"""Study plots: mAP per configuration with error bars, sensitivity curves, grids, Pareto fronts, AP by size.

The metric is the study's primary one (``metric=``; mAP for detection, S-measure or mIoU for segmentation,
whose studies get a plot per test set instead of AP by size). Error bars are 95% confidence intervals of
the mean over runs (none with a single run), clipped to [0, 1] (an AP, S-measure, IoU or MAE cannot leave
it); for the primary test metric they cover test-set sampling too where the runs have
bootstrap_test.json (see :mod:`crossattentiondet.studies.aggregate`). Bars per configuration are
horizontal, so long configuration names are wrapped beside them and never overlap. ``note`` is appended to a title (the report passes
" (quick)"). matplotlib's object-oriented API only (Figure + Agg canvas, as in :mod:`crossattentiondet.viz`);
every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossattentiondet.io import atomic_write
from crossattentiondet.studies.aggregate import ConfigResult, StudyResults
from crossattentiondet.viz import LABEL_CHARS, clipped_errors, horizontal_bar_height, wrap_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
TEST_COLOR = "#3070b0"
VAL_COLOR = "#90b8e0"
BASELINE_COLOR = "#606060"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _title(ax: Any, text: str, width: int = 60) -> None:
    """A title wrapped to the axes (long study and phase names would be cut off)."""
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(text, width)), fontsize=9)


def _mean_err(c: ConfigResult, metric: str) -> tuple[float, tuple[float, float]]:
    """Mean and (below, above) error-bar lengths of its 95% CI clipped to [0, 1]; (0, 0) without a CI."""
    s = c.stats[metric]
    mean = s.mean if math.isfinite(s.mean) else math.nan
    below, above = clipped_errors([mean], [s.ci_low], [s.ci_high])[:, 0]
    return mean, (float(below), float(above))


def _errors(pairs: Sequence[tuple[float, float]]) -> np.ndarray:
    """(2, N) error lengths for matplotlib from per-bar (below, above) pairs."""
    return np.asarray(pairs, dtype=np.float64).reshape(-1, 2).T


def short_label(c: ConfigResult, keys: Sequence[str]) -> str:
    """``se_reduction=8 inter_shared=1`` from the values of ``keys`` in the configuration."""
    if c.configuration.config is None:
        return c.configuration.id
    tree: Any = c.configuration.config.model_dump(mode="json")
    parts = []
    for key in keys:
        node = tree
        for part in key.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, bool):
            node = int(node)
        elif isinstance(node, list):
            node = "".join(str(v) for v in node) if all(isinstance(v, int) for v in node) else node
        parts.append(f"{key.split('.')[-1]}={node}")
    return " ".join(parts)


def _baseline_band(ax: Any, baseline: ConfigResult | None, metric: str = "mAP", vertical: bool = False) -> None:
    """The baseline's mean as a dashed line and its (clipped) 95% CI as a band; ``vertical`` for
    horizontal bar charts, where the metric runs along x."""
    if baseline is None:
        return
    mean, (below, above) = _mean_err(baseline, metric)
    if not math.isfinite(mean):
        return
    line, span = (ax.axvline, ax.axvspan) if vertical else (ax.axhline, ax.axhspan)
    line(mean, color=BASELINE_COLOR, linestyle="--", linewidth=1.0,
         label=f"baseline test {metric} ({baseline.configuration.id})")
    if below + above > 0:
        span(mean - below, mean + above, color=BASELINE_COLOR, alpha=0.12, linewidth=0)


def _horizontal_bars(ax: Any, configs: list[ConfigResult], series: Sequence[tuple[str, str, str]],
                     label_of: Any) -> None:
    """One row per configuration (first on top), one bar per (metric, color, legend label) of ``series``,
    each with its clipped 95% CI; the configuration names wrapped beside the rows."""
    y = np.arange(len(configs))
    height = 0.8 / max(1, len(series))
    for j, (metric, color, label) in enumerate(series):
        means, errs = zip(*(_mean_err(c, metric) for c in configs)) if configs else ((), ())
        ax.barh(y - 0.4 + height * (j + 0.5), np.nan_to_num(means), height, xerr=_errors(errs), capsize=2,
                color=color, label=label, error_kw={"linewidth": 0.8})
    ax.set_yticks(y, [wrap_label(label_of(c), LABEL_CHARS) for c in configs], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)  # the cap of an interval clipped at 1 stays visible
    ax.grid(axis="x", alpha=0.3)


def _axis_label(metric: str) -> str:
    return "COCO mAP" if metric == "mAP" else metric


def plot_config_bars(configs: list[ConfigResult], baseline: ConfigResult | None, path: Path, title: str,
                     metric: str = "mAP") -> Path:
    """Validation and test ``metric`` of each configuration (mean over seeds, 95% CI), the baseline as a band."""
    labels = [c.configuration.id for c in configs]
    fig = _figure(8.0, horizontal_bar_height(labels, 2))
    ax = fig.subplots()
    _horizontal_bars(ax, configs, ((f"val_{metric}", VAL_COLOR, f"validation {metric}"),
                                   (metric, TEST_COLOR, f"test {metric}")), lambda c: c.configuration.id)
    _baseline_band(ax, baseline, metric, vertical=True)
    ax.set_xlabel(_axis_label(metric))
    _title(ax, title)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_sensitivity(lines: dict[str, list[tuple[float, ConfigResult]]], key: str, baseline: ConfigResult | None,
                     path: Path, note: str = "", metric: str = "mAP") -> Path:
    """Test ``metric`` against one numeric setting, one line per configuration the phase built on."""
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    for parent, points in lines.items():
        points = sorted(points, key=lambda p: p[0])
        xs = [p[0] for p in points]
        means, errs = zip(*(_mean_err(c, metric) for _, c in points))
        ax.errorbar(xs, means, yerr=_errors(errs), marker="o", capsize=3, linewidth=1.4, label=parent)
    _baseline_band(ax, baseline, metric)
    ax.set_xlabel(key)
    ax.set_ylabel(f"test {metric}")
    _title(ax, f"Sensitivity to {key.split('.')[-1]} (mean over runs, 95% CI){note}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_grid(groups: dict[str, list[tuple[str, ConfigResult]]], baseline: ConfigResult | None, path: Path,
              title: str, metric: str = "mAP") -> Path:
    """Grouped bars: one group per configuration the phase built on, one bar per grid point."""
    labels = list(dict.fromkeys(label for members in groups.values() for label, _ in members))
    fig = _figure(max(6.0, 1.0 + len(groups) * (0.3 * len(labels) + 0.6)), 4.6)
    ax = fig.subplots()
    from matplotlib import colormaps

    width = 0.8 / max(1, len(labels))
    cmap = colormaps["tab10"]
    for j, label in enumerate(labels):
        xs, means, errs = [], [], []
        for g, members in enumerate(groups.values()):
            for member_label, c in members:
                if member_label == label:
                    mean, err = _mean_err(c, metric)
                    xs.append(g - 0.4 + width * (j + 0.5))
                    means.append(mean)
                    errs.append(err)
        ax.bar(xs, np.nan_to_num(means), width, yerr=_errors(errs), capsize=2, color=cmap(j % 10), label=label,
               error_kw={"linewidth": 0.8})
    _baseline_band(ax, baseline, metric)
    # a group is (0.3 * bars + 0.6) inches wide: about 11 characters of size 8 per inch fit under it
    chars = max(6, int((0.3 * len(labels) + 0.6) * 11))
    ax.set_xticks(np.arange(len(groups)), [wrap_label(g, chars) for g in groups], fontsize=8)
    ax.set_ylabel(f"test {metric}")
    _title(ax, title)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]], lower_is_better: bool = False) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher or equal accuracy, one
    strictly; lower accuracy values are better with ``lower_is_better``), ordered by cost."""
    if lower_is_better:
        points = [(c, -a) for c, a in points]
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any(c <= cost and a >= acc and (c < cost or a > acc) for j, (c, a) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


COST_AXES = (("params_M", "parameters (M)"), ("detector_gflops", "detector GFLOPs / image (2 per MAC)"),
             ("latency_ms", "latency (ms / image)"))


def _cost_axes(results: StudyResults) -> tuple[tuple[str, str], ...]:
    metrics = getattr(results, "metrics", None)
    if metrics is None or metrics.gflops == "detector_gflops":
        return COST_AXES
    return tuple((metrics.gflops, "model GFLOPs / image (2 per MAC)") if key == "detector_gflops" else (key, label)
                 for key, label in COST_AXES)


def plot_pareto(results: StudyResults, path: Path, note: str = "") -> Path:
    """The primary test metric against parameters, FLOPs and latency; the Pareto front joined and labelled."""
    metrics = getattr(results, "metrics", None)
    accuracy = metrics.primary if metrics is not None else "mAP"
    lower = metrics.lower_better(accuracy) if metrics is not None else False
    fig = _figure(14.0, 4.4)
    axes = fig.subplots(1, len(COST_AXES))
    for ax, (metric, label) in zip(axes, _cost_axes(results)):
        usable = [c for c in results.configs
                  if math.isfinite(c.stats[metric].mean) and math.isfinite(c.stats[accuracy].mean)]
        if not usable:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(label)
            continue
        costs = [c.stats[metric].mean for c in usable]
        means, errs = zip(*(_mean_err(c, accuracy) for c in usable))
        ax.errorbar(costs, means, yerr=_errors(errs), fmt="o", color=TEST_COLOR, ecolor="#a0a0a0", capsize=2, markersize=4)
        front = pareto_front(list(zip(costs, means)), lower)
        ax.plot([costs[i] for i in front], [means[i] for i in front], color="#d04020", linewidth=1.3,
                drawstyle="steps-post", label="Pareto front")
        for i in front:
            ax.annotate(usable[i].configuration.id, (costs[i], means[i]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {accuracy}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Accuracy vs cost (mean over runs, 95% CI){note}", fontsize=10)
    return _save(fig, path)


def plot_ap_by_size(results: StudyResults, path: Path, note: str = "") -> Path:
    """AP of small, medium and large objects per configuration (mean over seeds, 95% CI)."""
    configs = results.configs
    fig = _figure(8.0, horizontal_bar_height([c.configuration.id for c in configs], 3))
    ax = fig.subplots()
    _horizontal_bars(ax, configs, (("mAP_small", "#80b060", "mAP_small"), ("mAP_medium", "#3070b0", "mAP_medium"),
                                   ("mAP_large", "#c06030", "mAP_large")), lambda c: c.configuration.id)
    ax.set_xlabel("test AP")
    _title(ax, f"AP by object size (COCO areas; n/a where a split has no objects of a size){note}")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_per_set(results: StudyResults, path: Path, note: str = "") -> Path:
    """The primary test metric on each test set (segmentation's ``results_per_set``: CAMO, COD10K, ...), one bar
    per set and configuration (mean over runs, 95% CI)."""
    metrics = results.metrics
    configs = results.configs
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    series = [(metrics.set_column(name), cmap(j % 10), name) for j, name in enumerate(metrics.sets)]
    fig = _figure(8.0, horizontal_bar_height([c.configuration.id for c in configs], len(series)))
    ax = fig.subplots()
    _horizontal_bars(ax, configs, series, lambda c: c.configuration.id)
    ax.set_xlabel(f"test {metrics.primary}")
    _title(ax, f"Test {metrics.primary} per test set (mean over runs, 95% CI){note}")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_metric_bars(labels: list[str], means: Sequence[float], cis: Sequence[tuple[float, float]], path: Path,
                     title: str, xlabel: str) -> Path:
    """One horizontal bar per label (first on top) with its 95% interval, clipped to [0, 1]: the segmentation
    demo's ranking plot."""
    fig = _figure(8.0, horizontal_bar_height(labels, 1))
    ax = fig.subplots()
    y = np.arange(len(labels))
    errs = clipped_errors(list(means), [lo for lo, _ in cis], [hi for _, hi in cis])
    ax.barh(y, np.nan_to_num(np.asarray(means, dtype=np.float64)), 0.6, xerr=errs, capsize=3, color=TEST_COLOR,
            error_kw={"linewidth": 0.8})
    ax.set_yticks(y, [wrap_label(label, LABEL_CHARS) for label in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(xlabel)
    _title(ax, title)
    return _save(fig, path)
