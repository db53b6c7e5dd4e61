"""Segmentation data sets: the layouts, how frames pair with their masks, and honest train/val/test splits.

Layouts (detected by :func:`detect_seg_layout`, or named by ``data.layout``):

* ``cod10k`` (COD10K-v3): ``Train/`` and/or ``Test/``, each with ``Image/`` (or ``Imgs/``) and
  ``GT_Object/`` (or ``GT/``); names ``COD10K-CAM-1-Aquatic-1-BatFish-00001`` give the sub-class group.
  ``Train`` is the train partition, ``Test`` the test partition; binary.
* ``sinet`` (the pack SINet and most COD papers ship): ``TrainDataset/{Imgs,GT}`` (train) and
  ``TestDataset/<SET>/{Imgs,GT}`` (test; CAMO, COD10K, CHAMELEON, NC4K: each its own test set, stems
  ``<SET>/<name>``); binary.
* ``mfnet`` (RGB-T semantic segmentation): ``images/*.png`` with 4 channels (RGB + thermal) or ``rgb/`` +
  ``ther/`` (or ``thermal/``), ``labels/*.png`` class ids, partitions from ``train.txt`` ``val.txt``
  ``test.txt`` (in the root or ``splits/``); the 9 MFNet classes unless ``data.names``.
* ``folders``: one folder per modality (``rgb/ thermal/ depth/``...) + ``masks/`` (``data.masks``) of PNG
  masks named like the frames (``cadet data synth --task segment`` writes it); partitions from ``train/``
  ``test/`` sub-folders if any; binary unless ``data.names`` has more than 2 names (or the data set's
  ``synth.json`` records ``class_names``).

Masks become (H, W) uint8 class ids, 255 = ignore:

* cod10k / sinet: the GT is read as grayscale and binarised at > 128 (what the COD toolkits do: the GTs are
  anti-aliased 0-255 maps);
* folders, binary: a mask holding only 0/1 (and 255) is class ids already (255 = ignore); any other mask is
  a 0-255 map binarised at > 128; a mask whose values are all small ids above 1 (``{0, 2}``: a semantic mask
  in a binary data set) is a problem, not an empty mask;
* mfnet and folders with K > 2 classes: class ids as stored; values >= K other than 255 are problems. A
  palette PNG gives its indices, not its colours.

COD10K protocol (as in the field): train on the camouflaged (CAM) training images (NonCAM excluded unless
``data.cod.include_noncam=true``), test on the CAM test images (the 2026 of COD10K-v3; NonCAM test images
are never used). Both exclusions are counted in the notes. The sinet pack applies the same rule to COD10K
names it holds.

Listing a data set never raises for a file: frames lacking a modality or a mask, masks without a frame,
and duplicate stems are :class:`~crossattentiondet.data.problems.Problem` entries of
:attr:`SegSource.problems` (the check lists them with the rest). DataError is raised only when the
structure is absent (no root, no image folder, no mask folder), naming what was expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from crossattentiondet.config import DataConfig, ModalityConfig, SplitConfig, default_modalities
from crossattentiondet.data.imageio import (
    IMAGE_EXTENSIONS,
    ImageFileError,
    convert_channels,
    file_channels,
    is_listed_file,
    read_image_file,
)
from crossattentiondet.data.layouts import PARTITION_FOLDERS, check_root
from crossattentiondet.data.problems import Problem
from crossattentiondet.data.sample import Sample
from crossattentiondet.data.source import read_scale_hints, resolve_path
from crossattentiondet.errors import DataError

SEG_LAYOUTS = ("cod10k", "sinet", "mfnet", "folders")
MFNET_CLASSES = ["unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump"]
BINARY_CLASSES = ["background", "object"]
IGNORE_INDEX = 255
SINET_TEST_SETS = ("CAMO", "COD10K", "CHAMELEON", "NC4K")  # the order COD papers print them in
SPLITS = ("train", "val", "test")
COD_THRESHOLD = 128  # GT > 128 is the object (the COD evaluation toolkits' binarisation)

_IMAGE_FOLDERS = ("Image", "Imgs", "Images", "image", "imgs", "images")
_GT_FOLDERS = ("GT_Object", "GT", "GT_Objects", "gt", "Masks", "masks")
_COD10K_NAME = re.compile(r"^COD10K-(CAM|NonCAM)-\d+-([^-]+)-\d+-(.+)-\d+$")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

@dataclass
class SegItem:
    """One frame of a segmentation data set: its files, where its mask is, which partition and test set."""

    stem: str  # unique id (sinet test sets: "<SET>/<file stem>")
    files: dict[str, Path]  # modality name -> image file
    # modality -> channel indices taken from its file (mfnet's 4-channel PNG); None: the whole file
    channels: dict[str, list[int] | None]
    mask: Path | None  # None: no ground truth (a problem when masks are required)
    partition: str | None  # "train" | "val" | "test" fixed by the data set; None: split by the ratios
    set: str  # the test set it belongs to (sinet: CAMO, COD10K...; other layouts: the layout name)
    group: str = ""  # sub-class, for stratified validation splits ("Aquatic-BatFish"); "" if none


@dataclass
class SegFrame:
    """What reading one frame found: arrays, mask, sizes, dtypes and every problem."""

    stem: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    mask: np.ndarray | None = None
    dtypes: dict[str, str] = field(default_factory=dict)
    height: int = 0
    width: int = 0
    problems: list[Problem] = field(default_factory=list)
    listed: int = 0  # the first ``listed`` problems are the listing's (SegSource.problems), then reading's

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


@dataclass
class SegSource:
    """An opened segmentation data set (see the module docstring for the layouts).

    ``modalities`` are the effective ones (as configured, less those the layout does not have, noted);
    ``class_names`` include the background; ``binary`` (two classes) means the model outputs one logit map.
    ``problems``: what listing found (missing masks or modality files, masks without a frame, duplicates).
    """

    root: Path
    layout: str
    modalities: list[ModalityConfig]
    class_names: list[str]
    binary: bool
    items: dict[str, SegItem]
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    mask_mode: str = "ids"  # "threshold" (COD GTs), "auto_binary" (folders, binary) or "ids" (class ids)
    require_masks: bool = True
    scale_hints: dict[str, float] = field(default_factory=dict)  # from the data set's metadata file
    _by_stem: dict[str, list[Problem]] = field(default_factory=dict, init=False, repr=False)
    _indexed: int = field(default=-1, init=False, repr=False)

    @property
    def stems(self) -> list[str]:
        return sorted(self.items)

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def partitions(self) -> dict[str, str]:
        """Stem -> the data set's own partition, for the frames that have one."""
        return {s: item.partition for s, item in self.items.items() if item.partition is not None}

    def sets(self) -> list[str]:
        """Test-set names: the usual COD order first (CAMO, COD10K, CHAMELEON, NC4K), the others sorted."""
        names = {item.set for item in self.items.values()}
        return [n for n in SINET_TEST_SETS if n in names] + sorted(names - set(SINET_TEST_SETS))

    def frame_problems(self, stem: str) -> list[Problem]:
        """The listing problems of one frame."""
        if self._indexed != len(self.problems):  # problems may be appended after opening
            index: dict[str, list[Problem]] = {}  # built aside: reader threads never see half an index
            for problem in self.problems:
                if problem.stem is not None:
                    index.setdefault(problem.stem, []).append(problem)
            self._by_stem = index
            self._indexed = len(self.problems)
        return list(self._by_stem.get(stem, []))

    # ------------------------------------------------------------------------------------ reading
    def load(self, stem: str) -> SegFrame:
        """Read one frame and its mask; every problem is recorded on the result, none raised."""
        item = self._item(stem)
        listed = self.frame_problems(stem)
        frame = SegFrame(stem, problems=listed, listed=len(listed))
        decoded: dict[Path, np.ndarray] = {}  # mfnet: one 4-channel file holds both modalities
        for m in self.modalities:
            path = item.files.get(m.name)
            if path is None:
                continue
            try:
                image = decoded.get(path)
                if image is None:
                    image = decoded[path] = read_image_file(path)
                frame.dtypes[m.name] = str(image.dtype)
                indices = item.channels.get(m.name)
                if indices is not None:
                    have = file_channels(image)
                    if max(indices) >= have:
                        raise ImageFileError(path, f"wrong channel count: {have} channels, modality "
                                             f"'{m.name}' needs channel(s) {indices}", "channels")
                    image = (image[:, :, None] if image.ndim == 2 else image)[:, :, indices]
                frame.arrays[m.name] = convert_channels(image, m.channels, path, m.name)
            except ImageFileError as err:
                frame.problems.append(Problem(err.kind, err.path, err.detail, stem))
        shapes = {name: a.shape[:2] for name, a in frame.arrays.items()}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{n} {w}x{h} ({item.files[n]})" for n, (h, w) in shapes.items())
            frame.problems.append(Problem("size_mismatch", str(item.files[next(iter(shapes))]),
                                          f"modalities of different sizes: {detail}", stem))
        elif shapes:
            frame.height, frame.width = next(iter(shapes.values()))
        if item.mask is not None:
            mask, problems = decode_mask(item.mask, self.mask_mode, len(self.class_names), stem)
            frame.problems += problems
            if mask is not None and frame.width and mask.shape != (frame.height, frame.width):
                frame.problems.append(Problem(
                    "mask_size", str(item.mask), f"mask is {mask.shape[1]}x{mask.shape[0]}, the "
                    f"frame is {frame.width}x{frame.height} ({item.files[next(iter(shapes))]})", stem))
            frame.mask = mask
        return frame

    def read(self, stem: str) -> Sample:
        """The frame as a Sample with its mask; DataError naming the file and the problem on any error."""
        frame = self.load(stem)
        errors = [p for p in frame.problems if p.severity == "error"]
        if errors:
            raise DataError(str(errors[0]))
        if len(frame.arrays) != len(self.modalities):  # pragma: no cover - a missing file is always a problem
            raise DataError(f"{self.root}: frame '{stem}' could not be read")
        return Sample(stem, frame.arrays, mask=frame.mask)

    def read_mask(self, stem: str) -> np.ndarray:
        """The frame's mask alone, (H, W) uint8 class ids (255 = ignore); DataError if it is absent or bad."""
        item = self._item(stem)
        if item.mask is None:
            where = next(iter(item.files.values()), self.root)
            raise DataError(f"{where}: frame '{stem}' has no ground-truth mask")
        mask, problems = decode_mask(item.mask, self.mask_mode, len(self.class_names), stem)
        if problems or mask is None:
            raise DataError(str(problems[0]))
        return mask

    def _item(self, stem: str) -> SegItem:
        try:
            return self.items[stem]
        except KeyError:
            raise DataError(f"{self.root}: no frame '{stem}' in this data set") from None


