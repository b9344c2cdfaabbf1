"""The typer application, the root options and the console-script entry point.

User mistakes surface as UserError: one line on stderr, a non-zero exit, no traceback; with ``--json`` the
same message also goes where the JSON would have gone, as ``{"error": {"message", "exit_code"}}``.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from mfdeploy import __version__, console
from mfdeploy.cli import output
from mfdeploy.errors import UserError

app = typer.Typer(
    name="mfdeploy",
    help="Mobile-Former from PyTorch to TensorRT and Core ML, with proof at every step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The command line as the user typed it (main() records it; results keep it so a run can be repeated).
INVOCATION: list[str] = []


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mfdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Mobile-Former from PyTorch to TensorRT and Core ML, with proof at every step."""


EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention; SIGTERM is handled the same way


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, so no ``except Exception`` (nor click, which turns a
    KeyboardInterrupt into a silent abort) stops it: every ``finally`` and context manager on the way up
    runs, removing temporary files and leaving artifacts as they were."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` while a command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning UserError into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    INVOCATION[:] = ["mfdeploy", *args]
    output.reset()
    try:
        with _interruptible():
            app(args=output.normalise_json_flag(args), prog_name="mfdeploy")
    except UserError as exc:
        console.error(exc.message)
        output.write_error(exc.message, exc.exit_code)
        raise SystemExit(exc.exit_code) from None
    except (KeyboardInterrupt, Interrupted) as exc:
        how = f" by {exc.args[0]}" if isinstance(exc, Interrupted) and exc.args else ""
        message = f"interrupted{how}; nothing was changed by the unfinished step"
        console.error(message)
        output.write_error(message, EXIT_INTERRUPTED)
        raise SystemExit(EXIT_INTERRUPTED) from None
