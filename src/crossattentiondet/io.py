"""Atomic file writes (a reader never sees a half-written file, a crash never leaves one behind) and checks
that an output location can be written before long work starts."""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

TMP_SUFFIX = ".tmp"


def _create_temp_file(path: Path) -> Path:
    """A new empty hidden file next to ``path``, created with mode 0666 so that the kernel applies the umask
    (``tempfile.mkstemp`` makes 0600 files, and reading the umask means changing it, which races threads)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place.

    The file gets the permissions of an ordinary new file (0666 less the umask) and is flushed to disk
    before the rename, so that after a power loss the name points at complete data. A process killed in
    between leaves a hidden ``.<name>.*.tmp`` file: :func:`remove_stale_temp_files`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp_file(path)
    try:
        write(tmp_path)
        fd = os.open(tmp_path, os.O_RDWR)  # writable: Windows refuses to fsync a read-only descriptor
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: str | Path, older_than: float) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` leaves when a process is killed mid-write.

    Only files last modified before ``older_than`` (a ``time.time()``, e.g. when this process started):
    a newer one may be another process's write in flight (a study runner updating the run's lock file).
    Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(f".*{TMP_SUFFIX}"):
            try:
                if tmp.is_file() and tmp.stat().st_mtime < older_than:
                    tmp.unlink()
                    removed.append(tmp)
            except FileNotFoundError:  # its writer renamed it meanwhile
                continue
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically; NaN and infinities become null (JSON has no NaN)."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def json_safe(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python numbers, recursively through mappings,
    lists and tuples."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------- output locations
OS_ERROR_HINTS = {
    errno.EROFS: "the file system is mounted read-only; write somewhere else",
    errno.ENOSPC: "the disk is full; free some space or write somewhere else",
    errno.EDQUOT: "over the disk quota; free some space or write somewhere else",
    errno.EACCES: "no permission; write somewhere else or fix the folder's permissions",
    errno.EPERM: "not permitted; write somewhere else or fix the folder's permissions",
}
WRITE_CHECK_PREFIX = ".cadet-write-check."


def os_error_reason(err: OSError) -> str:
    """The cause of an OS error in words, without its path: ``Read-only file system (<hint>)``."""
    reason = err.strerror or str(err) or type(err).__name__
    hint = OS_ERROR_HINTS.get(err.errno) if err.errno is not None else None
    return f"{reason} ({hint})" if hint else reason


def describe_os_error(err: OSError) -> str:
    """One line for the user: ``<path>: <cause>`` (both paths of a rename or copy), or the cause alone."""
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None and str(p) != ""]
    reason = os_error_reason(err)
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (``a.txt`` for ``a.txt/b/c``)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def ensure_writable_dir(path: str | Path, what: str = "--out") -> Path:
    """Create folder ``path`` if needed and prove that a file can be written in it; return it.

    Called before long work (evaluation, a study, data synthesis), so that a read-only or full disk, a
    missing permission or a file in the way is reported at once rather than after the work is done. Raises
    :class:`~crossattentiondet.config.ConfigError` naming ``what`` (the option), the path and the cause.
    """
    path = Path(path)
    _check_writable_dir(path, f"{what} {path}", target=True)
    return path


def ensure_writable_file(path: str | Path, what: str = "--out") -> Path:
    """Check that file ``path`` can be written: not a folder, its folder writable (created if needed)."""
    from crossattentiondet.config import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a file")
    _check_writable_dir(path.parent, f"{what} {path}", target=False)
    return path


def _check_writable_dir(folder: Path, label: str, *, target: bool) -> None:
    from crossattentiondet.config import ConfigError

    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{label} is a file, not a folder" if target else f"{label}: {folder} is a file, not a folder")
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise ConfigError(f"{label}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a few bytes flushed to disk, not just an empty file: a full disk often still has inodes to spare
        fd, tmp = tempfile.mkstemp(prefix=WRITE_CHECK_PREFIX, suffix=TMP_SUFFIX, dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
    except OSError as err:
        raise ConfigError(f"{label}: cannot write there: {os_error_reason(err)}") from None
