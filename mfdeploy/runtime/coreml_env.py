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


COMPUTE_PLAN_MACOS = (14, 4)  # MLComputePlan (Core ML's per-op device and cost estimates) is macOS 14.4+


def compute_plan_unavailable_reason() -> str | None:
    """Why Core ML's compute plan (``bench --profile``) cannot be read here, or None if it can."""
    if (reason := predict_unavailable_reason()) is not None:
        return reason
    version = platform.mac_ver()[0]
    try:
        parts = tuple(int(part) for part in version.split("."))
    except ValueError:
        parts = ()
    if parts < COMPUTE_PLAN_MACOS:
        need = ".".join(map(str, COMPUTE_PLAN_MACOS))
        return f"Core ML compute plans (bench --profile) need macOS {need} or later; this is macOS {version or '?'}"
    return None


# The coremltools modules whose tqdm bars run during a conversion: the PyTorch frontend ("Converting
# PyTorch Frontend ==> MIL Ops"), the pass pipelines ("Running MIL ... pipeline") and weight compression
# ("Running compression pass ..."). coremltools 9 has no switch for them (apple/coremltools#1815 asks
# for a verbosity flag), and tqdm reads its TQDM_DISABLE variable once, at import.
_BAR_MODULES = (
    "coremltools.converters.mil.frontend.torch.ops",
    "coremltools.converters.mil.mil.passes.pass_pipeline",
    "coremltools.optimize.coreml._quantization_passes",
    "coremltools.optimize.coreml._post_training_quantization",
)


@contextmanager
def _coremltools_bars_off() -> Iterator[None]:
    """Disable the tqdm bars of coremltools' own modules while the block runs, and restore them after.

    Only coremltools' module-level references to the ``tqdm`` class are swapped (for a subclass that
    is always disabled), so other libraries' bars and everything else written to stderr (warnings,
    errors, tracebacks) still come through.
    """
    import importlib
    import sys

    from tqdm import tqdm

    class _Silent(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    with _quiet_logger():  # importing them may log the environment warnings import_coremltools drops
        for name in _BAR_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:  # another coremltools version: whatever it has is patched below
                pass
    swapped = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("coremltools.") or module is None:
            continue
        for attribute in ("tqdm", "_tqdm"):
            if getattr(module, attribute, None) is tqdm:
                setattr(module, attribute, _Silent)
                swapped.append((module, attribute))
    try:
        yield
    finally:
        for module, attribute in swapped:
            setattr(module, attribute, tqdm)


@contextmanager
def quiet_coremltools(log: list[str] | None = None) -> Iterator[None]:
    """Keep coremltools' log warnings (untested torch version, missing macOS bindings, float64
    constants...) and its tqdm progress bars off the terminal while it works; our own progress bar
    names the stage instead. Warnings are not lost when ``log`` is given: each distinct message is
    appended to it (the Core ML export records them in the manifest). Errors still print.
    """
    with _quiet_logger(log), _coremltools_bars_off():
        yield


@contextmanager
def _quiet_logger(log: list[str] | None = None) -> Iterator[None]:
    logger = logging.getLogger("coremltools")
    level, propagate = logger.level, logger.propagate
    collector = _Collector(log) if log is not None else None
    if collector is not None:
        logger.addHandler(collector)
        logger.setLevel(logging.WARNING)
        logger.propagate = False  # the collector passes errors on itself
    else:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if collector is not None:
            logger.removeHandler(collector)
        logger.setLevel(level)
        logger.propagate = propagate


class _Collector(logging.Handler):
    """Keeps the distinct messages of coremltools' WARNING records in a list; errors go to stderr as
    Python prints them when nothing is configured."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            (logging.lastResort or logging.StreamHandler()).handle(record)
            return
        message = record.getMessage().strip()
        if message and message not in self.log:
            self.log.append(message)


def import_coremltools() -> ModuleType:
    """``import coremltools`` without its import-time warnings."""
    with _quiet_logger():
        import coremltools

    return coremltools
