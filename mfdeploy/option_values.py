"""Parsers and range checks for option values that several commands share, so a flag reads the same way and
fails with the same one-line message wherever it appears: from the command line, from Python, and when the
same value comes back from a manifest or a checkpoint's metadata.

The bounds are generous: they exist so that a typo (``--imgsz 100000``, ``--min-time 1e300``) is refused
before it allocates terabytes or runs forever, not to second-guess a real setting.
"""

from __future__ import annotations

import math

from mfdeploy.errors import UserError

MAX_BATCH = 4096  # images per call: beyond this no backend here has the memory
MAX_NUM_CLASSES = 100_000  # ImageNet-21k has 21,841; a larger head is a typo
MAX_IN_CHANS = 64
MAX_SEED = 2**32 - 1  # what numpy's and torch's seeding both take without wrapping
MAX_THREADS = 1024
MAX_IMAGES = 1_000_000  # --n, --calib-size
MAX_RUNS = 1_000_000
MAX_WARMUP = 100_000
MAX_SECONDS = 3600.0  # --min-time: an hour per target and batch
MAX_EPOCHS = 10_000
MAX_TOP = 10_000
MAX_WORKSPACE_GIB = 1024.0
MAX_RTOL = 1.0  # an error as large as the logits themselves would prove nothing


def parse_batches(text: str | None, flag: str = "--batches") -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32): positive integers, duplicates dropped, the order given kept."""
    batches: list[int] = []
    for part in (p.strip() for p in str(text or "").split(",")):
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise UserError(
                f"{flag} takes positive integers separated by commas (e.g. 1,8,32); {part!r} is not one"
            ) from None
        if value < 1:
            raise UserError(f"{flag}: batch sizes must be positive, got {value}")
        if value > MAX_BATCH:
            raise UserError(f"{flag}: batch sizes must be at most {MAX_BATCH}, got {value}")
        batches.append(value)
    if not batches:
        raise UserError(f"{flag} needs at least one batch size, e.g. {flag} 1,8")
    return tuple(dict.fromkeys(batches))


def shown(value: object) -> str:
    """A value as a message shows it: its repr, cut short so a hostile value cannot flood the line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_int(value: object, flag: str, low: int, high: int) -> int:
    """``value`` as an int in ``low..high``; a UserError naming ``flag`` and the allowed range otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be an integer in {low}..{high}, got {shown(value)}")
    if value < low:
        raise UserError(f"{flag} must be at least {low}, got {shown(value)} (allowed {low}..{high})")
    if value > high:
        raise UserError(f"{flag} must be at most {high}, got {shown(value)} (allowed {low}..{high})")
    return value


def interval(low: float, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """``(0, 1]``-style text for a range; ``high`` None: unbounded above (finite numbers only)."""
    if high is None:
        return f"> {low:g}" if low_open else f">= {low:g}"
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_number(
    value: object, flag: str, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a finite float inside the interval; NaN and infinities are always refused (a NaN
    threshold would make every comparison pass)."""
    allowed = interval(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{flag} must be a number {_in(allowed)}, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise UserError(f"{flag} must be a finite number {_in(allowed)}, got {number}")
    too_low = number <= low if low_open else number < low
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        raise UserError(f"{flag} must be {_in(allowed)}, got {value:g}")
    return number


def _in(allowed: str) -> str:
    return allowed if allowed[0] in "<>" else f"in {allowed}"


def check_fraction(value: object, flag: str) -> float:
    """A share such as a top-1 agreement or a cosine threshold: in [0, 1]."""
    return check_number(value, flag, 0.0, 1.0)


def check_positive(value: object, flag: str, high: float | None = None) -> float:
    """A tolerance, a time or a size: finite and above zero (and at most ``high`` when given)."""
    return check_number(value, flag, 0.0, high, low_open=True)


def check_seed(value: object, flag: str = "--seed") -> int:
    return check_int(value, flag, 0, MAX_SEED)


def check_num_classes(value: object, flag: str = "--num-classes") -> int:
    return check_int(value, flag, 1, MAX_NUM_CLASSES)


def check_batch(value: object, flag: str = "--batch") -> int:
    return check_int(value, flag, 1, MAX_BATCH)


def check_threads(value: object | None, flag: str = "--threads") -> int | None:
    return None if value is None else check_int(value, flag, 1, MAX_THREADS)


def check_tolerances(atol: object, rtol: object) -> tuple[float, float]:
    """Verification limits: --atol above zero, --rtol in [0, 1] (0: an absolute limit only); NaN refused, since
    a NaN limit would pass every comparison."""
    return check_positive(atol, "--atol"), check_number(rtol, "--rtol", 0.0, MAX_RTOL)
