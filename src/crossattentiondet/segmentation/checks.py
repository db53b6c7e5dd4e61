"""``cadet data check`` / ``stats`` for segmentation data: every mask and frame read, every problem at once.

:func:`check_seg_source` decodes every modality file and every mask (a truncated file is only found by
decoding it) and reports, each named by file: missing masks, masks without a frame, masks of another size
than their frame, mask values outside the class range (255 = ignore is allowed; COD GTs are anti-aliased
0-255 maps, binarised at > 128, so no value of theirs is wrong), unreadable files, modalities of different
sizes, modalities mixing 8- and 16-bit files. Masks without a single object pixel are counted and named in
one warning (COD10K's NonCAM images, when included, are all empty by design). Nothing is raised for a file.

:func:`seg_stats`: frames per partition and test set, class pixel frequencies, foreground fraction,
image sizes and per-modality channel mean / std on the 0-1 scale.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossattentiondet.config import SplitConfig
from crossattentiondet.data.imageio import opencv_quiet
from crossattentiondet.data.problems import Problem, ProblemReport
from crossattentiondet.errors import DataError
from crossattentiondet.segmentation.layouts import IGNORE_INDEX, SPLITS, SegSource, seg_splits

DTYPE_SCALE = {"uint8": 255.0, "uint16": 65535.0}
EMPTY_NAMED = 5  # empty masks named in the warning (all are in the report's empty_stems)


@dataclass
class _Scan:
    """What reading one frame and its mask found."""

    stem: str
    height: int = 0
    width: int = 0
    dtypes: dict[str, str] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)  # the listing's for this frame, then the reading's
    listed: int = 0
    class_pixels: np.ndarray | None = None  # (K,) pixel counts; None without a readable mask
    ignore_pixels: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # per modality, raw values (stats only)
    squares: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def foreground(self) -> float | None:
        """Share of the labelled (not ignored) pixels that are not background; None without a mask."""
        if self.class_pixels is None:
            return None
        labelled = int(self.class_pixels.sum())
        return float(self.class_pixels[1:].sum()) / labelled if labelled else 0.0


def _scan(source: SegSource, stem: str, channel_stats: bool) -> _Scan:
    frame = source.load(stem)
    scan = _Scan(stem, frame.height, frame.width, frame.dtypes, problems=frame.problems, listed=frame.listed)
    for name, array in frame.arrays.items():
        scan.peaks[name] = int(array.max(initial=0))
        if channel_stats and frame.ok:
            flat = array.reshape(-1, array.shape[-1]).astype(np.float64)
            scan.sums[name] = flat.sum(axis=0)
            scan.squares[name] = np.square(flat).sum(axis=0)
    if frame.mask is not None:
        counts = np.bincount(frame.mask.ravel(), minlength=256)
        scan.class_pixels = counts[: len(source.class_names)].astype(np.int64)
        scan.ignore_pixels = int(counts[IGNORE_INDEX])
    return scan


def scan_items(source: SegSource, stems: list[str], channel_stats: bool = False, workers: int | None = None
               ) -> list[_Scan]:
    """Read ``stems`` on a thread pool (OpenCV and numpy release the GIL); results in the order given."""
    workers = workers or min(8, os.cpu_count() or 1)
    source.frame_problems("")  # index the listing's problems once, before the threads read them
    with opencv_quiet():
        if workers <= 1 or len(stems) < 4:
            return [_scan(source, s, channel_stats) for s in stems]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda s: _scan(source, s, channel_stats), stems, chunksize=8))


@dataclass
class SegCheckReport(ProblemReport):
    """Everything a segmentation check found; ``problems`` are the listing's, then per frame in stem order."""

    frames: int = 0
    problems: list[Problem] = field(default_factory=list)
    empty_masks: int = 0
    dtypes: dict[str, str] = field(default_factory=dict)  # per modality; the wider one where depths mix
    scales: dict[str, float] = field(default_factory=dict)  # per modality: the raw value that maps to 1.0
    # (K,) pixel counts over the readable masks
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ignore_pixels: int = 0
    root: str = ""
    layout: str = ""
    modalities: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    binary: bool = True
    notes: list[str] = field(default_factory=list)
    empty_stems: list[str] = field(default_factory=list)
    split: dict[str, int] | None = None  # with a split config: frames per split


    def summary(self) -> str:
        """One line: frames, errors (in how many frames), empty masks, warnings."""
        kind = "binary" if self.binary else f"{len(self.class_names)} classes"
        text = (f"{self.frames} frames ({self.layout} layout, modalities {', '.join(self.modalities)}, "
                f"{kind}): {len(self.errors)} errors")
        bad, wide = len(self.bad_stems), sum(1 for p in self.errors if p.stem is None)
        if self.errors and not bad:
            text += " (data-set wide)"
        elif self.errors:
            text += f" in {bad} frames" + (f" + {wide} data-set wide" if wide else "")
        return text + f", {len(self.warnings)} warnings, {self.empty_masks} empty masks"

    def describe_errors(self, limit: int = 5) -> str:
        """Summary plus the first ``limit`` errors, on one line (for DataError messages)."""
        parts = [str(p) for p in self.errors[:limit]]
        if len(self.errors) > limit:
            parts.append(f"... and {len(self.errors) - limit} more (cadet data check {self.root} --task "
                         "segment)")
        return self.summary() + (": " + "; ".join(parts) if parts else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``cadet data check --json``)."""
        pixels = self.class_pixels.tolist()
        return {
            "task": "segment", "root": self.root, "layout": self.layout, "modalities": self.modalities,
            "class_names": self.class_names, "binary": self.binary, "frames": self.frames, "ok": self.ok,
            "errors": len(self.errors), "warnings": len(self.warnings), "bad_frames": len(self.bad_stems),
            "empty_masks": self.empty_masks, "empty_stems": self.empty_stems, "dtypes": self.dtypes,
            "scales": self.scales, "class_pixels": dict(zip(self.class_names, pixels)),
            "ignore_pixels": self.ignore_pixels, "notes": self.notes, "split": self.split,
            "problems": [p.to_dict() for p in self.problems],
        }


def _scales(source: SegSource, scans: list[_Scan]) -> tuple[dict[str, str], dict[str, float], list[Problem]]:
    """Per modality: dtype, scale (config, else the data set's metadata, else the dtype max), problems."""
    dtypes: dict[str, str] = {}
    scales: dict[str, float] = {}
    problems: list[Problem] = []
    for index, m in enumerate(source.modalities):
        by_dtype: dict[str, list[str]] = {}
        for scan in scans:
            if m.name in scan.dtypes:
                by_dtype.setdefault(scan.dtypes[m.name], []).append(scan.stem)
        dtypes[m.name] = "uint16" if "uint16" in by_dtype else next(iter(by_dtype), "uint8")
        declared = m.scale if m.scale is not None else source.scale_hints.get(m.name)
        if declared is not None:
            scales[m.name] = float(declared)
            # a metadata file's scale is checked against the pixels; the config's is the user's word
            for scan in scans if m.scale is None else ():
                peak = scan.peaks.get(m.name)
                if peak is not None and peak > declared:
                    problems.append(Problem("above_scale", str(source.items[scan.stem].files[m.name]),
                                            f"values up to {peak} above the declared scale {declared:g} of "
                                            f"modality '{m.name}' (the data set's metadata file)", scan.stem))
            continue
        if len(by_dtype) > 1:
            parts = [f"{len(stems)} {dtype} files (e.g. {source.items[stems[0]].files[m.name]})"
                     for dtype, stems in sorted(by_dtype.items())]
            problems.append(Problem("mixed_depth", str(source.root), f"modality '{m.name}' mixes 8- and "
                                    f"16-bit files: {' and '.join(parts)}; convert them to one depth or set "
                                    f"data.modalities[{index}].scale"))
        scales[m.name] = DTYPE_SCALE[dtypes[m.name]]
    return dtypes, scales, problems


def _empty_warning(source: SegSource, empty: list[str], frames: int) -> Problem:
    named = ", ".join(str(source.items[s].mask) for s in empty[:EMPTY_NAMED])
    more = f" and {len(empty) - EMPTY_NAMED} more" if len(empty) > EMPTY_NAMED else ""
    what = "object" if source.binary else "non-background"
    return Problem("empty_mask", str(source.items[empty[0]].mask),
                   f"{len(empty)} of {frames} masks have no {what} pixel: {named}{more}", None, "warning")


def check_seg_source(source: SegSource, *, split: SplitConfig | None = None, workers: int | None = None
                     ) -> SegCheckReport:
    """Check every frame and mask of ``source``; every problem at once (see the module docstring).

    ``split``: also make the split training would use over the frames without errors; a split that cannot
    be made is an error, a split with a share but no frame a warning, the counts a note.
    """
    scans = scan_items(source, source.stems, workers=workers)
    problems = list(source.problems)
    for scan in scans:
        problems += scan.problems[scan.listed:]
    dtypes, scales, depth = _scales(source, scans)
    problems += depth
    classes = len(source.class_names)
    pixels = np.zeros(classes, np.int64)
    ignore = 0
    empty = []
    for scan in scans:
        if scan.class_pixels is None or not scan.ok:
            continue
        pixels += scan.class_pixels
        ignore += scan.ignore_pixels
        if not scan.class_pixels[1:].any():
            empty.append(scan.stem)
    if empty:
        problems.append(_empty_warning(source, empty, len(scans)))
    report = SegCheckReport(frames=len(scans), problems=problems, empty_masks=len(empty), dtypes=dtypes,
                            scales=scales, class_pixels=pixels, ignore_pixels=ignore, root=str(source.root),
                            layout=source.layout, modalities=source.modality_names,
                            class_names=list(source.class_names), binary=source.binary,
                            notes=list(source.notes), empty_stems=empty)
    if split is not None:
        bad = report.bad_stems
        usable = [s for s in source.stems if s not in bad]
        notes: list[str] = []
        try:
            splits = seg_splits(source, split, usable, notes=notes)
        except DataError as err:
            report.problems.append(Problem("split", str(source.root), str(err)))
        else:
            report.split = {n: len(v) for n, v in splits.items()}
            report.notes += notes
            for name in SPLITS:
                if not splits[name] and (getattr(split, name) > 0 or getattr(split, f"{name}_file")):
                    message = f"the {name} split is empty ({len(usable)} usable frames)"
                    report.problems.append(Problem("few_groups", str(source.root), message,
                                                   severity="warning"))
    return report


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, np.float64)
    return {"mean": round(float(array.mean()), 6), "median": round(float(np.median(array)), 6),
            "min": round(float(array.min()), 6), "max": round(float(array.max()), 6)}


