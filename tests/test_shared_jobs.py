"""The suite's own machinery for artifacts several xdist workers share (background.py, conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from background import SharedJobs

from conftest import _work_unit

TESTS = Path(__file__).resolve().parent


def count_and_return(log: str, value: str) -> dict:
    """A job that takes a moment and leaves one line in ``log`` per run."""
    time.sleep(0.5)
    with open(log, "a") as handle:
        handle.write("ran\n")
    return {"value": value}


def always_fails(message: str) -> None:
    raise ValueError(message)


ASK = (
    "import sys; sys.path.insert(0, {tests!r}); from pathlib import Path; from background import SharedJobs; "
    "import test_shared_jobs as t; "
    "jobs = SharedJobs(Path({root!r}), {{'x': (t.count_and_return, ({log!r}, 'made'))}}); "
    "print(jobs.result('x')['value'])"
)


def test_a_job_asked_for_by_three_processes_at_once_runs_once(tmp_path):
    log = tmp_path / "runs.log"
    code = ASK.format(tests=str(TESTS), root=str(tmp_path / "jobs"), log=str(log))
    askers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    answers = [asker.communicate(timeout=120)[0].strip() for asker in askers]
    assert [asker.returncode for asker in askers] == [0, 0, 0]
    assert answers == ["made", "made", "made"]
    assert log.read_text() == "ran\n"


def test_a_job_started_in_the_background_is_waited_for_not_run_again(tmp_path):
    log = tmp_path / "runs.log"
    jobs = SharedJobs(tmp_path / "jobs", {"x": (count_and_return, (str(log), "made"))})
    jobs.start(["x"])
    assert jobs.result("x") == {"value": "made"}
    jobs.close()
    again = SharedJobs(tmp_path / "jobs", {"x": (count_and_return, (str(log), "other"))})
    assert again.result("x") == {"value": "made"}  # stored: read back, not made again
    assert log.read_text() == "ran\n"


def test_a_failed_job_stores_nothing_and_whoever_asks_next_sees_the_error(tmp_path):
    jobs = SharedJobs(tmp_path / "jobs", {"x": (always_fails, ("the real error",))})
    jobs.start(["x"])
    jobs.close()
    with pytest.raises(ValueError, match="the real error"):
        jobs.result("x")
    assert not list((tmp_path / "jobs").glob("*.json"))


@pytest.mark.parametrize(
    "nodeid, unit",
    [
        ("tests/test_coreml.py::test_every_size_converts_and_evaluates[official-508m]", "official-508m"),
        ("tests/test_tensorrt.py::test_lint_passes_on_every_size_fp32_fp16_int8[seed-26m]", "seed-26m"),
        ("tests/test_cli.py::test_bad_input_gives_one_line_error[args1-fragments1]", "tests/test_cli.py"),
        ("tests/test_model.py::test_trace_has_no_int_nodes_and_no_rank5_tensors[26m]", "tests/test_model.py"),
        ("tests/test_layering.py::test_no_import_cycle_at_import_time", "tests/test_layering.py"),
    ],
)
def test_xdist_work_units_keep_a_size_or_a_file_together(nodeid, unit):
    assert _work_unit(nodeid) == unit
