"""Train / val / test splits that keep neighbouring video frames apart.

Sources, in order of precedence:

1. split files (``data.split.train_file`` ...): lists of stems; splits without a file share the frames
   listed in no file by their ratios (with all three files, unlisted frames are not used);
2. the data set's own partition (LLVIP's ``test/`` folders, FLIR-aligned's ``align_validation.txt``, M3FD's
   ``meta/test.txt``): those frames are the test (and val) split, the rest is divided by the ratios of the
   remaining splits (LLVIP: val = 0.15 / 0.85 of its train folder with the default ratios). A *complete*
   partition (:class:`~crossattentiondet.data.source.Partitions`, the coco layout's split folders) is the
   split as given: train keeps every frame of its folder; without a val folder, val is drawn from train by
   the train : val ratios (best.pt needs one); without a test folder the test split stays empty (a note says
   so; ``eval.split=val`` evaluates on val instead): test frames are never carved out of another split;
3. seeded ratios over groups of frames.

Groups (``data.split.group_by``) never straddle a split:

* ``auto``: stems ending in a number are grouped per prefix (the text before the number). With two or more
  distinct prefixes the prefix names a sequence (``seq003_000017``, ``video3-0001``, ``seqA_000123``) and
  each sequence is one group, however few there are. With a single prefix (``FLIR_00012``, LLVIP's
  ``010001``, M3FD's ``00017``: a data set's name or one long clip) the frames, in number order, form
  blocks of ``AUTO_BLOCK`` (10) consecutive frames. Stems without a number stay alone.
* ``none``: every frame alone. ``blocks:N``: N consecutive frames in natural sort order.
* ``regex:<pattern>``: frames with the same first capture group (or whole match) form a group; frames the
  pattern does not match stay alone.

Too few sequences: whole sequences go to the splits as the ratios allow (the achieved shares are noted when
they miss the asked ones by more than ``RATIO_TOLERANCE``); when there are fewer sequences (plus lone frames)
than splits asking for frames, some split could only be filled by cutting a sequence, so :func:`make_splits`
raises a DataError naming the sequences and the ways out (``group_by=blocks:N`` to split inside sequences
on purpose, a ratio of 0, split files, more data) instead of leaking frames of one clip across splits.

Gap between blocks (``data.split.gap``, default 3 frames): blocks cut a run of consecutive frames, so the
frames of two adjacent blocks that went to different splits are near-duplicates. Frames within ``gap``
frames (positions in the run: a prefix's frames in number order for ``auto``, all frames in natural order
for ``blocks:N``) of a frame of another split are left out of the lower split of the two (train < val <
test: training loses frames next to val and test, val loses frames next to test). Left-out frames are
counted in :class:`SplitPlan` (``dropped``), in ``split.json`` and in the log. Whole sequences, regex
groups and ``none`` have no neighbours across groups, so no gap applies to them. With 70/15/15 ratios about
one block border in two separates splits, so a gap of 3 costs roughly 15 % of block-split frames.

Every split should hold at least ``MIN_SPLIT_GROUPS`` (3) groups: with fewer, metrics (and confidence
intervals) over it describe a clip or two; :func:`split_warnings` says so (in the log and in
``cadet data check``).

Same stems + same settings -> same split (numpy's seeded generator, groups in sorted order). Which groups
go where is unchanged from split.json version 1 wherever the grouping is (many sequences, blocks, none,
regex); blocks only lose their gap frames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from crossattentiondet.config import SplitConfig
from crossattentiondet.data.source import read_stem_list, resolve_path
from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json, read_json

SPLITS = ("train", "val", "test")
AUTO_BLOCK = 10
MIN_SPLIT_GROUPS = 3  # fewer independent groups in a split: its metrics describe a clip or two
RATIO_TOLERANCE = 0.05  # achieved shares further than this from the asked ratios are noted
SPLIT_JSON_VERSION = 2  # 2: grouping, group_counts, gap and dropped frames
_NUMBERED = re.compile(r"^(.*?)(\d+)$")
_RANK = {name: i for i, name in enumerate(SPLITS)}  # at a gap the lower split gives up its frames
# SplitConfig keys newer than split.json version 1: left out of the stored settings while at their default,
# so a run started before they existed still finds (and resumes with) the split it was started with.
_LATER_KEYS = ("gap",)

GroupKind = Literal["sequences", "blocks", "frames", "regex"]


def natural_key(stem: str) -> tuple[Any, ...]:
    """Sort key that orders ``frame_9`` before ``frame_10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", stem))


