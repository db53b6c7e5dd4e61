"""Reading and writing image files and ``.npy`` frames, and channel conversion on read.

Readers keep the native dtype (uint8 or uint16): scaling to 0-1 happens in the model on the device.
Every failure raises :class:`~crossattentiondet.errors.DataError` whose message starts with the file path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from crossattentiondet.errors import DataError

# OpenCV's own thread pool does not survive fork(): once the main process has decoded or converted an image
# with it (data checks, synthetic data), DataLoader workers forked afterwards hang on their first cv2 call.
# Decoding is parallel across workers anyway, so OpenCV runs single-threaded in this process and its children.
cv2.setNumThreads(0)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SUPPORTED_DTYPES = (np.uint8, np.uint16)


class ImageFileError(DataError):
    """A file that cannot be used as an image; ``kind`` is the problem kind (``unreadable``, ``bad_dtype``...)."""

    def __init__(self, path: Path, detail: str, kind: str = "unreadable") -> None:
        super().__init__(f"{path}: {detail}")
        self.path, self.detail, self.kind = str(path), detail, kind

    def __reduce__(self):  # keep the fields when a DataLoader worker sends the error to the main process
        return (type(self), (self.path, self.detail, self.kind))


@contextmanager
def opencv_quiet() -> Iterator[None]:
    """Silence OpenCV's own warnings (libpng/libtiff chatter on broken files) while scanning a data set:
    the problem list names every broken file already. The previous log level is restored."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # pragma: no cover - builds without the logging module
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target does not exist (listed with the files, so that it is reported by name)."""
    return path.is_symlink() and not path.exists()


def is_listed_file(path: Path) -> bool:
    """A regular file, or a broken link in its place (reading it then says the link is broken)."""
    return path.is_file() or is_broken_link(path)


def broken_link_detail(path: Path) -> str:
    """What to say about a broken link: where it points."""
    try:
        target = os.readlink(path)
    except OSError:  # pragma: no cover - it was a link a moment ago
        target = "?"
    return f"broken symbolic link: it points to {target}, which does not exist"


def unreadable_detail(path: Path, err: OSError) -> str:
    """Why a file could not be opened: a broken link, or the OS's reason."""
    if is_broken_link(Path(path)):
        return broken_link_detail(path)
    return f"unreadable file ({err.strerror or err})"


def read_image_file(path: Path) -> np.ndarray:
    """Decode an image file to (H, W) or (H, W, C) in file order RGB(A), keeping 8 or 16 bits.

    Raises DataError for an unreadable, truncated or unsupported file (float TIFFs, 32-bit images).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ImageFileError(path, unreadable_detail(path, err)) from None
    if not raw:
        raise ImageFileError(path, "unreadable file (empty)")
    # decoding from bytes (not cv2.imread) works with any path encoding and reads the file once
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageFileError(path, "unreadable or truncated image file")
    if image.dtype not in SUPPORTED_DTYPES:
        raise ImageFileError(path, f"{image.dtype} pixels are not supported (8- or 16-bit images only)", "bad_dtype")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return np.ascontiguousarray(image)


def _npy_header(handle, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, checked against the file size before anything is allocated:
    a corrupt header claiming (100000, 100000, 5) in a tiny file must be a problem of that file, not a
    MemoryError that stops the whole check."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
    except ValueError:
        raise ImageFileError(path, "not a valid .npy file (no NumPy header)") from None
    try:
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(handle)
        elif version == (3, 0):  # UTF-8 field names: no public header reader; np.load checks it
            return (), np.dtype(np.uint8)
        else:
            raise ImageFileError(path, f"not a valid .npy file (unknown format version {version[0]}.{version[1]})")
    except (ValueError, SyntaxError, TypeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageFileError(path, f"not a valid .npy file (bad header: {message})") from None
    if dtype.hasobject:
        raise ImageFileError(path, "array of Python objects (pickled data); expected uint8 or uint16", "bad_dtype")
    needed = math.prod(shape) * dtype.itemsize
    held = os.fstat(handle.fileno()).st_size - handle.tell()
    if needed > held:
        raise ImageFileError(path, f"unreadable or truncated .npy file: its header says shape {tuple(shape)} "
                             f"{dtype} ({needed} bytes), the file holds {held} bytes of data")
    return tuple(shape), dtype


def read_npy_file(path: Path) -> np.ndarray:
    """Load an original-layout frame: (H, W, C) uint8 or uint16 (a 2-D array counts as one channel).

    The header is validated first (magic string, shape and dtype against the file size).
    """
    shape: tuple[int, ...] = ()
    try:
        with open(path, "rb") as handle:
            shape, _ = _npy_header(handle, path)
            handle.seek(0)
            array = np.load(handle, allow_pickle=False)
    except ImageFileError:
        raise
    except OSError as err:
        raise ImageFileError(path, unreadable_detail(path, err)) from None
    except (ValueError, EOFError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageFileError(path, f"unreadable or truncated .npy file ({message})") from None
    except MemoryError:
        raise ImageFileError(path, f"array of shape {shape} is too large to load") from None
    if not isinstance(array, np.ndarray):
        raise ImageFileError(path, "not a single array")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ImageFileError(path, f"array of shape {tuple(array.shape)}, expected (H, W, C)", "channels")
    if array.dtype not in SUPPORTED_DTYPES:
        extra = ""
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            extra = ", with NaN/inf values"
        kind = "not_finite" if extra else "bad_dtype"
        raise ImageFileError(path, f"{array.dtype} array{extra}; expected uint8 or uint16", kind)
    return array


def file_channels(array: np.ndarray) -> int:
    """Number of channels of a decoded image (1 for a 2-D array)."""
    return 1 if array.ndim == 2 else int(array.shape[2])


def convert_channels(array: np.ndarray, channels: int, path: Path, modality: str) -> np.ndarray:
    """Give a decoded image the modality's channel count; returns (H, W, channels).

    3-channel (or RGBA) file for a 1-channel modality: luminance (ITU-R BT.601, as OpenCV); 1-channel file
    for a 3-channel modality: replicated; RGBA for RGB: alpha dropped. Anything else is a DataError.
    """
    have = file_channels(array)
    if have == 4 and channels in (1, 3):
        array = array[:, :, :3]
        have = 3
    if have == channels:
        return array if array.ndim == 3 else array[:, :, None]
    if have == 3 and channels == 1:
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2GRAY)[:, :, None]
    if have == 1 and channels == 3:
        plane = array if array.ndim == 2 else array[:, :, 0]
        return np.repeat(plane[:, :, None], 3, axis=2)
    raise ImageFileError(path, f"wrong channel count: {have} channels, modality '{modality}' needs {channels}",
                         "channels")


def write_png(path: Path, array: np.ndarray) -> None:
    """Write (H, W), (H, W, 1) or (H, W, 3) RGB uint8/uint16 as PNG (16-bit PNG for uint16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    elif array.ndim == 3:
        raise DataError(f"{path}: cannot write a {array.shape[2]}-channel image as PNG (1 or 3 channels)")
    if not cv2.imwrite(str(path), np.ascontiguousarray(array)):
        raise DataError(f"{path}: could not write image")
