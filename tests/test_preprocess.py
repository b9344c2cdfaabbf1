"""Shared preprocessing: every image mode Pillow reads becomes the same normalised RGB tensor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mfdeploy.errors import UserError
from mfdeploy.images.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, check_imgsz, load_image


def test_default_is_resize_then_center_crop():
    pre = Preprocessing.for_size(224)
    assert (pre.resize, pre.imgsz) == (256, 224)
    # A wide image with a distinct left, centre and right: the center crop keeps only the centre.
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, :100] = (255, 0, 0)
    image[:, 100:200] = (0, 255, 0)
    image[:, 200:] = (0, 0, 255)
    x = pre(Image.fromarray(image))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    green = (1.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    np.testing.assert_allclose(x[1, :, 112], green, rtol=1e-5)
    np.testing.assert_allclose(x[0, :, 112], (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], rtol=1e-5)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.new("RGB", (64, 48), (200, 120, 40))
    if mode == "I;16":
        image = Image.fromarray((np.full((48, 64), 30000)).astype(np.uint16))
    else:
        image = rgb.convert(mode)
    suffix = ".tiff" if mode in ("CMYK", "I;16") else ".png"
    image.save(tmp_path / f"img{suffix}")
    loaded = load_image(tmp_path / f"img{suffix}")
    assert loaded.mode == "RGB" and loaded.size == (64, 48)
    assert Preprocessing.for_size(32)(loaded).shape == (3, 32, 32)


def test_transparent_pixels_are_composited_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((3, 3)) == (255, 255, 255)


def test_corrupt_image_is_a_user_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "bad.jpg")


def test_round_trip_through_dict():
    pre = Preprocessing.for_size(160)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert pre.to_dict()["crop"] == 160


@pytest.mark.parametrize("bad", [0, 31, 100, 225])
def test_image_side_must_be_multiple_of_32(bad):
    with pytest.raises(UserError, match="multiple of 32"):
        check_imgsz(bad)


def test_builtin_photos_read_scikit_learns_files_without_importing_it():
    """The two scikit-learn photographs are read from its package folder (its import costs seconds in
    every process that verifies an export), pixel for pixel what load_sample_images returns."""
    import subprocess
    import sys

    code = (
        "import sys; from mfdeploy.images.samples import builtin_photos; photos = builtin_photos(); "
        "print([name for name, _ in photos if name.startswith('sklearn:')], 'sklearn' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["['sklearn:china.jpg',", "'sklearn:flower.jpg']", "False"]

    from sklearn.datasets import load_sample_images

    from mfdeploy.images.samples import builtin_photos

    ours = [np.asarray(image) for name, image in builtin_photos() if name.startswith("sklearn:")]
    theirs = load_sample_images().images
    assert len(ours) == len(theirs) == 2
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, reference)
