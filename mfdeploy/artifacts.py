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

from mfdeploy.commit import COMMITTING, FolderUpdate, folder_update, recover
from mfdeploy.errors import UserError
from mfdeploy.fileio import (
    atomic_path,
    check_writable_folder,
    describe_os_error,
    is_write_failure,
    make_shareable,
    remove_stale_siblings,
    sha256_file,
    temporary_prefix,
)
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.locking import artifact_lock

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

    def __init__(self, root: str | os.PathLike[str], manifest: dict[str, Any], staged: bool = False) -> None:
        self.root = Path(root)
        self.manifest = manifest
        # staged: the folder is an export's staging folder, swapped in whole later, so its updates need
        # neither the lock nor a commit of their own
        self.staged = staged

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "Artifact":
        root = Path(root)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise UserError(f"{root} is not an artifact folder; run `mfdeploy export` first")
        _finish_interrupted_update(root)
        if not path.is_file():
            raise UserError(f"{root} has no {MANIFEST_NAME}: it is not an mfdeploy artifact folder")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{path} has schema version {version!r}, this mfdeploy reads {SCHEMA_VERSION}; re-export the model"
            )
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
    def record_file(self, name: str, written_at: Path | None = None) -> dict[str, Any]:
        """Hash a file (or every file of a folder, e.g. an .mlpackage) into the manifest under ``name``;
        ``written_at`` is where it is now when that is not yet its place in the folder (a staged update)."""
        path = written_at or self.path(name)
        if path.is_dir():
            digest, size = _folder_digest(path)
            entry = {"sha256": digest, "bytes": size, "kind": "directory"}
        else:
            entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        self.manifest.setdefault("files", {})[name] = entry
        return entry

    def manifest_text(self) -> str:
        """The manifest as written to disk (stamped with the time of writing)."""
        self.manifest["updated"] = utc_now()
        return json.dumps(self.manifest, indent=2) + "\n"

    def save(self) -> None:
        """Write the manifest atomically."""
        text = self.manifest_text()
        with atomic_path(self.path(MANIFEST_NAME)) as tmp:
            tmp.write_text(text)

    @contextmanager
    def update(self, action: str) -> Iterator["ArtifactUpdate"]:
        """Change files of this artifact and its manifest as one unit, as its only writer.

        Files written at ``update.path(name)`` are hashed into the manifest and moved into place together
        with it when the block ends normally; an exception or an interruption leaves the artifact exactly
        as it was. A second command trying to change the artifact meanwhile is refused.
        """
        if self.staged:
            direct = ArtifactUpdate(self, None)
            yield direct
            direct.record()
            self.save()
            return
        with artifact_lock(self.root, action):
            recover(self.root)
            self.manifest = Artifact.open(self.root).manifest  # what the last writer left, not a stale copy
            with folder_update(self.root, last=MANIFEST_NAME) as staging:
                update = ArtifactUpdate(self, staging)
                yield update
                update.record()
                staging.path(MANIFEST_NAME).write_text(self.manifest_text())


class ArtifactUpdate:
    """Where one update writes its files: a staging folder, or the folder itself for a staged export."""

    def __init__(self, artifact: Artifact, staging: FolderUpdate | None) -> None:
        self.artifact = artifact
        self._staging = staging
        self._names: list[str] = []

    def path(self, name: str) -> Path:
        """Where to write ``name`` (relative to the artifact root) in this update."""
        if name not in self._names:
            self._names.append(name)
        if self._staging is None:
            target = self.artifact.path(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            return target
        return self._staging.path(name)

    def current(self, name: str) -> Path:
        """The newest version of ``name``: this update's when it wrote one, else the artifact's."""
        if name in self._names and self.path(name).exists():
            return self.path(name)
        return self.artifact.path(name)

    def record(self) -> None:
        """Hash every file this update wrote into the manifest."""
        for name in self._names:
            written = self.path(name)
            if written.exists():
                self.artifact.record_file(name, written)


def _finish_interrupted_update(root: Path) -> None:
    """Roll forward an update a killed command had committed, when no other command holds the artifact."""
    if not (root / COMMITTING).is_dir():
        return
    try:
        with artifact_lock(root, "recover"):
            recover(root)
    except UserError:
        pass  # a live writer holds it; its own commit finishes the job


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
    check_writable_folder(final.parent, f"--out {final.parent}")


@contextmanager
def staged_dir(final: Path, force: bool) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``final``, then swap it in whole, as its only writer.

    On any failure the temporary folder is removed and ``final`` is left as it was, so nothing that
    looks like a good artifact is ever left half-written. Staging folders of killed runs are removed.
    """
    check_output_dir(final, force)
    with artifact_lock(final, "export"):
        check_output_dir(final, force)  # again: another export may have finished while this one prepared
        try:
            remove_stale_siblings(final, STAGING_KINDS)
            tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(final.name, "partial"), dir=final.parent))
        except OSError as exc:
            raise UserError(describe_os_error(exc, final.parent)) from None
        try:
            try:
                yield tmp
            except OSError as exc:
                if not is_write_failure(exc):
                    raise
                raise UserError(describe_os_error(exc, final)) from None
            make_shareable(tmp)
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=temporary_prefix(final.name, "old"), dir=final.parent))
                os.replace(final, old / final.name)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


STAGING_KINDS = ("partial", "old")  # an export's staging folder, and the replaced folder on its way out
