"""The stages of a Mobile-Former, declared once: their names, their order, and which stage a name is in.

A stage is a top-level module of :class:`~mfdeploy.model.mobileformer.MobileFormer`: ``stem``,
``lite_bneck``, one ``blocks.N`` per block, ``final_to_former``, ``channel_conv`` and ``head``. The
complexity table, the parity stage comparison and the benchmark's per-stage profile all walk or match
these names; the ONNX exporter keeps them in node names (``/blocks.3/to_mobile/MatMul``), TensorRT
inside its fused layer names, and the Core ML program names values after them with underscores
(``blocks_3_to_mobile__...``, see mfdeploy.export.coreml_passes).

No torch import here: the benchmark maps profiled layer names without loading PyTorch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from mfdeploy.model.config import MobileFormerConfig

BEFORE_BLOCKS = ("stem", "lite_bneck")
AFTER_BLOCKS = ("final_to_former", "channel_conv", "head")
#: Where a name carries no stage.
OTHER = "other"

# A stage name preceded by the start or a delimiter and followed by a delimiter or the end, so that
# "head" does not match "heads" and "stem" does not match "system". The leftmost match wins: a layer
# inside "/blocks.0/.../head/..." is in blocks.0.
_STAGE = re.compile(
    r"(?:^|[/\s(\[{,+:])(" + "|".join([*BEFORE_BLOCKS, r"blocks[._]\d+", *AFTER_BLOCKS]) + r")(?=[/._\s)\]},+:]|$)"
)


def stage_names(cfg: MobileFormerConfig) -> list[str]:
    """The stages of a model of this config, in the order its forward pass runs them."""
    return [*BEFORE_BLOCKS, *(f"blocks.{i}" for i in range(len(cfg.blocks))), *AFTER_BLOCKS]


def stage_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(stage name, module) for every stage of a MobileFormer, in order."""
    return [(name, model.get_submodule(name)) for name in stage_names(model.cfg)]


def stage_of(name: str) -> str:
    """The stage a module path (``blocks.3.to_mobile``), ONNX node or tensor name
    (``/blocks.3/to_mobile/MatMul``) or backend layer name belongs to, or :data:`OTHER`."""
    match = _STAGE.search(name)
    if not match:
        return OTHER
    stage = match.group(1)
    return "blocks." + stage[7:] if stage.startswith("blocks_") else stage


def stage_order(stage: str) -> tuple[int, int]:
    """Sort key that puts stages in the order the model runs them, :data:`OTHER` last."""
    if stage in BEFORE_BLOCKS:
        return (0, BEFORE_BLOCKS.index(stage))
    if stage.startswith("blocks."):
        return (1, int(stage.split(".", 1)[1]))
    if stage in AFTER_BLOCKS:
        return (2, AFTER_BLOCKS.index(stage))
    return (3, 0)
