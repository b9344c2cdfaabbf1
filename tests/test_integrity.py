"""Nothing lost, no traceback (issue 15): `verify` covers every file an artifact's manifest lists and the
manifest itself, and user strings (paths, device names, data sources) are shown as typed, both in the
Markdown reports and on the terminal.

One small artifact is exported and calibrated once, by the real CLI, under an --out path that holds rich
markup and from a calibration folder whose name holds HTML and a javascript: link; each test tampers with
its own copy.
"""

from __future__ import annotations

import html
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import CliResult, run_subprocess
from mfdeploy import markdown as md
from mfdeploy.artifacts import MANIFEST_DIGEST, Artifact, remake_command
from mfdeploy.errors import UserError
from mfdeploy.images.samples import builtin_images

SCRIPT = "<script>alert(1)</script>"
LINK = "[x](javascript:alert(1))"
MARKUP = "[/] [bold]"  # rich markup that raises MarkupError when parsed ("[/]" closes nothing)


@dataclass
class Hostile:
    root: Path  # the exported, calibrated artifact
    data: Path  # a folder of images whose path holds SCRIPT and LINK
    export: CliResult
    calibrate: CliResult


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Hostile:
    base = tmp_path_factory.mktemp("integrity")
    # a file name cannot hold "/": the hostile strings run across two folders
    data = base / "<script>alert(1)<" / "script>[x](javascript:alert(1))"
    data.mkdir(parents=True)
    for i, image in enumerate(builtin_images(16)):
        image.save(data / f"{i}.png")
    out = base / "out [" / "] [bold]"
    exported = run_subprocess("export", "--size", "26m", "--imgsz", "64", "--num-classes", "10", "--out", out)
    root = out / "mobileformer_26m"
    calibrated = run_subprocess("calibrate", root, "--calib-data", data, "--calib-size", "16", "--no-latency")
    return Hostile(root, data, exported, calibrated)


@pytest.fixture
def artifact(hostile, tmp_path) -> Path:
    """A private copy of the calibrated artifact, to tamper with."""
    if hostile.export.code or hostile.calibrate.code:
        pytest.fail(f"the shared artifact was not made: {hostile.export.err}{hostile.calibrate.err}")
    copy = tmp_path / "mobileformer_26m"
    shutil.copytree(hostile.root, copy)
    return copy


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)


def edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def statuses(report: dict) -> dict[str, str]:
    return {entry["name"]: entry["status"] for entry in report["files"]}


def render(markdown: str) -> str:
    """The HTML a CommonMark renderer (with tables, as on GitHub) makes of ``markdown``."""
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").enable("table").render(markdown)


def assert_shown_as_text(markdown: str, *strings: str) -> None:
    """No live HTML or javascript: link in the rendered page, and each string shown as its literal text."""
    page = render(markdown)
    assert "<script" not in page and 'href="javascript' not in page.lower() and 'src="javascript' not in page
    for string in strings:
        assert html.escape(string, quote=False) in page, string


# -- verify: every file, and the manifest itself ------------------------------------------------------------


def test_an_untouched_artifact_verifies_listing_every_file(cli, artifact):
    result = cli("verify", artifact, "--json")
    assert result.code == 0, result.err
    report = result.json()
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert [entry["name"] for entry in report["files"]] == ["manifest.json", *manifest["files"]]
    assert set(statuses(report).values()) == {"ok"} and report["passed"] and report["warnings"] == []
    assert {"model.int8.onnx", "model.fp16.onnx", "calibration.json", "calibration.md"} <= set(statuses(report))
    assert {c["batch"] for c in report["cases"]} == {1, 7, 32}
    for name in manifest["files"]:  # the human list: one line per file
        assert re.search(rf"^ok +{re.escape(name)}$", result.err, re.M), result.err


@pytest.mark.parametrize(
    ("name", "damage", "status"),
    [
        ("model.int8.onnx", flip_byte, "changed"),
        ("calibration.json", lambda p: p.write_text(p.read_text() + "\n"), "changed"),
        ("model.fp16.onnx", Path.unlink, "missing"),
    ],
)
def test_a_damaged_calibration_file_fails_verify_naming_it_and_calibrate(cli, artifact, name, damage, status):
    damage(artifact / name)
    result = cli("verify", artifact, "--json")
    assert result.code == 4 and "Traceback" not in result.err
    report = result.json()
    assert not report["passed"] and statuses(report)[name] == status
    assert [n for n, s in statuses(report).items() if s != "ok"] == [name]
    assert report["numbers_passed"] and report["cases"]  # the FP32 graph and weights are intact: still compared
    error = result.err.strip().splitlines()[-1]
    assert name in error and f"mfdeploy calibrate {artifact}" in error


