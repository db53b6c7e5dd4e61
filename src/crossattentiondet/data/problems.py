"""What a data check finds: :class:`Problem` (one per file and issue) and :class:`FrameInfo` (one per frame)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Stable identifiers (also in ``cadet data check --json``), with what each means.
PROBLEM_KINDS: dict[str, str] = {
    "unreadable": "file cannot be read or decoded (missing, truncated, corrupt)",
    "bad_dtype": "pixel type other than uint8 / uint16",
    "channels": "wrong channel count for the modality",
    "size_mismatch": "modalities of one frame have different sizes",
    "missing_partner": "a frame lacks the file of one modality",
    "missing_label": "a frame has no label file (or no entry in the COCO file)",
    "bad_label": "label line / entry that is not 5 numbers or lacks fields",
    "out_of_range": "box coordinates outside the image beyond the tolerance",
    "zero_area": "box with zero or negative width or height",
    "unnamed_class": "class id or name that the class list does not contain",
    "not_finite": "NaN or inf in labels or pixels",
    "duplicate_stem": "two files claim the same frame",
    "mixed_depth": "a modality mixes 8-bit and 16-bit files without an explicit scale, or with a scale above 255 "
                   "from the data set's metadata file",
    "above_scale": "pixel values above the modality scale recorded in the data set's metadata file",
    "duplicate_class": "a class name listed twice (classes.txt, COCO categories)",
    "duplicate_id": "two COCO images or categories share an id",
    "no_boxes": "not a single box in the whole data set: nothing to learn, mAP NaN (warning)",
    "orphan_label": "label without an image (warning)",
    "label_size": "size written in the label file differs from the image (warning)",
    "split": "the configured split (data.split) cannot be made",
    # segmentation (task: segment)
    "missing_mask": "a frame has no ground-truth mask",
    "orphan_mask": "a mask without a frame (warning)",
    "mask_size": "a mask's size differs from its frame's",
    "mask_values": "mask values outside the class range (other than 255 = ignore), or a colour mask where class "
                   "ids are expected",
    "empty_mask": "masks without a single object pixel (warning; counted, first files named)",
    "few_groups": "a split is empty or holds fewer than MIN_SPLIT_GROUPS independent groups of frames (warning)",
}

# the kinds only segmentation checks report (segmentation/checks.py; tests/test_seg_checks.py reaches each)
SEGMENTATION_KINDS = frozenset({"missing_mask", "orphan_mask", "mask_size", "mask_values", "empty_mask"})

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One problem: the file, what is wrong, and which frame it affects (None: the whole data set)."""

    kind: str
    path: str
    message: str
    stem: str | None = None
    severity: Severity = "error"

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}")
        if "\n" in self.message or "\r" in self.message:  # one line per problem, whatever a library said
            object.__setattr__(self, "message", " ".join(self.message.split()))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "kind": self.kind, "path": self.path, "stem": self.stem,
                "message": self.message}


class ProblemReport:
    """What a check report (detection's CheckReport, segmentation's SegCheckReport) derives from its
    ``problems``."""

    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    @property
    def bad_stems(self) -> set[str]:
        """Frames with at least one error (what ``data.on_error=skip`` leaves out)."""
        return {p.stem for p in self.errors if p.stem is not None}


@dataclass
class FrameInfo:
    """What reading one frame found out: size, per-modality dtype, number of boxes; ``peaks``: the largest
    pixel value per modality, measured by the check only where the data set's metadata file declares the
    modality's scale (so that a declared scale cannot hide values above it)."""

    stem: str
    height: int = 0
    width: int = 0
    dtypes: dict[str, str] = field(default_factory=dict)
    boxes: int = 0
    peaks: dict[str, int] = field(default_factory=dict)
