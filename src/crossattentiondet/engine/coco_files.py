"""COCO evaluation of any detector's saved results: a COCO results file scored against a COCO ground truth.

``cadet eval --pred DETECTIONS.json --gt COCO_GT.json [--size-bins coco|aitod|both]`` and
:func:`evaluate_detection_files` score other methods' detections with exactly the evaluation of this
project's runs (:func:`crossattentiondet.engine.evaluate.coco_metrics`: faster-coco-eval, the same size
bins and key names, NaN where a bin has no ground truth), so they can be compared under one protocol.

Files:

- ground truth: a COCO instances dict with ``images`` (at least one, unique ``id``), ``annotations``
  (``image_id``, ``category_id``, ``bbox`` [x, y, w, h]; ``area`` as given, else ``w * h``; ``iscrowd``
  as given, else 0) and ``categories`` (unique ``id``, ``name``). An annotation's ``area`` decides its size
  bin, as in pycocotools and the AI-TOD toolkit (so the numbers match published ones). This project's runs
  use box areas (``w * h``); where a file's ``area`` differs from ``w * h`` by more than 1 % (a mask area, say),
  the result's ``notes`` say how many annotations do, since their size bins may then differ from a run's.
- detections: a COCO results list of ``{image_id, category_id, bbox [x, y, w, h], score}``, or a dict whose
  ``annotations`` are that list. Their area is ``w * h`` (as pycocotools' ``loadRes`` computes it).

Bad input is a :class:`~crossattentiondet.errors.DataError` naming the file and the first problem: not
JSON, the wrong structure, an image or category id the ground truth lacks, a non-finite box or score, a
negative width or height, a ground truth with no images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crossattentiondet.errors import DataError

_SHOWN = 5  # ids listed in an error message


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a JSON text file ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None


def _number(value: Any) -> float | None:
    # bools are ints in Python, but never a coordinate or score
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _integer_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_box(path: Path, where: str, bbox: Any) -> list[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DataError(f"{path}: {where}: bbox must be [x, y, width, height], got {bbox!r}")
    values = [_number(v) for v in bbox]
    if any(v is None or not math.isfinite(v) for v in values):
        raise DataError(f"{path}: {where}: bbox {list(bbox)!r} has a value that is not a finite number")
    box = [float(v) for v in values]  # type: ignore[arg-type]
    if box[2] < 0 or box[3] < 0:
        raise DataError(f"{path}: {where}: bbox {box} has a negative width or height")
    return box


def _listed(ids: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in ids[:_SHOWN])
    return shown + (f" (and {len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


def _unique_entries(path: Path, entries: list[Any], key: str, what: str) -> list[dict[str, Any]]:
    """The entries of the GT's ``key`` list, each an object with an integer ``id`` listed once."""
    seen: set[int] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _integer_id(entry.get("id")):
            raise DataError(f"{path}: {key}[{i}] needs an integer 'id', got {entry!r:.80}")
        if entry["id"] in seen:
            raise DataError(f"{path}: {what} id {entry['id']} is listed twice in '{key}'")
        seen.add(entry["id"])
    return entries


