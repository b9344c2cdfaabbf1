"""The `mfdeploy` command line: each command parses its options, calls one library function and prints.

The commands live in one module per area (model, export, compare, predict, bench); shared options are declared
once in :mod:`mfdeploy.cli.options`, and where JSON goes in :mod:`mfdeploy.cli.output`.
"""

from mfdeploy.cli import (  # noqa: F401 (registers)
    bench_commands,
    compare_commands,
    export_commands,
    model_commands,
    predict_commands,
)
from mfdeploy.cli.app import app, main

__all__ = ["app", "main"]
