"""Opening a data set: which frames exist, where each modality's file is, their labels and class names.

:func:`open_source` returns a :class:`DataSource` for any layout (see :mod:`.layouts`).
``source.load(stem)`` reads one frame and reports every problem it finds (used by the check);
``source.read(stem)`` returns the :class:`~crossattentiondet.data.sample.Sample` or raises
:class:`~crossattentiondet.errors.DataError` naming the file (used by the Dataset).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from crossattentiondet.config import DataConfig, ModalityConfig, default_modalities
from crossattentiondet.data.imageio import (
    IMAGE_EXTENSIONS,
    ImageFileError,
    convert_channels,
    is_listed_file,
    read_image_file,
    read_npy_file,
)
from crossattentiondet.data.labels import (
    TEXT_ENCODING,
    LabelSet,
    detect_label_format,
    frame_annotations,
    kaist_stem,
    load_kaist_labels,
    load_labels,
    merge_coco_labels,
    resolve_classes,
)
from crossattentiondet.data.layouts import (
    COCO_IMAGES_FOLDER,
    KAIST_TEST_SETS,
    LAYOUTS,
    PARTITION_FOLDERS,
    PRESETS,
    CocoSplitFolder,
    FolderPreset,
    check_root,
    coco_split_file,
    coco_split_folders,
    detect_layout,
    is_empty_folder,
    kaist_set_number,
    kaist_videos,
    no_frames_message,
)
from crossattentiondet.data.problems import FrameInfo, Problem
from crossattentiondet.data.sample import BoxAnnotations, Sample
from crossattentiondet.errors import DataError

# Files a data set may carry to describe itself; a modality ``scale`` recorded there is used when the
# config leaves it unset (``cadet data convert`` writes the first, the synthetic generator the second).
METADATA_FILES = ("cadet_data.json", "synth.json")


def resolve_path(text: str | Path, root: Path) -> Path:
    """A configured path: absolute as given; relative to the data root if it exists there, else as given."""
    path = Path(text)
    if path.is_absolute():
        return path
    return root / path if (root / path).exists() else path


def metadata_file(root: Path) -> Path | None:
    """The data set's metadata file (the first of :data:`METADATA_FILES` that exists), or None."""
    return next((root / name for name in METADATA_FILES if (root / name).is_file()), None)


def read_scale_hints(root: Path) -> dict[str, float]:
    """Modality scales recorded in the data set's metadata file (empty if none)."""
    for name in METADATA_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text(encoding=TEXT_ENCODING))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        hints = {}
        for entry in meta.get("modalities", []) if isinstance(meta, dict) else []:
            scale = entry.get("scale") if isinstance(entry, dict) else None
            if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
                hints[str(entry.get("name"))] = float(scale)
        return hints
    return {}


def _described_modalities(root: Path) -> list[ModalityConfig] | None:
    """Modalities of an npy data set written by ``cadet data convert`` (its ``cadet_data.json``)."""
    path = root / METADATA_FILES[0]
    try:
        meta = json.loads(path.read_text(encoding=TEXT_ENCODING)) if path.is_file() else None
        entries = meta["modalities"] if isinstance(meta, dict) else None
        if not entries or not all(isinstance(e.get("source"), list) for e in entries):
            return None
        defaults = {m.name: m for m in default_modalities()}
        out = []
        for e in entries:
            base = defaults.get(e["name"])
            channels = int(e["channels"])
            if base is not None and base.channels == channels:
                mean, std = base.mean, base.std
            else:
                mean, std = [0.5] * channels, [0.5] * channels
            out.append(ModalityConfig(name=e["name"], channels=channels, source=e["source"], mean=mean, std=std))
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class Partitions(dict[str, str]):
    """A data set's own partition: frame stem -> split (``train``, ``val``, ``test``).

    ``complete``: the data set's split folders *are* the split (the coco layout): every frame has its split,
    :func:`~crossattentiondet.data.splits.make_splits` keeps them as given and divides no split by ratios
    except val out of train when no val folder exists. Otherwise (LLVIP's ``test/`` folders, FLIR's
    validation list) the partition fixes val / test and the other frames are divided by the ratios.
    """

    def __init__(self, *args: object, complete: bool = False, **kwargs: str) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.complete = complete


def _is_default(modalities: list[ModalityConfig]) -> bool:
    return modalities == default_modalities()


