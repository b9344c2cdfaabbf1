"""Preprocessed image arrays (an .npy, or one array of an .npz) read with bounded memory.

np.load trusts the file: a header declaring 4 TiB in a 100-byte file is allocated before anything is
read, an empty file raises EOFError, a corrupt .npz raises zipfile's own errors. Here the .npy header is
read and checked first (real-number dtype, declared size within the file), and then only the leading
images that are used are read, in chunks, into one buffer.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mfdeploy.errors import UserError
from mfdeploy.images.files import open_regular

MAX_ARRAY_BYTES = 8 * 2**30  # the most array data read at once (the images used, not the whole file)
MEMBER_PREFERENCE = ("images", "calib", "data", "x")  # which array of an .npz holds the images
_CHUNK = 16 * 2**20
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
# What reading a malformed .npy/.npz raises: numpy's magic check (ValueError), zipfile (BadZipFile,
# NotImplementedError, RuntimeError for encrypted members), zlib, short reads (EOFError, struct.error).
# The header text itself is parsed in _parse_header.
ARRAY_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)
_SAVE_AGAIN = "save it again with np.save / np.savez"


@dataclass(frozen=True)
class ArrayHeader:
    """What an .npy header declares, and where the data starts."""

    path: Path
    member: str | None  # the .npy inside an .npz, None for an .npy file
    shape: tuple[int, ...]
    dtype: np.dtype  # as stored, possibly big-endian
    fortran_order: bool
    offset: int  # bytes before the data in the .npy stream

    @property
    def label(self) -> str:
        """How messages name the array."""
        if self.member is None:
            return str(self.path)
        return f"{self.path} (array {self.member.removesuffix('.npy')!r})"

    @property
    def row_bytes(self) -> int:
        """Bytes of one entry along the first axis (one image)."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Whatever a malformed file makes numpy or zipfile raise becomes one UserError line."""
    try:
        yield
    except UserError:
        raise
    except ARRAY_READ_ERRORS as exc:
        text = str(exc).replace("\n", " ").strip() or type(exc).__name__
        raise UserError(f"cannot read {path}: {text} (truncated or corrupt?); {_SAVE_AGAIN}") from None


def _choose_member(archive: zipfile.ZipFile, path: Path) -> str:
    """The .npz array holding the images: the first of MEMBER_PREFERENCE present, else the first array."""
    names = {name.removesuffix(".npy"): name for name in archive.namelist()}
    if not names:
        raise UserError(f"{path} holds no arrays; {_SAVE_AGAIN}")
    return names[next((key for key in MEMBER_PREFERENCE if key in names), next(iter(names)))]


@contextmanager
def _npy_stream(path: Path, member: str | None = None) -> Iterator[tuple[BinaryIO, int, str | None]]:
    """The .npy stream of ``path`` (the file itself, or the chosen array of an .npz), its size in bytes
    and the member's name. Which of the two a file is comes from its first bytes, as with np.load."""
    with open_regular(path, "array file") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise UserError(f"{path} is empty (0 bytes); {_SAVE_AGAIN}")
        if file.read(2) != b"PK":
            file.seek(0)
            yield file, size, None
            return
        file.seek(0)
        with zipfile.ZipFile(file) as archive:
            info = archive.getinfo(member or _choose_member(archive, path))
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise UserError(
                    f"{path}: array {info.filename!r} uses zip compression method {info.compress_type}; "
                    f"np.savez and np.savez_compressed write stored or deflated arrays: {_SAVE_AGAIN}"
                )
            with archive.open(info) as stream:
                yield stream, info.file_size, info.filename


def _check_header(header: ArrayHeader, size: int) -> None:
    """Refuse what no image array can be, and a declared size the file cannot hold, before reading data."""
    dtype = header.dtype
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise UserError(
            f"{header.label} holds {dtype} values; image arrays must hold real numbers "
            "(preprocessed float32 images: array.astype('float32'))"
        )
    if any(side < 0 for side in header.shape):
        raise UserError(f"{header.label}: the header declares the impossible shape {list(header.shape)}; {_SAVE_AGAIN}")
    declared = math.prod(header.shape) * dtype.itemsize
    available = max(size - header.offset, 0)
    if declared > available:
        raise UserError(
            f"{header.label}: the header declares {list(header.shape)} {dtype} ({human_bytes(declared)}) but the "
            f"file holds {human_bytes(available)} of data: truncated or corrupt; {_SAVE_AGAIN}"
        )


def _parse_header(stream: BinaryIO, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's own reading of the header: shape, Fortran order, dtype."""
    version = np.lib.format.read_magic(stream)
    reader = _HEADER_READERS.get(version)
    if reader is None:
        raise UserError(f"{path}: .npy format version {version[0]}.{version[1]} is not read here; {_SAVE_AGAIN}")
    try:
        shape, fortran_order, dtype = reader(stream)
    except Exception as exc:  # numpy evaluates the header text: a hostile one raises TypeError, TokenError, ...
        text = str(exc).replace("\n", " ").strip()
        raise UserError(f"{path}: malformed .npy header ({type(exc).__name__}: {text}); {_SAVE_AGAIN}") from None
    return tuple(shape), bool(fortran_order), dtype


def read_array_header(path: Path) -> ArrayHeader:
    """The checked header of the image array in ``path`` (.npy, or the image array of an .npz)."""
    with _reading(path), _npy_stream(path) as (stream, size, member):
        shape, fortran_order, dtype = _parse_header(stream, path)
        header = ArrayHeader(path, member, shape, dtype, fortran_order, stream.tell())
    _check_header(header, size)
    return header


def _read_into(stream: BinaryIO, buffer: np.ndarray) -> int:
    """Fill ``buffer`` (uint8) from ``stream`` in chunks, so no second copy of the data is ever made."""
    view = memoryview(buffer)
    done = 0
    while done < len(view):
        count = stream.readinto(view[done : done + _CHUNK])
        if not count:
            break
        done += count
    return done


def read_leading(header: ArrayHeader, count: int) -> np.ndarray:
    """The first ``count`` entries along axis 0, in native byte order (a big-endian file is swapped).

    Only those entries are read, except from a Fortran-ordered array, whose entries are interleaved."""
    rows = header.shape[0] if header.fortran_order else count
    nbytes = rows * header.row_bytes
    if nbytes > MAX_ARRAY_BYTES:
        raise UserError(
            f"{header.label}: reading {rows} images needs {human_bytes(nbytes)}, over the limit of "
            f"{human_bytes(MAX_ARRAY_BYTES)}; use fewer images"
            + (" or save the array in C order (np.ascontiguousarray)" if header.fortran_order else "")
        )
    raw = np.empty(nbytes, np.uint8)
    with _reading(header.path), _npy_stream(header.path, header.member) as (stream, _, _):
        stream.seek(header.offset)
        got = _read_into(stream, raw)
    if got < nbytes:
        raise UserError(
            f"{header.label}: the file ends after {human_bytes(got)} of the {human_bytes(nbytes)} of data it "
            f"declares: truncated or corrupt; {_SAVE_AGAIN}"
        )
    array = raw.view(header.dtype).reshape((rows, *header.shape[1:]), order="F" if header.fortran_order else "C")
    if not array.dtype.isnative:
        array = array.byteswap(inplace=True).view(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array[:count])
