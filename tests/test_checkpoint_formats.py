"""Checkpoints as users hold them: timm's CheckpointSaver dict in a .pth.tar (the official Mobile-Former
weights' format), its EMA weights on request, DataParallel prefixes, every accepted suffix; and each bad
file of that kind refused in one line, through the real command line, with nothing written."""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import shutil

import pytest
import torch

from conftest import CliResult, run_subprocess
from mfdeploy.artifacts import WEIGHTS_FILE, Artifact, export_command
from mfdeploy.errors import UserError
from mfdeploy.model import build_model
from mfdeploy.model.weights import WEIGHTS_SUFFIXES, load_model, read_checkpoint, save_checkpoint

NUM_CLASSES = 10
ARGS = {"model": "mobile_former_26m", "lr": 0.1, "epochs": 450, "model_ema": True, "decay_rate": (0.1, None)}


@functools.cache
def _optimizer_state() -> dict:
    """A real optimizer state (momentum buffers, param groups): one SGD step of a 26m."""
    model = build_model("26m", num_classes=NUM_CLASSES, seed=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def _timm_dict(state, ema=None, **changes):
    """What timm 0.3.4's CheckpointSaver writes (train.py's --model-ema adds state_dict_ema)."""
    saved = {
        "epoch": 449,
        "arch": "mobileformer",
        "state_dict": state,
        "optimizer": _optimizer_state(),
        "version": 2,
        "args": argparse.Namespace(**ARGS),
        "metric": 64.0,
        "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 12},
    }
    if ema is not None:
        saved["state_dict_ema"] = ema
    saved.update(changes)
    return saved


@pytest.fixture(scope="module")
def states():
    """A real 26m state dict and its EMA twin (every float tensor slightly different)."""
    state = build_model("26m", num_classes=NUM_CLASSES, seed=1).state_dict()
    ema = {k: v * 0.99 + 1e-3 if v.is_floating_point() else v.clone() for k, v in state.items()}
    return state, ema


@pytest.fixture(scope="module")
def official(tmp_path_factory, states):
    """mobile-former-26m.pth.tar as the official release ships it (here with EMA weights)."""
    path = tmp_path_factory.mktemp("official") / "mobile-former-26m.pth.tar"
    torch.save(_timm_dict(*states), path)
    return path


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _one_line_error(result: CliResult, *fragments: str) -> str:
    assert result.code != 0 and "Traceback" not in result.err, result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- what loads ----------------------------------------------------------------------------------------------
def test_a_timm_checkpoint_loads_its_state_dict_and_keeps_the_training_facts(official, states):
    loaded = load_model(weights=official)  # size and classes read from the state dict itself
    assert (loaded.size, loaded.num_classes, loaded.in_chans) == ("26m", NUM_CLASSES, 3)
    assert _equal(loaded.model.state_dict(), states[0])
    assert loaded.origin == {
        "format": "timm",
        "epoch": 449,
        "arch": "mobileformer",
        "metric": 64.0,
        "version": 2,
        "key": "state_dict",
    }
    json.dumps(loaded.origin)  # plain JSON, ready for a manifest
    assert "ema" not in loaded.source() and loaded.source()["weights"] == str(official)


def test_ema_selects_state_dict_ema(official, states):
    state, ema = states
    plain, averaged = load_model(weights=official), load_model(weights=official, ema=True)
    assert _equal(averaged.model.state_dict(), ema) and not _equal(averaged.model.state_dict(), state)
    assert averaged.origin["key"] == "state_dict_ema" and averaged.source()["ema"] is True
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(plain.model(x), averaged.model(x))


def test_data_parallel_prefixes_are_dropped_in_both_weight_sets(tmp_path, states):
    state, ema = ({f"module.{k}": v for k, v in s.items()} for s in states)
    path = tmp_path / "ddp.pth.tar"
    torch.save(_timm_dict(state, ema), path)
    for use_ema, expected in ((False, states[0]), (True, states[1])):
        checkpoint = read_checkpoint(path, ema=use_ema)
        assert _equal(checkpoint.state_dict, expected) and checkpoint.origin["module_prefix"] is True


@pytest.mark.parametrize("suffix", [s for s in WEIGHTS_SUFFIXES if s != ".safetensors"] + [".PTH.TAR"])
def test_every_torch_suffix_reads_a_timm_checkpoint(official, tmp_path, suffix, states):
    path = tmp_path / f"weights{suffix}"
    shutil.copyfile(official, path)
    assert _equal(read_checkpoint(path, ema=True).state_dict, states[1])


def test_bare_and_wrapped_state_dicts_say_where_they_came_from(tmp_path, states):
    torch.save(states[0], tmp_path / "bare.pth.tar")
    torch.save({"model": states[0]}, tmp_path / "wrapped.tar")
    assert read_checkpoint(tmp_path / "bare.pth.tar").origin == {"format": "state_dict"}
    assert read_checkpoint(tmp_path / "wrapped.tar").origin == {"format": "wrapped", "key": "model"}
    path = save_checkpoint(build_model("26m", num_classes=NUM_CLASSES), tmp_path / "w.safetensors")
    assert read_checkpoint(path).origin == {"format": "safetensors"}


def test_the_training_facts_are_user_data_kept_only_when_plain(tmp_path, states):
    torch.save(_timm_dict(states[0], epoch=True, arch="x" * 500, metric=float("nan"), version=-1), tmp_path / "a.tar")
    assert read_checkpoint(tmp_path / "a.tar").origin == {"format": "timm", "arch": "x" * 100, "key": "state_dict"}
    torch.save(_timm_dict(states[0], epoch=10**9, arch="a\nb", metric="64.0", version="2"), tmp_path / "b.tar")
    assert read_checkpoint(tmp_path / "b.tar").origin == {"format": "timm", "key": "state_dict"}


def test_a_namespace_of_plain_values_loads_whatever_it_holds(tmp_path, states):
    odd = argparse.Namespace(nested=argparse.Namespace(a=[1, {"b": (None, 2.5)}]), device=torch.device("cpu"))
    torch.save(_timm_dict(states[0], args=odd), tmp_path / "odd.pth.tar")
    assert _equal(read_checkpoint(tmp_path / "odd.pth.tar").state_dict, states[0])


# -- what is refused, and never run ------------------------------------------------------------------------
class _Marker:
    """Unpickling this would create the file: proof that nothing inside the Namespace was executed."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class _UsersClass:
    pass


@pytest.mark.parametrize(
    "holding,named",
    [
        (lambda marker: argparse.FileType("r"), "argparse.FileType"),
        (lambda marker: pathlib.PurePosixPath("/data/imagenet"), "pathlib.PurePosixPath"),
        (lambda marker: _UsersClass(), "_UsersClass"),
        (lambda marker: _Marker(marker), "open"),
    ],
)
def test_a_namespace_holding_another_class_is_refused_and_never_run(tmp_path, states, holding, named):
    marker = tmp_path / "pickle-ran"
    path = tmp_path / "mobile-former-26m.pth.tar"
    torch.save(_timm_dict(states[0], args=argparse.Namespace(data=holding(marker))), path)
    with pytest.raises(UserError) as info:
        load_model(weights=path)
    message = str(info.value)
    assert "\n" not in message and f"refusing to load {path}" in message and named in message
    assert not marker.exists()


def test_ema_is_refused_where_there_are_no_ema_weights(tmp_path, states):
    torch.save(_timm_dict(states[0]), tmp_path / "no-ema.pth.tar")
    torch.save(states[0], tmp_path / "bare.pt")
    safetensors = save_checkpoint(build_model("26m", num_classes=NUM_CLASSES), tmp_path / "w.safetensors")
    for path in (tmp_path / "no-ema.pth.tar", tmp_path / "bare.pt", safetensors):
        with pytest.raises(UserError, match=f"^{path.name} has no state_dict_ema .*; drop --ema$"):
            load_model(weights=path, ema=True)
    with pytest.raises(UserError, match="pass --weights too"):
        load_model(size="26m", ema=True)


def test_training_starts_from_the_ema_weights_when_asked(official, states):
    from mfdeploy.training.loop import _load_backbone

    model = build_model("26m", num_classes=NUM_CLASSES)
    _load_backbone(model, read_checkpoint(official, ema=True), official)
    assert _equal(model.state_dict(), states[1])


# -- through the command line: one line, non-zero, nothing written -------------------------------------------
def _bad_files(tmp_path, official, states):
    state = states[0]
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(official.read_bytes()[: official.stat().st_size // 2])
    torch.save(_timm_dict(state, args=argparse.Namespace(out=pathlib.PurePosixPath("/x"))), tmp_path / "path.pth.tar")
    without = _timm_dict(state)
    del without["state_dict"]
    torch.save(without, tmp_path / "nostate.pth.tar")
    torch.save(_timm_dict({"conv.weight": [1.0, 2.0]}), tmp_path / "lists.pth.tar")
    torch.save(_timm_dict(state), tmp_path / "no-ema.pth.tar")
    (tmp_path / "weights.pkl").write_bytes(b"\x80\x02}q\x00.")
    return {
        "path": (["--weights", tmp_path / "path.pth.tar"], ["pickles a Python object (pathlib.PurePosixPath)"]),
        "cut": (["--weights", cut], ["cannot read", "cut.pth.tar", "not a valid PyTorch checkpoint"]),
        "suffix": (["--weights", tmp_path / "weights.pkl"], ["unsupported weights file weights.pkl", ".pth.tar"]),
        "no-ema": (
            ["--weights", tmp_path / "no-ema.pth.tar", "--ema"],
            ["no-ema.pth.tar has no state_dict_ema", "drop --ema"],
        ),
        "nostate": (
            ["--weights", tmp_path / "nostate.pth.tar"],
            ["timm training checkpoint (epoch 449) without a state_dict"],
        ),
        "lists": (
            ["--weights", tmp_path / "lists.pth.tar"],
            ["lists.pth.tar's state_dict is not a state dict of tensors", "'conv.weight' is a list"],
        ),
        "ema-alone": (["--size", "26m", "--ema"], ["--ema", "pass --weights too"]),
    }


def test_each_bad_checkpoint_is_one_line_and_writes_nothing(tmp_path, official, states, cli):
    cases = _bad_files(tmp_path, official, states)
    for name, (args, fragments) in cases.items():
        out = tmp_path / f"out-{name}"
        _one_line_error(cli("export", *args, "--imgsz", "64", "--out", out), *fragments)
        assert not out.exists(), name
    for name in ("no-ema", "lists"):  # calibrate exports on demand: refused the same way, before any export
        args, fragments = cases[name]
        _one_line_error(cli("calibrate", *args, "--out", tmp_path / "calibrate"), *fragments)
        assert not (tmp_path / "calibrate").exists()
    train_out = tmp_path / "trained.safetensors"
    args, fragments = cases["no-ema"]
    _one_line_error(cli("train", *args, "--imgsz", "64", "--epochs", "1", "--out", train_out), *fragments)
    assert not train_out.exists()


def test_a_refused_pth_tar_in_a_fresh_process(tmp_path, official, states):
    """What a user's shell sees: `mfdeploy export --weights x.pth.tar` in its own interpreter."""
    args, fragments = _bad_files(tmp_path, official, states)["path"]
    out = tmp_path / "out"
    _one_line_error(run_subprocess("export", *args, "--imgsz", "64", "--out", out), *fragments)
    assert not out.exists()


def test_export_of_the_ema_weights_is_its_own_export(official, states, tmp_path, cli):
    out = tmp_path / "out"
    result = cli("export", "--weights", official, "--ema", "--imgsz", "64", "--out", out)
    assert result.code == 0, result.err
    assert "EMA weights" in result.out
    artifact = Artifact.open(out / "mobileformer_26m")
    assert artifact.manifest["model"]["source"]["ema"] is True
    assert _equal(read_checkpoint(artifact.path(WEIGHTS_FILE)).state_dict, states[1])
    assert "--ema" in export_command(artifact)
    # the same file without --ema is another model: refused without --force, before any work
    again = cli("export", "--weights", official, "--imgsz", "64", "--out", out)
    _one_line_error(again, "holds another export", "EMA weights")
    _one_line_error(cli("calibrate", out / "mobileformer_26m", "--ema"), "pass either an artifact folder or --ema")
