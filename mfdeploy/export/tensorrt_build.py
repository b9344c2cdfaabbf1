"""Build a TensorRT engine from a precision graph with TensorRT's Python API (10.x and 11.x).

Strongly typed networks only: every layer runs in the type the ONNX graph gives its tensors (FP16 from
model.fp16.onnx's casts, INT8 from model.int8.onnx's Q/DQ pairs), so neither the weak-typing builder
flags (FP16/INT8/OBEY_PRECISION_CONSTRAINTS) nor the INT8 calibrators are used: TensorRT 11 removed both.
The plan is written raw (no header), so `trtexec --loadEngine` and Polygraphy load it as it is.

This module cannot run on the project's CPU machines (no TensorRT wheel, no GPU); it is kept thin and
written against the documented API, and the GPU tests exercise it where the hardware exists.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfdeploy import console
from mfdeploy.artifacts import ENGINE_PRECISIONS, TIMING_CACHE, engine_plan, precision_graph, utc_now
from mfdeploy.errors import UserError
from mfdeploy.fileio import atomic_path, display_path, sha256_file
from mfdeploy.option_values import MAX_WORKSPACE_GIB, check_batch, check_positive
from mfdeploy.runtime.tensorrt_env import ENGINE_SIDECAR, host_info, read_sidecar

if TYPE_CHECKING:
    import tensorrt as trt  # annotations only: tests/test_tensorrt_api.py checks the names used on them

GRAPH_FOR_PRECISION = {p: precision_graph(p) for p in ENGINE_PRECISIONS}
PLAN_FOR_PRECISION = {p: engine_plan(p) for p in ENGINE_PRECISIONS}
EXIT_NO_TENSORRT = 3


@dataclass
class BatchProfile:
    min: int = 1
    opt: int = 8
    max: int = 32

    def check(self) -> "BatchProfile":
        if not 1 <= self.min <= self.opt <= self.max:
            raise UserError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")
        return self

    @classmethod
    def static(cls, batch: int) -> "BatchProfile":
        return cls(batch, batch, batch).check()


@dataclass
class EngineOptions:
    precision: str = "fp16"
    profile: BatchProfile | None = None  # None: a static graph's batch, or 1/8/32 for a dynamic one
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # default: <artifact>/timing.cache, reused by every build here


def engine_options(
    precision: str | None = None,
    batch: int | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gib: float | None = None,
    timing_cache: Path | None = None,
) -> EngineOptions:
    """EngineOptions from command-line values (None: not given, the field's default applies): a static
    ``batch`` or a min/opt/max range, never both."""
    defaults = EngineOptions()
    given = [v for v in (min_batch, opt_batch, max_batch) if v is not None]
    if batch is not None and given:
        raise UserError("pass either --batch N or --min-batch/--opt-batch/--max-batch, not both")
    batches = {"--batch": batch, "--min-batch": min_batch, "--opt-batch": opt_batch, "--max-batch": max_batch}
    for flag, value in batches.items():
        if value is not None:
            check_batch(value, flag)
    if workspace_gib is not None:
        check_positive(workspace_gib, "--workspace", MAX_WORKSPACE_GIB)
    profile = None
    if batch is not None:
        profile = BatchProfile.static(batch)
    elif given:
        low = min_batch or 1
        high = max_batch or max(given)
        profile = BatchProfile(low, opt_batch or high, high).check()
    return EngineOptions(
        precision=precision or defaults.precision,
        profile=profile,
        workspace_gib=defaults.workspace_gib if workspace_gib is None else workspace_gib,
        timing_cache=timing_cache,
    )


def build_command(artifact_root: Path, options: EngineOptions) -> str:
    """The command that builds this engine on a GPU host, run in the folder that holds the artifact folder.

    The artifact is named by its folder name only, so the command works wherever the folder is copied to
    (and records no path of the machine that exported it); :func:`gpu_host_instructions` says so.
    """
    parts = ["mfdeploy", "build-engine", shlex.quote(Path(artifact_root).name), "--precision", options.precision]
    if options.profile is not None:
        p = options.profile
        parts += ["--min-batch", str(p.min), "--opt-batch", str(p.opt), "--max-batch", str(p.max)]
    if options.workspace_gib != EngineOptions.workspace_gib:
        parts += ["--workspace", f"{options.workspace_gib:g}"]
    return " ".join(parts)


def trtexec_command(manifest: dict[str, Any], options: EngineOptions, folder: str = "") -> str:
    """The plain ``trtexec`` command that builds the same engine as :func:`build_command`, for a GPU host
    without mfdeploy, from what the artifact's ``manifest`` records (input name and shape, static or dynamic
    batch). Run in the folder that holds the artifact folder ``folder`` (or inside it when ``folder`` is "").

    Strongly typed (``--stronglyTyped``: required on TensorRT 10, the default and a no-op on 11): the
    precision is in the graph, so no ``--fp16``/``--int8`` (11 removed them). A dynamic batch gets one
    profile (``--minShapes/--optShapes/--maxShapes``, 1/8/32 unless the options give a range); a static
    graph needs none. Workspace in MiB, the artifact's timing cache, detailed profiling as build-engine
    sets, and ``--skipInference``: it builds, it does not benchmark.
    """
    graph, plan = GRAPH_FOR_PRECISION[options.precision], PLAN_FOR_PRECISION[options.precision]
    spec = manifest["inputs"][0]
    name, shape = spec["name"], list(spec["shape"])
    prefix = f"{folder}/" if folder else ""
    parts = ["trtexec", f"--onnx={prefix}{graph}", "--stronglyTyped"]
    if not isinstance(shape[0], int):  # a named (dynamic) batch axis
        profile = (options.profile or BatchProfile()).check()
        rest = "x".join(str(d) for d in shape[1:])
        for flag, batch in (("minShapes", profile.min), ("optShapes", profile.opt), ("maxShapes", profile.max)):
            parts.append(f"--{flag}={name}:{batch}x{rest}")
    parts += [
        f"--saveEngine={prefix}{plan}",
        f"--timingCacheFile={prefix}{TIMING_CACHE}",
        f"--memPoolSize=workspace:{options.workspace_gib * 1024:g}",
        "--profilingVerbosity=detailed",
        "--skipInference",
    ]
    return " ".join(shlex.quote(part) for part in parts)


def gpu_host_instructions(artifact_root: Path, manifest: dict[str, Any], options: EngineOptions) -> list[str]:
    """How to build this engine on a GPU host: copy the artifact folder there, then in the folder that holds
    it run build-engine, or trtexec where mfdeploy is not installed. The folder is named as this host's
    user sees it (relative to the current folder when inside it)."""
    folder = Path(artifact_root).name
    return [
        f"To build the engine on a GPU host with TensorRT 10 or 11, copy {display_path(artifact_root)} there, "
        "then run in the folder that holds it:",
        f"  {build_command(artifact_root, options)}",
        "or, without mfdeploy (an engine mfdeploy does not record in engine.json):",
        f"  {trtexec_command(manifest, options, folder)}",
    ]


def _profile_for(artifact, options: EngineOptions) -> BatchProfile:
    batch = artifact.static_batch
    if batch is not None:
        if options.profile is not None and (options.profile.min, options.profile.max) != (batch, batch):
            raise UserError(f"the graph has a static batch of {batch}; re-export with --dynamic-batch for a range")
        return BatchProfile.static(batch)
    return (options.profile or BatchProfile()).check()


def build_engine(artifact, options: EngineOptions) -> dict[str, Any]:
    """Parse, build and serialize one engine into the artifact; record it in engine.json and the manifest.

    The plan, engine.json and the manifest land together (or not at all), as the artifact's only writer.
    """
    with artifact.update("build-engine") as update:
        return _build_engine(artifact, options, update)


def _build_engine(artifact, options: EngineOptions, update) -> dict[str, Any]:
    import tensorrt as trt

    if options.precision not in GRAPH_FOR_PRECISION:
        raise UserError(f"unknown precision {options.precision!r}; choose one of {', '.join(GRAPH_FOR_PRECISION)}")
    graph_name = GRAPH_FOR_PRECISION[options.precision]
    graph = artifact.require(
        graph_name, f"make it with `mfdeploy calibrate {artifact.root} --precision {options.precision}`"
    )
    profile = _profile_for(artifact, options)
    started = time.perf_counter()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise UserError(
            f"TensorRT OnnxParser.parse_from_file could not parse {graph_name}: {errors or 'no error recorded'}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    tf32 = options.precision != "fp32"
    if not tf32:
        # TF32 rounds FP32 matmul/conv inputs to 10 mantissa bits on Ampere and newer: an "FP32" engine would
        # then differ from PyTorch's FP32 by ~1e-2, so FP32 engines are exact FP32, as their name says.
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = TimingCacheUse.open(config, options.timing_cache or artifact.path(TIMING_CACHE))

    image = network.get_input(0)
    _, channels, height, width = tuple(image.shape)
    optimization = builder.create_optimization_profile()
    optimization.set_shape(
        image.name,
        (profile.min, channels, height, width),
        (profile.opt, channels, height, width),
        (profile.max, channels, height, width),
    )
    if config.add_optimization_profile(optimization) < 0:
        raise UserError(
            f"TensorRT IBuilderConfig.add_optimization_profile refused batch {profile.min}/{profile.opt}/"
            f"{profile.max} for input {image.name!r}"
        )

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            f"TensorRT Builder.build_serialized_network returned None: the {options.precision} engine from "
            f"{graph_name} was not built (see TensorRT's log above)"
        )
    cache.save(config)
    plan_name = PLAN_FOR_PRECISION[options.precision]
    entry = {
        "file": plan_name,
        "precision": options.precision,
        **host_info(),
        "strongly_typed": True,
        "tf32": tf32,
        "profile": {"input": image.name, "min": profile.min, "opt": profile.opt, "max": profile.max},
        "workspace_gib": options.workspace_gib,
        "timing_cache": cache.recorded_path(artifact.root),
        "timing_cache_reused": cache.reused,
        **({"timing_cache_rejected": cache.rejected} if cache.rejected else {}),
        "build_seconds": round(time.perf_counter() - started, 2),
        "source_graph": graph_name,
        "source_sha256": sha256_file(graph),
        "created": utc_now(),
    }
    sidecar = read_sidecar(artifact.root)
    sidecar["engines"][options.precision] = entry
    # the plan and its engine.json land together: a plan without the entry that describes it cannot be left
    write_together(
        {
            update.path(plan_name): bytes(serialized),
            update.path(ENGINE_SIDECAR): (json.dumps(sidecar, indent=2) + "\n").encode(),
        }
    )
    artifact.manifest.setdefault("tensorrt", {}).setdefault("engines", {})[options.precision] = entry
    return entry


def write_together(files: dict[Path, bytes]) -> None:
    """Write every file to a temporary name beside it, then rename them all into place: an error while
    writing leaves none of them changed (the temporaries are removed)."""
    temporaries: dict[Path, Path] = {}
    try:
        for target, data in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            temporaries[target] = tmp
            tmp.write_bytes(data)
        for target, tmp in temporaries.items():
            os.replace(tmp, target)
    except BaseException:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
        raise


class TimingCacheUse:
    """The timing cache of one build: loaded from ``path`` and offered to TensorRT, which may refuse it (a
    cache from another GPU or TensorRT version: ``set_timing_cache(..., ignore_mismatch=False)`` returns
    False); then the build uses a fresh cache and says so, never failing for it. ``reused`` means TensorRT
    accepted a non-empty cache. After the build the cache TensorRT filled is combined with whatever the
    file holds by then (another build may have added to it) and written back atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.loaded = b""
        self.reused = False
        self.rejected: str | None = None
        self.active = False

    @classmethod
    def open(cls, config: trt.IBuilderConfig, path: Path) -> "TimingCacheUse":
        use = cls(path)
        use.loaded = use.path.read_bytes() if use.path.is_file() else b""
        cache = config.create_timing_cache(use.loaded)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            use.reused, use.active = bool(use.loaded), True
            return use
        use.rejected = (
            f"TensorRT rejected the timing cache {display_path(use.path)} (made on another GPU or TensorRT "
            "version, or damaged); this build uses a fresh one, which replaces it"
        )
        console.warn(use.rejected)
        use.loaded = b""
        fresh = config.create_timing_cache(b"")
        use.active = fresh is not None and bool(config.set_timing_cache(fresh, ignore_mismatch=False))
        if not use.active:
            console.warn("TensorRT refused an empty timing cache too; building without one")
        return use

    def save(self, config: trt.IBuilderConfig) -> None:
        if not self.active:
            return
        built = config.get_timing_cache()
        if built is None:
            console.warn(f"TensorRT IBuilderConfig.get_timing_cache returned None; {self.path.name} not updated")
            return
        on_disk = self.path.read_bytes() if self.path.is_file() else b""
        if on_disk and on_disk != self.loaded:  # another build wrote it meanwhile: keep its entries too
            other = config.create_timing_cache(on_disk)
            if other is None or not built.combine(other, ignore_mismatch=False):
                console.warn(f"could not combine {display_path(self.path)} with this build's timing cache")
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_bytes(bytes(built.serialize()))
        except UserError as exc:  # a cache that cannot be written costs time next build, not this engine
            console.warn(f"timing cache not saved: {exc.message}")

    def recorded_path(self, artifact_root: Path) -> str:
        """The cache as engine.json records it: relative to the artifact when inside it (an export builds in
        a staging folder that is renamed afterwards), else the path given."""
        try:
            return self.path.resolve().relative_to(Path(artifact_root).resolve()).as_posix()
        except ValueError:
            return str(self.path)
