"""Find or make the artifact a command works on: the folder given, or ``<out>/mobileformer_<size>`` when it
exists, or a fresh export; then the precision graphs the requested targets need, calibrated on demand.

`calibrate`, `parity`, `eval` and `bench` all start here, so "which artifact, and is it complete enough for
these targets" is answered the same way everywhere, from the command line or from Python.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mfdeploy.artifacts import CALIBRATED_PRECISIONS, MANIFEST_NAME, Artifact, artifact_dir_name
from mfdeploy.errors import UserError
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.model import DEFAULT_SIZE, get_config

DEFAULT_OUT = ExportOptions.out


def open_or_export(
    artifact_dir: str | Path | None = None,
    size: str | None = None,
    out: str | Path = DEFAULT_OUT,
    weights: str | Path | None = None,
    target: str = "onnx",
) -> Artifact:
    """The artifact folder given, or ``<out>/mobileformer_<size>`` when it exists (and no ``weights`` ask for
    a new one), else a fresh export of ``target`` there."""
    if artifact_dir is not None:
        if size is not None or weights is not None:
            given = "--size" if size is not None else "--weights"
            raise UserError(f"pass either an artifact folder or {given}, not both")
        return Artifact.open(artifact_dir)
    root = Path(out) / artifact_dir_name(get_config(size or DEFAULT_SIZE).name)
    if weights is not None or not (root / MANIFEST_NAME).exists():
        options = ExportOptions(size=size, weights=str(weights) if weights else None, target=target, out=Path(out))
        root = export(options).artifact
    return Artifact.open(root)


def with_precision_graphs(artifact: Artifact, targets: Sequence[str]) -> Artifact:
    """Calibrate (built-in data, default settings) the INT8/FP16 graphs that ``targets`` need and
    ``artifact`` lacks; the onnx-<precision> targets are the ones that need them."""
    wanted = tuple(p for p in CALIBRATED_PRECISIONS if f"onnx-{p}" in targets)
    missing = tuple(p for p in wanted if p not in artifact.calibrated_precisions)
    if missing:
        from mfdeploy.calibration.pipeline import CalibrationOptions, calibrate_artifact

        calibrate_artifact(artifact, CalibrationOptions(precisions=missing, measure_latency=False))
    return artifact


def artifact_for_targets(
    artifact_dir: str | Path | None, size: str | None, out: str | Path, targets: Sequence[str]
) -> Artifact:
    """The artifact a comparison runs on: exported (with ``size``) and calibrated first when it, or the
    precision graphs the targets need, are missing."""
    from mfdeploy.runtime.coreml_env import coremltools_installed

    # the Core ML package can only be made by an export; without coremltools the target is skipped
    target = "coreml" if "coreml" in targets and coremltools_installed() else "onnx"
    return with_precision_graphs(open_or_export(artifact_dir, size, out, target=target), targets)


@contextmanager
def temporary_artifact(size: str, imgsz: int | None, targets: Sequence[str]) -> Iterator[Artifact]:
    """An artifact exported (and calibrated for ``targets``) into a temporary folder, removed afterwards:
    `bench --size` measures a model without leaving files behind."""
    with tempfile.TemporaryDirectory(prefix="mfdeploy-bench-export-") as tmp:
        exported = export(ExportOptions(size=size, imgsz=imgsz, out=Path(tmp)))
        yield with_precision_graphs(Artifact.open(exported.artifact), targets)
