"""The schema of what mfdeploy reads back from disk: an artifact's ``manifest.json`` and the metadata a
checkpoint carries (``mfdeploy train`` writes it, ``export --weights`` reads it).

Both are checked once, when read, against the rules the command line applies to the same values (image
sides a multiple of 32, positive bounded counts, unique labels, one label per class, one mean and std per
channel, a supported interpolation...), so that a damaged or hand-edited file is refused in one line that
names the file, the field and what to do, instead of failing later deep inside torch or numpy.

Plain Python checks: the documents are small and their rules compare fields with each other, which a
JSON Schema says poorly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, NoReturn

from mfdeploy.errors import UserError
from mfdeploy.images.preprocess import INTERPOLATIONS, MAX_IMGSZ, check_imgsz
from mfdeploy.option_values import MAX_BATCH, MAX_IN_CHANS, MAX_NUM_CLASSES, shown

MANIFEST_ACTION = "re-export the artifact with `mfdeploy export`"
CHECKPOINT_ACTION = "re-save the checkpoint (with `mfdeploy train`, or as a plain state_dict without metadata)"
CHANNEL_ORDERS = ("RGB",)  # images are always converted to RGB before normalisation
LAYOUTS = ("NCHW",)
MAX_RESIZE_FACTOR = 4  # resize at most 4x the crop: a crop_pct down to 0.25
MAX_LABEL_CHARS = 256
MAX_PATH_CHARS = 4096  # a data folder's path (PATH_MAX on Linux)
MAX_COUNT = 2**53  # bytes, parameters, multiply-adds: exact in a float, which JSON readers use
# sections later steps add; each is read as an object (with .get) when present
OPTIONAL_SECTIONS = ("onnx", "tensorrt", "coreml", "calibration", "verification", "versions", "timings_s")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# what `mfdeploy train` records of its data (``trained_on``): the data (builtin-digits or the ImageFolder's
# absolute path), its class count, its image count and, for a folder, a fingerprint of its file names and sizes
TRAINED_ON_KEYS = ("data", "num_classes", "images", "fingerprint")


class _Invalid(Exception):
    """One broken rule: the field (dotted path) and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


#: The Mobile-Former families (mfdeploy.model.families): a manifest or checkpoint names one of them.
MODEL_FAMILIES = ("seed", "official")


def _fail(field: str, value: Any, expected: str) -> NoReturn:
    raise _Invalid(field, f"is {shown(value)}, expected {expected}")


def _require(mapping: Mapping[str, Any], key: str, field: str) -> Any:
    if key not in mapping:
        raise _Invalid(field, "is missing")
    return mapping[key]


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(field, value, "an object")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(field, value, "a list")
    return value


def _int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(field, value, f"an integer from {low} to {high}")
    return value


