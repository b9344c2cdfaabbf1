"""Labelled images ready to score a model on: what `mfdeploy eval` and `mfdeploy bench --data` both read.

builtin-digits gives the digits validation split (the images `mfdeploy train` held out); an ImageFolder is
used whole. Folder class names must be classes the model has (the class names a checkpoint from
`mfdeploy train` carries into the manifest); a model without class names is only scored on data with
exactly as many classes as it has outputs, folder "3" meaning output 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mfdeploy.console import progress
from mfdeploy.errors import UserError
from mfdeploy.images.datasets import BUILTIN_DIGITS, VALIDATION, LabelledData, LabelledSplit, load_labelled
from mfdeploy.images.files import warn_skipped
from mfdeploy.images.preprocess import Preprocessing

if TYPE_CHECKING:
    from mfdeploy.artifacts import Artifact

ACCURACY_BATCH = 32  # images per inference call when scoring (eval's default --batch, bench --data's batch)


@dataclass
class LabelledImages:
    images: np.ndarray  # preprocessed, NCHW float32
    labels: np.ndarray  # the model's output index of each image's class
    source: str  # the data's name: builtin-digits or the folder
    skipped: int  # unreadable files left out
    split: str | None = None  # "validation" when only the held-out split is scored; None: every image

    def section(self) -> dict[str, object]:
        """The ``data`` section of a report on these images."""
        section: dict[str, object] = {
            "source": self.source,
            "images": int(len(self.labels)),
            "skipped_files": self.skipped,
        }
        if self.split is not None:
            section["split"] = self.split
        return section


def model_classes(data: LabelledData, spec: str, classes: list[str] | None, num_classes: int, model: str) -> np.ndarray:
    """The model output of each of ``data``'s classes, or a one-line refusal when they cannot be matched.

    ``classes`` are the model's class names (None: it has none), ``model`` how the message names it.
    """
    if classes is None:
        # without class names, folder "3" can only mean output 3, and that means something only for a data
        # set with exactly the model's classes: 10 digit folders against 1000 outputs scored 0.00% everywhere
        if len(data.classes) != num_classes or any(not c.isdigit() for c in data.classes):
            raise UserError(
                f"{spec} has {len(data.classes)} classes and {model} has {num_classes} outputs without class "
                "names, so its classes cannot be matched; evaluate on data with the model's classes, or a model "
                "trained with `mfdeploy train` on this data (its checkpoint carries the class names)"
            )
        classes = [str(i) for i in range(num_classes)]
    unknown = [c for c in data.classes if c not in classes]
    if unknown:
        raise UserError(
            f"{spec} has classes the model does not have: {', '.join(unknown[:5])}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            + f" (the model's classes: {', '.join(classes[:10])}{'...' if len(classes) > 10 else ''})"
        )
    return np.array([classes.index(c) for c in data.classes])


def artifact_classes(artifact: "Artifact", data: LabelledData, spec: str) -> np.ndarray:
    """:func:`model_classes` for the model of ``artifact``."""
    classes = artifact.manifest["model"].get("classes")
    return model_classes(data, spec, classes, artifact.num_classes, f"the model in {artifact.root}")


def _decoded(split: LabelledSplit, pre: Preprocessing, skipped: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The split's images preprocessed, and their labels; an image that fails to decode is left out and
    its reason appended to ``skipped`` (the folder scan only read headers)."""
    arrays, kept = [], []
    with progress() as bar:
        task = bar.add_task("load labelled images", total=len(split), status="")
        for i in range(len(split)):
            try:
                arrays.append(pre(split.image(i)))
                kept.append(i)
            except UserError as exc:
                skipped.append(str(exc))
            bar.update(task, advance=1)
    if not arrays:
        return np.zeros((0, 3, pre.imgsz, pre.imgsz), np.float32), split.labels[:0]
    return np.stack(arrays), split.labels[kept]


def labelled_images(
    artifact: "Artifact", spec: str, data: LabelledData | None = None, held_out_only: bool = False
) -> LabelledImages:
    """The images of ``spec`` (builtin-digits or an ImageFolder) preprocessed for ``artifact``, labelled
    with the model's outputs; refused in one line if the model's classes cannot be matched (before any
    image is decoded). ``data``: ``load_labelled(spec)`` when the caller has it already. builtin-digits, and
    a folder with ``held_out_only`` (the model's own training folder), give the split `train` held out."""
    data = load_labelled(spec) if data is None else data
    split, split_name = data.val, VALIDATION
    if spec != BUILTIN_DIGITS and not held_out_only:  # a user's evaluation folder: every image counts
        split, split_name = (
            LabelledSplit(data.train.sources + data.val.sources, np.concatenate([data.train.labels, data.val.labels])),
            None,
        )
    to_model = artifact_classes(artifact, data, spec)
    undecodable: list[str] = []
    images, labels = _decoded(split, artifact.preprocessing, undecodable)
    warn_skipped(undecodable, spec, "undecodable")
    skipped = len(data.skipped) + len(undecodable)
    if len(images) == 0:
        first = (data.skipped + undecodable)[0]
        raise UserError(f"no image in {spec} could be read: {skipped} file(s) skipped; first: {first}")
    return LabelledImages(images, to_model[labels], data.name, skipped, split_name)
