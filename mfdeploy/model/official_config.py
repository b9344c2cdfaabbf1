"""The size table of the official Mobile-Former (github AAboys/MobileFormer), the only family with trained
ImageNet checkpoints in public: one frozen config per size, block tables exactly as the official builders list
them, the paper's figures, and the official code's exact parameter counts.

The official architecture differs from the seed family (:mod:`mfdeploy.model.config`) in every block: a
dw -> pw -> dw -> pw "DnaBlock3" for stride 2, a pw -> dw -> pw "DnaBlock" for stride 1, a DyReLU with its own
hyper-MLP per activation, 2-head bridges with a gate on the Mobile -> Former side and a post-norm 4-head Former
with a 2x GELU FFN. See :mod:`mfdeploy.model.official` for the modules.

Public: :class:`OfficialConfig`, :class:`OfficialBlock`, :data:`OFFICIAL_CONFIGS`, :data:`OFFICIAL_SIZES`,
:func:`get_official_config`. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mfdeploy.errors import UserError
from mfdeploy.model.config import PaperFigures

BlockKind = Literal["DnaBlock3", "DnaBlock"]


@dataclass(frozen=True)
class OfficialBlock:
    """One row of an official block table: kind, first expansion e1, output channels, stride, second
    expansion e2 (a DnaBlock3's second depthwise conv; unused by a DnaBlock, kept as the table lists it)."""

    kind: BlockKind
    e1: int
    out_channels: int
    stride: int
    e2: int


@dataclass(frozen=True)
class OfficialConfig:
    """One official size. ``lite`` is the official ``features.0`` (the conv-alone lite bottleneck), ``blocks``
    the rows after it (``blocks.N`` of the model is the official ``features.N+1``)."""

    name: str
    stem_channels: int
    num_tokens: int
    token_dim: int
    head_hidden: int
    pointwise_groups: int
    lite: OfficialBlock
    blocks: tuple[OfficialBlock, ...]
    paper: PaperFigures
    official_params: int  # sum of parameter numel of the official model with 1000 classes and 3 input channels
    #: heads of the Former (self-attention over the tokens); the two bridges use ``bridge_heads``
    num_heads: int = 4
    bridge_heads: int = 2
    ffn_ratio: int = 2  # the Former FFN's hidden width, in token dims
    hyper_reduction: int = 4  # a hyper-MLP's hidden width is token_dim // hyper_reduction
    channel_expansion: int = 6  # the classifier's 1x1 conv: C -> 6C

    @property
    def final_channels(self) -> int:
        """Channels of the last block's feature map (input of the final bridge and of the channel conv)."""
        return self.blocks[-1].out_channels

    @property
    def channel_conv_out(self) -> int:
        return self.final_channels * self.channel_expansion

    @property
    def lite_out(self) -> int:
        return self.lite.out_channels


def _table(spec: str) -> tuple[OfficialBlock, ...]:
    """Parse the README's notation ("3:3,12,s2,0 | :3,12,s1,3"): ``3:`` is a DnaBlock3, ``:`` a DnaBlock."""
    rows = []
    for item in spec.split("|"):
        kind, fields = item.strip().split(":")
        e1, chans, stride, e2 = fields.split(",")
        rows.append(
            OfficialBlock("DnaBlock3" if kind == "3" else "DnaBlock", int(e1), int(chans), int(stride[1:]), int(e2))
        )
    return tuple(rows)


def _config(
    name: str, stem: int, tokens: int, dim: int, hidden: int, groups: int, table: str, **rest
) -> OfficialConfig:
    lite, *blocks = _table(table)
    return OfficialConfig(name, stem, tokens, dim, hidden, groups, lite, tuple(blocks), **rest)


_SMALL = (
    "3:3,12,s2,0 | :3,12,s1,3 | 3:6,24,s2,4 | :3,24,s1,3 | 3:6,48,s2,4 | :4,48,s1,4 | :6,64,s1,4 "
    "| 3:6,96,s2,4 | :6,96,s1,4"
)

# fmt: off
OFFICIAL_CONFIGS: dict[str, OfficialConfig] = {
    cfg.name: cfg
    for cfg in (
        _config("26m", 8, 3, 128, 1024, 4, _SMALL,
                paper=PaperFigures(3.2, 26, 64.0), official_params=3_232_788),
        _config("52m", 8, 3, 128, 1024, 1, _SMALL,
                paper=PaperFigures(3.5, 52, 68.7), official_params=3_469_092),
        _config("96m", 12, 4, 128, 1280, 1,
                "3:2,12,s1,0 | 3:6,16,s2,4 | 3:6,32,s2,4 | :3,32,s1,3 | 3:6,64,s2,4 | :4,64,s1,4 | :6,88,s1,4 "
                "| 3:6,128,s2,4 | :6,128,s1,4",
                paper=PaperFigures(4.6, 96, 72.8), official_params=4_585_252),
        _config("151m", 12, 6, 192, 1280, 1,
                "3:2,12,s1,0 | 3:6,16,s2,4 | :3,16,s1,3 | 3:6,32,s2,4 | :3,32,s1,3 | 3:6,64,s2,4 | :4,64,s1,4 "
                "| :6,88,s1,4 | :6,88,s1,4 | 3:6,128,s2,4 | :6,128,s1,4 | :6,128,s1,4",
                paper=PaperFigures(7.6, 151, 75.2), official_params=7_595_828),
        _config("214m", 12, 6, 192, 1600, 1,
                "3:2,12,s1,0 | 3:6,20,s2,4 | :3,20,s1,4 | 3:6,40,s2,4 | :4,40,s1,4 | 3:6,80,s2,4 | :4,80,s1,4 "
                "| :6,112,s1,4 | :6,112,s1,4 | 3:6,160,s2,4 | :6,160,s1,4 | :6,160,s1,4",
                paper=PaperFigures(9.4, 214, 76.7), official_params=9_425_920),
        _config("294m", 16, 6, 192, 1920, 1,
                "3:2,16,s1,0 | 3:6,24,s2,4 | :4,24,s1,4 | 3:6,48,s2,4 | :4,48,s1,4 | 3:6,96,s2,4 | :4,96,s1,4 "
                "| :6,128,s1,4 | :6,128,s1,4 | 3:6,192,s2,4 | :6,192,s1,4 | :6,192,s1,4",
                paper=PaperFigures(11.4, 294, 77.9), official_params=11_422_648),
        _config("508m", 24, 6, 192, 1920, 1,
                "3:2,24,s1,0 | 3:6,40,s2,4 | :3,40,s1,3 | 3:6,72,s2,4 | :3,72,s1,3 | 3:6,128,s2,4 | :4,128,s1,4 "
                "| :6,176,s1,4 | :6,176,s1,4 | 3:6,240,s2,4 | :6,240,s1,4 | :6,240,s1,4",
                paper=PaperFigures(14.0, 508, 79.3), official_params=13_976_976),
    )
}
# fmt: on

OFFICIAL_SIZES: tuple[str, ...] = tuple(OFFICIAL_CONFIGS)


def get_official_config(size: str) -> OfficialConfig:
    """Look an official size up by name ("52m", also "52M", "mobile_former_52m" or "mobile-former-52m")."""
    key = size.strip().lower().replace("-", "_").removeprefix("mobile_former_")
    if key not in OFFICIAL_CONFIGS:
        raise UserError(f"unknown official Mobile-Former size {size!r}; valid sizes are {', '.join(OFFICIAL_SIZES)}")
    return OFFICIAL_CONFIGS[key]
