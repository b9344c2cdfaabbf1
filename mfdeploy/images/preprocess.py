"""Image loading and the one preprocessing every backend, calibration run and report shares.

An image goes: any file Pillow reads -> RGB -> resize (shorter side) -> center crop -> [0, 1] ->
(x - mean) / std -> float32 CHW. The parameters travel in the artifact manifest so that a model is
always fed the way it was exported.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mfdeploy.errors import UserError
from mfdeploy.images.files import open_regular
from mfdeploy.option_values import shown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# The largest image decoded: Pillow's own warning threshold (about 9459 x 9459, 268 MB as 8-bit RGB), far
# above any calibration or evaluation photo. Checked from the header before any pixel is decoded, so a
# few-hundred-byte file declaring 50000 x 50000 pixels is skipped instead of exhausting memory.
MAX_IMAGE_PIXELS = 89_478_485

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
INTERPOLATIONS = tuple(_RESAMPLE)
MAX_IMGSZ = 2048  # one 2048x2048 image is already 50 MB of float32; beyond it is a typo, not a model input


def check_imgsz(imgsz: int, flag: str = "--imgsz") -> int:
    """Mobile-Former downsamples by 32: the input side must be a multiple of 32, from 32 to MAX_IMGSZ."""
    integer = isinstance(imgsz, numbers.Integral) and not isinstance(imgsz, bool)
    if not integer or not 32 <= imgsz <= MAX_IMGSZ or imgsz % 32:
        raise UserError(
            f"{flag} (the image size) must be a multiple of 32 from 32 to {MAX_IMGSZ} (e.g. 160, 224, 256), "
            f"got {shown(imgsz)}"
        )
    return imgsz


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input. Serialised as-is into manifests and checkpoints."""

    imgsz: int
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    layout: str = field(default="NCHW")

    @classmethod
    def for_size(cls, imgsz: int, crop_pct: float = DEFAULT_CROP_PCT) -> "Preprocessing":
        """The ImageNet-style default: resize the shorter side to imgsz / crop_pct, center crop imgsz."""
        check_imgsz(imgsz)
        return cls(imgsz=imgsz, resize=int(round(imgsz / crop_pct)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(
            imgsz=int(data["imgsz"]),
            resize=int(data["resize"]),
            mean=tuple(float(v) for v in data.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in data.get("std", IMAGENET_STD)),
            interpolation=str(data.get("interpolation", "bilinear")),
            channel_order=str(data.get("channel_order", "RGB")),
            value_range=tuple(float(v) for v in data.get("value_range", (0.0, 1.0))),  # type: ignore[arg-type]
            layout=str(data.get("layout", "NCHW")),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop"] = self.imgsz
        return data

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 array [3, imgsz, imgsz]."""
        return self.normalize(self.pixels(image))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The geometry alone: RGB, resize, center crop -> uint8 [imgsz, imgsz, 3] (what a model with
        an image input, such as Core ML's, is fed)."""
        image = to_rgb(image)
        width, height = image.size
        scale = self.resize / min(width, height)
        new_size = (max(self.imgsz, round(width * scale)), max(self.imgsz, round(height * scale)))
        image = image.resize(new_size, _RESAMPLE[self.interpolation])
        left = (new_size[0] - self.imgsz) // 2
        top = (new_size[1] - self.imgsz) // 2
        image = image.crop((left, top, left + self.imgsz, top + self.imgsz))
        return np.asarray(image, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (or 0-255 float) [H, W, 3] -> float32 [3, H, W]: / 255, minus mean, divided by std."""
        array = np.asarray(pixels, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def batch(self, images: Iterable[Image.Image]) -> np.ndarray:
        """Several images -> float32 [N, 3, imgsz, imgsz]."""
        arrays = [self(image) for image in images]
        if not arrays:
            return np.zeros((0, 3, self.imgsz, self.imgsz), np.float32)
        return np.stack(arrays)


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, RGBA/LA (composited on white), CMYK, 16-bit... -> 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


class _Undecodable(Exception):
    """Why a file that opened is still not an image we decode (size limits); becomes a UserError."""


def _check_pixels(image: Image.Image) -> None:
    """Refuse, before decoding, an image that has no pixels or more than MAX_IMAGE_PIXELS."""
    width, height = image.size
    if width < 1 or height < 1:
        raise _Undecodable(f"it declares {width}x{height} pixels (no image)")
    if width * height > MAX_IMAGE_PIXELS:
        raise _Undecodable(
            f"it declares {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS} "
            "(a decompression bomb, or an image far larger than a model input: downscale it)"
        )


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; unturned when the EXIF block itself is malformed
    (the pixels are fine, only the orientation tag is unreadable)."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # Pillow's EXIF parser raises struct.error, TypeError, ... on malformed tags
        return image


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Undecodable):
        return str(exc)
    text = str(exc).replace("\n", " ").strip()
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too large to decode safely, a decompression bomb? ({text})"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can identify"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """The image at ``path`` with its header read and its size checked; any failure is a UserError.

    Pillow's format plugins raise nearly any exception type on malformed input (OSError, SyntaxError,
    struct.error, EOFError, ZeroDivisionError, IndexError, ...), so everything raised while parsing a
    file is treated as "this file is not a readable image"; the type name stays in the message."""
    with open_regular(path, "image") as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise UserError(f"cannot read image {path}: empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's notes on odd files ("Corrupt EXIF data"), not ours
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as handle:
                    _check_pixels(handle)
                    yield handle
        except UserError:
            raise
        except Exception as exc:  # a hostile file: see the docstring
            raise UserError(f"cannot read image {path}: {_reason(exc)}") from None


def probe_image(path: str | os.PathLike[str]) -> None:
    """Cheap check that ``path`` is an image of a sane size (header only, no pixels decoded); UserError if not."""
    with _opened(path):
        pass


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as RGB, honouring EXIF orientation. Raises UserError if it cannot be read:
    not a regular file, not an image, corrupt, truncated, or over MAX_IMAGE_PIXELS."""
    with _opened(path) as handle:
        handle.load()
        _check_pixels(handle)  # some formats only know their final size once loaded
        return to_rgb(_upright(handle).copy())


def is_image_file(path: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return str(path).lower().endswith(tuple(extensions))
