"""Three MIL graph passes that give Mobile-Former's ML program fewer ops for the same math.

The PyTorch model is written for ONNX opset 17, which has no GELU and no way to share work between
two LayerNorms. Core ML's MIL has a ``gelu`` op, and a converted program can be rewritten with its
weights in hand. Each pass matches one exact pattern, rewrites only what it fully understands and
leaves anything else as it is; the Core ML export then verifies the result against PyTorch.

- :class:`erf_gelu_to_gelu` - the model's GELU is ``u * (1 + erf(u))`` with ``u = x / sqrt2`` folded
  into the Linear before it (two ops fewer in ONNX). That is ``sqrt2 * gelu(sqrt2 * u)``, so the Linear
  before gets its weights and bias times sqrt2, the Linear after its weights times sqrt2, and the three
  ops become one ``gelu``: 2 ops fewer per MLP.
- :class:`share_token_layer_norms` - a Former->Mobile bridge and the next Mobile->Former bridge each
  LayerNorm the same tokens with their own gamma and beta, then project them per head. Folding gamma
  and beta into those projections (``W' = gamma * W``, ``b' = b + beta @ W``) leaves two identical
  LayerNorms (and head reshapes), which the common-subexpression pass then merges: 3 ops fewer per pair.
- :class:`merge_sibling_head_projections` - the two per-head projections that now read the same
  tensor become one matmul on concatenated weights, one bias add and one split (the Former->Mobile
  bridge's own k/v split is absorbed): 2 ops fewer per pair.

They run inside coremltools' default pipeline (before the FP16 casts, so they fold float32 weights):
see :func:`pipeline`. A fourth, :class:`name_ops_after_modules`, changes no op: it runs last and names each
computed value after its module, for the per-stage profile of Core ML's compute plan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NAMESPACE = "mfdeploy"
CLASSIFIER_WRAPPER = "model"  # the attribute of coreml_convert's classifier wrapper that holds the model
_SQRT2 = np.float32(np.sqrt(2.0))
_registered = False


def _const(var) -> np.ndarray | None:
    """The value of a const float input, or None."""
    value = var.val if var is not None else None
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return value
    if isinstance(value, (np.floating, float)):
        return np.asarray(value, np.float32)
    return None


def _only_child(var):
    children = list(var.child_ops)
    return children[0] if len(children) == 1 else None


def _is_scalar(var, value: float) -> bool:
    array = _const(var)
    return array is not None and array.size == 1 and float(array.reshape(-1)[0]) == value


def _in_outputs(block, *ops) -> bool:
    outputs = set(id(v) for v in block.outputs)
    return any(id(v) in outputs for op in ops for v in op.outputs)


def _register() -> None:
    """Register the passes with coremltools (once per process)."""
    global _registered
    if _registered:
        return
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.helper import block_context_manager
    from coremltools.converters.mil.mil.passes.pass_registry import register_pass

    @register_pass(namespace=NAMESPACE, override=True)
    class erf_gelu_to_gelu(AbstractGraphPass):  # noqa: N801 - coremltools names passes in snake_case
        def apply(self, prog) -> None:
            for function in prog.functions.values():
                while self._rewrite_one(function):
                    pass

        @block_context_manager
        def _rewrite_one(self, block) -> bool:
            for op in list(block.operations):
                if op.op_type == "erf" and self._try(block, op):
                    return True
            return False

        @staticmethod
        def _try(block, erf) -> bool:
            u = erf.x
            before = u.op
            if before is None or before.op_type != "linear":
                return False
            w1, b1 = _const(before.weight), _const(before.bias)
            add = _only_child(erf.outputs[0])
            if w1 is None or b1 is None or add is None or add.op_type != "add":
                return False
            one = add.y if add.x is erf.outputs[0] else add.x
            if not _is_scalar(one, 1.0):
                return False
            mul = _only_child(add.outputs[0])
            if mul is None or mul.op_type != "mul" or {id(mul.x), id(mul.y)} != {id(u), id(add.outputs[0])}:
                return False
            if {id(c) for c in u.child_ops} != {id(erf), id(mul)}:
                return False
            after = _only_child(mul.outputs[0])
            if after is None or after.op_type != "linear" or after.x is not mul.outputs[0]:
                return False
            w2, b2 = _const(after.weight), _const(after.bias)
            if w2 is None or b2 is None or _in_outputs(block, before, erf, add, mul):
                return False
            scaled = mb.linear(
                x=before.x, weight=w1 * _SQRT2, bias=b1 * _SQRT2, name=before.outputs[0].name, before_op=after
            )
            gelu = mb.gelu(x=scaled, mode="EXACT", name=mul.outputs[0].name, before_op=after)
            out = mb.linear(x=gelu, weight=w2 * _SQRT2, bias=b2, name=after.outputs[0].name, before_op=after)
            block.replace_uses_of_var_after_op(anchor_op=after, old_var=after.outputs[0], new_var=out)
            block.remove_ops([after, mul, add, erf, before])
            return True

    @register_pass(namespace=NAMESPACE, override=True)
    class share_token_layer_norms(AbstractGraphPass):  # noqa: N801
        def apply(self, prog) -> None:
            for function in prog.functions.values():
                self._rewrite(function)

        @block_context_manager
        def _rewrite(self, block) -> None:
            groups: dict[tuple[Any, ...], list[Any]] = {}
            for op in block.operations:
                if op.op_type != "layer_norm" or op.axes is None or _in_outputs(block, op):
                    continue
                axes = tuple(int(a) for a in np.asarray(op.axes.val).reshape(-1))
                if axes not in ((-1,), (op.x.rank - 1,)):
                    continue
                groups.setdefault((id(op.x), float(op.epsilon.val)), []).append(op)
            for norms in groups.values():
                if len(norms) < 2:
                    continue
                plans = [self._plan(norm) for norm in norms]
                if any(plan is None for plan in plans):
                    continue
                first = norms[0]
                shared = mb.layer_norm(
                    x=first.x, axes=[-1], epsilon=first.epsilon.val, name=first.outputs[0].name, before_op=first
                )
                for norm, plan in zip(norms, plans):
                    for consumer, weight, bias in plan:
                        self._replace_weights(block, consumer, weight, bias)
                    block.replace_uses_of_var_after_op(anchor_op=shared.op, old_var=norm.outputs[0], new_var=shared)
                block.remove_ops(norms)

        @staticmethod
        def _plan(norm) -> list[tuple[Any, np.ndarray, np.ndarray]] | None:
            """For each projection that reads this LayerNorm: (op, folded weight, folded bias), or None
            if any reader is something else."""
            dim = norm.x.shape[-1]
            if not isinstance(dim, (int, np.integer)):
                return None
            gamma = _const(norm.gamma) if norm.gamma is not None else np.ones(dim, np.float32)
            beta = _const(norm.beta) if norm.beta is not None else np.zeros(dim, np.float32)
            if gamma is None or beta is None or gamma.shape != (dim,) or beta.shape != (dim,):
                return None
            plan = []
            for child in norm.outputs[0].child_ops:
                if child.op_type == "linear":
                    weight, bias = _const(child.weight), _const(child.bias)
                    if weight is None or bias is None or weight.shape[-1] != dim:
                        return None
                    plan.append((child, weight * gamma[None, :], bias + weight @ beta))
                    continue
                # LN(tokens) [.., M, D] -> reshape [.., M, h, D/h] -> transpose [.., h, M, D/h]
                # -> matmul W[h, D/h, o] (+ b)
                if child.op_type != "reshape" or len(child.outputs[0].child_ops) != 1:
                    return None
                split_shape = child.outputs[0].shape
                if len(split_shape) != norm.x.rank + 1 or not all(
                    isinstance(d, (int, np.integer)) for d in split_shape[-2:]
                ):
                    return None
                heads, head_dim = int(split_shape[-2]), int(split_shape[-1])
                if heads * head_dim != dim:
                    return None
                transpose = _only_child(child.outputs[0])
                perm = (
                    list(np.asarray(transpose.perm.val))
                    if transpose is not None and transpose.op_type == "transpose"
                    else []
                )
                rank = len(split_shape)
                if perm != [*range(rank - 3), rank - 2, rank - 3, rank - 1]:
                    return None
                for matmul in transpose.outputs[0].child_ops:
                    weight = _const(matmul.y) if matmul.op_type == "matmul" else None
                    if (
                        weight is None
                        or matmul.x is not transpose.outputs[0]
                        or matmul.transpose_x.val
                        or matmul.transpose_y.val
                        or weight.shape[:2] != (heads, head_dim)
                        or weight.ndim != 3
                    ):
                        return None
                    g = gamma.reshape(heads, head_dim, 1)
                    shift = np.einsum("hi,hio->ho", beta.reshape(heads, head_dim), weight)[:, None, :]
                    plan.append((matmul, weight * g, shift))
            return plan

        @staticmethod
        def _replace_weights(block, consumer, weight: np.ndarray, bias: np.ndarray) -> None:
            """Swap a projection for one with folded weights; a matmul's extra bias goes into its add
            when it has one, otherwise into a new add."""
            if consumer.op_type == "linear":
                new = mb.linear(
                    x=consumer.x, weight=weight, bias=bias, name=consumer.outputs[0].name, before_op=consumer
                )
            else:
                new = mb.matmul(x=consumer.x, y=weight, name=consumer.outputs[0].name, before_op=consumer)
                add = _only_child(consumer.outputs[0])
                existing = None
                if add is not None and add.op_type == "add":
                    existing = _const(add.y if add.x is consumer.outputs[0] else add.x)
                if existing is not None:
                    new_add = mb.add(x=new, y=existing + bias, name=add.outputs[0].name, before_op=consumer)
                    block.replace_uses_of_var_after_op(anchor_op=add, old_var=add.outputs[0], new_var=new_add)
                    block.remove_ops([add])
                elif np.any(bias):
                    new = mb.add(x=new, y=bias, before_op=consumer)
            block.replace_uses_of_var_after_op(anchor_op=consumer, old_var=consumer.outputs[0], new_var=new)
            block.remove_ops([consumer])

    @register_pass(namespace=NAMESPACE, override=True)
    class merge_sibling_head_projections(AbstractGraphPass):  # noqa: N801
        def apply(self, prog) -> None:
            for function in prog.functions.values():
                while self._rewrite_one(function):
                    pass

        @block_context_manager
        def _rewrite_one(self, block) -> bool:
            readers: dict[int, list[Any]] = {}
            for op in block.operations:
                if op.op_type == "matmul" and _projection(block, op) is not None:
                    readers.setdefault(id(op.x), []).append(op)
            for siblings in readers.values():
                if len(siblings) >= 2:
                    _merge(block, siblings)
                    return True
            return False

    def _projection(block, matmul) -> tuple[np.ndarray, Any, np.ndarray] | None:
        """(weight [h, i, o], its bias add or None, bias [h, 1, o]) for ``matmul(x, W) [+ b]``."""
        weight = _const(matmul.y)
        if weight is None or weight.ndim != 3 or matmul.transpose_x.val or matmul.transpose_y.val:
            return None
        if _const(matmul.x) is not None or _in_outputs(block, matmul):
            return None
        add = _only_child(matmul.outputs[0])
        bias = None
        if add is not None and add.op_type == "add":
            bias = _const(add.y if add.x is matmul.outputs[0] else add.x)
        if bias is None:
            return weight, None, np.zeros((weight.shape[0], 1, weight.shape[2]), np.float32)
        try:
            bias = np.broadcast_to(bias, (weight.shape[0], 1, weight.shape[2])).astype(np.float32)
        except ValueError:
            return None
        return weight, add, bias

    def _split_sizes(split, width: int) -> list[int] | None:
        """A split's piece sizes, whether it was given ``split_sizes`` or ``num_splits``."""
        if split.split_sizes is not None and split.split_sizes.val is not None:
            return [int(size) for size in np.asarray(split.split_sizes.val).reshape(-1)]
        if split.num_splits is not None and split.num_splits.val is not None:
            count = int(split.num_splits.val)
            return [width // count] * count if width % count == 0 else None
        return None

    def _merge(block, siblings: list[Any]) -> None:
        first = siblings[0]
        parts = [_projection(block, op) for op in siblings]
        weight = np.concatenate([p[0] for p in parts], axis=-1)
        bias = np.concatenate([p[2] for p in parts], axis=-1)
        # Each sibling's output either goes on as it is, or (the k/v projection) straight into a split
        # along the same axis, whose pieces then come directly from the merged split.
        pieces: list[tuple[Any, int]] = []  # (var to replace, its width on the last axis)
        removed: list[Any] = []
        for op, (w, add, _) in zip(siblings, parts):
            out = (add or op).outputs[0]
            split = _only_child(out)
            removed += [x for x in (split, add, op) if x is not None]
            if split is not None and split.op_type == "split" and not _in_outputs(block, add or op):
                axis = int(split.axis.val)
                sizes = _split_sizes(split, w.shape[-1])
                if axis in (-1, out.rank - 1) and sizes is not None and int(np.sum(sizes)) == w.shape[-1]:
                    pieces.extend((var, int(size)) for var, size in zip(split.outputs, sizes))
                    continue
            if split is not None:
                removed.remove(split)
            pieces.append((out, w.shape[-1]))
        merged = mb.matmul(x=first.x, y=weight, before_op=first)
        if np.any(bias):
            merged = mb.add(x=merged, y=bias, before_op=first)
        outputs = mb.split(x=merged, split_sizes=[width for _, width in pieces], axis=-1, before_op=first)
        for (old, _), new in zip(pieces, outputs):
            block.replace_uses_of_var_after_op(anchor_op=outputs[0].op, old_var=old, new_var=new)
        block.remove_ops(removed)

    @register_pass(namespace=NAMESPACE, override=True)
    class name_ops_after_modules(AbstractGraphPass):  # noqa: N801
        """Prefix every computed value's name with the PyTorch module that made it (``blocks_3_to_mobile__...``).

        Core ML's compute plan reports an op by its output's name, and the converter names values after
        TorchScript's debug names (``input_27``), which say nothing of the stage. The module path is in each
        op's scope (coremltools drops the ModuleList's own name: ``0.to_former`` is ``blocks.0.to_former``).
        Only names change; the program's inputs and outputs keep theirs. Values made by a pass without a
        module (e.g. merged projections) keep their names.
        """

        def apply(self, prog) -> None:
            from coremltools.converters.mil.mil.scope import ScopeSource

            for function in prog.functions.values():
                outputs = {id(var) for var in function.outputs}  # inputs are no op's outputs: nothing to skip
                for op in function.operations:
                    if op.op_type == "const":
                        continue
                    path = list(op.scopes.get(ScopeSource.TORCHSCRIPT_MODULE_NAME, []))[:-1]
                    if path[:1] == [CLASSIFIER_WRAPPER]:  # a classifier's model sits inside a wrapper
                        path = path[1:]
                    if not path:
                        continue
                    if path[0].isdigit():
                        path.insert(0, "blocks")
                    prefix = "_".join(part.replace(".", "_") for part in path)
                    for var in op.outputs:
                        if id(var) not in outputs and not var.name.startswith(prefix + "__"):
                            var.name = f"{prefix}__{var.name}"

    @register_pass(namespace=NAMESPACE, override=True)
    class release_output_types(AbstractGraphPass):  # noqa: N801
        """Forget the declared output types once the main pipeline has applied them (names, fp32).

        coremltools 9's ML program writer indexes the declared output types by output position, but a
        classifier gains outputs (class label, probabilities) after them, so a classifier that keeps
        its logits as an extra output fails with an IndexError. Nothing after the main pipeline needs
        the declared types, so dropping them there avoids the crash without changing the program.
        """

        def apply(self, prog) -> None:
            for function in prog.functions.values():
                function.output_types = None

    _registered = True


PASSES = (
    f"{NAMESPACE}::erf_gelu_to_gelu",
    f"{NAMESPACE}::share_token_layer_norms",
    f"{NAMESPACE}::merge_sibling_head_projections",
)
CLASSIFIER_WORKAROUND = f"{NAMESPACE}::release_output_types"
NAME_AFTER_MODULES = f"{NAMESPACE}::name_ops_after_modules"


UNUSED_PASS = "common::reduce_transposes"  # see pipeline


def pipeline(classifier: bool = False):
    """coremltools' default pass pipeline with the three passes in it.

    The first two run just before the common-subexpression pass (``remove_redundant_ops``, which then
    merges the LayerNorms made identical), the third right after it, all before the FP16 casts.
    A classifier also gets :class:`release_output_types` at the end (a coremltools 9 bug workaround).
    coremltools' ``reduce_transposes`` is left out: Mobile-Former's programs have no transpose it can
    cancel or sink (it changed no op of any size of either family), yet it was 13% of the pipeline's time
    for a fixed batch and almost half of it with enumerated batches (tested: test_coreml.py).
    """
    import coremltools as ct

    _register()
    pipe = ct.PassPipeline.DEFAULT
    pipe.remove_passes([UNUSED_PASS])
    index = pipe.passes.index("common::remove_redundant_ops")
    # With enumerated batch shapes the reshapes' targets are computed from shape ops that have become
    # dead by now but are still attached; removing them first lets the patterns (and coremltools'
    # own merge of consecutive reshapes, run once more) match as they do for a fixed batch.
    pipe.insert_pass(index + 1, "common::merge_consecutive_reshapes")
    pipe.insert_pass(index + 1, PASSES[2])
    pipe.insert_pass(index, PASSES[1])
    pipe.insert_pass(index, PASSES[0])
    pipe.insert_pass(index, "common::dead_code_elimination")
    if classifier:
        pipe.append_pass(CLASSIFIER_WORKAROUND)
    return pipe
