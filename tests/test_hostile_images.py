"""Hostile image and array inputs: every one is skipped and counted, or refused with one line; none
raises anything else, blocks on a FIFO, or allocates what a header merely declares."""

from __future__ import annotations

import io
import os
import signal
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_NUM_CLASSES
from mfdeploy.errors import UserError
from mfdeploy.images.arrays import MEMBER_PREFERENCE
from mfdeploy.images.datasets import load_image_folder
from mfdeploy.images.preprocess import MAX_IMAGE_PIXELS, Preprocessing, load_image, probe_image
from mfdeploy.images.sets import MIN_IMAGES, fingerprint, load_image_set

PRE = Preprocessing.for_size(32)
SIDE = 32


@pytest.fixture
def no_hang():
    """Fail instead of hanging forever if something opens a FIFO and waits for a writer."""
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("needs SIGALRM to guard against a hang")

    def fail(*_args):
        raise AssertionError("the loader blocked (did it open a FIFO?)")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def save_good(folder: Path, count: int = MIN_IMAGES, prefix: str = "good") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i}.png"
        Image.new("RGB", (40, 30), (i * 25 % 256, 90, 200 - i * 10)).save(path)
        paths.append(path)
    return paths


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header declares ``width`` x ``height`` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encoded(fmt: str, size: tuple[int, int] = (24, 16)) -> bytes:
    image = Image.new("RGB", size, (10, 200, 30))
    if fmt == "GIF":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def truncated_png(path: Path) -> None:
    """A PNG whose header is intact but whose pixel data stops half way: it opens, then fails to decode."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


# JPEG EXIF block that makes Pillow's EXIF parser raise struct.error (found by mutating a real block).
BAD_EXIF = (
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02\x01B\x00\x02\x00\x00\x00\x06\x00\x00\x00&\x01\x12\x00\x03"
    b"\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00Canon\xdb"
)


# -- images ----------------------------------------------------------------------------------------


def test_decompression_bomb_png_is_skipped_and_counted(tmp_path):
    bomb = png_declaring(50_000, 50_000)
    assert len(bomb) < 300
    save_good(tmp_path / "photos")
    (tmp_path / "photos" / "bomb.png").write_bytes(bomb)
    with pytest.raises(UserError, match="bomb.png: too large to decode safely"):
        load_image(tmp_path / "photos" / "bomb.png")
    data = load_image_set(tmp_path / "photos", PRE, 100)
    assert len(data) == MIN_IMAGES and data.describe()["skipped_files"] == 1
    assert "bomb.png" in data.skipped[0]


def test_an_unreadable_file_among_the_chosen_is_replaced_by_a_spare(tmp_path):
    """Asking for exactly as many images as there are good ones: the bad file costs a skip, not an image."""
    save_good(tmp_path / "photos", MIN_IMAGES + 4)
    truncated_png(tmp_path / "photos" / "good-bad.png")  # sorts among the good ones, so it is chosen
    data = load_image_set(tmp_path / "photos", PRE, MIN_IMAGES + 4)
    assert len(data) == MIN_IMAGES + 4 and data.describe()["skipped_files"] == 1


def test_the_pixel_limit_holds_even_when_pillows_own_check_is_off(tmp_path, monkeypatch):
    """Some libraries set Image.MAX_IMAGE_PIXELS = None; MAX_IMAGE_PIXELS is checked from the header anyway."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    (tmp_path / "wide.png").write_bytes(png_declaring(MAX_IMAGE_PIXELS + 1, 1))
    with pytest.raises(UserError, match=f"declares {MAX_IMAGE_PIXELS + 1}x1 pixels, over the limit of"):
        probe_image(tmp_path / "wide.png")
    with pytest.raises(UserError, match="over the limit"):
        load_image(tmp_path / "wide.png")
    (tmp_path / "flat.png").write_bytes(png_declaring(1, 0))
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "flat.png")


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP", "TIFF"])
def test_one_bad_header_byte_never_escapes_as_another_exception(tmp_path, fmt):
    """Each header byte set to 0xFF in turn: the file loads or is a UserError; a folder of them plus good
    images skips exactly the ones that do not load and keeps every good image."""
    original = encoded(fmt)
    folder = tmp_path / "mixed"
    save_good(folder)
    failing = 0
    for offset in range(min(40, len(original))):
        mutated = bytearray(original)
        mutated[offset] = 0xFF
        path = folder / f"m{offset:02d}.{fmt.lower()}"
        path.write_bytes(bytes(mutated))
        try:
            assert load_image(path).mode == "RGB"
        except UserError as exc:
            assert str(exc).startswith(f"cannot read image {path}: ")
            failing += 1
    data = load_image_set(folder, PRE, 1000)
    assert data.describe()["skipped_files"] == failing
    assert len(data) == MIN_IMAGES + min(40, len(original)) - failing
    if fmt == "BMP":  # byte 21 is the width's top byte: a decompression bomb that used to abort the run
        assert any("m21.bmp: too large to decode safely" in reason for reason in data.skipped)


