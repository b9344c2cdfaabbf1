"""`mfdeploy info` and `mfdeploy train`: the model itself, before any export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mfdeploy.cli.app import app
from mfdeploy.cli.options import (
    ArchOption,
    EmaOption,
    ImgszOption,
    JsonOption,
    NumClassesOption,
    SeedOption,
    SizeOption,
    WeightsOption,
    batch_option,
    data_option,
    default,
    given,
)
from mfdeploy.cli.output import file_target, human, write_json
from mfdeploy.errors import UserError
from mfdeploy.model.config import DEFAULT_SIZE, PAPER_IMGSZ, PAPER_NUM_CLASSES
from mfdeploy.training.options import TrainConfig

INFO_IMGSZ = PAPER_IMGSZ  # info compares with the paper's figures by default
INFO_CLASSES = PAPER_NUM_CLASSES


def _millions(value: float) -> str:
    return f"{value / 1e6:.2f}M"


def _measure_sizes(names: list[str], num_classes: int, imgsz: int, arch: str) -> list:
    """Build and measure each size, with one progress row per size on stderr (all seven take half a minute)."""
    from mfdeploy.console import progress
    from mfdeploy.model.complexity import measure
    from mfdeploy.model.families import build_family_model

    results = []
    with progress() as bar:
        rows = {name: bar.add_task(f"info {name}", total=2, start=False, status="") for name in names}
        for name in names:
            row = rows[name]
            bar.start_task(row)
            bar.update(row, status="build the model", refresh=True)
            model = build_family_model(arch, name, num_classes)
            bar.update(row, advance=1, status=f"count params and MAdds at {imgsz}x{imgsz}", refresh=True)
            results.append(measure(model, imgsz))
            bar.update(row, advance=1, status="done")
    return results


def _official_figures(arch: str, size: str, num_classes: int) -> dict[str, int]:
    """The official code's exact parameter count, for the official family with its 1000 classes."""
    if arch != "official" or num_classes != PAPER_NUM_CLASSES:
        return {}
    from mfdeploy.model.official_config import get_official_config

    return {"official_params": get_official_config(size).official_params}