@dataclass
class Grouping:
    """Groups of frames, what they are, and (for blocks) the runs of consecutive frames they were cut from."""

    groups: dict[str, list[str]]
    kind: GroupKind
    runs: list[list[str]] = field(default_factory=list)  # blocks only: neighbouring frames next to each other

    def describe(self) -> str:
        return {"sequences": "sequences", "blocks": "blocks of consecutive frames", "frames": "single frames",
                "regex": "regex groups"}[self.kind]


def group_frames(stems: list[str], group_by: str) -> Grouping:
    """Group the frames (see the module docstring for the rules) and say what the groups are."""
    ordered = sorted(stems, key=natural_key)
    if group_by == "none":
        return Grouping({s: [s] for s in ordered}, "frames")
    if group_by.startswith("blocks:"):
        size = int(group_by.split(":", 1)[1])
        if size < 1:
            raise DataError(f"data.split.group_by: block size must be >= 1, got {group_by!r}")
        blocks = {f"block{i // size}": ordered[i:i + size] for i in range(0, len(ordered), size)}
        return Grouping(blocks, "blocks", [ordered] if ordered else [])
    if group_by.startswith("regex:"):
        pattern = re.compile(group_by[len("regex:"):])
        groups: dict[str, list[str]] = {}
        for stem in ordered:
            match = pattern.search(stem)
            key = "=" + stem if match is None else "re:" + (match.group(1) if pattern.groups else match.group(0))
            groups.setdefault(key, []).append(stem)
        return Grouping(groups, "regex")
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
    if len(by_prefix) >= 2:  # several prefixes: each names a sequence (a single one is the data set's name)
        for prefix, numbered in by_prefix.items():
            groups[f"seq:{prefix}"] = [s for _, s in sorted(numbered)]
        return Grouping(groups, "sequences")
    runs = []
    for prefix, numbered in by_prefix.items():
        names = [s for _, s in sorted(numbered)]
        runs.append(names)
        for i in range(0, len(names), AUTO_BLOCK):
            groups[f"blk:{prefix}#{i // AUTO_BLOCK}"] = names[i:i + AUTO_BLOCK]
    return Grouping(groups, "blocks" if runs else "frames", runs)


def group_stems(stems: list[str], group_by: str) -> dict[str, list[str]]:
    """Group key -> stems of the group (see the module docstring for the rules)."""
    return group_frames(stems, group_by).groups


@dataclass
class SplitPlan:
    """The split: stems per split, how it was made, and notes worth logging.

    ``groups``: groups the ratio-split frames formed; ``group_counts``: independent groups per split;
    ``wanted``: the splits that should hold frames; ``dropped``: frames per split left out by the gap.
    """

    splits: dict[str, list[str]]
    method: str  # "files", "partition" or "ratios"
    groups: int = 0
    notes: list[str] = field(default_factory=list)
    grouping: str = "frames"  # what the groups are: sequences, blocks, frames or regex
    group_counts: dict[str, int] = field(default_factory=dict)
    wanted: list[str] = field(default_factory=list)
    gap: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {name: len(stems) for name, stems in self.splits.items()}

    def dropped_counts(self) -> dict[str, int]:
        return {name: len(self.dropped.get(name, [])) for name in self.splits}


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


def gap_frames(runs: list[list[str]], owner: dict[str, str], gap: int) -> set[str]:
    """Frames within ``gap`` positions of a frame of a higher split (train < val < test) in the same run.

    ``owner`` maps stem -> split; frames of a run that no split owns are skipped (not neighbours of anyone).
    """
    left_out: set[str] = set()
    if gap <= 0:
        return left_out
    for run in runs:
        ranks = [_RANK[owner[s]] for s in run if s in owner]
        members = [s for s in run if s in owner]
        for i, stem in enumerate(members):
            window = ranks[max(0, i - gap):i + gap + 1]
            if max(window) > ranks[i]:
                left_out.add(stem)
    return left_out