# ------------------------------------------------------------------------------------------ masks
def _is_palette_png(path: Path) -> bool:
    """A PNG of colour type 3 (palette): OpenCV would decode its colours, the class ids are the indices."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(26)
    except OSError:
        return False
    return len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and head[25] == 3


def _palette_indices(path: Path) -> np.ndarray | None:
    from PIL import Image  # matplotlib's dependency; only palette masks need it

    try:
        with Image.open(path) as image:
            return np.asarray(image, dtype=np.uint8) if image.mode == "P" else None
    except (OSError, ValueError):
        return None


def _values_text(values: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f" ... ({len(values)} distinct)" if len(values) > limit else "")


def decode_mask(path: Path, mode: str, classes: int, stem: str | None = None
                ) -> tuple[np.ndarray | None, list[Problem]]:
    """Read a mask file as (H, W) uint8 class ids (255 = ignore) by ``mode`` (see the module docstring).

    Returns (mask or None, problems): an unreadable file, a colour mask where ids are expected, values
    outside the ``classes`` range. Nothing is raised.
    """
    try:
        raw = read_image_file(path)
    except ImageFileError as err:
        return None, [Problem(err.kind, err.path, err.detail, stem)]
    if raw.ndim == 3:
        if mode == "ids" and _is_palette_png(path):
            indices = _palette_indices(path)
            if indices is not None:
                raw = indices
        if raw.ndim == 3:
            colour = raw[:, :, :3]
            if mode == "threshold" or mode == "auto_binary" and not (colour == colour[:, :, :1]).all():
                raw = cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_RGB2GRAY)
            elif (colour == colour[:, :, :1]).all():  # a grey map saved as RGB: the ids are any channel
                raw = np.ascontiguousarray(colour[:, :, 0])
            else:
                return None, [Problem("mask_values", str(path), "colour mask: expected one channel "
                                      f"of class ids 0..{classes - 1} (255 = ignore), got {raw.shape[2]} "
                                      "channels of differing values", stem)]
    if mode == "threshold":
        cut = COD_THRESHOLD if raw.dtype == np.uint8 else COD_THRESHOLD * 257  # same cut on the 0-1 scale
        return (raw > cut).astype(np.uint8), []
    if mode == "auto_binary":
        if raw.dtype == np.uint16 and raw.max(initial=0) > 255:
            return (raw > COD_THRESHOLD * 257).astype(np.uint8), []
        values = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))  # all <= 255 here; unique is slower
        if set(values.tolist()) <= {0, 1, IGNORE_INDEX} and (1 in values or IGNORE_INDEX not in values):
            return raw.astype(np.uint8), []  # class ids already (255 = ignore)
        if values.max(initial=0) <= COD_THRESHOLD:  # small ids above 1: a K-class mask in a binary data set
            return None, [Problem("mask_values", str(path), f"values {_values_text(values)} in a "
                                  "binary mask (0/1 ids, or a 0-255 map binarised at > 128, expected); for "
                                  "K classes set data.names", stem)]
        return (raw > COD_THRESHOLD).astype(np.uint8), []
    # class ids as stored
    bad = (raw >= classes) & (raw != IGNORE_INDEX)
    if bad.any():
        values = np.unique(raw[bad])
        return None, [Problem("mask_values", str(path), f"values {_values_text(values)} outside "
                              f"the {classes} classes (ids 0..{classes - 1}, 255 = ignore) in "
                              f"{int(bad.sum())} pixels", stem)]
    return raw.astype(np.uint8), []


# ------------------------------------------------------------------------------------------ listing
def _listed_images(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if is_listed_file(p) and p.suffix.lower() in IMAGE_EXTENSIONS]


def _first_dir(parent: Path, names: tuple[str, ...]) -> Path | None:
    return next((parent / n for n in names if (parent / n).is_dir()), None)


def cod10k_name(stem: str) -> tuple[str | None, str]:
    """(``"CAM"`` / ``"NonCAM"`` / None, group) of a COD10K file name:
    ``COD10K-CAM-1-Aquatic-1-BatFish-00001`` -> ("CAM", "Aquatic-BatFish"); another name gives (None, "")."""
    match = _COD10K_NAME.match(stem)
    return (match.group(1), f"{match.group(2)}-{match.group(3)}") if match else (None, "")


class _Listing:
    """Collects the items, problems and notes of one data set while its folders are listed."""

    def __init__(self, data: DataConfig, require_masks: bool) -> None:
        self.data = data
        self.require_masks = require_masks
        self.items: dict[str, SegItem] = {}
        self.problems: list[Problem] = []
        self.notes: list[str] = []

    def files(self, folder: Path, partitions: bool = False) -> dict[str, tuple[Path, str | None]]:
        """Stem -> (image file, partition sub-folder or None) in a folder; a stem's second file: a problem."""
        entries: list[tuple[Path, str | None]] = [(p, None) for p in _listed_images(folder)]
        if partitions:
            subs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.lower() in PARTITION_FOLDERS)
            for sub in subs:
                entries += [(p, PARTITION_FOLDERS[sub.name.lower()]) for p in _listed_images(sub)]
        found: dict[str, tuple[Path, str | None]] = {}
        for path, part in entries:
            if path.stem in found:
                self.problems.append(Problem("duplicate_stem", str(path), f"same frame '{path.stem}' as "
                                             f"{found[path.stem][0]}", path.stem))
                continue
            found[path.stem] = (path, part)
        return found

    def add(self, item: SegItem) -> None:
        if item.stem in self.items:
            first = next(iter(self.items[item.stem].files.values()), None)
            where = next(iter(item.files.values()), item.mask)
            self.problems.append(Problem("duplicate_stem", str(where), f"same frame '{item.stem}' as {first}",
                                         item.stem))
            return
        if item.mask is None and self.require_masks:
            where = next(iter(item.files.values()))
            self.problems.append(Problem("missing_mask", str(where), f"missing mask: no ground "
                                         f"truth for frame '{item.stem}'", item.stem))
        self.items[item.stem] = item

    def orphans(self, masks: dict[str, tuple[Path, str | None]], used: set[str], folder: Path) -> None:
        """Masks in ``masks`` (file stem -> file) that belong to no frame (``used``: stems with a frame)."""
        for name, (path, _) in masks.items():
            if name not in used:
                self.problems.append(Problem("orphan_mask", str(path), f"mask without a frame: no "
                                             f"image '{name}' in {folder}", None, "warning"))


