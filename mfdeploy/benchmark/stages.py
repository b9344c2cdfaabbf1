"""Per-layer profiles mapped back to Mobile-Former's stages.

The ONNX exporter names nodes after their PyTorch modules (``/blocks.3/to_mobile/MatMul``), TensorRT
keeps those names inside its fused layer names (``PWN(/blocks.3/mobile/act/Max)``), and a runner can
give a ``scope`` for layers its backend renamed. A layer belongs to the stage named first in its name,
else in its scope (:func:`mfdeploy.model.stages.stage_of`); what carries no stage name goes under "other".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from mfdeploy.model.stages import OTHER, stage_of, stage_order
from mfdeploy.runtime.base import LayerRecord


def layer_stage(record: LayerRecord) -> str:
    """The stage of a profiled layer: from its name, else from the scope its runner gave."""
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
