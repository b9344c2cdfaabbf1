"""The Former half: a pre-LN transformer layer over the few global tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfdeploy.model.layers import MLP, DropPath


class Attention(nn.Module):
    """Multi-head self-attention over the tokens, with one fused qkv projection."""

    def __init__(self, dim: int, heads: int, drop: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"token dim {dim} must divide by {heads} heads")
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(drop)
        # 1/sqrt(d) scales q only; applied to the q rows of the qkv weights it folds at export.
        scale = torch.cat([torch.full((dim,), head_dim**-0.5), torch.ones(2 * dim)])
        self.register_buffer("qkv_scale", scale, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        qkv = F.linear(tokens, self.qkv.weight * self.qkv_scale[:, None], self.qkv.bias * self.qkv_scale)
        # [B, M, 3D] -> [B, 3h, M, d]: q, k, v heads side by side on axis 1, never a 5-D tensor.
        qkv = qkv.unflatten(-1, (3 * self.heads, -1)).transpose(1, 2)
        q, k, v = qkv.split(self.heads, dim=1)
        attn = (q @ k.transpose(-1, -2)).softmax(dim=-1)
        z = (attn @ v).transpose(1, 2).flatten(2)
        return self.drop(self.proj(z))


class Former(nn.Module):
    """tokens + Attention(LN(tokens)), then + MLP(LN(.)), with MLP ratio 2 and GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens)))
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))
