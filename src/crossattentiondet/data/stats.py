"""``cadet data stats``: images, boxes per class and size, image sizes, per-channel mean/std on the 0-1 scale.

Mean and std are what ``data.modalities[].mean/std`` want (the model normalises ``x / scale``).
Box sizes use the COCO areas: small < 32^2, medium < 96^2, large otherwise (in pixels of the frame).

Outputs (``stats.json``, histogram PNGs) go to the current folder or a chosen one, never into the data set
(:func:`stats_output_paths`): a PNG in a modality folder would be read as a frame, a JSON file named like a
COCO label file as labels, and a data set may be read-only or shared.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossattentiondet.config import ConfigError, DataConfig
from crossattentiondet.data.checks import DTYPE_SCALE
from crossattentiondet.data.imageio import opencv_quiet
from crossattentiondet.data.sample import Sample
from crossattentiondet.data.source import DataSource, open_source
from crossattentiondet.io import atomic_write

STATS_FILE = "stats.json"
SMALL_AREA = 32 ** 2
MEDIUM_AREA = 96 ** 2
HISTOGRAM_BINS = 256


def size_bucket(area: float) -> str:
    """COCO size class of a box area in pixels."""
    return "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"


@dataclass
class _Partial:
    """Sums over some frames (reduced across threads)."""

    frames: int = 0
    unreadable: list[str] = field(default_factory=list)
    negatives: int = 0
    sizes: Counter = field(default_factory=Counter)
    per_class: Counter = field(default_factory=Counter)
    buckets: Counter = field(default_factory=Counter)  # (label, bucket) -> n
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    squares: dict[str, np.ndarray] = field(default_factory=dict)
    pixels: dict[str, int] = field(default_factory=dict)
    hist: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, set[str]] = field(default_factory=dict)

    def add(self, other: _Partial) -> None:
        self.frames += other.frames
        self.unreadable += other.unreadable
        self.negatives += other.negatives
        self.sizes.update(other.sizes)
        self.per_class.update(other.per_class)
        self.buckets.update(other.buckets)
        for name, seen in other.dtypes.items():
            self.dtypes.setdefault(name, set()).update(seen)
        for name in other.sums:
            if name not in self.sums:
                self.sums[name], self.squares[name] = other.sums[name].copy(), other.squares[name].copy()
                self.pixels[name], self.hist[name] = other.pixels[name], other.hist[name].copy()
            else:
                self.sums[name] += other.sums[name]
                self.squares[name] += other.squares[name]
                self.pixels[name] += other.pixels[name]
                self.hist[name] += other.hist[name]


def _frame_stats(sample: Sample, scales: dict[str, float | None], histograms: bool) -> _Partial:
    part = _Partial(frames=1)
    part.sizes[f"{sample.width}x{sample.height}"] += 1
    if len(sample.labels) == 0:
        part.negatives = 1
    areas = (sample.boxes[:, 2] - sample.boxes[:, 0]) * (sample.boxes[:, 3] - sample.boxes[:, 1])
    for label, area in zip(sample.labels.tolist(), areas.tolist()):
        part.per_class[label] += 1
        part.buckets[(label, size_bucket(area))] += 1
    for name, array in sample.modalities.items():
        scale = scales.get(name) or DTYPE_SCALE[str(array.dtype)]
        part.dtypes[name] = {str(array.dtype)}
        flat = array.reshape(-1, array.shape[-1]).astype(np.float64) / scale
        part.sums[name] = flat.sum(axis=0)
        part.squares[name] = np.square(flat).sum(axis=0)
        part.pixels[name] = flat.shape[0]
        if histograms:
            bins = np.clip((flat * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
            part.hist[name] = np.stack([np.bincount(bins[:, c], minlength=HISTOGRAM_BINS)
                                        for c in range(flat.shape[1])])
        else:
            part.hist[name] = np.zeros((flat.shape[1], HISTOGRAM_BINS), np.int64)
    return part


def compute_stats(source: DataSource | str | Path, data: DataConfig | None = None, *, layout: str | None = None,
                  stems: list[str] | None = None, scales: dict[str, float] | None = None,
                  histograms_dir: str | Path | None = None, workers: int | None = None) -> dict[str, Any]:
    """Statistics of a data set (an opened :class:`DataSource` or its root) as a JSON-ready dict.

    ``stems`` limits them to some frames (default: all); ``scales`` overrides per-modality scales (default:
    the configured scale, else the data set's metadata, else each file's dtype max); frames that cannot be
    read are counted (``unreadable``) and left out. ``histograms_dir``: also save one PNG per modality there
    (a folder outside the data set).
    """
    if not isinstance(source, DataSource):
        source = open_source(source, data, layout)
    stems = list(source.stems if stems is None else stems)
    resolved: dict[str, float | None] = {
        m.name: (scales or {}).get(m.name) or m.scale or source.scale_hints.get(m.name) for m in source.modalities}
    want_hist = histograms_dir is not None
    if want_hist and Path(histograms_dir).resolve().is_relative_to(Path(source.root).resolve()):
        raise ConfigError(f"histograms_dir {histograms_dir} is inside the data set {source.root}: statistics are "
                          "never written into a data set")

    def one(stem: str) -> _Partial:
        sample, _, problems = source.load(stem)
        if sample is None or any(p.severity == "error" for p in problems):
            return _Partial(unreadable=[stem])
        return _frame_stats(sample, resolved, want_hist)

    total = _Partial()
    workers = workers or min(8, os.cpu_count() or 1)
    with opencv_quiet():
        if workers > 1 and len(stems) >= 4:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for part in pool.map(one, stems, chunksize=8):
                    total.add(part)
        else:
            for stem in stems:
                total.add(one(stem))
    names = source.class_names
    label_name = {i + 1: n for i, n in enumerate(names)}
    channels: dict[str, Any] = {}
    for m in source.modalities:
        if m.name not in total.pixels:
            continue
        n = total.pixels[m.name]
        mean = total.sums[m.name] / n
        std = np.sqrt(np.maximum(total.squares[m.name] / n - np.square(mean), 0.0))
        seen = sorted(total.dtypes.get(m.name, ()))
        # the scale used: configured / recorded, else the dtype max (None: files of both depths, each its own)
        scale = resolved[m.name] or (DTYPE_SCALE[seen[0]] if len(seen) == 1 else None)
        channels[m.name] = {"scale": scale, "dtypes": seen, "mean": [round(float(v), 6) for v in mean],
                            "std": [round(float(v), 6) for v in std]}
    widths = [int(k.split("x")[0]) for k in total.sizes]
    heights = [int(k.split("x")[1]) for k in total.sizes]
    boxes_total = sum(total.per_class.values())
    buckets = {b: sum(v for (_, bb), v in total.buckets.items() if bb == b) for b in ("small", "medium", "large")}
    stats: dict[str, Any] = {
        "root": str(source.root), "layout": source.layout, "images": total.frames,
        "unreadable": len(total.unreadable), "negatives": total.negatives, "classes": list(names),
        "boxes": {
            "total": boxes_total,
            "per_image": round(boxes_total / total.frames, 4) if total.frames else 0.0,
            "per_class": {label_name.get(k, str(k)): total.per_class.get(k, 0) for k in sorted(label_name)},
            "sizes": buckets,
            "sizes_per_class": {label_name.get(k, str(k)): {b: total.buckets.get((k, b), 0)
                                                            for b in ("small", "medium", "large")}
                                for k in sorted(label_name)},
        },
        "image_sizes": dict(sorted(total.sizes.items(), key=lambda kv: -kv[1])),
        "width": {"min": min(widths), "max": max(widths)} if widths else None,
        "height": {"min": min(heights), "max": max(heights)} if heights else None,
        "channels": channels,
    }
    if want_hist:
        stats["histograms"] = save_histograms({k: v for k, v in total.hist.items()}, Path(histograms_dir))
    return stats


def stats_output_paths(root: str | Path, out: str | Path | None = None,
                       histograms: bool | str | Path | None = None) -> tuple[Path, Path | None]:
    """Where ``cadet data stats`` writes: (the JSON file, the histogram folder or None).

    ``out``: a folder (``<out>/stats.json``) or a ``.json`` file; None: the current folder.
    ``histograms``: None/False for none, True for the output folder, or a folder. Nothing is created here;
    a location inside the data set ``root`` is a ConfigError naming the option.
    """
    json_path = Path(STATS_FILE) if out is None else Path(out)
    if out is not None and json_path.suffix.lower() != ".json":
        json_path = json_path / STATS_FILE
    hist_dir = None
    if histograms is True:
        hist_dir = json_path.parent
    elif histograms:
        hist_dir = Path(histograms)
    data_root = Path(root).resolve()
    checks = [("--out", out, json_path) if out is not None else ("the current folder", Path.cwd(), json_path)]
    if histograms is not True and hist_dir is not None:  # True: the folder checked above
        checks.append(("--histograms", hist_dir, hist_dir))
    for option, shown, path in checks:
        if path.resolve().is_relative_to(data_root):
            raise ConfigError(f"{option} {shown} is inside the data set {root}: statistics are never written into "
                              "a data set (give --out and --histograms a folder outside it)")
    return json_path, hist_dir


def save_histograms(histograms: dict[str, np.ndarray], out_dir: Path) -> list[str]:
    """One PNG per modality (a line per channel, value on the 0-1 scale); returns the files written."""
    # a bare Figure renders with the Agg canvas and leaves pyplot's global backend alone
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS
    written = []
    for name, hist in histograms.items():
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        labels = ["R", "G", "B"] if hist.shape[0] == 3 else [f"ch{c}" for c in range(hist.shape[0])]
        for c in range(hist.shape[0]):
            share = hist[c] / max(1, hist[c].sum())
            ax.plot(centres, share, label=labels[c] if hist.shape[0] > 1 else name)
        ax.set_xlabel("value (0-1 scale)")
        ax.set_ylabel("share of pixels")
        ax.set_title(f"{name} histogram")
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"histogram_{name}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100))
        written.append(str(path))
    return written
