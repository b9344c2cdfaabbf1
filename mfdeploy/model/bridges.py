"""The two bridges between the feature map and the tokens.

Only the tokens are projected, per head (grouped); the feature map enters the attention as it is,
as key/value (Mobile -> Former) or as query (Former -> Mobile). The attention products are arranged so
that the large [.., L] tensors (L = H*W pixels) are never transposed: only token-sized tensors are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mfdeploy.model.layers import DropPath, GroupedLinear, feature_heads, softmax_over_short_axis, split_heads


class ToFormer(nn.Module):
    """Mobile -> Former: tokens attend to the pixels of the feature map, then a residual update.

    z = tokens + Proj(concat_h softmax(q_h k_h^T / sqrt(d)) v_h), with q_h = per-head projection of
    LN(tokens) and k_h = v_h = the feature map's channels of head h.
    """

    def __init__(self, token_dim: int, channels: int, heads: int, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if channels % heads or token_dim % heads:
            raise ValueError(f"channels {channels} and token_dim {token_dim} must divide by {heads} heads")
        self.heads = heads
        head_dim = channels // heads
        self.scale = head_dim**-0.5
        self.norm = nn.LayerNorm(token_dim)
        self.q = GroupedLinear(heads, token_dim // heads, head_dim)
        self.proj = nn.Linear(channels, token_dim)
        self.drop = nn.Dropout(drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, feature_map: Tensor, tokens: Tensor) -> Tensor:
        q = self.q(split_heads(self.norm(tokens), self.heads), self.scale)  # [B, h, M, d]
        kv = feature_heads(feature_map, self.heads)  # [B, h, d, L]
        attn = (q @ kv).softmax(dim=-1)  # [B, h, M, L]
        z = kv @ attn.transpose(-1, -2)  # [B, h, d, M]
        z = z.flatten(1, 2).transpose(1, 2)  # [B, M, C]
        return tokens + self.drop_path(self.drop(self.proj(z)))


class ToMobile(nn.Module):
    """Former -> Mobile: pixels attend to the tokens, then a residual update of the feature map.

    x + concat_h softmax(q_h k_h^T / sqrt(d)) v_h with q_h = the feature map's channels of head h and
    k_h, v_h = per-head projections of LN(tokens). The logits are built as k @ q ([M, L] per head) and
    normalised over the token axis, which is the same attention without transposing the pixels (the softmax
    written out, since ONNX Runtime transposes for a Softmax on any axis but the last: see
    softmax_over_short_axis).
    The per-head k and v projections share one grouped matmul (their weights are concatenated).
    """

    def __init__(self, token_dim: int, channels: int, heads: int, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if channels % heads or token_dim % heads:
            raise ValueError(f"channels {channels} and token_dim {token_dim} must divide by {heads} heads")
        self.heads = heads
        self.head_dim = channels // heads
        self.norm = nn.LayerNorm(token_dim)
        self.kv = GroupedLinear(heads, token_dim // heads, 2 * self.head_dim)
        # 1/sqrt(d) applies to k only; as an output scale of the projection it folds into its weights.
        k_scale = torch.full((self.head_dim,), self.head_dim**-0.5)
        self.register_buffer("kv_scale", torch.cat([k_scale, torch.ones(self.head_dim)]), persistent=False)
        self.drop = nn.Dropout(drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, feature_map: Tensor, tokens: Tensor) -> Tensor:
        kv = self.kv(split_heads(self.norm(tokens), self.heads), self.kv_scale)  # [B, h, M, 2d]
        k, v = kv.split(self.head_dim, dim=-1)
        q = feature_heads(feature_map, self.heads)  # [B, h, d, L]
        attn = softmax_over_short_axis(k @ q, dim=-2)  # [B, h, M, L], normalised over tokens
        z = v.transpose(-1, -2) @ attn  # [B, h, d, L]
        z = z.flatten(1, 2).reshape_as(feature_map)
        return feature_map + self.drop_path(self.drop(z))
