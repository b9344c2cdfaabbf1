"""Small building blocks shared by the Mobile and Former halves of the model.

Everything here is written for export: plain 4-D tensor ops, no shape arithmetic on Python ints, and
constants (scales, DyReLU coefficients) folded into weights inside ``forward`` so that the exporter's
constant folding turns them into single initializers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: drops whole samples in training, identity in eval."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


_INV_SQRT2 = 0.5**0.5


class MLP(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout.

    GELU(x) = x * (1 + erf(x / sqrt2)) / 2. With u = x / sqrt2 it is u * (1 + erf(u)) / sqrt2, so the two
    1/sqrt2 factors are moved into fc1's weights and bias and fc2's weights, where an export folds them.
    The exported MLP then runs Erf, Add, Mul instead of Div, Erf, Add, Mul, Mul: the same exact (erf)
    GELU with two ops fewer, and the state dict is that of a plain Linear-GELU-Linear.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        u = F.linear(x, self.fc1.weight * _INV_SQRT2, self.fc1.bias * _INV_SQRT2)
        h = self.drop(u * (1.0 + torch.erf(u)))
        return self.drop(F.linear(h, self.fc2.weight * _INV_SQRT2, self.fc2.bias))


class GroupedLinear(nn.Module):
    """Independent linear maps per head, run as one batched matmul.

    The seed keeps a Python list of ``nn.Linear`` (one per head) and loops over it; that exports as
    one MatMul/Add/Reshape/Concat chain per head. Here the per-head weights are one ``[groups, in, out]``
    tensor, so ``x[..., groups, M, in] @ W`` is a single MatMul whatever the head count.
    """

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(groups, out_features))

    def forward(self, x: Tensor, out_scale: Tensor | float | None = None) -> Tensor:
        """``x``: [..., groups, M, in] -> [..., groups, M, out].

        ``out_scale`` multiplies the output; it is applied to the weights so that an export folds it
        into the initializer instead of adding a Mul on the activations.
        """
        weight, bias = self.weight, self.bias
        if out_scale is not None:
            weight, bias = weight * out_scale, bias * out_scale
        return x @ weight + bias.unsqueeze(-2)

    def extra_repr(self) -> str:
        g, i, o = self.weight.shape
        return f"groups={g}, in_features={i}, out_features={o}"


def split_heads(tokens: Tensor, heads: int) -> Tensor:
    """[B, M, D] -> [B, heads, M, D // heads] without reading B or M from the shape (and [M, D], tokens not yet
    broadcast over the batch, -> [heads, M, D // heads])."""
    return tokens.unflatten(-1, (heads, -1)).transpose(-3, -2)


def feature_heads(feature_map: Tensor, heads: int) -> Tensor:
    """[B, C, H, W] -> [B, heads, C // heads, H*W]: channels split into heads, pixels as the last axis."""
    return feature_map.flatten(2).unflatten(1, (heads, -1))


_NATIVE_SOFTMAX: ContextVar[bool] = ContextVar("native_softmax", default=False)
_NATIVE_GROUPED_CONV: ContextVar[bool] = ContextVar("native_grouped_conv", default=False)
_STACKED_TOKENS: ContextVar[bool] = ContextVar("stacked_tokens", default=False)


@contextmanager
def _flag_set(flag: ContextVar[bool]) -> Iterator[None]:
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def native_softmax() -> AbstractContextManager[None]:
    """Within this block :func:`softmax_over_short_axis` traces as one softmax op: for converters whose
    softmax runs on any axis as one kernel (Core ML), where the written-out form would only add ops."""
    return _flag_set(_NATIVE_SOFTMAX)


def native_grouped_conv() -> AbstractContextManager[None]:
    """Within this block a :class:`RepeatedDepthwise` (and the official lite bottleneck fed by copies of the stem,
    see :mod:`mfdeploy.model.official`) traces as the grouped conv it stands for: for converters that run such a
    conv as one kernel (Core ML), and for counting MAdds, where the layout for ONNX Runtime would only add ops."""
    return _flag_set(_NATIVE_GROUPED_CONV)


def onnx_runtime_layout(module: nn.Module) -> bool:
    """Whether ``module`` computes in the layout chosen for ONNX Runtime's CPU kernels: in eval (training needs
    the BatchNorms' batch statistics) and outside :func:`native_grouped_conv`. One predicate for every module
    that has such a layout, so that modules whose layouts feed each other (the official stem and lite
    bottleneck) switch together."""
    return not module.training and not _NATIVE_GROUPED_CONV.get()


def stacked_tokens() -> AbstractContextManager[None]:
    """Within this block the official family's tokens trace as ``[T, B, D]``, not flat ``[T*B, D]``: for
    converters whose linear layers take any rank (Core ML), where flat tokens only add a reshape to each
    block's token 0. Flat, ONNX gets a Gemm with its bias for every projection of the tokens."""
    return _flag_set(_STACKED_TOKENS)


def tokens_stacked() -> bool:
    """Whether :func:`stacked_tokens` is in effect."""
    return _STACKED_TOKENS.get()


def softmax_over_short_axis(logits: Tensor, dim: int) -> Tensor:
    """Softmax along ``dim``, a short axis that is not the last one (the tokens of a bridge), written out:
    ``e = exp(x - max x)``, ``e * (1 / sum e)``.

    ONNX Runtime's CPU Softmax normalises the last axis only; on another axis it transposes the tensor
    there and back, which for [B, heads, tokens, pixels] costs more than the exp itself. Written out, it
    is a max and a sum over the short axis and three elementwise ops, with the max keeping the exp within
    range in FP16 as a Softmax kernel does. The same function to float rounding, in training as in eval."""
    if _NATIVE_SOFTMAX.get():
        return logits.softmax(dim=dim)
    e = (logits - logits.amax(dim=dim, keepdim=True).detach()).exp()
    return e * e.sum(dim=dim, keepdim=True).reciprocal()


class DyReLU(nn.Module):
    """Dynamic ReLU, type B (per-channel), with its parameters computed from token 0.

    For each channel c the activation is ``max_j(a_j[c] * x + b_j[c])`` over k affine maps, with
    ``[a_1..a_k, b_1..b_k] = coefs * LN(MLP(token_0)) + consts`` (coefs ``[1.0]*k + [0.5]*k``,
    consts ``[1.0, 0, ..., 0]``, as in the seed). The seed builds a 5-D ``[H, W, B, C, k]`` tensor
    through permutes; here ``forward`` returns the 2k coefficients as ``[B, C, 1, 1]`` tensors and
    :func:`dyrelu` applies them as NCHW multiply-adds combined with elementwise Max, which every
    backend runs natively. Computing the coefficients once lets one block apply them twice.
    """

    def __init__(
        self,
        channels: int,
        token_dim: int,
        reduce: float,
        k: int = 2,
        coefs: Sequence[float] = (1.0, 0.5),
        consts: Sequence[float] = (1.0, 0.0),
    ) -> None:
        super().__init__()
        self.channels = channels
        self.k = k
        n_params = 2 * k * channels
        self.mlp = MLP(token_dim, int(token_dim / reduce), n_params)
        self.norm = nn.LayerNorm(n_params)
        per_param_coef = torch.tensor([coefs[0]] * k + [coefs[1]] * k)
        per_param_const = torch.tensor([consts[0]] + [consts[1]] * (2 * k - 1))
        # The seed's parameters are laid out [C, 2k], so the per-parameter constants tile C times.
        self.register_buffer("coef", per_param_coef.repeat(channels), persistent=False)
        self.register_buffer("const", per_param_const.repeat(channels), persistent=False)

    def forward(self, tokens: Tensor) -> tuple[Tensor, ...]:
        """Tokens [B, M, D] -> (a_1, ..., a_k, b_1, ..., b_k), each [B, C, 1, 1]."""
        hidden = self.mlp(tokens[:, 0])
        # coefs * LN(h) + consts == LN(h) with its affine parameters rescaled: folded at export.
        params = F.layer_norm(
            hidden,
            self.norm.normalized_shape,
            self.norm.weight * self.coef,
            self.norm.bias * self.coef + self.const,
            self.norm.eps,
        )
        return params.view(-1, self.channels, 2 * self.k, 1).split(1, dim=2)


def dyrelu(x: Tensor, coefficients: Sequence[Tensor]) -> Tensor:
    """Apply DyReLU to x [B, C, H, W]: the elementwise max of the k maps a_j * x + b_j."""
    k = len(coefficients) // 2
    maps = [x * coefficients[j] + coefficients[k + j] for j in range(k)]
    return reduce(torch.maximum, maps)


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
) -> nn.Sequential:
    """Conv2d without bias followed by BatchNorm2d.

    The seed gives these convs a (zero-initialised) bias; a bias in front of BatchNorm is redundant
    (BN's shift absorbs it) and only adds parameters, so it is left out.
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels)))


def folded_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """(weight, bias) of one conv or Linear computing ``bn(layer(x))``, with BatchNorm's running statistics (eval
    only); ``weight``'s first axis is the output channels, ``bias`` the layer's own (None: none)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean if bias is None else bias - bn.running_mean
    return weight * scale.reshape(-1, *[1] * (weight.ndim - 1)), shift * scale + bn.bias


