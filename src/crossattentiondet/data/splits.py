"""Train / val / test splits that keep neighbouring video frames together.

Sources, in order of precedence:

1. split files (``data.split.train_file`` ...): lists of stems; splits without a file share the frames
   listed in no file by their ratios (with all three files, unlisted frames are not used);
2. the data set's own partition (LLVIP's ``test/`` folders, FLIR-aligned's ``align_validation.txt``, M3FD's
   ``meta/test.txt``): those frames are the test (and val) split, the rest is divided by the ratios of the
   remaining splits (LLVIP: val = 0.15 / 0.85 of its train folder with the default ratios);
3. seeded ratios over groups of frames.

Groups (``data.split.group_by``) never straddle a split:

* ``auto``: stems ending in a number are grouped per prefix (the text before the number). With at least
  ``SEQUENCE_PREFIXES`` (10) distinct prefixes the prefix names a sequence (``seq003_000017``) and each
  sequence is one group; otherwise each prefix's frames, in number order, form blocks of ``AUTO_BLOCK``
  (10) consecutive frames (``FLIR_00012``, LLVIP's ``010001``). Stems without a number stay alone.
* ``none``: every frame alone. ``blocks:N``: N consecutive frames in natural sort order.
* ``regex:<pattern>``: frames with the same first capture group (or whole match) form a group; frames the
  pattern does not match stay alone.

Same stems + same settings -> same split (numpy's seeded generator, groups in sorted order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossattentiondet.config import SplitConfig
from crossattentiondet.data.source import read_stem_list, resolve_path
from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json, read_json

SPLITS = ("train", "val", "test")
AUTO_BLOCK = 10
SEQUENCE_PREFIXES = 10
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def natural_key(stem: str) -> tuple[Any, ...]:
    """Sort key that orders ``frame_9`` before ``frame_10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", stem))


def group_stems(stems: list[str], group_by: str) -> dict[str, list[str]]:
    """Group key -> stems of the group (see the module docstring for the rules)."""
    ordered = sorted(stems, key=natural_key)
    if group_by == "none":
        return {s: [s] for s in ordered}
    if group_by.startswith("blocks:"):
        size = int(group_by.split(":", 1)[1])
        if size < 1:
            raise DataError(f"data.split.group_by: block size must be >= 1, got {group_by!r}")
        return {f"block{i // size}": ordered[i:i + size] for i in range(0, len(ordered), size)}
    if group_by.startswith("regex:"):
        pattern = re.compile(group_by[len("regex:"):])
        groups: dict[str, list[str]] = {}
        for stem in ordered:
            match = pattern.search(stem)
            key = "=" + stem if match is None else "re:" + (match.group(1) if pattern.groups else match.group(0))
            groups.setdefault(key, []).append(stem)
        return groups
    if group_by != "auto":
        raise DataError(f"data.split.group_by must be auto, none, blocks:<N> or regex:<pattern>, got {group_by!r}")
    by_prefix: dict[str, list[tuple[int, str]]] = {}
    groups = {}
    for stem in ordered:
        match = _NUMBERED.match(stem)
        if match is None:
            groups["=" + stem] = [stem]
        else:
            by_prefix.setdefault(match.group(1), []).append((int(match.group(2)), stem))
    whole_sequences = len(by_prefix) >= SEQUENCE_PREFIXES
    for prefix, numbered in by_prefix.items():
        numbered.sort()
        names = [s for _, s in numbered]
        if whole_sequences:
            groups[f"seq:{prefix}"] = names
        else:
            for i in range(0, len(names), AUTO_BLOCK):
                groups[f"blk:{prefix}#{i // AUTO_BLOCK}"] = names[i:i + AUTO_BLOCK]
    return groups


@dataclass
class SplitPlan:
    """The split: stems per split, how it was made, and notes worth logging."""

    splits: dict[str, list[str]]
    method: str  # "files", "partition" or "ratios"
    groups: int = 0
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: len(stems) for name, stems in self.splits.items()}


