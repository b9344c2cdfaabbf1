"""Deterministic weights and input for comparing mfdeploy's official family with the official Mobile-Former code.

Used by tests/test_official_model.py and by tools/make_official_reference.py (which runs the official code on the
same weights and input and stores its logits under tests/data/official_reference/). Both sides build the
official-keyed state dict from the same (key, shape) listing, in the official state_dict order, so the tensors
are the same bit for bit. No official code here: only key names and shapes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "official_reference"
LOGITS_FILE = DATA / "logits.json"
#: The reference is made with a 10-class head (the fixture stays a few KB); every other shape is the official one.
NUM_CLASSES = 10
IN_CHANS = 3
WEIGHT_SEED = 20240
INPUT_SEED = 7
INPUT_SHAPE = (2, IN_CHANS, 64, 64)


def keys_listing(state: Mapping[str, torch.Tensor] | Iterable[tuple[str, tuple[int, ...]]]) -> str:
    """The state dict's keys and shapes as the shared ``mobile_former_<size>_keys.txt`` files write them
    (``key<TAB>(shape)`` per line), in the dict's order."""
    items = state.items() if isinstance(state, Mapping) else state
    return "".join(f"{key}\t{tuple(getattr(value, 'shape', value))}\n" for key, value in items)


def listing_sha256(state: Mapping[str, torch.Tensor]) -> str:
    return hashlib.sha256(keys_listing(state).encode()).hexdigest()


def official_weights(shapes: Iterable[tuple[str, tuple[int, ...]]], seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """Well-conditioned float64 official-keyed weights, made in the listing's order from one torch.Generator.

    Conv and linear weights have std 1/sqrt(fan_in), biases std 0.1, LayerNorm scales 1 + 0.2 N(0, 1), BatchNorm
    scales 0.7 (1 + 0.2 N(0, 1)), BatchNorm running means 0.1 N(0, 1) and running variances in [0.5, 2], tokens
    N(0, 1); ``num_batches_tracked`` is a long scalar. BatchNorm scales near 1 let the residual feature maps grow
    to std ~10 by the last blocks, and float32 logits then drift by 2e-5 from float64 (in the official code too);
    with 0.7 they stay O(1) and drift by < 1e-6. The hyper-MLPs' second layers get std 3/sqrt(fan_in) so that
    their hard sigmoids saturate on some channels (both branches of the clip are exercised).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes:
        shape = tuple(shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        z = torch.randn(shape, generator=gen, dtype=torch.float64)
        if key == "tokens.weight":
            value = z
        elif leaf == "running_var":
            value = 0.5 + 1.5 * torch.rand(shape, generator=gen, dtype=torch.float64)
        elif leaf == "running_mean" or leaf == "bias":
            value = 0.1 * z
        elif len(shape) == 1 and key.endswith("norm.weight"):  # LayerNorm scale
            value = 1.0 + 0.2 * z
        elif len(shape) == 1:  # BatchNorm scale: < 1 keeps the residual feature maps O(1) through the depth
            value = 0.7 * (1.0 + 0.2 * z)
        else:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            gain = 3.0 if ".hyper.2." in key else 1.0
            value = z * (gain / fan_in**0.5)
        out[key] = value
    return out


def official_input(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The deterministic input batch: N(0, 1), shape :data:`INPUT_SHAPE`."""
    gen = torch.Generator().manual_seed(INPUT_SEED)
    return torch.randn(INPUT_SHAPE, generator=gen, dtype=torch.float64).to(dtype)


def load_reference() -> dict:
    return json.loads(LOGITS_FILE.read_text())
