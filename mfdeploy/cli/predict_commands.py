"""`mfdeploy predict`: one's own images through an artifact, the top labels per target, and agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mfdeploy.cli.app import app
from mfdeploy.cli.options import (
    ArtifactArgument,
    DefaultTargetsOption,
    JsonOption,
    ProviderOption,
    ThreadsOption,
    default,
)
from mfdeploy.cli.output import human, write_json
from mfdeploy.parity.options import PredictOptions


@app.command()
def predict(
    artifact_dir: ArtifactArgument,
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="image", help="Image files, or folders of images (searched recursively).", show_default=False
        ),
    ],
    targets: DefaultTargetsOption = None,
    top: Annotated[
        int, typer.Option("--top", help="Labels shown per image and target (at most the model's classes).")
    ] = default(PredictOptions, "top"),
    threads: ThreadsOption = None,
    provider: ProviderOption = None,
    json_target: JsonOption = None,
) -> None:
    """Each image's top labels and probabilities from every target, and whether they agree with PyTorch.

    Nothing is exported or calibrated: a target the artifact lacks is skipped with the command that makes it.
    """
    from mfdeploy.artifacts import Artifact
    from mfdeploy.parity.predict import run_predict, terminal_output
    from mfdeploy.runtime.registry import parse_targets

    names = parse_targets(targets) if targets is not None else None  # an unknown target before any work
    options = PredictOptions(targets=names, top=top, provider=provider, threads=threads)
    report = run_predict(Artifact.open(artifact_dir), images, options)
    write_json(report, json_target)
    say = human(json_target)
    for item in terminal_output(report):
        if isinstance(item, str):
            say.print(item, soft_wrap=True, markup=False, highlight=False)
        else:
            say.print(item)