def _assign_groups(groups: dict[str, list[str]], ratios: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Seeded shuffle of the groups, then largest groups first, each to the split furthest below its target.

    Which groups go where is random (the shuffle); how many frames each split gets follows the ratios as
    closely as whole groups allow. A split that asked for frames but got none then takes the smallest group
    of the split with the most frames (when that one has at least two).
    """
    names = list(ratios)
    total_ratio = sum(ratios.values())
    keys = sorted(groups)
    assigned: dict[str, list[str]] = {name: [] for name in names}  # group keys per split
    if keys and total_ratio > 0:
        shuffled = [keys[int(i)] for i in np.random.default_rng(seed).permutation(len(keys))]
        ordered = sorted(shuffled, key=lambda k: -len(groups[k]))  # stable: equal sizes keep the shuffle
        frames = sum(len(g) for g in groups.values())
        target = {n: ratios[n] / total_ratio * frames for n in names}
        filled = dict.fromkeys(names, 0)
        for key in ordered:
            wanting = [n for n in names if ratios[n] > 0]
            best = max(wanting, key=lambda n: (target[n] - filled[n], target[n]))
            assigned[best].append(key)
            filled[best] += len(groups[key])
        for name in names:
            if ratios[name] > 0 and not assigned[name]:
                donor = max(names, key=lambda n: (len(assigned[n]) >= 2, filled[n]))
                if len(assigned[donor]) >= 2:
                    smallest = min(assigned[donor], key=lambda k: len(groups[k]))
                    assigned[donor].remove(smallest)
                    assigned[name].append(smallest)
                    filled[donor] -= len(groups[smallest])
                    filled[name] += len(groups[smallest])
    return {name: sorted(s for key in assigned[name] for s in groups[key]) for name in names}


def make_splits(stems: list[str], config: SplitConfig, *, partitions: dict[str, str] | None = None,
                known: set[str] | None = None, root: Path | None = None,
                suffixes: list[str] | None = None) -> SplitPlan:
    """Split ``stems`` (the usable frames) into train / val / test.

    ``partitions`` is the data set's own split (stem -> split); ``known`` every frame of the data set (a
    split file naming a frame outside it is a DataError, one naming an excluded frame only a note);
    ``root`` resolves relative split-file paths; ``suffixes`` are modality file-name suffixes to strip.
    """
    usable = set(stems)
    known = set(known) if known is not None else usable
    root = root or Path(".")
    fixed: dict[str, list[str]] = {}
    notes: list[str] = []
    files = {name: getattr(config, f"{name}_file") for name in SPLITS if getattr(config, f"{name}_file")}
    method = "ratios"
    if files:
        method = "files"
        owner: dict[str, str] = {}
        for name, text in files.items():
            path = resolve_path(text, root)
            if not path.is_file():
                raise DataError(f"split file not found: {path} (data.split.{name}_file)")
            listed = read_stem_list(path, known, suffixes)
            unknown = [s for s in listed if s not in known]
            if unknown:
                raise DataError(f"{path}: {len(unknown)} stems are not in the data set (first: "
                                f"{', '.join(unknown[:3])})")
            twice = [s for s in listed if s in owner and owner[s] != name]
            if twice:
                raise DataError(f"{path}: {len(twice)} stems are also in the {owner[twice[0]]} split file (first: "
                                f"{twice[0]})")
            excluded = [s for s in listed if s not in usable]
            if excluded:
                notes.append(f"{path}: {len(excluded)} listed frames are excluded (bad or without boxes)")
            fixed[name] = sorted({s for s in listed if s in usable})
            for s in listed:
                owner[s] = name
    elif partitions:
        own = {name: sorted(s for s in stems if partitions.get(s) == name) for name in ("val", "test")}
        fixed = {name: members for name, members in own.items() if members}
        if fixed:
            method = "partition"
            notes.append("the data set's own partition gives " +
                         ", ".join(f"{name} ({len(m)} frames)" for name, m in fixed.items()))
    taken = {s for members in fixed.values() for s in members}
    pool = [s for s in stems if s not in taken]
    remaining = {name: float(getattr(config, name)) for name in SPLITS if name not in fixed}
    groups = group_stems(pool, config.group_by) if pool else {}
    if remaining and sum(remaining.values()) > 0:
        shared = _assign_groups(groups, remaining, config.seed)
    else:
        shared = {name: [] for name in remaining}
        if pool:
            notes.append(f"{len(pool)} frames are in no split and are not used")
    splits = {name: fixed.get(name, shared.get(name, [])) for name in SPLITS}
    for name in SPLITS:
        wanted = name in fixed or remaining.get(name, 0) > 0
        if wanted and not splits[name]:
            notes.append(f"the {name} split is empty ({len(stems)} usable frames in {len(groups)} groups)")
    return SplitPlan(splits, method, len(groups), notes)


def split_settings(config: SplitConfig) -> dict[str, Any]:
    """The settings that determine a split (stored in split.json to tell whether it can be reused)."""
    return config.model_dump(mode="json")


def write_split_json(path: Path, plan: SplitPlan, config: SplitConfig, *, root: Path, layout: str) -> None:
    """Write ``split.json``: stems per split, counts, method and the settings that made it."""
    atomic_write_json(path, {
        "version": 1, "root": str(root), "layout": layout, "method": plan.method, "groups": plan.groups,
        "settings": split_settings(config), "counts": plan.counts(), "splits": plan.splits,
    })


def read_split_json(path: Path) -> dict[str, Any]:
    """Load a ``split.json`` (DataError if it is not one)."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable split file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict):
        raise DataError(f"{path}: not a split.json (no 'splits' mapping)")
    return data