def _binary_names(data: DataConfig, layout: str) -> list[str]:
    if data.names is None:
        return list(BINARY_CLASSES)
    if len(data.names) != 2:
        raise DataError(f"layout {layout} is binary (camouflaged object vs background): data.names must "
                        f"name 2 classes, background first, got {data.names}")
    return list(data.names)


def _rgb_only(data: DataConfig, layout: str, notes: list[str]) -> list[ModalityConfig]:
    """The RGB modality of an RGB-only layout: the default list is cut to rgb (noted), another is an error."""
    if data.modalities == default_modalities():
        notes.append(f"layout {layout}: RGB images only, modalities "
                     f"{', '.join(m.name for m in data.modalities if m.name != 'rgb')} are not used")
        return [m for m in data.modalities if m.name == "rgb"]
    others = [m.name for m in data.modalities if m.name != "rgb"]
    if others or not data.modalities:
        raise DataError(f"layout {layout} has RGB images only: data.modalities must be just 'rgb', it names "
                        f"{[m.name for m in data.modalities]}")
    return list(data.modalities)


def _cod_keep(stem: str, partition: str, include_noncam: bool, counts: dict[str, int]) -> tuple[bool, str]:
    """Whether a COD10K-named frame is used (CAM; NonCAM only to train, with include_noncam), its group."""
    kind, group = cod10k_name(stem)
    if kind == "NonCAM" and (partition != "train" or not include_noncam):
        counts[f"noncam_{partition}"] = counts.get(f"noncam_{partition}", 0) + 1
        return False, group
    if kind == "NonCAM":
        counts["noncam_used"] = counts.get("noncam_used", 0) + 1
    return True, group


