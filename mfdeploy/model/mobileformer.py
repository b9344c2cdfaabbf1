"""Mobile-Former: the block, the classifier head, the whole network and its builder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfdeploy.errors import UserError
from mfdeploy.model.bridges import ToFormer, ToMobile
from mfdeploy.model.config import MobileFormerConfig, get_config
from mfdeploy.model.former import Former
from mfdeploy.model.layers import GroupedLinear, conv_bn
from mfdeploy.model.mobile import LiteBottleneck, Mobile, Stem


class MobileFormerBlock(nn.Module):
    """ToFormer -> Former -> Mobile -> ToMobile, as in the seed's MFBlock."""

    def __init__(
        self,
        cfg: MobileFormerConfig,
        in_channels: int,
        out_channels: int,
        expansion: int,
        stride: int,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        dim, heads = cfg.token_dim, cfg.num_heads
        self.to_former = ToFormer(dim, in_channels, heads, drop, drop_path)
        self.former = Former(dim, heads, cfg.mlp_ratio, drop, drop_path)
        self.mobile = Mobile(
            in_channels,
            in_channels * expansion,
            out_channels,
            stride,
            cfg.pointwise_groups,
            dim,
            cfg.dyrelu_reduce,
            cfg.dyrelu_k,
        )
        self.to_mobile = ToMobile(dim, out_channels, heads, drop, drop_path)

    def forward(self, feature_map: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.former(self.to_former(feature_map, tokens))
        feature_map = self.to_mobile(self.mobile(feature_map, tokens), tokens)
        return feature_map, tokens


class ClassifierHead(nn.Module):
    """Global average pool, concatenate token 0, FC -> Hardswish -> dropout -> FC. Returns logits."""

    def __init__(self, in_channels: int, token_dim: int, hidden: int, num_classes: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels + token_dim, hidden)
        self.act = nn.Hardswish()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, feature_map: Tensor, tokens: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        x = torch.cat([pooled, tokens[:, 0]], dim=1)
        return self.fc2(self.drop(self.act(self.fc1(x))))


class MobileFormer(nn.Module):
    """The full classifier. ``forward`` returns logits; there is no softmax, in eval or in training."""

    family = "seed"  # see mfdeploy.model.families

    def __init__(
        self,
        cfg: MobileFormerConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        # Learned global tokens, kept with batch 1: every op that first mixes them with the image
        # broadcasts over the batch, so no expand() to the batch size (and no traced batch size) is needed.
        self.tokens = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.token_dim))
        self.stem = Stem(in_chans, cfg.stem_channels)
        self.lite_bneck = LiteBottleneck(
            cfg.stem_channels, cfg.lite_hidden, cfg.lite_out, cfg.lite_stride, cfg.pointwise_groups
        )
        blocks, channels = [], cfg.lite_out
        for spec in cfg.blocks:
            blocks.append(
                MobileFormerBlock(
                    cfg, channels, spec.out_channels, spec.expansion, spec.stride, drop_rate, drop_path_rate
                )
            )
            channels = spec.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.final_to_former = ToFormer(cfg.token_dim, channels, cfg.num_heads, drop_rate, drop_path_rate)
        self.channel_conv = nn.Sequential(
            conv_bn(channels, cfg.channel_conv_out, 1, groups=cfg.pointwise_groups), nn.ReLU()
        )
        self.head = ClassifierHead(cfg.channel_conv_out, cfg.token_dim, cfg.head_hidden, num_classes, drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        feature_map = self.lite_bneck(self.stem(x))
        tokens = self.tokens
        for block in self.blocks:
            feature_map, tokens = block(feature_map, tokens)
        tokens = self.final_to_former(feature_map, tokens)
        return self.head(self.channel_conv(feature_map), tokens)


def init_weights(model: nn.Module, seed: int) -> None:
    """Deterministic initialisation from ``seed``, independent of the global RNG state.

    Convs: Kaiming normal (fan_out); linears, grouped projections and tokens: truncated normal (0.02);
    norms: weight 1, bias 0.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            elif isinstance(module, (nn.Linear, GroupedLinear)):
                nn.init.trunc_normal_(module.weight, std=0.02, generator=gen)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, MobileFormer):
                nn.init.trunc_normal_(module.tokens, std=0.02, generator=gen)


def build_model(
    size: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    seed: int = 0,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> MobileFormer:
    """Build a Mobile-Former of the named size, deterministically initialised from ``seed``, in eval mode."""
    cfg = get_config(size)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if in_chans < 1:
        raise UserError(f"input channels must be at least 1, got {in_chans}")
    model = MobileFormer(cfg, num_classes, in_chans, drop_rate, drop_path_rate)
    init_weights(model, seed)
    return model.eval()
