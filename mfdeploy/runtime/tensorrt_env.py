"""What a TensorRT engine needs from its host, and the check that an engine was built for this host.

A serialized TensorRT plan only runs with the TensorRT version and the GPU (compute capability) it was
built for. ``engine.json`` beside the plans records both; loading compares them with this host first and
says to rebuild instead of failing inside TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mfdeploy.errors import UserError

ENGINE_SIDECAR = "engine.json"
MIN_TENSORRT_MAJOR = 10


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT >= 10 and a CUDA GPU (through a CUDA build of torch) are usable here."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed (pip install 'mfdeploy[trt]' on a host with an NVIDIA GPU)"
    except Exception as exc:  # noqa: BLE001 - a broken TensorRT install raises OSError/RuntimeError
        return f"TensorRT cannot be loaded here ({str(exc).splitlines()[0]})"
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        return f"TensorRT {trt.__version__} is too old: strongly typed builds need TensorRT 10 or newer"
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return "this torch is a CPU build: install a CUDA build of torch to run TensorRT engines"
        return "no CUDA GPU is visible to this process"
    return None


def host_info() -> dict[str, Any]:
    """TensorRT version and GPU of this host (only call when TensorRT and a GPU are available)."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
    }


def read_sidecar(folder: Path) -> dict[str, Any]:
    path = folder / ENGINE_SIDECAR
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"schema_version": 1, "engines": {}}
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "engines" not in data:
        raise UserError(f"{path} is not an mfdeploy engine sidecar")
    return data


def check_engine_compatible(entry: dict[str, Any], host: dict[str, Any], rebuild_command: str) -> None:
    """Refuse an engine built for another TensorRT version or another GPU, naming both and the fix."""
    built = (
        f"TensorRT {entry.get('tensorrt_version')} on {entry.get('gpu_name')} (sm {entry.get('compute_capability')})"
    )
    here = f"TensorRT {host['tensorrt_version']} on {host['gpu_name']} (sm {host['compute_capability']})"
    same_version = entry.get("tensorrt_version") == host["tensorrt_version"]
    same_gpu = all(entry.get(key) == host[key] for key in ("compute_capability", "gpu_name"))
    if not (same_version and same_gpu):
        what = "another TensorRT version" if not same_version else "another GPU"
        raise UserError(
            f"engine {entry.get('file')} was built with {built}, {what} than this host's {here}; "
            f"rebuild it with `{rebuild_command}`"
        )
