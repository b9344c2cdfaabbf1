"""What this host runs: library versions (recorded in every manifest and report)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from types import ModuleType

from mfdeploy import __version__

# Distribution names whose versions matter to a result; absent ones are simply not listed.
_DISTRIBUTIONS = (
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxsim",
    "onnxslim",
    "coremltools",
    "tensorrt",
    "pillow",
    "scikit-image",
    "scikit-learn",
)


def library_versions() -> dict[str, str]:
    """Installed versions of mfdeploy, Python and the libraries that shape a result."""
    versions = {"mfdeploy": __version__, "python": platform.python_version()}
    for name in _DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# -- the host a benchmark ran on ------------------------------------------------------------------
_CPU_FLAGS_OF_NOTE = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    tool = shutil.which("sysctl")
    if tool is None:
        return None
    try:
        return subprocess.run([tool, "-n", name], capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_info() -> dict[str, object]:
    """CPU model, core counts (logical, usable by this process, physical) and the SIMD flags that decide
    which kernels a backend picks (AVX-512 VNNI and AMX for INT8, AVX512-FP16, NEON dot product)."""
    import os

    info: dict[str, object] = {"model": platform.processor() or platform.machine(), "logical_cores": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    cpuinfo = _read("/proc/cpuinfo")
    if cpuinfo:
        fields = [
            dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
            for block in cpuinfo.strip().split("\n\n")
        ]
        fields = [{k.strip(): v.strip() for k, v in block.items()} for block in fields]
        model = next(
            (b.get("model name") or b.get("Model") for b in fields if b.get("model name") or b.get("Model")), None
        )
        if model:
            info["model"] = model
        cores = {(b.get("physical id"), b.get("core id")) for b in fields if "core id" in b}
        if cores:
            info["physical_cores"] = len(cores)
        flags = set((fields[0].get("flags") or fields[0].get("Features") or "").split()) if fields else set()
        info["flags"] = [flag for flag in _CPU_FLAGS_OF_NOTE if flag in flags]
        governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        if governor:
            info["frequency_governor"] = governor.strip()
    elif sys.platform == "darwin":
        info["model"] = _sysctl("machdep.cpu.brand_string") or info["model"]
        physical = _sysctl("hw.physicalcpu")
        if physical and physical.isdigit():
            info["physical_cores"] = int(physical)
    return info


def memory_total_gb() -> float | None:
    meminfo = _read("/proc/meminfo")
    if meminfo:
        for line in meminfo.splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    if sys.platform == "darwin":
        size = _sysctl("hw.memsize")
        if size and size.isdigit():
            return round(int(size) / 2**30, 1)
    return None


def nvml() -> ModuleType | None:
    """NVIDIA's NVML bindings (nvidia-ml-py), initialised; None without them, a driver or a GPU."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError subclasses: no driver, no GPU
        return None
    return pynvml


def nvidia_smi_csv(query: str, fields: Sequence[str]) -> list[list[str]] | None:
    """``nvidia-smi --query-<query>=<fields>`` as rows of stripped fields (lines without every field
    dropped); None where nvidia-smi is missing or fails to run. The fallback where NVML is not installed."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        listing = subprocess.run(
            [smi, f"--query-{query}={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[part.strip() for part in line.split(",")] for line in listing.splitlines()]
    return [row for row in rows if len(row) == len(fields)]


def gpu_info() -> list[dict[str, object]]:
    """NVIDIA GPUs with driver version and memory, from NVML or nvidia-smi; [] where there are none."""
    pynvml = nvml()
    if pynvml is not None:
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            gpus = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                gpus.append(
                    {
                        "name": name.decode() if isinstance(name, bytes) else str(name),
                        "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
                        "memory_mb": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20),
                    }
                )
            return gpus
        except Exception:  # noqa: BLE001 - a driver that answers NVML only in part: try the CLI
            pass
    rows = nvidia_smi_csv("gpu", ("name", "driver_version", "memory.total")) or []
    return [
        {"name": name, "driver": driver, "memory_mb": int(memory) if memory.isdigit() else None}
        for name, driver, memory in rows
    ]


def board_model() -> str | None:
    """The board or computer model where the OS names it (Jetson and other device-tree boards, Macs)."""
    model = _read("/proc/device-tree/model")
    if model:
        return model.strip("\x00\n ")
    if sys.platform == "darwin":
        return _sysctl("hw.model")
    return None


def host_environment(threads: int | None = None) -> dict[str, object]:
    """The environment block of a benchmark result: device, CPU, cores, memory, GPU and driver, OS,
    Python, library versions, thread settings and how busy the machine was when it started."""
    import os

    environment: dict[str, object] = {
        "board": board_model(),
        "cpu": cpu_info(),
        "memory_gb": memory_total_gb(),
        "gpus": gpu_info(),
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "platform": platform.platform(),
            **({"macos": platform.mac_ver()[0]} if sys.platform == "darwin" else {}),
        },
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "libraries": library_versions(),
        "threads": {
            "requested": threads,
            "applies_to": "ONNX Runtime intra-op threads (inter-op 1) and torch.set_num_threads",
            "when_unset": "each backend's default: ONNX Runtime one intra-op thread per physical core, "
            "PyTorch torch.get_num_threads()",
            "environment": {name: os.environ[name] for name in _THREAD_VARIABLES if name in os.environ},
        },
    }
    if hasattr(os, "getloadavg"):
        environment["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return environment


def default_device_name(environment: dict) -> str:
    """A readable device name when the user gives none: the board or GPU, else the CPU and its cores."""
    cpu = environment.get("cpu", {})
    cores = cpu.get("usable_cores") or cpu.get("logical_cores")
    cpu_text = f"{cpu.get('model', 'unknown CPU')}, {cores} cores" if cores else str(cpu.get("model", "unknown CPU"))
    gpus = environment.get("gpus") or []
    if gpus:
        return f"{gpus[0]['name']} ({cpu_text})"
    board = environment.get("board")
    return f"{board} ({cpu_text})" if board else cpu_text
