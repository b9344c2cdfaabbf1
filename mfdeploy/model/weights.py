"""Reading and writing Mobile-Former checkpoints safely, and building the model a command asks for.

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors: never an arbitrary unpickle.
Accepted as users hold them: a bare state dict, the usual wrappers ({"state_dict": ...}, {"model": ...}),
or a training checkpoint such as timm's CheckpointSaver writes (``mobile-former-26m.pth.tar``: epoch, arch,
state_dict, optimizer, an ``argparse.Namespace`` of the script's arguments, optionally state_dict_ema);
DataParallel's ``module.`` prefix is dropped. A checkpoint that does not fit is described (which size, how
many classes it holds) instead of failing on the first key.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mfdeploy.console import warn_once
from mfdeploy.errors import UserError
from mfdeploy.fileio import atomic_path, sha256_file
from mfdeploy.manifest_schema import CHECKPOINT_ACTION, validate_checkpoint_metadata
from mfdeploy.model.config import DEFAULT_SIZE
from mfdeploy.option_values import check_num_classes, check_seed, shown

SAFETENSORS_SUFFIXES = (".safetensors",)
# torch.save files by the names they are given; ".pth.tar" (first: it also ends in ".tar") is timm's
TORCH_SUFFIXES = (".pth.tar", ".tar", ".pth", ".pt", ".bin", ".ckpt")
WEIGHTS_SUFFIXES = TORCH_SUFFIXES + SAFETENSORS_SUFFIXES
_SAVE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # save_checkpoint writes a bare state dict, never a .tar
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
EMA_KEY = "state_dict_ema"  # timm's exponential moving average of the weights, next to its state_dict
NO_EMA = "drop --ema"
# The one class a checkpoint may pickle besides tensors and plain containers: timm's CheckpointSaver stores the
# training script's arguments as an argparse.Namespace ("args"). It is admitted so the file loads at all; what
# it holds is still unpickled by the safe unpickler (any other class in it is refused) and is never read.
_ADMITTED_CLASSES = (argparse.Namespace,)
_TIMM_MARKERS = ("epoch", "arch")  # CheckpointSaver writes both, with state_dict, optimizer and version
_MAX_FACT_CHARS = 100
_MAX_EPOCH = 10**6
_MAX_KEYS_SHOWN = 4
_FIT_FLAGS = ("--arch", "--size", "--num-classes", "--in-chans")  # in the order of identify_family's answer
_COUNTERS = ("num_batches_tracked",)  # BatchNorm's step counter: the one integer tensor of a state dict
_PICKLE_PROTOCOL = re.compile(rb"\x80[\x02-\x05]")  # how a bare pickle (not torch.save's zip) begins


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    # Where the state came from, in plain JSON values: {"format": "safetensors" | "state_dict" | "wrapped" |
    # "timm", "key": the entry read ("state_dict", "state_dict_ema", "model/state_dict"), "module_prefix": True
    # when DataParallel's prefix was dropped, and for timm its epoch, arch, metric and version when valid}.
    origin: dict[str, Any] = field(default_factory=dict)


def weights_suffix(path: Path) -> str | None:
    """The accepted suffix ``path`` ends with (".pth.tar" before ".tar"), or None."""
    name = path.name.lower()
    return next((suffix for suffix in WEIGHTS_SUFFIXES if name.endswith(suffix)), None)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _timm_facts(obj: dict[Any, Any]) -> dict[str, Any] | None:
    """What a timm CheckpointSaver dict says of its training, as plain JSON values; None if it is no such dict.

    The values are user data: a fact of the wrong type, out of range or unprintable is left out, a long
    ``arch`` cut short. The optimizer state and the pickled arguments are never read."""
    if not all(key in obj for key in _TIMM_MARKERS):
        return None
    facts: dict[str, Any] = {}
    epoch = obj.get("epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= _MAX_EPOCH:
        facts["epoch"] = epoch
    arch = obj.get("arch")
    if isinstance(arch, str) and arch.isprintable() and arch:
        facts["arch"] = arch[:_MAX_FACT_CHARS]
    metric = obj.get("metric")
    if isinstance(metric, (int, float)) and not isinstance(metric, bool) and math.isfinite(metric):
        facts["metric"] = float(metric)
    version = obj.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and 0 <= version <= _MAX_EPOCH:
        facts["version"] = version
    return facts


def _no_ema(path: Path) -> UserError:
    return UserError(f"{path.name} has no {EMA_KEY} (no EMA weights); {NO_EMA}")


def _not_a_state_dict(value: Any, where: str, path: Path) -> UserError:
    """Why ``value`` (the file itself, or its entry ``where``) is not a state dict of tensors, in one line."""
    what = f"{path.name}'s {where}" if where else path.name
    if not where and not isinstance(value, dict):
        return UserError(f"{path} is not a checkpoint: expected a state dict of tensors, found {type(value).__name__}")
    if not isinstance(value, dict):
        return UserError(f"{what} is not a state dict of tensors: it is a {type(value).__name__}")
    if not value:
        return UserError(f"{what} is an empty dict: it holds no weights")
    key, entry = next((k, v) for k, v in value.items() if not isinstance(v, torch.Tensor))
    return UserError(
        f"{what} is not a state dict of tensors: its entry {shown(key)} is a {type(entry).__name__}, not a tensor"
    )


def _unwrap(obj: Any, path: Path, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in a bare state dict, a wrapper ({"state_dict": ...}, {"model": ...}, nested up to three
    deep) or a timm checkpoint (its state_dict, or with ``ema`` its state_dict_ema), and where it came from."""
    facts = _timm_facts(obj) if isinstance(obj, dict) else None
    origin: dict[str, Any] = {"format": "state_dict"} if facts is None else {"format": "timm", **facts}
    keys: list[str] = []
    level = obj
    while not _is_state_dict(level):
        if not isinstance(level, dict) or len(keys) == 3:
            raise _not_a_state_dict(level, "/".join(keys), path)
        present = [k for k in _WRAPPER_KEYS if k in level]
        key = next((k for k in present if isinstance(level[k], dict)), present[0] if present else None)
        if ema and EMA_KEY in level:
            key = EMA_KEY
        if key is None:
            if ema and not keys:
                raise _no_ema(path)
            if facts is not None and not keys:
                epoch = f" (epoch {facts['epoch']})" if "epoch" in facts else ""
                raise UserError(
                    f"{path.name} is a timm training checkpoint{epoch} without a state_dict, so it holds no weights; "
                    "give the checkpoint saved with them"
                )
            if keys or not level:
                raise _not_a_state_dict(level, "/".join(keys), path)
            found = ", ".join(shown(k) for k in list(level)[:_MAX_KEYS_SHOWN])
            raise UserError(
                f"{path} is not a checkpoint: expected a state dict of tensors or one under "
                f"{', '.join(_WRAPPER_KEYS)}; its keys are {found}" + (" ..." if len(level) > _MAX_KEYS_SHOWN else "")
            )
        keys.append(key)
        level = level[key]
    if ema and EMA_KEY not in keys:
        raise _no_ema(path)
    if keys:
        origin["key"] = "/".join(keys)
        if facts is None:
            origin["format"] = "wrapped"
    state = {str(k): v for k, v in level.items()}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
        origin["module_prefix"] = True
    return state, origin


