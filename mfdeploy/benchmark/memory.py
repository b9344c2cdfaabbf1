"""Memory figures for one measured cell: peak resident memory of the process, and GPU memory.

Peak RSS is attributed to one target at one batch by measuring every such cell in a fresh child process
(see ``bench``): the process's high-water mark then covers the interpreter, numpy, the backend library,
this one model and the buffers of this one batch, and nothing that another target left behind. The
result also gives the part added by the runner (high-water after the runs minus high-water before the
runner was created), which is the closest a process-level counter gets to "the model's memory".
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from mfdeploy.environment import nvidia_smi_csv, nvml


def peak_rss_bytes() -> int | None:
    """This process's resident-set high-water mark, or None where the OS does not say.

    Linux: ``VmHWM`` from /proc/self/status (per address space, so it starts afresh at exec and is not
    inherited from the parent, unlike ``ru_maxrss`` after a fork). macOS and BSD: ``ru_maxrss``
    (bytes on macOS, KiB elsewhere).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass
class GpuMemory:
    """GPU memory seen for this process: ``bytes`` and how it was obtained (``method``)."""

    bytes: int
    method: str  # "nvml-process", "nvidia-smi-process" or "nvml-device-delta"

    def to_dict(self) -> dict[str, Any]:
        return {"mb": round(self.bytes / 2**20, 1), "method": self.method}


def gpu_device_used_bytes() -> int | None:
    """Memory in use on all GPUs (every process), or None without NVML/GPU."""
    bindings = nvml()
    if bindings is None:
        return None
    try:
        return sum(
            int(bindings.nvmlDeviceGetMemoryInfo(bindings.nvmlDeviceGetHandleByIndex(i)).used)
            for i in range(bindings.nvmlDeviceGetCount())
        )
    except Exception:  # noqa: BLE001
        return None


def gpu_process_bytes(pid: int | None = None) -> int | None:
    """GPU memory used by process ``pid`` (this one by default), per NVML or nvidia-smi; None if neither
    knows the process (no GPU, no driver tools, or a container whose PIDs the driver does not see)."""
    pid = os.getpid() if pid is None else pid
    bindings = nvml()
    if bindings is not None:
        try:
            used = 0
            found = False
            for i in range(bindings.nvmlDeviceGetCount()):
                handle = bindings.nvmlDeviceGetHandleByIndex(i)
                for proc in bindings.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        used += int(proc.usedGpuMemory)
                        found = True
            return used if found else None
        except Exception:  # noqa: BLE001
            return None
    rows = nvidia_smi_csv("compute-apps", ("pid", "used_memory")) or []
    used_mib = [int(used) for owner, used in rows if owner == str(pid) and used.isdigit()]
    return sum(used_mib) * 2**20 if used_mib else None


def gpu_memory(baseline_device_bytes: int | None) -> GpuMemory | None:
    """This process's GPU memory now: per process where the driver lists it, else the growth of the
    whole device's use since ``baseline_device_bytes`` (taken before the runner was created). None on a
    host without an NVIDIA GPU."""
    own = gpu_process_bytes()
    if own is not None:
        return GpuMemory(own, "nvml-process" if nvml() is not None else "nvidia-smi-process")
    now = gpu_device_used_bytes()
    if now is None or baseline_device_bytes is None:
        return None
    return GpuMemory(max(0, now - baseline_device_bytes), "nvml-device-delta")
