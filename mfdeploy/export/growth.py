"""Growing an artifact folder: what `export` does when ``<out>/mobileformer_<size>/`` already exists.

An artifact is a folder the user grows step by step (export, calibrate, add Core ML, add an engine), so a
second `export` into it is not a conflict by itself. It is one only when the folder holds *another* model
or a graph made with other settings: then everything in it derives from something this export would not
reproduce, and replacing it needs ``--force``. When the model and graph settings match, the export keeps
every file already there and adds what its target needs; ``--force`` then remakes only what this export
makes (the ONNX graph, and the stages of its ``--target``), never the rest.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdeploy.artifacts import (
    COREML_PACKAGE,
    MANIFEST_NAME,
    MANIFEST_VOLATILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    Artifact,
)
from mfdeploy.commit import COMMITTING
from mfdeploy.errors import UserError

# What an export does to its destination folder.
NEW = "new"  # nothing was there: the folder is made
GROW = "grow"  # the same model was there: its files are kept, the target's missing parts added
REMAKE = "remake"  # the same model, --force: the graph and the target's parts made again, the rest kept
REPLACE = "replace"  # another model, --force: the folder replaced (the user's own files kept)
UNCHANGED = "unchanged"  # the same model, and everything the target makes is there: nothing to do

# What the export itself writes: never carried over from the old folder, always made (or copied) anew.
EXPORT_FILES = (ONNX_FILE, WEIGHTS_FILE, MANIFEST_NAME)
# The manifest sections the ONNX export writes; every other section belongs to a later step's files.
EXPORT_SECTIONS = ("schema_version", "created", "model", "preprocessing", "inputs", "outputs", "onnx", "versions")
# What each export stage makes, so that a kept artifact can say whether a stage still has work to do.
STAGE_FILES = {"coreml": (COREML_PACKAGE,)}


@dataclass
class Existing:
    """The artifact already at the export's destination, and how it differs from what this export makes."""

    artifact: Artifact
    differences: list[str] = field(default_factory=list)

    @property
    def same_model(self) -> bool:
        return not self.differences


@dataclass
class Plan:
    """What one export does to its destination, decided before any work, and what it kept or dropped."""

    mode: str
    existing: Artifact | None = None
    differences: list[str] = field(default_factory=list)  # REPLACE: how the old model differs
    stages: tuple[str, ...] = ()  # the export stages to run
    kept_stages: tuple[str, ...] = ()  # GROW/UNCHANGED: stages whose files are already there
    carried: list[str] = field(default_factory=list)  # entries copied from the old folder
    dropped: list[str] = field(default_factory=list)  # REPLACE: files made from the old model, not kept
    previous: Path | None = None  # NEW: the destination, which --force may find holding files already

    def kept_names(self) -> list[str]:
        listed = self.existing.manifest.get("files", {}) if self.existing is not None else {}
        return [name for name in sorted(listed) if name not in self.dropped and name not in EXPORT_FILES]


def existing_artifact(final: Path, force: bool) -> Artifact | None:
    """The artifact at ``final`` when the folder holds one; None for no folder or one without a manifest
    (which the export's own output check then refuses, or replaces with --force).

    A manifest that cannot be read, or was edited by hand, cannot be grown from: merging into it would
    sign whatever it says. --force replaces such a folder as before.
    """
    if not (final / MANIFEST_NAME).is_file():
        return None
    try:
        artifact = Artifact.open(final)
        artifact.check_manifest()
    except UserError as exc:
        if force:
            return None
        raise UserError(
            f"{final} cannot be added to ({exc}); pass --force to replace it, or choose another --out"
        ) from None
    return artifact


def compare(artifact: Artifact, wanted: dict[str, Any]) -> Existing:
    """How the artifact's model and graph differ from ``wanted`` (see :func:`export_identity`), one phrase each."""
    have = identity_of(artifact)
    differences = [
        f"{key} {_show(have.get(key))} there, {_show(value)} asked"
        for key, value in wanted.items()
        if have.get(key) != value
    ]
    return Existing(artifact, differences)


def export_identity(
    family: Any,
    source: dict[str, Any],
    num_classes: Any,
    in_chans: Any,
    preprocessing: dict[str, Any],
    batch: Any,
    opset: Any,
    simplifier: Any,
) -> dict[str, Any]:
    """What decides the exported graph's content: the weights, the classes, the input, and the graph options."""
    return {
        "family": family,
        "weights": _weights_identity(source),
        "classes": num_classes,
        "channels": in_chans,
        "preprocessing": _preprocessing_identity(preprocessing),
        "batch": batch if batch is not None else "dynamic",
        "opset": opset,
        "simplifier": simplifier,
    }