def _pair_folder(listing: _Listing, images: Path, masks: Path | None, partition: str, set_name: str,
                 prefix: str, counts: dict[str, int], cod_names: bool) -> None:
    """Frames of one image folder with the masks of its GT folder (COD layouts); NonCAM rules applied."""
    image_files = listing.files(images)
    mask_files = listing.files(masks) if masks is not None else {}
    left_out: set[str] = set()
    for name, (path, _) in image_files.items():
        keep, group = (True, "")
        if cod_names:
            keep, group = _cod_keep(name, partition, listing.data.cod.include_noncam, counts)
        if not keep:
            left_out.add(name)
            continue
        mask = mask_files.get(name)
        listing.add(SegItem(prefix + name, {"rgb": path}, {"rgb": None}, mask[0] if mask else None, partition,
                            set_name, group))
    if masks is not None:
        listing.orphans(mask_files, set(image_files), images)


def _noncam_notes(counts: dict[str, int], include_noncam: bool) -> list[str]:
    notes = []
    if counts.get("noncam_train"):
        notes.append(f"COD10K protocol: {counts['noncam_train']} NonCAM training images left out "
                     "(data.cod.include_noncam=true trains on them)")
    if counts.get("noncam_used"):
        notes.append(f"data.cod.include_noncam: {counts['noncam_used']} NonCAM training images used")
    if counts.get("noncam_test"):
        notes.append(f"COD10K protocol: {counts['noncam_test']} NonCAM test images are not used (the test "
                     "set is the CAM images)")
    return notes


def _open_cod10k(root: Path, data: DataConfig, require_masks: bool) -> SegSource:
    listing = _Listing(data, require_masks)
    modalities = _rgb_only(data, "cod10k", listing.notes)
    parts = [(part, _first_dir(root, names)) for part, names in (("train", ("Train", "train")),
                                                                  ("test", ("Test", "test")))]
    parts = [(part, folder) for part, folder in parts if folder is not None]
    if not parts:
        raise DataError(f"{root}: not a COD10K tree: expected Train/Image/ + Train/GT_Object/ and/or "
                        "Test/Image/ + Test/GT_Object/ (Imgs/ and GT/ are accepted too)")
    counts: dict[str, int] = {}
    for partition, folder in parts:
        images = _first_dir(folder, _IMAGE_FOLDERS)
        if images is None:
            raise DataError(f"{folder}: no image folder (expected {folder.name}/Image/ or "
                            f"{folder.name}/Imgs/)")
        masks = _first_dir(folder, _GT_FOLDERS)
        if masks is None and require_masks:
            raise DataError(f"{folder}: no ground-truth folder (expected {folder.name}/GT_Object/ or "
                            f"{folder.name}/GT/)")
        _pair_folder(listing, images, masks, partition, "cod10k", "", counts, cod_names=True)
    unnamed = sum(1 for item in listing.items.values() if cod10k_name(item.stem)[0] is None)
    if unnamed:
        listing.notes.append(f"{unnamed} images are not named COD10K-CAM-...: used, without a sub-class "
                             "group")
    listing.notes += _noncam_notes(counts, data.cod.include_noncam)
    return _source(root, "cod10k", listing, modalities, _binary_names(data, "cod10k"), "threshold")


