"""The two Mobile-Former families, behind one name: ``seed`` (the PaddleViT design) and ``official``
(github AAboys/MobileFormer, whose ImageNet checkpoints are the only trained Mobile-Formers in public).

Every command that builds or loads a model asks this module, so ``--arch`` and the family detected from a
checkpoint mean the same thing everywhere. Both families have the same seven size names and the same stage
names, so what comes after the model (export, parity, profiles) never asks which family it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mfdeploy.errors import UserError
from mfdeploy.manifest_schema import MODEL_FAMILIES

if TYPE_CHECKING:
    import torch
    from torch import nn

ARCHS: tuple[str, ...] = MODEL_FAMILIES  # declared with the manifest schema, which checks the recorded family
SEED, OFFICIAL = ARCHS
DEFAULT_ARCH = SEED
#: How each family is named in messages.
TITLES = {SEED: "seed-family (PaddleViT) Mobile-Former", OFFICIAL: "official Mobile-Former"}
#: A key only an official-keyed (not yet mapped) state dict has.
_OFFICIAL_KEY = "classifier.classifier.1.weight"


def check_arch(arch: str | None) -> str:
    """``--arch``'s value, checked: one of :data:`ARCHS` (case-insensitive); None means the default."""
    if arch is None:
        return DEFAULT_ARCH
    key = str(arch).strip().lower()
    if key not in ARCHS:
        raise UserError(f"unknown --arch {arch!r}; use one of {', '.join(ARCHS)}")
    return key


def family_of(model: Any) -> str:
    """The family a built model belongs to."""
    return getattr(model, "family", SEED)


def get_family_config(arch: str, size: str) -> Any:
    """The size table entry of ``size`` in family ``arch``."""
    if check_arch(arch) == OFFICIAL:
        from mfdeploy.model.official_config import get_official_config

        return get_official_config(size)
    from mfdeploy.model.config import get_config

    return get_config(size)


def build_family_model(arch: str, size: str, num_classes: int = 1000, **options: Any) -> nn.Module:
    """A model of family ``arch`` and ``size``, deterministically initialised, in eval mode. ``options`` are
    the family builder's own (in_chans, seed, drop_rate, drop_path_rate: the same names in both)."""
    if check_arch(arch) == OFFICIAL:
        from mfdeploy.model.official import build_official_model

        return build_official_model(size, num_classes, **options)
    from mfdeploy.model.mobileformer import build_model

    return build_model(size, num_classes, **options)


def meta_model(arch: str, size: str, num_classes: int, in_chans: int) -> nn.Module:
    """A model on the meta device (shapes only, no memory): for checking a state dict against a size."""
    import torch

    with torch.device("meta"):
        cfg = get_family_config(arch, size)
        if arch == OFFICIAL:
            from mfdeploy.model.official import OfficialMobileFormer

            return OfficialMobileFormer(cfg, num_classes, in_chans)
        from mfdeploy.model.mobileformer import MobileFormer

        return MobileFormer(cfg, num_classes, in_chans)


def match_size(arch: str, state: Mapping[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """Which (size, num_classes, in_chans) of family ``arch`` a state dict with the model's keys is, or None:
    every key and shape must be that size's, the class count and input channels read from the head and stem."""
    try:
        num_classes = int(state["head.fc2.weight"].shape[0])
        in_chans = int(state["stem.conv_bn.conv.weight"].shape[1])
    except (KeyError, IndexError, AttributeError):
        return None
    for size in _family_sizes(arch):
        expected = meta_model(arch, size, num_classes, in_chans).state_dict()
        if expected.keys() == state.keys() and all(state[k].shape == v.shape for k, v in expected.items()):
            return size, num_classes, in_chans
    return None


def _family_sizes(arch: str) -> tuple[str, ...]:
    if check_arch(arch) == OFFICIAL:
        from mfdeploy.model.official_config import OFFICIAL_SIZES

        return OFFICIAL_SIZES
    from mfdeploy.model.config import SIZES

    return SIZES


def to_model_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with the official code's keys renamed to the official family's module names; any other
    state dict as it is. Official checkpoints are stored with the official keys."""
    if _OFFICIAL_KEY in state:
        from mfdeploy.model.official import from_official_state_dict

        return from_official_state_dict(state)
    return dict(state)


def identify_family(state: Mapping[str, torch.Tensor]) -> tuple[str, str, int, int] | None:
    """Which (family, size, num_classes, in_chans) a state dict is (official keys or ours), or None when it
    fits no Mobile-Former of either family."""
    from mfdeploy.model.official import identify_official

    found = identify_official(state)
    if found is not None:
        return (OFFICIAL, *found)
    found = match_size(SEED, state)
    return (SEED, *found) if found is not None else None


def describe(arch: str, size: str, num_classes: int, in_chans: int = 3, article: bool = False) -> str:
    """ "official Mobile-Former 52m with 1000 classes" (the words every mismatch message uses), with "a"/"an"
    in front when ``article``."""
    chans = "" if in_chans == 3 else f", {in_chans} input channels"
    words = f"{TITLES[arch]} {size} with {num_classes} classes{chans}"
    return f"{'an' if words[0] in 'aeio' else 'a'} {words}" if article else words