def identity_of(artifact: Artifact) -> dict[str, Any]:
    """:func:`export_identity` of an artifact already written, from its manifest."""
    manifest = artifact.manifest
    graph = manifest.get("onnx", {})
    model = manifest.get("model", {})
    return export_identity(
        model.get("family", "seed"),  # written since the official family; every earlier artifact is seed
        model.get("source") or {},
        model.get("num_classes"),
        model.get("in_chans", 3),
        manifest.get("preprocessing") or {},
        graph.get("batch"),
        graph.get("opset"),
        graph.get("simplifier"),
    )


def _weights_identity(source: dict[str, Any]) -> str:
    if source.get("weights") == "random":
        return f"random (seed {source.get('seed')})"
    digest = str(source.get("sha256", "?"))
    return f"checkpoint sha256 {digest[:12]}" + (", EMA weights" if source.get("ema") is True else "")


def _preprocessing_identity(preprocessing: dict[str, Any]) -> str:
    keys = ("imgsz", "resize", "interpolation", "mean", "std")
    plain = json.loads(json.dumps(preprocessing))  # as the manifest reads back: lists, not tuples
    return ", ".join(f"{k} {plain.get(k)}" for k in keys if k in plain)


def _show(value: Any) -> str:
    return str(value) if not isinstance(value, str) or " " not in value else f"({value})"


def refuse_other_model(existing: Existing, final: Path) -> None:
    """Without --force, an artifact of another model or graph is never replaced: say what differs."""
    derived = [name for name in sorted(existing.artifact.manifest.get("files", {})) if name not in EXPORT_FILES]
    loses = f"; its {', '.join(derived)} would go with it" if derived else ""
    raise UserError(
        f"{final} holds another export ({'; '.join(existing.differences)}); pass --force to replace it{loses}, "
        "or choose another --out"
    )


def layout_names(folder: Path) -> list[str]:
    """The entries of ``folder`` that are artifact files by their names (what mfdeploy writes into one): with no
    readable manifest to vouch for them they are not kept; anything else in the folder is the user's."""
    from mfdeploy import artifacts

    known = {
        artifacts.COREML_PACKAGE,
        artifacts.ENGINE_SIDECAR,
        artifacts.TIMING_CACHE,
        artifacts.CALIBRATION_JSON,
        artifacts.CALIBRATION_MD,
        artifacts.CALIBRATION_DIR,
    }
    known |= {artifacts.precision_graph(p) for p in artifacts.CALIBRATED_PRECISIONS}
    known |= {artifacts.engine_plan(p) for p in artifacts.ENGINE_PRECISIONS}
    return sorted(entry.name for entry in folder.iterdir() if entry.name in known)


def carry_over(old_root: Path, new_root: Path, skip: tuple[str, ...]) -> list[str]:
    """Copy every entry of the old artifact folder, except ``skip`` and temporary names, into the staged one.

    Copies, not links: a stage that rewrites a carried file in the staging folder must not touch the old
    folder, which stays the artifact until the staged one is swapped in.
    """
    carried: list[str] = []
    for entry in sorted(old_root.iterdir()):
        name = entry.name
        if name in skip or name == COMMITTING or name.startswith(".mfdeploy") or ".partial-" in name:
            continue
        target = new_root / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True)
        else:
            shutil.copy2(entry, target, follow_symlinks=False)
        carried.append(name)
    return carried


def merged_manifest(old: dict[str, Any], new: dict[str, Any] | None) -> dict[str, Any]:
    """The old manifest with the export's own sections (and file entries) taken from ``new`` when the graph
    was made again; every other section (calibration, coreml, tensorrt, engines) is kept as it was."""
    merged = copy.deepcopy(old)
    for key in MANIFEST_VOLATILE:  # the update time and the content digest: the next save writes them
        merged.pop(key, None)
    if new is None:
        return merged
    for key in EXPORT_SECTIONS:
        if key in new:
            merged[key] = copy.deepcopy(new[key])
    merged.setdefault("verification", {})["onnx"] = copy.deepcopy(new["verification"]["onnx"])
    files = merged.setdefault("files", {})
    for name, entry in new.get("files", {}).items():
        files[name] = copy.deepcopy(entry)
    return merged