def _number(value: Any, field: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, value, "a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number) or (positive and number <= 0):
        _fail(field, value, "a finite number above 0" if positive else "a finite number")
    return number


def _string(value: Any, field: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL_CHARS:
        _fail(field, value, "a non-empty name" if choices is None else f"one of {', '.join(choices)}")
    if choices is not None and value not in choices:
        _fail(field, value, f"one of {', '.join(choices)}")
    return value


def _imgsz(value: Any, field: str) -> int:
    try:
        return check_imgsz(value)
    except UserError:
        _fail(field, value, f"a multiple of 32 from 32 to {MAX_IMGSZ}")


def _numbers(value: Any, field: str, count: int, what: str, positive: bool = False) -> list[float]:
    values = _list(value, field)
    if len(values) != count:
        raise _Invalid(field, f"holds {len(values)} numbers, expected {count} ({what})")
    return [_number(v, f"{field}[{i}]", positive) for i, v in enumerate(values)]


def _preprocessing(data: Any, field: str) -> int:
    """Check a serialised :class:`Preprocessing` (every key ``from_dict`` reads); returns its imgsz."""
    data = _object(data, field)
    imgsz = _imgsz(_require(data, "imgsz", f"{field}.imgsz"), f"{field}.imgsz")
    _int(_require(data, "resize", f"{field}.resize"), f"{field}.resize", imgsz, MAX_RESIZE_FACTOR * imgsz)
    if "crop" in data and data["crop"] != imgsz:
        _fail(f"{field}.crop", data["crop"], f"{imgsz}, the same as imgsz")
    order = _string(data.get("channel_order", "RGB"), f"{field}.channel_order", CHANNEL_ORDERS)
    what = f"one per {order} channel"
    if "mean" in data:
        _numbers(data["mean"], f"{field}.mean", len(order), what)
    if "std" in data:
        _numbers(data["std"], f"{field}.std", len(order), what, positive=True)
    _string(data.get("interpolation", "bilinear"), f"{field}.interpolation", INTERPOLATIONS)
    _string(data.get("layout", "NCHW"), f"{field}.layout", LAYOUTS)
    if "value_range" in data:
        low, high = _numbers(data["value_range"], f"{field}.value_range", 2, "low and high")
        if not low < high:
            _fail(f"{field}.value_range", data["value_range"], "[low, high] with low below high")
    return imgsz


def _classes(value: Any, field: str, num_classes: int | None) -> None:
    """Class names: null, or one unique non-empty name per class."""
    if value is None:
        return
    names = _list(value, field)
    for i, name in enumerate(names):
        _string(name, f"{field}[{i}]")
    if num_classes is not None and len(names) != num_classes:
        raise _Invalid(field, f"holds {len(names)} names for {num_classes} classes; give one name per class")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _Invalid(field, f"names {shown(name)} more than once; class names must be unique")
        seen.add(name)


def _data_name(value: Any, field: str) -> str:
    """builtin-digits or a folder's path: a printable string (no newline or escape to forge a report line)."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_PATH_CHARS or not value.isprintable():
        _fail(field, value, f"builtin-digits or the path of an ImageFolder (printable, at most {MAX_PATH_CHARS} chars)")
    return value


def _trained_on(value: Any, field: str) -> None:
    """The record of the data a model was trained on: an object (see TRAINED_ON_KEYS), or the plain data
    string an older `mfdeploy train` wrote; keys not in TRAINED_ON_KEYS are never read."""
    if isinstance(value, str):
        _data_name(value, field)
        return
    record = _object(value, field)
    _data_name(_require(record, "data", f"{field}.data"), f"{field}.data")
    if "num_classes" in record:
        _int(record["num_classes"], f"{field}.num_classes", 1, MAX_NUM_CLASSES)
    if "images" in record:
        _int(record["images"], f"{field}.images", 0, MAX_COUNT)
    fingerprint = record.get("fingerprint")
    if "fingerprint" in record and not (isinstance(fingerprint, str) and _SHA256.fullmatch(fingerprint)):
        _fail(f"{field}.fingerprint", fingerprint, "64 lowercase hex digits")


def trained_on_record(value: Any) -> dict[str, Any] | None:
    """A validated ``trained_on`` value as the object form (only TRAINED_ON_KEYS), or None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"data": value}
    return {key: value[key] for key in TRAINED_ON_KEYS if key in value}


def _tensor_spec(value: Any, field: str, rank: int) -> list[Any]:
    """One entry of ``inputs``/``outputs``: a name and a shape [batch, *dims] of ``rank`` axes, the batch an
    int or an axis name, every other axis a positive int; returns the shape."""
    spec = _object(value, field)
    _string(_require(spec, "name", f"{field}.name"), f"{field}.name")
    dims = _list(_require(spec, "shape", f"{field}.shape"), f"{field}.shape")
    if len(dims) != rank:
        raise _Invalid(f"{field}.shape", f"has {len(dims)} axes, expected {rank}")
    batch = dims[0]
    if not (isinstance(batch, str) and batch.strip() and len(batch) <= MAX_LABEL_CHARS):
        _int(batch, f"{field}.shape[0]", 1, MAX_BATCH)
    for i, dim in enumerate(dims[1:], 1):
        _int(dim, f"{field}.shape[{i}]", 1, MAX_NUM_CLASSES)
    return dims


def _first_spec(manifest: dict[str, Any], key: str, rank: int) -> list[Any]:
    specs = _list(_require(manifest, key, key), key)
    if not specs:
        raise _Invalid(key, "is empty; expected one tensor")
    return _tensor_spec(specs[0], f"{key}[0]", rank)


def _file_name(name: str) -> None:
    """A file the manifest lists lives inside the artifact folder: relative, no '..', no backslash."""
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or "\\" in name or ".." in parts or "\x00" in name:
        raise _Invalid("files", f"names {shown(name)}, which is not a file inside the artifact folder")


def _files(value: Any) -> None:
    files = _object(value, "files")
    for name, entry in files.items():
        _file_name(name)
        field = f"files[{shown(name)}]"
        entry = _object(entry, field)
        digest = _require(entry, "sha256", f"{field}.sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            _fail(f"{field}.sha256", digest, "64 lowercase hex digits")
        _int(_require(entry, "bytes", f"{field}.bytes"), f"{field}.bytes", 0, MAX_COUNT)
        if "kind" in entry:
            _string(entry["kind"], f"{field}.kind", ("directory",))


def _manifest(manifest: dict[str, Any], consistent: bool) -> None:
    model = _object(_require(manifest, "model", "model"), "model")
    _string(_require(model, "size", "model.size"), "model.size")
    if "family" in model:
        _string(model["family"], "model.family", MODEL_FAMILIES)
    num_classes = _int(_require(model, "num_classes", "model.num_classes"), "model.num_classes", 1, MAX_NUM_CLASSES)
    imgsz = _imgsz(_require(model, "imgsz", "model.imgsz"), "model.imgsz")
    in_chans = _int(model.get("in_chans", 3), "model.in_chans", 1, MAX_IN_CHANS)
    _classes(model.get("classes"), "model.classes", num_classes if consistent else None)
    if model.get("trained_on") is not None:
        _trained_on(model["trained_on"], "model.trained_on")
    for key in ("params", "madds"):  # bench divides by and reports these
        if model.get(key) is not None:
            _int(model[key], f"model.{key}", 0, MAX_COUNT)
    pre_imgsz = _preprocessing(_require(manifest, "preprocessing", "preprocessing"), "preprocessing")
    inputs = _first_spec(manifest, "inputs", 4)
    outputs = _first_spec(manifest, "outputs", 2)
    _files(_require(manifest, "files", "files"))
    for section in OPTIONAL_SECTIONS:
        if section in manifest:
            _object(manifest[section], section)
    if consistent:
        _agree("preprocessing.imgsz", pre_imgsz, imgsz, "model.imgsz")
        _agree("inputs[0].shape", inputs[1:], [in_chans, imgsz, imgsz], "[in_chans, imgsz, imgsz] of model")
        _agree("outputs[0].shape", outputs[1:], [num_classes], "[num_classes] of model")
        _agree("outputs[0].shape[0]", outputs[0], inputs[0], "the batch of inputs[0]")


def _agree(field: str, value: Any, expected: Any, source: str) -> None:
    if value != expected:
        _fail(field, value, f"{shown(expected)}, from {source}")


def validate_manifest(manifest: Any, path: Any, consistent: bool = True) -> None:
    """Refuse (UserError naming ``path`` and the field) a manifest whose values break the schema.

    ``consistent``: also require the fields to agree with each other (sizes, shapes, one name per class).
    An artifact skips that for a manifest its digest already shows was edited: `verify` reports such a
    manifest as changed, and every step refuses it before use; each value must still be readable.
    """
    try:
        _manifest(_object(manifest, "(top level)"), consistent)
    except _Invalid as exc:
        raise UserError(f"{path}: {exc.field} {exc.problem}; {MANIFEST_ACTION}") from None


def _metadata(metadata: dict[str, Any]) -> None:
    num_classes = None
    if "num_classes" in metadata:
        num_classes = _int(metadata["num_classes"], "num_classes", 1, MAX_NUM_CLASSES)
    if "size" in metadata:
        _string(metadata["size"], "size")
    if "family" in metadata:
        _string(metadata["family"], "family", MODEL_FAMILIES)
    if "in_chans" in metadata:
        _int(metadata["in_chans"], "in_chans", 1, MAX_IN_CHANS)
    imgsz = _imgsz(metadata["imgsz"], "imgsz") if "imgsz" in metadata else None
    _classes(metadata.get("classes"), "classes", num_classes)
    if metadata.get("trained_on") is not None:
        _trained_on(metadata["trained_on"], "trained_on")
    if "preprocessing" in metadata:
        trained = _preprocessing(metadata["preprocessing"], "preprocessing")
        if imgsz is not None and trained != imgsz:
            _fail("preprocessing.imgsz", trained, f"{imgsz}, the same as imgsz")


def validate_checkpoint_metadata(metadata: Mapping[str, Any], path: Any) -> None:
    """Refuse a checkpoint whose mfdeploy metadata (size, num_classes, in_chans, imgsz, classes,
    preprocessing, trained_on: each checked when present) breaks the schema; other keys are left alone."""
    try:
        _metadata(dict(metadata))
    except _Invalid as exc:
        raise UserError(f"{path}: metadata {exc.field} {exc.problem}; {CHECKPOINT_ACTION}") from None
