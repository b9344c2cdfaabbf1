"""The result file format of `mfdeploy bench` (schema_version 1), as a JSON Schema, and the one loader
that `mfdeploy report` trusts.

``docs/bench-result.schema.json`` is this schema written out (a test keeps the two identical). Readers
must ignore fields they do not know; a change that removes or redefines a field bumps SCHEMA_VERSION,
and files of another version are refused by name rather than misread. Optional fields added since
version 1 was first written, which older files simply lack: ``accuracy`` and ``settings.data``
(``bench --data``), ``settings.cuda_graphs`` and each result's ``cuda_graphs`` (``bench --cuda-graphs``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mfdeploy.errors import UserError

SCHEMA_VERSION = 1
RESULT_KIND = "mfdeploy-bench"
SCHEMA_ID = "https://mfdeploy.invalid/schemas/bench-result-1.schema.json"
_MAX_INT_DIGITS = 18  # below 2**63: a count, a batch or a file size, never more

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_SUMMARY = {
    "type": "object",
    "description": "Milliseconds over n timed runs (warm-up excluded); percentiles by linear interpolation.",
    "required": ["n", "mean", "std", "min", "p50", "p90", "p95", "p99", "max"],
    "properties": {
        "n": {"type": "integer", "minimum": 1},
        **{key: {"type": "number", "minimum": 0} for key in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")},
    },
}
_CUDA_GRAPHS = {
    "type": "object",
    "description": (
        "bench --cuda-graphs: what it did for this cell; absent without it. used: a CUDA graph was captured (after "
        "one plain warm-up launch, thread-local capture mode) and the timed runs replayed it; fallback: why not "
        "(a capture that failed, or a backend that ignores the flag: only TensorRT targets capture)."
    ),
    "required": ["requested", "used", "fallback"],
    "properties": {
        "requested": {"type": "boolean"},
        "used": {"type": "boolean"},
        "fallback": {"type": ["string", "null"]},
    },
}
_PROFILE = {
    "description": "Per-layer profile (--profile), measured on a separate profiling runner; null without --profile.",
    "oneOf": [
        {"type": "null"},
        {
            "type": "object",
            "required": ["available"],
            "properties": {
                "available": {"type": "boolean"},
                "note": {"type": "string"},
                "failed": {"type": "boolean", "description": "true when the profiler raised; error says what"},
                "error": {"type": "string"},
                "source": {"type": "string"},
                "runs": {"type": "integer", "minimum": 1},
                "metric": {"enum": ["time_ms", "estimated_cost"]},
                "layers": {"type": "integer", "minimum": 0},
                "total": {"type": "number"},
                "mapped_share": {"type": "number", "minimum": 0, "maximum": 1},
                "stages": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["stage", "value", "share", "layers"],
                        "properties": {
                            "stage": {"type": "string"},
                            "value": {"type": "number"},
                            "share": {"type": "number"},
                            "layers": {"type": "integer"},
                        },
                    },
                },
                "top_layers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "stage", "value", "share"],
                        "properties": {
                            "name": {"type": "string"},
                            "op": {"type": ["string", "null"]},
                            "stage": {"type": "string"},
                            "value": {"type": "number"},
                            "share": {"type": "number"},
                            "device": {"type": ["string", "null"]},
                            "calls": {"type": "integer"},
                        },
                    },
                },
                "devices": {"type": "object", "additionalProperties": {"type": "number"}},
                "ops": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        },
    ],
}
_RESULT = {
    "type": "object",
    "description": "One target at one batch size, measured in a fresh process.",
    "required": [
        "target",
        "batch",
        "status",
        "backend",
        "precision",
        "label",
        "latency_ms",
        "throughput_ips",
        "gmacs",
        "first_load_ms",
        "first_inference_ms",
        "memory",
        "model_file",
        "timing",
        "warnings",
    ],
    "properties": {
        "target": {"type": "string"},
        "batch": {"type": "integer", "minimum": 1},
        "status": {"const": "ok"},
        "backend": {"type": "string"},
        "precision": {"type": "string"},
        "label": {"type": "string", "description": "How reports name the runner, e.g. its execution provider."},
        "caveat": {"type": ["string", "null"], "description": "Why this latency is not a deployment latency."},
        "options": {"type": "object"},
        "timing": {"type": "object"},
        "latency_ms": _SUMMARY,
        "throughput_ips": {"type": ["number", "null"], "description": "batch / mean latency (one stream)."},
        "gmacs": {**_NUMBER_OR_NULL, "description": "model MAdds x batch / mean latency, in 1e9 MAC/s."},
        "first_load_ms": {"type": "number", "description": "Runner construction + load(): session/engine creation."},
        "first_inference_ms": {"type": "number", "description": "The first run() after load, not in the samples."},
        "library_import_ms": {"type": "number"},
        "memory": {
            "type": "object",
            "required": ["rss_peak_mb", "rss_increase_mb", "gpu", "isolation"],
            "properties": {
                "rss_peak_mb": _NUMBER_OR_NULL,
                "rss_before_runner_mb": _NUMBER_OR_NULL,
                "rss_increase_mb": _NUMBER_OR_NULL,
                "gpu": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["mb", "method"],
                            "properties": {"mb": {"type": "number"}, "method": {"type": "string"}},
                        },
                    ]
                },
                "isolation": {"enum": ["process", "shared"]},
            },
        },
        "model_file": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["name", "bytes"],
                    "properties": {
                        "name": {"type": "string"},
                        "bytes": {"type": "integer", "minimum": 0},
                        "sha256": {"type": ["string", "null"]},
                    },
                },
            ]
        },
        "device_timings_ms": {
            "type": "object",
            "description": "Device-side times apart from host-device copies (TensorRT: gpu_compute, h2d, d2h).",
            "additionalProperties": _SUMMARY,
        },
        "samples_ms": {"type": "array", "items": {"type": "number", "minimum": 0}},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "profile": _PROFILE,
        "cuda_graphs": _CUDA_GRAPHS,
    },
}

_ACCURACY = {
    "type": "object",
    "description": (
        "bench --data: top-1/top-5 accuracy of every measured target on labelled data, once per target (not per "
        "batch size), loaded and scored as `mfdeploy eval` does, each target in a fresh process with the cells' "
        "runner options. Absent without --data."
    ),
    "required": ["data", "source", "images", "batch", "untrained", "untrained_note", "results"],
    "properties": {
        "data": {"type": "string", "description": "--data as given: builtin-digits or an ImageFolder."},
        "source": {"type": "string"},
        "images": {"type": "integer", "minimum": 1, "description": "Labelled images scored."},
        "skipped_files": {"type": "integer", "minimum": 0, "description": "Unreadable files left out."},
        "batch": {"type": "integer", "minimum": 1, "description": "Images per inference call."},
        "untrained": {"type": "boolean"},
        "untrained_note": {
            "type": ["string", "null"],
            "description": "Set for a model with random weights: its accuracy figures are not meaningful.",
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["target", "status"],
                "properties": {
                    "target": {"type": "string"},
                    "status": {"enum": ["ok", "skipped", "failed"]},
                    "top1": {"type": "number", "minimum": 0, "maximum": 1},
                    "top5": {"type": "number", "minimum": 0, "maximum": 1},
                    "images": {"type": "integer", "minimum": 1},
                    "seconds": {"type": "number", "minimum": 0, "description": "Runner load and inference."},
                    "reason": {"type": "string"},
                    "error": {"type": "string"},
                },
                "if": {"properties": {"status": {"const": "ok"}}},
                "then": {"required": ["top1", "top5", "images"]},
            },
        },
    },
}

RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "mfdeploy bench result",
    "description": "Latency of one Mobile-Former artifact on one device, per target and batch size.",
    "type": "object",
    "required": [
        "schema_version",
        "kind",
        "created",
        "device",
        "model",
        "settings",
        "environment",
        "results",
        "skipped",
        "warnings",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"const": RESULT_KIND},
        "created": {"type": "string", "description": "UTC time, ISO 8601."},
        "device": {"type": "string", "description": "The device name reports group by (--device-name)."},
        "command": {"type": ["string", "null"]},
        "model": {
            "type": "object",
            "required": ["size", "imgsz", "num_classes", "madds", "files"],
            "properties": {
                "size": {"type": "string"},
                "imgsz": {"type": "integer", "minimum": 1},
                "num_classes": {"type": "integer", "minimum": 1},
                "params": {"type": ["integer", "null"]},
                "madds": {"type": ["integer", "null"], "description": "Multiply-adds of one image."},
                "artifact": {"type": "string"},
                "temporary_artifact": {"type": "boolean"},
                "files": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {"sha256": {"type": ["string", "null"]}, "bytes": {"type": ["integer", "null"]}},
                    },
                },
            },
        },
        "settings": {
            "type": "object",
            "required": ["targets", "batches", "warmup", "runs", "min_time_s"],
            "properties": {
                "targets": {"type": "array", "items": {"type": "string"}},
                "batches": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "warmup": {"type": "integer", "minimum": 0},
                "runs": {"type": ["integer", "null"], "minimum": 1},
                "min_time_s": {"type": ["number", "null"]},
                "threads": {"type": ["integer", "null"]},
                "data": {"type": "string", "description": "bench --data: the labelled data of `accuracy`."},
                "cuda_graphs": {"type": "boolean", "description": "bench --cuda-graphs (TensorRT targets only)."},
            },
        },
        "environment": {
            "type": "object",
            "required": ["device", "cpu", "gpus", "os", "python", "libraries", "threads"],
            "properties": {
                "device": {"type": "string"},
                "board": {"type": ["string", "null"]},
                "cpu": {"type": "object", "required": ["model"]},
                "memory_gb": _NUMBER_OR_NULL,
                "gpus": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                "os": {"type": "object"},
                "python": {"type": "object"},
                "libraries": {"type": "object", "additionalProperties": {"type": "string"}},
                "threads": {"type": "object"},
                "load_average_at_start": {"type": "array", "items": {"type": "number"}},
                "load_average_at_end": {"type": "array", "items": {"type": "number"}},
            },
        },
        "results": {"type": "array", "items": _RESULT},
        "skipped": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["target", "batches", "kind", "reason"],
                "properties": {
                    "target": {"type": "string"},
                    "batches": {"type": "array", "items": {"type": "integer"}},
                    "kind": {"enum": ["unavailable", "failed"]},
                    "reason": {"type": "string"},
                },
            },
        },
        "warnings": {"type": "array", "items": {"type": "string"}},
        "accuracy": _ACCURACY,
    },
}


class ResultFileError(UserError):
    """A result file that `report` cannot use; the message names the file and what is wrong."""


def _first_error(document: Any) -> str | None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(RESULT_SCHEMA)
    error = next(iter(sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))), None)
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"{where}: {message}"


def check_result(document: Any, name: str) -> None:
    """Raise ResultFileError (naming ``name``) unless ``document`` is a valid result of this version."""
    if not isinstance(document, dict):
        raise ResultFileError(f"{name} is not an mfdeploy bench result (JSON {type(document).__name__}, not an object)")
    version = document.get("schema_version")
    if document.get("kind") != RESULT_KIND:
        looks_like = " (it looks like an artifact manifest)" if "onnx" in document and "model" in document else ""
        raise ResultFileError(
            f'{name} is not an mfdeploy bench result: its "kind" is {document.get("kind")!r}, '
            f"not {RESULT_KIND!r}{looks_like}"
        )
    if version != SCHEMA_VERSION:
        raise ResultFileError(
            f"{name} has schema_version {version!r}; this mfdeploy reads schema_version {SCHEMA_VERSION}: "
            "rerun `mfdeploy bench` with this version, or report it with the mfdeploy that wrote it"
        )
    problem = _first_error(document)
    if problem:
        raise ResultFileError(f"{name} does not match the bench result schema (version {SCHEMA_VERSION}) at {problem}")


def load_result(path: str | Path) -> dict[str, Any]:
    """Read and validate one result file; every failure is one line that names the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultFileError(f"{path}: no such result file") from None
    except IsADirectoryError:
        raise ResultFileError(f"{path} is a folder, not a result file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
        check_result(document, str(path))
    except json.JSONDecodeError as exc:
        raise ResultFileError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); is it truncated?"
        ) from None
    except _BadNumber as exc:
        raise ResultFileError(
            f"{path} holds the number {exc}; a bench result holds only finite numbers and integers of at most "
            f"{_MAX_INT_DIGITS} digits"
        ) from None
    except RecursionError:
        raise ResultFileError(f"{path} is nested too deeply to be a bench result") from None
    return document


class _BadNumber(Exception):
    """NaN, an infinity or an integer beyond 64 bits in a result file: JSON has no NaN or infinity, and
    tables and charts cannot use any of them (matplotlib refuses NaN, float() overflows)."""


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse_constant(name: str) -> float:
    raise _BadNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _BadNumber(_short(text))
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _BadNumber(_short(text))
    return int(text)


def schema_text() -> str:
    """The schema as written to docs/bench-result.schema.json."""
    return json.dumps(RESULT_SCHEMA, indent=2) + "\n"
