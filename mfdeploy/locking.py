"""One writer per artifact folder: an advisory lock beside the folder, held while a command changes it.

The lock is ``.<folder>.lock`` next to the folder (the folder itself is swapped whole by an export, so a
lock inside it would be swapped too), and exists only while a command writes: the holder removes it before
releasing it. The operating system drops the lock when the holder exits, however it exits, so a killed run
never leaves a stale lock; its file stays, unlocked, and the next writer takes it over.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mfdeploy.errors import UserError
from mfdeploy.fileio import describe_os_error

try:  # POSIX; on other systems commands run unlocked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later
_held: dict[Path, int] = {}  # folders this process holds, with a depth, so nested holders share one lock


def lock_path(root: Path) -> Path:
    """The lock file of artifact folder ``root``."""
    return root.parent / f".{root.name}.lock"


@contextmanager
def artifact_lock(root: str | os.PathLike[str], action: str) -> Iterator[None]:
    """Hold the one-writer lock of artifact folder ``root`` while ``action`` changes it.

    A second writer is refused at once, in one line naming the holder, instead of both reporting success
    while one silently replaces the other.
    """
    root = Path(root).absolute()
    if fcntl is None or root in _held:
        _held[root] = _held.get(root, 0) + 1
        try:
            yield
        finally:
            _release_depth(root)
        return
    path = lock_path(root)
    handle = _acquire(path, root, action)
    with handle:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "action": action, "since": time.strftime("%H:%M:%S")}))
        handle.flush()
        _held[root] = 1
        try:
            yield
        finally:
            _held.pop(root, None)
            path.unlink(missing_ok=True)  # while still held: whoever opens the name next gets a fresh file
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _acquire(path: Path, root: Path, action: str):
    """Open and lock ``path``; retried when the file was removed by its last holder between our open and
    our lock (we would hold a lock on a file nobody else can find)."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as exc:
            raise UserError(describe_os_error(exc, path)) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            raise UserError(
                f"{root} is being written by another mfdeploy command ({holder}); "
                f"wait for it to finish and run this again{', or choose another --out' if action == 'export' else ''}",
                EXIT_LOCKED,
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()


def _release_depth(root: Path) -> None:
    _held[root] -= 1
    if not _held[root]:
        del _held[root]


def _holder(handle) -> str:
    """What the lock file says about its holder, for the refusal message."""
    try:
        handle.seek(0)
        info = json.loads(handle.read() or "{}")
        return f"{info.get('action', 'a command')}, pid {int(info['pid'])}, since {info.get('since', '?')}"
    except (ValueError, KeyError, TypeError, OSError):
        return "another process"
