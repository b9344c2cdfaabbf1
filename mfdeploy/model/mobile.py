"""The convolutional (Mobile) half: stem, lite bottleneck and the Mobile sub-block with DyReLU."""

from __future__ import annotations

from torch import Tensor, nn

from mfdeploy.model.layers import DyReLU, conv_bn, dyrelu


class Stem(nn.Module):
    """3x3 stride-2 conv, BatchNorm, Hardswish."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_bn = conv_bn(in_channels, out_channels, 3, stride=2, padding=1)
        self.act = nn.Hardswish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_bn(x))


class LiteBottleneck(nn.Module):
    """1x1 expansion, a 3x1 then 1x3 depthwise pair (the "lite" 3x3), 1x1 projection.

    The seed constructs a ReLU for this block but its forward only applies an activation when DyReLU is
    on, so its lite bottleneck is purely linear. The paper's lite bottleneck is a non-linear block, so the
    ReLU is applied after the expansion and after the depthwise pair, as the seed's constructor intends.
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.pw1 = conv_bn(in_channels, hidden, 1, groups=groups)
        self.dw_h = conv_bn(hidden, hidden, (3, 1), stride=(stride, 1), padding=(1, 0), groups=hidden)
        self.dw_w = conv_bn(hidden, hidden, (1, 3), stride=(1, stride), padding=(0, 1), groups=hidden)
        self.pw2 = conv_bn(hidden, out_channels, 1, groups=groups)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.pw1(x))
        x = self.act(self.dw_w(self.dw_h(x)))
        return self.pw2(x)


class Mobile(nn.Module):
    """The Mobile sub-block: [3x3 depthwise stride-2 downsample], 1x1 -> DyReLU -> 3x3 dw -> DyReLU -> 1x1.

    Both activations share one DyReLU (as in the seed), so its coefficients are computed once from the
    tokens and applied twice.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        stride: int,
        groups: int,
        token_dim: int,
        dyrelu_reduce: float,
        dyrelu_k: int = 2,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"Mobile stride must be 1 or 2, got {stride}")
        self.downsample = (
            nn.Sequential(conv_bn(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels), nn.ReLU())
            if stride == 2
            else nn.Identity()
        )
        self.pw1 = conv_bn(in_channels, hidden, 1, groups=groups)
        self.dw = conv_bn(hidden, hidden, 3, padding=1, groups=hidden)
        self.pw2 = conv_bn(hidden, out_channels, 1, groups=groups)
        self.dyrelu = DyReLU(hidden, token_dim, dyrelu_reduce, k=dyrelu_k)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        coefficients = self.dyrelu(tokens)
        x = self.downsample(x)
        x = dyrelu(self.pw1(x), coefficients)
        x = dyrelu(self.dw(x), coefficients)
        return self.pw2(x)
