"""Evaluate folders of saved segmentation maps against ground-truth folders (``cadet eval --pred --gt``).

Any method's maps (published ones, or this project's ``predictions_<split>/``) are scored under one protocol:
the COD metrics of :mod:`crossattentiondet.segmentation.metrics` per image at the GT's resolution (binary), or
one confusion matrix (semantic class-id maps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from crossattentiondet.config import ConfigError
from crossattentiondet.data.imageio import IMAGE_EXTENSIONS, ImageFileError, is_listed_file, read_image_file
from crossattentiondet.errors import DataError
from crossattentiondet.segmentation.metrics import BinaryMetrics, ConfusionMatrix

_SHOWN = 5  # names listed in an error message before "and N more"


@dataclass
class MapFolderResult:
    """Metrics over all images, the number of images, one row per image (``name`` first; with sub-folder
    test sets also ``set``), and the metrics of each test set (empty for a flat GT folder)."""

    metrics: dict[str, float]
    images: int
    per_image: list[dict[str, Any]]
    per_set: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for ``--json``)."""
        return asdict(self)


def _few(names: list[str]) -> str:
    """The first few names, and how many more there are."""
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` by stem (case-sensitive); hidden files are skipped. Two files with
    one stem (``a.png`` and ``a.jpg``) are a DataError: which one is meant would be a guess."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not is_listed_file(path):
            continue
        found.setdefault(path.stem, []).append(path)
    doubled = sorted(f"{stem} ({', '.join(p.name for p in paths)})" for stem, paths in found.items() if len(paths) > 1)
    if doubled:
        raise DataError(f"{folder}: {len(doubled)} names with more than one image file: {_few(doubled)}")
    return {stem: paths[0] for stem, paths in found.items()}


def _sub_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _gray8(image: np.ndarray, path: Path) -> np.ndarray:
    """A decoded map as (H, W) uint8: colour -> luminance (alpha dropped); 16-bit -> 8-bit (``v / 257``
    rounded, so 65535 -> 255 and an 8-bit map stored in 16 bits comes back exactly)."""
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        if image.shape[2] != 3:
            raise ImageFileError(path, f"{image.shape[2]}-channel image; expected a grayscale map", "channels")
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    return image


def _class_ids(image: np.ndarray, path: Path) -> np.ndarray:
    """A semantic map must be one channel of class ids, stored as is (no colour palette conversion)."""
    if image.ndim == 3:
        raise ImageFileError(path, f"{image.shape[2]}-channel image; expected a single-channel class-id map",
                             "channels")
    return image


def _match(pred_dir: Path, gt_dir: Path) -> tuple[list[tuple[str, str, Path, Path]], bool]:
    """(set, stem, pred path, GT path) of every GT image, and whether the GT has sub-folder test sets.
    Every missing and extra file is collected first and reported in one DataError."""
    for what, folder in (("predictions", pred_dir), ("ground truth", gt_dir)):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} folder not found")
    gt_flat = _image_files(gt_dir)
    if gt_flat:
        sets = {"": (pred_dir, gt_dir)}
    else:
        sets = {sub.name: (pred_dir / sub.name, sub) for sub in _sub_folders(gt_dir) if _image_files(sub)}
        if not sets:
            raise DataError(f"{gt_dir}: no ground-truth images ({', '.join(IMAGE_EXTENSIONS)}), neither in the folder "
                            f"nor in sub-folders")
    pairs: list[tuple[str, str, Path, Path]] = []
    missing: list[str] = []
    extra: list[str] = []
    for set_name, (pred_sub, gt_sub) in sets.items():
        gt_files = gt_flat if not set_name else _image_files(gt_sub)
        pred_files = _image_files(pred_sub) if pred_sub.is_dir() else {}
        prefix = f"{set_name}/" if set_name else ""
        missing += [prefix + s for s in sorted(gt_files) if s not in pred_files]
        extra += [prefix + s for s in sorted(pred_files) if s not in gt_files]
        pairs += [(set_name, s, pred_files[s], gt_files[s]) for s in sorted(gt_files) if s in pred_files]
    if not gt_flat:
        extra += [f"{p.name}/" for p in _sub_folders(pred_dir) if p.name not in sets and _image_files(p)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} ground-truth images have no prediction: {_few(missing)}")
    if extra:
        problems.append(f"{len(extra)} predictions have no ground truth: {_few(extra)}")
    if missing and not _image_files(pred_dir) and gt_flat and _sub_folders(pred_dir):
        problems.append(f"(the folder holds sub-folders {_few([p.name for p in _sub_folders(pred_dir)])}: "
                        f"point --pred at the one that matches the ground truth)")
    if problems:
        raise DataError(f"{pred_dir} vs {gt_dir}: " + "; ".join(problems))
    return pairs, not gt_flat


def evaluate_map_folders(pred_dir: Path, gt_dir: Path, *, num_classes: int = 2,
                         class_names: list[str] | None = None) -> MapFolderResult:
    """Score the maps in ``pred_dir`` against the masks in ``gt_dir``, matched by file stem.

    Files of any image extension (.png .jpg .jpeg .bmp .tif .tiff) are matched by stem, case-sensitively;
    missing or extra predictions are a DataError naming them, raised before anything is computed. A GT folder
    with no images but sub-folders of images is a set of test sets (e.g. CAMO/, COD10K/): the predictions must
    mirror it (``pred_dir/<set>/``), each set is scored apart (``per_set``) and ``metrics`` pools all images.

    Binary (``num_classes == 2``): maps are read as 8-bit grayscale (colour -> luminance; 16-bit maps scaled
    to 8-bit by ``/ 257``), masks binarised as the COD toolkits do (see metrics.py); a prediction of another
    size is resized to the GT's with bilinear interpolation, as the reference toolkits do. Semantic: both are
    single-channel class-id maps (GT 255 = ignore); a prediction of another size is resized with
    nearest-neighbour interpolation (class ids must not be blended); ``class_names`` (default ``class<i>``)
    name the per-class IoUs. Unreadable files: DataError naming them.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2 (2 = binary maps), got {num_classes}")
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
    pairs, with_sets = _match(Path(pred_dir), Path(gt_dir))
    binary = num_classes == 2
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(num_classes)]
    rows: list[dict[str, Any]] = []
    if binary:
        by_set: dict[str, BinaryMetrics] = {}
        for set_name, stem, pred_path, gt_path in pairs:
            gt = _gray8(read_image_file(gt_path), gt_path)
            pred = _gray8(read_image_file(pred_path), pred_path)
            if pred.shape != gt.shape:  # bilinear, as the reference COD evaluation toolkits resize maps
                pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
            by_set.setdefault(set_name, BinaryMetrics()).update(pred, gt, name=stem)
        pooled = BinaryMetrics()
        for set_name, acc in by_set.items():
            pooled.merge(acc.state())
            rows += [dict(row, name=f"{set_name}/{row['name']}", set=set_name) if with_sets else row
                     for row in acc.per_image()]
        per_set = {s: acc.results() for s, acc in by_set.items()} if with_sets else {}
        return MapFolderResult(pooled.results(), len(pooled), rows, per_set)

    matrices: dict[str, ConfusionMatrix] = {}
    for set_name, stem, pred_path, gt_path in pairs:
        gt = _class_ids(read_image_file(gt_path), gt_path)
        pred = _class_ids(read_image_file(pred_path), pred_path)
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
        one = ConfusionMatrix(num_classes)
        try:
            one.update(pred, gt)
        except ValueError as err:
            bad = gt_path if "ground truth" in str(err) else pred_path
            raise DataError(f"{bad}: {err}") from None
        matrices.setdefault(set_name, ConfusionMatrix(num_classes)).matrix += one.matrix
        image = one.results(names)
        name = f"{set_name}/{stem}" if with_sets else stem
        rows.append({"name": name, **({"set": set_name} if with_sets else {}),
                     "mIoU": image["mIoU"], "pixel_acc": image["pixel_acc"]})
    total = ConfusionMatrix(num_classes)
    for cm in matrices.values():
        total.matrix += cm.matrix
    per_set = {s: cm.results(names) for s, cm in matrices.items()} if with_sets else {}
    return MapFolderResult(total.results(names), len(pairs), rows, per_set)
