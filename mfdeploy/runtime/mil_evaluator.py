"""A numpy evaluator for Core ML ML programs: checks what a converted model computes, without a Mac.

Core ML prediction needs macOS. The ML program inside an ``.mlpackage`` is a MIL program, though, and
coremltools' op classes carry numpy ``value_inference`` implementations for most ops (and
``materialized_val_inference`` for the compressed-weight ``constexpr_*`` ops). This module walks the
program's main function in order and evaluates each op: with the op's own ``value_inference`` where it
has one and it works, and with the numpy implementations in :data:`NUMPY_OPS` otherwise:

- ``conv``, ``avg_pool``, ``max_pool`` and ``classify`` have no ``value_inference``;
- ``erf`` and ``gelu`` have one that calls ``math.erf`` once per element (correct, too slow for images);
- ``reduce_*`` pass a numpy bool ``keep_dims`` (as read back from a saved package) to numpy 2, which
  rejects it;
- a float ``cast`` is the evaluator's own precision decision (see below).

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
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EVALUATOR_PRECISIONS = ("fp32", "fp16")


class MILEvaluationError(RuntimeError):
    """The program holds an op this evaluator cannot compute, or an op failed on the given inputs."""


# -- loading -------------------------------------------------------------------------------------------


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


def import_coremltools():
    """``import coremltools`` without its import-time warnings."""
    with quiet_coremltools():
        import coremltools

    return coremltools


def load_program(package: str | os.PathLike[str]):
    """The MIL program stored in an .mlpackage (or .mlmodel ML program), read back from disk."""
    ct = import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise MILEvaluationError(f"{package} is not an ML program (it is a {spec.WhichOneof('Type')})")
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir or "")


# -- numpy kernels for the ops without value_inference -------------------------------------------------


def _pads_2d(
    pad_type: str,
    pad: np.ndarray | None,
    in_hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
) -> list[tuple[int, int]]:
    """(before, after) padding of H and W for MIL's pad_type valid/custom/same/same_lower."""
    if pad_type == "valid":
        return [(0, 0), (0, 0)]
    if pad_type == "custom":
        values = [int(p) for p in (pad if pad is not None else [0, 0, 0, 0])]
        return [(values[0], values[1]), (values[2], values[3])]
    if pad_type not in ("same", "same_lower"):
        raise MILEvaluationError(f"unknown pad_type {pad_type!r}")
    pads = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if pad_type == "same" else (large, small))
    return pads


def _ints(value: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    return default if value is None else tuple(int(v) for v in np.asarray(value).reshape(-1))


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    strides: tuple[int, int] = (1, 1),
    pads: list[tuple[int, int]] | None = None,
    dilations: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    """NCHW convolution (cross-correlation, as in PyTorch and Core ML) with groups, strides, padding
    and dilations; float32 accumulation.

    Three vectorised paths: a 1x1 convolution is one matmul per group; a depthwise convolution sums
    kh*kw shifted multiply-adds over the whole tensor; anything else gathers patches with a strided
    view (im2col without a copy until the matmul) and runs one matmul per group.
    """
    x = np.asarray(x, np.float32)
    weight = np.asarray(weight, np.float32)
    n, c_in, _, _ = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_in != c_per_group * groups or c_out % groups:
        raise MILEvaluationError(
            f"conv: input has {c_in} channels, weight {tuple(weight.shape)} does not fit groups={groups}"
        )
    pads = pads or [(0, 0), (0, 0)]
    if any(p for pair in pads for p in pair):
        x = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    sh, sw = strides
    dh, dw = dilations
    height, width = x.shape[2], x.shape[3]
    out_h = (height - (kh - 1) * dh - 1) // sh + 1
    out_w = (width - (kw - 1) * dw - 1) // sw + 1
    out_per_group = c_out // groups

    if kh == kw == 1:
        xs = x[:, :, : (out_h - 1) * sh + 1 : sh, : (out_w - 1) * sw + 1 : sw]
        xg = xs.reshape(n, groups, c_per_group, out_h * out_w)
        wg = weight.reshape(groups, out_per_group, c_per_group)
        out = np.matmul(wg[None], xg).reshape(n, c_out, out_h, out_w)
    elif c_per_group == 1 and out_per_group == 1:  # depthwise
        out = np.zeros((n, c_out, out_h, out_w), np.float32)
        for i in range(kh):
            for j in range(kw):
                window = x[
                    :, :, i * dh : i * dh + (out_h - 1) * sh + 1 : sh, j * dw : j * dw + (out_w - 1) * sw + 1 : sw
                ]
                out += window * weight[:, 0, i, j][None, :, None, None]
    else:
        windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        windows = windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :out_h, :out_w]  # [N, C, oh, ow, kh, kw]
        out = np.empty((n, c_out, out_h, out_w), np.float32)
        for g in range(groups):
            patches = windows[:, g * c_per_group : (g + 1) * c_per_group]
            patches = patches.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, c_per_group * kh * kw)
            w = weight[g * out_per_group : (g + 1) * out_per_group].reshape(out_per_group, -1)
            result = patches @ w.T  # [N*oh*ow, out_per_group]
            out[:, g * out_per_group : (g + 1) * out_per_group] = result.reshape(n, out_h, out_w, -1).transpose(
                0, 3, 1, 2
            )
    if bias is not None:
        out += np.asarray(bias, np.float32).reshape(1, -1, 1, 1)
    return out


