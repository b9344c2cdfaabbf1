"""A literal seed-style Mobile-Former formulation, for benchmarks only.

It mirrors the seed document's code path by path (a Python loop of per-head nn.Linear in the
bridges, the 5-D [H, W, B, C, k] DyReLU, reshapes with sizes read from x.shape, tokens concatenated
per sample) and takes its weights from an mfdeploy model, so both compute the same function.
"""

from __future__ import annotations

import torch
from torch import nn

from mfdeploy.model.mobileformer import MobileFormer


def _per_head(weight: torch.Tensor, bias: torch.Tensor) -> nn.ModuleList:
    heads = nn.ModuleList()
    for w, b in zip(weight, bias):
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        heads.append(lin)
    return heads


class SeedToFormer(nn.Module):
    def __init__(self, bridge):
        super().__init__()
        self.heads, self.norm, self.proj = bridge.heads, bridge.norm, bridge.proj
        self.q = _per_head(bridge.q.weight.detach(), bridge.q.bias.detach())

    def forward(self, feature_map, tokens):
        B, C, H, W = feature_map.shape
        _, M, D = tokens.shape
        nh, hd = self.heads, C // self.heads
        t = self.norm(tokens)
        fm = feature_map.reshape(B, C, H * W).permute(0, 2, 1).reshape(B, H * W, nh, hd).permute(0, 2, 1, 3)
        ht = t.reshape(B, M, nh, D // nh).permute(0, 2, 1, 3)
        q = torch.cat([self.q[i](ht[:, i]).reshape(B, 1, M, hd) for i in range(nh)], 1)
        attn = torch.softmax(q @ fm.transpose(-1, -2) * hd**-0.5, dim=-1)
        z = (attn @ fm).permute(0, 2, 1, 3).reshape(B, M, nh * hd)
        return self.proj(z) + tokens


class SeedToMobile(nn.Module):
    def __init__(self, bridge):
        super().__init__()
        self.heads, self.norm, hd = bridge.heads, bridge.norm, bridge.head_dim
        w, b = bridge.kv.weight.detach(), bridge.kv.bias.detach()
        self.k = _per_head(w[:, :, :hd], b[:, :hd])
        self.v = _per_head(w[:, :, hd:], b[:, hd:])

    def forward(self, feature_map, tokens):
        B, C, H, W = feature_map.shape
        _, M, D = tokens.shape
        nh, hd = self.heads, C // self.heads
        t = self.norm(tokens)
        q = feature_map.reshape(B, C, H * W).permute(0, 2, 1).reshape(B, H * W, nh, hd).permute(0, 2, 1, 3)
        k_ = t.reshape(B, M, nh, D // nh).permute(0, 2, 1, 3)
        v_ = t.reshape(B, M, nh, D // nh).permute(0, 2, 1, 3)
        k = torch.cat([self.k[i](k_[:, i]).reshape(B, 1, M, hd) for i in range(nh)], 1)
        v = torch.cat([self.v[i](v_[:, i]).reshape(B, 1, M, hd) for i in range(nh)], 1)
        attn = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5, dim=-1)
        z = (attn @ v).permute(0, 1, 3, 2).reshape(B, nh * hd, H, W)
        return z + feature_map


class SeedMLP(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.fc1, self.act, self.fc2 = mlp.fc1, nn.GELU(), mlp.fc2

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SeedDyReLU(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.mlp, self.norm, self.k, self.channels = SeedMLP(act.mlp), act.norm, act.k, act.channels
        k = act.k
        self.register_buffer("coef", torch.tensor([1.0] * k + [0.5] * k))
        self.register_buffer("const", torch.tensor([1.0] + [0.0] * (2 * k - 1)))

    def forward(self, feature_map, tokens):
        B, M, D = tokens.shape
        dy = self.norm(self.mlp(tokens[:, 0])).reshape(B, self.channels, 2 * self.k)
        dy = dy * self.coef + self.const
        f = feature_map.permute(2, 3, 0, 1).unsqueeze(-1)
        out = f * dy[:, :, : self.k] + dy[:, :, self.k :]
        return out.max(dim=-1).values.permute(2, 3, 0, 1)


class SeedAttention(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.qkv, self.proj, self.heads = attn.qkv, attn.proj, attn.heads

    def forward(self, tokens):
        B, M, D = tokens.shape
        nh, hd = self.heads, D // self.heads
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        q = q.reshape(B, M, nh, hd).permute(0, 2, 1, 3)
        k = k.reshape(B, M, nh, hd).permute(0, 2, 1, 3)
        v = v.reshape(B, M, nh, hd).permute(0, 2, 1, 3)
        a = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5, dim=-1)
        return self.proj((a @ v).permute(0, 2, 1, 3).reshape(B, M, nh * hd))


class SeedBlock(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.to_former = SeedToFormer(block.to_former)
        f = block.former
        self.norm1, self.attn, self.norm2, self.mlp = f.norm1, SeedAttention(f.attn), f.norm2, SeedMLP(f.mlp)
        m = block.mobile
        self.downsample, self.pw1, self.dw, self.pw2 = m.downsample, m.pw1, m.dw, m.pw2
        self.dyrelu = SeedDyReLU(m.dyrelu)
        self.to_mobile = SeedToMobile(block.to_mobile)

    def forward(self, f, tokens):
        z = self.to_former(f, tokens)
        z = z + self.attn(self.norm1(z))
        z = z + self.mlp(self.norm2(z))
        h = self.downsample(f)
        h = self.dyrelu(self.pw1(h), z)
        h = self.dyrelu(self.dw(h), z)
        return self.to_mobile(self.pw2(h), z), z


class SeedStyleMobileFormer(nn.Module):
    """The seed's forward on an mfdeploy model's weights (eval mode)."""

    def __init__(self, model: MobileFormer):
        super().__init__()
        self.tokens = model.tokens
        self.stem, self.lite_bneck = model.stem, model.lite_bneck
        self.blocks = nn.ModuleList(SeedBlock(b) for b in model.blocks)
        self.final_to_former = SeedToFormer(model.final_to_former)
        self.channel_conv, self.head = model.channel_conv, model.head
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        B, _, _, _ = x.shape
        f = self.lite_bneck(self.stem(x))
        tokens = torch.cat([self.tokens] * B, dim=0)
        for block in self.blocks:
            f, tokens = block(f, tokens)
        tokens = self.final_to_former(f, tokens)
        f = self.channel_conv(f)
        pooled = self.pool(f).flatten(1)
        h = self.head
        return h.fc2(h.act(h.fc1(torch.cat([pooled, tokens[:, 0]], dim=1))))
