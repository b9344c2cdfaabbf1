"""Seeded mutation fuzzing of the image and array loaders: every mutant either loads, is skipped and
counted, or is refused with a UserError; never any other exception. Bounded to a few seconds in all.

A failure names the seed and case, so it can be replayed by running the same loop."""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfdeploy.errors import UserError
from mfdeploy.images.preprocess import Preprocessing, load_image
from mfdeploy.images.sets import MIN_IMAGES, load_image_set

SEED = 15  # the number; change it locally to explore further
PRE = Preprocessing.for_size(32)
IMAGE_CASES = 100  # per format
ARRAY_CASES = 300  # per container


def _photo() -> Image.Image:
    """A small image with structure (gradient and noise), so every encoder writes real data."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 24, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp[:16] / 2, ramp / 2)] * 3, axis=-1) + rng.normal(0, 20, (16, 24, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _encoded(fmt: str) -> bytes:
    image = _photo()
    buffer = io.BytesIO()
    if fmt == "GIF":
        image = image.convert("P")
    if fmt == "JPEG":
        exif = Image.Exif()
        exif[0x0112] = 6
        exif[0x010F] = "fuzz"
        image.save(buffer, fmt, exif=exif.tobytes())
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


def mutate(data: bytes, rng: random.Random, header: int = 64) -> bytes:
    """One to four edits: overwrite, insert or delete a byte (mostly within the first ``header`` bytes),
    or truncate."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        span = min(len(out), header) if rng.random() < 0.7 else len(out)
        at = rng.randrange(span)
        edit = rng.random()
        if edit < 0.6:
            out[at] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif edit < 0.75:
            out.insert(at, rng.randrange(256))
        elif edit < 0.9:
            del out[at]
        else:
            del out[rng.randrange(len(out)) :]
    return bytes(out)


def _outcome(load: Callable[[], object], case: str) -> bool:
    """True if ``load`` returned, False if it raised UserError; anything else fails the test with the case."""
    try:
        load()
    except UserError as exc:
        assert "\n" not in str(exc), f"{case}: a multi-line error: {exc}"
        return False
    except Exception as exc:  # the point of the test: report what escaped, and where
        pytest.fail(f"{case}: {type(exc).__name__}: {exc}")
    return True


# -- images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_fuzz_images_load_or_are_skipped_and_counted(tmp_path, fmt):
    rng = random.Random(f"{SEED}-{fmt}")
    original = _encoded(fmt)
    folder = tmp_path / "mutants"
    folder.mkdir()
    for i in range(MIN_IMAGES):  # good images among the bad: they must all be used
        (folder / f"good{i}.{fmt.lower()}").write_bytes(original)
    loaded = 0
    for case in range(IMAGE_CASES):
        path = folder / f"m{case:03d}.{fmt.lower()}"
        path.write_bytes(mutate(original, rng))
        if _outcome(lambda p=path: load_image(p).convert("RGB").size, f"seed {SEED} {fmt} case {case}"):
            loaded += 1
    data = load_image_set(folder, PRE, MIN_IMAGES + IMAGE_CASES)
    assert len(data) == MIN_IMAGES + loaded
    assert data.describe()["skipped_files"] == IMAGE_CASES - loaded


# -- arrays ----------------------------------------------------------------------------------------

DESCRS = ["<f4", ">f4", "<f8", "<f2", "|u1", "<i4", "|O", "<c8", "|b1", "<U2", "|V4", "[('a', '<f4')]", "nope"]


def _header(descr: str, fortran: bool, shape: tuple[int, ...]) -> bytes:
    """An .npy v1.0 header as numpy writes it, but with any descr and shape (what a hostile file can say)."""
    literal = descr if descr.startswith("[") else repr(descr)
    text = f"{{'descr': {literal}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def _random_shape(rng: random.Random) -> tuple[int, ...]:
    choice = rng.random()
    if choice < 0.5:
        return (rng.choice([0, 3, 8, 12, 2**40]), 3, 32, rng.choice([32, 16, 0]))
    if choice < 0.7:
        return (rng.choice([10, -1]), 3, 32, 32)
    return tuple(rng.randint(0, 40) for _ in range(rng.randint(0, 5)))


def _hostile_npy(rng: random.Random, good: bytes) -> bytes:
    """Either a good .npy with bytes mutated, or a forged header with random data behind it."""
    if rng.random() < 0.5:
        return mutate(good, rng, header=128)
    shape = _random_shape(rng)
    size = rng.choice([0, 10, 4 * 12 * 3 * 32 * 32, 4 * 3 * 32 * 32 * 3])
    return _header(rng.choice(DESCRS), rng.random() < 0.3, shape) + bytes(rng.randrange(256) for _ in range(16)) * (
        size // 16
    )


def _good_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(2).standard_normal((12, 3, 32, 32)).astype(np.float32))
    return buffer.getvalue()


def _as_npz(member: bytes, rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    method = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr(rng.choice(["images.npy", "x.npy", "data", "calib.npy"]), member)
        if rng.random() < 0.3:
            archive.writestr("labels.npy", _header("<i8", False, (12,)) + bytes(96))
    packed = buffer.getvalue()
    return mutate(packed, rng, header=len(packed)) if rng.random() < 0.5 else packed


@pytest.mark.parametrize("container", ["npy", "npz"])
def test_fuzz_arrays_load_or_are_one_line_errors(tmp_path, container):
    rng = random.Random(f"{SEED}-{container}")
    good = _good_npy()
    loaded = 0
    for case in range(ARRAY_CASES):
        body = _hostile_npy(rng, good)
        path = tmp_path / f"case{case:03d}.{container}"
        path.write_bytes(body if container == "npy" else _as_npz(body, rng))
        resize = rng.random() < 0.5

        def load(p: Path = path, r: bool = resize) -> None:
            data = load_image_set(p, PRE, 12, resize_arrays=r)
            assert data.images.dtype == np.float32 and data.images.dtype.isnative
            assert data.images.shape[1:] == (3, 32, 32) and np.isfinite(data.images).all()

        loaded += _outcome(load, f"seed {SEED} {container} case {case}")
    assert loaded > 0  # the loop did reach the loading path, not only the refusals
