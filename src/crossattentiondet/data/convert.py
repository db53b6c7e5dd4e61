"""``cadet data convert``: between the original npy layout, paired folders and COCO (any source layout).

* ``npy``: ``images/<stem>.npy`` (H, W, C) with the modalities concatenated in config order (uint16 if any
  modality is 16-bit, 8-bit values kept as they are), ``labels/<stem>.txt`` YOLO, ``classes.txt``.
* ``folders``: ``<modality>/<stem>.png`` per modality (16-bit PNG when the modality's scale is above 255),
  ``labels/<stem>.txt`` YOLO, ``classes.txt``.
* ``coco``: the same modality folders and one COCO instances file ``annotations.json`` (images with id
  1..N in stem order, ``file_name`` = ``<stem>.png``, the name of the frame's file in every modality folder;
  bbox xywh in pixels; category ``i + 1`` = class ``i``); read back by the ``folders`` layout.

All three also write ``cadet_data.json`` (modality names, channels, sources and scales, class names), so that a
converted data set keeps its scales: an 8-bit RGB stored in a uint16 array still has scale 255.
Frames without boxes are converted too (an empty label file, or an image without annotations). The source
is checked first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossattentiondet.config import DataConfig
from crossattentiondet.data.checks import check_dataset
from crossattentiondet.data.imageio import write_png
from crossattentiondet.data.sample import Sample
from crossattentiondet.data.source import open_source
from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write_json

FORMATS = ("npy", "folders", "coco")
COCO_FILE = "annotations.json"  # the first COCO name the folders layout looks for


@dataclass
class ConvertResult:
    """What a conversion wrote."""

    dst: Path
    frames: int
    skipped: int
    layout: str  # "original" or "folders"


def yolo_text(sample: Sample) -> str:
    """YOLO lines ``class xc yc w h`` (0-based class, normalised) for a sample's boxes."""
    lines = []
    for (x0, y0, x1, y1), label in zip(sample.boxes.tolist(), sample.labels.tolist()):
        xc, yc = (x0 + x1) / 2 / sample.width, (y0 + y1) / 2 / sample.height
        w, h = (x1 - x0) / sample.width, (y1 - y0) / sample.height
        lines.append(f"{label - 1} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
    return "".join(line + "\n" for line in lines)


def coco_image_entry(sample: Sample, image_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A sample's COCO ``images`` entry and its ``annotations`` (ids 0 here, numbered by the caller).

    Boxes are rounded to 0.001 px: far below any label's precision, and the file stays readable.
    """
    image = {"id": image_id, "file_name": f"{sample.stem}.png", "width": sample.width, "height": sample.height}
    annotations = []
    for (x0, y0, x1, y1), label in zip(sample.boxes.tolist(), sample.labels.tolist()):
        w, h = x1 - x0, y1 - y0
        annotations.append({"id": 0, "image_id": image_id, "category_id": int(label),
                            "bbox": [round(x0, 3), round(y0, 3), round(w, 3), round(h, 3)],
                            "area": round(w * h, 3), "iscrowd": 0})
    return image, annotations


def convert_dataset(src: str | Path, dst: str | Path, to: str, data: DataConfig | None = None, *,
                    layout: str | None = None, log: Callable[[str], None] = lambda _: None,
                    workers: int | None = None) -> ConvertResult:
    """Convert the data set at ``src`` into ``dst`` (which must not exist or be empty) as ``to`` =
    npy|folders|coco.

    The source is checked first: errors raise DataError, unless ``data.on_error == "skip"`` (bad frames are
    left out and counted). The output appears atomically (written next to ``dst``, then renamed).
    """
    if to not in FORMATS:
        raise DataError(f"convert: --to must be npy, folders or coco, got {to!r}")
    data = data or DataConfig()
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst}: destination exists and is not an empty folder")
    source = open_source(src, data, layout)
    report = check_dataset(source, workers=workers)
    if report.fatal or (report.errors and data.on_error == "fail"):
        raise DataError("cannot convert, the source has errors: " + report.describe_errors())
    bad = report.bad_stems
    stems = [s for s in source.stems if s not in bad]
    if bad:
        log(f"convert: skipping {len(bad)} frames with errors (data.on_error=skip)")
    scales = report.scales
    modalities = source.modalities
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    coco_entries: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    try:
        if to != "coco":  # COCO keeps every label in one file; a labels/ folder would be read first
            (staging / "labels").mkdir()
        if to == "npy":
            (staging / "images").mkdir()
        else:
            for m in modalities:
                (staging / m.name).mkdir()

        def write(stem: str) -> None:
            sample = source.read(stem)
            if to == "coco":
                coco_entries[stem] = coco_image_entry(sample, image_ids[stem])
            else:
                (staging / "labels" / f"{stem}.txt").write_text(yolo_text(sample), encoding="utf-8")
            arrays = [sample.modalities[m.name] for m in modalities]
            if to == "npy":
                wide = any(a.dtype == np.uint16 for a in arrays)
                dtype = np.uint16 if wide else np.uint8
                np.save(staging / "images" / f"{stem}.npy", np.concatenate([a.astype(dtype) for a in arrays], axis=2))
                return
            for m, array in zip(modalities, arrays):
                path = staging / m.name / f"{stem}.png"
                if scales[m.name] <= 255:
                    if array.dtype != np.uint8 and int(array.max(initial=0)) > 255:
                        raise DataError(f"{source.modality_file(stem, m.name)}: modality '{m.name}' has scale "
                                        f"{scales[m.name]:g} but values up to {int(array.max())}")
                    array = array.astype(np.uint8)
                else:
                    array = array.astype(np.uint16)
                write_png(path, array)

        image_ids = {stem: i for i, stem in enumerate(stems, start=1)}
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(write, stems))
        if to == "coco":
            write_coco(staging / COCO_FILE, [coco_entries[stem] for stem in stems], source.class_names)
        else:
            (staging / "classes.txt").write_text("".join(n + "\n" for n in source.class_names), encoding="utf-8")
        described, start = [], 0
        for m in modalities:
            if to == "npy":
                where: list[int] | str = list(range(start, start + m.channels))
                start += m.channels
            else:
                where = m.name
            described.append({"name": m.name, "channels": m.channels, "source": where, "scale": scales[m.name]})
        atomic_write_json(staging / "cadet_data.json", {
            "format": "crossattentiondet data", "version": 1, "layout": "original" if to == "npy" else "folders",
            "converted_from": str(source.root), "source_layout": source.layout, "modalities": described,
            "class_names": source.class_names, "frames": len(stems),
        })
        if dst.exists():
            dst.rmdir()
        os.replace(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ConvertResult(dst, len(stems), len(bad), "original" if to == "npy" else "folders")


def write_coco(path: Path, entries: list[tuple[dict[str, Any], list[dict[str, Any]]]],
               class_names: list[str]) -> None:
    """One COCO instances file from per-frame (image, annotations) entries; annotation ids 1..M."""
    images = [image for image, _ in entries]
    annotations = [{**ann, "id": i} for i, ann in enumerate((a for _, anns in entries for a in anns), start=1)]
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names, start=1)]
    atomic_write_json(path, {"images": images, "annotations": annotations, "categories": categories})
