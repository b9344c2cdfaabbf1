"""What Core ML needs from its host: coremltools for conversion and the evaluator, macOS for prediction.

coremltools installs on any platform, but ``MLModel.predict`` only exists on macOS, in a build with
the Core ML framework bindings (``libcoremlpython``). Export, the runner and the benchmark ask here
which of the two this host has, so each can fall back to the numpy evaluator or say what to install.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

INSTALL_HINT = "install the coreml extra: pip install 'mfdeploy[coreml]'"


def coremltools_installed() -> bool:
    """True when coremltools can be imported (conversion and the evaluator need nothing more)."""
    return importlib.util.find_spec("coremltools") is not None


def predict_unavailable_reason() -> str | None:
    """Why MLModel.predict cannot run here, or None if it can."""
    if platform.system() != "Darwin":
        return f"Core ML prediction needs macOS (this is {platform.system()})"
    if not coremltools_installed():
        return f"coremltools is not installed; {INSTALL_HINT}"
    if importlib.util.find_spec("coremltools.libcoremlpython") is None:
        return "this coremltools build has no Core ML framework bindings (libcoremlpython)"
    return None


@contextmanager
def quiet_coremltools() -> Iterator[None]:
    """Keep coremltools' log warnings (untested torch version, missing macOS bindings, float64
    constants...) off the terminal while it works; its progress bars still show."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def import_coremltools() -> ModuleType:
    """``import coremltools`` without its import-time warnings."""
    with quiet_coremltools():
        import coremltools

    return coremltools