def effective_modalities(data: DataConfig, layout: str, root: Path) -> tuple[list[ModalityConfig], list[str]]:
    """The modalities as this layout provides them (folder ``source`` and ``suffix`` filled in), plus notes.

    With the default modality list, modalities the layout has no folder for are dropped (noted); with a
    user-defined list a missing modality is a DataError.
    """
    if layout == "original":
        described = _described_modalities(root) if _is_default(data.modalities) else None
        if described and described != data.modalities:
            return described, [f"modalities from {root / METADATA_FILES[0]}: "
                               + ", ".join(f"{m.name} {m.source}" for m in described)]
        for m in data.modalities:
            if not isinstance(m.source, list):
                raise DataError(f"modality '{m.name}': the original layout needs data.modalities[].source = channel "
                                f"indices of the .npy arrays, got {m.source!r}")
        return list(data.modalities), []
    preset = PRESETS[layout]
    default = _is_default(data.modalities)
    found: list[ModalityConfig] = []
    notes: list[str] = []
    for m in data.modalities:
        if isinstance(m.source, str):
            folder, suffix = m.source, m.suffix
        elif m.name in preset.folders:
            folder, suffix = preset.folders[m.name]
        else:
            folder, suffix = m.name, m.suffix
        if not _has_modality_folder(root, layout, folder):
            if default:
                where = f"<split>/{folder}" if layout == "coco" else folder
                notes.append(f"layout {layout}: no {where}/ folder, modality '{m.name}' is not used")
                continue
            where = {"kaist": root / "setNN/VNNN" / folder, "coco": root / "<split>" / folder}.get(layout, root / folder)
            raise DataError(f"{where}: folder of modality '{m.name}' not found (layout {layout}); set "
                            f"data.modalities[].source to the modality's folder")
        found.append(m.model_copy(update={"source": folder, "suffix": suffix}))
    if not found:
        raise DataError(f"{root}: none of the modalities {[m.name for m in data.modalities]} has a folder")
    return found, notes


def _has_modality_folder(root: Path, layout: str, folder: str) -> bool:
    """Whether the modality folder exists: ``root/folder``, in some video of a KAIST tree, or in some split
    folder of a COCO tree (its ``images`` are there whenever a split folder is)."""
    if layout == "kaist":
        return any((video / folder).is_dir() for video in kaist_videos(root))
    if layout == "coco":
        return any(split.modality_folder(folder).is_dir() for split in coco_split_folders(root))
    return (root / folder).is_dir()