def test_a_damaged_statistics_cache_is_recomputed_not_trusted(cli, artifact, hostile):
    (cache,) = (artifact / "calibration").glob("stats-*.npz")
    flip_byte(cache)
    result = cli("verify", artifact)
    assert result.code == 4 and f"calibration/{cache.name}" in result.err and "mfdeploy calibrate" in result.err
    # the remake the message names: the damaged cache is neither loaded (a traceback) nor reused
    again = cli("calibrate", artifact, "--calib-data", hostile.data, "--calib-size", "16", "--no-latency", "--json")
    assert again.code == 0 and "Traceback" not in again.err, again.err
    assert not again.json()["stats"]["reused"]
    assert cli("verify", artifact).code == 0


def test_a_changed_graph_is_named_with_the_export_that_remakes_it(cli, artifact):
    flip_byte(artifact / "model.onnx")
    result = cli("verify", artifact, "--json")
    assert result.code == 4
    report = result.json()
    assert statuses(report)["model.onnx"] == "changed" and report["cases"] == [] and "model.onnx" in report["skipped"]
    remake = next(entry["remake"] for entry in report["files"] if entry["name"] == "model.onnx")
    assert remake in result.err and remake.startswith("mfdeploy export --size 26m --imgsz 64 --num-classes 10")
    # the command the message gives does remake it
    assert cli(*shlex.split(remake)[1:]).code == 0
    assert cli("verify", artifact).code == 0


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["preprocessing"].update(mean=[0.0, 0.0, 0.0]),
        lambda m: m["files"]["model.onnx"].update(sha256="0" * 64),
        lambda m: m["model"].update(imgsz=96),
    ],
    ids=["preprocessing", "file-hash", "imgsz"],
)
def test_an_edited_manifest_is_refused_naming_the_manifest(cli, artifact, edit):
    edit_manifest(artifact, edit)
    result = cli("verify", artifact, "--json")
    assert result.code == 4
    report = result.json()
    assert statuses(report)["manifest.json"] == "changed" and report["cases"] == []
    assert "manifest.json changed since it was written" in result.err
    # every later step refuses it before trusting its preprocessing or hashes
    calibrate = cli("calibrate", artifact, "--calib-size", "16", "--no-latency")
    assert calibrate.code == 1 and "manifest.json changed since it was written" in calibrate.err
    assert "mfdeploy export --size 26m" in calibrate.err and "Traceback" not in calibrate.err
    opened = Artifact.open(artifact)
    with pytest.raises(UserError, match="manifest.json changed"):
        _ = opened.preprocessing
    with pytest.raises(UserError, match="manifest.json changed"):
        opened.save()  # saving would sign the edit


def test_the_updated_timestamp_is_outside_the_digest(artifact):
    edit_manifest(artifact, lambda m: m.update(updated="2000-01-01T00:00:00+00:00"))
    opened = Artifact.open(artifact)
    assert opened.manifest_status == "ok"
    assert opened.require("model.onnx", "-") == artifact / "model.onnx"


def test_a_manifest_from_before_the_digest_is_read_with_a_warning(cli, artifact):
    edit_manifest(artifact, lambda m: m.pop(MANIFEST_DIGEST))
    result = cli("verify", artifact, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert statuses(report)["manifest.json"] == "unprotected" and report["passed"]
    assert "no content digest (written by an older mfdeploy)" in result.err and report["warnings"]
    opened = Artifact.open(artifact)
    opened.save()  # the next save protects it
    assert Artifact.open(artifact).manifest_status == "ok"


def test_a_recorded_folder_is_checked_by_its_folder_digest(cli, artifact):
    package = artifact / "model.mlpackage"  # the layout of a package; its contents do not matter here
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "weight.bin").write_bytes(bytes(range(256)) * 64)
    opened = Artifact.open(artifact)
    opened.record_file("model.mlpackage")
    opened.save()
    assert cli("verify", artifact).code == 0
    flip_byte(package / "Data" / "weight.bin")
    result = cli("verify", artifact, "--json")
    assert result.code == 4 and statuses(result.json())["model.mlpackage"] == "changed"
    assert "model.mlpackage" in result.err and "--target coreml" in result.err


