"""Parsers for option values that several commands share (batch lists), so a flag reads the same way and
fails with the same one-line message wherever it appears."""

from __future__ import annotations

from mfdeploy.errors import UserError


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
        batches.append(value)
    if not batches:
        raise UserError(f"{flag} needs at least one batch size, e.g. {flag} 1,8")
    return tuple(dict.fromkeys(batches))
