"""What `mfdeploy export --target coreml` can be asked, parsed and checked before any conversion.

Apart from the stage so that the command line reads these defaults without importing torch or coremltools.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mfdeploy.errors import UserError
from mfdeploy.export.coreml_program import DEPLOYMENT_TARGETS
from mfdeploy.option_values import parse_batches as parse_batches_text

COMPRESSIONS = ("none", "int8", "palettize4", "palettize6", "palettize8")
COREML_PRECISIONS = ("fp16", "fp32")
MAX_BATCH_SHAPES = 128  # Core ML's limit for enumerated shapes
VERIFY_IMAGES = 100


@dataclass(frozen=True)
class CoreMLOptions:
    """The Core ML stage's options (``ExportOptions.stage_options["coreml"]``)."""

    precision: str = "fp16"
    compress: str = "none"
    batches: tuple[int, ...] = (1,)
    deployment_target: str = "iOS16"
    image_input: bool = False
    labels: tuple[str, ...] | None = None
    labels_file: str | None = None  # where ``labels`` came from, for messages and the manifest
    verify_images: int = VERIFY_IMAGES

    @classmethod
    def from_cli(
        cls,
        precision: str | None = None,
        compress: str | None = None,
        batches: str | None = None,
        deployment_target: str | None = None,
        image_input: bool | None = None,
        labels: str | Path | None = None,
    ) -> "CoreMLOptions":
        """Parse the command-line values (None: the field's default); a UserError names the first bad one."""
        defaults = cls()
        options = cls(
            precision=parse_precision(precision),
            compress=parse_compress(compress or defaults.compress),
            batches=parse_batches(batches),
            deployment_target=parse_deployment_target(deployment_target or defaults.deployment_target),
            image_input=defaults.image_input if image_input is None else image_input,
            labels=read_labels(labels) if labels is not None else None,
            labels_file=str(labels) if labels is not None else None,
        )
        options.validate()
        return options

    def validate(self) -> None:
        parse_precision(self.precision)
        parse_compress(self.compress)
        parse_deployment_target(self.deployment_target)
        parse_batches(",".join(map(str, self.batches)))
        if self.image_input and self.batches != (1,):
            raise UserError(
                "--image-input takes one image per prediction (a Core ML image input has batch 1); "
                "leave out --batches, or use the tensor input for batches"
            )
        if self.labels is not None and self.batches != (1,):
            raise UserError(
                "--labels makes a classifier, which Core ML runs on one image per prediction; "
                "leave out --batches, or leave out --labels"
            )
        if self.verify_images < 1:
            raise UserError(f"verify_images must be at least 1, got {self.verify_images}")


def parse_precision(value: str | None) -> str:
    precision = (value or CoreMLOptions.precision).lower()
    if precision == "int8":
        raise UserError("Core ML computes in fp16 or fp32; for int8 weights use --compress int8")
    if precision not in COREML_PRECISIONS:
        raise UserError(f"Core ML computes in fp16 or fp32, not {value!r}; pass --precision fp16 or fp32")
    return precision


def parse_compress(value: str) -> str:
    if value not in COMPRESSIONS:
        raise UserError(f"unknown --compress {value!r}; choose one of {', '.join(COMPRESSIONS)}")
    return value


def parse_deployment_target(value: str) -> str:
    for target in DEPLOYMENT_TARGETS:
        if value.lower() == target.lower():
            return target
    raise UserError(
        f"unknown deployment target {value!r}; choose one of {', '.join(DEPLOYMENT_TARGETS)} "
        "(ML programs need iOS16 or newer here)"
    )


def parse_batches(value: str | None) -> tuple[int, ...]:
    """``"1,4,8"`` -> (1, 4, 8): positive, distinct, sorted, at most 128 of them (Core ML's enumerated shapes)."""
    if value is None or not value.strip():
        return (1,)
    distinct = tuple(sorted(parse_batches_text(value, "--batches")))
    if len(distinct) > MAX_BATCH_SHAPES:
        raise UserError(
            f"--batches lists {len(distinct)} batch sizes; Core ML takes at most {MAX_BATCH_SHAPES} enumerated shapes"
        )
    return distinct


def read_labels(path: str | Path) -> tuple[str, ...]:
    """One class name per line (trailing blank lines ignored); empty or repeated names are refused."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"labels file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"labels file {path} is a folder; pass a text file with one class name per line") from None
    except UnicodeDecodeError:
        raise UserError(f"labels file {path} is not UTF-8 text; write one class name per line") from None
    except OSError as exc:
        raise UserError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UserError(f"labels file {path} is empty; write one class name per line")
    if "" in lines:
        raise UserError(f"labels file {path}: line {lines.index('') + 1} is empty; write one class name per line")
    seen: dict[str, int] = {}
    for number, label in enumerate(lines, start=1):
        if label in seen:
            raise UserError(
                f"labels file {path}: {label!r} is on lines {seen[label]} and {number}; class names must be unique"
            )
        seen[label] = number
    return tuple(lines)
