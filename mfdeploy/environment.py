"""What this host runs: library versions (recorded in every manifest and report)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

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


def platform_summary() -> dict[str, str]:
    return {"system": platform.system(), "machine": platform.machine(), "python_executable": sys.executable}