# export's Core ML flags -> how the manifest's `coreml` section records the same choice
COREML_RECORDED = {
    "--precision": ("precision", lambda o: o.precision),
    "--compress": ("compression.mode", lambda o: o.compress),
    "--batches": ("batches", lambda o: list(o.batches)),
    "--deployment-target": ("deployment_target", lambda o: o.deployment_target),
    "--image-input": ("input.kind", lambda o: "image" if o.image_input else "tensor"),
    "--labels": ("labels.file", lambda o: o.labels_file),
}
# export's flags that ask for a calibration (the trt stage then calibrates even when the graph is there)
CALIBRATION_FLAGS = (
    "--calib-data",
    "--calib-size",
    "--calib-batch",
    "--method",
    "--percentile",
    "--fp16-norm",
    "--int8-base",
)


def stage_needed(artifact: Artifact, stage: str, options: Any) -> bool:
    """Whether growing ``artifact`` needs ``stage`` to run; a stage whose files are there but were made with
    other options the user gave now is refused in one line (remaking it is what --force is for)."""
    from mfdeploy.artifacts import engine_plan
    from mfdeploy.export.tensorrt_build import GRAPH_FOR_PRECISION, EngineOptions

    if stage == "coreml":
        if not artifact.has(COREML_PACKAGE):
            return True
        section = artifact.manifest.get("coreml", {})
        wanted = options.stage_options.get("coreml")
        differences = []
        for flag, (path, value) in COREML_RECORDED.items():
            if flag in options.explicit and wanted is not None:
                recorded = _lookup(section, path)
                if recorded != value(wanted):
                    differences.append(f"{flag} {_show(value(wanted))} asked, {_show(recorded)} there")
        if differences:
            raise UserError(
                f"{artifact.root / COREML_PACKAGE} was made with other options ({'; '.join(differences)}); "
                "pass --force to remake it with these"
            )
        return False
    if stage == "trt":
        trt = options.stage_options.get("trt")
        precision = trt.precision if trt is not None else EngineOptions.precision
        graph = GRAPH_FOR_PRECISION[precision]
        asked_calibration = any(flag in options.explicit for flag in CALIBRATION_FLAGS)
        return asked_calibration or not (artifact.has(graph) and artifact.has(engine_plan(precision)))
    return True


def _lookup(section: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        section = section.get(key) if isinstance(section, dict) else None
    return section


def unchanged_note(final: Path, plan: Plan) -> str:
    """What an export with nothing to add says."""
    parts = [ONNX_FILE] + [name for stage in plan.kept_stages for name in STAGE_FILES.get(stage, ())]
    return (
        f"{final} already holds this export ({', '.join(parts)}, same weights and settings); nothing to add. "
        "`mfdeploy verify` re-checks it; --force makes it again"
    )


def plan_notes(final: Path, plan: Plan) -> list[str]:
    """One line on what happened to what was already in the folder."""
    kept = plan.kept_names()
    if plan.mode == GROW:
        added = ", ".join(plan.stages)
        held = f"kept {', '.join([ONNX_FILE, *kept])}" if kept else f"kept {ONNX_FILE}"
        return [f"added {added} to {final}: same weights and settings, so {held}"]
    if plan.mode == REMAKE:
        if plan.dropped:
            return [
                f"remade {final}: the new {ONNX_FILE} differs from the one {', '.join(plan.dropped)} were made from, "
                "so they were not kept; make them again (`mfdeploy calibrate`, `mfdeploy export --target ...`)"
            ]
        what = ", ".join(plan.stages) or "onnx"
        return [f"remade {ONNX_FILE} and the {what} target in {final}; kept {', '.join(kept) or 'nothing else'}"]
    if plan.mode == NEW and (plan.carried or plan.dropped):
        line = f"made {final} anew"
        if plan.dropped:
            line += f"; removed {', '.join(plan.dropped)}, which no readable manifest vouched for"
        if plan.carried:
            line += f"; kept what was already there: {', '.join(plan.carried)}"
        return [line]
    if plan.mode == REPLACE:
        line = f"replaced {final}, which held another export ({'; '.join(plan.differences)})"
        if plan.dropped:
            line += f"; removed with it, as made from that model: {', '.join(plan.dropped)}"
        if plan.carried:
            line += f"; kept your own files: {', '.join(plan.carried)}"
        return [line]
    return []