def load_ground_truth_file(path: str | Path) -> dict[str, Any]:
    """A COCO ground-truth file checked and normalised for :func:`~crossattentiondet.engine.evaluate.coco_metrics`:
    images (id, ...), annotations (ids from 1, image_id, category_id, bbox, area, iscrowd), categories (id,
    name). Raises DataError naming ``path`` on the first problem."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO ground truth is a JSON object with images, annotations and categories, "
                        f"got a {type(data).__name__}")
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise DataError(f"{path}: not a COCO ground truth: no {', '.join(repr(k) for k in missing)} "
                        "(a detections file given as --gt?)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list, got a {type(data[key]).__name__}")
    if not data["images"]:
        raise DataError(f"{path}: the ground truth has no images (nothing to evaluate on)")
    if not data["categories"]:
        raise DataError(f"{path}: the ground truth has no categories")

    images = [dict(image) for image in _unique_entries(path, data["images"], "images", "image")]
    categories = [{"id": c["id"], "name": str(c.get("name", c["id"]))}
                  for c in _unique_entries(path, data["categories"], "categories", "category")]
    image_ids = {image["id"] for image in images}
    category_ids = {category["id"] for category in categories}

    annotations: list[dict[str, Any]] = []
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(f"{path}: {where} must be an object, got {ann!r:.80}")
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise DataError(f"{path}: {where} has no '{key}'")
        if not _integer_id(ann["image_id"]) or ann["image_id"] not in image_ids:
            raise DataError(f"{path}: {where}: image_id {ann['image_id']!r} is not in 'images'")
        if not _integer_id(ann["category_id"]) or ann["category_id"] not in category_ids:
            raise DataError(f"{path}: {where}: category_id {ann['category_id']!r} is not in 'categories' "
                            f"(ids {_listed(sorted(category_ids))})")
        box = _check_box(path, where, ann["bbox"])
        area = _number(ann.get("area", box[2] * box[3]))
        if area is None or not math.isfinite(area) or area < 0:
            raise DataError(f"{path}: {where}: area {ann.get('area')!r} must be a finite number >= 0")
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):  # bools included: True == 1
            raise DataError(f"{path}: {where}: iscrowd must be 0 or 1, got {iscrowd!r}")
        # ids from 1: COCOeval reads a matched id of 0 as "unmatched"
        annotations.append({"id": i + 1, "image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": box, "area": area, "iscrowd": int(iscrowd)})
    return {"images": images, "annotations": annotations, "categories": categories}


def load_detections_file(path: str | Path, ground_truth: Mapping[str, Any],
                         gt_path: str | Path | None = None) -> list[dict[str, Any]]:
    """A COCO results file (a list, or a dict with ``annotations``) as checked detections
    {image_id, category_id, bbox, score}. Image and category ids must be the ground truth's (``gt_path``
    names it in the message). Raises DataError naming ``path`` on the first problem."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict):
        if "annotations" not in data:
            raise DataError(f"{path}: detections are a COCO results list of {{image_id, category_id, bbox, score}} "
                            "(or an object with them as 'annotations'); this object has no 'annotations'")
        data = data["annotations"]
    if not isinstance(data, list):
        raise DataError(f"{path}: detections must be a list of {{image_id, category_id, bbox, score}}, got a "
                        f"{type(data).__name__}")
    image_ids = {image["id"] for image in ground_truth["images"]}
    category_ids = {category["id"] for category in ground_truth["categories"]}
    gt_name = str(gt_path) if gt_path is not None else "the ground truth"
    detections: list[dict[str, Any]] = []
    unknown_images: list[Any] = []
    for i, det in enumerate(data):
        where = f"detection {i}"
        if not isinstance(det, dict):
            raise DataError(f"{path}: {where} must be an object {{image_id, category_id, bbox, score}}, "
                            f"got {det!r:.80}")
        missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in det]
        if missing:
            raise DataError(f"{path}: {where} has no {', '.join(repr(k) for k in missing)}")
        if not _integer_id(det["image_id"]) or det["image_id"] not in image_ids:
            unknown_images.append(det["image_id"])
            continue  # all of them are listed below, not only the first
        if not _integer_id(det["category_id"]) or det["category_id"] not in category_ids:
            raise DataError(f"{path}: {where}: category_id {det['category_id']!r} is not a category of {gt_name} "
                            f"(ids {_listed(sorted(category_ids))})")
        box = _check_box(path, where, det["bbox"])
        score = _number(det["score"])
        if score is None or not math.isfinite(score):
            raise DataError(f"{path}: {where}: score {det['score']!r} is not a finite number")
        detections.append({"image_id": det["image_id"], "category_id": det["category_id"], "bbox": box,
                           "score": score})
    if unknown_images:
        distinct = list(dict.fromkeys(str(i) for i in unknown_images))
        raise DataError(f"{path}: {len(unknown_images)} detection(s) name image ids that are not in {gt_name}: "
                        f"{_listed(distinct)} (is the ground truth the one these were made on?)")
    return detections