def test_malformed_exif_keeps_the_image_unturned(tmp_path):
    path = tmp_path / "exif.jpg"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(path, "JPEG", exif=BAD_EXIF)
    image = load_image(path)
    assert image.size == (30, 20) and image.mode == "RGB"
    save_good(tmp_path)
    data = load_image_set(tmp_path, PRE, 100)
    assert len(data) == MIN_IMAGES + 1 and data.skipped == []


def test_a_good_exif_orientation_is_still_honoured(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (30, 20), (200, 10, 10)).save(tmp_path / "turned.jpg", "JPEG", exif=exif.tobytes())
    assert load_image(tmp_path / "turned.jpg").size == (20, 30)


def test_fifo_dangling_link_and_link_loop_are_skipped_and_counted(tmp_path, no_hang):
    folder = tmp_path / "photos"
    save_good(folder)
    os.mkfifo(folder / "pipe.png")
    os.symlink("nowhere.png", folder / "dangling.png")
    os.symlink("loop.jpg", folder / "loop.jpg")
    (folder / "a_folder.png").mkdir()  # a directory named like an image is walked, not counted
    data = load_image_set(folder, PRE, 100)
    assert len(data) == MIN_IMAGES and data.describe()["skipped_files"] == 3
    reasons = "\n".join(data.skipped)
    assert "pipe.png: a FIFO (named pipe), not a regular file" in reasons
    assert "dangling.png: dangling symbolic link" in reasons and "loop.jpg: symbolic link loop" in reasons
    with pytest.raises(UserError, match="pipe.png: a FIFO"):
        load_image(folder / "pipe.png")
    assert fingerprint(folder, PRE, 100, 3) is not None


