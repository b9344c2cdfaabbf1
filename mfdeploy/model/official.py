"""The official Mobile-Former architecture (github AAboys/MobileFormer), re-implemented for deployment.

The official code is the only Mobile-Former with trained ImageNet checkpoints in public. This module computes
the same function (to float64 rounding) with the same parameters, written the way the rest of
:mod:`mfdeploy.model` is: no shape read at run time (a trace has no ``aten::size``/``aten::Int``), tokens a
``[T, D]`` parameter broadcast over the batch, every tensor of rank <= 4, and constants folded into weights
inside ``forward`` so that an export's constant folding leaves one initializer per projection:

- attention scales into the projection that makes the query (or, Former -> Mobile, the key);
- the hard-sigmoid affines: ``2 * hsig(z) = clip((z + 3) / 3, 0, 2)``, with ``/3`` and ``+3`` in the weights;
- BatchNorm1d of the classifier into its Linear (eval only: in training it normalises with batch statistics);
- GELU's ``1/sqrt2`` into the first FFN Linear and its ``sqrt2 / 2`` into the second (Erf without a Div);
- projections of the same input share one matmul: the bridge's query and gate, Former -> Mobile's key and value,
  the two hyper-MLPs' first layers that read token 0 of the same tokens;
- every projection a matrix product with a 2-D weight, heads split and merged by reshapes of the small token
  tensors: ONNX Runtime prepacks 2-D weights (a batched product with [heads, in, out] weights runs about twice
  as long), and the INT8 quantizer gives 2-D weights per-channel scales.

Five layouts are chosen for ONNX Runtime's CPU kernels (official 52m at 224 px, batch 1, 2 threads, against the
official code exported as it is: 0.85-0.90 -> 0.83-0.84 of its latency with AVX2, 0.84-0.90 with AVX-512; the
third one took 3-4% off our latency with one thread, less with two, the fourth about 4% at batch 1 and 17% at
batch 8 with AVX-512, the fifth about 2% at batch 8; see the README's Benchmarks):

- tokens are token-major, as in the official code, and flat: ``[T*B, D]``, row ``t*B + b``. The permutes
  that split and merge heads move the token axis behind the batch and head axes, which ONNX Runtime folds
  into the matmuls (FusedMatMul's transBatch; batch-major ``[B, T, D]`` left 4 Transpose ops in every Former
  and 2 in every bridge). Flat, every projection of the tokens is one Gemm with its bias: on ``[T, B, D]``
  with a dynamic batch it is a MatMul and an Add, which ONNX Runtime does not fuse (49 more nodes in an
  official 52m with a trained checkpoint's biases: 0.72 of the plain export's nodes instead of 0.67). The
  first bridge reads the learned ``[T, D]`` tokens as ``[T, 1, D]``, one set for the whole batch;
- a 3x3 conv with several outputs per input channel (the stride-2 blocks' second one, and the lite
  bottleneck's where its outputs fill whole 16-channel NCHWc blocks: 294m, 508m) runs as a depthwise conv over
  the repeated input (:class:`mfdeploy.model.layers.RepeatedDepthwise`), its channel order absorbed by the
  weights that read it. The stride-2 blocks' first such conv stays grouped: its input comes from a bridge in
  plain NCHW, and repeating it there costs more than the grouped conv;
- a block's hyper-MLPs end in one grouped 1x1 conv over their hidden units, a group per hyper-MLP, with the
  clip fused into it (:func:`dyrelu_coefficients`), instead of a matmul with a block-diagonal weight (half of
  it zeros). Its group width is odd, which keeps it out of the NCHWc layout.
- 26m's and 52m's stem writes its 8 channels twice (96m-214m: 12 channels and 4 zeros), and the lite bottleneck
  reads the 16: its grouped conv (8 or 12 -> 24) as two depthwise convs over them, its 1x1 conv as two partial
  convs, summed (:func:`stem_copies_width`, :class:`LiteBottleneck`). Stem and lite bottleneck then run in
  NCHWc from the image on; the grouped conv ran in NCHW, between two reorders of full-resolution maps.
- 52m's 12-channel stage (the lite bottleneck's output and blocks.0) is 16 channels wide, each bridge head's 6
  channels followed by 2 zero channels, which add nothing to any attention and stay zero through the block
  (:func:`padded_stage_width`); blocks.1 takes its 12 channels back with one Gather. With fewer than 16 input
  channels ONNX Runtime's NCHWc conv reads an NCHW copy of its input with a direct kernel, which ran blocks.0's
  first 1x1 conv at about a third of the pointwise kernel's rate.

26m's channel shuffles (the official code uses a 5-D view) are a Gather of the channels by a constant index.

Module names follow the seed family's stages (``stem``, ``lite_bneck``, ``blocks.N``, ``final_to_former``,
``channel_conv``, ``head``); ``blocks.N`` is the official ``features.N+1``. State dicts convert both ways with
:func:`from_official_state_dict` / :func:`to_official_state_dict` (a 1:1 renaming: every parameter keeps its
official shape), and :func:`identify_official` tells which size an official-keyed or mapped state dict is.

Public: :class:`OfficialMobileFormer`, :func:`build_official_model`, :func:`from_official_state_dict`,
:func:`to_official_state_dict`, :func:`identify_official` (and the configs re-exported from
:mod:`mfdeploy.model.official_config`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfdeploy.errors import UserError
from mfdeploy.model.layers import (
    NCHWC_WIDEST_BLOCK,
    DropPath,
    RepeatedDepthwise,
    conv_bn,
    conv_bn_reading,
    feature_heads,
    folded_batchnorm,
    onnx_runtime_layout,
    repeat_order,
    softmax_over_short_axis,
    tokens_stacked,
)
from mfdeploy.model.official_config import (
    OFFICIAL_CONFIGS,
    OFFICIAL_SIZES,
    OfficialBlock,
    OfficialConfig,
    get_official_config,
)

__all__ = [
    "OFFICIAL_CONFIGS",
    "OFFICIAL_SIZES",
    "OfficialConfig",
    "OfficialMobileFormer",
    "build_official_model",
    "from_official_state_dict",
    "get_official_config",
    "identify_official",
    "to_official_state_dict",
]

_INV_SQRT2 = 0.5**0.5


def _hsig2(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Weights such that ``clip(x W^T + b, 0, 2)`` is ``2 * hsig(x W^T + b)`` of the original weights."""
    return weight / 3.0, (bias + 3.0) / 3.0


