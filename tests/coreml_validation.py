"""Core ML conversions in the suite validate the converted program once, not after every graph pass.

coremltools re-validates the whole MIL program after each of the ~120 passes of its pipeline (a walk
over every op and var: about 40% of converting a Mobile-Former). The suite converts some forty
programs, so it runs each conversion unchanged except for those intermediate walks, and validates the
program it got once, with the same ``Program.validate`` and the same essential-scope check the pipeline
applies after dead-code elimination. A pass that left the program inconsistent still fails the test
that converted it; what is lost is only the name of the pass, which a rerun outside the suite gives.
The CLI and every user-facing path keep coremltools' own behaviour: this is installed by the tests only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def validate_once() -> Iterator[None]:
    """While active, ``coremltools.convert`` validates each converted program once at the end."""
    import coremltools as ct
    from coremltools.converters.mil.mil.program import Program

    convert, validate = ct.convert, Program.validate

    def skip(self, check_essential_scope: bool = False) -> None:
        return None

    @functools.wraps(convert)
    def convert_validating_once(*args, **kwargs):
        Program.validate = skip
        try:
            mlmodel = convert(*args, **kwargs)
        finally:
            Program.validate = validate
        program = getattr(mlmodel, "_mil_program", None)
        if program is not None:
            program.validate(check_essential_scope=True)
        return mlmodel

    ct.convert = convert_validating_once
    try:
        yield
    finally:
        ct.convert = convert
