"""Data: modalities, readers, splits, checks, statistics, synthetic scenes, transforms, loaders.

The engine calls :func:`prepare_data`; the ``cadet data`` commands call :func:`check_dataset`,
:func:`compute_stats` and :func:`convert_dataset`. Any layout opens with :func:`open_source`.
"""

from crossattentiondet.data.checks import CheckReport, check_dataset, resolve_modality_scales
from crossattentiondet.data.convert import ConvertResult, convert_dataset
from crossattentiondet.data.dataset import (
    AspectRatioBatchSampler,
    DetectionDataset,
    DetectionLoader,
    EpochShuffleSampler,
    PreparedData,
    detection_collate,
    ensure_synthetic,
    prepare_data,
    synthetic_root,
)
from crossattentiondet.data.layouts import LAYOUTS, PRESETS, detect_layout
from crossattentiondet.data.problems import PROBLEM_KINDS, FrameInfo, Problem
from crossattentiondet.data.sample import Sample, to_model_input
from crossattentiondet.data.source import DataSource, open_source
from crossattentiondet.data.splits import SplitPlan, group_stems, make_splits
from crossattentiondet.data.stats import compute_stats

__all__ = [
    "LAYOUTS", "PRESETS", "PROBLEM_KINDS", "AspectRatioBatchSampler", "CheckReport", "ConvertResult", "DataSource",
    "DetectionDataset", "DetectionLoader", "EpochShuffleSampler", "FrameInfo", "PreparedData", "Problem", "Sample",
    "SplitPlan", "check_dataset", "compute_stats", "convert_dataset", "detect_layout", "detection_collate",
    "ensure_synthetic", "group_stems", "make_splits", "open_source", "prepare_data", "resolve_modality_scales",
    "synthetic_root", "to_model_input",
]
