"""File writing that never leaves a half-written artifact and never removes what it did not make, and
content hashes.

Every output goes to a temporary name beside its target and is renamed onto it only when complete. The
temporary names carry the writer's pid, so a later run can tell the leftovers of a killed run (whose pid
is gone) from the work of a live one, and remove only those.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mfdeploy.errors import UserError

# errno values that mean "the disk (or the quota, or the size limit) is full": named as such, not as a traceback
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def describe_os_error(exc: OSError, path: str | os.PathLike[str]) -> str:
    """One line naming what went wrong writing ``path`` and what to do about it."""
    code = exc.errno
    if code in _FULL:
        cause = "no space left on the device" if code != errno.EFBIG else "file too large for the file system"
        return f"cannot write {path}: {cause}; free some space or choose another location"
    if code == errno.EROFS:
        return f"cannot write {path}: read-only file system; choose a writable location"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {path}: permission denied; choose a writable location"
    return f"cannot write {path}: {exc.strerror or exc}; choose a writable location"


def is_write_failure(exc: OSError) -> bool:
    """Whether ``exc`` says the disk is full or read-only: a condition to report, not a bug to trace."""
    return exc.errno in _FULL or exc.errno == errno.EROFS


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (on this host)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def temporary_prefix(name: str, kind: str) -> str:
    """The hidden prefix of a temporary sibling of ``name``: ``.<name>.<kind>-<pid>-``."""
    return f".{name}.{kind}-{os.getpid()}-"


def remove_stale_siblings(target: Path, kinds: tuple[str, ...]) -> list[Path]:
    """Remove the temporary siblings of ``target`` (``.<name>.<kind>-<pid>-*``) whose writer is dead."""
    removed: list[Path] = []
    for kind in kinds:
        removed += remove_dead_writers(target.parent, f".{target.name}.{kind}-")
    return removed


def remove_dead_writers(folder: Path, prefix: str) -> list[Path]:
    """Remove the entries of ``folder`` named ``<prefix><pid>-*`` whose writing process is gone.

    Only names of exactly that shape are touched: this module makes them, so nothing a user made is
    ever removed, and a live writer's work is left alone. Returns what was removed.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for candidate in folder.glob(f"{glob_escape(prefix)}*"):
        pid = _writer_pid(candidate.name, prefix)
        if pid is None or pid_alive(pid):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _writer_pid(name: str, prefix: str) -> int | None:
    rest = name[len(prefix) :] if name.startswith(prefix) else ""
    pid, _, _ = rest.partition("-")
    return int(pid) if pid.isdigit() else None


# a file name to suggest inside a folder given where a file goes, by option
_EXAMPLE_NAMES = {"--json": "result.json", "--md": "report.md", "--html": "report.html", "--out": "model.safetensors"}


def check_file_target(path: str | os.PathLike[str], option: str = "") -> Path:
    """Refuse, before any work, an output file path that cannot be written or that would replace
    something other than a regular file (a folder, a device, a FIFO). Returns the path to write: a
    symbolic link is followed, so the file it points to is replaced and the link itself is kept."""
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    stdout = " (or - for stdout)" if option == "--json" else ""
    if path.is_symlink():
        if _links_through_a_device(path):
            raise UserError(f"{label} is a link to a device or a stream; give a file name{stdout}")
        path = Path(os.path.realpath(path))
    if path.exists() and path.is_dir():
        example = path / _EXAMPLE_NAMES.get(option, f"output{path.suffix}")
        raise UserError(f"{label} is a folder; give a file name such as {example}")
    if path.exists() and not path.is_file():
        raise UserError(f"{label} exists and is not a regular file; give another file name{stdout}")
    check_writable_folder(path.parent, label)
    return path


def _links_through_a_device(path: Path) -> bool:
    """Whether following ``path``'s links passes through /dev or /proc (/dev/stdout -> /proc/self/fd/1
    -> whatever the shell redirected): never a file to replace."""
    for _ in range(40):  # the kernel's own limit on a chain of links
        if not path.is_symlink():
            return False
        target = Path(os.readlink(path))
        path = target if target.is_absolute() else path.parent / target
        if path.parts[:2] in (("/", "proc"), ("/", "dev")):
            return True
    return True  # a loop


def check_writable_folder(folder: Path, label: str) -> None:
    """The nearest existing folder at or above ``folder`` must be a writable folder on a writable disk."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write {label}: {probe} is a file, not a folder; choose another location")
    if _read_only(probe):
        raise UserError(f"cannot write {label}: {probe} is on a read-only file system; choose a writable location")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {label}: permission denied in {probe}; choose a writable location")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``, else delete it.

    The caller may create a file or a folder (e.g. an .mlpackage) at the temporary path. ``target``
    itself may only be absent or a regular file: a folder or anything else standing there is refused
    before any work, never removed; a link is followed, so the file it points to is replaced, not the link.
    """
    target = check_file_target(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(target, ("tmp",))
        tmp_dir = Path(tempfile.mkdtemp(prefix=temporary_prefix(target.name, "tmp"), dir=parent))
    except OSError as exc:
        raise UserError(describe_os_error(exc, target)) from None
    tmp = tmp_dir / target.name
    try:
        try:
            yield tmp
        except OSError as exc:
            if is_write_failure(exc):
                raise UserError(describe_os_error(exc, target)) from None
            raise
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to the temporary path for {target}")
        make_shareable(tmp)
        if target.is_dir() and not target.is_symlink():
            raise UserError(f"{target} became a folder while it was being written; nothing was replaced")
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise UserError(describe_os_error(exc, target)) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_shareable(path: Path) -> None:
    """Give a finished artifact the permissions a normal file or folder would have (mkdtemp makes 0700)."""
    mode = 0o777 if path.is_dir() else 0o666
    os.chmod(path, mode & ~_umask())
    if path.is_dir():
        for child in path.rglob("*"):
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~_umask())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a message shows it: relative to the current folder when it is inside it (what the user
    would type), absolute otherwise."""
    absolute = Path(os.path.abspath(path))
    here = Path.cwd()
    for candidate, base in ((absolute, here), (absolute.resolve(), here.resolve())):
        try:
            return str(candidate.relative_to(base))
        except ValueError:
            continue
    return str(absolute)