def read_checkpoint(path: str | os.PathLike[str], ema: bool = False) -> Checkpoint:
    """Read a .safetensors or torch.save checkpoint (.pth.tar, .tar, .pth, .pt, .bin, .ckpt), with its mfdeploy
    metadata when it has some. ``ema``: the EMA weights of a timm checkpoint (state_dict_ema), refused in one
    line when the file has none."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    suffix = weights_suffix(path)
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                raw_meta = handle.metadata() or {}
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: not a valid safetensors file ({exc})") from None
        if not state:
            raise UserError(f"{path} holds no tensors; it is not a Mobile-Former checkpoint")
        if ema:
            raise _no_ema(path)
        check_tensors(state, path)
        metadata = _parse_metadata(raw_meta)
        validate_checkpoint_metadata(metadata, path)
        return Checkpoint(state, metadata, {"format": "safetensors"})
    if suffix in TORCH_SUFFIXES:
        state, origin = _unwrap(_torch_load(path), path, ema)
        check_tensors(state, path)
        return Checkpoint(state, origin=origin)
    raise UserError(f"unsupported weights file {path.name}: use a {', '.join(WEIGHTS_SUFFIXES)} file")


def _parse_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """safetensors metadata is str -> str; mfdeploy stores JSON values (a foreign file plain strings)."""
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            metadata[key] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (a foreign file's plain string), or hostile JSON
            metadata[key] = value
    return metadata


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors, plain containers and an argparse.Namespace only, never an
    arbitrary unpickle."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it was not written with
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(_ADMITTED_CLASSES)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse a user's file is a user error
        found = re.search(r"GLOBAL ([\w.]+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if found is not None:
            raise UserError(
                f"refusing to load {path}: it pickles a Python object ({found.group(1)}), and only tensors "
                "are loaded safely (and the argparse.Namespace of a training checkpoint); save model.state_dict() "
                "or a .safetensors file"
            ) from None
        refused = isinstance(exc, pickle.UnpicklingError) or "magic number" in str(exc)
        if refused and _is_bare_pickle(path):
            raise UserError(
                f"refusing to load {path}: it is a bare Python pickle (not torch.save's format), which may run "
                "code when unpickled, so it is refused for safety (only torch.load(weights_only=True) is used); "
                "save model.state_dict() with torch.save, or a .safetensors file"
            ) from None
        # torch's first sentence says what broke; the rest is advice for its own developers
        first_line = str(exc).strip().splitlines()[0].split(". ")[0][:120] if str(exc).strip() else ""
        reason = first_line if isinstance(exc, (RuntimeError, OSError)) and first_line else "corrupt or truncated"
        raise UserError(f"cannot read {path}: not a valid PyTorch checkpoint ({reason})") from None


def _is_bare_pickle(path: Path) -> bool:
    """Whether the file starts like a pickle of protocol 2 to 5 (torch.save writes a zip, starting 'PK')."""
    try:
        with path.open("rb") as handle:
            return _PICKLE_PROTOCOL.match(handle.read(2)) is not None
    except OSError:
        return False


def check_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse, by name, a tensor that cannot be a Mobile-Former weight: not floating point (BatchNorm's
    counter aside) or holding NaN/Inf. Caught here, such weights would otherwise surface much later as
    a verification failure with an infinite error and no cause."""
    for key, tensor in state.items():
        if key.rsplit(".", 1)[-1] in _COUNTERS:
            continue
        name = key if key.isprintable() and len(key) <= 120 else shown(key)
        if not tensor.is_floating_point():
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise UserError(
                f"{path.name}: tensor {name} is {dtype}; Mobile-Former weights are floating point; "
                "save the float state_dict of the trained model (model.state_dict())"
            )
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{path.name}: tensor {name} holds NaN/Inf, so the model's outputs would too; the training "
                "diverged or the file is damaged: use an earlier checkpoint or re-train"
            )


