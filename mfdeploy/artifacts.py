"""The artifact folder and its manifest: what every later step (calibration, engines, parity, benchmark)
reads to know what a model is, how to feed it and what has been verified about it.

Layout: ``<out>/mobileformer_<size>/`` holding ``manifest.json``, ``model.onnx``, ``weights.safetensors``
and, as later steps add them, precision graphs, engines and Core ML packages. The manifest records the
sha256 of every file, so a changed file is detected instead of trusted.

The manifest protects itself too: ``manifest_sha256`` is a sha256 over its content, every section except
``updated`` (rewritten by every save) and the digest itself. It is written by :meth:`Artifact.save` and
checked before anything trusts the manifest (:meth:`Artifact.require`, :attr:`Artifact.preprocessing`,
`mfdeploy verify`), so a hand-edited preprocessing or file hash is refused, not used. It detects edits and
damage, it is no signature: whoever rewrites the digest as well is not stopped. A manifest without one
(written by an older mfdeploy) is still read; `verify` warns about it, and the next save adds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
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
from mfdeploy.manifest_schema import trained_on_record, validate_manifest

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
MANIFEST_DIGEST = "manifest_sha256"  # the key of the manifest's own content digest
MANIFEST_VOLATILE = ("updated", MANIFEST_DIGEST)  # the keys the content digest leaves out

# The layout: every file name an artifact folder holds is spelled here and nowhere else.
ONNX_FILE = "model.onnx"  # the verified FP32 graph (also TensorRT's FP32 source)
WEIGHTS_FILE = "weights.safetensors"  # the exact weights the graph was exported from
COREML_PACKAGE = "model.mlpackage"
ENGINE_SIDECAR = "engine.json"  # what each TensorRT plan was built with and for
TIMING_CACHE = "timing.cache"  # TensorRT's timing cache, reused by every build of this artifact
CALIBRATION_JSON = "calibration.json"
CALIBRATION_MD = "calibration.md"
CALIBRATION_DIR = "calibration"  # cached statistics, the data index, and each INT8 method's own files
CALIBRATED_PRECISIONS = ("int8", "fp16")  # the graphs `mfdeploy calibrate` writes
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # INT8 calibration methods, each with its own files
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")  # the graphs a TensorRT engine can be built from


def artifact_dir_name(size: str) -> str:
    """The folder one model's artifact lives in, under --out."""
    return f"mobileformer_{size}"


def precision_graph(precision: str) -> str:
    """The ONNX graph of one precision: model.onnx for fp32, model.<precision>.onnx for the calibrated ones."""
    return ONNX_FILE if precision == "fp32" else f"model.{precision}.onnx"


def method_file(method: str, name: str) -> str:
    """File ``name`` (the INT8 graph, calibration.json or calibration.md) of one INT8 calibration method:
    ``calibration/<method>/<name>``. Every method calibrated keeps its graph and report there, whichever
    of them model.int8.onnx (the graph TensorRT builds from) currently is."""
    return f"{CALIBRATION_DIR}/{method}/{name}"


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
        # judged as read, before any step adds to the manifest in memory: see check_manifest
        self.manifest_status = manifest_status(manifest)

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
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an over-long integer
            raise UserError(f"cannot read {path}: {exc}") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{path} has schema version {version!r}, this mfdeploy reads {SCHEMA_VERSION}; re-export the model"
            )
        validate_manifest(manifest, path, consistent=manifest_status(manifest) != CHANGED)
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
    def untrained(self) -> bool:
        """Whether the model has random weights (no checkpoint), as the export recorded: its agreement
        figures are noise, so reports say so and parity does not gate top-k agreement by default."""
        source = self.manifest["model"].get("source")
        return isinstance(source, dict) and source.get("weights") == "random"

    @property
    def trained_on(self) -> dict[str, Any] | None:
        """What the model was trained on, as its checkpoint recorded it (``data``: builtin-digits or an
        ImageFolder's path; see manifest_schema.TRAINED_ON_KEYS), or None when nothing was recorded."""
        return trained_on_record(self.manifest["model"].get("trained_on"))

    @property
    def preprocessing(self) -> Preprocessing:
        """How images are fed to the model; every later step's numbers depend on it, so it is checked first."""
        self.check_manifest()
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
        """The path of a file the manifest lists; a UserError (with ``hint``) if it is missing or changed.

        Every step that uses a file of the artifact comes through here, so the manifest's own digest is
        checked here too: a file's recorded hash is only worth what the manifest holding it is worth.
        """
        self.check_manifest()
        path = self.path(name)
        status = self.file_status(name)
        if status == MISSING:
            raise UserError(f"{self.root} has no {name}; {hint}")
        if status == CHANGED:
            raise UserError(
                f"{path} changed since it was written (sha256 differs from the manifest); "
                f"remake it with `{remake_command(self, name)}`"
            )
        return path

    def file_status(self, name: str) -> str:
        """OK, CHANGED or MISSING: file (or folder) ``name`` against the sha256 the manifest lists for it."""
        path = self.path(name)
        entry = self.manifest.get("files", {}).get(name)
        if not isinstance(entry, dict) or not path.exists():
            return MISSING
        digest = _folder_digest(path)[0] if path.is_dir() else sha256_file(path)
        return OK if digest == entry.get("sha256") else CHANGED

    def check_manifest(self) -> None:
        """Refuse a manifest whose content no longer matches its digest: every later step trusts its
        preprocessing, shapes and file hashes. A manifest without a digest (older mfdeploy) is accepted."""
        if self.manifest_status == CHANGED:
            raise UserError(
                f"{self.path(MANIFEST_NAME)} changed since it was written (its content no longer matches its "
                f"{MANIFEST_DIGEST}); do not edit it by hand: re-export with `{remake_command(self, MANIFEST_NAME)}`"
            )

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
        """The manifest as written to disk: stamped with the time of writing and a fresh content digest.

        Every write of the manifest goes through here. A manifest that was changed by hand is refused
        rather than written: writing it would sign the edit.
        """
        self.check_manifest()
        self.manifest["updated"] = utc_now()
        self.manifest.pop(MANIFEST_DIGEST, None)
        # digest what will be read back (tuples become lists, keys strings), not the objects in memory
        self.manifest[MANIFEST_DIGEST] = manifest_digest(json.loads(json.dumps(self.manifest)))
        return json.dumps(self.manifest, indent=2) + "\n"

    def save(self) -> None:
        """Write the manifest atomically, with a fresh digest over its content (see :meth:`manifest_text`)."""
        text = self.manifest_text()
        with atomic_path(self.path(MANIFEST_NAME)) as tmp:
            tmp.write_text(text)
        self.manifest_status = OK

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
            latest = Artifact.open(self.root)  # what the last writer left, not a stale copy
            self.manifest, self.manifest_status = latest.manifest, latest.manifest_status
            self.check_manifest()  # refused before any work, not after it
            with folder_update(self.root, last=MANIFEST_NAME) as staging:
                update = ArtifactUpdate(self, staging)
                yield update
                update.record()
                staging.path(MANIFEST_NAME).write_text(self.manifest_text())
            self.manifest_status = OK


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