AREA_TOLERANCE = 0.01  # relative difference of a file's area from w * h that is noted


def area_mismatches(annotations: Sequence[Mapping[str, Any]], tolerance: float = AREA_TOLERANCE) -> int:
    """How many ``annotations`` (normalised, with ``bbox`` and ``area``) have an ``area`` that differs from the
    box's ``w * h`` by more than ``tolerance`` (relative to ``w * h``)."""
    count = 0
    for ann in annotations:
        box_area = ann["bbox"][2] * ann["bbox"][3]
        if abs(ann["area"] - box_area) > tolerance * box_area:
            count += 1
    return count


def evaluate_detection_files(pred: str | Path, gt: str | Path, size_bins: str = "coco") -> dict[str, Any]:
    """Score a COCO results file ``pred`` against the COCO ground truth ``gt``, as runs are scored.

    Returns a JSON-ready dict: ``pred``, ``gt``, ``size_bins``, ``max_dets`` (detections per image and
    class behind each protocol's numbers), ``metrics`` (:func:`~crossattentiondet.engine.evaluate.metric_keys`
    by name, NaN where a bin has no ground truth), ``per_class`` (name -> AP, AP_50, AP_75, num_gt),
    ``num_images``, ``num_ground_truth``, ``num_predictions``, ``max_detections_per_image`` and ``notes``.
    """
    from crossattentiondet.engine.evaluate import (
        AITOD_MAX_DETS,
        check_size_bins,
        class_ap,
        coco_metrics,
        max_dets_of,
    )

    try:
        check_size_bins(size_bins)
    except ValueError as error:
        from crossattentiondet.config import ConfigError

        raise ConfigError(str(error)) from None
    ground_truth = load_ground_truth_file(gt)
    detections = load_detections_file(pred, ground_truth, gt)
    coco_eval, metrics = coco_metrics(ground_truth, detections, size_bins)
    num_gt: dict[int, int] = {}
    for ann in ground_truth["annotations"]:
        num_gt[ann["category_id"]] = num_gt.get(ann["category_id"], 0) + 1
    names = [c["name"] for c in ground_truth["categories"]]
    per_class: dict[str, dict[str, float]] = {}
    for category in ground_truth["categories"]:
        # a name two categories share is told apart by its id
        key = category["name"] if names.count(category["name"]) == 1 else f"{category['name']} (id {category['id']})"
        per_class[key] = class_ap(coco_eval, category["id"], num_gt.get(category["id"], 0))
    per_image: dict[int, int] = {}
    for det in detections:
        per_image[det["image_id"]] = per_image.get(det["image_id"], 0) + 1
    most = max(per_image.values(), default=0)
    notes = []
    mismatched = area_mismatches(ground_truth["annotations"])
    if mismatched:
        notes.append(f"{mismatched} of {len(ground_truth['annotations'])} annotation(s) in {gt} have an 'area' that "
                     f"differs from the box's w*h by more than {AREA_TOLERANCE:.0%}: size bins use the file's area "
                     "there (as pycocotools and the AI-TOD toolkit do), while this project's runs use box areas")
    if size_bins != "coco" and most <= 100:
        notes.append(f"no image has more than {most} detections in {pred}: the numbers at AI-TOD's "
                     f"{AITOD_MAX_DETS} detections per image equal those at COCO's 100")
    return {
        "pred": str(pred), "gt": str(gt), "size_bins": size_bins, "max_dets": max_dets_of(size_bins),
        "metrics": metrics, "per_class": per_class, "num_images": len(ground_truth["images"]),
        "num_ground_truth": len(ground_truth["annotations"]), "num_predictions": len(detections),
        "max_detections_per_image": most, "notes": notes,
    }