def identify(state: dict[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """Which (size, num_classes, in_chans) of the seed family a state dict belongs to, or None if it is none
    (:func:`mfdeploy.model.families.identify_family` asks both families)."""
    from mfdeploy.model.families import SEED, match_size

    return match_size(SEED, state)


def check_fits(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Raise a UserError naming the first offending keys if ``state`` does not fit ``model``; a state dict of
    another known model (family, size, class count, input channels) is named with the flags that load it."""
    from mfdeploy.model.families import describe, family_of, identify_family

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or misshaped):
        return
    asked = (family_of(model), model.cfg.name, model.num_classes, model.in_chans)
    wanted = describe(*asked)
    found = identify_family(state)
    if found is not None:
        flags = [f"{flag} {value}" for flag, value, want in zip(_FIT_FLAGS, found, asked) if value != want]
        raise UserError(
            f"weights {path.name} hold {describe(*found, article=True)}, not the {wanted} asked for; "
            f"pass {' '.join(flags)} (or leave those options out: the checkpoint says them)"
        )

    def show(keys: list[str]) -> str:
        more = f" and {len(keys) - _MAX_KEYS_SHOWN} more" if len(keys) > _MAX_KEYS_SHOWN else ""
        return ", ".join(keys[:_MAX_KEYS_SHOWN]) + more

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({show(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({show(unexpected)})")
    if misshaped:
        details = [f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}" for k in misshaped]
        problems.append(f"{len(misshaped)} mis-shaped ({show(details)})")
    raise UserError(f"weights {path.name} do not fit the {wanted}: " + "; ".join(problems))


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Write the state dict atomically, as .safetensors (with JSON metadata) or as a .pt state dict.

    The bytes are serialised in memory (tens of MB at most) and written by Python, so a full disk is an
    OSError the writer names, not a serialiser's own error type.
    """
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import save

        data = save(state, metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    elif path.suffix.lower() in _SAVE_SUFFIXES:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    else:
        raise UserError(f"unsupported checkpoint name {path.name}: use .safetensors or .pt")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def check_metadata_fits(metadata: dict[str, Any], model: nn.Module, path: Path) -> None:
    """The metadata describes these weights: the same family, size, class count and input channels, and one
    class name per output (a list of another length would mislabel every prediction, or crash `eval`)."""
    from mfdeploy.model.families import family_of

    facts = {
        "family": family_of(model),
        "size": model.cfg.name,
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
    }
    for key, actual in facts.items():
        if key in metadata and metadata[key] != actual:
            raise UserError(
                f"{path}: metadata {key} is {metadata[key]!r} but the weights are {actual!r}; {CHECKPOINT_ACTION}"
            )
    classes = metadata.get("classes")
    if classes is not None and len(classes) != model.num_classes:
        raise UserError(
            f"{path}: metadata classes holds {len(classes)} names but the weights have {model.num_classes} "
            f"outputs; give one name per class, or {CHECKPOINT_ACTION}"
        )


def check_ema_has_weights(weights: object, ema: bool) -> None:
    """--ema picks one of a checkpoint's two weight sets: without --weights there is none to pick from."""
    if ema and weights is None:
        raise UserError(f"--ema selects a checkpoint's EMA weights ({EMA_KEY}); pass --weights too, or {NO_EMA}")


@dataclass
class LoadedModel:
    """A ready model and where its weights came from (for manifests and reports)."""

    model: nn.Module  # a MobileFormer or an OfficialMobileFormer
    size: str
    num_classes: int
    in_chans: int
    weights: str  # a path, or "random"
    weights_sha256: str | None
    seed: int | None
    metadata: dict[str, Any] = field(default_factory=dict)
    ema: bool = False  # the checkpoint's EMA weights (state_dict_ema), not its state_dict
    origin: dict[str, Any] = field(default_factory=dict)  # Checkpoint.origin: the file's format and training facts
    family: str = "seed"  # mfdeploy.model.families: "seed" or "official"

    @property
    def is_random(self) -> bool:
        return self.weights_sha256 is None

    def source(self) -> dict[str, Any]:
        if self.is_random:
            return {"weights": "random", "seed": self.seed}
        # one file holds two models when it has EMA weights: which one is part of what was exported
        return {"weights": self.weights, "sha256": self.weights_sha256, **({"ema": True} if self.ema else {})}


def read_model_checkpoint(
    path: Path, ema: bool = False, arch: str | None = None
) -> tuple[Checkpoint, tuple[str, str, int, int] | None]:
    """A checkpoint with the model's keys (official keys renamed), and which (family, size, num_classes,
    in_chans) it is, or None when it fits no known model; an ``arch`` the checkpoint is not is refused."""
    from mfdeploy.model.families import check_arch, describe, identify_family, to_model_keys

    checkpoint = read_checkpoint(path, ema=ema)
    try:
        checkpoint.state_dict = to_model_keys(checkpoint.state_dict)
    except UserError as exc:
        raise UserError(f"weights {path.name}: {exc}") from None
    found = identify_family(checkpoint.state_dict)
    if found is not None and arch is not None and check_arch(arch) != found[0]:
        raise UserError(
            f"weights {path.name} hold {describe(*found, article=True)}, not --arch {check_arch(arch)}; "
            "drop --arch (the checkpoint says its family)"
        )
    return checkpoint, found


def load_model(
    size: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    seed: int = 0,
    ema: bool = False,
    arch: str | None = None,
) -> LoadedModel:
    """The model a command asks for: from a checkpoint when given (family, size and classes read from it when
    not passed; ``ema``: its EMA weights), otherwise deterministic random weights of family ``arch`` from
    ``seed``, with a one-time warning. Official checkpoints (official keys) are renamed to the model's keys."""
    from mfdeploy.model.families import TITLES, build_family_model, check_arch

    if num_classes is not None:
        check_num_classes(num_classes)
    check_seed(seed)
    check_ema_has_weights(weights, ema)
    if weights is None:
        family = check_arch(arch)
        model = build_family_model(family, size or DEFAULT_SIZE, num_classes or 1000, in_chans=in_chans or 3, seed=seed)
        warn_once(
            "random-weights",
            f"no --weights given: the {TITLES[family]} {model.cfg.name} has random weights (seed {seed}); "
            "its outputs mean nothing, only its numerics can be checked",
        )
        return LoadedModel(
            model, model.cfg.name, model.num_classes, model.in_chans, "random", None, seed, family=family
        )

    path = Path(weights)
    checkpoint, found = read_model_checkpoint(path, ema, arch)
    state = checkpoint.state_dict
    if found is not None:
        arch = found[0]
        size = size or found[1]
        num_classes = num_classes or found[2]
        in_chans = in_chans or found[3]
    recorded = checkpoint.metadata.get("family")  # validated by read_checkpoint
    family = check_arch(arch if arch is not None else recorded if isinstance(recorded, str) else None)
    if size is None:
        raise UserError(f"{path.name} is not a Mobile-Former checkpoint of any known size; pass --size to see why")
    model = build_family_model(family, size, num_classes or 1000, in_chans=in_chans or 3, seed=seed)
    check_fits(state, model, path)
    check_metadata_fits(checkpoint.metadata, model, path)
    model.load_state_dict(state, strict=True)
    return LoadedModel(
        model.eval(),
        model.cfg.name,
        model.num_classes,
        model.in_chans,
        str(path),
        sha256_file(path),
        None,
        checkpoint.metadata,
        ema,
        checkpoint.origin,
        family,
    )
