"""The suite's most expensive shared artifacts, made once per test session however many processes run it.

The README's test command runs the suite on pytest-xdist workers (one per core, at most four), so that
every core works until the end. Some artifacts are needed by tests on several workers: the digits-trained
checkpoint and its export, the README's default Core ML export, and each size of both families through
the toolchain (size_sweep.py). Each is a job made once per session by whichever process asks first,
under a file lock in the session's shared folder: a process that asks while another makes it waits for
it, one that asks later reads the stored result. The command-line jobs (the training, the Core ML
export) start in the background when the session starts, since many tests need them and they would
otherwise stall the first test that does.
A job that fails stores nothing: the next process that asks runs it again itself, so the tests that
need it fail with the real traceback, and only those.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def run_cli(args: list[str], cwd: Path | None = None, single_threaded: bool = False) -> tuple[int, str, str]:
    """`python -m mfdeploy ARGS` in a fresh interpreter, what a user's shell does: (exit code, stdout, stderr).
    ``single_threaded`` is for a job in the background, which shares the cores with the tests: two threads
    contending with them for one core run slower than one thread alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if single_threaded else None
    proc = subprocess.run(
        [sys.executable, "-m", "mfdeploy", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=1800
    )
    return proc.returncode, proc.stdout, proc.stderr


def run_cli_beside_tests(args: list[str]) -> tuple[int, str, str]:
    """A CLI job for the background: :func:`run_cli`, single-threaded."""
    return run_cli(args, single_threaded=True)


def session_folder(basetemp: Path) -> Path:
    """The folder all processes of this test session share: under xdist each worker's basetemp is a
    subfolder of the session's (popen-gw0, ...); without it the basetemp is the session's own."""
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    return shared / "shared-jobs"


class SharedJobs:
    """Named jobs, each run at most once per session across processes; see the module docstring. A job
    returns a JSON value (a tuple comes back as a list). ``outputs`` names files and folders that jobs
    write, by name, for the fixtures that read them."""

    def __init__(
        self,
        root: Path,
        jobs: dict[str, tuple[Callable[..., Any], tuple]],
        outputs: dict[str, Path] | None = None,
    ) -> None:
        self.root = root
        self.outputs = dict(outputs or {})
        self._jobs = dict(jobs)
        self._threads: list[threading.Thread] = []
        root.mkdir(parents=True, exist_ok=True)

    def _lock(self, name: str) -> IO[bytes]:
        return open(self.root / f"{name}.lock", "a+b")  # noqa: SIM115 - held across threads, closed by the holder

    def _stored(self, name: str) -> Path:
        return self.root / f"{name}.result.json"

    def _run_and_store(self, name: str) -> Any:
        function, args = self._jobs[name]
        value = function(*args)
        stored = self._stored(name)
        partial = stored.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(value))  # jobs return JSON values, whatever process reads them
        os.replace(partial, stored)
        return value

    def start(self, names: Iterable[str]) -> None:
        """Start the named jobs now, each on a thread of this process that holds its lock while it runs
        (meant for jobs that wait on a subprocess: the thread leaves the tests the interpreter). A job
        another process has started, or has already made, is left to it."""
        for name in names:
            lock = self._lock(name)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            thread = threading.Thread(target=self._run_holding, args=(name, lock), name=f"job {name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run_holding(self, name: str, lock: IO[bytes]) -> None:
        try:
            if not self._stored(name).exists():
                self._run_and_store(name)
        except BaseException:  # noqa: BLE001 - stored nothing: whoever asks next runs it and sees the error
            pass
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def result(self, name: str) -> Any:
        """The job's result: read if some process has made it, waited for if one is making it, made here
        otherwise."""
        with self._lock(name) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = self._stored(name)
            if stored.exists():
                return json.loads(stored.read_text())
            return self._run_and_store(name)

    def close(self) -> None:
        """Wait for the jobs this process started: another process may be waiting for them."""
        for thread in self._threads:
            thread.join()
