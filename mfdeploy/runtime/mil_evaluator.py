"""A numpy evaluator for Core ML ML programs: checks what a converted model computes, without a Mac.

Core ML prediction needs macOS. The ML program inside an ``.mlpackage`` is a MIL program, though, and
coremltools' op classes carry numpy ``value_inference`` implementations for most ops (and
``materialized_val_inference`` for the compressed-weight ``constexpr_*`` ops). This module walks the
program's main function in order and evaluates each op: with the op's own ``value_inference`` where it
has one and it works, and with the numpy kernels of :mod:`mfdeploy.runtime.mil_ops` otherwise (which
says why each of those ops needs one). A float ``cast`` is the evaluator's own precision decision (see
below).

Two precisions:

- ``fp32``: all floating-point math in float32 (casts to fp16 are ignored). For an FP16 program this
  isolates the effect of its fp16 weights.
- ``fp16``: every op's floating-point output is rounded to float16, as an ML program with FP16 compute
  precision stores it. Products are accumulated in float32 before that rounding.

This measures the program's numerics, not what a device does about latency, and not the last bits of
a particular device's arithmetic (the Neural Engine's accumulators are not public).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mfdeploy.runtime.coreml_env import import_coremltools
from mfdeploy.runtime.mil_ops import NUMPY_OPS, MILEvaluationError

__all__ = ["EVALUATOR_PRECISIONS", "MILEvaluationError", "MILEvaluator", "load_program"]

EVALUATOR_PRECISIONS = ("fp32", "fp16")


def load_program(package: str | os.PathLike[str]):
    """The MIL program stored in an .mlpackage (or .mlmodel ML program), read back from disk."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise MILEvaluationError(f"{package} is not an ML program (it is a {spec.WhichOneof('Type')})")
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir or "")


# -- the walk --------------------------------------------------------------------------------------------


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class _Value:
    """Stands in for a MIL Var inside an op's value_inference: carries a concrete numpy value."""

    __slots__ = ("val", "dtype", "name", "op")

    def __init__(self, value: Any, var) -> None:  # value: None until a run sets it
        self.val = value
        self.dtype = var.dtype
        self.name = var.name
        self.op = var.op

    @property
    def sym_val(self) -> Any:
        return self.val

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.val))

    @property
    def rank(self) -> int:
        return len(np.shape(self.val))

    @property
    def sym_type(self):
        from coremltools.converters.mil.mil import types

        return types.tensor(self.dtype, self.shape) if self.rank else self.dtype


def _is_float(value: Any) -> bool:
    return isinstance(value, (np.ndarray, np.floating)) and np.issubdtype(np.asarray(value).dtype, np.floating)


def _fp16_rounded(array: np.ndarray) -> np.ndarray:
    """``array`` rounded to the nearest float16 (ties to even), as float32.

    The same bits as ``array.astype(np.float16).astype(np.float32)`` (subnormals, overflow to inf and NaN
    included), computed by torch, whose conversion is vectorised: numpy's float32 -> float16 loop took 40%
    of an FP16 evaluation, about 17 times torch's time for the same tensor. float64 goes the numpy way,
    which rounds once (torch would round to float32 first).
    """
    if array.dtype != np.float32 or array.ndim == 0 or not (array.flags.c_contiguous and array.flags.writeable):
        return array.astype(np.float16).astype(np.float32)
    import torch

    return torch.from_numpy(array).to(torch.float16).to(torch.float32).numpy()


# Ops whose outputs are elements of their inputs (or of their constants), moved or selected, never computed:
# given inputs held as float32 (fp16-rounded in fp16 mode), the outputs are too, so they skip the rounding
# (a torch cast there and back per output: 58 -> 53 ms per FP16 evaluation of 52m at 224 px). Exact.
VALUE_SELECTING_OPS = frozenset(
    {
        "reshape", "transpose", "split", "slice_by_index", "slice_by_size", "concat", "squeeze", "expand_dims",
        "gather", "maximum", "minimum", "relu", "reduce_max", "reduce_min",
    }
)  # fmt: skip


