"""Nothing a user made is lost, and an artifact stays consistent whatever happens to the command writing it:
folders where a file goes, a second writer, interruptions (Ctrl-C, SIGTERM, SIGKILL), a full disk."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_subprocess
from mfdeploy.artifacts import MANIFEST_NAME, Artifact
from mfdeploy.commit import COMMITTING, FolderUpdate
from mfdeploy.errors import UserError
from mfdeploy.fileio import atomic_path, sha256_file
from mfdeploy.locking import EXIT_LOCKED, artifact_lock


def _folder_state(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones included), by relative path."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _consistent(root: Path) -> None:
    """Every file the manifest lists is there with the hash it records."""
    artifact = Artifact.open(root)
    for name in artifact.manifest["files"]:
        artifact.require(name, "missing")


def _a_users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("the user's own file")
    return path


# -- a folder (or a device) where a file goes is refused, never removed ---------------------------------------


def test_atomic_path_refuses_a_folder_and_keeps_it(tmp_path):
    folder = _a_users_folder(tmp_path / "results.json")
    with pytest.raises(UserError, match="is a folder"):
        with atomic_path(folder) as tmp:
            tmp.write_text("{}")
    assert (folder / "keep.txt").read_text() == "the user's own file"


def test_atomic_path_refuses_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        with atomic_path(fifo) as tmp:
            tmp.write_text("x")
    assert fifo.exists() and not fifo.is_file()


def test_atomic_path_follows_a_link_and_keeps_it(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "results.json").write_text("old")
    link = tmp_path / "results.json"
    link.symlink_to(shared / "results.json")
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and (shared / "results.json").read_text() == "new"


def test_json_to_a_device_link_is_refused_not_replaced(cli, tmp_path):
    stdout_link = tmp_path / "stdout"
    stdout_link.symlink_to("/proc/self/fd/1")  # what /dev/stdout is: writing "onto" it replaced the link
    result = cli("info", "--size", "26m", "--json", stdout_link)
    assert result.code == 1 and "device or a stream" in result.err and "- for stdout" in result.err
    assert stdout_link.is_symlink()


@pytest.mark.parametrize(
    "args",
    [
        ["info", "--size", "26m", "--json", "{dir}"],
        ["parity", "--size", "26m", "--md", "{dir}"],
        ["parity", "--size", "26m", "--html", "{dir}"],
        ["eval", "no-such-artifact", "--json", "{dir}"],
        ["train", "--size", "26m", "--epochs", "1", "--out", "{dir}"],
    ],
    ids=["info-json", "parity-md", "parity-html", "eval-json", "train-out"],
)
def test_commands_refuse_a_folder_as_output_before_any_work(cli, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)  # the default --out (runs/) would land here if the command did any work
    folder = _a_users_folder(tmp_path / "existing.safetensors")
    result = cli(*[a.replace("{dir}", str(folder)) for a in args])
    assert result.code != 0
    assert "is a folder" in result.err and "Traceback" not in result.err
    assert (folder / "keep.txt").read_text() == "the user's own file"
    assert not (tmp_path / "runs").exists()  # no export was made for a command that cannot write its result


def test_output_under_a_file_is_refused_before_any_work(cli, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    result = cli("train", "--size", "26m", "--epochs", "1", "--out", blocker / "model.safetensors")
    assert result.code != 0 and "is a file, not a folder" in result.err
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as non-root: root may write anywhere, so chmod cannot deny it")
def test_unwritable_output_folder_is_refused_before_any_work(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert not os.access(locked, os.W_OK)  # the denial this test is about really happens here
        result = cli("train", "--size", "26m", "--epochs", "1", "--out", locked / "model.safetensors")
    finally:
        locked.chmod(0o755)
    assert result.code != 0 and "permission denied" in result.err
    assert list(locked.iterdir()) == []


def test_a_denied_output_folder_is_refused_before_any_work_as_any_user(cli, tmp_path, monkeypatch):
    """The same refusal where chmod cannot produce it (root): the write check is told the folder is not
    writable, as the OS tells a user without permission. Proves the refusal and that nothing is written;
    not that the OS denies (the non-root test above does)."""
    import mfdeploy.fileio

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        mfdeploy.fileio.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    result = cli("train", "--size", "26m", "--epochs", "1", "--out", locked / "model.safetensors")
    assert result.code != 0 and f"permission denied in {locked}" in result.err, result.err
    assert "Traceback" not in result.err and list(locked.iterdir()) == []


def test_report_refuses_a_folder_where_a_chart_goes(cli, tmp_path):
    results = sorted((Path(__file__).parent.parent / "docs" / "sample-report").glob("bench-*.json"))
    folder = _a_users_folder(tmp_path / "report-latency-vs-batch.png")
    result = cli("report", *results, "--md", tmp_path / "report.md")
    assert result.code != 0 and "is a folder" in result.err
    assert (folder / "keep.txt").exists()
    assert not (tmp_path / "report.md").exists()  # nothing half-written: no chart, no markdown


# -- one writer per artifact --------------------------------------------------------------------------------


def test_a_second_writer_is_refused_in_one_line(small_artifact):
    before = _folder_state(small_artifact)
    with artifact_lock(small_artifact, "export"):
        result = run_subprocess("export", "--size", "26m", "--imgsz", "64", "--out", small_artifact.parent, "--force")
    assert result.code == EXIT_LOCKED
    assert f"pid {os.getpid()}" in result.err and "another mfdeploy command" in result.err
    assert "Traceback" not in result.err
    assert len([line for line in result.err.splitlines() if line.startswith("error:")]) == 1
    assert _folder_state(small_artifact) == before


def test_calibrate_refuses_while_another_command_writes(small_artifact):
    with artifact_lock(small_artifact, "calibrate"):
        result = run_subprocess("calibrate", small_artifact, "--calib-size", "8", "--precision", "fp16")
    assert result.code == EXIT_LOCKED and "being written by another mfdeploy command" in result.err
    assert "--force" not in result.err


# -- interruptions leave the artifact as it was ---------------------------------------------------------------


def test_calibrate_interrupted_before_its_commit_changes_nothing(cli, small_artifact, monkeypatch):
    from mfdeploy.calibration import pipeline

    cli("calibrate", small_artifact, "--calib-size", "8", "--precision", "fp16")
    before = _folder_state(small_artifact)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the report is written: the new graph already exists
        time.sleep(5)  # the handler raises during the sleep

    monkeypatch.setattr(pipeline, "render_markdown", interrupted)
    result = cli("calibrate", small_artifact, "--calib-size", "8", "--precision", "int8,fp16", "--method", "entropy")
    assert result.code == 130 and "interrupted by SIGINT" in result.err
    assert _folder_state(small_artifact) == before  # no new int8 graph beside the old manifest
    assert not [p for p in small_artifact.iterdir() if p.name.startswith(".mfdeploy")]
    _consistent(small_artifact)


def test_sigterm_during_calibrate_exits_130_and_leaves_a_consistent_artifact(small_artifact):
    before = _folder_state(small_artifact)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfdeploy", "calibrate", str(small_artifact), "--calib-size", "48"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    # the update's staging folder appears once calibrate writes its first file: it is mid-update then
    while not list(small_artifact.glob(".mfdeploy.update-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "calibrate never started writing"
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert _folder_state(small_artifact) == before
    _consistent(small_artifact)


def test_sigint_exits_130_with_a_message(cli, monkeypatch):
    from mfdeploy.model import complexity

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    monkeypatch.setattr(complexity, "measure", interrupted)
    result = cli("info", "--size", "26m")
    assert result.code == 130 and "interrupted" in result.err


def test_leftovers_of_killed_runs_are_removed_and_nothing_else(cli, small_artifact):
    dead = _a_dead_pid()
    out = small_artifact.parent
    stale_update = small_artifact / f".mfdeploy.update-{dead}-abc123"
    stale_staging = out / f".{small_artifact.name}.partial-{dead}-xyz"
    live_staging = out / f".{small_artifact.name}.partial-{os.getpid()}-live"
    users_own = out / f".{small_artifact.name}.partial-notes"
    for folder in (stale_update, stale_staging, live_staging, users_own):
        _a_users_folder(folder)
    stale_lock = out / f".{small_artifact.name}.lock"  # a killed writer's lock file: unlocked, taken over
    stale_lock.write_text(json.dumps({"pid": dead, "action": "export"}))

    assert cli("calibrate", small_artifact, "--calib-size", "8", "--precision", "fp16").code == 0
    assert not stale_update.exists()
    assert cli("export", "--size", "26m", "--imgsz", "64", "--out", out, "--force").code == 0
    assert not stale_staging.exists() and not stale_lock.exists()
    assert live_staging.exists() and users_own.exists()  # a live writer's work and the user's own folder


def _a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_committed_update_cut_short_is_finished_by_the_next_open(small_artifact):
    """A kill between the commit and the last move: the next command rolls the update forward."""
    artifact = Artifact.open(small_artifact)
    update = FolderUpdate(small_artifact)
    update.path("notes/extra.txt").write_text("new file")
    artifact.record_file("notes/extra.txt", update.path("notes/extra.txt"))
    update.path(MANIFEST_NAME).write_text(artifact.manifest_text())
    staging = update.path("notes/extra.txt").parent.parent
    (staging / "journal.json").write_text(json.dumps(["notes/extra.txt", MANIFEST_NAME]))
    os.replace(staging, small_artifact / COMMITTING)  # committed; killed before any file moved

    reopened = Artifact.open(small_artifact)
    assert (small_artifact / "notes/extra.txt").read_text() == "new file"
    assert reopened.has("notes/extra.txt") and not (small_artifact / COMMITTING).exists()
    _consistent(small_artifact)


# -- a full disk is a clean error that leaves nothing behind --------------------------------------------------


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))


def test_export_on_a_full_disk_fails_in_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "mfdeploy", "export", "--size", "26m", "--imgsz", "64", "--out", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr
    assert "file too large" in proc.stderr and "Traceback" not in proc.stderr
    leftovers = [p.name for p in out.iterdir() if not p.name.endswith(".lock")] if out.exists() else []
    assert leftovers == []