def pool2d(
    x: np.ndarray,
    kind: str,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: list[tuple[int, int]],
    ceil_mode: bool = False,
    exclude_padding: bool = False,
) -> np.ndarray:
    """NCHW max or average pooling. ``ceil_mode`` adds windows that start inside the (left-padded)
    input; the cells they reach beyond the padding never count, as in Core ML and PyTorch."""
    x = np.asarray(x, np.float32)
    kh, kw = kernel
    sh, sw = strides
    extra = []
    out_sizes = []
    for size, k, s, (before, after) in zip(x.shape[2:], kernel, strides, pads):
        span = size + before + after - k
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + before:
            out -= 1
        out_sizes.append(out)
        extra.append(max((out - 1) * s + k - (size + before + after), 0))
    (pt, pb), (pl, pr) = pads
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb + extra[0]), (pl, pr + extra[1])), constant_values=fill)
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, : out_sizes[0], : out_sizes[1]]
    if kind == "max":
        return windows.max(axis=(-2, -1))
    total = windows.sum(axis=(-2, -1))
    # How many cells of each window are real input (exclude_padding) or input + declared padding.
    ones = np.zeros(padded.shape[2:], np.float32)
    h, w = x.shape[2:]
    if exclude_padding:
        ones[pt : pt + h, pl : pl + w] = 1.0
    else:
        ones[: pt + h + pb, : pl + w + pr] = 1.0
    counts = sliding_window_view(ones, (kh, kw))[::sh, ::sw][: out_sizes[0], : out_sizes[1]].sum(axis=(-2, -1))
    return total / counts


def _conv_op(op, v: Mapping[str, Any]) -> np.ndarray:
    x, weight = v["x"], v["weight"]
    if x.ndim != 4:
        raise MILEvaluationError(f"conv: only 2-D convolutions are supported, got a rank-{x.ndim} input")
    strides = _ints(v.get("strides"), (1, 1))
    dilations = _ints(v.get("dilations"), (1, 1))
    pads = _pads_2d(str(v.get("pad_type", "valid")), v.get("pad"), x.shape[2:], weight.shape[2:], strides, dilations)
    groups = int(v.get("groups", 1) if v.get("groups") is not None else 1)
    return conv2d(x, weight, v.get("bias"), strides, pads, dilations, groups)


def _pool_op(kind: str) -> Callable[[Any, Mapping[str, Any]], np.ndarray]:
    def run(op, v: Mapping[str, Any]) -> np.ndarray:
        x = v["x"]
        if x.ndim != 4:
            raise MILEvaluationError(f"{op.op_type}: only 2-D pooling is supported, got a rank-{x.ndim} input")
        kernel = _ints(v["kernel_sizes"], (1, 1))
        strides = _ints(v.get("strides"), (1, 1))
        pads = _pads_2d(str(v.get("pad_type", "valid")), v.get("pad"), x.shape[2:], kernel, strides, (1, 1))
        return pool2d(
            x,
            kind,
            kernel,
            strides,
            pads,
            bool(v.get("ceil_mode", False)),
            bool(v.get("exclude_padding_from_average", False)),
        )

    return run