class DataSource(ABC):
    """One opened data set. Attributes:

    ``root``, ``layout``; ``modalities`` (effective, see :func:`effective_modalities`); ``stems`` (sorted
    frame names); ``labels`` (:class:`~.labels.LabelSet`); ``class_names``; ``partitions`` (stem -> the data
    set's own split, e.g. LLVIP's test folder); ``notes`` (adaptations worth logging); ``scale_hints``.
    """

    def __init__(self, root: Path, layout: str, data: DataConfig, modalities: list[ModalityConfig],
                 notes: list[str], require_labels: bool = True) -> None:
        self.root = root
        self.require_labels = require_labels
        self.layout = layout
        self.data = data
        self.modalities = modalities
        self.notes = notes
        self.preset: FolderPreset | None = PRESETS.get(layout)
        self.files: dict[str, dict[str, Path]] = {}  # stem -> modality name (or "npy") -> file
        self.partitions: dict[str, str] = {}
        self.frame_problems: dict[str, list[Problem]] = {}
        self.global_problems: list[Problem] = []
        self.scale_hints = read_scale_hints(root)
        self.metadata_path = metadata_file(root) if self.scale_hints else None  # where the hints come from
        self.label_of: dict[str, str] = {}  # frame stem -> label stem
        self.stems: list[str] = []
        self.left_out: set[str] = set()  # frames the layout leaves out on purpose (KAIST lists): no orphan labels
        self.labels: LabelSet

    # ------------------------------------------------------------------------------------ building
    def _add(self, problem: Problem) -> None:
        if problem.stem is None:
            self.global_problems.append(problem)
        else:
            self.frame_problems.setdefault(problem.stem, []).append(problem)

    def _open_labels(self, default_candidates: tuple[str, ...]) -> None:
        data = self.data
        if data.labels is not None:
            path = resolve_path(data.labels, self.root)
            if not path.exists():
                raise DataError(f"labels not found: {path} (data.labels)")
        else:
            candidates = [self.root / c for c in default_candidates]
            existing = [c for c in candidates if c.exists()]
            if not existing and not self.require_labels:  # inference on unlabelled frames
                self.labels = LabelSet(format="yolo", path=self.root, frames={}, class_names=list(data.names or []))
                return
            if not existing:
                raise DataError(f"{self.root}: no labels found (looked for {', '.join(default_candidates)}); "
                                "set data.labels")
            path = existing[0]
        fmt = data.label_format
        if fmt == "auto":
            fmt = self.preset.label_format if self.preset and self.preset.label_format != "auto" else \
                detect_label_format(path)
        if (fmt == "coco") != path.is_file():
            wanted = "a COCO .json file" if fmt == "coco" else f"a folder of {fmt.upper()} files"
            raise DataError(f"{path}: label format {fmt} needs {wanted} (data.labels / data.label_format)")
        if fmt == "kaist":
            folders = {str(m.source): m.name for m in self.modalities}
            self.labels = load_kaist_labels(path, folders, data.label_modality)
            self.notes.extend(self.labels.notes)
        else:
            self.labels = load_labels(path, fmt)  # type: ignore[arg-type]
        label_dir = path if path.is_dir() else path.parent
        unnamed = resolve_classes(self.labels, data.names, [self.root / "classes.txt", label_dir / "classes.txt"],
                                  self.preset.class_names if self.preset else ())
        suffixes = sorted({m.suffix for m in self.modalities if m.suffix}, key=len, reverse=True)
        frames = set(self.files)
        claimed: dict[str, str] = {}
        for label_stem, frame_labels in self.labels.frames.items():
            stem = label_stem if label_stem in frames else None
            for suffix in suffixes if stem is None else ():
                if label_stem.endswith(suffix) and label_stem[: -len(suffix)] in frames:
                    stem = label_stem[: -len(suffix)]
                    break
            if stem is None:
                if label_stem not in self.left_out:
                    self._add(Problem("orphan_label", frame_labels.path, "label without an image (no frame "
                                      f"'{label_stem}')", None, "warning"))
                continue
            if stem in claimed:
                self._add(Problem("duplicate_stem", frame_labels.path, f"second label for frame '{stem}' (first: "
                                  f"{self.labels.frames[claimed[stem]].path})", stem))
                continue
            claimed[stem] = label_stem
            for problem in frame_labels.problems:
                self._add(replace(problem, stem=stem))
            for problem in unnamed.get(label_stem, []):
                self._add(replace(problem, stem=stem))
        for label_stem, paths in self.labels.duplicates.items():
            stem = label_stem if label_stem in frames else None
            self._add(Problem("duplicate_stem", paths[-1], f"several label files for '{label_stem}': {paths}", stem))
        self.label_of = {stem: label_stem for stem, label_stem in claimed.items()}
        for problem in self.labels.problems:
            self._add(problem)
        # a broken label file (not one naming a class or id twice) makes every frame look unlabelled
        label_file_broken = any(p.stem is None and p.severity == "error" and p.kind not in ("duplicate_class",
                                "duplicate_id") for p in self.labels.problems)
        if not label_file_broken and self.require_labels:
            where = {"yolo": "no label file", "voc": "no label file", "coco": "not listed in the COCO file"}
            for stem in self.files:
                if stem not in self.label_of:
                    first = next(iter(self.files[stem].values()))
                    self._add(Problem("missing_label", str(first),
                                      f"missing label: {where[self.labels.format]} for frame '{stem}' in "
                                      f"{self.labels.path}", stem))

    def _read_partition_files(self) -> None:
        if self.preset is None:
            return
        suffixes = sorted({m.suffix for m in self.modalities if m.suffix}, key=len, reverse=True)
        known = set(self.files)
        for split, candidates in self.preset.partition_files.items():
            path = next((self.root / c for c in candidates if (self.root / c).is_file()), None)
            if path is None:
                continue
            missing = 0
            for stem in read_stem_list(path, known, suffixes):
                if stem in known:
                    self.partitions[stem] = split
                else:
                    missing += 1
            if missing:
                self.notes.append(f"{path}: {missing} listed frames are not in the data set")

    # ------------------------------------------------------------------------------------ reading
    @property
    def class_names(self) -> list[str]:
        return self.labels.class_names

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def box_count(self, stem: str) -> int:
        """Number of boxes the labels give this frame (before reading the image)."""
        label_stem = self.label_of.get(stem)
        if label_stem is None:
            return 0
        frame = self.labels.frames[label_stem]
        return sum(1 for k in frame.keys if k in self.labels.class_index)

    def annotations(self, stem: str, width: int, height: int) -> BoxAnnotations:
        """The frame's boxes, occlusion and ignore regions for an image of ``width`` x ``height``, read from
        the labels alone (no pixels: what evaluation needs); empty for a frame without labels."""
        label_stem = self.label_of.get(stem)
        if label_stem is None:
            return BoxAnnotations()
        annotations, _ = frame_annotations(self.labels.frames[label_stem], self.labels, width, height, stem)
        return annotations

    def modality_file(self, stem: str, modality: str) -> Path | None:
        """The file holding ``modality`` of frame ``stem`` (the .npy file in the original layout)."""
        files = self.files.get(stem, {})
        return files.get("npy", files.get(modality))

    @abstractmethod
    def open(self) -> None:
        """List the frames and their files, then parse the labels."""

    @abstractmethod
    def _read_arrays(self, stem: str, problems: list[Problem], info: FrameInfo) -> dict[str, np.ndarray]:
        """Per-modality (H, W, C) arrays of one frame; problems are appended, not raised."""

    def load(self, stem: str, *, peaks: bool = False) -> tuple[Sample | None, FrameInfo, list[Problem]]:
        """Read one frame; return the sample (None if unusable), what was learnt, and every problem.

        ``peaks`` (the check): also measure the largest value of each modality whose scale comes from the
        data set's metadata file (``info.peaks``), so that values above that scale are found.
        """
        if stem not in self.files:
            raise DataError(f"{self.root}: no frame '{stem}' in this data set")
        problems = list(self.frame_problems.get(stem, []))
        info = FrameInfo(stem)
        arrays = self._read_arrays(stem, problems, info)
        if peaks:
            for m in self.modalities:
                if m.scale is None and m.name in self.scale_hints and m.name in arrays:
                    info.peaks[m.name] = int(arrays[m.name].max(initial=0))
        if len(arrays) == len(self.modalities):
            shapes = {name: a.shape[:2] for name, a in arrays.items()}
            if len(set(shapes.values())) > 1:
                detail = ", ".join(f"{n} {w}x{h} ({self.modality_file(stem, n)})" for n, (h, w) in shapes.items())
                problems.append(Problem("size_mismatch", str(self.modality_file(stem, self.modalities[0].name)),
                                        f"modalities of different sizes: {detail}", stem))
            else:
                info.height, info.width = next(iter(shapes.values()))
        annotations = BoxAnnotations()
        label_stem = self.label_of.get(stem)
        if label_stem is not None and info.width:
            frame = self.labels.frames[label_stem]
            annotations, box_problems = frame_annotations(frame, self.labels, info.width, info.height, stem)
            problems.extend(box_problems)
            if frame.declared_size and frame.declared_size != (info.width, info.height):
                w, h = frame.declared_size
                problems.append(Problem("label_size", frame.path, f"label says {w}x{h}, image is "
                                        f"{info.width}x{info.height}", stem, "warning"))
        info.boxes = len(annotations.labels)
        if any(p.severity == "error" for p in problems) or len(arrays) != len(self.modalities):
            return None, info, problems
        return Sample(stem, arrays, annotations.boxes, annotations.labels, annotations.occlusion,
                      annotations.ignore_boxes), info, problems

    def read(self, stem: str) -> Sample:
        """The frame as a Sample; DataError (naming the file and the problem) if it has any error."""
        sample, _, problems = self.load(stem)
        errors = [p for p in problems if p.severity == "error"]
        if errors or sample is None:
            first = errors[0] if errors else None
            raise DataError(str(first) if first else f"{self.root}: frame '{stem}' could not be read")
        return sample