@app.command()
def info(
    ctx: typer.Context,
    size: SizeOption = DEFAULT_SIZE,
    all_sizes: Annotated[bool, typer.Option("--all", help="One table of all seven sizes.")] = False,
    imgsz: ImgszOption = INFO_IMGSZ,
    num_classes: NumClassesOption = INFO_CLASSES,
    arch: ArchOption = None,
    json_target: JsonOption = None,
) -> None:
    """Parameters and multiply-adds, per stage or for every size, next to the paper's figures (and, for the
    official family, the official code's exact parameter count)."""
    from mfdeploy.images.preprocess import check_imgsz
    from mfdeploy.model import SIZES, get_config
    from mfdeploy.model.families import TITLES, check_arch
    from mfdeploy.option_values import check_num_classes

    imgsz = check_imgsz(INFO_IMGSZ if imgsz is None else imgsz)
    num_classes = check_num_classes(INFO_CLASSES if num_classes is None else num_classes)
    if all_sizes and given(ctx, size="--size"):
        raise UserError("pass either --size or --all, not both")
    arch = check_arch(arch)
    names = list(SIZES) if all_sizes else [get_config(size or DEFAULT_SIZE).name]
    results = _measure_sizes(names, num_classes, imgsz, arch)
    documents = [{**r.to_dict(), "family": arch, **_official_figures(arch, r.size, num_classes)} for r in results]
    write_json(documents if all_sizes else documents[0], json_target)
    say = human(json_target)
    scale_note = "" if imgsz == INFO_IMGSZ else f" (paper figures are at 224x224; measured at {imgsz}x{imgsz})"
    if all_sizes:
        table = Table(title=f"{TITLES[arch]} sizes at {imgsz}x{imgsz}, {num_classes} classes{scale_note}")
        for column in ("size", "params M", "paper", "diff", "MAdds M", "paper", "diff", "tokens", "heads", "top-1*"):
            table.add_column(column, justify="right", no_wrap=True)
        for r in results:
            table.add_row(
                r.size,
                f"{r.params / 1e6:.2f}",
                f"{r.paper_params / 1e6:.1f}",
                f"{r.params_vs_paper:+.1%}",
                f"{r.madds / 1e6:.1f}",
                f"{r.paper_madds / 1e6:.0f}",
                f"{r.madds_vs_paper:+.1%}",
                f"{r.num_tokens}x{r.token_dim}",
                str(r.num_heads),
                f"{r.paper_top1:.1f}",
            )
        say.print(table)
        say.print("* ImageNet top-1 reported by the paper. MAdds count conv, linear and matmul.")
        return
    r = results[0]
    table = Table(title=f"{TITLES[arch]} {r.size} at {imgsz}x{imgsz}, {num_classes} classes{scale_note}")
    for column, justify in (("stage", "left"), ("output shape", "left"), ("params", "right"), ("MAdds", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for stage in r.stages:
        shapes = "  ".join("x".join(str(d) for d in shape) for shape in stage.output_shape)
        table.add_row(stage.name, shapes, f"{stage.params:,}", f"{stage.madds:,}")
    table.add_section()
    table.add_row("total", "", f"{r.params:,}", f"{r.madds:,}")
    say.print(table)
    say.print(
        f"params {_millions(r.params)} (paper {_millions(r.paper_params)}, {r.params_vs_paper:+.1%}); "
        f"MAdds {_millions(r.madds)} (paper {_millions(r.paper_madds)}, {r.madds_vs_paper:+.1%}); "
        f"tokens {r.num_tokens}x{r.token_dim}, {r.num_heads} heads; paper ImageNet top-1 {r.paper_top1:.1f}"
    )
    official = documents[0].get("official_params")
    if official is not None:
        same = "the same count" if official == r.params else f"{r.params - official:+,} here"
        say.print(f"the official code's {r.size} has {official:,} params with 1000 classes: {same}")


@app.command()
def train(
    out: Annotated[
        Path, typer.Option("--out", callback=file_target, help="Checkpoint to write (.safetensors or .pt).")
    ],
    size: SizeOption = None,
    arch: ArchOption = None,
    data: data_option("builtin-digits, or an ImageFolder (one sub-folder per class).") = default(TrainConfig, "data"),
    epochs: Annotated[int, typer.Option("--epochs")] = default(TrainConfig, "epochs"),
    imgsz: ImgszOption = default(TrainConfig, "imgsz"),
    batch: batch_option("images per training step", "--batch-size") = default(TrainConfig, "batch_size"),
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, cosine schedule).")] = default(
        TrainConfig, "lr"
    ),
    seed: SeedOption = default(TrainConfig, "seed"),
    weights: WeightsOption = None,
    ema: EmaOption = False,
    json_target: JsonOption = None,
) -> None:
    """Fine-tune a Mobile-Former on labelled images (CPU), reporting validation accuracy every epoch."""
    from mfdeploy.images.preprocess import check_imgsz
    from mfdeploy.model import get_config
    from mfdeploy.model.families import check_arch
    from mfdeploy.training.loop import train as run_training

    cfg = TrainConfig(
        size=None if size is None else get_config(size).name,
        arch=None if arch is None else check_arch(arch),
        data=data,
        epochs=epochs,
        imgsz=check_imgsz(default(TrainConfig, "imgsz") if imgsz is None else imgsz),
        batch_size=default(TrainConfig, "batch_size") if batch is None else batch,
        lr=lr,
        seed=seed,
    )
    result = run_training(cfg, out, init_weights=weights, init_ema=ema)
    write_json(result.to_dict(), json_target)
    human(json_target).print(
        f"wrote {result.out} ({result.size}, {len(result.classes)} classes): validation accuracy "
        f"{result.val_accuracy:.2%} on {result.num_val} images after {cfg.epochs} epochs, {result.seconds:.1f} s",
        soft_wrap=True,
        markup=False,
    )