def seg_stats(source: SegSource, workers: int | None = None) -> dict[str, Any]:
    """Statistics of a segmentation data set as a JSON-ready dict.

    Frames per partition and per test set, class pixel counts and frequencies (over labelled pixels),
    images holding each class, foreground fraction per image (mean / median / min / max), empty masks,
    image sizes, per-modality dtypes and channel mean / std on the 0-1 scale (for data.modalities[].mean/std).
    Frames with errors are counted (``unreadable``) and left out of the numbers.
    """
    scans = scan_items(source, source.stems, channel_stats=True, workers=workers)
    usable = [s for s in scans if s.ok]
    dtypes, scales, _ = _scales(source, usable)
    names = list(source.class_names)
    pixels = np.zeros(len(names), np.int64)
    images_with = np.zeros(len(names), np.int64)
    ignore = 0
    foreground: list[float] = []
    sizes: Counter = Counter()
    for scan in usable:
        sizes[f"{scan.width}x{scan.height}"] += 1
        if scan.class_pixels is None:
            continue
        pixels += scan.class_pixels
        images_with += scan.class_pixels > 0
        ignore += scan.ignore_pixels
        foreground.append(scan.foreground or 0.0)
    labelled = int(pixels.sum())
    channels: dict[str, Any] = {}
    for m in source.modalities:
        got = [s for s in usable if m.name in s.sums]
        if not got:
            continue
        count = sum(s.height * s.width for s in got)
        scale = scales[m.name]
        mean = sum(s.sums[m.name] for s in got) / count / scale
        second = sum(s.squares[m.name] for s in got) / count / scale ** 2
        std = np.sqrt(np.maximum(second - np.square(mean), 0.0))
        channels[m.name] = {"scale": scale, "dtype": dtypes[m.name],
                            "mean": [round(float(v), 6) for v in mean],
                            "std": [round(float(v), 6) for v in std]}
    widths = [s.width for s in usable]
    heights = [s.height for s in usable]
    per_set = Counter(item.set for item in source.items.values())
    return {
        "task": "segment", "root": str(source.root), "layout": source.layout, "binary": source.binary,
        "classes": names, "frames": len(scans), "unreadable": len(scans) - len(usable),
        "partitions": dict(Counter(item.partition or "none" for item in source.items.values())),
        "sets": {name: per_set[name] for name in source.sets()},
        "groups": len({item.group for item in source.items.values() if item.group}),
        "class_pixels": dict(zip(names, pixels.tolist())),
        "class_frequency": {n: round(float(v) / labelled, 6) if labelled else 0.0
                            for n, v in zip(names, pixels)},
        "class_images": dict(zip(names, images_with.tolist())),
        "ignore_pixels": ignore,
        "foreground_fraction": _summary(foreground),
        "empty_masks": sum(1 for s in usable if s.class_pixels is not None and not s.class_pixels[1:].any()),
        "missing_masks": sum(1 for item in source.items.values() if item.mask is None),
        "image_sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        "width": {"min": min(widths), "max": max(widths)} if widths else None,
        "height": {"min": min(heights), "max": max(heights)} if heights else None,
        "channels": channels,
    }


