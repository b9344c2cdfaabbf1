"""Find or make the artifact a command works on: the folder given, or ``<out>/mobileformer_<size>`` when it
exists, or a fresh export; then the precision graphs the requested targets need, calibrated on demand.

`calibrate`, `parity`, `eval` and `bench` all start here, so "which artifact, and is it complete enough for
these targets" is answered the same way everywhere, from the command line or from Python.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mfdeploy.artifacts import CALIBRATED_PRECISIONS, COREML_PACKAGE, MANIFEST_NAME, Artifact, artifact_dir_name
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
    ema: bool = False,
) -> Artifact:
    """The artifact folder given, or ``<out>/mobileformer_<size>`` when it exists (and no ``weights`` ask for
    a new one), else a fresh export of ``target`` there (``ema``: of the checkpoint's EMA weights)."""
    if artifact_dir is not None:
        if size is not None or weights is not None or ema:
            given = "--size" if size is not None else "--weights" if weights is not None else "--ema"
            raise UserError(f"pass either an artifact folder or {given}, not both")
        return Artifact.open(artifact_dir)
    from mfdeploy.model.weights import check_ema_has_weights

    check_ema_has_weights(weights, ema)
    root = Path(out) / artifact_dir_name(get_config(size or DEFAULT_SIZE).name)
    if weights is not None or not (root / MANIFEST_NAME).exists():
        _refuse_folder_in_the_way(_export_root(out, size, weights, ema), out, weights, ema)
        options = ExportOptions(
            size=size, weights=str(weights) if weights else None, ema=ema, target=target, out=Path(out)
        )
        root = export(options).artifact
    return Artifact.open(root)


def _export_root(out: str | Path, size: str | None, weights: str | Path | None, ema: bool = False) -> Path | None:
    """The folder the export made for this command would write; None when only the export can tell."""
    if weights is None or size is not None:
        return Path(out) / artifact_dir_name(get_config(size or DEFAULT_SIZE).name)
    from mfdeploy.model.families import identify_family, to_model_keys
    from mfdeploy.model.weights import read_checkpoint

    found = identify_family(to_model_keys(read_checkpoint(weights, ema=ema).state_dict))
    return Path(out) / artifact_dir_name(found[1]) if found else None


def _refuse_folder_in_the_way(
    root: Path | None, out: str | Path, weights: str | Path | None, ema: bool = False
) -> None:
    """calibrate, parity and bench export on demand but have no --force: a non-empty folder where that
    export would go is refused here with what to do, instead of the export's advice to pass --force."""
    if root is None or not root.is_dir() or not any(root.iterdir()):
        return
    if weights is not None:
        ema_flag = ["--ema"] if ema else []
        command = shlex.join(["mfdeploy", "export", "--weights", str(weights), *ema_flag, "--out", str(out), "--force"])
        raise UserError(
            f"{root} already exists and --weights asks for a new export there; replace it with `{command}` "
            "and then give the folder, or choose another --out"
        )
    raise UserError(
        f"{root} is not empty and has no {MANIFEST_NAME}, so it is not an artifact; remove it or choose another --out"
    )


def with_precision_graphs(artifact: Artifact, targets: Sequence[str]) -> Artifact:
    """Calibrate (default settings and data: the model's training data, else built-in photographs) the
    INT8/FP16 graphs that ``targets`` need and ``artifact`` lacks; the onnx-<precision> targets need them."""
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
    artifact = open_or_export(artifact_dir, size, out, target=target)
    if target == "coreml" and not artifact.has(COREML_PACKAGE):
        # an artifact made before (or with --target onnx) gains the package the targets ask for
        from mfdeploy.export.pipeline import grow_artifact

        grow_artifact(artifact, "coreml")
        artifact = Artifact.open(artifact.root)
    return with_precision_graphs(artifact, targets)


@contextmanager
def temporary_artifact(size: str, imgsz: int | None, targets: Sequence[str]) -> Iterator[Artifact]:
    """An artifact exported (and calibrated for ``targets``) into a temporary folder, removed afterwards:
    `bench --size` measures a model without leaving files behind."""
    with tempfile.TemporaryDirectory(prefix="mfdeploy-bench-export-") as tmp:
        exported = export(ExportOptions(size=size, imgsz=imgsz, out=Path(tmp)))
        yield with_precision_graphs(Artifact.open(exported.artifact), targets)
