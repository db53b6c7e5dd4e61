"""``cadet data check``: read every frame and list every problem at once, with file names.

:func:`check_dataset` decodes every file (a truncated file is only found by decoding it), parses every
label, and resolves per-modality scales; it never raises for bad files, it reports them
(:class:`CheckReport`). Reading runs on a thread pool (OpenCV and numpy release the GIL). With
``check_split`` it also makes the configured split of the readable frames (as training would) and reports
a split that cannot be made (error) or a split that is empty or holds fewer than
:data:`~crossattentiondet.data.splits.MIN_SPLIT_GROUPS` independent groups (warning).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossattentiondet.config import DataConfig, SplitConfig
from crossattentiondet.data.imageio import opencv_quiet
from crossattentiondet.data.problems import FrameInfo, Problem, ProblemReport
from crossattentiondet.data.source import DataSource, open_source
from crossattentiondet.data.splits import SplitPlan, make_splits, split_warnings
from crossattentiondet.errors import DataError

DTYPE_SCALE = {"uint8": 255.0, "uint16": 65535.0}


@dataclass
class CheckReport(ProblemReport):
    """Everything a check found. ``problems`` are in frame order; ``infos`` has one entry per frame."""

    root: str
    layout: str
    modalities: list[str]
    class_names: list[str]
    frames: int
    problems: list[Problem] = field(default_factory=list)
    infos: dict[str, FrameInfo] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    split: SplitPlan | None = None  # with check_split: the split training would use

    @property
    def dtypes(self) -> dict[str, str]:
        """Per modality, the dtype of its files ("uint8" or "uint16"; the wider one where they mix)."""
        found: dict[str, str] = {}
        for info in self.infos.values():
            for name, dtype in info.dtypes.items():
                if found.get(name) != "uint16":
                    found[name] = dtype
        return found


    @property
    def fatal(self) -> list[Problem]:
        """Errors that concern the whole data set (no frame to skip), e.g. an unreadable COCO file."""
        return [p for p in self.errors if p.stem is None]

    @property
    def negatives(self) -> int:
        """Readable frames without any box."""
        return sum(1 for stem, info in self.infos.items() if info.boxes == 0 and stem not in self.bad_stems)

    def summary(self) -> str:
        """One line: frames, errors (in how many frames), warnings."""
        bad = len(self.bad_stems)
        text = (f"{self.frames} frames ({self.layout} layout, modalities {', '.join(self.modalities)}, "
                f"{len(self.class_names)} classes): {len(self.errors)} errors")
        if self.errors and not bad:
            text += " (data-set wide)"
        elif self.errors:
            text += f" in {bad} frames" + (f" + {len(self.fatal)} data-set wide" if self.fatal else "")
        return text + f", {len(self.warnings)} warnings"

    def describe_errors(self, limit: int = 5) -> str:
        """Summary plus the first ``limit`` errors, on one line (for DataError messages)."""
        parts = [str(p) for p in self.errors[:limit]]
        if len(self.errors) > limit:
            parts.append(f"... and {len(self.errors) - limit} more (cadet data check {self.root})")
        return self.summary() + (": " + "; ".join(parts) if parts else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``cadet data check --json``)."""
        return {
            "root": self.root, "layout": self.layout, "modalities": self.modalities,
            "class_names": self.class_names, "frames": self.frames, "ok": self.ok,
            "errors": len(self.errors), "warnings": len(self.warnings), "bad_frames": len(self.bad_stems),
            "negatives": self.negatives, "scales": self.scales, "notes": self.notes,
            "problems": [p.to_dict() for p in self.problems],
            "split": None if self.split is None else {
                "method": self.split.method, "grouping": self.split.grouping, "counts": self.split.counts(),
                "group_counts": self.split.group_counts, "gap": self.split.gap,
                "dropped": self.split.dropped_counts()},
        }


def _scan(source: DataSource, stem: str) -> tuple[FrameInfo, list[Problem]]:
    _, info, problems = source.load(stem, peaks=True)  # the pixels are dropped here: only what was learnt is kept
    return info, problems