def token_heads(tokens: Tensor, num_tokens: int, heads: int, head_dim: int, transposed: bool = False) -> Tensor:
    """Token-major tokens, flat ``[T*B, heads*d]`` (or ``[T, 1, heads*d]``), -> [B, heads, T, d] (``transposed``:
    [B, heads, d, T]).

    Tokens are kept token-major, as the official code keeps them: ONNX Runtime folds this permute of the
    leading token axis behind the batch and head axes into the matmul that reads it (FusedMatMul's
    transBatch), where a batch-major [B, T, D] needs a Transpose op for each split and merge of heads."""
    split = tokens.reshape(num_tokens, -1, heads, head_dim)
    return split.permute(1, 2, 3, 0) if transposed else split.permute(1, 2, 0, 3)


def merge_token_heads(per_head: Tensor, num_tokens: int, channels: int, stacked: bool) -> Tensor:
    """[B, heads, T, d] -> token-major, flat [T*B, heads * d] or ``stacked`` [T, B, heads * d]."""
    merged = per_head.permute(2, 0, 1, 3)
    return merged.reshape(num_tokens, -1, channels) if stacked else merged.reshape(-1, channels)


def first_token(tokens: Tensor, num_tokens: int, token_dim: int) -> Tensor:
    """Token 0 of token-major tokens, flat [T*B, D] (or [T, B, D] under :func:`stacked_tokens`): [B, D]."""
    return tokens[0] if tokens_stacked() else tokens.reshape(num_tokens, -1, token_dim)[0]


