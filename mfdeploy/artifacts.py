"""The artifact folder and its manifest: what every later step (calibration, engines, parity, benchmark)
reads to know what a model is, how to feed it and what has been verified about it.

Layout: ``<out>/mobileformer_<size>/`` holding ``manifest.json``, ``model.onnx``, ``weights.safetensors``
and, as later steps add them, precision graphs, engines and Core ML packages. The manifest records the
sha256 of every file, so a changed file is detected instead of trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfdeploy.errors import UserError
from mfdeploy.fileio import atomic_path, make_shareable, sha256_file
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.manifest_schema import check_manifest

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

# The layout: every file name an artifact folder holds is spelled here and nowhere else.
ONNX_FILE = "model.onnx"  # the verified FP32 graph (also TensorRT's FP32 source)
WEIGHTS_FILE = "weights.safetensors"  # the exact weights the graph was exported from
COREML_PACKAGE = "model.mlpackage"
ENGINE_SIDECAR = "engine.json"  # what each TensorRT plan was built with and for
TIMING_CACHE = "timing.cache"  # TensorRT's timing cache, reused by every build of this artifact
CALIBRATION_JSON = "calibration.json"
CALIBRATION_MD = "calibration.md"
CALIBRATION_DIR = "calibration"  # cached statistics and the data index
CALIBRATED_PRECISIONS = ("int8", "fp16")  # the graphs `mfdeploy calibrate` writes
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")  # the graphs a TensorRT engine can be built from


def artifact_dir_name(size: str) -> str:
    """The folder one model's artifact lives in, under --out."""
    return f"mobileformer_{size}"


def precision_graph(precision: str) -> str:
    """The ONNX graph of one precision: model.onnx for fp32, model.<precision>.onnx for the calibrated ones."""
    return ONNX_FILE if precision == "fp32" else f"model.{precision}.onnx"


def engine_plan(precision: str) -> str:
    """The TensorRT plan built from :func:`precision_graph` of the same precision."""
    return f"model.{precision}.plan"


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class Artifact:
    """An artifact folder and its parsed manifest."""

    def __init__(self, root: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        self.root = Path(root)
        self.manifest = manifest

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "Artifact":
        root = Path(root)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise UserError(f"{root} is not an artifact folder; run `mfdeploy export` first")
        if not path.is_file():
            raise UserError(f"{root} has no {MANIFEST_NAME}: it is not an mfdeploy artifact folder")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an over-long integer
            raise UserError(f"cannot read {path}: {exc}") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{path} has schema version {version!r}, this mfdeploy reads {SCHEMA_VERSION}; re-export the model"
            )
        check_manifest(manifest, path)
        return cls(root, manifest)

    # -- what the model is -----------------------------------------------------------------------
    @property
    def size(self) -> str:
        return self.manifest["model"]["size"]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["model"]["num_classes"])

    @property
    def imgsz(self) -> int:
        return int(self.manifest["model"]["imgsz"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    @property
    def in_chans(self) -> int:
        return int(self.manifest["model"].get("in_chans", 3))

    @property
    def static_batch(self) -> int | None:
        """The graph's fixed batch size, or None for a dynamic batch axis."""
        batch = self.manifest["inputs"][0]["shape"][0]
        return batch if isinstance(batch, int) else None

    def has(self, name: str) -> bool:
        """Whether the manifest lists file ``name`` (written and hashed by an mfdeploy command)."""
        return name in self.manifest.get("files", {})

    @property
    def calibrated_precisions(self) -> tuple[str, ...]:
        """The calibrated precision graphs (int8, fp16) this artifact holds."""
        return tuple(p for p in CALIBRATED_PRECISIONS if self.has(precision_graph(p)))

    @property
    def input_name(self) -> str:
        return self.manifest["inputs"][0]["name"]

    @property
    def output_name(self) -> str:
        return self.manifest["outputs"][0]["name"]

    def path(self, name: str) -> Path:
        return self.root / name

    def require(self, name: str, hint: str) -> Path:
        """The path of a file the manifest lists; a UserError (with ``hint``) if it is missing or changed."""
        path = self.path(name)
        entry = self.manifest.get("files", {}).get(name)
        if entry is None or not path.exists():
            raise UserError(f"{self.root} has no {name}; {hint}")
        digest = _folder_digest(path)[0] if path.is_dir() else sha256_file(path)
        if digest != entry["sha256"]:
            raise UserError(f"{path} changed since it was written (sha256 differs from the manifest); re-export it")
        return path

    # -- recording -------------------------------------------------------------------------------
    def record_file(self, name: str) -> dict[str, Any]:
        """Hash a file (or every file of a folder, e.g. an .mlpackage) into the manifest."""
        path = self.path(name)
        if path.is_dir():
            digest, size = _folder_digest(path)
            entry = {"sha256": digest, "bytes": size, "kind": "directory"}
        else:
            entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        self.manifest.setdefault("files", {})[name] = entry
        return entry

    def save(self) -> None:
        """Write the manifest atomically."""
        self.manifest["updated"] = utc_now()
        with atomic_path(self.path(MANIFEST_NAME)) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2) + "\n")


def _folder_digest(path: Path) -> tuple[str, int]:
    """(sha256 over every file's relative path and sha256, total bytes) of a folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    digest = {str(p.relative_to(path)): sha256_file(p) for p in files}
    return _hash_text(json.dumps(digest, sort_keys=True)), sum(p.stat().st_size for p in files)


def _hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def check_output_dir(final: Path, force: bool) -> None:
    """Refuse a non-empty output folder unless ``force``; fail early on an unwritable location."""
    if final.exists() and not final.is_dir():
        raise UserError(f"output path {final} exists and is not a folder; choose another --out")
    if final.is_dir() and any(final.iterdir()) and not force:
        raise UserError(f"output folder {final} is not empty; pass --force to replace it, or choose another --out")
    parent = final.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot create {final}: {probe} is a file, not a folder; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {parent}: permission denied; choose a writable --out")


@contextmanager
def staged_dir(final: Path, force: bool) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``final``, then swap it in whole.

    On any failure the temporary folder is removed and ``final`` is left as it was, so nothing that
    looks like a good artifact is ever left half-written.
    """
    check_output_dir(final, force)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    except OSError as exc:
        raise UserError(f"cannot write to {final.parent}: {exc.strerror or exc}; choose a writable --out") from None
    try:
        yield tmp
        make_shareable(tmp)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