def _erf(x: np.ndarray) -> np.ndarray:
    """Vectorised erf (scipy's, which coremltools' own value_inference matches element by element)."""
    from scipy.special import erf

    return erf(np.asarray(x, np.float32))


def _erf_op(op, v: Mapping[str, Any]) -> np.ndarray:
    return _erf(v["x"])


def _gelu_op(op, v: Mapping[str, Any]) -> np.ndarray:
    x = np.asarray(v["x"], np.float32)
    mode = str(v.get("mode", "EXACT"))
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    raise MILEvaluationError(f"gelu: unknown mode {mode!r}")


def _reduce_op(function: Callable[..., np.ndarray]) -> Callable[[Any, Mapping[str, Any]], np.ndarray]:
    """reduce_* ops. coremltools' value_inference passes the stored ``keep_dims`` (a numpy bool once a
    program is read back from disk) straight to numpy, which numpy 2 rejects."""

    def run(op, v: Mapping[str, Any]) -> np.ndarray:
        x = np.asarray(v["x"], np.float32)
        axes = v.get("axes")
        axis = None if axes is None else tuple(int(a) for a in np.asarray(axes).reshape(-1))
        return function(x, axis=axis, keepdims=bool(v.get("keep_dims", False)))

    return run


def _classify_op(op, v: Mapping[str, Any]) -> tuple[Any, Any]:
    """Core ML's classifier head: the top class label, and {label: probability}, per the input vector."""
    probabilities = np.asarray(v["probabilities"], np.float32)
    classes = v["classes"]
    labels = list(classes.ls if hasattr(classes, "ls") else classes)
    rows = probabilities.reshape(-1, probabilities.shape[-1])
    if rows.shape[0] != 1:
        raise MILEvaluationError(f"classify: Core ML classifies one probability vector, got {probabilities.shape}")
    row = rows[0]
    label = labels[int(np.argmax(row))]
    return label, {name: float(p) for name, p in zip(labels, row)}


#: The ops evaluated here rather than through coremltools' value_inference.
NUMPY_OPS: dict[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "conv": _conv_op,
    "avg_pool": _pool_op("avg"),
    "max_pool": _pool_op("max"),
    "classify": _classify_op,
    "erf": _erf_op,
    "gelu": _gelu_op,
    "reduce_mean": _reduce_op(np.mean),
    "reduce_sum": _reduce_op(np.sum),
    "reduce_max": _reduce_op(np.max),
    "reduce_min": _reduce_op(np.min),
}


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

    def __init__(self, value: Any, var) -> None:
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


@dataclass
class _Step:
    op: Any
    inputs: dict[str, Any]  # input name -> Var, or tuple of Vars
    outputs: list[str]
    release: list[str]  # names no later op needs once this one has run


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
                array = array.astype(np.float16)
            return array.astype(np.float32)
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
        spinning on a busy machine made whole runs ten times slower.
        """
        with _single_threaded_blas():
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
            for name, value in zip(step.outputs, values):
                env[name] = self._as_computed(value)
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
                result = self._value_inference(op, step.inputs, env)
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
    def _value_inference(op, inputs: Mapping[str, Any], env: Mapping[str, Any]) -> Any:
        """Run the op class's own value_inference on a shallow copy whose inputs carry our values."""
        from coremltools.converters.mil.mil.operation import Operation

        if type(op).value_inference is Operation.value_inference:
            raise MILEvaluationError(
                f"op {op.op_type} ({op.name}) has no value_inference in coremltools and no numpy "
                "implementation in mfdeploy.runtime.mil_evaluator"
            )
        shadow = copy.copy(op)
        shadow._input_vars = dict(op._input_vars)
        for name, var in inputs.items():
            if isinstance(var, (list, tuple)):
                value: Any = tuple(_Value(env[v.name], v) for v in var)
            else:
                value = _Value(env[var.name], var)
            shadow._input_vars[name] = value
            setattr(shadow, name, value)
        return shadow.value_inference()