def scan_frames(source: DataSource, stems: Iterable[str], workers: int | None = None
                ) -> list[tuple[FrameInfo, list[Problem]]]:
    """Read ``stems`` on a thread pool; results in the order given."""
    stems = list(stems)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(stems) < 4:
        return [_scan(source, s) for s in stems]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: _scan(source, s), stems, chunksize=8))


def _declared_scale_problems(source: DataSource, modality: str, scale: float, infos: dict[str, FrameInfo],
                             by_dtype: dict[str, list[str]]) -> list[Problem]:
    """A scale from the data set's metadata file does not vouch for the files: values above it, and 8-bit
    files among 16-bit ones (which a scale above 255 would read far too dark), are still problems."""
    where = source.metadata_path.name if source.metadata_path is not None else "the data set's metadata file"
    problems = []
    for stem, info in infos.items():
        peak = info.peaks.get(modality)
        if peak is not None and peak > scale:
            problems.append(Problem("above_scale", str(source.modality_file(stem, modality)),
                                    f"{info.dtypes[modality]} values up to {peak} above the declared scale {scale:g} "
                                    f"of modality '{modality}' ({where})", stem))
    if len(by_dtype) > 1:
        wide = by_dtype.get("uint16", [])
        example = source.modality_file(wide[0], modality) if wide else None
        if scale > 255:
            for stem in by_dtype.get("uint8", []):
                problems.append(Problem(
                    "mixed_depth", str(source.modality_file(stem, modality)),
                    f"mixed 8-bit and 16-bit files for modality '{modality}': an 8-bit file, but {len(wide)} files are "
                    f"16-bit (e.g. {example}) and the declared scale is {scale:g} ({where}); convert it to 16 bits",
                    stem))
        else:  # 16-bit files read on an 8-bit scale are fine while their values stay below it (checked above)
            folder = source.modality_file(wide[0], modality).parent if wide else source.root
            problems.append(Problem(
                "mixed_depth", str(folder), f"mixed 8-bit and 16-bit files for modality '{modality}': {len(wide)} "
                f"16-bit files (e.g. {example}), read on the declared scale {scale:g} ({where})", severity="warning"))
    return problems


def scale_problems(source: DataSource, infos: dict[str, FrameInfo]) -> tuple[dict[str, float], list[Problem]]:
    """Per-modality scale (config, else the data set's metadata, else the dtype max) and mixed-depth problems.

    A scale from the metadata file is checked against the files (values above it, mixed depths); a scale
    from the config is the user's word.
    """
    scales: dict[str, float] = {}
    problems: list[Problem] = []
    for index, m in enumerate(source.modalities):
        if m.scale is not None:
            scales[m.name] = float(m.scale)
            continue
        by_dtype: dict[str, list[str]] = {}
        for stem, info in infos.items():
            if m.name in info.dtypes:
                by_dtype.setdefault(info.dtypes[m.name], []).append(stem)
        if m.name in source.scale_hints:
            scales[m.name] = source.scale_hints[m.name]
            problems += _declared_scale_problems(source, m.name, scales[m.name], infos, by_dtype)
            continue
        if len(by_dtype) > 1:
            parts = [f"{len(stems)} {dtype} files (e.g. {source.modality_file(stems[0], m.name)})"
                     for dtype, stems in sorted(by_dtype.items())]
            folder = source.root / m.source if isinstance(m.source, str) else source.root
            problems.append(Problem("mixed_depth", str(folder), f"modality '{m.name}' mixes 8- and 16-bit files: "
                                    f"{' and '.join(parts)}; convert them to one depth or set "
                                    f"data.modalities[{index}].scale"))
            scales[m.name] = DTYPE_SCALE["uint16"]
        else:
            dtype = next(iter(by_dtype), "uint8")
            scales[m.name] = DTYPE_SCALE[dtype]
    return scales, problems


def no_boxes_problems(source: DataSource, report: CheckReport) -> list[Problem]:
    """A warning when the readable frames hold not a single box: training would learn nothing and report
    mAP NaN without complaint (labels in the wrong folder, every class id unnamed, empty label files)."""
    if not source.require_labels or report.fatal:  # a broken label file says more than "no boxes" would
        return []
    bad = report.bad_stems
    readable = [stem for stem, info in report.infos.items() if stem not in bad]
    if not readable or any(report.infos[stem].boxes for stem in readable):
        return []
    return [Problem("no_boxes", str(source.labels.path),
                    f"not a single box in the {len(readable)} readable frames: training would learn nothing (mAP "
                    f"NaN); check the labels and the class names ({source.labels.names_source or 'none'})",
                    severity="warning")]