def test_each_file_names_the_command_that_remakes_it(artifact):
    opened = Artifact.open(artifact)
    assert remake_command(opened, "model.int8.plan") == f"mfdeploy build-engine {artifact} --precision int8"
    assert remake_command(opened, "engine.json") == f"mfdeploy build-engine {artifact}"
    assert remake_command(opened, "calibration/data-index.json") == f"mfdeploy calibrate {artifact}"
    export = f"mfdeploy export --size 26m --imgsz 64 --num-classes 10 --out {artifact.parent} --force"
    assert remake_command(opened, "weights.safetensors") == remake_command(opened, "manifest.json") == export


# -- the terminal: rich markup in user strings ---------------------------------------------------------------


def test_paths_holding_rich_markup_are_printed_as_typed(hostile):
    for run in (hostile.export, hostile.calibrate):
        assert run.code == 0 and "Traceback" not in run.err, run.err
    assert str(hostile.root / "model.onnx") in hostile.export.out and MARKUP in str(hostile.root)
    assert str(hostile.root / "calibration.md") in hostile.calibrate.out


def test_bench_device_name_with_markup_keeps_the_result_and_the_report_shows_it_as_text(cli, artifact, tmp_path):
    device = f"Jetson [AGX] Orin {MARKUP} {SCRIPT} {LINK}"
    result_file = tmp_path / "bench.json"
    args = ("--targets", "onnx", "--batches", "1", "--runs", "3", "--warmup", "1", "--device-name", device)
    bench = cli("bench", artifact, *args, "--json", result_file)
    assert bench.code == 0 and "Traceback" not in bench.err, bench.err
    assert json.loads(result_file.read_text())["device"] == device and device in bench.out
    report_md = tmp_path / "report.md"
    report = cli("report", result_file, "--md", report_md)
    assert report.code == 0, report.err
    assert SCRIPT not in report_md.read_text()
    assert_shown_as_text(report_md.read_text(), device)


# -- Markdown reports ------------------------------------------------------------------------------------------


def test_calibration_md_shows_the_data_source_as_text(hostile):
    text = (hostile.root / "calibration.md").read_text()
    assert SCRIPT not in text and LINK not in text
    assert_shown_as_text(text, str(hostile.data))


def test_parity_md_shows_the_data_source_as_text(cli, artifact, hostile, tmp_path):
    report = tmp_path / "parity.md"
    result = cli("parity", artifact, "--targets", "onnx", "--data", hostile.data, "--n", "8", "--md", report)
    assert result.code == 0, result.err
    assert SCRIPT not in report.read_text()
    assert_shown_as_text(report.read_text(), str(hostile.data), str(artifact))


@pytest.mark.parametrize(
    "string",
    [SCRIPT, LINK, f"![img]({LINK})", "a | b", "`code` **bold** _it_ ~~s~~ \\ &amp; <b>", "artifacts/mobileformer_26m"],
)
def test_escaped_text_renders_as_the_string_itself(string):
    page = render(md.text(string))
    assert html.unescape(re.sub(r"</?p>", "", page)).strip() == string
    table = render(f"| a | b |\n|---|---|\n| {md.text(string)} | 1 |\n")
    assert table.count("<td>") == 2  # a | in the string does not add a column


def test_normal_strings_stay_readable():
    for string in ("artifacts/mobileformer_26m", "onnxruntime (CPUExecutionProvider)", "bench-26m.json"):
        assert md.text(string) == string


def test_a_chart_address_cannot_become_a_script_link():
    page = render(f"![chart]({md.link_target('x](javascript:alert(1)).png')})")
    assert 'src="x%5D%28javascript%3Aalert%281%29%29.png"' in page and "javascript:" not in page


def test_code_spans_hold_backticks_and_pipes():
    assert render(md.code("a`b")).strip() == "<p><code>a`b</code></p>"
    table = render(f"| a |\n|---|\n| {md.code('x|y', in_table=True)} |\n")
    assert "<code>x|y</code>" in table


# -- messages that named the wrong cause ---------------------------------------------------------------------


def test_calibrate_does_not_advise_a_force_it_does_not_have(cli, tmp_path):
    (tmp_path / "mobileformer_26m").mkdir()
    (tmp_path / "mobileformer_26m" / "notes.txt").write_text("not an artifact")
    result = cli("calibrate", "--size", "26m", "--out", tmp_path)
    assert result.code == 1 and "Traceback" not in result.err
    assert "--force" not in result.err and "remove it or choose another --out" in result.err
    assert (tmp_path / "mobileformer_26m" / "notes.txt").exists()