def read_stem_list(path: Path, known: set[str], suffixes: list[str] | None = None) -> list[str]:
    """Stems listed in a split file: one per line; blank lines and ``#`` comments skipped.

    A line may be a file name or path: the folder and an image/label extension are dropped, and a modality
    suffix (``FLIR_00002_PreviewData`` -> ``FLIR_00002``) when that names a known frame. A KAIST line
    ``set06/V000/I00019`` names the frame ``set06_V000_I00019``.
    """
    try:
        lines = path.read_text(encoding=TEXT_ENCODING).splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable split file ({err})") from None
    stems = []
    extensions = set(IMAGE_EXTENSIONS) | {".npy", ".txt", ".xml", ".json"}
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        line_path = Path(text.replace("\\", "/"))
        name = line_path.name
        if Path(name).suffix.lower() in extensions:
            name = Path(name).stem
        if name not in known:  # coco layout: train/images/000001.jpg (or train/000001) is the frame train_000001
            joined = "_".join([*(part for part in line_path.parts[:-1] if part != COCO_IMAGES_FOLDER), name])
            name = joined if joined in known else name
        if name not in known:  # KAIST lists name set/video/frame (set06/V000/I00019): frame set06_V000_I00019
            kaist, _ = kaist_stem([*line_path.parts[:-1], name])
            name = kaist if kaist is not None and kaist in known else name
        if name not in known:
            for suffix in suffixes or []:
                if name.endswith(suffix) and name[: -len(suffix)] in known:
                    name = name[: -len(suffix)]
                    break
        stems.append(name)
    return stems


