"""Terminal output: human text and progress on stderr, machine-readable JSON on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# Everything for humans goes to stderr so that `--json` output on stdout stays parseable.
# Piped output (CI logs, files) gets a fixed width wide enough for the tables instead of rich's 80.
# Printed text is full of user strings (paths, device names, labels, messages): rich markup and emoji
# codes are off by default, so "[/]" or ":x:" in them is printed as typed instead of raising MarkupError
# after the work is done. Only warn() and error() style their own prefix, with the message escaped.
err = Console(stderr=True, highlight=False, markup=False, emoji=False, width=None if sys.stderr.isatty() else 120)
out = Console(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 120)

_warned: set[str] = set()


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def warn_once(key: str, message: str) -> None:
    """Warn the first time ``key`` is seen in this process, so a repeated condition warns once."""
    if key not in _warned:
        _warned.add(key)
        warn(message)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def emit_json(payload: Any) -> None:
    """Write ``payload`` as JSON on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def progress() -> Progress:
    """A progress bar on stderr (disabled automatically when stderr is not a terminal)."""
    return Progress(
        TextColumn("{task.description}", markup=False),  # descriptions and statuses name sizes, targets, files
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        console=err,
        transient=False,
    )


@contextmanager
def steps(description: str, total: int) -> Iterator[Callable[[str], None]]:
    """One progress row for a run of named steps that each take a while: call the function it gives with a
    step's name as that step starts. The row appears at the first step (so another bar can run before it)
    and ends at ``total/total ... done``; off a terminal rich prints only that final row. A run that fails
    leaves no row behind, only its error."""
    bar = progress()
    task = None

    def step(status: str) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task(description, total=total, status=status)
            bar.start()
        else:  # refreshed at once, so that a terminal shows every step, even one shorter than a refresh
            bar.update(task, advance=1, status=status, refresh=True)

    try:
        yield step
        if task is not None:
            bar.update(task, completed=total, status="done")
    except BaseException:
        bar.live.transient = True  # the error says what went wrong, in its one line: the unfinished row goes
        raise
    finally:
        if task is not None:
            bar.stop()