OK, CHANGED, MISSING = "ok", "changed", "missing"
EXPORT_DEFAULT_IMGSZ, EXPORT_DEFAULT_CLASSES = 224, 1000  # what `export` makes without --imgsz/--num-classes
UNPROTECTED = "unprotected"  # a manifest without a content digest (written by an older mfdeploy)


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's content: every key but MANIFEST_VOLATILE, as canonical JSON (sorted keys)."""
    content = {key: value for key, value in manifest.items() if key not in MANIFEST_VOLATILE}
    return _hash_text(json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True))


def manifest_status(manifest: dict[str, Any]) -> str:
    """OK when the manifest matches its digest, CHANGED when not, UNPROTECTED when it has none."""
    recorded = manifest.get(MANIFEST_DIGEST) if isinstance(manifest, dict) else None
    if recorded is None:
        return UNPROTECTED
    try:
        return OK if manifest_digest(manifest) == recorded else CHANGED
    except (TypeError, ValueError):  # content JSON cannot hold (e.g. a key of another type) was not written by us
        return CHANGED


@dataclass(frozen=True)
class FileCheck:
    """One entry of `mfdeploy verify`'s file list: a file, its state, and the command that writes it again."""

    name: str
    status: str  # OK, CHANGED, MISSING; the manifest itself may also be UNPROTECTED
    remake: str

    @property
    def failed(self) -> bool:
        return self.status in (CHANGED, MISSING)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "remake": self.remake}


def check_files(artifact: Artifact) -> list[FileCheck]:
    """The manifest's own content, then every file it lists (folders by their folder digest), each with
    its state: what `mfdeploy verify` reports before it checks any numbers."""
    checks = [FileCheck(MANIFEST_NAME, artifact.manifest_status, remake_command(artifact, MANIFEST_NAME))]
    files = artifact.manifest.get("files")
    for name in files if isinstance(files, dict) else {}:
        checks.append(FileCheck(name, artifact.file_status(name), remake_command(artifact, name)))
    return checks


def remake_command(artifact: Artifact, name: str) -> str:
    """The command that writes file ``name`` of ``artifact`` again: for messages about a changed file."""
    root = shlex.quote(str(artifact.root))
    calibrated = {precision_graph(p) for p in CALIBRATED_PRECISIONS} | {CALIBRATION_JSON, CALIBRATION_MD}
    if name in calibrated or name.startswith(f"{CALIBRATION_DIR}/"):
        return calibrate_command(artifact, name)
    if name == COREML_PACKAGE:
        # a package the manifest does not list is added by a plain export (the folder grows); one it lists
        # but that changed or went missing is made again only with --force
        return export_command(artifact, "coreml", force=artifact.has(COREML_PACKAGE))
    for precision in ENGINE_PRECISIONS:
        if name == engine_plan(precision):
            return f"mfdeploy build-engine {root} --precision {precision}"
    if name in (ENGINE_SIDECAR, TIMING_CACHE):
        return f"mfdeploy build-engine {root}"
    return export_command(artifact)  # model.onnx, the weights, the manifest: the export itself