def _shares(text: str, counts: dict[str, int], ratios: dict[str, float]) -> str | None:
    """A note when the achieved shares miss the asked ratios by more than RATIO_TOLERANCE, else None."""
    frames, asked = sum(counts.values()), sum(ratios.values())
    if frames == 0 or asked <= 0:
        return None
    got = {n: counts[n] / frames for n in ratios}
    if all(abs(got[n] - ratios[n] / asked) <= RATIO_TOLERANCE for n in ratios):
        return None
    parts = ", ".join(f"{n} {counts[n]} frames = {got[n]:.0%} (asked {ratios[n] / asked:.0%})" for n in ratios)
    return f"{text} give {parts}"


def _too_few_sequences(grouping: Grouping, wanted: list[str], frames: int) -> DataError:
    sequences = sorted(k[len("seq:"):] for k in grouping.groups if k.startswith("seq:"))
    alone = len(grouping.groups) - len(sequences)
    shown = ", ".join(f"{p!r}" for p in sequences[:5]) + (" ..." if len(sequences) > 5 else "")
    return DataError(
        f"data.split: the {frames} frames form only {len(sequences)} sequences ({shown})"
        + (f" and {alone} lone frames" if alone else "")
        + f", fewer than the {len(wanted)} splits that ask for frames ({', '.join(wanted)}); filling them would cut "
        "a sequence and put neighbouring frames of one clip on both sides. Set data.split.group_by=blocks:<N> "
        "to split inside sequences on purpose (data.split.gap frames are left out at each border), give a "
        f"split a ratio of 0 (e.g. data.split.test=0), list the frames in split files, or add sequences")


def split_warnings(plan: SplitPlan) -> list[str]:
    """Why a split's numbers will mean little: it is empty, or it holds fewer than MIN_SPLIT_GROUPS independent
    groups. The one place these warnings are worded (the plan's notes and ``cadet data check`` use them)."""
    out: list[str] = []
    for name in plan.wanted:
        count, frames = plan.group_counts.get(name, 0), len(plan.splits.get(name, []))
        if frames == 0:
            out.append(f"the {name} split is empty ({plan.groups} groups in all)")
        elif count < MIN_SPLIT_GROUPS:
            use = ("the model learns from few independent scenes" if name == "train" else
                   "its metrics and their confidence intervals say little beyond those few groups")
            out.append(f"the {name} split has only {count} independent group{'' if count == 1 else 's'} "
                       f"({plan.grouping}, {frames} frames), fewer than {MIN_SPLIT_GROUPS}: {use}")
    return out