def _open_sinet(root: Path, data: DataConfig, require_masks: bool) -> SegSource:
    listing = _Listing(data, require_masks)
    modalities = _rgb_only(data, "sinet", listing.notes)
    train, test = root / "TrainDataset", root / "TestDataset"
    if not train.is_dir() and not test.is_dir():
        raise DataError(f"{root}: not a SINet-style pack: expected TrainDataset/{{Imgs,GT}}/ and/or "
                        "TestDataset/<SET>/{Imgs,GT}/")
    counts: dict[str, int] = {}
    folders: list[tuple[Path, str, str, str]] = []  # (folder, partition, set, stem prefix)
    if train.is_dir():
        folders.append((train, "train", "sinet", ""))
    if test.is_dir():
        order = {name: i for i, name in enumerate(SINET_TEST_SETS)}
        sets = sorted((p for p in test.iterdir() if p.is_dir()),
                      key=lambda p: (order.get(p.name, 99), p.name))
        for folder in sets:
            if _first_dir(folder, _IMAGE_FOLDERS) is None:
                listing.notes.append(f"{folder}: no Imgs/ folder, not a test set")
                continue
            folders.append((folder, "test", folder.name, f"{folder.name}/"))
    for folder, partition, set_name, prefix in folders:
        images = _first_dir(folder, _IMAGE_FOLDERS)
        if images is None:
            raise DataError(f"{folder}: no image folder (expected {folder.name}/Imgs/)")
        masks = _first_dir(folder, _GT_FOLDERS)
        if masks is None and require_masks:
            raise DataError(f"{folder}: no ground-truth folder (expected {folder.name}/GT/)")
        _pair_folder(listing, images, masks, partition, set_name, prefix, counts, cod_names=True)
    listing.notes += _noncam_notes(counts, data.cod.include_noncam)
    if not any(item.partition == "test" for item in listing.items.values()):
        listing.notes.append(f"{root}: no test set under TestDataset/: the test split is carved from the "
                             "training images by data.split")
    return _source(root, "sinet", listing, modalities, _binary_names(data, "sinet"), "threshold")


def _mfnet_modalities(data: DataConfig, packed: bool, notes: list[str]) -> list[ModalityConfig]:
    if data.modalities == default_modalities():
        notes.append("layout mfnet: RGB + thermal, modality 'event' is not used")
        return [m for m in data.modalities if m.name in ("rgb", "thermal")]
    out = []
    for m in data.modalities:
        if packed and not isinstance(m.source, list) and m.name not in ("rgb", "thermal"):
            raise DataError(f"layout mfnet: modality '{m.name}' is neither rgb nor thermal; give "
                            f"data.modalities[].source the channel indices of the 4-channel images")
        out.append(m)
    return out


def _mfnet_split_files(root: Path) -> dict[str, Path]:
    found = {}
    for split in SPLITS:
        candidates = (root / f"{split}.txt", root / "splits" / f"{split}.txt")
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None:
            found[split] = path
    return found