def _section(mapping: Any, key: str) -> dict[str, Any]:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, dict) else {}


def _data_args(entry: dict[str, Any]) -> list[str]:
    """--calib-data/--calib-size for the data a calibration entry of the manifest records (best effort)."""
    data = _section(entry, "data")
    args = []
    if isinstance(data.get("source"), str) and data["source"] != "builtin":
        args += ["--calib-data", data["source"]]
    if isinstance(data.get("images"), int) and not isinstance(data["images"], bool):
        args += ["--calib-size", str(data["images"])]
    return args


def _method_args(method: Any, entry: dict[str, Any]) -> list[str]:
    if method not in CALIBRATION_METHODS:
        return []
    percentile = entry.get("percentile")
    extra = ["--percentile", str(percentile)] if method == "percentile" and isinstance(percentile, (int, float)) else []
    if entry.get("base") == "fp32":  # the INT8 graph on its FP32 base; fp16 is the default
        extra += ["--int8-base", "fp32"]
    return ["--method", method, *extra]


def calibrate_command(artifact: Artifact, name: str) -> str:
    """The `mfdeploy calibrate` that writes calibration file ``name`` again, with the method, precision and
    data its manifest entry records: an INT8 method's own files under calibration/<method>/, model.int8.onnx
    (the method it currently is), model.fp16.onnx, the reports (the last run's method, --select and
    precisions); the statistics cache is remade by any run on the same data."""
    calibration = _section(artifact.manifest, "calibration")
    args = ["mfdeploy", "calibrate", str(artifact.root)]
    parts = PurePosixPath(name).parts
    if len(parts) == 3 and parts[0] == CALIBRATION_DIR and parts[1] in CALIBRATION_METHODS:
        entry = _section(_section(calibration, "methods"), parts[1])
        args += [*_method_args(parts[1], entry), "--precision", "int8", *_data_args(entry)]
    elif name == precision_graph("int8"):
        entry = _section(calibration, "int8")
        args += [*_method_args(entry.get("method"), entry), "--precision", "int8", *_data_args(entry)]
    elif name == precision_graph("fp16"):
        entry = _section(calibration, "fp16")
        norms = ["--fp16-norm"] if entry.get("norms_kept_fp32") is False else []
        args += ["--precision", "fp16", *norms, *_data_args(entry)]
    elif name in (CALIBRATION_JSON, CALIBRATION_MD):
        run = _section(calibration, "run")
        method = run.get("method")
        if method == "all":
            args += ["--method", "all"]
            if isinstance(run.get("select"), str):
                args += ["--select", run["select"]]
        else:
            args += _method_args(method, run)
        precisions = run.get("precisions")
        if isinstance(precisions, list) and precisions and set(precisions) < set(CALIBRATED_PRECISIONS):
            args += ["--precision", ",".join(p for p in precisions if isinstance(p, str))]
        args += _data_args(calibration)  # the data of the last run
    return shlex.join(args)


def export_command(artifact: Artifact, target: str | None = None, force: bool = True) -> str:
    """The `mfdeploy export` that writes this artifact folder again (``force``), or adds ``target`` to it,
    from what its manifest says: the same model and graph options, so the export grows the folder.

    Best effort: it repeats the model options the manifest records, not every stage option.
    """
    model = artifact.manifest.get("model") if isinstance(artifact.manifest.get("model"), dict) else {}
    source = model.get("source") if isinstance(model.get("source"), dict) else {}
    args = ["mfdeploy", "export"]
    if source.get("weights") not in (None, "random"):
        args += ["--weights", str(source["weights"])] + (["--ema"] if source.get("ema") is True else [])
    else:
        args += ["--size", str(model.get("size", "SIZE"))]
        if model.get("family") not in (None, "seed"):
            args += ["--arch", str(model["family"])]
        if model.get("imgsz") not in (None, EXPORT_DEFAULT_IMGSZ):
            args += ["--imgsz", str(model["imgsz"])]
        if model.get("num_classes") not in (None, EXPORT_DEFAULT_CLASSES):
            args += ["--num-classes", str(model["num_classes"])]
        if source.get("seed") not in (None, 0):
            args += ["--seed", str(source["seed"])]
    graph = artifact.manifest.get("onnx") if isinstance(artifact.manifest.get("onnx"), dict) else {}
    if isinstance(graph.get("batch"), int):
        args += ["--batch", str(graph["batch"])]
    if target is None and artifact.has(COREML_PACKAGE):
        target = "coreml"
    if target is not None:
        args += ["--target", target]
    args += ["--out", str(artifact.root.parent)] + (["--force"] if force else [])
    return shlex.join(args)


def _folder_digest(path: Path) -> tuple[str, int]:
    """(sha256 over every file's relative path and sha256, total bytes) of a folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    digest = {str(p.relative_to(path)): sha256_file(p) for p in files}
    return _hash_text(json.dumps(digest, sort_keys=True)), sum(p.stat().st_size for p in files)


def _hash_text(text: str) -> str:
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
