"""The deploy-ready formulation computes exactly what the seed computes.

Each test writes the seed's formulation literally (a Python loop of per-head nn.Linear, the 5-D
[H, W, B, C, k] DyReLU, reshapes with explicit sizes), loads it with the same weights as our module,
and compares outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from mfdeploy.model import build_model
from mfdeploy.model.bridges import ToFormer, ToMobile
from mfdeploy.model.former import Attention
from mfdeploy.model.layers import MLP, DyReLU, GroupedLinear, dyrelu

RTOL = 1e-5  # float32 rounding, relative to the largest value of the output


def assert_same(ours: torch.Tensor, seed: torch.Tensor, rtol: float = RTOL) -> None:
    scale = float(seed.detach().abs().max().clamp(min=1.0))
    torch.testing.assert_close(ours, seed, atol=rtol * 4 * scale, rtol=0)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (norm affines and biases included) non-trivial random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return module


def per_head_linears(grouped: GroupedLinear, start: int = 0, stop: int | None = None) -> list[nn.Linear]:
    """The seed's list of nn.Linear (one per head) holding the grouped weights (columns start:stop)."""
    linears = []
    for w, b in zip(grouped.weight, grouped.bias):
        w, b = w[:, start:stop], b[start:stop]
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        linears.append(lin)
    return linears


