"""Several files of a folder changed as one unit: all of them, or none.

A command that adds files to an existing artifact (calibrate's graphs, statistics, reports and the
manifest that hashes them) writes them into a staging folder inside the artifact. Committing renames that
folder to ``.mfdeploy-commit`` (one atomic step: from here on the update counts as done) and then moves each
file into place, the manifest last. If the process dies between those moves, the next command that opens
the artifact finishes them (roll forward); if it dies before the commit, the staging folder of the dead
process is removed (roll back). SIGINT and SIGTERM wait while the moves run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mfdeploy.errors import UserError
from mfdeploy.fileio import describe_os_error, is_write_failure, make_shareable, remove_dead_writers, temporary_prefix

STAGING_KIND = "update"  # .mfdeploy.update-<pid>-*: one command's files, not yet committed
COMMITTING = ".mfdeploy-commit"  # a committed update whose moves may not all have run yet
JOURNAL = "journal.json"  # inside it: the names to move, in order


class FolderUpdate:
    """The staged files of one update of ``root``; :meth:`path` says where to write each one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._staging: Path | None = None
        self._names: list[str] = []

    def path(self, name: str) -> Path:
        """Where to write file (or folder) ``name``, relative to the artifact root, for this update."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=temporary_prefix("mfdeploy", STAGING_KIND), dir=self.root))
        staged = self._staging / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        if name not in self._names:
            self._names.append(name)
        return staged

    def staged(self) -> list[str]:
        """The names written so far (a name asked for but never written is left out)."""
        return [n for n in self._names if self._staging is not None and (self._staging / n).exists()]

    def commit(self, last: str) -> None:
        """Move every staged file into place, ``last`` (the manifest) after all the others."""
        if self._staging is None:
            return
        names = [n for n in self.staged() if n != last] + ([last] if last in self.staged() else [])
        (self._staging / JOURNAL).write_text(json.dumps(names))
        make_shareable(self._staging)
        with _signals_deferred():
            os.replace(self._staging, self.root / COMMITTING)
            self._staging = None
            roll_forward(self.root)

    def discard(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


@contextmanager
def folder_update(root: Path, last: str) -> Iterator[FolderUpdate]:
    """Stage an update of ``root``; commit it when the block ends normally, discard it otherwise."""
    update = FolderUpdate(root)
    try:
        yield update
        update.commit(last)
    except OSError as exc:
        if not is_write_failure(exc):
            raise
        raise UserError(describe_os_error(exc, root)) from None
    finally:
        update.discard()


def recover(root: Path) -> None:
    """Finish an update a killed process committed, and remove staging folders of dead processes.

    Call it only while holding the artifact's lock, so no live writer's update is touched.
    """
    if (root / COMMITTING).is_dir():
        roll_forward(root)
    remove_dead_writers(root, f".mfdeploy.{STAGING_KIND}-")


def roll_forward(root: Path) -> None:
    """Move the files of the committed update into place (idempotent: a rerun skips what moved)."""
    committing = root / COMMITTING
    try:
        names = json.loads((committing / JOURNAL).read_text())
    except (OSError, ValueError):
        shutil.rmtree(committing, ignore_errors=True)  # committed folders always have a journal
        return
    for index, name in enumerate(names):
        source, target = committing / name, root / name
        if not source.exists():
            continue  # moved before the interruption
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            # a folder (an .mlpackage) is replaced whole: the old one goes into the journal folder first
            os.replace(target, committing / f".old-{index}")
        os.replace(source, target)
    shutil.rmtree(committing, ignore_errors=True)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done (main thread, POSIX); a rename sequence is short."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
