"""Per-layer profiles mapped back to Mobile-Former's stages.

The ONNX exporter names nodes after their PyTorch modules (``/blocks.3/to_mobile/MatMul``), TensorRT
keeps those names inside its fused layer names (``PWN(/blocks.3/mobile/act/Max)``), and a runner can
give a ``scope`` for layers its backend renamed. A layer belongs to the stage named first in its scope
or name; what carries no stage name goes under "other".
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from mfdeploy.runtime.base import LayerRecord

OTHER = "other"
_FIXED_BEFORE = ("stem", "lite_bneck")
_FIXED_AFTER = ("final_to_former", "channel_conv", "head")
# A stage name preceded by the start or a delimiter and followed by a delimiter or the end, so that
# "head" does not match "heads" and "stem" does not match "system". The leftmost match wins: a layer
# inside "/blocks.0/.../head/..." is in blocks.0.
_STAGE = re.compile(
    r"(?:^|[/\s(\[{,+:])(stem|lite_bneck|blocks[._]\d+|final_to_former|channel_conv|head)(?=[/._\s)\]},+:]|$)"
)


def stage_of(name: str) -> str:
    """The model stage a layer or tensor name belongs to: stem, lite_bneck, blocks.N, final_to_former,
    channel_conv, head, or "other"."""
    match = _STAGE.search(name)
    if not match:
        return OTHER
    stage = match.group(1)
    return "blocks." + stage[7:] if stage.startswith("blocks_") else stage


def stage_order(stage: str) -> tuple[int, int]:
    """Sort key that puts stages in the order the model runs them, "other" last."""
    if stage in _FIXED_BEFORE:
        return (0, _FIXED_BEFORE.index(stage))
    if stage.startswith("blocks."):
        return (1, int(stage.split(".", 1)[1]))
    if stage in _FIXED_AFTER:
        return (2, _FIXED_AFTER.index(stage))
    return (3, 0)


def layer_stage(record: LayerRecord) -> str:
    stage = stage_of(record.name)
    if stage == OTHER and record.scope:
        stage = stage_of(record.scope)
    return stage


def summarize_profile(records: Sequence[LayerRecord], top: int = 10) -> dict[str, Any]:
    """Per-stage totals, the ``top`` layers and the split between devices and op types, of one profile.

    Ranks by measured time where the backend measured one (ONNX Runtime, TensorRT), else by estimated
    cost (Core ML's MLComputePlan).
    """
    timed = any(r.time_ms is not None for r in records)
    metric = "time_ms" if timed else "estimated_cost"

    def value(record: LayerRecord) -> float:
        raw = record.time_ms if timed else record.estimated_cost
        return float(raw or 0.0)

    total = sum(value(r) for r in records)
    share = (lambda v: v / total) if total > 0 else (lambda v: 0.0)
    per_stage: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    per_device: dict[str, float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    for record in records:
        per_op[record.op or "unknown"] += value(record)
        stage = layer_stage(record)
        per_stage[stage] += value(record)
        count[stage] += 1
        per_device[record.device or "unknown"] += value(record)
    stages = [
        {
            "stage": stage,
            "value": round(per_stage[stage], 6),
            "share": round(share(per_stage[stage]), 4),
            "layers": count[stage],
        }
        for stage in sorted(per_stage, key=stage_order)
    ]
    ranked = sorted(records, key=value, reverse=True)[: max(0, top)]
    top_layers = [
        {
            "name": r.name,
            "op": r.op,
            "stage": layer_stage(r),
            "value": round(value(r), 6),
            "share": round(share(value(r)), 4),
            "device": r.device,
            "calls": r.calls,
        }
        for r in ranked
    ]
    return {
        "metric": metric,
        "layers": len(records),
        "total": round(total, 6),
        "mapped_share": round(1.0 - share(per_stage.get(OTHER, 0.0)), 4) if total > 0 else 0.0,
        "stages": stages,
        "top_layers": top_layers,
        "devices": {device: round(share(v), 4) for device, v in sorted(per_device.items(), key=lambda kv: -kv[1])},
        "ops": {op: round(share(v), 4) for op, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
    }
