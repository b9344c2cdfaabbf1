"""The official family through the toolchain, from checkpoints shaped like the ones users hold: timm's
CheckpointSaver `.pth.tar` with the official code's keys, written here from deterministic weights (the real
ImageNet files are on Google Drive only and are never fetched by tests)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mfdeploy.artifacts import Artifact, export_command
from mfdeploy.model.official import build_official_model, to_official_state_dict
from mfdeploy.model.official_config import get_official_config
from mfdeploy.model.weights import load_model
from mfdeploy.runtime.torch_runner import TorchRunner

IMGSZ = "64"  # small images: every op of the 224 px graph, a twelfth of the pixels


def official_pth_tar(path, size: str = "26m", num_classes: int = 1000, seed: int = 3):
    """A timm CheckpointSaver file as the official training wrote them (official keys, args Namespace)."""
    model = build_official_model(size, num_classes=num_classes, seed=seed)
    state = to_official_state_dict(model.state_dict())
    args = argparse.Namespace(model=f"mobile_former_{size}", lr=0.1, epochs=450, num_classes=num_classes)
    torch.save(
        {"epoch": 449, "arch": f"mobile_former_{size}", "state_dict": state, "optimizer": {}, "version": 2,
         "args": args, "metric": 64.0},
        path,
    )  # fmt: skip
    return path, model


@pytest.fixture(scope="module")
def official_26m(tmp_path_factory):
    return official_pth_tar(tmp_path_factory.mktemp("official") / "mobile-former-26m.pth.tar")


def test_export_reads_the_family_and_size_from_an_official_checkpoint(cli, tmp_path, official_26m):
    path, model = official_26m
    result = cli("export", "--weights", path, "--imgsz", IMGSZ, "--out", tmp_path, "--json")
    assert result.code == 0, result.err
    artifact = Artifact.open(tmp_path / "mobileformer_26m")
    recorded = artifact.manifest["model"]
    assert (recorded["family"], recorded["size"], recorded["num_classes"]) == ("official", "26m", 1000)
    assert recorded["params"] == get_official_config("26m").official_params
    assert recorded["checkpoint"]["format"] == "timm" and recorded["checkpoint"]["epoch"] == 449
    assert artifact.manifest["verification"]["onnx"]["passed"]
    assert "exported official Mobile-Former 26m" in result.err
    # the stored weights rebuild the same official model: what parity and bench compare against
    images = torch.randn(2, 3, int(IMGSZ), int(IMGSZ))
    with torch.no_grad(), TorchRunner.from_artifact(artifact) as runner:
        stored = runner.infer(images.numpy())
        assert torch.allclose(torch.from_numpy(stored), model(images), atol=1e-6)
    assert load_model(weights=artifact.path("weights.safetensors")).family == "official"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "508m"], "hold an official Mobile-Former 26m with 1000 classes, not the official "
         "Mobile-Former 508m with 1000 classes asked for; pass --size 26m"),
        (["--num-classes", "10"], "pass --num-classes 1000"),
        (["--arch", "seed"], "not --arch seed; drop --arch"),
        (["--ema"], "has no state_dict_ema"),
    ],
)  # fmt: skip
def test_a_checkpoint_that_does_not_fit_is_one_line(cli, tmp_path, official_26m, args, message):
    result = cli("export", "--weights", official_26m[0], *args, "--imgsz", IMGSZ, "--out", tmp_path / "out")
    assert result.code != 0
    assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "out").exists()


def test_ten_classes_asked_as_a_thousand(cli, tmp_path):
    path, _ = official_pth_tar(tmp_path / "digits.pth.tar", num_classes=10)
    result = cli("export", "--weights", path, "--num-classes", "1000", "--out", tmp_path / "out")
    assert result.code != 0 and "with 10 classes" in result.err and "pass --num-classes 10" in result.err
    assert not (tmp_path / "out").exists()


def test_arch_picks_the_family_without_weights_and_the_folder_says_which(cli, tmp_path):
    common = ["--size", "26m", "--imgsz", IMGSZ, "--num-classes", "10", "--out", tmp_path]
    assert cli("export", "--arch", "official", *common).code == 0
    artifact = Artifact.open(tmp_path / "mobileformer_26m")
    assert artifact.manifest["model"]["family"] == "official"
    # the export that makes this folder again says the family
    assert "--arch official" in export_command(artifact)
    # the seed family's 26m is another model: refused, naming the difference, the folder unchanged
    before = (artifact.root / "manifest.json").read_bytes()
    result = cli("export", *common)
    assert result.code != 0 and "family official there, seed asked" in result.err
    assert (artifact.root / "manifest.json").read_bytes() == before
    assert cli("export", "--arch", "mobilenet", *common).code != 0


def test_info_puts_the_official_parameter_count_beside_ours(cli):
    result = cli("info", "--arch", "official", "--size", "52m", "--imgsz", IMGSZ, "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["family"] == "official" and info["params"] == info["official_params"] == 3_469_092
