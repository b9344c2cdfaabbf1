"""Unlabelled image sets (calibration data, parity inputs): a folder of images, a preprocessed .npy/.npz
array, built-in photographs, or the built-in digits (one split: calibration takes the training images,
parity the validation images `mfdeploy train` held out).

Every source ends as one float32 NCHW array preprocessed the way the artifact's manifest says, plus a
sha256 of that array, so a result names exactly the data it was computed on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfdeploy.console import progress, warn
from mfdeploy.errors import UserError
from mfdeploy.images.arrays import read_array_header, read_leading
from mfdeploy.images.datasets import BUILTIN_DIGITS, TRAIN, VALIDATION, load_digits_data
from mfdeploy.images.files import scan_files, warn_skipped
from mfdeploy.images.preprocess import IMAGE_EXTENSIONS, Preprocessing, is_image_file, load_image
from mfdeploy.images.samples import builtin_images

BUILTIN = "builtin"
BUILTIN_SETS = (BUILTIN, BUILTIN_DIGITS)  # the data names that are not paths
DATA_CHOICES = f"pass a folder of images, a .npy/.npz, {BUILTIN} or {BUILTIN_DIGITS}"
MIN_IMAGES = 8


@dataclass
class ImageSet:
    images: np.ndarray  # float32 [N, C, H, W], preprocessed
    source: str  # "builtin", "builtin-digits", a folder or an array file
    sha256: str  # of the preprocessed array (shape and bytes)
    skipped: list[str] = field(default_factory=list)  # why each unreadable file was left out
    split: str | None = None  # builtin-digits: which split ("train" or "validation")

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "images": len(self),
            "shape": list(self.images.shape),
            "sha256": self.sha256,
            "skipped_files": len(self.skipped),
            **({"split": self.split} if self.split else {}),
        }


def array_sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256(str((array.shape, str(array.dtype))).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def to_channels(images: np.ndarray, in_chans: int) -> np.ndarray:
    """Preprocessed RGB images [N, 3, H, W] for a model with ``in_chans`` input channels: unchanged for 3,
    else the mean of the three channels, repeated ``in_chans`` times."""
    if in_chans == 3:
        return images
    return np.repeat(images.mean(axis=1, keepdims=True), in_chans, axis=1)


def _evenly_spaced(items: list, count: int) -> list:
    """``count`` items spread over the whole (sorted) list, so a subset still covers every folder."""
    if len(items) <= count:
        return items
    index = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in index]


def _from_folder(folder: Path, preprocessing: Preprocessing, num_images: int, in_chans: int) -> ImageSet:
    scan = scan_files(folder, is_image_file, "image")
    files, skipped = scan.files, list(scan.skipped)
    if not files:
        if skipped:
            raise UserError(
                f"image folder {folder} has no readable images: {len(skipped)} file(s) skipped; first: {skipped[0]}"
            )
        raise UserError(f"image folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
    if len(files) < num_images:
        warn(
            f"{num_images} images were asked for, more than the {len(files)} images in {folder}: using all "
            f"{len(files)} (only builtin data is expanded with crops and flips)"
        )
    chosen = _evenly_spaced(files, num_images)
    # an unreadable file among the chosen is replaced by one of the others, so a bad file costs a skip,
    # not an image, while the folder has readable images to spare
    taken = set(chosen)
    candidates = chosen + [f for f in files if f not in taken]
    wanted = min(num_images, len(files))
    arrays = []
    with progress() as bar:
        task = bar.add_task("load images", total=wanted, status="")
        for path in candidates:
            if len(arrays) == wanted:
                break
            try:
                arrays.append(preprocessing(load_image(path)))
            except UserError as exc:
                skipped.append(str(exc))
                continue
            bar.update(task, advance=1)
    warn_skipped(skipped, folder)
    if len(arrays) < MIN_IMAGES:
        left_out = f" ({len(skipped)} unreadable file(s) skipped; first: {skipped[0]})" if skipped else ""
        raise UserError(f"only {len(arrays)} readable image(s) in {folder}{left_out}; at least {MIN_IMAGES} are needed")
    images = to_channels(np.stack(arrays), in_chans)
    return ImageSet(images, str(folder), array_sha256(images), skipped)


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of preprocessed NCHW data to side x side (for arrays made at another size)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return torch.nn.functional.interpolate(tensor, size=(side, side), mode="bilinear", align_corners=False).numpy()


def _from_array(
    path: Path, preprocessing: Preprocessing, num_images: int, in_chans: int, resize: bool = False
) -> ImageSet:
    """The leading images of an .npy/.npz, checked from its header before any data is read."""
    header = read_array_header(path)
    shape = header.shape
    expected = (in_chans, preprocessing.imgsz, preprocessing.imgsz)
    resizing = resize and len(shape) == 4 and shape[1] == in_chans and min(shape[2:]) > 0 and shape[2:] != expected[1:]
    if not resizing and (len(shape) != 4 or shape[1:] != expected):
        raise UserError(
            f"{path.name} has shape {list(shape)}; arrays must be preprocessed "
            f"(N, {', '.join(map(str, expected))}) float32 for this model"
        )
    if header.dtype.newbyteorder("=") != np.float32:
        raise UserError(f"{path.name} is {header.dtype}; arrays must be float32 (array.astype('float32'))")
    if shape[0] < MIN_IMAGES:
        raise UserError(f"{path.name} has {shape[0]} images; at least {MIN_IMAGES} are needed")
    if shape[0] < num_images:
        warn(f"{num_images} images were asked for, more than the {shape[0]} images in {path.name}: using all of them")
    array = read_leading(header, min(shape[0], num_images))
    if resizing:
        warn(
            f"{path.name} holds {shape[2]}x{shape[3]} images; resizing them to the artifact's "
            f"{preprocessing.imgsz}x{preprocessing.imgsz}"
        )
        array = _resize(array, preprocessing.imgsz)
    if not np.isfinite(array).all():
        raise UserError(f"{path.name} contains NaN or Inf values")
    images = np.ascontiguousarray(array)
    return ImageSet(images, str(path), array_sha256(images))


def _from_builtin(preprocessing: Preprocessing, num_images: int, in_chans: int) -> ImageSet:
    with progress() as bar:
        task = bar.add_task("builtin images", total=num_images, status="")
        arrays = []
        for image in builtin_images(num_images):
            arrays.append(preprocessing(image))
            bar.update(task, advance=1)
    images = to_channels(np.stack(arrays), in_chans)
    return ImageSet(images, BUILTIN, array_sha256(images))


def _from_digits(preprocessing: Preprocessing, num_images: int, in_chans: int, split: str) -> ImageSet:
    """``num_images`` evenly spaced images of one split of the built-in digits (every class in each)."""
    data = load_digits_data()
    images_of = data.train if split == TRAIN else data.val
    if len(images_of) < num_images:
        warn(
            f"{num_images} images were asked for, more than the {len(images_of)} in the {split} split of "
            f"{BUILTIN_DIGITS}: using all {len(images_of)}"
        )
    index = _evenly_spaced(list(range(len(images_of))), num_images)
    with progress() as bar:
        task = bar.add_task(f"{BUILTIN_DIGITS} {split}", total=len(index), status="")
        arrays = []
        for i in index:
            arrays.append(preprocessing(images_of.image(i)))
            bar.update(task, advance=1)
    images = np.stack(arrays)
    if in_chans != 3:
        images = np.repeat(images.mean(axis=1, keepdims=True), in_chans, axis=1)
    return ImageSet(images, BUILTIN_DIGITS, array_sha256(images), split=split)


def fingerprint(
    spec: str | os.PathLike[str], preprocessing: Preprocessing, num_images: int, in_chans: int, split: str = TRAIN
) -> str | None:
    """A cheap identity of the data a spec would load (file names, sizes and times; or the builtin set's
    version), so a repeated calibration finds its cached statistics without decoding a single image.
    None when the spec cannot be fingerprinted (it is then loaded and hashed as usual).

    File names are hashed as the bytes the file system holds (os.fsencode), so a name that is not
    UTF-8 is part of the identity like any other."""
    from importlib import metadata

    parts: list[bytes] = [str(num_images).encode(), str(in_chans).encode()]
    parts.append(repr(sorted(preprocessing.to_dict().items())).encode())
    if str(spec) in BUILTIN_SETS:
        parts.append(b"builtin-v1" if str(spec) == BUILTIN else f"{BUILTIN_DIGITS}-{split}-v1".encode())
        for dist in ("scikit-image", "scikit-learn"):
            try:
                parts.append(f"{dist}={metadata.version(dist)}".encode())
            except metadata.PackageNotFoundError:
                parts.append(f"{dist}=none".encode())
    else:
        path = Path(spec)
        try:
            if path.is_dir():
                scan = scan_files(path, is_image_file, "image")
                files = scan.files
                parts += [b"skipped|" + os.fsencode(line) for line in scan.skipped]
            elif path.is_file():
                files = [path]
            else:
                return None
            for file in files:
                info = file.stat()
                parts.append(os.fsencode(file.resolve()) + f"|{info.st_size}|{info.st_mtime_ns}".encode())
        except (OSError, UserError):
            return None
    return hashlib.sha256(b"\n".join(parts)).hexdigest()


def load_image_set(
    spec: str | os.PathLike[str],
    preprocessing: Preprocessing,
    num_images: int = 512,
    in_chans: int = 3,
    resize_arrays: bool = False,
    split: str = TRAIN,
) -> ImageSet:
    """``builtin``, ``builtin-digits`` (its ``split``: train or validation), a folder of images (searched
    recursively) or a preprocessed .npy/.npz array.

    ``resize_arrays``: resize an array made at another image size (with a warning) instead of refusing it.
    """
    if num_images < 1:
        raise UserError(f"the number of images must be at least 1, got {num_images}")
    if str(spec) == BUILTIN:
        return _from_builtin(preprocessing, num_images, in_chans)
    if str(spec) == BUILTIN_DIGITS:
        if split not in (TRAIN, VALIDATION):
            raise ValueError(f"unknown split {split!r}")
        return _from_digits(preprocessing, num_images, in_chans, split)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"image data {path} does not exist; {DATA_CHOICES}")
    if path.is_dir():
        return _from_folder(path, preprocessing, num_images, in_chans)
    if path.suffix.lower() in (".npy", ".npz"):
        return _from_array(path, preprocessing, num_images, in_chans, resize_arrays)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise UserError(f"{path} is a single image; pass the folder that holds the calibration images")
    raise UserError(f"unsupported image data {path.name}: {DATA_CHOICES}")