def repeat_order(channels: int, multiplier: int) -> Tensor:
    """Channel ``k * channels + c`` of an input repeated ``multiplier`` times is channel ``c``; the grouped conv
    output it feeds is channel ``c * multiplier + k``: this index, for each channel in repeat order."""
    return torch.arange(channels * multiplier).view(channels, multiplier).t().reshape(-1)


NCHWC_WIDEST_BLOCK = 16  # channels per block of ONNX Runtime's NCHWc layout with AVX-512 (8 with AVX2)


class RepeatedDepthwise(nn.Module):
    """A conv with ``multiplier`` outputs per input channel (``groups`` = input channels) and its BatchNorm,
    run in eval as a depthwise conv over the input repeated ``multiplier`` times along the channels.

    ONNX Runtime's CPU layout optimiser (NCHWc) takes dense and depthwise convs, not a grouped conv with one
    input and several outputs per group: that runs as an im2col and a small GEMM per group, in NCHW, between
    two layout reorders. The repeat is a channel Concat, which stays in the blocked layout, and the depthwise
    conv computes each output from the same products. Only where the output channels fill whole NCHWc blocks
    on every x86 CPU (a multiple of :data:`NCHWC_WIDEST_BLOCK`): a depthwise conv left in NCHW does its
    im2col per channel, ``multiplier`` times the grouped conv's. Official 26m's to 214m's lite bottleneck (8 or
    12 channels x 2 or 3 = 24) is not repeated: it reads copies of the stem instead (see
    :class:`mfdeploy.model.official.LiteBottleneck`). Padding 26m's and 52m's with a fourth, zero-weight copy to
    32 channels (tried) kept everything blocked with AVX2's 8-channel blocks (stem and lite bottleneck 0.27
    against 0.33 ms at batch 1), but with AVX-512's 16 the Concat of 8-channel pieces runs in NCHW and the
    32-channel map at full resolution is reordered: official 52m, 2 threads, 0.97 against 0.76 of the official
    code's latency at batch 8, and slower at batch 1.

    The outputs then come in repeat order: channel ``j`` is the grouped conv's channel ``order[j]``. The
    consumer absorbs that into weights it already has (:meth:`channel_order`: the next 1x1 conv's input
    columns and the DyReLU coefficients, or the channel shuffle's index), so no op moves the channels back.
    In training (batch statistics) and under :func:`native_grouped_conv` it is the grouped conv itself, in
    the grouped conv's channel order. Parameters: ``conv`` and ``bn``, as :func:`conv_bn`'s.
    """

    def __init__(self, in_channels: int, multiplier: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        out_channels = in_channels * multiplier
        padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=in_channels, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.multiplier = multiplier
        self.repeatable = multiplier > 1 and out_channels % NCHWC_WIDEST_BLOCK == 0
        order = repeat_order(in_channels, multiplier)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("position", torch.argsort(order), persistent=False)

    def repeats(self) -> bool:
        return self.repeatable and onnx_runtime_layout(self)

    def channel_order(self) -> Tensor | None:
        """For each output channel, the grouped conv's channel it holds; None when they are in that order."""
        return self.order if self.repeats() else None

    def forward(self, x: Tensor) -> Tensor:
        if not self.repeats():
            return self.bn(self.conv(x))
        weight, bias = folded_batchnorm(self.conv.weight, self.conv.bias, self.bn)
        repeated = torch.cat([x] * self.multiplier, dim=1)
        return F.conv2d(
            repeated,
            weight.index_select(0, self.order),
            bias.index_select(0, self.order),
            self.conv.stride,
            self.conv.padding,
            groups=self.conv.out_channels,
        )

    def extra_repr(self) -> str:
        return f"multiplier={self.multiplier}, repeatable={self.repeatable}"


def conv_bn_reading(conv_bn_block: nn.Sequential, x: Tensor, order: Tensor | None) -> Tensor:
    """``conv_bn_block`` (a :func:`conv_bn`, groups 1) applied to the channels of ``x`` put in their original order,
    where ``x[:, j]`` holds original channel ``order[j]``: the conv's input columns are permuted instead."""
    if order is None:
        return conv_bn_block(x)
    conv = conv_bn_block.conv
    if conv.groups != 1:
        raise ValueError("a grouped conv cannot absorb a channel permutation")
    weight, bias = folded_batchnorm(conv.weight, conv.bias, conv_bn_block.bn)
    return F.conv2d(x, weight.index_select(1, order), bias, conv.stride, conv.padding, conv.dilation)
