"""Labelled image data: scikit-learn's handwritten digits built in, or a user's ImageFolder.

Both come with a fixed train/validation split (every 5th image of each class, in sorted order,
is validation) so that training, evaluation and calibration reports always see the same images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from mfdeploy.errors import UserError
from mfdeploy.images.files import scan_files, warn_skipped
from mfdeploy.images.preprocess import is_image_file, load_image, probe_image

BUILTIN_DIGITS = "builtin-digits"
VAL_EVERY = 5  # every 5th image of a class goes to validation: a 20% split, identical on every run
TRAIN, VALIDATION = "train", "validation"  # the two splits, by the names reports give them

ImageSource = Union[Image.Image, Path]


@dataclass
class LabelledSplit:
    sources: list[ImageSource]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.sources)

    def image(self, index: int) -> Image.Image:
        source = self.sources[index]
        return source if isinstance(source, Image.Image) else load_image(source)


@dataclass
class LabelledData:
    name: str
    classes: list[str]
    train: LabelledSplit
    val: LabelledSplit
    skipped: list[str] = field(default_factory=list)  # why each unreadable file was left out


def _split(sources: Sequence[ImageSource], labels: Sequence[int]) -> tuple[LabelledSplit, LabelledSplit]:
    labels_arr = np.asarray(labels, dtype=np.int64)
    val_mask = np.zeros(len(labels_arr), dtype=bool)
    for cls in np.unique(labels_arr):
        index = np.flatnonzero(labels_arr == cls)
        if len(index) >= 2:
            val_mask[index[VAL_EVERY - 1 :: VAL_EVERY] if len(index) >= VAL_EVERY else index[-1:]] = True
    train = LabelledSplit([s for s, v in zip(sources, val_mask) if not v], labels_arr[~val_mask])
    val = LabelledSplit([s for s, v in zip(sources, val_mask) if v], labels_arr[val_mask])
    return train, val


def load_digits_data() -> LabelledData:
    """scikit-learn's 1797 handwritten digits (8x8, 17 grey levels) as 8-bit RGB PIL images."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    sources: list[ImageSource] = [Image.fromarray(p, mode="L").convert("RGB") for p in pixels]
    train, val = _split(sources, bunch.target.tolist())
    return LabelledData(BUILTIN_DIGITS, [str(c) for c in bunch.target_names], train, val)


def _class_images(folder: Path, skipped: list[str]) -> list[Path]:
    """The images of one class folder whose headers read as a sane image; the others go to ``skipped``.

    Only headers are read (no pixels decoded), so this stays cheap on a large folder while an empty,
    truncated-header, non-image or oversized file, a FIFO or a broken link never reaches a split."""
    scan = scan_files(folder, is_image_file, "image")
    skipped.extend(scan.skipped)
    readable = []
    for path in scan.files:
        try:
            probe_image(path)
        except UserError as exc:
            skipped.append(str(exc))
            continue
        readable.append(path)
    return readable


def load_image_folder(root: str | os.PathLike[str]) -> LabelledData:
    """An ImageFolder: one sub-folder per class, images found recursively inside each; unreadable files
    are skipped and counted (``LabelledData.skipped``)."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist; pass an ImageFolder or {BUILTIN_DIGITS}")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a folder; pass an ImageFolder (one sub-folder per class)")
    skipped: list[str] = []
    try:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        per_class = {d.name: _class_images(d, skipped) for d in class_dirs}
    except OSError as exc:
        raise UserError(f"cannot read data folder {root}: {exc.strerror or exc}") from None
    warn_skipped(skipped, root)
    per_class = {name: files for name, files in per_class.items() if files}
    if not per_class:
        if skipped:
            raise UserError(
                f"data folder {root} has no readable images: {len(skipped)} file(s) skipped; first: {skipped[0]}"
            )
        raise UserError(f"data folder {root} has no class sub-folders with images (jpg, png, bmp, webp...)")
    if len(per_class) < 2:
        only = next(iter(per_class))
        raise UserError(
            f"data folder {root} has only one class ({only!r}); a classifier needs at least two class sub-folders"
        )
    classes = list(per_class)
    sources: list[ImageSource] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        sources.extend(per_class[name])
        labels.extend([index] * len(per_class[name]))
    train, val = _split(sources, labels)
    if len(val) == 0:
        raise UserError(f"data folder {root} is too small for a validation split; give each class at least 2 images")
    return LabelledData(str(root), classes, train, val, skipped)


def folder_fingerprint(root: str | os.PathLike[str]) -> str | None:
    """A cheap identity of an image folder: sha256 over the relative name and byte size of every image file
    under it (no image decoded, no time stamp, so a copy of the folder has the same one); None if unreadable."""
    root = Path(root)
    digest = hashlib.sha256()
    try:
        for path in scan_files(root, is_image_file, "image").files:
            digest.update(os.fsencode(path.relative_to(root).as_posix()) + f"|{path.stat().st_size}\n".encode())
    except (OSError, UserError):
        return None
    return digest.hexdigest()


def training_record(data: LabelledData) -> dict[str, object]:
    """What `mfdeploy train` writes into a checkpoint as ``trained_on``: builtin-digits, or the folder's
    absolute path (so another working folder finds it) with its fingerprint; class and image counts."""
    record: dict[str, object] = {"data": data.name}
    if data.name != BUILTIN_DIGITS:
        record["data"] = str(Path(data.name).absolute())
    record.update(num_classes=len(data.classes), images=len(data.train) + len(data.val))
    if data.name != BUILTIN_DIGITS:
        fingerprint = folder_fingerprint(data.name)
        if fingerprint is not None:
            record["fingerprint"] = fingerprint
    return record


def load_labelled(spec: str) -> LabelledData:
    """``builtin-digits`` or the path of an ImageFolder."""
    if spec == BUILTIN_DIGITS:
        return load_digits_data()
    return load_image_folder(spec)
