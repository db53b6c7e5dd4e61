"""Data set layouts: the original npy layout, generic paired folders, and presets for public data sets.

=========  =====================================================================  ==========================
layout     detected by                                                            labels / test partition
=========  =====================================================================  ==========================
original   ``images/`` holding ``*.npy`` (H, W, C) arrays                           ``labels/`` YOLO
llvip      ``visible/`` and ``infrared/`` (each with ``train/`` and ``test/``)      ``Annotations/`` VOC; the
                                                                                  ``test/`` folders
flir       ``JPEGImages/`` with ``FLIR_xxxxx_RGB.jpg`` and                          ``Annotations/`` VOC
           ``FLIR_xxxxx_PreviewData.jpeg`` (FLIR-aligned, Zhang et al. 2020)        (``FLIR_xxxxx_PreviewData
                                                                                  .xml``); ``align_validation
                                                                                  .txt``
m3fd       ``Vis/`` and ``Ir/`` (M3FD_Detection, Liu et al. 2022)                  ``Annotation/`` VOC;
                                                                                  ``meta/test.txt`` if present
kaist      ``setNN/VNNN/visible/INNNNN.jpg`` and ``setNN/VNNN/lwir/INNNNN.jpg``      ``annotations/`` bbGt text
           (KAIST multispectral pedestrians, Hwang et al. 2015); frames are named    (original, sanitized or
           ``setNN_VNNN_INNNNN``                                                     paired); ``test-all-20.txt``
                                                                                  (or sets 06-11) = test
coco       split folders ``train/ val|valid|validation/ test/`` (any of them), each   one COCO json per split:
           with ``images/`` + ``annotations/*.json`` (the seed project's) or with   ``annotations/*.json``
           the images beside ``_annotations.coco.json`` (Roboflow's export);        (``instances_*.json``
           frames are named ``<split folder>_<file stem>`` (``train_000001``)       preferred when several) or
                                                                                  ``_annotations.coco.json``;
                                                                                  the split folders are the
                                                                                  splits
folders    one folder per configured modality, named after the modality (or its  ``labels/`` YOLO,
           ``source``), e.g. ``rgb/ thermal/ event/`` from ``cadet data synth``   ``Annotations/`` VOC or
                                                                                  ``annotations.json`` COCO
=========  =====================================================================  ==========================

A preset maps modality names to folders (``rgb`` -> ``visible``, ``thermal`` -> ``infrared`` ...). When
``data.modalities`` is left at its default (rgb + thermal + event), modalities a layout does not have are
dropped (LLVIP, FLIR, M3FD and KAIST have no event camera); with user-defined modalities every one must be found.

KAIST keeps each modality in a sub-folder of every video (``set00/V000/lwir/``): there a modality's
``source`` names that sub-folder. Its image lists (``train-all-02.txt``, ``test-all-20.txt``, found in the
root, ``imageSets/`` or ``splits/``; or ``data.split.*_file``) sample frames of their videos: the test list is
the test split, and the frames of listed videos that no list names are left out (counted in the log), so
that no neighbour of a test frame is trained on. Without a test list, sets 06-11 (KAIST's test sets) are
the test split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from crossattentiondet.config import DataConfig
from crossattentiondet.data.imageio import IMAGE_EXTENSIONS
from crossattentiondet.errors import DataError

LAYOUTS = ("original", "folders", "llvip", "flir", "m3fd", "kaist", "coco")
# Sub-folders of a modality folder that carry a data set's own partition (LLVIP: train/ and test/).
PARTITION_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class FolderPreset:
    """Where a paired-folder data set keeps each modality, its labels and its own train/test partition."""

    name: str
    folders: dict[str, tuple[str, str]] = field(default_factory=dict)  # modality -> (folder, file-name suffix)
    labels: tuple[str, ...] = ()  # label folder / file candidates, relative to the root
    label_format: str = "auto"
    partition_files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> stem-list candidates
    class_names: tuple[str, ...] = ()  # usual class order (VOC names found elsewhere come after, sorted)


PRESETS: dict[str, FolderPreset] = {
    "llvip": FolderPreset(
        "llvip", {"rgb": ("visible", ""), "thermal": ("infrared", "")}, ("Annotations",), "voc",
        class_names=("person",)),
    "flir": FolderPreset(
        "flir", {"rgb": ("JPEGImages", "_RGB"), "thermal": ("JPEGImages", "_PreviewData")}, ("Annotations",), "voc",
        partition_files={"train": ("align_train.txt", "ImageSets/Main/align_train.txt"),
                         "test": ("align_validation.txt", "ImageSets/Main/align_validation.txt")},
        class_names=("person", "car", "bicycle")),
    "m3fd": FolderPreset(
        "m3fd", {"rgb": ("Vis", ""), "thermal": ("Ir", "")}, ("Annotation",), "voc",
        partition_files={"train": ("meta/train.txt",), "val": ("meta/val.txt",), "test": ("meta/test.txt",)},
        class_names=("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")),
    "kaist": FolderPreset(
        "kaist", {"rgb": ("visible", ""), "thermal": ("lwir", "")},
        ("annotations", "annotations_paired", "annotations-paired"), "kaist",
        partition_files={
            "train": tuple(f"{d}train-all-{n}.txt" for n in ("02", "20", "04", "01")
                           for d in ("", "imageSets/", "splits/")),
            "test": tuple(f"{d}test-all-20.txt" for d in ("", "imageSets/", "splits/"))},
        class_names=("person",)),
    "folders": FolderPreset(
        "folders", labels=("labels", "Annotations", "annotations.json", "labels.json", "instances.json")),
    # the rgb images of a COCO split folder: <split>/images/ (or the split folder itself, Roboflow)
    "coco": FolderPreset("coco", {"rgb": ("images", "")}, label_format="coco"),
}
ROBOFLOW_COCO_FILE = "_annotations.coco.json"
COCO_IMAGES_FOLDER = "images"


@dataclass(frozen=True)
class CocoSplitFolder:
    """One split folder of a COCO tree: its name on disk, our split, and where its images lie."""

    name: str  # the folder name as on disk (``valid``): the prefix of its frame names
    split: str  # train, val or test
    folder: Path

    @property
    def images(self) -> Path:
        """``<split>/images/``, or the split folder itself (Roboflow keeps the images beside the json)."""
        inner = self.folder / COCO_IMAGES_FOLDER
        return inner if inner.is_dir() else self.folder

    def modality_folder(self, source: str) -> Path:
        """Where modality files with folder name ``source`` lie in this split (``images`` = the rgb images)."""
        return self.images if source == COCO_IMAGES_FOLDER else self.folder / source


def coco_split_folders(root: Path) -> list[CocoSplitFolder]:
    """The split folders of a COCO tree (``train/``, ``val/``, ``valid/``, ``validation/``, ``test/``, any case),
    in train, val, test order."""
    if not root.is_dir():
        return []
    found = [CocoSplitFolder(p.name, PARTITION_FOLDERS[p.name.lower()], p) for p in sorted(root.iterdir())
             if p.is_dir() and p.name.lower() in PARTITION_FOLDERS]
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(found, key=lambda s: (order[s.split], s.name))


def coco_file_candidates(folder: Path) -> list[Path]:
    """COCO json files a split folder may hold: ``annotations/*.json``, ``_annotations.coco.json``,
    ``annotations.json``."""
    out: list[Path] = []
    annotations = folder / "annotations"
    if annotations.is_dir():
        out += sorted(p for p in annotations.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    out += [p for p in (folder / ROBOFLOW_COCO_FILE, folder / "annotations.json") if p.is_file()]
    return out


def coco_split_file(folder: Path) -> Path | None:
    """The COCO json of a split folder (None if it has none); DataError naming them if several could be it.

    With several, ``instances_*.json`` (the COCO naming; captions / keypoints files sit beside it) or
    ``annotations.json`` / ``_annotations.coco.json`` is taken when exactly one such file is there.
    """
    candidates = coco_file_candidates(folder)
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    preferred = [p for p in candidates if p.name.startswith("instances")
                 or p.name in ("annotations.json", ROBOFLOW_COCO_FILE)]
    if len(preferred) == 1:
        return preferred[0]
    names = ", ".join(str(p.relative_to(folder)) for p in candidates)
    raise DataError(f"{folder}: several COCO files ({names}); keep one per split folder (coco layout)")
KAIST_SET = re.compile(r"^set(\d+)$")
KAIST_VIDEO = re.compile(r"^V\d+$")
KAIST_TEST_SETS = range(6, 12)  # set06-set11: KAIST's test sets (Hwang et al. 2015)


def _has_files(folder: Path, suffixes: tuple[str, ...], marker: str = "") -> bool:
    if not folder.is_dir():
        return False
    return any(p.suffix.lower() in suffixes and marker in p.stem for p in folder.iterdir())


def modality_folder_candidates(data: DataConfig, root: Path) -> dict[str, Path]:
    """For the generic layout: modality name -> its folder (``source`` if a string, else its name)."""
    return {m.name: root / (m.source if isinstance(m.source, str) else m.name) for m in data.modalities}


def check_root(root: Path) -> None:
    """DataError unless ``root`` is an existing folder (a file is not "not found": say what it is)."""
    if root.is_dir():
        return
    if root.exists():
        raise DataError(f"{root}: the data root is a file, not a folder (give the data set's folder)")
    raise DataError(f"data root not found: {root}")


def is_empty_folder(folder: Path) -> bool:
    """A folder without any entry."""
    return folder.is_dir() and next(folder.iterdir(), None) is None


def no_frames_message(root: Path, empty: list[Path]) -> str:
    """One line naming the empty folders that left a data set without frames."""
    names = []
    for folder in dict.fromkeys(empty):
        try:
            names.append(f"{folder.relative_to(root)}/")
        except ValueError:
            names.append(str(folder))
    if len(names) > 1:
        return f"{root}: no frames to read, the folders {', '.join(names[:-1])} and {names[-1]} are empty"
    return f"{root}: no frames to read, the folder {names[0]} is empty"


def kaist_videos(root: Path) -> list[Path]:
    """The video folders of a KAIST tree (``root/setNN/VNNN``), sorted."""
    sets = sorted(p for p in root.iterdir() if p.is_dir() and KAIST_SET.match(p.name)) if root.is_dir() else []
    return [v for s in sets for v in sorted(s.iterdir()) if v.is_dir() and KAIST_VIDEO.match(v.name)]


def kaist_set_number(stem: str) -> int | None:
    """The set number of a KAIST frame name (6 for ``set06_V000_I00019``), None for another name."""
    match = KAIST_SET.match(stem.split("_", 1)[0])
    return int(match.group(1)) if match else None


def _data_folder_names(data: DataConfig) -> set[str]:
    """Folder names some layout reads frames or labels from."""
    names = {"images", "labels"} | {m.source if isinstance(m.source, str) else m.name for m in data.modalities}
    for preset in PRESETS.values():
        names |= {folder for folder, _ in preset.folders.values()} | set(preset.labels)
    return names


def detect_layout(root: Path, data: DataConfig | None = None) -> str:
    """Tell the layout of ``root`` from its folders; DataError naming what was expected if none fits."""
    data = data or DataConfig()
    check_root(root)
    if data.images_dir is not None or _has_files(root / "images", (".npy",)):
        return "original"
    if (root / "visible").is_dir() and (root / "infrared").is_dir():
        return "llvip"
    if _has_files(root / "JPEGImages", IMAGE_EXTENSIONS, "_PreviewData"):
        return "flir"
    if (root / "Vis").is_dir() and (root / "Ir").is_dir():
        return "m3fd"
    if any((video / "visible").is_dir() or (video / "lwir").is_dir() for video in kaist_videos(root)):
        return "kaist"
    if any(coco_file_candidates(split.folder) for split in coco_split_folders(root)):
        return "coco"
    folders = modality_folder_candidates(data, root)
    found = [name for name, folder in folders.items() if folder.is_dir()]
    if found and (len(found) == len(folders) or len(found) >= 2):
        return "folders"
    folders_found = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    empty = [p for p in folders_found if is_empty_folder(p)]
    known = [p for p in folders_found if p.name in _data_folder_names(data)]
    if known and all(p in empty for p in known):  # e.g. images/ + labels/ made, never filled
        raise DataError(no_frames_message(root, known))
    present = [p.name + "/" + (" (empty)" if p in empty else "") for p in folders_found]
    raise DataError(
        f"{root}: cannot tell the data layout (found {', '.join(present) or 'no folders'}); expected images/ + "
        "labels/ (original), visible/ + infrared/ + Annotations/ (llvip), JPEGImages/ + Annotations/ (flir), "
        f"Vis/ + Ir/ + Annotation/ (m3fd), set00/V000/visible/ + lwir/ + annotations/ (kaist), train/ val/ "
        "test/ with images/ + annotations/*.json or _annotations.coco.json (coco) or one folder "
        f"per modality ({', '.join(folders)}); "
        "say it with --layout / data.layout")