def split_problems(source: DataSource, usable: list[str], config: SplitConfig
                   ) -> tuple[SplitPlan | None, list[Problem]]:
    """Make the split of ``usable`` frames as training would; problems: the split error, or its warnings."""
    suffixes = sorted({m.suffix for m in source.modalities if m.suffix}, key=len, reverse=True)
    where = str(source.root)
    try:
        plan = make_splits(usable, config, partitions=source.partitions, known=set(source.stems),
                           root=source.root, suffixes=suffixes)
    except DataError as err:
        return None, [Problem("split", where, str(err))]
    problems = [Problem("few_groups", where, text, severity="warning") for text in split_warnings(plan)]
    return plan, problems


def _split_note(plan: SplitPlan, config: SplitConfig) -> str:
    parts = ", ".join(f"{name} {len(stems)} frames in {plan.group_counts.get(name, 0)} groups"
                      for name, stems in plan.splits.items())
    dropped = sum(plan.dropped_counts().values())
    gap = f"; {dropped} frames left out by the gap (data.split.gap={plan.gap})" if dropped else ""
    return f"split ({plan.method}, {plan.grouping}, seed {config.seed}): {parts}{gap}"


def check_dataset(source: DataSource | str | Path, data: DataConfig | None = None, *, layout: str | None = None,
                  workers: int | None = None, check_split: bool = False) -> CheckReport:
    """Check a data set (an opened :class:`DataSource` or its root folder) and report every problem.

    Finds unreadable/truncated files, wrong channel counts or pixel types, modalities of different sizes,
    missing partner files or labels, bad label lines, out-of-image and zero-area boxes, unnamed classes,
    NaN/inf, duplicate stems and modalities mixing bit depths. ``check_split``: also the split of
    ``data.split`` (default settings without ``data``) over the frames training would use: a split that
    cannot be made, an empty split, a split with fewer than MIN_SPLIT_GROUPS independent groups. DataError
    only if the data set cannot be opened at all.
    """
    if not isinstance(source, DataSource):
        source = open_source(source, data, layout)
    with opencv_quiet():
        results = scan_frames(source, source.stems, workers)
    infos = {info.stem: info for info, _ in results}
    problems = list(source.global_problems)
    for _, frame_problems in results:
        problems.extend(frame_problems)
    scales, depth_problems = scale_problems(source, infos)
    problems.extend(depth_problems)
    report = CheckReport(root=str(source.root), layout=source.layout, modalities=source.modality_names,
                         class_names=list(source.class_names), frames=len(source.stems), problems=problems,
                         infos=infos, scales=scales, notes=list(source.notes))
    report.problems += no_boxes_problems(source, report)
    if check_split:
        config = data if data is not None else DataConfig()
        bad = report.bad_stems  # what data.on_error=skip leaves out (with "fail" training would not start)
        usable = [s for s in source.stems
                  if s not in bad and (config.keep_empty or (s in infos and infos[s].boxes > 0))]
        report.split, found = split_problems(source, usable, config.split)
        report.problems.extend(found)
        if report.split is not None:
            report.notes.append(_split_note(report.split, config.split))
            warned = {p.message for p in found}
            report.notes += [f"split: {n}" for n in report.split.notes if n not in warned]
    return report


def resolve_modality_scales(source: DataSource, infos: dict[str, FrameInfo] | None = None) -> dict[str, float]:
    """Explicit scale per modality: ``scale`` from the config, else from the data set's metadata file, else
    255.0 or 65535.0 from the dtype of the modality's files. DataError if a modality mixes 8- and 16-bit files
    (or, with a scale from the metadata file, has values above it).

    ``infos`` (from a check) avoids reading the files again.
    """
    if infos is None:
        infos = {info.stem: info for info, _ in scan_frames(source, source.stems)}
    scales, problems = scale_problems(source, infos)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError(str(errors[0]))
    return scales
