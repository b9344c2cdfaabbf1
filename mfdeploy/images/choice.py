"""Which data a command runs on when the user names none: the data the model was trained on.

`mfdeploy train` records its data in the checkpoint (``trained_on``) and `export` copies it into the
manifest. calibrate, parity and eval default to it: builtin-digits as it is, an ImageFolder while its
path still holds a folder. Without a record, or when the folder is gone, each command keeps its own
default (builtin photographs for calibrate and parity, builtin-digits for eval), with a one-line warning
saying why when a record could not be followed. Every report records the choice (:meth:`DataChoice.describe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfdeploy.console import warn_once
from mfdeploy.images.datasets import BUILTIN_DIGITS, folder_fingerprint
from mfdeploy.images.sets import BUILTIN

GIVEN = "given"  # the user named the data
TRAINED_ON = "trained_on"  # the model's training record (model.trained_on in the manifest)
DEFAULT = "default"  # the command's own default: no record, or one that could not be followed


@dataclass
class DataChoice:
    spec: str  # what to load: builtin, builtin-digits, a folder or an array file
    origin: str  # GIVEN, TRAINED_ON or DEFAULT
    note: str | None = None  # why the record was not followed, or what changed in it; None when nothing to say

    @property
    def from_training(self) -> bool:
        return self.origin == TRAINED_ON

    def describe(self) -> dict[str, Any]:
        """The fields every report adds to its ``data`` section."""
        return {"origin": self.origin, "note": self.note}


def choose_data(given: str | None, trained_on: dict[str, Any] | None, fallback: str) -> DataChoice:
    """``given`` when the user named data; else the model's training data (``trained_on``, the record an
    artifact's manifest holds) when it can still be read; else ``fallback``, with a warning naming why."""
    if given is not None:
        return DataChoice(str(given), GIVEN)
    if trained_on is None:
        return DataChoice(fallback, DEFAULT)
    data = trained_on["data"]
    if data == BUILTIN_DIGITS:
        return DataChoice(BUILTIN_DIGITS, TRAINED_ON)
    # absolute, so a recorded folder named like a built-in set ("builtin") is never read as that set
    folder = Path(data).absolute()
    try:
        is_dir, exists = folder.is_dir(), folder.exists()
    except OSError:  # e.g. a parent folder that may not be searched
        is_dir = exists = False
    if is_dir:
        note = None
        recorded = trained_on.get("fingerprint")
        if recorded is not None and folder_fingerprint(folder) != recorded:
            note = f"{data}, the model's training data, holds other files than at training time; using it anyway"
            warn_once(note, note)
        return DataChoice(str(folder), TRAINED_ON, note)
    why = "is not a folder" if exists else "no longer exists"
    note = f"the model was trained on {data}, which {why}; using {fallback} instead"
    warn_once(note, note)
    return DataChoice(fallback, DEFAULT, note)


def data_name(data: dict[str, Any]) -> str:
    """A report's data section named for people: its source, its split, and where the choice came from,
    e.g. "builtin-digits, train split (the model's training data)"."""
    name = str(data.get("source", BUILTIN))
    if data.get("split"):
        name += f", {data['split']} split"
    if data.get("origin") == TRAINED_ON:
        name += " (the model's training data)"
    if data.get("note"):
        name += f" (note: {data['note']})"
    return name
