"""Errors that reach the user as one line naming the file, region or config key."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class CinderSegError(Exception):
    """Bad input or configuration; ``str(err)`` is a complete one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(CinderSegError):
    """The configuration is invalid (unknown key, wrong type, impossible value)."""


class InputError(CinderSegError):
    """An input file (DEM, labels, tiles) is missing, unreadable or unusable."""


class OutputError(CinderSegError):
    """An output cannot be written: the disk is full, or the folder is read-only or not writable."""


#: errno values of a failed write that no retry fixes, and what to do about them.
WRITE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "free some disk space (or run in a directory on a larger disk), then rerun",
    errno.EDQUOT: "free some space within your disk quota, then rerun",
    errno.EFBIG: "the file is larger than this file system or your file size limit allows",
    errno.EROFS: "the file system is read-only: run in a writable directory",
    errno.EACCES: "check the permissions of results/ and resources/",
    errno.EPERM: "check the permissions (or immutable flag) of results/ and resources/",
}
#: Below this many free bytes on the device, a failed write is taken as a full disk (GDAL's write
#: errors carry no errno). A GeoTIFF block is at most a few MB, so a write fails only near zero.
DISK_FULL_BYTES = 16 * 1024 * 1024


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _io_like(exc: BaseException) -> bool:
    """An OSError, or an error of the raster and vector I/O libraries (GDAL write errors)."""
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.split(".")[0] in {"rasterio", "pyogrio", "fiona", "zipfile"}


def write_failure(err: BaseException, path: str | os.PathLike[str] | None = None) -> OutputError | None:
    """An OutputError naming ``path`` if ``err`` (or its cause) is a write failure no retry fixes.

    Recognised: an OSError with an errno of ``WRITE_ERRNOS`` anywhere in the exception chain, or any
    I/O error (OSError, rasterio, pyogrio) while the folder of ``path`` is read-only or has less than
    ``DISK_FULL_BYTES`` free (GDAL reports a full disk as a plain write error). None otherwise.
    """
    for exc in _chain(err):
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            where = exc.filename or path or "an output"
            verb = "cannot access" if exc.errno in (errno.EACCES, errno.EPERM) else "cannot write"
            return OutputError(f"{verb} {where}: {exc.strerror}; {WRITE_ERRNOS[exc.errno]}")
    if path is None or not any(_io_like(exc) for exc in _chain(err)):
        return None
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stat = os.statvfs(folder)
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if stat.f_flag & os.ST_RDONLY:
        return OutputError(
            f"cannot write {path}: {folder} is on a read-only file system; {WRITE_ERRNOS[errno.EROFS]}"
        )
    if free < DISK_FULL_BYTES:
        return OutputError(
            f"cannot write {path}: the disk is full ({_size(free)} free in {folder}); "
            f"{WRITE_ERRNOS[errno.ENOSPC]}"
        )
    return None