class NpySource(DataSource):
    """The original layout: ``images/<stem>.npy`` (H, W, C) + ``labels/<stem>.txt``."""

    def open(self) -> None:
        images = resolve_path(self.data.images_dir, self.root) if self.data.images_dir else self.root / "images"
        if not images.is_dir():
            raise DataError(f"images folder not found: {images} (original layout: DATA/images/*.npy)")
        for path in sorted(images.iterdir()):
            if not is_listed_file(path) or path.suffix.lower() != ".npy":
                continue
            if path.stem in self.files:
                self._add(Problem("duplicate_stem", str(path), f"same frame as {self.files[path.stem]['npy']}",
                                  path.stem))
                continue
            self.files[path.stem] = {"npy": path}
        if not self.files:
            if is_empty_folder(images):
                labels = self.root / "labels"
                raise DataError(no_frames_message(self.root, [images] + ([labels] if is_empty_folder(labels) else [])))
            raise DataError(f"{images}: no .npy frames in the folder (original layout: images/<stem>.npy)")
        self.stems = sorted(self.files)
        self._open_labels(("labels",))

    def _read_arrays(self, stem: str, problems: list[Problem], info: FrameInfo) -> dict[str, np.ndarray]:
        path = self.files[stem]["npy"]
        try:
            array = read_npy_file(path)
        except ImageFileError as err:
            problems.append(Problem(err.kind, err.path, err.detail, stem))
            return {}
        arrays = {}
        for m in self.modalities:
            indices = list(m.source)  # type: ignore[arg-type]
            if max(indices) >= array.shape[2] or min(indices) < -array.shape[2]:
                problems.append(Problem("channels", str(path), f"wrong channel count: {array.shape[2]} channels, "
                                        f"modality '{m.name}' needs channel(s) {indices}", stem))
                continue
            arrays[m.name] = np.ascontiguousarray(array[:, :, indices])
            info.dtypes[m.name] = str(array.dtype)
        return arrays


