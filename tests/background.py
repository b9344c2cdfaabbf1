"""The suite's most expensive shared artifacts, made by a worker process that starts with the session.

On CI's two cores the tests leave about half of the CPU idle: much of the toolchain is single-threaded
Python (tracing, ONNX simplification, coremltools' passes). The session-wide artifacts that take longest
(the digits-trained checkpoint, the README's default Core ML export, and every size of both families
through the toolchain, see size_sweep.py) are therefore queued, in the order the tests first need them,
to a pool of worker processes started with the session, while the other tests run. A fixture that needs
one waits for its job, or runs it itself if no worker has started it yet; a job that raises fails only the
tests that need it, with its traceback.
Only the jobs some collected test needs are queued. Where the host cannot start worker processes (no
POSIX semaphores in some containers), each job runs in the test process when first needed.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any


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
    """A CLI job for the background worker: :func:`run_cli`, single-threaded."""
    return run_cli(args, single_threaded=True)


def _worker_setup() -> None:
    import coreml_validation
    import torch

    torch.set_num_threads(1)  # the pool's processes share the cores with the tests
    coreml_validation.install()


class Background:
    """Queued jobs by key, run by a pool of worker processes in the order given; ``outputs`` names what
    jobs write, by key, for the fixtures that read it."""

    def __init__(
        self,
        jobs: list[tuple[Hashable, Callable[..., Any], tuple]],
        alone: bool = False,
        outputs: dict[Hashable, Path] | None = None,
    ) -> None:
        self.outputs = dict(outputs or {})
        self._jobs = {key: (function, args) for key, function, args in jobs}
        self._done: dict[Hashable, Any] = {}
        self._futures: dict[Hashable, Future] = {}
        self._pool: ProcessPoolExecutor | None = None
        if not jobs:
            return
        # Beside the tests one worker; when the queue is all the session runs, one per core (at most two).
        workers = max(1, min(2, os.cpu_count() or 1, len(jobs))) if alone else 1
        context = multiprocessing.get_context("spawn")  # a clean interpreter: no threads forked mid-flight
        try:
            self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_setup)
        except (OSError, NotImplementedError):
            return
        for key, function, args in jobs:
            self._futures[key] = self._pool.submit(function, *args)

    def result(self, key: Hashable) -> Any:
        """The job's result; a job no worker has started yet runs here instead, rather than leaving
        this process idle while it waits."""
        future = self._futures.get(key)
        if future is not None and future.cancel():
            del self._futures[key]
        if key in self._futures:
            return self._futures[key].result()
        if key not in self._done:
            function, args = self._jobs[key]
            self._done[key] = function(*args)
        return self._done[key]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
