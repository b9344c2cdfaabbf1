"""Real photographs that ship inside dependencies, for verification and built-in calibration data.

scikit-image and scikit-learn carry a few dozen real photographs and scans (an astronaut, cats, coffee,
a rocket, retina and microscopy images, the Hubble deep field...). ``builtin_images(n)`` expands them to
any count with deterministic crops and flips, so every run sees exactly the same images.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Photographs and scans that ship inside scikit-image's wheel (no download needed).
_SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "cat",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "camera",
    "moon",
    "coins",
    "clock",
    "brick",
    "grass",
    "gravel",
    "page",
    "text",
)


def _sklearn_photos() -> list[tuple[str, Image.Image]]:
    """scikit-learn's two sample photographs (china.jpg, flower.jpg), read from its package folder.

    What ``sklearn.datasets.load_sample_images`` returns, without importing scikit-learn: that import took
    1.5 to 2.5 s, in every process whose export verifies on the built-in photographs. Falls back to the
    function where the files are not plain files in a folder.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None:
        return []
    folders = [Path(location) / "datasets" / "images" for location in spec.submodule_search_locations or ()]
    files = sorted(path for folder in folders if folder.is_dir() for path in folder.glob("*.jpg"))
    if files:
        photos = []
        for path in files:
            with Image.open(path) as image:
                photos.append((f"sklearn:{path.name}", image.convert("RGB")))
        return photos
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    return [
        (f"sklearn:{name.rsplit('/', 1)[-1]}", Image.fromarray(pixels).convert("RGB"))
        for name, pixels in zip(bunch.filenames, bunch.images)
    ]


@lru_cache(maxsize=1)
def builtin_photos() -> tuple[tuple[str, Image.Image], ...]:
    """The distinct source photographs, as (name, RGB image)."""
    photos = _sklearn_photos()
    try:
        import skimage.data as skdata
    except ImportError:
        skdata = None
    if skdata is not None:
        for name in _SKIMAGE_PHOTOS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pixels = getattr(skdata, name)()
            except Exception:  # noqa: BLE001 - a sample missing from this scikit-image build is skipped
                continue
            if isinstance(pixels, tuple):  # stereo pairs: both views are photographs
                for side, view in zip(("left", "right"), pixels):
                    photos.append((f"skimage:{name}_{side}", Image.fromarray(view).convert("RGB")))
                continue
            photos.append((f"skimage:{name}", Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")))
    if not photos:
        raise RuntimeError("no built-in photographs found: install scikit-image or scikit-learn")
    return tuple(photos)


def _variant(image: Image.Image, index: int) -> Image.Image:
    """A deterministic crop (55-100% of the shorter side, at a position drawn from ``index``) and flip."""
    rng = np.random.default_rng(index)
    width, height = image.size
    side = int(min(width, height) * rng.uniform(0.55, 1.0))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = image.crop((left, top, left + side, top + side))
    return ImageOps.mirror(crop) if rng.random() < 0.5 else crop


def builtin_images(n: int) -> list[Image.Image]:
    """``n`` images: each source photograph once as it is, then deterministic crops and flips of them."""
    photos = [image for _, image in builtin_photos()]
    images = []
    for i in range(n):
        source = photos[i % len(photos)]
        images.append(source if i < len(photos) else _variant(source, i))
    return images