def test_non_utf8_file_name_is_fingerprinted_and_loaded(tmp_path):
    folder = tmp_path / "photos"
    save_good(folder)
    raw = os.path.join(os.fsencode(folder), b"caf\xe9-latin1.png")
    try:
        with open(raw, "wb") as handle:
            handle.write((folder / "good0.png").read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    first = fingerprint(folder, PRE, 100, 3)
    assert first is not None and len(first) == 64
    with open(raw, "ab") as handle:
        handle.write(b"\x00")  # same name, new size: another identity
    assert fingerprint(folder, PRE, 100, 3) not in (None, first)
    assert len(load_image_set(folder, PRE, 100)) == MIN_IMAGES + 1


def test_every_file_unreadable_is_one_line_naming_folder_and_count(tmp_path, no_hang):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for i in range(3):
        (garbage / f"{i}.png").write_bytes(b"not a png")
    (garbage / "empty.jpg").write_bytes(b"")
    with pytest.raises(UserError) as caught:
        load_image_set(garbage, PRE, 100)
    message = str(caught.value)
    assert "\n" not in message and f"only 0 readable image(s) in {garbage} (4 unreadable file(s) skipped" in message
    links = tmp_path / "links"
    links.mkdir()
    os.mkfifo(links / "pipe.png")
    os.symlink("nowhere.png", links / "dangling.png")
    with pytest.raises(UserError, match=f"image folder {links} has no readable images: 2 file"):
        load_image_set(links, PRE, 100)


def test_zero_byte_image_is_named_as_empty(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(UserError, match="zero.png: empty file"):
        load_image(tmp_path / "zero.png")


def test_image_folder_skips_and_counts_what_does_not_read(tmp_path, no_hang):
    save_good(tmp_path / "0", 4)
    save_good(tmp_path / "1", 4)
    (tmp_path / "0" / "zero.png").write_bytes(b"")
    (tmp_path / "1" / "bomb.png").write_bytes(png_declaring(50_000, 50_000))
    os.mkfifo(tmp_path / "1" / "pipe.jpg")
    truncated_png(tmp_path / "1" / "truncated.png")  # only its decoding fails: kept here, skipped by eval
    data = load_image_folder(tmp_path)
    assert len(data.skipped) == 3 and len(data.train) + len(data.val) == 9
    assert any("zero.png: empty file" in s for s in data.skipped)
    everything_bad = tmp_path / "bad"
    (everything_bad / "a").mkdir(parents=True)
    (everything_bad / "b").mkdir()
    (everything_bad / "a" / "x.png").write_bytes(b"")
    (everything_bad / "b" / "y.png").write_bytes(b"junk")
    with pytest.raises(UserError, match=f"data folder {everything_bad} has no readable images: 2 file"):
        load_image_folder(everything_bad)


# -- arrays ----------------------------------------------------------------------------------------


def good_array(count: int = 10) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((count, 3, SIDE, SIDE)).astype(np.float32)


def npy_header_only(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def refused(path: Path, **options) -> str:
    with pytest.raises(UserError) as caught:
        load_image_set(path, PRE, 100, **options)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_object_array_in_npz_is_refused_naming_file_and_dtype(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.array([{"a": 1}] * 10, dtype=object))
    message = refused(tmp_path / "x.npz")
    assert f"{tmp_path / 'x.npz'} (array 'images') holds object values" in message


@pytest.mark.parametrize("dtype", ["complex64", "U3", [("r", "<f4"), ("g", "<f4")]])
def test_non_real_dtypes_are_refused(tmp_path, dtype):
    np.save(tmp_path / "x.npy", np.zeros((10, 3, SIDE, SIDE), dtype=dtype))
    message = refused(tmp_path / "x.npy")
    assert f"holds {np.dtype(dtype)} values; image arrays must hold real numbers" in message


def test_corrupt_npz_is_one_line(tmp_path):
    np.savez(tmp_path / "whole.npz", images=good_array())
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in refused(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    assert refused(tmp_path / "junk.npz").startswith(f"cannot read {tmp_path / 'junk.npz'}: ")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    assert "holds no arrays" in refused(tmp_path / "empty.npz")


def test_header_declaring_4_tib_is_refused_before_allocating(tmp_path):
    rows = 4 * 2**40 // (3 * SIDE * SIDE * 4)
    (tmp_path / "huge.npy").write_bytes(npy_header_only((rows, 3, SIDE, SIDE)) + b"\x00" * 1000)
    message = refused(tmp_path / "huge.npy")
    assert "the header declares" in message and "(4.0 TiB) but the file holds 1000 bytes of data" in message
    assert "truncated or corrupt" in message


def test_npz_member_declaring_more_than_it_holds_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as archive:
        archive.writestr("images.npy", npy_header_only((10**9, 3, SIDE, SIDE)) + b"\x00" * 64)
    assert "the header declares" in refused(tmp_path / "lie.npz")


def test_empty_array_file_is_one_line(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"")
    assert (
        refused(tmp_path / "x.npy") == f"{tmp_path / 'x.npy'} is empty (0 bytes); save it again with np.save / np.savez"
    )


def test_big_endian_float32_is_converted_to_native(tmp_path):
    images = good_array()
    np.save(tmp_path / "native.npy", images)
    np.save(tmp_path / "big.npy", images.astype(">f4"))
    big = load_image_set(tmp_path / "big.npy", PRE, 10)
    assert big.images.dtype == np.dtype("float32") and big.images.dtype.isnative
    np.testing.assert_array_equal(big.images, images)
    assert big.sha256 == load_image_set(tmp_path / "native.npy", PRE, 10).sha256


def test_only_the_images_used_are_read_and_fortran_order_still_works(tmp_path):
    images = good_array(20)
    np.save(tmp_path / "c.npy", images)
    np.save(tmp_path / "f.npy", np.asfortranarray(images))
    for name in ("c.npy", "f.npy"):
        np.testing.assert_array_equal(load_image_set(tmp_path / name, PRE, 12).images, images[:12])


def test_npz_picks_the_image_array_and_ignores_others(tmp_path):
    images = good_array()
    assert MEMBER_PREFERENCE[0] == "images"
    np.savez_compressed(
        tmp_path / "x.npz", labels=np.arange(10), meta=np.array([{"x": 1}], dtype=object), images=images
    )
    np.testing.assert_array_equal(load_image_set(tmp_path / "x.npz", PRE, 10).images, images)


def test_fifo_named_like_an_array_is_refused_not_opened(tmp_path, no_hang):
    os.mkfifo(tmp_path / "x.npy")
    assert "x.npy: a FIFO (named pipe), not a regular file" in refused(tmp_path / "x.npy")


def test_existing_array_checks_still_hold(tmp_path):
    np.save(tmp_path / "f64.npy", np.zeros((10, 3, SIDE, SIDE), np.float64))
    assert "is float64; arrays must be float32" in refused(tmp_path / "f64.npy")
    np.save(tmp_path / "shape.npy", np.zeros((10, 3, 16, 16), np.float32))
    assert "has shape [10, 3, 16, 16]" in refused(tmp_path / "shape.npy")
    np.save(tmp_path / "few.npy", good_array(3))
    assert "has 3 images; at least" in refused(tmp_path / "few.npy")
    nan = good_array()
    nan[4, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert "NaN or Inf" in refused(tmp_path / "nan.npy")
    np.save(tmp_path / "small.npy", good_array()[:, :, :16, :16].astype(">f4"))
    assert load_image_set(tmp_path / "small.npy", PRE, 10, resize_arrays=True).images.shape == (10, 3, SIDE, SIDE)


# -- through the command line ---------------------------------------------------------------------


# small_artifact (conftest): a private copy of one 26m/64px/10-class export shared by the whole run


def test_parity_on_a_folder_with_a_bomb_reports_the_skip(cli, small_artifact, tmp_path, no_hang):
    folder = tmp_path / "photos"
    save_good(folder)
    (folder / "bomb.png").write_bytes(png_declaring(50_000, 50_000))
    os.mkfifo(folder / "pipe.png")
    md = tmp_path / "parity.md"
    result = cli("parity", small_artifact, "--targets", "onnx", "--data", folder, "--n", "10", "--json", "--md", md)
    assert "Traceback" not in result.err and result.code == 0, result.err
    assert "skipped 2 unreadable or corrupt image file(s)" in result.err
    data = result.json()["data"]
    assert data["skipped_files"] == 2 and data["images"] == MIN_IMAGES
    assert f"Data: {folder}, {MIN_IMAGES} images" in md.read_text() and "2 unreadable files skipped" in md.read_text()


def test_calibrate_on_an_empty_array_says_so_in_one_line(cli, small_artifact, tmp_path):
    (tmp_path / "x.npy").write_bytes(b"")
    result = cli("calibrate", small_artifact, "--calib-data", tmp_path / "x.npy", "--no-latency")
    assert result.code != 0 and "Traceback" not in result.err and "Aborted" not in result.err
    assert f"{tmp_path / 'x.npy'} is empty (0 bytes)" in result.err


def test_eval_on_an_image_folder_skips_and_counts(cli, small_artifact, tmp_path):
    for label in range(SMALL_NUM_CLASSES):  # one folder per output of the 10-class model
        save_good(tmp_path / "data" / str(label), 2)
    (tmp_path / "data" / "0" / "zero.png").write_bytes(b"")
    truncated_png(tmp_path / "data" / "1" / "truncated.png")
    result = cli("eval", small_artifact, "--data", tmp_path / "data", "--targets", "onnx", "--json")
    assert "Traceback" not in result.err and result.code == 0, result.err
    data = result.json()["data"]
    assert data["images"] == 20 and data["skipped_files"] == 2
    assert "truncated.png" in result.err and "zero.png" in result.err
    assert "(20 labelled images, 2 unreadable files skipped)" in result.err  # the summary says so too


def test_eval_refuses_data_whose_classes_the_model_cannot_match(cli, small_artifact, tmp_path):
    """A model without class names and a data set with another class count: every accuracy would be noise."""
    for label in range(3):
        save_good(tmp_path / "data" / str(label), 2)
    result = cli("eval", small_artifact, "--data", tmp_path / "data", "--targets", "onnx")
    assert result.code == 1 and "Traceback" not in result.err
    assert "has 3 classes" in result.err and "10 outputs without class names" in result.err


def test_damaged_calibration_caches_are_cache_misses(cli, small_artifact, tmp_path):
    from mfdeploy.calibration.stats import CalibrationStats

    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    assert CalibrationStats.load(tmp_path / "empty.npz", "k") is None
    assert CalibrationStats.load(tmp_path / "broken.npz", "k") is None
    index = small_artifact / "calibration" / "data-index.json"
    index.parent.mkdir(exist_ok=True)
    index.write_bytes(b'{"\xff": [1]}')
    result = cli("calibrate", small_artifact, "--calib-size", "8", "--precision", "int8", "--no-latency", "--json")
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert result.json()["data"]["images"] == 8
