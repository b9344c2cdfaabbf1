"""The typer application, the root options and the console-script entry point.

User mistakes surface as UserError: one line on stderr, a non-zero exit, no traceback; with ``--json`` the
same message also goes where the JSON would have gone, as ``{"error": {"message", "exit_code"}}``.
"""

from __future__ import annotations

import sys
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning UserError into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    INVOCATION[:] = ["mfdeploy", *args]
    output.reset()
    try:
        app(args=output.normalise_json_flag(args), prog_name="mfdeploy")
    except UserError as exc:
        console.error(exc.message)
        output.write_error(exc.message, exc.exit_code)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        output.write_error("interrupted", 130)
        raise SystemExit(130) from None