def seed_to_former(bridge: ToFormer, feature_map: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """ToFormer_Bridge.forward from the seed, literally."""
    B, C, H, W = feature_map.shape
    _, M, D = tokens.shape
    nh = bridge.heads
    hd = C // nh
    t = bridge.norm(tokens)
    fm = feature_map.reshape(B, C, H * W).permute(0, 2, 1).reshape(B, H * W, nh, hd).permute(0, 2, 1, 3)
    h_token = t.reshape(B, M, nh, D // nh).permute(0, 2, 1, 3)
    q = torch.cat([lin(h_token[:, i]).reshape(B, 1, M, hd) for i, lin in enumerate(per_head_linears(bridge.q))], 1)
    attn = torch.softmax(q @ fm.transpose(-1, -2) * hd**-0.5, dim=-1)
    z = (attn @ fm).permute(0, 2, 1, 3).reshape(B, M, nh * hd)
    return bridge.proj(z) + tokens


def seed_to_mobile(bridge: ToMobile, feature_map: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """ToMobile_Bridge.forward from the seed, literally (separate per-head k and v Linears)."""
    B, C, H, W = feature_map.shape
    _, M, D = tokens.shape
    nh = bridge.heads
    hd = C // nh
    t = bridge.norm(tokens)
    q = feature_map.reshape(B, C, H * W).permute(0, 2, 1).reshape(B, H * W, nh, hd).permute(0, 2, 1, 3)
    k_ = t.reshape(B, M, nh, D // nh).permute(0, 2, 1, 3)
    v_ = t.reshape(B, M, nh, D // nh).permute(0, 2, 1, 3)
    k_lins = per_head_linears(bridge.kv, 0, hd)
    v_lins = per_head_linears(bridge.kv, hd, None)
    k = torch.cat([k_lins[i](k_[:, i]).reshape(B, 1, M, hd) for i in range(nh)], 1)
    v = torch.cat([v_lins[i](v_[:, i]).reshape(B, 1, M, hd) for i in range(nh)], 1)
    attn = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5, dim=-1)  # B, nh, L, M
    z = (attn @ v).permute(0, 1, 3, 2).reshape(B, nh * hd, H, W)
    return z + feature_map


def seed_mlp(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """The seed's MLP: Linear, GELU, Linear."""
    return mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x)))


def seed_dyrelu(act: DyReLU, feature_map: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """DyReLU.forward from the seed: LN(MLP(token 0)) * coef + const, then the 5-D H,W,B,C,k max."""
    B = tokens.shape[0]
    k = act.k
    dy = act.norm(seed_mlp(act.mlp, tokens[:, 0])).reshape(B, act.channels, 2 * k)
    coef = torch.tensor([1.0] * k + [0.5] * k)
    const = torch.tensor([1.0] + [0.0] * (2 * k - 1))
    dy = dy * coef + const
    f = feature_map.permute(2, 3, 0, 1).unsqueeze(-1)  # H, W, B, C, 1
    out = f * dy[:, :, :k] + dy[:, :, k:]  # H, W, B, C, k
    return out.max(dim=-1).values.permute(2, 3, 0, 1)


def seed_attention(attn: Attention, tokens: torch.Tensor) -> torch.Tensor:
    """Attention.forward from the seed: qkv Linear, chunk, per-head reshape, softmax(q k^T * scale) v."""
    B, M, D = tokens.shape
    nh = attn.heads
    hd = D // nh
    q, k, v = attn.qkv(tokens).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, M, nh, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    a = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5, dim=-1)
    z = (a @ v).permute(0, 2, 1, 3).reshape(B, M, nh * hd)
    return attn.proj(z)


def test_grouped_linear_equals_per_head_loop():
    grouped = randomize(GroupedLinear(4, 32, 12))
    x = torch.randn(3, 4, 6, 32)
    looped = torch.stack([lin(x[:, i]) for i, lin in enumerate(per_head_linears(grouped))], dim=1)
    assert_same(grouped(x), looped)
    assert_same(grouped(x, 0.25), looped * 0.25)


def test_to_former_equals_seed_per_head_loop():
    bridge = randomize(ToFormer(token_dim=128, channels=24, heads=4), seed=1).eval()
    fm, tokens = torch.randn(2, 24, 14, 10), torch.randn(2, 3, 128)
    with torch.no_grad():
        assert_same(bridge(fm, tokens), seed_to_former(bridge, fm, tokens))
        # Tokens shared by the batch (as the model feeds them to block 0) broadcast to the same result.
        shared = tokens[:1]
        assert_same(bridge(fm, shared), seed_to_former(bridge, fm, shared.expand(2, -1, -1)))


def test_to_mobile_equals_seed_per_head_loop():
    bridge = randomize(ToMobile(token_dim=192, channels=40, heads=8), seed=2).eval()
    fm, tokens = torch.randn(3, 40, 7, 9), torch.randn(3, 6, 192)
    with torch.no_grad():
        assert_same(bridge(fm, tokens), seed_to_mobile(bridge, fm, tokens))


def test_dyrelu_equals_seed_5d_formulation():
    act = randomize(DyReLU(channels=36, token_dim=128, reduce=4.4), seed=3).eval()
    x, tokens = torch.randn(2, 36, 9, 11) * 3, torch.randn(2, 3, 128)
    with torch.no_grad():
        coeffs = act(tokens)
        ours = dyrelu(x, coeffs)
        assert_same(ours, seed_dyrelu(act, x, tokens))
    # The maximum really selects between the two maps (neither map wins everywhere).
    first = x * coeffs[0] + coeffs[2]
    assert 0.05 < (ours == first).float().mean() < 0.95


def test_mlp_is_linear_exact_gelu_linear():
    mlp = randomize(MLP(128, 256, 64), seed=7).eval()
    x = torch.randn(2, 3, 128) * 2
    with torch.no_grad():
        assert_same(mlp(x), seed_mlp(mlp, x))


def test_attention_equals_seed():
    attn = randomize(Attention(dim=128, heads=4), seed=4).eval()
    tokens = torch.randn(2, 3, 128)
    with torch.no_grad():
        assert_same(attn(tokens), seed_attention(attn, tokens))


def seed_forward(model, x: torch.Tensor) -> torch.Tensor:
    """The seed's MobileFormer.forward, with its literal bridges, attention and DyReLU, on our weights."""
    B = x.shape[0]
    f = model.lite_bneck(model.stem(x))
    tokens = torch.cat([model.tokens] * B, dim=0)
    for block in model.blocks:
        z = seed_to_former(block.to_former, f, tokens)
        former = block.former
        z = z + seed_attention(former.attn, former.norm1(z))
        z = z + seed_mlp(former.mlp, former.norm2(z))
        mobile = block.mobile
        h = mobile.downsample(f)
        h = seed_dyrelu(mobile.dyrelu, mobile.pw1(h), z)
        h = seed_dyrelu(mobile.dyrelu, mobile.dw(h), z)
        h = mobile.pw2(h)
        f, tokens = seed_to_mobile(block.to_mobile, h, z), z
    tokens = seed_to_former(model.final_to_former, f, tokens)
    f = model.channel_conv(f)
    pooled = f.mean(dim=(2, 3))
    head = model.head
    return head.fc2(head.act(head.fc1(torch.cat([pooled, tokens[:, 0]], dim=1))))


def test_whole_model_equals_seed_formulation():
    model = build_model("26m", num_classes=10, seed=5)
    # Trained-looking statistics: random norms and DyReLU/bridge weights, not the identity initialisation.
    for module in model.modules():
        if isinstance(module, (DyReLU, ToFormer, ToMobile)):
            randomize(module, seed=6)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert_same(model(x), seed_forward(model, x), rtol=2e-5)
