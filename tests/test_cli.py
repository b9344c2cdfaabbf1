"""The command line: `info` and `train` outputs, and every bad input gives one line and a non-zero exit."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from conftest import run_subprocess
from mfdeploy.model import SIZES


def assert_one_line_error(result, *fragments):
    assert result.code != 0
    assert "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_info_all_lists_every_size(cli):
    result = cli("info", "--all")
    assert result.code == 0, result.err
    for size in SIZES:
        assert f" {size} " in result.out
    # a progress row per size on stderr (off a terminal rich prints each once, finished); stdout: the table
    rows = [line for line in result.err.splitlines() if line.startswith("info ")]
    assert [row.split()[1] for row in rows] == list(SIZES)
    assert all("2/2" in row and row.endswith("done") for row in rows), rows
    assert "info 26m" not in result.out
    data = cli("info", "--all", "--json").json()
    assert [row["size"] for row in data] == list(SIZES)
    for row in data:
        assert abs(row["madds_vs_paper"]) <= 0.15 and abs(row["params_vs_paper"]) <= 0.10


def test_info_single_size_has_stage_table(cli):
    result = cli("info", "--size", "52m", "--imgsz", "160")
    assert result.code == 0, result.err
    for stage in ("stem", "lite_bneck", "blocks.7", "final_to_former", "channel_conv", "head", "total"):
        assert stage in result.out
    data = cli("info", "--size", "52m", "--imgsz", "160", "--json").json()
    assert data["imgsz"] == 160 and data["size"] == "52m"
    assert data["stages"][-1]["output_shape"] == [[1, 1000]]
    assert data["num_tokens"] == 3 and data["num_heads"] == 4


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["info", "--size", "53m"], ["unknown size '53m'", "26m, 52m, 96m, 151m, 214m, 294m, 508m"]),
        (["info", "--size", "52m", "--imgsz", "100"], ["multiple of 32", "100"]),
        (["info", "--size", "52m", "--num-classes", "0"], ["--num-classes must be at least 1"]),
        (["info", "--size", "52m", "--all"], ["either --size or --all"]),
        (["train", "--size", "26m", "--data", "/no/such/folder", "--out", "x.safetensors"], ["does not exist"]),
        (["train", "--size", "99m", "--out", "x.safetensors"], ["unknown size"]),
        (["train", "--size", "26m", "--imgsz", "70", "--out", "x.safetensors"], ["multiple of 32"]),
        (["train", "--size", "26m", "--epochs", "0", "--out", "x.safetensors"], ["--epochs must be at least 1"]),
        (["train", "--size", "26m", "--out", "x.txt"], [".safetensors"]),
    ],
)
def test_bad_input_gives_one_line_error(cli, args, fragments):
    assert_one_line_error(cli(*args), *fragments)


def test_one_class_folder_is_refused(cli, tmp_path):
    (tmp_path / "cats").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 60, 10, 10)).save(tmp_path / "cats" / f"{i}.png")
    assert_one_line_error(cli("train", "--data", tmp_path, "--out", tmp_path / "o.safetensors"), "only one class")
    assert not (tmp_path / "o.safetensors").exists()


def test_file_instead_of_folder_and_empty_folder(cli, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert_one_line_error(cli("train", "--data", tmp_path / "a.txt", "--out", tmp_path / "o.pt"), "not a folder")
    (tmp_path / "empty").mkdir()
    result = cli("train", "--data", tmp_path / "empty", "--out", tmp_path / "o.pt")
    assert_one_line_error(result, "no class sub-folders")


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as non-root: root reads any folder, so chmod cannot deny it")
def test_unreadable_folder(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0)
    try:
        assert not os.access(locked, os.R_OK)  # the denial this test is about really happens here
        assert_one_line_error(cli("train", "--data", locked, "--out", tmp_path / "o.pt"), "cannot read data folder")
    finally:
        os.chmod(locked, 0o755)


def test_a_folder_that_cannot_be_listed_is_one_line_as_any_user(cli, tmp_path, monkeypatch):
    """The same error where chmod cannot produce it (root): listing the folder raises the OSError the OS
    raises for a user without permission. Proves the one-line error; not that the OS denies (above)."""
    import errno
    from pathlib import Path

    locked = tmp_path / "locked"
    (locked / "cats").mkdir(parents=True)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    result = cli("train", "--data", locked, "--out", tmp_path / "o.pt")
    assert_one_line_error(result, f"cannot read data folder {locked}: Permission denied")


def test_bad_weights_through_the_cli(cli, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk" * 10)
    result = cli("train", "--weights", tmp_path / "junk.pt", "--out", tmp_path / "o.safetensors")
    assert_one_line_error(result, "not a valid PyTorch checkpoint")


def test_real_process_exit_code_and_no_traceback():
    result = run_subprocess("info", "--size", "nope")
    assert_one_line_error(result, "unknown size 'nope'")
    result = run_subprocess("--version")
    assert result.code == 0 and result.out.startswith("mfdeploy ")
