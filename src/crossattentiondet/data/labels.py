"""Label readers: YOLO txt folders, one COCO JSON, Pascal VOC XML folders.

All three are parsed up front (text is cheap next to pixels) into :class:`FrameLabels` per label stem,
with the problems found; class names are then resolved once for the whole data set
(:func:`resolve_classes`). Boxes become absolute pixel xyxy only when the image size is known
(:func:`boxes_for_frame`): YOLO coordinates are normalised, COCO/VOC absolute.

Conventions (where the formats are loose):

* YOLO: ``class xc yc w h`` per line, 0-based integer ids, blank lines ignored; an empty file is a frame
  without objects. Names: ``data.names``, else ``classes.txt`` (data root, then the label folder), else
  ``class_0`` ... up to the largest id seen.
* COCO: ``images[].file_name`` is matched to frames by its stem; ``bbox`` is ``[x, y, w, h]`` in pixels;
  ``iscrowd: 1`` annotations are ignored regions and are left out. An image listed without annotations is a
  negative frame. Names: the categories sorted by id (or ``data.names``, matched by name). The coco layout
  reads one file per split folder and merges them by category name (:func:`merge_coco_labels`). An
  annotation whose ``category_id`` is not in ``categories`` is an ``unnamed_class`` error naming the file,
  the annotation id and the category id.
* VOC: one XML per frame, ``object/name`` and ``object/bndbox`` taken as given (no 1-pixel shift);
  ``difficult`` objects are kept. Names: ``data.names``, else the layout's known classes in their usual
  order followed by any other name found, sorted.

* KAIST (the Caltech/Piotr toolbox text format, ``% bbGt version=3`` then one object per line
  ``label x y w h occ xv yv wv hv ign ang``; the original, "sanitized" and "paired" annotations share it):
  files ``<labels>/setNN/VNNN/INNNNN.txt`` (flat names ``setNN_VNNN_INNNNN.txt`` too); paired annotations keep
  one file per modality, in a folder named after the modality's folder (``.../visible/INNNNN.txt``,
  ``.../lwir/INNNNN.txt``), and one modality's boxes are read (:func:`load_kaist_labels`). ``person`` is the
  class; ``people``, ``cyclist``, ``person?``, any box with ``ign`` 1 and any other label (a warning) are
  ignore regions. ``occ`` (0 none, 1 partial, 2 heavy) is kept per box. Boxes reaching past the image
  (people leaving the frame) are clipped to it without a problem.

Coordinates may exceed the image by a small tolerance (rounding in annotation tools) and are clipped;
beyond it they are an ``out_of_range`` problem.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from crossattentiondet.data.imageio import broken_link_detail, is_broken_link, is_listed_file
from crossattentiondet.data.problems import Problem
from crossattentiondet.data.sample import BoxAnnotations
from crossattentiondet.errors import DataError

LabelFormat = Literal["yolo", "coco", "voc", "kaist"]
NORMALISED_TOLERANCE = 1e-3  # YOLO: 0.1 % of the image side
PIXEL_TOLERANCE = 1.0  # COCO/VOC: one pixel (or 0.1 % of the side, whichever is larger)
# Label text is read as UTF-8 with an optional byte-order mark (Windows editors write one): "utf-8-sig".
TEXT_ENCODING = "utf-8-sig"


@dataclass
class FrameLabels:
    """The boxes of one label stem as written in the file (before the image size is known)."""

    path: str
    normalised: bool  # True: YOLO xyxy in [0, 1]; False: absolute pixels xyxy
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))
    keys: list[int | str] = field(default_factory=list)  # YOLO id, COCO category id or VOC name per box
    where: list[str] = field(default_factory=list)  # "line 3", "annotation id 7", "object 2" per box
    problems: list[Problem] = field(default_factory=list)  # parse problems (their stem is filled in later)
    declared_size: tuple[int, int] | None = None  # (width, height) written in COCO / VOC
    occlusion: list[int] | None = None  # per box, where the format has it (KAIST: 0 none, 1 partial, 2 heavy)
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))  # absolute xyxy
    clip: bool = False  # boxes may reach past the image and are clipped without a problem (KAIST)


@dataclass
class LabelSet:
    """All labels of a data set, by label stem, with the class list."""

    format: LabelFormat
    path: Path
    frames: dict[str, FrameLabels]
    problems: list[Problem] = field(default_factory=list)  # not tied to one frame
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # label stem -> files claiming it
    categories: dict[int, str] = field(default_factory=dict)  # COCO only
    supercategories: dict[int, str] = field(default_factory=dict)  # COCO only: category id -> its supercategory
    class_names: list[str] = field(default_factory=list)
    class_index: dict[int | str, int] = field(default_factory=dict)  # key -> 1-based label
    names_source: str = ""
    notes: list[str] = field(default_factory=list)  # what the reader chose, worth logging (KAIST variant)


def detect_label_format(path: Path) -> LabelFormat:
    """COCO for a .json file; for a folder, VOC if it holds .xml files, else YOLO."""
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        raise DataError(f"{path}: a label file must be a COCO .json (or give a folder of YOLO .txt / VOC .xml files)")
    xml = sum(1 for p in path.iterdir() if p.suffix.lower() == ".xml")
    txt = sum(1 for p in path.iterdir() if p.suffix.lower() == ".txt" and p.name != "classes.txt")
    return "voc" if xml > txt else "yolo"


def load_labels(path: Path, fmt: LabelFormat) -> LabelSet:
    """Parse a label folder (YOLO / VOC) or COCO file; problems are recorded, never raised."""
    if fmt == "yolo":
        return _load_yolo(path)
    if fmt == "coco":
        return _load_coco(path)
    return _load_voc(path)


def _files_by_stem(folder: Path, suffix: str, labels: LabelSet) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not is_listed_file(p) or p.suffix.lower() != suffix or p.name == "classes.txt":
            continue
        if p.stem in found:
            labels.duplicates.setdefault(p.stem, [str(found[p.stem])]).append(str(p))
            continue
        found[p.stem] = p
    return found


def _unreadable(path: Path, what: str, err: Exception) -> Problem:
    detail = broken_link_detail(path) if is_broken_link(path) else f"unreadable {what} ({err})"
    return Problem("unreadable", str(path), detail)


def _listing(groups: dict[object, list[str]], unit: str = "", limit: int = 5) -> str:
    """``'car' (lines 1, 2), ...`` for the first ``limit`` duplicated keys (one line)."""
    prefix = f"{unit} " if unit else ""
    items = [f"{key!r} ({prefix}{', '.join(where)})" for key, where in list(groups.items())[:limit]]
    more = f" and {len(groups) - limit} more" if len(groups) > limit else ""
    return ", ".join(items) + more


def _finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _load_yolo(folder: Path) -> LabelSet:
    labels = LabelSet("yolo", folder, {})
    for stem, path in _files_by_stem(folder, ".txt", labels).items():
        frame = FrameLabels(str(path), normalised=True)
        labels.frames[stem] = frame
        try:
            text = path.read_text(encoding=TEXT_ENCODING)
        except (OSError, UnicodeDecodeError) as err:
            frame.problems.append(_unreadable(path, "label file", err))
            continue
        boxes = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            parts = line.split()
            if len(parts) != 5:
                frame.problems.append(Problem("bad_label", str(path),
                                              f"{where}: expected 5 numbers (class xc yc w h), got {len(parts)} values"))
                continue
            try:
                values = [float(v) for v in parts]
            except ValueError:
                frame.problems.append(Problem("bad_label", str(path), f"{where}: not 5 numbers: {line.strip()!r}"))
                continue
            if not _finite(values):
                frame.problems.append(Problem("not_finite", str(path), f"{where}: NaN/inf value: {line.strip()!r}"))
                continue
            cls, xc, yc, w, h = values
            if cls < 0 or cls != int(cls):
                frame.problems.append(Problem("bad_label", str(path),
                                              f"{where}: class id must be a whole number >= 0, got {parts[0]}"))
                continue
            if w <= 0 or h <= 0:
                frame.problems.append(Problem("zero_area", str(path), f"{where}: zero-area box (w={w:g}, h={h:g})"))
                continue
            x0, y0, x1, y1 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
            tol = NORMALISED_TOLERANCE
            if min(x0, y0) < -tol or max(x1, y1) > 1 + tol:
                frame.problems.append(Problem(
                    "out_of_range", str(path),
                    f"{where}: box outside [0, 1] (x0={x0:.4g}, y0={y0:.4g}, x1={x1:.4g}, y1={y1:.4g})"))
                continue
            boxes.append((x0, y0, x1, y1))
            frame.keys.append(int(cls))
            frame.where.append(where)
        frame.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return labels


def _is_id(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _load_coco(path: Path) -> LabelSet:
    labels = LabelSet("coco", path, {})
    try:
        data = json.loads(path.read_text(encoding=TEXT_ENCODING))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        labels.problems.append(Problem("unreadable", str(path), f"unreadable COCO file ({err})"))
        return labels
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        labels.problems.append(Problem("bad_label", str(path), "not a COCO file: no 'images' list"))
        return labels
    category_ids: dict[int, list[str]] = {}
    for cat in data.get("categories") or []:
        if isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str):
            category_ids.setdefault(cat["id"], []).append(repr(cat["name"]))
            labels.categories.setdefault(cat["id"], cat["name"])  # the first entry of a repeated id counts
            if isinstance(cat.get("supercategory"), str):
                labels.supercategories.setdefault(cat["id"], cat["supercategory"])
        else:
            labels.problems.append(Problem("bad_label", str(path), f"category without integer id and name: {cat!r}"))
    repeated = {cid: names for cid, names in category_ids.items() if len(names) > 1}
    if repeated:
        labels.problems.append(Problem("duplicate_id", str(path), "category ids listed more than once in "
                                       f"'categories': {_listing(repeated, 'names')}; give each category its own id"))
    by_id: dict[object, FrameLabels] = {}
    image_names: dict[object, list[str]] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or not _is_id(entry.get("id")) or not isinstance(entry.get("file_name"), str):
            labels.problems.append(Problem("bad_label", str(path), f"image entry without id and file_name: {entry!r}"))
            continue
        image_names.setdefault(entry["id"], []).append(entry["file_name"])
        stem = Path(entry["file_name"]).stem
        width, height = entry.get("width"), entry.get("height")
        size = (int(width), int(height)) if isinstance(width, int) and isinstance(height, int) else None
        frame = FrameLabels(f"{path} [{entry['file_name']}]", normalised=False, declared_size=size)
        if stem in labels.frames:
            labels.duplicates.setdefault(stem, [labels.frames[stem].path]).append(frame.path)
            continue
        labels.frames[stem] = frame
        by_id.setdefault(entry["id"], frame)
    shared = {image_id: names for image_id, names in image_names.items() if len(names) > 1}
    if shared:
        # their annotations cannot be told apart: they all go to the first image of the id
        labels.problems.append(Problem("duplicate_id", str(path), "image ids used by more than one entry of "
                                       f"'images': {_listing(shared)}; give each image its own id"))
    boxes: dict[int, list[tuple[float, float, float, float]]] = {}
    for ann in data.get("annotations") or []:
        if not isinstance(ann, dict):
            labels.problems.append(Problem("bad_label", str(path), f"annotation is not an object: {ann!r}"))
            continue
        where = f"annotation id {ann.get('id', '?')}"
        frame = by_id.get(ann.get("image_id"))
        if frame is None:
            labels.problems.append(Problem("orphan_label", str(path),
                                           f"{where}: image_id {ann.get('image_id')!r} is not in 'images'",
                                           severity="warning"))
            continue
        if ann.get("iscrowd", 0):
            continue
        bbox = ann.get("bbox")
        values = [_number(v) for v in bbox] if isinstance(bbox, list) else []
        if len(values) != 4 or any(v is None for v in values) or not isinstance(ann.get("category_id"), int):
            frame.problems.append(Problem("bad_label", frame.path,
                                          f"{where}: needs bbox [x, y, w, h] (4 numbers) and an integer category_id"))
            continue
        x, y, w, h = (float(v) for v in values)  # type: ignore[arg-type]
        if not _finite([x, y, w, h]):
            frame.problems.append(Problem("not_finite", frame.path, f"{where}: NaN/inf in bbox {bbox}"))
            continue
        if w <= 0 or h <= 0:
            frame.problems.append(Problem("zero_area", frame.path, f"{where}: zero-area box (w={w:g}, h={h:g})"))
            continue
        key = id(frame)
        boxes.setdefault(key, []).append((x, y, x + w, y + h))
        frame.keys.append(ann["category_id"])
        frame.where.append(where)
    for frame in labels.frames.values():
        frame.boxes = np.asarray(boxes.get(id(frame), []), np.float64).reshape(-1, 4)
    return labels


def merge_coco_labels(parts: list[tuple[str, LabelSet]], root: Path) -> LabelSet:
    """One LabelSet from the COCO files of several split folders (the coco layout).

    ``parts`` are (frame-name prefix, the split's parsed COCO file); a frame ``000001`` of the prefix ``train``
    becomes ``train_000001``. Categories are merged by name: the same name is one class whatever its id in
    each file (its smallest id stands for it; boxes are re-keyed to that id). Problems: an id naming different
    categories in two files (``duplicate_id``, naming both files), a name given two ids within one file
    (``duplicate_class``), and annotations whose ``category_id`` is not in their file's ``categories``
    (``unnamed_class``, naming the file, the annotation id and the category id; the box is left out).

    Roboflow exports list their supercategory as a category too (often id 0, ``{"id": 0, "name": "objects",
    "supercategory": "none"}``) that no box uses while the real classes name it as their ``supercategory``.
    Such a category (no annotation in any split, and another category's supercategory) is dropped, so the
    classes are the real ones, 1..N; a note lists what was dropped.
    """
    merged = LabelSet("coco", root, {})
    owner: dict[int, tuple[str, Path]] = {}  # category id -> (name, the first file naming it)
    for _, part in parts:
        merged.problems.extend(part.problems)
        repeated = _repeated([(name, str(cid)) for cid, name in sorted(part.categories.items())])
        if repeated:
            merged.problems.append(Problem("duplicate_class", str(part.path), "category names listed more than "
                                           f"once in 'categories': {_listing(repeated, 'ids')}; list each class once"))
        for cid, name in sorted(part.categories.items()):
            if cid in owner and owner[cid][0] != name:
                merged.problems.append(Problem(
                    "duplicate_id", str(part.path), f"category id {cid} is {name!r} here but {owner[cid][0]!r} in "
                    f"{owner[cid][1]}; the split folders' COCO files must give a category the same name for one id "
                    "(the same name is the same class, whatever its id)"))
                continue
            owner.setdefault(cid, (name, part.path))
    canonical: dict[str, int] = {}  # name -> the id standing for it
    for cid, (name, _) in sorted(owner.items()):
        canonical.setdefault(name, cid)
    used = {part.categories.get(key) for _, part in parts for frame in part.frames.values() for key in frame.keys
            if isinstance(key, int)}
    # the supercategories named by a category other than themselves
    parents = {sup for _, part in parts for cid, sup in part.supercategories.items()
               if part.categories.get(cid) != sup}
    placeholders = sorted(name for name in canonical if name not in used and name in parents)
    for name in placeholders:
        del canonical[name]
    if placeholders:
        merged.notes.append(f"COCO categories {', '.join(repr(n) for n in placeholders)} in {root} have no "
                            "annotations and are the supercategory of other categories (as Roboflow exports list "
                            "them): left out of the classes")
    merged.categories = {cid: name for name, cid in canonical.items()}
    for prefix, part in parts:
        for label_stem, paths in part.duplicates.items():
            merged.duplicates[f"{prefix}_{label_stem}"] = paths
        for label_stem, frame in part.frames.items():
            keep: list[int] = []
            keys: list[int | str] = []
            for index, (key, where) in enumerate(zip(frame.keys, frame.where)):
                name = part.categories.get(key) if isinstance(key, int) else None
                if name is None or canonical.get(name) is None or owner.get(key, ("",))[0] != name:
                    if name is None:
                        known = ", ".join(str(c) for c in sorted(part.categories)) or "none"
                        frame.problems.append(Problem(
                            "unnamed_class", frame.path, f"{where}: unknown category_id {key}, not in the file's "
                            f"'categories' (ids {known})"))
                    continue  # an id naming two categories: reported above, its boxes cannot be trusted
                keep.append(index)
                keys.append(canonical[name])
            frame.boxes = frame.boxes[keep].reshape(-1, 4)
            frame.where = [frame.where[i] for i in keep]
            frame.keys = keys
            merged.frames[f"{prefix}_{label_stem}"] = frame
    return merged


def _xml_number(node: ET.Element | None, tag: str) -> float | None:
    text = node.findtext(tag) if node is not None else None
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _load_voc(folder: Path) -> LabelSet:
    labels = LabelSet("voc", folder, {})
    for stem, path in _files_by_stem(folder, ".xml", labels).items():
        frame = FrameLabels(str(path), normalised=False)
        labels.frames[stem] = frame
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as err:
            frame.problems.append(_unreadable(path, "VOC XML", err))
            continue
        size = root.find("size")
        width, height = _xml_number(size, "width"), _xml_number(size, "height")
        if width and height:
            frame.declared_size = (int(width), int(height))
        boxes = []
        for number, obj in enumerate(root.findall("object"), start=1):
            where = f"object {number}"
            name = (obj.findtext("name") or "").strip()
            box = obj.find("bndbox")
            values = [_xml_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax")]
            if not name or any(v is None for v in values):
                frame.problems.append(Problem("bad_label", str(path),
                                              f"{where}: needs a name and bndbox xmin ymin xmax ymax numbers"))
                continue
            x0, y0, x1, y1 = (float(v) for v in values)  # type: ignore[arg-type]
            if not _finite([x0, y0, x1, y1]):
                frame.problems.append(Problem("not_finite", str(path), f"{where}: NaN/inf in bndbox"))
                continue
            if x1 <= x0 or y1 <= y0:
                frame.problems.append(Problem("zero_area", str(path),
                                              f"{where}: zero-area box ({x0:g}, {y0:g}, {x1:g}, {y1:g})"))
                continue
            boxes.append((x0, y0, x1, y1))
            frame.keys.append(name)
            frame.where.append(where)
        frame.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return labels


# ----------------------------------------------------------------------------------------------- KAIST
KAIST_CLASS = "person"
KAIST_IGNORE_LABELS = ("people", "cyclist", "person?")
_KAIST_SET = re.compile(r"^set\d+$")
_KAIST_VIDEO = re.compile(r"^V\d+$")
_KAIST_FRAME = re.compile(r"^I\d+$")


def kaist_stem(parts: tuple[str, ...] | list[str]) -> tuple[str | None, list[str]]:
    """``setNN_VNNN_INNNNN`` from the parts of a KAIST path (``set06/V000/I00019``, ``set06_V000_I00019``,
    ``set06/V000/lwir/I00019``), and the parts that are neither set, video nor frame (a modality folder).

    The stem keeps set and video, so that the splitter groups whole sequences (``group_by: auto``) and the
    day/night subsets can tell the set. None when set, video or frame is missing.
    """
    tokens = [t for part in parts for t in part.split("_") if t]
    found: dict[str, str] = {}
    rest = []
    for token in tokens:
        for key, pattern in (("set", _KAIST_SET), ("video", _KAIST_VIDEO), ("frame", _KAIST_FRAME)):
            if pattern.match(token) and key not in found:
                found[key] = token
                break
        else:
            rest.append(token)
    if len(found) < 3:
        return None, rest
    return f"{found['set']}_{found['video']}_{found['frame']}", rest


def load_kaist_labels(folder: Path, modality_folders: dict[str, str], label_modality: str | None) -> LabelSet:
    """Parse KAIST annotations (original, sanitized or paired; see the module docstring) under ``folder``.

    ``modality_folders`` maps each modality's image folder name (``visible``, ``lwir``) to the modality name;
    ``label_modality`` (a modality name or folder name; None: the thermal one) picks whose boxes paired
    annotations give. DataError when paired annotations lack that modality. Parse problems are recorded.
    """
    labels = LabelSet("kaist", folder, {})
    per_modality: dict[str, dict[str, Path]] = {}
    unnamed: list[str] = []
    for path in sorted(folder.rglob("*.txt")):
        if not is_listed_file(path):
            continue
        relative = path.relative_to(folder).with_suffix("")
        stem, rest = kaist_stem(relative.parts)
        if stem is None:
            unnamed.append(str(path))
            continue
        names = [*relative.parts[:-1], *rest]  # a modality folder, or a modality token of a flat name
        modality = next((modality_folders[t] for t in names if t in modality_folders), "")
        files = per_modality.setdefault(modality, {})
        if stem in files:
            labels.duplicates.setdefault(stem, [str(files[stem])]).append(str(path))
            continue
        files[stem] = path
    if unnamed:
        labels.problems.append(Problem("orphan_label", unnamed[0], f"{len(unnamed)} .txt file(s) under {folder} "
                                       "name no setNN/VNNN/INNNNN frame and are not read", severity="warning"))
    paired = sorted(m for m in per_modality if m)
    if paired:
        chosen = _paired_choice(folder, paired, modality_folders, label_modality)
        labels.notes.append(f"paired KAIST annotations in {folder} (boxes per modality: {', '.join(paired)}): "
                            f"the {chosen} boxes are the labels (data.label_modality)")
        files = per_modality[chosen]
        if per_modality.get(""):
            labels.notes.append(f"{len(per_modality[''])} annotation files under {folder} name no modality "
                                "folder and are not read (paired annotations)")
    else:
        files = per_modality.get("", {})
        if label_modality is not None:
            labels.notes.append(f"data.label_modality={label_modality!r} is not used: the annotations in {folder} "
                                "are not paired (one box file per frame for all modalities)")
    for stem, path in files.items():
        labels.frames[stem] = _read_kaist_file(path)
    return labels


def _paired_choice(folder: Path, paired: list[str], modality_folders: dict[str, str],
                   label_modality: str | None) -> str:
    """The modality whose boxes paired annotations give: ``label_modality`` (name or folder), else thermal.

    Thermal (the ``lwir`` folder) by default: half of KAIST is filmed at night, where many pedestrians are
    barely visible in the colour image and its boxes are the less certain ones, while the thermal image
    shows every pedestrian by day and night.
    """
    if label_modality is None:
        preferred = [modality_folders.get("lwir"), "thermal"]
        return next((name for name in preferred if name in paired), paired[0])
    wanted = modality_folders.get(label_modality, label_modality)
    if wanted not in paired:
        raise DataError(f"{folder}: data.label_modality={label_modality!r} has no paired annotations here "
                        f"(found boxes for {', '.join(paired)})")
    return wanted


def _read_kaist_file(path: Path) -> FrameLabels:
    frame = FrameLabels(str(path), normalised=False, occlusion=[], clip=True)
    try:
        text = path.read_text(encoding=TEXT_ENCODING)
    except (OSError, UnicodeDecodeError) as err:
        frame.problems.append(_unreadable(path, "KAIST annotation", err))
        return frame
    boxes, ignored = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("%"):  # "% bbGt version=3" header
            continue
        where = f"line {number}"
        parts = stripped.split()
        if len(parts) < 6:
            frame.problems.append(Problem("bad_label", str(path), f"{where}: expected label x y w h occ ... "
                                          f"(bbGt format), got {len(parts)} values"))
            continue
        try:
            x, y, w, h = (float(v) for v in parts[1:5])
            occ = int(float(parts[5]))
            ign = int(float(parts[10])) if len(parts) > 10 else 0
        except ValueError:
            frame.problems.append(Problem("bad_label", str(path), f"{where}: x y w h occ ... must be numbers: "
                                          f"{stripped!r}"))
            continue
        if not _finite([x, y, w, h]):
            frame.problems.append(Problem("not_finite", str(path), f"{where}: NaN/inf value: {stripped!r}"))
            continue
        if w <= 0 or h <= 0:
            # KAIST's own files hold a few degenerate boxes: not worth stopping a run, but counted
            frame.problems.append(Problem("zero_area", str(path), f"{where}: zero-area box (w={w:g}, h={h:g}) "
                                          "left out", severity="warning"))
            continue
        label = parts[0]
        box = (x, y, x + w, y + h)
        if label == KAIST_CLASS and not ign:
            boxes.append(box)
            frame.keys.append(KAIST_CLASS)
            frame.where.append(where)
            frame.occlusion.append(occ)  # type: ignore[union-attr]
            continue
        if label != KAIST_CLASS and label not in KAIST_IGNORE_LABELS:
            frame.problems.append(Problem("unnamed_class", str(path), f"{where}: label {label!r} is not a KAIST "
                                          f"label ({KAIST_CLASS}, {', '.join(KAIST_IGNORE_LABELS)}); used as an "
                                          "ignore region", severity="warning"))
        ignored.append(box)
    frame.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    frame.ignore_boxes = np.asarray(ignored, np.float64).reshape(-1, 4)
    return frame


def _numbered_names(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text(encoding=TEXT_ENCODING).splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


def read_names_file(path: Path) -> list[str]:
    """One class name per non-blank line (``classes.txt``; a UTF-8 byte-order mark is allowed)."""
    return [name for _, name in _numbered_names(path)]


def _repeated(entries: list[tuple[str, str]]) -> dict[object, list[str]]:
    """Names given more than once, with where each time: ``[(name, "3"), ...]`` -> ``{name: ["3", ...]}``."""
    where: dict[object, list[str]] = {}
    for name, place in entries:
        where.setdefault(name, []).append(place)
    return {name: places for name, places in where.items() if len(places) > 1}


def _names_from_file(labels: LabelSet, path: Path) -> list[str] | None:
    """Class names from ``classes.txt``; problems (unreadable, repeated names) go to ``labels.problems``."""
    try:
        numbered = _numbered_names(path)
    except (OSError, UnicodeDecodeError) as err:
        labels.problems.append(_unreadable(path, "class list", err))
        return None
    repeated = _repeated([(name, str(number)) for number, name in numbered])
    if repeated:
        labels.problems.append(Problem("duplicate_class", str(path), f"class names listed more than once: "
                                       f"{_listing(repeated, 'lines')}; list each class once"))
    return [name for _, name in numbered]


def resolve_classes(labels: LabelSet, names: list[str] | None, names_files: list[Path],
                    preferred: tuple[str, ...] = ()) -> dict[str, list[Problem]]:
    """Fill ``labels.class_names`` / ``class_index``; return ``unnamed_class`` problems by label stem.

    ``names`` is ``data.names``; ``names_files`` are ``classes.txt`` candidates (YOLO only), the first
    existing one is used; ``preferred`` is the layout's usual class order (VOC).
    """
    if labels.format == "yolo":
        if names is not None:
            labels.class_names, labels.names_source = list(names), "data.names"
        else:
            for candidate in names_files:
                if candidate.is_file():
                    found = _names_from_file(labels, candidate)
                    if found is None:
                        continue
                    labels.class_names, labels.names_source = found, str(candidate)
                    break
            else:
                ids = [k for f in labels.frames.values() for k in f.keys]
                top = max(ids) if ids else 0
                labels.class_names = [f"class_{i}" for i in range(int(top) + 1)]
                labels.names_source = "ids seen in the labels"
        labels.class_index = {i: i + 1 for i in range(len(labels.class_names))}
    elif labels.format == "coco":
        if names is not None:
            labels.class_names, labels.names_source = list(names), "data.names"
            position = {n: i + 1 for i, n in enumerate(names)}
            labels.class_index = {cid: position[n] for cid, n in labels.categories.items() if n in position}
        else:
            ordered = sorted(labels.categories)
            labels.class_names = [labels.categories[c] for c in ordered]
            labels.class_index = {c: i + 1 for i, c in enumerate(ordered)}
            labels.names_source = "COCO categories"
            repeated = _repeated([(labels.categories[c], str(c)) for c in ordered])
            if repeated:
                labels.problems.append(Problem("duplicate_class", str(labels.path), "category names listed more "
                                               f"than once in 'categories': {_listing(repeated, 'ids')}; list each "
                                               "class once (or set data.names to merge them)"))
    elif labels.format == "kaist":
        if names is not None and list(names) != [KAIST_CLASS]:
            raise DataError(f"data.names {list(names)}: KAIST annotations have the one class {KAIST_CLASS!r} "
                            f"(people, cyclist and person? are ignore regions); leave data.names unset")
        labels.class_names, labels.names_source = [KAIST_CLASS], "KAIST (person)"
        labels.class_index = {KAIST_CLASS: 1}
    else:
        if names is not None:
            labels.class_names, labels.names_source = list(names), "data.names"
        else:
            seen = {k for f in labels.frames.values() for k in f.keys}
            labels.class_names = list(preferred) + sorted(str(k) for k in seen if k not in preferred)
            labels.names_source = "VOC object names"
        labels.class_index = {n: i + 1 for i, n in enumerate(labels.class_names)}
    unnamed: dict[str, list[Problem]] = {}
    for stem, frame in labels.frames.items():
        for key, where in zip(frame.keys, frame.where):
            if key not in labels.class_index:
                if labels.format == "coco" and key in labels.categories:
                    text = f"{where}: category {labels.categories[key]!r} is not in data.names"
                elif labels.format == "coco":
                    known = ", ".join(str(c) for c in sorted(labels.categories)) or "none"
                    text = f"{where}: unknown category_id {key}, not in the file's 'categories' (ids {known})"
                elif labels.format == "voc":
                    text = f"{where}: class {key!r} is not in data.names"
                else:
                    text = (f"{where}: class id {key} has no name "
                            f"({len(labels.class_names)} names from {labels.names_source})")
                unnamed.setdefault(stem, []).append(Problem("unnamed_class", frame.path, text, stem))
    return unnamed


def boxes_for_frame(frame: FrameLabels, labels: LabelSet, width: int, height: int, stem: str
                    ) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Absolute pixel xyxy float32 boxes and 1-based int64 labels for an image of ``width`` x ``height``.

    Boxes whose class has no name are left out (they are reported by :func:`resolve_classes`); boxes
    beyond the image by more than the tolerance are left out and reported here.
    """
    annotations, problems = frame_annotations(frame, labels, width, height, stem)
    return annotations.boxes, annotations.labels, problems


def _clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray | None:
    clipped = np.clip(box, 0, [width, height, width, height])
    return None if clipped[2] <= clipped[0] or clipped[3] <= clipped[1] else clipped


def frame_annotations(frame: FrameLabels, labels: LabelSet, width: int, height: int, stem: str
                      ) -> tuple[BoxAnnotations, list[Problem]]:
    """:func:`boxes_for_frame` with the per-box occlusion and the ignore regions (clipped to the image)."""
    problems: list[Problem] = []
    keep_boxes, keep_labels, keep_occlusion = [], [], []
    scale = np.array([width, height, width, height], np.float64) if frame.normalised else None
    tol_x = max(PIXEL_TOLERANCE, NORMALISED_TOLERANCE * width)
    tol_y = max(PIXEL_TOLERANCE, NORMALISED_TOLERANCE * height)
    occlusion = frame.occlusion if frame.occlusion is not None else [0] * len(frame.keys)
    for box, key, where, occ in zip(frame.boxes, frame.keys, frame.where, occlusion):
        label = labels.class_index.get(key)
        if label is None:
            continue
        if scale is not None:
            box = box * scale
        elif not frame.clip:
            x0, y0, x1, y1 = box
            if x0 < -tol_x or y0 < -tol_y or x1 > width + tol_x or y1 > height + tol_y:
                problems.append(Problem("out_of_range", frame.path,
                                        f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) outside the "
                                        f"{width}x{height} image", stem))
                continue
        clipped = _clip_box(box, width, height)
        if clipped is None:
            if frame.clip:  # a box wholly outside the image (KAIST): nothing of it to learn, not an error
                problems.append(Problem("zero_area", frame.path, f"{where}: box outside the {width}x{height} "
                                        "image, left out", stem, "warning"))
            else:
                problems.append(Problem("zero_area", frame.path,
                                        f"{where}: zero-area box after clipping to the image", stem))
            continue
        keep_boxes.append(clipped)
        keep_labels.append(label)
        keep_occlusion.append(occ)
    ignore = [c for c in (_clip_box(b, width, height) for b in frame.ignore_boxes) if c is not None]
    return BoxAnnotations(
        boxes=np.asarray(keep_boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(keep_labels, np.int64),
        occlusion=np.asarray(keep_occlusion, np.int64) if frame.occlusion is not None else None,
        ignore_boxes=np.asarray(ignore, np.float32).reshape(-1, 4),
    ), problems
