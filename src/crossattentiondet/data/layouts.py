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


def detect_layout(root: Path, data: DataConfig | None = None) -> str:
    """Tell the layout of ``root`` from its folders; DataError naming what was expected if none fits."""
    data = data or DataConfig()
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
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
    present = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
    raise DataError(
        f"{root}: cannot tell the data layout (found {', '.join(present) or 'no folders'}); expected images/ + "
        "labels/ (original), visible/ + infrared/ + Annotations/ (llvip), JPEGImages/ + Annotations/ (flir), "
        f"Vis/ + Ir/ + Annotation/ (m3fd) or one folder per modality ({', '.join(folders)}); "
        "say it with --layout / data.layout")