def make_splits(stems: list[str], config: SplitConfig, *, partitions: dict[str, str] | None = None,
                known: set[str] | None = None, root: Path | None = None,
                suffixes: list[str] | None = None) -> SplitPlan:
    """Split ``stems`` (the usable frames) into train / val / test.

    ``partitions`` is the data set's own split (stem -> split); ``known`` every frame of the data set (a
    split file naming a frame outside it is a DataError, one naming an excluded frame only a note);
    ``root`` resolves relative split-file paths; ``suffixes`` are modality file-name suffixes to strip.
    DataError also when whole sequences cannot fill the splits (see the module docstring).
    """
    usable = set(stems)
    known = set(known) if known is not None else usable
    complete = bool(getattr(partitions, "complete", False))  # the data set's split folders are the split
    given = set(partitions.values()) if partitions else set()
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
        if complete:  # given split folders count even when all their frames were left out (then: empty warning)
            fixed = {name: own[name] for name in ("val", "test") if name in given}
        else:
            fixed = {name: members for name, members in own.items() if members}
        if fixed or complete:
            method = "partition"
            shown = dict(fixed)
            if complete:
                shown = {"train": [s for s in stems if partitions.get(s) == "train"], **fixed}
            notes.append("the data set's own partition gives " +
                         ", ".join(f"{name} ({len(m)} frames)" for name, m in shown.items()))
    taken = {s for members in fixed.values() for s in members}
    pool = [s for s in stems if s not in taken]
    remaining = {name: float(getattr(config, name)) for name in SPLITS if name not in fixed}
    if method == "partition" and complete:
        # the split folders are the split: train keeps all its frames, unless val must be drawn from it
        remaining = {"train": 1.0} if "val" in fixed else {"train": float(config.train), "val": float(config.val)}
        if "test" not in given:
            notes.append("the data set has no test split folder: the test split is empty (set eval.split=val to "
                         "evaluate the best weights on val, or give data.split.test_file)")
        if "val" not in given and remaining["val"] > 0:
            notes.append(f"the data set has no val split folder: val is drawn from train by the ratios (train "
                         f"{config.train:g} : val {config.val:g}), grouped by {config.group_by}")
    grouping = group_frames(pool, config.group_by) if pool else Grouping({}, "frames")
    groups = grouping.groups
    asking = [name for name, ratio in remaining.items() if ratio > 0]
    dropped: dict[str, list[str]] = {}
    if remaining and sum(remaining.values()) > 0:
        if grouping.kind == "sequences" and len(groups) < len(asking):
            raise _too_few_sequences(grouping, asking, len(pool))
        shared = _assign_groups(groups, remaining, config.seed)
        # how far whole groups are from the ratios (before the gap, which the next note counts on its own)
        shares = _shares(f"whole {grouping.describe()}", {n: len(shared[n]) for n in remaining},
                         {n: remaining[n] for n in asking})
        owner_of = {s: name for name, members in shared.items() for s in members}
        left_out = gap_frames(grouping.runs, owner_of, config.gap)
        if left_out:
            dropped = {name: [s for s in members if s in left_out] for name, members in shared.items()
                       if any(s in left_out for s in members)}
            shared = {name: [s for s in members if s not in left_out] for name, members in shared.items()}
            notes.append(f"left out {len(left_out)} of {len(pool)} frames next to a block of another split "
                         f"(data.split.gap={config.gap}): " +
                         ", ".join(f"{name} {len(members)}" for name, members in dropped.items()))
        if shares and len(asking) > 1:
            notes.append(shares)
    else:
        shared = {name: [] for name in remaining}
        if pool:
            notes.append(f"{len(pool)} frames are in no split and are not used")
    splits = {name: fixed.get(name, shared.get(name, [])) for name in SPLITS}
    wanted = [name for name in SPLITS if name in fixed or remaining.get(name, 0) > 0]
    key_of = {s: key for key, members in groups.items() for s in members}
    group_counts = {}
    for name in SPLITS:
        if name in fixed:  # listed or partitioned frames: their own grouping tells how independent they are
            group_counts[name] = len(group_frames(fixed[name], config.group_by).groups) if fixed[name] else 0
        else:
            group_counts[name] = len({key_of[s] for s in splits[name]})
    plan = SplitPlan(splits, method, len(groups), notes, grouping=grouping.kind, group_counts=group_counts,
                     wanted=wanted, gap=config.gap if grouping.runs else 0, dropped=dropped)
    plan.notes.extend(split_warnings(plan))
    return plan


def split_settings(config: SplitConfig) -> dict[str, Any]:
    """The settings that determine a split (stored in split.json to tell whether it can be reused)."""
    settings = config.model_dump(mode="json")
    for key in _LATER_KEYS:
        if settings.get(key) == SplitConfig.model_fields[key].default:
            del settings[key]
    return settings


def write_split_json(path: Path, plan: SplitPlan, config: SplitConfig, *, root: Path, layout: str) -> None:
    """Write ``split.json``: stems per split, counts, method, groups, gap and the settings that made it."""
    atomic_write_json(path, {
        "version": SPLIT_JSON_VERSION, "root": str(root), "layout": layout, "method": plan.method,
        "groups": plan.groups, "grouping": plan.grouping, "group_counts": plan.group_counts,
        "settings": split_settings(config), "counts": plan.counts(),
        "gap": {"frames": plan.gap, "dropped": plan.dropped_counts(),
                "stems": {name: stems for name, stems in plan.dropped.items()}},
        "splits": plan.splits,
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
