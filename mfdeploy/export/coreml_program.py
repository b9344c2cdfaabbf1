"""What is in a Core ML ML program: its op histogram, its compute-op count, and the ops that the chosen
deployment target does not have.

A *compute op* is every op of the main function except ``const`` and the ``constexpr_*`` ops: those
only hold (or decompress, once, when the model loads) weights. The official Mobile-Former 52m converts
to 767 compute ops by this count; the target for this project's 52m is at most 500.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")
OFFICIAL_52M_COMPUTE_OPS = 767
COMPUTE_OP_DEFINITION = "every op of the main function except const and constexpr_* (weights)"


def is_weight_op(op_type: str) -> bool:
    return op_type == "const" or op_type.startswith("constexpr_")


def target_enum(name: str):
    """``"iOS17"`` -> ``coremltools.target.iOS17``."""
    import coremltools as ct

    return getattr(ct.target, name)


def _target_name(value: int) -> str:
    import coremltools as ct

    for target in ct.target:
        if target.value == value:
            return target.name
    return f"opset {value}"


@dataclass
class ProgramReport:
    """The op figures the manifest records for an ML program."""

    op_histogram: dict[str, int]
    compute_ops: int
    weight_ops: int
    opset: str
    unsupported: list[str] = field(default_factory=list)  # "op (needs iOS18)" for each op the target lacks

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_histogram": self.op_histogram,
            "compute_ops": self.compute_ops,
            "compute_op_definition": COMPUTE_OP_DEFINITION,
            "weight_ops": self.weight_ops,
            "opset": self.opset,
            "unsupported_ops": self.unsupported,
        }


def inspect_program(program, deployment_target: str) -> ProgramReport:
    """Count the ops of ``program`` and check each against ``deployment_target``.

    An op is supported when its type exists in coremltools' op registry at an opset no newer than the
    target and the op in the program is that opset's (or an older opset's) definition; the program's own
    opset must not be newer than the target either.
    """
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    target = target_enum(deployment_target).value
    function = program.functions["main"]
    counts: Counter[str] = Counter()
    unsupported: set[str] = set()
    for op in function.operations:
        counts[op.op_type] += 1
        versions = SSAOpRegistry.core_ops.get(op.op_type, {})
        available = [v.value for v in versions]
        if not available:
            unsupported.add(f"{op.op_type} (not a Core ML op)")
            continue
        needed = max(min(available), op.opset_version.value if op.opset_version is not None else 0)
        if needed > target:
            unsupported.add(f"{op.op_type} (needs {_target_name(needed)})")
    opset = function.opset_version.value if function.opset_version is not None else target
    if opset > target:
        unsupported.add(f"the program's opset (needs {_target_name(opset)})")
    compute = {op: n for op, n in counts.items() if not is_weight_op(op)}
    histogram = dict(sorted(compute.items(), key=lambda item: (-item[1], item[0])))
    weights = {op: n for op, n in counts.items() if is_weight_op(op)}
    histogram.update(sorted(weights.items()))
    return ProgramReport(
        op_histogram=histogram,
        compute_ops=sum(compute.values()),
        weight_ops=sum(weights.values()),
        opset=_target_name(opset),
        unsupported=sorted(unsupported),
    )