class FolderSource(DataSource):
    """Paired folders: one folder per modality with identical stems (LLVIP, FLIR-aligned, M3FD, generic)."""

    def open(self) -> None:
        per_modality: dict[str, dict[str, Path]] = {}
        partition: dict[str, str] = {}
        for m in self.modalities:
            folder = self.root / str(m.source)
            found: dict[str, Path] = {}
            # suffixes of other modalities in the same folder: their files are not this modality's
            others = [o.suffix for o in self.modalities if o.source == m.source and len(o.suffix) > len(m.suffix)]
            for path, part in _list_images(folder):
                stem = path.stem
                if any(stem.endswith(o) for o in others):
                    continue
                if m.suffix:
                    if not stem.endswith(m.suffix):
                        continue
                    stem = stem[: -len(m.suffix)]
                if stem in found:
                    self._add(Problem("duplicate_stem", str(path), f"same frame '{stem}' as {found[stem]}", stem))
                    continue
                found[stem] = path
                if part is not None:
                    partition.setdefault(stem, part)
            per_modality[m.name] = found
        all_stems = sorted(set().union(*per_modality.values()))
        candidates = self.preset.labels if self.preset and self.preset.labels else PRESETS["folders"].labels
        if not all_stems:
            folders = [self.root / str(m.source) for m in self.modalities]
            if all(is_empty_folder(f) for f in folders):
                labels = [self.root / c for c in candidates if is_empty_folder(self.root / c)]
                raise DataError(no_frames_message(self.root, folders + labels))
            raise DataError(f"{self.root}: no frames to read, no image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                            + " and ".join(str(f) for f in dict.fromkeys(folders)))
        self._pair(per_modality, lambda stem, m: self.root / str(m.source))
        self.partitions = {s: p for s, p in partition.items() if s in self.files}
        self._read_partition_files()
        self._open_labels(candidates)

    def _add_frames(self, folder: Path, m: ModalityConfig, prefix: str, found: dict[str, Path]) -> int:
        """Add the image files of ``folder`` (modality ``m``, its ``suffix`` stripped) to ``found`` as frames
        ``<prefix><name>``; a name seen before is a duplicate_stem problem. Returns how many were added."""
        added = 0
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not is_listed_file(path) or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            name = path.stem
            if m.suffix:
                if not name.endswith(m.suffix):
                    continue
                name = name[: -len(m.suffix)]
            stem = f"{prefix}{name}"
            if stem in found:
                self._add(Problem("duplicate_stem", str(path), f"same frame '{stem}' as {found[stem]}", stem))
                continue
            found[stem] = path
            added += 1
        return added

    def _pair(self, per_modality: dict[str, dict[str, Path]], folder_of: Callable[[str, ModalityConfig], Path]
              ) -> None:
        """Frames from the files found per modality; a frame lacking one modality's file is a problem
        (``folder_of(stem, modality)`` says where that file was looked for)."""
        all_stems = sorted(set().union(*per_modality.values()))
        for stem in all_stems:
            have = {name: files[stem] for name, files in per_modality.items() if stem in files}
            self.files[stem] = have
            for m in self.modalities:
                if m.name not in have:
                    existing = next(iter(have.values()))
                    self._add(Problem("missing_partner", str(existing), f"missing partner: no {m.name} file for "
                                      f"frame '{stem}' in {folder_of(stem, m)}/", stem))
        self.stems = all_stems

    def _read_arrays(self, stem: str, problems: list[Problem], info: FrameInfo) -> dict[str, np.ndarray]:
        arrays = {}
        for m in self.modalities:
            path = self.files[stem].get(m.name)
            if path is None:
                continue
            try:
                image = read_image_file(path)
                info.dtypes[m.name] = str(image.dtype)
                arrays[m.name] = convert_channels(image, m.channels, path, m.name)
            except ImageFileError as err:
                problems.append(Problem(err.kind, err.path, err.detail, stem))
        return arrays


class KaistSource(FolderSource):
    """KAIST multispectral pedestrians: ``setNN/VNNN/<modality folder>/INNNNN.jpg``, frames named
    ``setNN_VNNN_INNNNN``, bbGt annotations and image lists (see :mod:`.layouts`, :func:`.labels.load_kaist_labels`).
    """

    def open(self) -> None:
        videos = kaist_videos(self.root)
        per_modality: dict[str, dict[str, Path]] = {}
        for m in self.modalities:
            found: dict[str, Path] = {}
            for video in videos:
                self._add_frames(video / str(m.source), m, f"{video.parent.name}_{video.name}_", found)
            per_modality[m.name] = found
        if not any(per_modality.values()):
            folders = " and ".join(f"setNN/VNNN/{m.source}/" for m in self.modalities)
            raise DataError(f"{self.root}: no frames to read, no image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                            f"{folders} of the {len(videos)} video folders")
        self._pair(per_modality, lambda stem, m: self.root / stem.split("_")[0] / stem.split("_")[1] / str(m.source))
        self._apply_image_lists()
        self._open_labels(self.preset.labels if self.preset else ("annotations",))

    def _image_lists(self) -> dict[str, tuple[Path, list[str]]]:
        """split -> (list file, the frames it names that exist): ``data.split.<split>_file``, else the first of
        the layout's list files found (train-all-02.txt, test-all-20.txt in the root, imageSets/ or splits/)."""
        known = set(self.files)
        out: dict[str, tuple[Path, list[str]]] = {}
        partition_files = self.preset.partition_files if self.preset else {}
        for split in ("train", "val", "test"):
            configured = getattr(self.data.split, f"{split}_file")
            if configured:
                path: Path | None = resolve_path(configured, self.root)
                if not path.is_file():  # the splitter names it: "split file not found"
                    continue
            else:
                path = next((self.root / c for c in partition_files.get(split, ()) if (self.root / c).is_file()),
                            None)
            if path is None:
                continue
            listed = read_stem_list(path, known)
            missing = sum(1 for stem in listed if stem not in known)
            if missing:
                self.notes.append(f"{path}: {missing} listed frames are not in the data set")
            out[split] = (path, [stem for stem in listed if stem in known])
        return out

    def _apply_image_lists(self) -> None:
        """Image lists sample frames of their videos: the frames of listed videos that no list names are left
        out (so no neighbour of a listed test frame is trained on); the test list is the test split, and
        without one the frames of sets 06-11 (KAIST's test sets) are."""
        lists = self._image_lists()
        owner = {stem: split for split, (_, stems) in lists.items() for stem in stems}
        listed_videos = {_kaist_video(stem) for stem in owner}
        left_out = [stem for stem in self.stems if stem not in owner and _kaist_video(stem) in listed_videos]
        if left_out:
            gone = set(left_out)
            self.left_out = gone
            self.stems = [stem for stem in self.stems if stem not in gone]
            for stem in left_out:
                self.files.pop(stem, None)
                self.frame_problems.pop(stem, None)
            names = ", ".join(path.name for path, _ in lists.values())
            self.notes.append(f"image lists ({names}): {len(left_out)} frames of the listed videos are in no list "
                              "and are left out")
        if any(getattr(self.data.split, f"{split}_file") for split in ("train", "val", "test")):
            return  # split files given: the splitter reads them
        self.partitions = dict(owner)
        if "test" in lists:
            return
        test = [stem for stem in self.stems if stem not in owner and kaist_set_number(stem) in KAIST_TEST_SETS]
        if test and len(test) < len(self.stems):
            self.partitions.update(dict.fromkeys(test, "test"))
            self.notes.append(f"no test-all-20.txt: the {len(test)} frames of sets 06-11 (KAIST's test sets) are "
                              "the test split")


class CocoSource(FolderSource):
    """COCO split folders (see :mod:`.layouts`): ``<split>/images/`` + ``<split>/annotations/*.json``, or
    Roboflow's ``<split>/_annotations.coco.json`` with the images beside it; other modalities in sibling folders
    (``<split>/thermal/``). Frames are ``<split folder>_<file stem>``; ``partitions`` is complete (the split
    folders are the split).

    Bad input found here: an image listed in a COCO file but not on disk is an error of that frame (named with
    the file, and how many of the file's images are missing), so ``data.on_error=skip`` can leave it out; an
    image file that its split's COCO file does not list is a ``missing_label`` error, as in the other layouts.
    """

    def open(self) -> None:
        data = self.data
        if data.labels is not None:
            raise DataError(f"data.labels={data.labels!r}: the coco layout reads the COCO file of each split folder "
                            "(<split>/annotations/*.json or _annotations.coco.json); leave data.labels unset")
        if data.label_format not in ("auto", "coco"):
            raise DataError(f"data.label_format={data.label_format}: the coco layout reads COCO json files")
        splits = coco_split_folders(self.root)
        if not splits:
            raise DataError(f"{self.root}: no split folders (train/, val/ or valid/, test/) for the coco layout")
        per_modality: dict[str, dict[str, Path]] = {m.name: {} for m in self.modalities}
        parts = []
        partitions = Partitions(complete=True)
        missing: dict[str, Problem] = {}  # frame -> "listed in the COCO file, not on disk"
        for split in splits:
            path = coco_split_file(split.folder)
            found = self._list_split(split, per_modality)
            on_disk = set().union(*(files.keys() for files in per_modality.values()))
            if path is None:
                if self.require_labels and found:
                    looked = ", ".join(f"{split.name}/{c}" for c in ("annotations/*.json", "_annotations.coco.json"))
                    raise DataError(f"{split.folder}: no COCO file for the {found} images of this split (looked "
                                    f"for {looked}); every split folder needs its annotations (coco layout)")
                self.notes.append(f"coco layout: {split.name}/ -> {split.split}: {found} images, no COCO file")
            else:
                labels = load_labels(path, "coco")
                parts.append((split.name, labels))
                listed = {f"{split.name}_{stem}": frame for stem, frame in labels.frames.items()}
                # FrameLabels.path of a COCO entry is "<json> [<file_name>]"
                absent = {stem: listed[stem].path.rsplit(" [", 1)[-1][:-1] for stem in sorted(listed)
                          if stem not in on_disk}
                first = ", ".join(repr(name) for name in list(absent.values())[:3])
                for stem, name in absent.items():
                    missing[stem] = Problem(
                        "unreadable", str(path), f"image {name!r} is listed but not on disk in {split.images}/ "
                        f"({len(absent)} of the {len(listed)} images this file lists are missing, first: {first})",
                        stem)
                self.notes.append(f"coco layout: {split.name}/ -> {split.split}: {found} images, "
                                  f"{len(listed)} listed in {path.relative_to(self.root)}")
                for stem in listed:
                    partitions[stem] = split.split
            for stem in on_disk:
                partitions.setdefault(stem, split.split)
        if not any(per_modality.values()) and not missing:
            folders = [split.images for split in splits]
            if all(is_empty_folder(f) or not any(is_listed_file(p) for p in f.iterdir()) for f in folders):
                raise DataError(no_frames_message(self.root, folders))
            raise DataError(f"{self.root}: no frames to read, no image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                            + " and ".join(str(f) for f in folders))
        folder_of = {split.name: split for split in splits}
        self._pair(per_modality, lambda stem, m: folder_of[stem.split("_", 1)[0]].modality_folder(str(m.source)))
        for stem, problem in missing.items():  # frames of the COCO files only: their errors say what is missing
            self.files[stem] = {}
            self._add(problem)
        self.stems = sorted(self.files)
        self.partitions = partitions
        self._open_coco_labels(parts, missing)

    def _list_split(self, split: CocoSplitFolder, per_modality: dict[str, dict[str, Path]]) -> int:
        """Add the image files of each modality folder of ``split``; return how many rgb images it holds."""
        count = 0
        for m in self.modalities:
            folder = split.modality_folder(str(m.source))
            found = per_modality[m.name]
            added = self._add_frames(folder, m, f"{split.name}_", found)
            if m is self.modalities[0]:
                count += added
        return count

    def _open_coco_labels(self, parts: list[tuple[str, LabelSet]], missing: dict[str, Problem]) -> None:
        """Merge the split folders' COCO files, resolve the class names, and tie labels to frames."""
        if not parts:
            self.labels = LabelSet(format="coco", path=self.root, frames={}, class_names=list(self.data.names or []))
            return
        self.labels = merge_coco_labels(parts, self.root)
        self.notes.extend(self.labels.notes)  # e.g. a Roboflow supercategory left out
        unnamed = resolve_classes(self.labels, self.data.names, [], ())
        for problem in self.labels.problems:
            self._add(problem)
        for label_stem, paths in self.labels.duplicates.items():
            self._add(Problem("duplicate_stem", paths[-1], f"several entries for '{label_stem}': {paths}",
                              label_stem if label_stem in self.files else None))
        for stem, frame in self.labels.frames.items():
            if stem not in missing:
                self.label_of[stem] = stem
            for problem in [*frame.problems, *unnamed.get(stem, [])]:
                self._add(replace(problem, stem=stem))
        # a broken COCO file (not one naming a class or id twice) makes every image of its split look unlisted
        broken = {p.path for p in self.labels.problems if p.stem is None and p.severity == "error"
                  and p.kind not in ("duplicate_class", "duplicate_id")}
        with_labels = {name for name, part in parts if str(part.path) not in broken}
        for stem, files in self.files.items():
            if stem in self.label_of or stem in missing or not files:
                continue
            prefix = stem.split("_", 1)[0]
            if self.require_labels and prefix in with_labels:
                path = next(str(p.path) for name, p in parts if name == prefix)
                self._add(Problem("missing_label", str(next(iter(files.values()))), "missing label: image not "
                                  f"listed in {path} (frame '{stem}')", stem))


def _kaist_video(stem: str) -> str:
    """``set06_V000`` of the frame ``set06_V000_I00019``."""
    return stem.rsplit("_", 1)[0]


def _list_images(folder: Path) -> list[tuple[Path, str | None]]:
    """Image files of a modality folder, and those in its partition sub-folders (``train/``, ``test/``...)."""
    entries: list[tuple[Path, str | None]] = []
    for path in sorted(folder.iterdir()):
        if is_listed_file(path) and path.suffix.lower() in IMAGE_EXTENSIONS:
            entries.append((path, None))
        elif path.is_dir() and path.name.lower() in PARTITION_FOLDERS:
            part = PARTITION_FOLDERS[path.name.lower()]
            entries.extend((p, part) for p in sorted(path.iterdir())
                           if is_listed_file(p) and p.suffix.lower() in IMAGE_EXTENSIONS)
    return entries


def open_source(root: str | Path, data: DataConfig | None = None, layout: str | None = None,
                *, require_labels: bool = True) -> DataSource:
    """Open the data set at ``root``: list frames and files, parse labels, resolve class names.

    ``require_labels=False`` opens frames without labels (inference): no labels is not an error then.

    ``layout`` (or ``data.layout``) ``auto`` detects it (:func:`~.layouts.detect_layout`). Problems in files
    are recorded on the source (and reported by the check), not raised; DataError is raised only when the
    data set cannot be opened at all (no such folder, no labels, a modality folder missing).
    """
    data = data or DataConfig()
    root = Path(root)
    check_root(root)
    chosen = layout if layout not in (None, "auto") else data.layout
    if chosen == "auto":
        chosen = detect_layout(root, data)
    if chosen not in LAYOUTS:
        raise DataError(f"unknown layout {chosen!r} (choose from {', '.join(('auto',) + LAYOUTS)})")
    modalities, notes = effective_modalities(data, chosen, root)
    cls: Callable[..., DataSource] = {"original": NpySource, "kaist": KaistSource, "coco": CocoSource}.get(
        chosen, FolderSource)
    source = cls(root, chosen, data, modalities, notes, require_labels)
    source.open()
    return source

