"""Checkpoints: safe loading, round trips, and errors that say what the checkpoint really is."""

from __future__ import annotations

import pytest
import torch

from mfdeploy.errors import UserError
from mfdeploy.model import build_model
from mfdeploy.model.weights import identify, load_model, read_checkpoint, save_checkpoint


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_state_dict_round_trip(tmp_path, suffix):
    model = build_model("26m", num_classes=10, seed=11)
    path = save_checkpoint(model, tmp_path / f"ckpt{suffix}", {"note": "round trip"})
    loaded = load_model(weights=path)  # size and class count read from the checkpoint itself
    assert (loaded.size, loaded.num_classes) == ("26m", 10)
    assert loaded.weights_sha256 and not loaded.is_random
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    if suffix == ".safetensors":
        assert read_checkpoint(path).metadata["note"] == "round trip"
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary behind


def test_wrapped_and_data_parallel_checkpoints_load(tmp_path):
    state = build_model("52m", num_classes=3).state_dict()
    torch.save({"epoch": 4, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    loaded = load_model(weights=tmp_path / "w.pth")
    assert (loaded.size, loaded.num_classes) == ("52m", 3)


def test_identify_tells_sizes_apart():
    for size in ("26m", "52m", "96m", "508m"):
        assert identify(build_model(size, num_classes=7).state_dict()) == (size, 7, 3)
    assert identify({"foo": torch.zeros(1)}) is None


def test_checkpoint_of_another_size_or_class_count_is_reported_as_such(tmp_path):
    path = save_checkpoint(build_model("26m", num_classes=10), tmp_path / "digits.safetensors")
    with pytest.raises(
        UserError,
        match=r"hold a seed-family \(PaddleViT\) Mobile-Former 26m with 10 classes, not "
        r"the .* 52m with 10 classes asked for; pass --size 26m \(",
    ):
        load_model(size="52m", weights=path)
    with pytest.raises(
        UserError,
        match=r"26m with 10 classes, not the .* 26m with 1000 classes asked for; pass "
        r"--num-classes 10 \(",
    ):
        load_model(size="26m", num_classes=1000, weights=path)
    with pytest.raises(UserError, match=r"Mobile-Former 26m with 10 classes, not --arch official; drop --arch"):
        load_model(weights=path, arch="official")


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    state = build_model("26m", num_classes=10).state_dict()
    del state["head.fc1.bias"]
    state["head.extra"] = torch.zeros(2)
    state["blocks.0.former.norm1.weight"] = torch.zeros(5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UserError) as info:
        load_model(size="26m", num_classes=10, weights=tmp_path / "bad.pt")
    message = str(info.value)
    assert "26m" in message and "\n" not in message
    assert "missing (head.fc1.bias)" in message
    assert "unexpected (head.extra)" in message
    assert "blocks.0.former.norm1.weight [5] vs [128]" in message


@pytest.mark.parametrize(
    "name,content,pattern",
    [
        ("garbage.pt", b"not a checkpoint" * 50, "not a valid PyTorch checkpoint"),
        ("garbage.safetensors", b"\x00" * 64, "not a valid safetensors file"),
        ("empty.pth", b"", "not a valid PyTorch checkpoint"),
        ("weights.onnx", b"xx", "unsupported weights file"),
    ],
)
def test_corrupt_or_foreign_files_give_clear_errors(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=pattern):
        load_model(weights=path)


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(build_model("26m"), tmp_path / "full.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="not a valid PyTorch checkpoint"):
        load_model(weights=cut)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused_not_executed(tmp_path, capsys):
    torch.save({"weights": torch.zeros(1), "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing to load .*only tensors"):
        load_model(weights=tmp_path / "evil.pt")
    assert "this must never run" not in capsys.readouterr().out


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a checkpoint"):
        load_model(weights=tmp_path / "list.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_model(weights=tmp_path / "nope.pt")


def test_random_weights_warn_once(capsys):
    import mfdeploy.console as console

    console._warned.discard("random-weights")
    first = load_model(size="26m", seed=3)
    load_model(size="26m", seed=3)
    assert first.is_random and first.source() == {"weights": "random", "seed": 3}
    assert capsys.readouterr().err.count("random weights") == 1
