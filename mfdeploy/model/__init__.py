"""The reference Mobile-Former in PyTorch, all seven sizes, written to export to plain ONNX.

The network itself (and so torch) loads on first use of ``MobileFormer`` or ``build_model``: the size
table and the stage names (:mod:`mfdeploy.model.stages`) are read by code that never builds a model,
such as the benchmark's per-stage profile.
"""

from typing import TYPE_CHECKING, Any

from mfdeploy.model.config import CONFIGS, DEFAULT_SIZE, SIZES, MobileFormerConfig, get_config

if TYPE_CHECKING:
    from mfdeploy.model.mobileformer import MobileFormer, build_model

__all__ = ["CONFIGS", "DEFAULT_SIZE", "SIZES", "MobileFormer", "MobileFormerConfig", "build_model", "get_config"]


def __getattr__(name: str) -> Any:
    if name in ("MobileFormer", "build_model"):
        from mfdeploy.model import mobileformer

        return getattr(mobileformer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
