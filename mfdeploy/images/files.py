"""Finding and opening input files without trusting them.

A folder of user data can hold anything: FIFOs (opening one blocks forever), sockets, devices, dangling
symbolic links, symbolic link loops, names that are not UTF-8. Every such entry is left out and
counted, never opened; only regular files are read, and those are opened without blocking.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mfdeploy.console import warn
from mfdeploy.errors import UserError

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


def not_regular_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a regular file (None when it can), from ``stat`` alone: the entry is
    never opened, so a FIFO cannot block."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"dangling symbolic link (its target {os.readlink(path)!r} does not exist)"
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return exc.strerror or str(exc)
    if stat.S_ISREG(mode):
        return None
    return f"{_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file"


@contextmanager
def open_regular(path: str | os.PathLike[str], what: str = "file") -> Iterator[BinaryIO]:
    """``path`` opened for binary reading if it is a regular file, else a UserError naming ``what`` and the path.

    Checked with ``stat`` first and again on the open descriptor (opened non-blocking), so a file swapped
    for a FIFO in between cannot hang the run either."""
    reason = not_regular_reason(path)
    if reason is not None:
        raise UserError(f"cannot read {what} {path}: {reason}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"cannot read {what} {path}: not a regular file")
        yield handle


@dataclass
class FileScan:
    files: list[Path] = field(default_factory=list)  # regular files, sorted
    skipped: list[str] = field(default_factory=list)  # why each wanted entry that is not one was left out


def scan_files(folder: Path, wanted: Callable[[Path], bool], what: str = "file") -> FileScan:
    """Every entry under ``folder`` (recursively; symbolic links to folders are not followed) whose name
    ``wanted`` accepts, split into readable regular files and skipped entries with the reason.

    Directories whose names look wanted are walked, not counted."""
    try:
        candidates = sorted(p for p in folder.rglob("*") if wanted(p))
    except OSError as exc:
        raise UserError(f"cannot read folder {folder}: {exc.strerror or exc}") from None
    scan = FileScan()
    for path in candidates:
        reason = not_regular_reason(path)
        if reason is None:
            scan.files.append(path)
        elif not path.is_dir():
            scan.skipped.append(f"cannot read {what} {path}: {reason}")
    return scan


def warn_skipped(skipped: list[str], where: str | os.PathLike[str], what: str = "unreadable or corrupt") -> None:
    """One warning for the files left out of ``where``, quoting the first reason."""
    if skipped:
        warn(f"skipped {len(skipped)} {what} image file(s) in {where}; first: {skipped[0]}")