@dataclass
class _Step:
    op: Any
    inputs: dict[str, Any]  # input name -> Var, or tuple of Vars
    outputs: list[str]
    release: list[str]  # names no later op needs once this one has run
    shadow: Any = None  # the op's stand-in for value_inference, made at its first run (see _shadow_of)
    holders: list[tuple[_Value, str]] = field(default_factory=list)  # the stand-in's inputs and their names


class MILEvaluator:
    """Evaluates a MIL program's main function with numpy, in ``fp32`` or ``fp16`` (see the module doc).

    >>> evaluator = MILEvaluator.from_package("model.mlpackage", "fp16")
    >>> outputs = evaluator.run({"images": batch})
    """

    def __init__(self, program, precision: str = "fp16", function: str = "main") -> None:
        if precision not in EVALUATOR_PRECISIONS:
            raise ValueError(f"precision must be one of {EVALUATOR_PRECISIONS}, got {precision!r}")
        self.program = program
        self.precision = precision
        self.function = program.functions[function]
        self.input_names = list(self.function.inputs)
        self.output_names = [var.name for var in self.function.outputs]
        self._constants: dict[str, Any] = {}
        self._steps: list[_Step] = []
        self._one_run_at_a_time = threading.Lock()
        self._prepare()

    @classmethod
    def from_package(cls, package: str | os.PathLike[str], precision: str = "fp16") -> "MILEvaluator":
        """An evaluator for the program in ``package``, read back from disk (as a device reads it)."""
        return cls(load_program(package), precision)

    # -- preparation: constants once, then the order of the compute ops and when values can go --------
    def _prepare(self) -> None:
        last_use: dict[str, int] = {}
        compute_ops = []
        for op in self.function.operations:
            if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                value = op.outputs[0].val if op.op_type == "const" else op.materialized_val_inference()
                if op.op_type != "const" and not isinstance(value, tuple):
                    value = (value,)
                values = value if isinstance(value, tuple) else (value,)
                for var, val in zip(op.outputs, values):
                    self._constants[var.name] = self._as_computed(val)
                continue
            if op.blocks:
                raise MILEvaluationError(
                    f"op {op.op_type} ({op.name}) has nested blocks; control flow is not supported"
                )
            index = len(compute_ops)
            compute_ops.append(op)
            for var in op.get_flattened_inputs():
                last_use[var.name] = index
        for name in self.output_names:
            last_use[name] = len(compute_ops)
        releases: dict[int, list[str]] = {}
        for name, index in last_use.items():
            if name not in self._constants and name not in self.input_names:
                releases.setdefault(index, []).append(name)
        for index, op in enumerate(compute_ops):
            self._steps.append(_Step(op, dict(op.inputs), [var.name for var in op.outputs], releases.get(index, [])))

    def _as_computed(self, value: Any) -> Any:
        """Float values are held as float32 arrays (rounded to fp16 first in fp16 mode)."""
        if _is_float(value):
            array = np.asarray(value)
            if self.precision == "fp16":
                return _fp16_rounded(array)
            return array.astype(np.float32, copy=False)  # a float32 result is kept as it is, not copied
        return value

    # -- evaluation ----------------------------------------------------------------------------------
    def op_types(self) -> list[str]:
        """The compute ops (not constants) in program order."""
        return [step.op.op_type for step in self._steps]

    def unsupported_ops(self) -> list[str]:
        """Op types in this program that neither value_inference nor this module can compute."""
        from coremltools.converters.mil.mil.operation import Operation

        missing = set()
        for step in self._steps:
            op_type = step.op.op_type
            if op_type not in NUMPY_OPS and type(step.op).value_inference is Operation.value_inference:
                missing.add(op_type)
        return sorted(missing)

    def run(self, inputs: Mapping[str, np.ndarray], keep: tuple[str, ...] = ()) -> dict[str, Any]:
        """Evaluate the program on ``inputs`` (by input name); return its outputs by name, plus any
        intermediate values named in ``keep``.

        BLAS runs single-threaded meanwhile: the matrices of one image are small, and OpenBLAS threads
        spinning on a busy machine made whole runs ten times slower. Runs of one evaluator take turns (its ops'
        stand-ins hold a run's inputs while it runs); evaluators of their own run side by side.
        """
        with self._one_run_at_a_time, _single_threaded_blas():
            return self._run(inputs, keep)

    def _run(self, inputs: Mapping[str, np.ndarray], keep: tuple[str, ...]) -> dict[str, Any]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise MILEvaluationError(f"missing inputs {missing}; the program takes {self.input_names}")
        env: dict[str, Any] = dict(self._constants)
        for name in self.input_names:
            var = self.function.inputs[name]
            value = np.asarray(inputs[name])
            expected = var.shape
            if len(expected) != value.ndim or any(
                isinstance(d, (int, np.integer)) and d != s for d, s in zip(expected, value.shape)
            ):
                raise MILEvaluationError(f"input {name!r} has shape {value.shape}, the program expects {expected}")
            env[name] = self._as_computed(value.astype(np.float32)) if _is_float(value) else value
        kept = set(keep)
        for step in self._steps:
            values = self._evaluate(step, env)
            if step.op.op_type in VALUE_SELECTING_OPS:  # already held as computed: rounding would change nothing
                env.update(zip(step.outputs, values))
            else:
                env.update((name, self._as_computed(value)) for name, value in zip(step.outputs, values))
            for name in step.release:
                if name not in kept:
                    env.pop(name, None)
        return {name: env[name] for name in [*self.output_names, *keep]}

    def _evaluate(self, step: _Step, env: Mapping[str, Any]) -> tuple[Any, ...]:
        op = step.op
        try:
            if op.op_type == "cast" and str(op.dtype.val) in ("fp16", "fp32") and _is_float(env[op.x.name]):
                # A float cast only changes the storage precision, which this evaluator's own
                # precision decides: a no-op in fp32 mode, the usual fp16 rounding in fp16 mode.
                result = env[op.x.name]
            elif op.op_type in NUMPY_OPS:
                plain = {
                    name: (tuple(env[v.name] for v in var) if isinstance(var, (list, tuple)) else env[var.name])
                    for name, var in step.inputs.items()
                }
                result = NUMPY_OPS[op.op_type](op, plain)
            else:
                result = self._value_inference(step, env)
        except MILEvaluationError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the op that failed, whatever numpy raised
            raise MILEvaluationError(f"{op.op_type} op {op.name!r} failed: {type(exc).__name__}: {exc}") from exc
        results = result if isinstance(result, tuple) and len(op.outputs) > 1 else (result,)
        if len(results) != len(op.outputs):
            raise MILEvaluationError(
                f"{op.op_type} op {op.name!r} gave {len(results)} values for {len(op.outputs)} outputs"
            )
        return tuple(r.ls if hasattr(r, "ls") else r for r in results)

    @staticmethod
    def _shadow_of(step: _Step) -> tuple[Any, list[tuple[_Value, str]]]:
        """A shallow copy of the op whose inputs are :class:`_Value` holders, made once per op and reused by
        every run (copying the op per run was a third of an FP32 evaluation of 52m at 224 px)."""
        from coremltools.converters.mil.mil.operation import Operation

        op = step.op
        if type(op).value_inference is Operation.value_inference:
            raise MILEvaluationError(
                f"op {op.op_type} ({op.name}) has no value_inference in coremltools and no numpy "
                "implementation in mfdeploy.runtime.mil_ops"
            )
        shadow = copy.copy(op)
        shadow._input_vars = dict(op._input_vars)
        holders: list[tuple[_Value, str]] = []
        for name, var in step.inputs.items():
            if isinstance(var, (list, tuple)):
                value: Any = tuple(_Value(None, v) for v in var)
                holders += [(holder, v.name) for holder, v in zip(value, var)]
            else:
                value = _Value(None, var)
                holders.append((value, var.name))
            shadow._input_vars[name] = value
            setattr(shadow, name, value)
        return shadow, holders

    def _value_inference(self, step: _Step, env: Mapping[str, Any]) -> Any:
        """Run the op class's own value_inference on the op's stand-in, its inputs set to this run's values."""
        if step.shadow is None:
            step.shadow, step.holders = self._shadow_of(step)
        for holder, name in step.holders:
            holder.val = env[name]
        try:
            return step.shadow.value_inference()
        finally:
            for holder, _ in step.holders:  # the stand-in keeps no array once the op has run
                holder.val = None