def format_seg_stats(stats: dict[str, Any]) -> str:
    """Human-readable lines of :func:`seg_stats` output."""
    sizes = ", ".join(f"{k} x{v}" for k, v in list(stats["image_sizes"].items())[:5])
    more = " ..." if len(stats["image_sizes"]) > 5 else ""
    kind = "binary" if stats["binary"] else f"{len(stats['classes'])} classes"
    lines = [
        f"frames {stats['frames']} ({stats['unreadable']} with errors), layout {stats['layout']}, {kind}",
        "partitions: " + ", ".join(f"{k} {v}" for k, v in stats["partitions"].items())
        + "; sets: " + ", ".join(f"{k} {v}" for k, v in stats["sets"].items())
        + (f"; {stats['groups']} sub-class groups" if stats["groups"] else ""),
        f"image sizes: {sizes}{more}",
        "class pixels (share of labelled pixels): "
        + ", ".join(f"{n} {stats['class_frequency'][n]:.4f}" for n in stats["classes"])
        + (f"; ignored pixels {stats['ignore_pixels']}" if stats["ignore_pixels"] else ""),
    ]
    fg = stats["foreground_fraction"]
    if fg is not None:
        lines.append(f"foreground per image: mean {fg['mean']:.4f}, median {fg['median']:.4f}, "
                     f"min {fg['min']:.4f}, max {fg['max']:.4f}; {stats['empty_masks']} empty masks")
    lines.append("channel mean / std on the 0-1 scale (for data.modalities[].mean/std):")
    for name, ch in stats["channels"].items():
        mean = " ".join(f"{v:.4f}" for v in ch["mean"])
        std = " ".join(f"{v:.4f}" for v in ch["std"])
        lines.append(f"  {name:<10} {ch['dtype']} scale {ch['scale']:g}  mean {mean}  std {std}")
    return "\n".join(lines)