def read_stems(path: Path) -> list[str]:
    """Stems of a split list: one a line, blank lines and ``#`` comments skipped, image extensions dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable split file ({err})") from None
    stems = []
    for line in lines:
        text = line.split("#", 1)[0].strip().replace("\\", "/")
        if not text:
            continue
        if Path(text).suffix.lower() in IMAGE_EXTENSIONS:
            text = text[: -len(Path(text).suffix)]
        stems.append(text)
    return stems


def _open_mfnet(root: Path, data: DataConfig, require_masks: bool) -> SegSource:
    listing = _Listing(data, require_masks)
    packed_dir = root / "images"
    packed = packed_dir.is_dir() and bool(_listed_images(packed_dir))
    modalities = _mfnet_modalities(data, packed, listing.notes)
    per_modality: dict[str, dict[str, tuple[Path, str | None]]] = {}
    channels: dict[str, list[int] | None] = {}
    image_folders: list[Path] = [packed_dir]
    if packed:
        files = listing.files(packed_dir)
        for m in modalities:
            per_modality[m.name] = files
            channels[m.name] = list(m.source) if isinstance(m.source, list) else \
                ([0, 1, 2] if m.name == "rgb" else [3])
    else:
        for m in modalities:
            names = (m.source,) if isinstance(m.source, str) else \
                ("rgb",) if m.name == "rgb" else ("ther", "thermal") if m.name == "thermal" else (m.name,)
            folder = _first_dir(root, names)
            if folder is None:
                wanted = " or ".join(n + "/" for n in names)
                raise DataError(f"{root}: layout mfnet needs images/ (4-channel RGB + thermal PNGs) or one "
                                f"folder per modality; no {wanted} for modality '{m.name}'")
            per_modality[m.name] = listing.files(folder)
            channels[m.name] = None
            image_folders.append(folder)
    labels = root / "labels"
    if not labels.is_dir() and require_masks:
        raise DataError(f"{root}: layout mfnet needs a labels/ folder of class-id PNGs")
    masks = listing.files(labels) if labels.is_dir() else {}
    all_stems = sorted(set().union(*per_modality.values()))
    stems = all_stems
    lists = _mfnet_split_files(root)
    partition: dict[str, str] = {}
    for split, path in lists.items():
        missing = 0
        for stem in read_stems(path):
            stem = Path(stem).name
            if any(stem in files for files in per_modality.values()):
                partition.setdefault(stem, split)
            else:
                missing += 1
        if missing:
            listing.notes.append(f"{path}: {missing} listed frames are not in the data set")
    if lists:
        unlisted = [s for s in stems if s not in partition]
        if unlisted:
            named = ", ".join(p.name for p in lists.values())
            listing.notes.append(f"{len(unlisted)} frames are in none of {named}: not used")
        stems = [s for s in stems if s in partition]
    else:
        listing.notes.append(f"{root}: no train.txt / val.txt / test.txt: split by data.split")
    extra = [n for n in ("test_day.txt", "test_night.txt")
             if (root / n).is_file() or (root / "splits" / n).is_file()]
    if extra:
        listing.notes.append(f"{', '.join(extra)}: day/night test subsets are not reported separately yet")
    for stem in stems:
        have = {m.name: per_modality[m.name][stem][0] for m in modalities if stem in per_modality[m.name]}
        for m in modalities:
            if m.name not in have:
                message = f"missing partner: no {m.name} file for frame '{stem}'"
                first = next(iter(have.values()))
                listing.problems.append(Problem("missing_partner", str(first), message, stem))
        mask = masks.get(stem)
        listing.add(SegItem(stem, have, dict(channels), mask[0] if mask else None, partition.get(stem),
                            "mfnet"))
    listing.orphans(masks, set(all_stems), image_folders[0 if packed else 1])
    names = list(data.names) if data.names is not None else list(MFNET_CLASSES)
    return _source(root, "mfnet", listing, modalities, names, "ids")


def _metadata_class_names(root: Path) -> list[str] | None:
    """``class_names`` recorded in the data set's synth.json / cadet_data.json, if any."""
    import json

    for name in ("synth.json", "cadet_data.json"):
        path = root / name
        try:
            meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        names = meta.get("class_names") if isinstance(meta, dict) else None
        if isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def _open_folders(root: Path, data: DataConfig, require_masks: bool) -> SegSource:
    listing = _Listing(data, require_masks)
    masks_dir = resolve_path(data.masks, root)
    if not masks_dir.is_dir() and require_masks:
        shown = masks_dir if masks_dir.is_absolute() else root / data.masks
        raise DataError(f"{shown}: mask folder not found (folders layout for segmentation: one folder per "
                        f"modality + {data.masks}/ of PNG masks named like the frames; data.masks names it)")
    default = data.modalities == default_modalities()
    modalities: list[ModalityConfig] = []
    for m in data.modalities:
        folder = root / (m.source if isinstance(m.source, str) else m.name)
        if folder.is_dir():
            modalities.append(m)
        elif default:
            listing.notes.append(f"layout folders: no {folder.name}/ folder, modality '{m.name}' is not used")
        else:
            raise DataError(f"{folder}: folder of modality '{m.name}' not found (layout folders); set "
                            "data.modalities[].source to the modality's folder")
    if not modalities:
        raise DataError(f"{root}: none of the modalities {[m.name for m in data.modalities]} has a folder")
    folder_of = {m.name: root / (m.source if isinstance(m.source, str) else m.name) for m in modalities}
    per_modality = {m.name: listing.files(folder_of[m.name], True) for m in modalities}
    masks = listing.files(masks_dir, True) if masks_dir.is_dir() else {}
    stems = sorted(set().union(*per_modality.values()))
    if not stems:
        raise DataError(f"{root}: no frames to read, no image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                        + " and ".join(f"{folder.name}/" for folder in folder_of.values()))
    for stem in stems:
        have = {name: files[stem] for name, files in per_modality.items() if stem in files}
        for m in modalities:
            if m.name not in have:
                message = f"missing partner: no {m.name} file for frame '{stem}' in {folder_of[m.name]}/"
                listing.problems.append(Problem("missing_partner", str(next(iter(have.values()))[0]), message,
                                                stem))
        partition = next((part for _, part in have.values() if part is not None), None)
        mask = masks.get(stem)
        listing.add(SegItem(stem, {n: p for n, (p, _) in have.items()}, dict.fromkeys(have),
                            mask[0] if mask else None, partition, "folders"))
    listing.orphans(masks, set(listing.items), folder_of[modalities[0].name])
    names = list(data.names) if data.names is not None else \
        _metadata_class_names(root) or list(BINARY_CLASSES)
    if len(names) < 2:
        raise DataError(f"data.names: a segmentation data set needs the background and at least one class, "
                        f"got {names}")
    return _source(root, "folders", listing, modalities, names, "auto_binary" if len(names) == 2 else "ids")


def _source(root: Path, layout: str, listing: _Listing, modalities: list[ModalityConfig], names: list[str],
            mask_mode: str) -> SegSource:
    if not listing.items and not listing.problems:
        raise DataError(f"{root}: no frames to read ({layout} layout: the image folders are empty)")
    return SegSource(root=root, layout=layout, modalities=modalities, class_names=names,
                     binary=len(names) == 2, items=dict(sorted(listing.items.items())), notes=listing.notes,
                     problems=listing.problems, mask_mode=mask_mode, require_masks=listing.require_masks,
                     scale_hints=read_scale_hints(root))


# ------------------------------------------------------------------------------------------ detection
def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(is_listed_file(p) and p.suffix.lower() in IMAGE_EXTENSIONS
                                   for p in folder.iterdir())


def _has_png(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() == ".png" for p in folder.iterdir())


def detect_seg_layout(root: Path, data: DataConfig | None = None) -> str | None:
    """The segmentation layout of ``root`` (cod10k, sinet, mfnet, folders with a mask folder), or None.

    Never raises: a missing root or an unknown tree is None (the caller says what was expected).
    """
    root = Path(root)
    if not root.is_dir():
        return None
    for part in ("Train", "Test", "train", "test"):
        folder = root / part
        if _first_dir(folder, _IMAGE_FOLDERS) is not None and _first_dir(folder, _GT_FOLDERS) is not None:
            return "cod10k"
    if (root / "TrainDataset").is_dir() or (root / "TestDataset").is_dir():
        return "sinet"
    data = data or DataConfig()
    if data.masks != "labels" and _has_png(root / "labels") and (_has_png(root / "images") or (
            (root / "rgb").is_dir() and ((root / "ther").is_dir() or (root / "thermal").is_dir()))):
        return "mfnet"
    masks = resolve_path(data.masks, root)
    if masks.is_dir() and any(_has_images(p) or any(_has_images(s) for s in p.iterdir() if s.is_dir())
                              for p in root.iterdir() if p.is_dir() and p.resolve() != masks.resolve()):
        return "folders"
    return None


def open_seg_source(root: str | Path, data: DataConfig | None = None, layout: str | None = None, *,
                    require_masks: bool = True) -> SegSource:
    """Open the segmentation data set at ``root`` (``layout`` or ``data.layout``; ``auto`` detects it).

    ``require_masks=False`` (prediction on frames without ground truth): a missing mask folder or mask is
    not a problem. DataError when the root or its structure is absent, naming what was expected.
    """
    data = data or DataConfig()
    root = Path(root)
    check_root(root)
    chosen = layout if layout not in (None, "auto") else data.layout
    if chosen == "auto":
        chosen = detect_seg_layout(root, data)
        if chosen is None:
            folders = ", ".join(sorted(p.name + "/" for p in root.iterdir() if p.is_dir())) or "no folders"
            raise DataError(f"{root}: cannot tell the segmentation layout (found {folders}); expected "
                            "Train|Test/Image + GT_Object (cod10k), TrainDataset/ + TestDataset/ (sinet), "
                            "labels/ + images/ or rgb/ + ther/ (mfnet), or modality folders + "
                            f"{data.masks}/ (folders); say it with --layout / data.layout")
    if chosen not in SEG_LAYOUTS:
        raise DataError(f"layout {chosen!r} is not a segmentation layout (choose from auto, "
                        f"{', '.join(SEG_LAYOUTS)})")
    openers = {"cod10k": _open_cod10k, "sinet": _open_sinet, "mfnet": _open_mfnet, "folders": _open_folders}
    opener = openers[chosen]
    return opener(root, data, require_masks)


# ------------------------------------------------------------------------------------------ splits
def _targets(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Frames per split: largest-remainder rounding of ``total * share``; a split asking for frames gets at
    least one while there are enough frames."""
    exact = {n: total * s for n, s in shares.items()}
    counts = {n: math.floor(v) for n, v in exact.items()}
    order = sorted(shares, key=lambda n: -(exact[n] - counts[n]))
    for name in order[: total - sum(counts.values())]:
        counts[name] += 1
    wanting = [n for n, s in shares.items() if s > 0]
    if total >= len(wanting):
        for name in wanting:
            if counts[name] == 0:
                donor = max(counts, key=lambda n: counts[n])
                counts[donor] -= 1
                counts[name] += 1
    return counts


def stratified_split(stems: list[str], groups: dict[str, str], shares: dict[str, float],
                     rng: np.random.Generator) -> dict[str, list[str]]:
    """Divide ``stems`` by ``shares`` (normalised here) so that every group contributes its share.

    The totals follow the shares as closely as whole frames allow; each group gets floor(its share), the
    remaining frames go where the fractional parts are largest (ties broken at random) while a split is
    still short. Which frames of a group go where is random (``rng``).
    """
    out: dict[str, list[str]] = {n: [] for n in shares}
    total_share = sum(shares.values())
    if not stems or total_share <= 0:
        return out
    names = list(shares)
    norm = {n: shares[n] / total_share for n in names}
    targets = _targets(len(stems), norm)
    by_group: dict[str, list[str]] = {}
    for stem in sorted(stems):
        by_group.setdefault(groups.get(stem, ""), []).append(stem)
    keys = sorted(by_group)
    total = len(stems)
    quota = {(g, n): len(by_group[g]) * targets[n] / total for g in keys for n in names}
    alloc = {key: math.floor(v) for key, v in quota.items()}
    left = {g: len(by_group[g]) - sum(alloc[(g, n)] for n in names) for g in keys}
    short = {n: targets[n] - sum(alloc[(g, n)] for g in keys) for n in names}
    pairs = list(quota)
    ties = rng.random(len(pairs))
    for (g, n), _ in sorted(zip(pairs, ties), key=lambda pt: (-(quota[pt[0]] - alloc[pt[0]]), pt[1])):
        if left[g] > 0 and short[n] > 0:
            alloc[(g, n)] += 1
            left[g] -= 1
            short[n] -= 1
    for g in keys:  # what the fractional parts did not place goes to the splits still short
        while left[g] > 0:
            n = max(names, key=lambda name: short[name])
            alloc[(g, n)] += 1
            left[g] -= 1
            short[n] -= 1
    for g in keys:
        members = [by_group[g][int(i)] for i in rng.permutation(len(by_group[g]))]
        start = 0
        for n in names:
            out[n] += members[start:start + alloc[(g, n)]]
            start += alloc[(g, n)]
    return {n: sorted(v) for n, v in out.items()}


def _divide(source: SegSource, stems: list[str], split: SplitConfig, filed: set[str],
            rng: np.random.Generator) -> dict[str, list[str]]:
    """Place ``stems`` by the data set's partitions and the ratios (splits in ``filed`` come from files)."""
    present = {item.partition for item in source.items.values()}
    fixed = {n for n in ("val", "test") if n in present}
    out: dict[str, list[str]] = {n: [] for n in SPLITS}
    pool = []
    for stem in stems:
        part = source.items[stem].partition
        if part in fixed:
            if part not in filed:  # the data set's own val / test; with a file for it, the file decides
                out[part].append(stem)
        else:  # the training partition, or no partition: val (and test) are carved from here, never from test
            pool.append(stem)
    shares = {n: (0.0 if n in filed else float(getattr(split, n))) for n in SPLITS if n not in fixed}
    groups = {s: source.items[s].group for s in pool}
    if pool and not any(groups.values()):
        # no sub-classes to stratify by (folders, synthetic scenes, videos): neighbouring frames of one
        # sequence look alike, so whole sequences go to one side (data.split.group_by, as for detection)
        from crossattentiondet.data.splits import _assign_groups, group_stems

        placed = _assign_groups(group_stems(pool, split.group_by), shares, int(rng.integers(2**31)))
    else:
        placed = stratified_split(pool, groups, shares, rng)
    for name, part in placed.items():
        out[name] += part
    return {n: sorted(v) for n, v in out.items()}


def seg_splits(source: SegSource, split: SplitConfig, stems: list[str], seed: int | None = None,
               notes: list[str] | None = None) -> dict[str, list[str]]:
    """Train / val / test stems of the usable ``stems``, honestly (below); ``seed`` defaults to split.seed.

    * The data set's test partition (COD10K Test, the sinet test sets, MFNet test.txt, a ``test/`` folder) is
      the test split, and an explicit val partition (MFNet val.txt) the val split, as they are.
    * Splits the data set does not fix are carved from its training partition (or from all frames when it
      has none) by the ratios of the remaining splits (val = split.val / (split.train + split.val) of the
      training images when the test split is fixed), stratified by sub-class group (COD10K names), seeded;
      without sub-classes whole sequences (``data.split.group_by``) go to one side. Never from test.
    * Split files (``split.train_file`` ...) list stems (sinet: ``CAMO/name``) and override; splits without a
      file share the unlisted frames as above. A file putting test-partition frames into train or val is a
      DataError (that is the leak this function exists to prevent).

    ``notes`` (if given) receives a line saying how the split was made.
    """
    unknown = sorted(set(stems) - set(source.items))
    if unknown:
        raise DataError(f"{source.root}: {len(unknown)} frames to split are not in the data set (first: "
                        f"{', '.join(unknown[:3])})")
    usable = sorted(set(stems))
    rng = np.random.default_rng(split.seed if seed is None else seed)
    files = {n: getattr(split, f"{n}_file") for n in SPLITS if getattr(split, f"{n}_file")}
    listed: dict[str, list[str]] = {n: [] for n in SPLITS}
    owner: dict[str, str] = {}
    for name, text in files.items():
        path = resolve_path(text, source.root)
        if not path.is_file():
            raise DataError(f"split file not found: {path} (data.split.{name}_file)")
        lines = read_stems(path)
        missing = [s for s in lines if s not in source.items]
        if missing:
            raise DataError(f"{path}: {len(missing)} listed frames are not in the data set (first: "
                            f"{', '.join(missing[:3])}) (data.split.{name}_file)")
        for stem in lines:
            if stem in owner and owner[stem] != name:
                raise DataError(f"{path}: frame '{stem}' is also listed for {owner[stem]} "
                                f"(data.split.{name}_file)")
            if name != "test" and source.items[stem].partition == "test":
                raise DataError(f"{path}: frame '{stem}' belongs to the data set's test partition and cannot "
                                f"be used for {name} (data.split.{name}_file)")
            owner[stem] = name
    usable_set = set(usable)
    for stem, name in owner.items():
        if stem in usable_set:
            listed[name].append(stem)
    rest = [s for s in usable if s not in owner]
    if len(files) == len(SPLITS):
        out = {n: sorted(listed[n]) for n in SPLITS}
    else:
        divided = _divide(source, rest, split, set(files), rng)
        out = {n: sorted(listed[n] + divided[n]) for n in SPLITS}
    if notes is not None:
        fixed = sorted({source.items[s].partition for s in usable} & {"val", "test"})
        how = "split files" if files else "ratios"
        if fixed and not files:
            how = f"the data set's {' and '.join(fixed)} partition"
        groups = len({source.items[s].group for s in usable if source.items[s].group})
        notes.append(f"split ({how}, seed {split.seed if seed is None else seed}"
                     + (f", stratified over {groups} sub-class groups" if groups else "") + "): "
                     + ", ".join(f"{n} {len(out[n])}" for n in SPLITS))
    return out
