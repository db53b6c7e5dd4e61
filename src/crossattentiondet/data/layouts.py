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
folders    one folder per configured modality, named after the modality (or its  ``labels/`` YOLO,
           ``source``), e.g. ``rgb/ thermal/ event/`` from ``cadet data synth``   ``Annotations/`` VOC or
                                                                                  ``annotations.json`` COCO
=========  =====================================================================  ==========================

A preset maps modality names to folders (``rgb`` -> ``visible``, ``thermal`` -> ``infrared`` ...). When
``data.modalities`` is left at its default (rgb + thermal + event), modalities a layout does not have are
dropped (LLVIP, FLIR and M3FD have no event camera); with user-defined modalities every one must be found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crossattentiondet.config import DataConfig
from crossattentiondet.data.imageio import IMAGE_EXTENSIONS
from crossattentiondet.errors import DataError

LAYOUTS = ("original", "folders", "llvip", "flir", "m3fd")
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
    "folders": FolderPreset(
        "folders", labels=("labels", "Annotations", "annotations.json", "labels.json", "instances.json")),
}


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
        f"Vis/ + Ir/ + Annotation/ (m3fd) or one folder per modality ({', '.join(folders)}); "
        "say it with --layout / data.layout")