def _shuffle_index(channels: int, groups: int) -> Tensor:
    """Gather index of the official ChannelShuffle: output channel j*groups + i is input channel i*(C/groups) + j
    (the order of a repeat: see :func:`mfdeploy.model.layers.repeat_order`)."""
    return repeat_order(groups, channels // groups)


class ChannelShuffle(nn.Module):
    """The official channel shuffle as one Gather of channels (rank 4; the official view is 5-D)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.register_buffer("index", _shuffle_index(channels, groups), persistent=False)

    def forward(self, x: Tensor, position: Tensor | None = None) -> Tensor:
        """``position``: where each original channel is in ``x`` when x holds them permuted (a
        :class:`RepeatedDepthwise`'s repeat order); the shuffle then gathers from there, in one op."""
        index = self.index if position is None else position.index_select(0, self.index)
        return x.index_select(1, index)

    def extra_repr(self) -> str:
        return f"channels={self.index.numel()}, groups={self.groups}"


def _maybe_shuffle(channels: int, groups: int, enabled: bool) -> nn.Module:
    return ChannelShuffle(channels, groups) if enabled else nn.Identity()


def _order_left(conv: RepeatedDepthwise, shuffle: nn.Module) -> Tensor | None:
    """The channel order of ``conv``'s output that the DyReLU and the 1x1 conv after ``shuffle`` must absorb:
    none when the shuffle (26m) absorbs it, or when the conv runs in the official order."""
    return None if isinstance(shuffle, ChannelShuffle) else conv.channel_order()


def _shuffled(shuffle: nn.Module, conv: RepeatedDepthwise, y: Tensor) -> Tensor:
    """``shuffle`` applied to ``conv``'s output ``y``, gathering from the repeat order when y is in it."""
    if isinstance(shuffle, ChannelShuffle):
        return shuffle(y, conv.position if conv.channel_order() is not None else None)
    return shuffle(y)


class HyperMLP(nn.Module):
    """A DyReLU's hyper-MLP on token 0: D -> D/4 (ReLU) -> 2C, hard sigmoid. Run by its block (see
    :func:`dyrelu_coefficients`), which merges the first layers of the block's hyper-MLPs into one matmul."""

    def __init__(self, token_dim: int, hidden: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(token_dim, hidden)
        self.fc2 = nn.Linear(hidden, 2 * channels)


def hyper_group_width(hypers: Sequence[HyperMLP]) -> int:
    """Outputs per group of the hyper-MLPs' second layers run as one grouped 1x1 conv (see
    :func:`dyrelu_coefficients`): the widest ``2C``, plus one zero row to make it odd.

    An odd group width keeps the conv out of ONNX Runtime's NCHWc layout, which takes only whole blocks of 8 or
    16 output channels: there the [B, 2C, 1, 1] coefficients would be reordered in and out for every block."""
    return max(2 * h.channels for h in hypers) + 1


def hyper_offset(hypers: Sequence[HyperMLP]) -> Tensor:
    """0 on the a1 halves (and on the padding) and -1 on the a2 halves of the hyper-MLPs' outputs, [n*width, 1, 1]."""
    width = hyper_group_width(hypers)
    parts = [
        torch.cat([torch.zeros(h.channels), -torch.ones(h.channels), torch.zeros(width - 2 * h.channels)])
        for h in hypers
    ]
    return torch.cat(parts)[:, None, None]


def dyrelu_coefficients(
    token0: Tensor,
    hypers: Sequence[HyperMLP],
    offset: Tensor,
    orders: Sequence[Tensor | None] | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """(a1, a2) per hyper-MLP, each [B, C, 1, 1], for ``max(x * a1, x * a2)``; ``offset`` from :func:`hyper_offset`.
    ``orders``: per hyper-MLP, None or the channel order of the feature map it acts on (a
    :class:`RepeatedDepthwise`'s), applied to fc2's rows so that the coefficients come in that order.

    Official: ``a = hsig(fc2(relu(fc1(t0))))``, ``a1 = 2 a[:C]``, ``a2 = 2 a[C:] - 1``. With ``c = 2 a`` it is one
    ``clip(u, 0, 2)`` with the affine folded into fc2, then ``-1`` on the second halves. All of a block's hyper-MLPs
    run as one chain: their first layers read the same token, so their weights are stacked into one matmul;
    their second layers read different parts of its output, so they are one grouped 1x1 conv over it, group i
    being hyper-MLP i, each group :func:`hyper_group_width` wide (the rows past ``2C`` are zeros), with the clip
    fused into it. A matmul with the groups' weights as a block-diagonal matrix computes the same, but reads
    twice the weights (the zero blocks) and ran 3-4% slower in the official 52m (ONNX Runtime, batch 1, one
    thread; less with two, where both forms split over the threads)."""
    w1 = torch.cat([h.fc1.weight for h in hypers])
    b1 = torch.cat([h.fc1.bias for h in hypers])
    hidden = F.relu(F.linear(token0, w1, b1))[..., None, None]  # [B, n * hidden, 1, 1]
    width = hyper_group_width(hypers)
    weights, biases, sizes = [], [], []
    for h, order in zip(hypers, orders or [None] * len(hypers)):
        w2, b2 = h.fc2.weight / 3.0, (h.fc2.bias + 3.0) / 3.0
        if order is not None:  # both halves (a1, a2) in the feature map's channel order
            both = torch.cat([order, order + h.channels])
            w2, b2 = w2.index_select(0, both), b2.index_select(0, both)
        pad = width - 2 * h.channels
        weights += [w2, w2.new_zeros(pad, h.fc2.in_features)]
        biases += [b2, b2.new_zeros(pad)]
        sizes += [h.channels, h.channels, pad]
    weight = torch.cat(weights)[..., None, None]  # [n * width, hidden, 1, 1]
    c = F.conv2d(hidden, weight, torch.cat(biases), groups=len(hypers)).clamp(0.0, 2.0) + offset
    parts = c.split(sizes, dim=1)
    return [(parts[3 * i], parts[3 * i + 1]) for i in range(len(hypers))]


def dyrelu(x: Tensor, coefficients: tuple[Tensor, Tensor]) -> Tensor:
    """The official DyReLU (two slopes, no intercepts): ``max(x * a1, x * a2)``."""
    a1, a2 = coefficients
    return torch.maximum(x * a1, x * a2)


class ToFormer(nn.Module):
    """Mobile -> Former (official ``Local2Global``): the tokens attend to the pixels, gated, post-norm.

    ``q = Wq t`` in 2 heads, k = v = the feature map's channels of each head; ``z = softmax(q k^T / sqrt(C/2)) v``;
    ``t = LN(t + proj(z * 2 hsig(Wg t)))``. q and gate are one matmul; the scale and the gate's affine are in it.
    """

    def __init__(
        self,
        channels: int,
        num_tokens: int,
        token_dim: int,
        heads: int = 2,
        drop_path: float = 0.0,
        learned_tokens: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.heads = heads
        # the first bridge reads the learned [T, D] tokens, one set for the whole batch
        self.learned_tokens = learned_tokens
        self.scale = (channels // heads) ** -0.5
        self.gate = nn.Linear(token_dim, channels)  # official alpha.0
        self.q = nn.Linear(token_dim, channels)
        self.proj = nn.Linear(channels, token_dim)
        self.norm = nn.LayerNorm(token_dim)
        self.drop_path = DropPath(drop_path)
        self.width: int | None = None  # the padded layout, see _BridgedBlock.take_padded_input

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        h = self.heads
        wg, bg = _hsig2(self.gate.weight, self.gate.bias)
        wq, bq, wp, channels = self.q.weight * self.scale, self.q.bias * self.scale, self.proj.weight, self.channels
        if reads_padded(self):  # q and gate rows, proj columns at the padded channels (zeros at the others)
            pad = self.padding
            wq, bq, wg, bg = pad @ wq, padded_vector(self, bq), pad @ wg, padded_vector(self, bg)
            wp, channels = wp @ pad.t(), self.width
        projected = F.linear(tokens, torch.cat([wq, wg]), torch.cat([bq, bg]))
        q, gate = projected.split(channels, dim=-1)
        kv = feature_heads(x, h)  # [B, h, d, L]
        attn = (token_heads(q, self.num_tokens, h, channels // h) @ kv).softmax(dim=-1)  # [B, h, T, L]
        z = attn @ kv.transpose(-1, -2)  # [B, h, T, d]
        # the learned [T, D] tokens: one set for the whole batch, broadcast as [T, 1, D] against a stacked
        # [T, B, D] result, flattened afterwards where the tokens are flat
        stacked = self.learned_tokens or tokens_stacked()
        z = merge_token_heads(z, self.num_tokens, channels, stacked)  # the heads concatenated
        if self.learned_tokens:
            gate, tokens = gate[:, None], tokens[:, None]
        z = F.linear(z * gate.clamp(0.0, 2.0), wp, self.proj.bias)
        tokens = self.norm(tokens + self.drop_path(z))
        return tokens.reshape(-1, self.token_dim) if self.learned_tokens and not tokens_stacked() else tokens


class Former(nn.Module):
    """The Former (official ``GlobalBlock``): 4-head self-attention with k = v = the tokens, post-norm, then a
    post-norm GELU FFN (D -> 2D -> D). Drop path on the attention branch only, as in the official code."""

    def __init__(
        self, num_tokens: int, token_dim: int, heads: int = 4, ffn_ratio: int = 2, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.heads = heads
        self.scale = (token_dim // heads) ** -0.5
        self.ffn = nn.Sequential()  # official ffn.0 / ffn.2: named fc1 / fc2 here
        self.ffn.add_module("fc1", nn.Linear(token_dim, token_dim * ffn_ratio))
        self.ffn.add_module("fc2", nn.Linear(token_dim * ffn_ratio, token_dim))
        self.ffn_norm = nn.LayerNorm(token_dim)
        self.q = nn.Linear(token_dim, token_dim)
        self.proj = nn.Linear(token_dim, token_dim)  # official channel_mlp
        self.norm = nn.LayerNorm(token_dim)  # official layer_norm
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: Tensor) -> Tensor:
        t, h, d = self.num_tokens, self.heads, self.token_dim // self.heads
        q = token_heads(F.linear(tokens, self.q.weight * self.scale, self.q.bias * self.scale), t, h, d)
        k = token_heads(tokens, t, h, d, transposed=True)  # [B, h, d, T]; v = k^T
        attn = (q @ k).softmax(dim=-1)
        z = merge_token_heads(attn @ k.transpose(-1, -2), t, self.token_dim, tokens_stacked())
        z = F.linear(z, self.proj.weight, self.proj.bias)
        tokens = self.norm(tokens + self.drop_path(z))
        # exact GELU: x/2 (1 + erf(x/sqrt2)) = u (1 + erf(u)) / sqrt2 with u = x/sqrt2
        fc1, fc2 = self.ffn.fc1, self.ffn.fc2
        u = F.linear(tokens, fc1.weight * _INV_SQRT2, fc1.bias * _INV_SQRT2)
        y = F.linear(u * (1.0 + torch.erf(u)), fc2.weight * _INV_SQRT2, fc2.bias)
        return self.ffn_norm(tokens + y)


class ToMobile(nn.Module):
    """Former -> Mobile (official ``Global2Local``): the pixels attend to the tokens; ``x + attn v``.

    q = the feature map's channels per head (2 heads), ``k = Wk t``, ``v = Wv t``, one matmul for both with the
    scale in k. The logits are built as ``k q`` ([T, L] per head) and normalised over the tokens, which is the
    same attention without transposing the pixels (the softmax written out: see softmax_over_short_axis). k and
    v are split after one permute of both: ONNX Runtime could fold separate permutes into its matmuls, but a
    Core ML program would then have a transpose more per block, and ONNX Runtime was no faster that way.
    """

    def __init__(self, channels: int, num_tokens: int, token_dim: int, heads: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        self.channels = channels
        self.num_tokens = num_tokens
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.k = nn.Linear(token_dim, channels)
        self.v = nn.Linear(token_dim, channels)  # official proj
        self.drop_path = DropPath(drop_path)
        self.width: int | None = None  # the padded layout, see _BridgedBlock.take_padded_input

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        h = self.heads
        wk, bk, wv, bv = self.k.weight * self.scale, self.k.bias * self.scale, self.v.weight, self.v.bias
        channels = self.channels
        if reads_padded(self):  # k and v rows at the padded channels: zeros there add nothing, and stay zero
            pad = self.padding
            wk, bk, wv, bv = pad @ wk, padded_vector(self, bk), pad @ wv, padded_vector(self, bv)
            channels = self.width
        kv = F.linear(tokens, torch.cat([wk, wv]), torch.cat([bk, bv]))
        k, v = token_heads(kv, self.num_tokens, 2 * h, channels // h).split(h, dim=-3)  # [B, h, T, d] each
        q = feature_heads(x, self.heads)  # [B, h, d, L]
        attn = softmax_over_short_axis(k @ q, dim=-2)  # [B, h, T, L], normalised over the tokens
        z = (v.transpose(-1, -2) @ attn).flatten(1, 2).reshape_as(x)
        return x + self.drop_path(z)


def stem_copies_width(stem_channels: int, lite: OfficialBlock) -> int | None:
    """How many channels the deployed stem writes for the lite bottleneck (its own channels repeated, then zeros,
    up to whole 16-channel NCHWc blocks), or None where the lite bottleneck reads the stem as it is.

    Only where the lite bottleneck's conv (several outputs per input channel) would otherwise stay a grouped conv
    in NCHW, between reorders of full-resolution maps (its outputs fill no whole 16-channel block, see
    :class:`RepeatedDepthwise`): 26m and 52m (8 channels) write 16, two copies; 96m, 151m and 214m (12) write 16,
    one copy and 4 zeros, which ONNX Runtime's NCHWc conv computes anyway. 294m and 508m repeat in whole
    blocks already (508m with copies of the stem measured no faster: its residual costs a 1x1 conv more)."""
    if lite.e1 < 2 or (stem_channels * lite.e1) % NCHWC_WIDEST_BLOCK == 0:
        return None
    return -(-stem_channels // NCHWC_WIDEST_BLOCK) * NCHWC_WIDEST_BLOCK


def _copy_sources(channels: int, multiplier: int, width: int) -> Tensor:
    """For each depthwise conv over the stem's copies (see :class:`LiteBottleneck`), for each of its ``width``
    channels: the grouped conv's output channel it computes (``c * multiplier + k``), or ``channels * multiplier``
    (a zero filter) where it computes none. Copy ``p`` of the stem in conv ``t`` computes output ``k = t*copies + p``
    of each channel."""
    copies = width // channels
    zero = channels * multiplier
    rows = []
    for first in range(0, multiplier, copies):
        row = []
        for slot in range(width):
            copy, channel = divmod(slot, channels)
            k = first + copy
            row.append(channel * multiplier + k if copy < copies and k < multiplier else zero)
        rows.append(row)
    return torch.tensor(rows)


def _dense_pointwise(weight: Tensor, conv: nn.Conv2d) -> Tensor:
    """A grouped 1x1 conv's weight ``[O, C/groups, 1, 1]`` as the dense conv's ``[O, C, 1, 1]``, zeros outside the
    groups (shapes from ``conv``'s attributes: a trace reads no tensor's size)."""
    groups = conv.groups
    if groups == 1:
        return weight
    rows, per_in, per_out = [], conv.in_channels // groups, conv.out_channels // groups
    for g, block in enumerate(weight.chunk(groups)):
        before = block.new_zeros(per_out, g * per_in, 1, 1)
        after = block.new_zeros(per_out, (groups - 1 - g) * per_in, 1, 1)
        rows.append(torch.cat([before, block, after], dim=1))
    return torch.cat(rows)


def padded_stage_width(cfg: OfficialConfig) -> int | None:
    """The width the deployed graph gives the lite bottleneck's output and the stride-1 blocks that keep it
    (:func:`padded_positions`), or None where they keep their own width.

    Only where that width is under one 16-channel NCHWc block and the first block is a stride-1 DnaBlock with a
    dense first 1x1 conv (official 52m: 12 channels). ONNX Runtime runs a conv with fewer than 16 input
    channels with its NCHWc kernel for NCHW inputs, a direct conv that ran blocks.0's 1x1 conv at about a third
    of the pointwise kernel's rate, after a reorder of the lite bottleneck's output. With 16 channels, 4 of
    them zero, the conv reads the lite bottleneck's blocked output with the pointwise kernel. 26m's first 1x1
    conv is grouped (and shuffled), so it stays as it is; 96m-214m begin with a stride-2 block, whose grouped
    conv runs in NCHW either way."""
    first = cfg.blocks[0]
    channels = cfg.lite.out_channels
    if (
        stem_copies_width(cfg.stem_channels, cfg.lite) is None  # the lite bottleneck pads in its copies form
        or channels >= NCHWC_WIDEST_BLOCK
        or cfg.pointwise_groups != 1
        or first.kind != "DnaBlock"
        or first.stride != 1
        or first.out_channels != channels
        or channels % cfg.bridge_heads
    ):
        return None
    return NCHWC_WIDEST_BLOCK


def padded_positions(channels: int, heads: int, width: int) -> Tensor:
    """Where each of ``channels`` channels sits in a padded map ``width`` wide: each bridge head's channels
    first, then that head's zero channels ([6 real, 2 zero, 6 real, 2 zero] for 12 in 16), so that splitting
    the padded map into heads gives each head its own channels and zeros, which add nothing to any attention."""
    real, padded = channels // heads, width // heads
    return torch.tensor([h * padded + i for h in range(heads) for i in range(real)])


def padding_matrix(channels: int, heads: int, width: int) -> Tensor:
    """[width, channels], 1 where padded channel p holds channel c (:func:`padded_positions`): ``P @ w`` moves
    a weight's rows to the padded positions, ``w @ P.T`` its columns, with zeros elsewhere, exactly."""
    matrix = torch.zeros(width, channels)
    matrix[padded_positions(channels, heads, width), torch.arange(channels)] = 1.0
    return matrix


def _padding(module: nn.Module, channels: int, heads: int, width: int | None) -> None:
    """Give ``module`` the padded layout ``width`` wide (None: none): ``module.width``, its padding matrix (for
    weights) and, per padded channel, the channel it holds or ``channels`` where it is zero (for biases)."""
    module.width = width
    if width is not None:
        module.register_buffer("padding", padding_matrix(channels, heads, width), persistent=False)
        sources = torch.full((width,), channels)
        sources[padded_positions(channels, heads, width)] = torch.arange(channels)
        module.register_buffer("padding_sources", sources, persistent=False)


def padded_vector(module: nn.Module, vector: Tensor) -> Tensor:
    """A bias at ``module``'s padded positions, zeros between (a gather, so that every MatMul keeps 2-D weights)."""
    return torch.cat([vector, vector.new_zeros(1)]).index_select(0, module.padding_sources)


def reads_padded(module: nn.Module) -> bool:
    """Whether ``module`` computes on the padded layout (:func:`padded_stage_width`): in ONNX Runtime's layout only,
    like the stem's copies, so that training, Core ML and MAdds see the channels as they are."""
    return module.width is not None and onnx_runtime_layout(module)


class Stem(nn.Module):
    """3x3 stride-2 conv, BatchNorm, ReLU6.

    With ``width`` (:func:`stem_copies_width`), in eval the stem writes ``width`` channels for the lite bottleneck:
    its channels ``width // C`` times over, then zeros, from one conv with the weights stacked. In ONNX Runtime's
    NCHWc layout with AVX-512 the conv computes a whole 16-channel block for 8 channels anyway; what the copies buy
    is a lite bottleneck of depthwise convs in that layout (see :class:`LiteBottleneck`). Training and
    :func:`~mfdeploy.model.layers.native_grouped_conv` (Core ML, MAdds) get the stem as it is."""

    def __init__(self, in_chans: int, out_channels: int, width: int | None = None) -> None:
        super().__init__()
        self.conv_bn = conv_bn(in_chans, out_channels, 3, stride=2, padding=1)
        self.act = nn.ReLU6()
        self.width = width

    def writes_copies(self) -> bool:
        return self.width is not None and onnx_runtime_layout(self)

    def forward(self, x: Tensor) -> Tensor:
        if not self.writes_copies():
            return self.act(self.conv_bn(x))
        conv = self.conv_bn.conv
        weight, bias = folded_batchnorm(conv.weight, None, self.conv_bn.bn)
        copies, zeros = divmod(self.width, conv.out_channels)
        weight = torch.cat([weight] * copies + [weight.new_zeros(zeros, conv.in_channels, *conv.kernel_size)])
        bias = torch.cat([bias] * copies + [bias.new_zeros(zeros)])
        return self.act(F.conv2d(x, weight, bias, conv.stride, conv.padding))


class LiteBottleneck(nn.Module):
    """Official ``features.0`` ("conv alone"): dw 3x3 with multiplier e1 -> BN -> ReLU6 -> [shuffle] -> 1x1
    (grouped) -> BN, plus the input when the shape is kept.

    With ``stem_width`` (:func:`stem_copies_width`: official 26m-214m), in eval it reads the stem's copies: the
    grouped conv as depthwise convs over the copied channels (26m/52m: 8 channels -> 24 as two depthwise convs
    over 16, two outputs of each channel per conv; a zero filter where a fourth would be, or on the zero
    channels), and the 1x1 conv, with its groups and the shuffle in a dense weight, as one partial 1x1 conv per
    depthwise conv, summed; the residual (96m-214m) is one more partial 1x1 conv, of the stem's first copy.
    ONNX Runtime runs all of it in NCHWc, with the sums inside the convs; the grouped conv ran in NCHW as an
    im2col and a small GEMM per group, between two layout reorders of full-resolution maps (ONNX Runtime, 2
    threads: the whole official 52m 0.83 of its latency at batch 8, 96m 0.95 at batch 1; see the README's
    Benchmarks). After :meth:`pad_output` (:func:`padded_stage_width`: 52m) those partial convs write the output
    padded, its rows at :func:`padded_positions` and zero channels between."""

    def __init__(self, in_channels: int, spec: OfficialBlock, groups: int, stem_width: int | None = None) -> None:
        super().__init__()
        hidden = in_channels * spec.e1
        self.dw = RepeatedDepthwise(in_channels, spec.e1, 3, spec.stride)
        self.act = nn.ReLU6()
        self.shuffle = _maybe_shuffle(hidden, in_channels, groups > 1)
        self.pw = conv_bn(hidden, spec.out_channels, 1, groups=groups)
        self.identity = spec.stride == 1 and in_channels == spec.out_channels
        self.stem_width = stem_width
        self.width: int | None = None  # its output padded: see pad_output
        if stem_width is not None:
            self.register_buffer("copy_sources", _copy_sources(in_channels, spec.e1, stem_width), persistent=False)
            if isinstance(self.shuffle, ChannelShuffle):  # the 1x1 conv's input j is the dw conv's channel index[j]
                self.register_buffer("unshuffle", torch.argsort(self.shuffle.index), persistent=False)

    def reads_copies(self) -> bool:
        return self.stem_width is not None and onnx_runtime_layout(self)

    def pad_output(self, width: int | None, heads: int) -> None:
        """Write the output padded to ``width`` channels (:func:`padded_stage_width`), in the copies form only."""
        if width is not None:
            if self.stem_width is None:
                raise ValueError("only a lite bottleneck that reads the stem's copies writes a padded output")
            _padding(self, self.pw.conv.out_channels, heads, width)

    def forward(self, x: Tensor) -> Tensor:
        if self.reads_copies():
            return self._from_stem_copies(x)
        h = _shuffled(self.shuffle, self.dw, self.act(self.dw(x)))
        out = conv_bn_reading(self.pw, h, _order_left(self.dw, self.shuffle))
        return out + x if self.identity else out

    def _from_stem_copies(self, copies: Tensor) -> Tensor:
        """The lite bottleneck on the stem's copies ([B, stem_width, H, W]); see the class docstring."""
        dw, pw = self.dw.conv, self.pw.conv
        w_dw, b_dw = folded_batchnorm(dw.weight, None, self.dw.bn)  # rows in the grouped conv's channel order
        w_pw, b_pw = folded_batchnorm(pw.weight, None, self.pw.bn)
        w_pw = _dense_pointwise(w_pw, pw)
        if isinstance(self.shuffle, ChannelShuffle):
            w_pw = w_pw.index_select(1, self.unshuffle)
        # a zero row (a zero column of the 1x1 conv) at index C*e1 for the slots that compute nothing
        w_dw = torch.cat([w_dw, w_dw.new_zeros(1, 1, *dw.kernel_size)])
        b_dw = torch.cat([b_dw, b_dw.new_zeros(1)])
        w_pw = torch.cat([w_pw, w_pw.new_zeros(pw.out_channels, 1, 1, 1)], dim=1)
        padded = reads_padded(self)
        if padded:  # the output channels at their padded positions, zero channels between
            w_pw, b_pw = (self.padding @ w_pw.flatten(1))[..., None, None], padded_vector(self, b_pw)
        out = None
        for sources in self.copy_sources.unbind(0):
            h = F.conv2d(
                copies,
                w_dw.index_select(0, sources),
                b_dw.index_select(0, sources),
                dw.stride,
                dw.padding,
                groups=self.stem_width,
            )
            part = F.conv2d(self.act(h), w_pw.index_select(1, sources), b_pw if out is None else None)
            out = part if out is None else out + part
        if self.identity:  # the stem's own channels, its first copy, as one more partial 1x1 conv: x * 1
            eye = torch.eye(pw.out_channels, self.stem_width, dtype=w_pw.dtype, device=w_pw.device)
            out = out + F.conv2d(copies, (self.padding @ eye if padded else eye)[..., None, None])
        return out


class _BridgedBlock(nn.Module):
    """What both official blocks share: tokens updated first (ToFormer, Former), the convs, then ToMobile."""

    def _bridges(self, in_channels: int, out_channels: int, cfg: OfficialConfig, drop_path: float, first: bool) -> None:
        self.to_former = ToFormer(in_channels, cfg.num_tokens, cfg.token_dim, cfg.bridge_heads, drop_path, first)
        self.former = Former(cfg.num_tokens, cfg.token_dim, cfg.num_heads, cfg.ffn_ratio, drop_path)
        self.to_mobile = ToMobile(out_channels, cfg.num_tokens, cfg.token_dim, cfg.bridge_heads, drop_path)
        self.token_shape = (cfg.num_tokens, cfg.token_dim)
        self.drop_path = DropPath(drop_path)
        self.width: int | None = None  # see take_padded_input
        self.input_width: int | None = None

    def keeps_padded_layout(self) -> bool:
        """Whether this block can compute on a padded input and write its output padded the same way."""
        return False

    def take_padded_input(self, width: int | None) -> int | None:
        """Its input comes ``width`` wide (:func:`padded_stage_width`; None: as it is). A block that
        :meth:`keeps_padded_layout` computes on the padded layout, input and output; any other takes its own
        channels out of the input first (:meth:`unpadded`). Returns the width of its output (None: as it is)."""
        if width is None:
            return None
        channels, heads = self.to_former.channels, self.to_former.heads
        if self.keeps_padded_layout():
            for module in (self, self.to_former, self.to_mobile):
                _padding(module, channels, heads, width)
            return width
        self.input_width = width
        self.register_buffer("input_positions", padded_positions(channels, heads, width), persistent=False)
        return None

    def unpadded(self, x: Tensor) -> Tensor:
        """``x``'s own channels, where it comes padded and this block computes on the channels as they are (one
        Gather; ONNX Runtime layout only, see :func:`reads_padded`)."""
        if self.input_width is not None and onnx_runtime_layout(self):
            return x.index_select(1, self.input_positions)
        return x

    def token0(self, tokens: Tensor) -> Tensor:
        """Token 0 of the block's flat tokens, the hyper-MLPs' input: [B, D]."""
        return first_token(tokens, *self.token_shape)


class DnaBlock3(_BridgedBlock):
    """Official stride-2 block: dw 3x3 (e1, stride) -> DyReLU -> pw -> dw 3x3 (e2) -> DyReLU -> pw, plus the inner
    residual from the first pw; then ToMobile."""

    def __init__(
        self, in_channels: int, spec: OfficialBlock, cfg: OfficialConfig, drop_path: float = 0.0, first: bool = False
    ) -> None:
        super().__init__()
        oup, groups = spec.out_channels, cfg.pointwise_groups
        hidden1, hidden2 = in_channels * spec.e1, oup * spec.e2
        squeeze = cfg.token_dim // cfg.hyper_reduction
        shuffle = groups > 1
        self.conv1 = conv_bn(in_channels, hidden1, 3, stride=spec.stride, padding=1, groups=in_channels)
        self.shuffle1 = _maybe_shuffle(hidden1, in_channels, shuffle)
        self.hyper1 = HyperMLP(cfg.token_dim, squeeze, hidden1)
        self.conv2 = conv_bn(hidden1, oup, 1, groups=groups)
        self.conv3 = RepeatedDepthwise(oup, spec.e2, 3)
        self.shuffle3 = _maybe_shuffle(hidden2, oup, shuffle)
        self.hyper3 = HyperMLP(cfg.token_dim, squeeze, hidden2)
        self.conv4 = conv_bn(hidden2, oup, 1, groups=groups)
        self._bridges(in_channels, oup, cfg, drop_path, first)
        self.register_buffer("hyper_offset", hyper_offset((self.hyper1, self.hyper3)), persistent=False)
        self.identity = spec.stride == 1 and in_channels == oup

    def forward(self, x: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        x = self.unpadded(x)
        tokens = self.former(self.to_former(x, tokens))
        order3 = _order_left(self.conv3, self.shuffle3)
        c1, c3 = dyrelu_coefficients(self.token0(tokens), (self.hyper1, self.hyper3), self.hyper_offset, (None, order3))
        h = self.conv2(dyrelu(self.shuffle1(self.conv1(x)), c1))
        y = dyrelu(_shuffled(self.shuffle3, self.conv3, self.conv3(h)), c3)
        out = self.drop_path(conv_bn_reading(self.conv4, y, order3)) + h
        out = self.to_mobile(out, tokens)
        return (out + x if self.identity else out), tokens


class DnaBlock(_BridgedBlock):
    """Official stride-1 block: pw (e1) -> DyReLU -> dw 3x3 -> DyReLU -> pw, plus the input when the shape is
    kept, then ToMobile (after the skip)."""

    def __init__(
        self, in_channels: int, spec: OfficialBlock, cfg: OfficialConfig, drop_path: float = 0.0, first: bool = False
    ) -> None:
        super().__init__()
        oup, groups = spec.out_channels, cfg.pointwise_groups
        hidden = in_channels * spec.e1
        squeeze = cfg.token_dim // cfg.hyper_reduction
        shuffle = groups > 1
        self.conv1 = conv_bn(in_channels, hidden, 1, groups=groups)
        self.shuffle1 = _maybe_shuffle(hidden, groups, shuffle)
        self.hyper1 = HyperMLP(cfg.token_dim, squeeze, hidden)
        self.conv2 = conv_bn(hidden, hidden, 3, stride=spec.stride, padding=1, groups=hidden)
        self.hyper2 = HyperMLP(cfg.token_dim, squeeze, hidden)
        self.conv3 = conv_bn(hidden, oup, 1, groups=groups)
        self.shuffle3 = _maybe_shuffle(oup, groups, shuffle)
        self._bridges(in_channels, oup, cfg, drop_path, first)
        self.register_buffer("hyper_offset", hyper_offset((self.hyper1, self.hyper2)), persistent=False)
        self.identity = spec.stride == 1 and in_channels == oup

    def forward(self, x: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        x = self.unpadded(x)
        tokens = self.former(self.to_former(x, tokens))
        c1, c2 = dyrelu_coefficients(self.token0(tokens), (self.hyper1, self.hyper2), self.hyper_offset)
        if reads_padded(self):
            h = self.shuffle3(self._padded_conv3(dyrelu(self.conv2(dyrelu(self._padded_conv1(x), c1)), c2)))
        else:
            h = dyrelu(self.shuffle1(self.conv1(x)), c1)
            h = self.shuffle3(self.conv3(dyrelu(self.conv2(h), c2)))
        if self.identity:
            h = self.drop_path(h) + x
        return self.to_mobile(h, tokens), tokens

    def keeps_padded_layout(self) -> bool:
        """Stride 1, its own width kept, dense 1x1 convs (no shuffle): conv1's columns and conv3's rows pad."""
        return self.identity and isinstance(self.shuffle1, nn.Identity)

    def _padded_conv1(self, x: Tensor) -> Tensor:
        """conv1 (dense 1x1) reading the padded input: its columns at the padded channels, zeros at the others."""
        weight, bias = folded_batchnorm(self.conv1.conv.weight, None, self.conv1.bn)
        return F.conv2d(x, (weight.flatten(1) @ self.padding.t())[..., None, None], bias)

    def _padded_conv3(self, h: Tensor) -> Tensor:
        """conv3 (dense 1x1) writing the padded output: its rows at the padded channels, zero channels between."""
        weight, bias = folded_batchnorm(self.conv3.conv.weight, None, self.conv3.bn)
        return F.conv2d(h, (self.padding @ weight.flatten(1))[..., None, None], padded_vector(self, bias))


class ChannelConv(nn.Module):
    """The classifier's [shuffle] -> 1x1 conv C -> 6C (grouped) -> BN -> ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.shuffle = _maybe_shuffle(in_channels, groups, groups > 1)
        self.conv_bn = conv_bn(in_channels, out_channels, 1, groups=groups)
        self.act = nn.ReLU6()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_bn(self.shuffle(x)))


class ClassifierHead(nn.Module):
    """Pool -> hswish, concat token 0, Linear + BatchNorm1d -> hswish, dropout, Linear. Returns logits.

    In eval the BatchNorm1d is folded into fc1's weights (one Gemm); in training it runs as a BatchNorm1d.
    """

    def __init__(
        self, in_channels: int, num_tokens: int, token_dim: int, hidden: int, num_classes: int, drop: float
    ) -> None:
        super().__init__()
        self.token_shape = (num_tokens, token_dim)
        self.fc1 = nn.Linear(in_channels + token_dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes)

    def _fc1_norm(self, x: Tensor) -> Tensor:
        if self.training:
            return self.norm(self.fc1(x))
        return F.linear(x, *folded_batchnorm(self.fc1.weight, self.fc1.bias, self.norm))

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        pooled = F.hardswish(F.adaptive_avg_pool2d(x, 1).flatten(1))
        h = F.hardswish(self._fc1_norm(torch.cat([pooled, first_token(tokens, *self.token_shape)], dim=1)))
        return self.fc2(self.drop(h))


class OfficialMobileFormer(nn.Module):
    """The official Mobile-Former of one size. ``forward`` returns logits (no softmax)."""

    family = "official"

    def __init__(
        self,
        cfg: OfficialConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        # [T, D] as the official nn.Embedding's weight. The first ToFormer takes it as it is and broadcasts it
        # over the batch (the official code repeats it; a leaf, not a view, so FlopCounterMode can hook it).
        self.tokens = nn.Parameter(torch.zeros(cfg.num_tokens, cfg.token_dim))
        stem_width = stem_copies_width(cfg.stem_channels, cfg.lite)
        self.stem = Stem(in_chans, cfg.stem_channels, stem_width)
        self.lite_bneck = LiteBottleneck(cfg.stem_channels, cfg.lite, cfg.pointwise_groups, stem_width)
        padded = padded_stage_width(cfg)  # the lite bottleneck's output and the blocks that keep its width
        self.lite_bneck.pad_output(padded, cfg.bridge_heads)
        # The official drop-path rate grows linearly over features.0..L-1 (features.0 has no drop path).
        layers = len(cfg.blocks) + 1
        blocks, channels = [], cfg.lite.out_channels
        for index, spec in enumerate(cfg.blocks, start=1):
            block_type = DnaBlock3 if spec.kind == "DnaBlock3" else DnaBlock
            block = block_type(channels, spec, cfg, drop_path_rate * (index + 1) / layers, first=index == 1)
            padded = block.take_padded_input(padded)
            blocks.append(block)
            channels = spec.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.final_to_former = ToFormer(channels, cfg.num_tokens, cfg.token_dim, cfg.bridge_heads, drop_path_rate)
        self.channel_conv = ChannelConv(channels, cfg.channel_conv_out, cfg.pointwise_groups)
        self.head = ClassifierHead(
            cfg.channel_conv_out, cfg.num_tokens, cfg.token_dim, cfg.head_hidden, num_classes, drop_rate
        )

    def forward(self, x: Tensor) -> Tensor:
        feature_map = self.lite_bneck(self.stem(x))
        tokens = self.tokens  # [T, D]: the first bridge broadcasts it over the batch
        for block in self.blocks:
            feature_map, tokens = block(feature_map, tokens)
        tokens = self.final_to_former(feature_map, tokens)
        return self.head(self.channel_conv(feature_map), tokens)


def init_official_weights(model: OfficialMobileFormer, seed: int) -> None:
    """Deterministic initialisation from ``seed`` (independent of the global RNG), as the official code does:
    convs normal(0, sqrt(2 / fan_out)), linears normal(0, 0.01) with zero bias, norms 1 / 0, tokens normal(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.tokens.normal_(0.0, 1.0, generator=gen)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.01, generator=gen)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def build_official_model(
    size: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    seed: int = 0,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> OfficialMobileFormer:
    """Build an official Mobile-Former of the named size, deterministically initialised from ``seed``, in eval
    mode. Load trained official weights with ``model.load_state_dict(from_official_state_dict(sd))``."""
    cfg = get_official_config(size)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if in_chans < 1:
        raise UserError(f"input channels must be at least 1, got {in_chans}")
    model = OfficialMobileFormer(cfg, num_classes, in_chans, drop_rate, drop_path_rate)
    init_official_weights(model, seed)
    return model.eval()


# --- state dict keys -------------------------------------------------------------------------------------------
# (official, ours) prefix pairs, per scope. A key converts by its scope's first matching prefix; a key that
# matches none is an error, never dropped.
_TOP = (
    ("tokens.weight", "tokens"),
    ("stem.0.", "stem.conv_bn.conv."),
    ("stem.1.", "stem.conv_bn.bn."),
    ("classifier.conv.1.", "channel_conv.conv_bn.conv."),
    ("classifier.conv.2.", "channel_conv.conv_bn.bn."),
    ("classifier.fc.0.", "head.fc1."),
    ("classifier.fc.1.", "head.norm."),
    ("classifier.classifier.1.", "head.fc2."),
)
_LITE = (
    ("conv.0.", "dw.conv."),
    ("conv.1.", "dw.bn."),
    ("conv.4.", "pw.conv."),
    ("conv.5.", "pw.bn."),
)
_TO_FORMER = (
    ("alpha.0.", "gate."),
    ("q.", "q."),
    ("proj.", "proj."),
    ("layer_norm.", "norm."),
)
_BLOCK = (
    *((f"conv{i}.0.", f"conv{i}.conv.") for i in range(1, 5)),
    *((f"conv{i}.1.", f"conv{i}.bn.") for i in range(1, 5)),
    *((f"hyper{i}.hyper.0.", f"hyper{i}.fc1.") for i in range(1, 4)),
    *((f"hyper{i}.hyper.2.", f"hyper{i}.fc2.") for i in range(1, 4)),
    *((f"local_global.{o}", f"to_former.{m}") for o, m in _TO_FORMER),
    ("global_block.ffn.0.", "former.ffn.fc1."),
    ("global_block.ffn.2.", "former.ffn.fc2."),
    ("global_block.ffn_norm.", "former.ffn_norm."),
    ("global_block.q.", "former.q."),
    ("global_block.channel_mlp.", "former.proj."),
    ("global_block.layer_norm.", "former.norm."),
    ("global_local.k.", "to_mobile.k."),
    ("global_local.proj.", "to_mobile.v."),
)
_OFFICIAL_FEATURE = re.compile(r"features\.(\d+)\.(.*)", re.DOTALL)
_OUR_BLOCK = re.compile(r"blocks\.(\d+)\.(.*)", re.DOTALL)


def _rename(rest: str, table: Sequence[tuple[str, str]], forward: bool) -> str | None:
    for official, ours in table:
        src, dst = (official, ours) if forward else (ours, official)
        if rest.startswith(src) and (src.endswith(".") or rest == src):
            return dst + rest[len(src) :]
    return None


def _official_to_ours(key: str) -> str | None:
    if match := _OFFICIAL_FEATURE.fullmatch(key):
        index, rest = int(match.group(1)), match.group(2)
        if index == 0:
            renamed = _rename(rest, _LITE, True)
            return None if renamed is None else "lite_bneck." + renamed
        renamed = _rename(rest, _BLOCK, True)
        return None if renamed is None else f"blocks.{index - 1}.{renamed}"
    if key.startswith("local_global."):
        renamed = _rename(key[len("local_global.") :], _TO_FORMER, True)
        return None if renamed is None else "final_to_former." + renamed
    return _rename(key, _TOP, True)


def _ours_to_official(key: str) -> str | None:
    if match := _OUR_BLOCK.fullmatch(key):
        renamed = _rename(match.group(2), _BLOCK, False)
        return None if renamed is None else f"features.{int(match.group(1)) + 1}.{renamed}"
    if key.startswith("lite_bneck."):
        renamed = _rename(key[len("lite_bneck.") :], _LITE, False)
        return None if renamed is None else "features.0." + renamed
    if key.startswith("final_to_former."):
        renamed = _rename(key[len("final_to_former.") :], _TO_FORMER, False)
        return None if renamed is None else "local_global." + renamed
    return _rename(key, _TOP, False)


def _convert(state: Mapping[str, Tensor], rename, what: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        new = rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UserError(f"not {what} Mobile-Former state dict keys: {', '.join(unknown[:5])}{more}")
    return out


def from_official_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official keys (``features.3.conv1.0.weight``) -> this module's (``blocks.2.conv1.conv.weight``), same
    tensors, same order. Raises UserError on a key the official model does not have."""
    return _convert(state, _official_to_ours, "official")


def to_official_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """This module's keys -> the official ones (the inverse of :func:`from_official_state_dict`)."""
    return _convert(state, _ours_to_official, "mfdeploy official-family")


def identify_official(state: Mapping[str, Tensor]) -> tuple[str, int, int] | None:
    """Which (size, num_classes, in_chans) an official-keyed or mapped state dict is, or None when it is
    neither (every key and shape must match one size)."""
    if "classifier.classifier.1.weight" in state:
        try:
            state = from_official_state_dict(state)
        except UserError:
            return None
    from mfdeploy.model.families import OFFICIAL, match_size

    return match_size(OFFICIAL, state)
