"""Replacing one attribute of a library for the length of a block: how the Core ML export and the INT8
quantizer short-cut work that coremltools and ONNX Runtime do in pure Python (coreml_convert, int8)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def swapped(owner: Any, name: str, replacement: Callable[[Any], Any], lock: threading.RLock) -> Iterator[None]:
    """Inside the block ``owner.<name>`` is ``replacement(original)``; afterwards, error or not, the original.

    The original is read under ``lock``, so two threads never swap at once and a second thread that was
    waiting cannot take the first one's replacement for the original (and leave it installed for good);
    nested blocks of one thread (the lock is re-entrant) restore in order.
    """
    with lock:
        original = getattr(owner, name)
        setattr(owner, name, replacement(original))
        try:
            yield
        finally:
            setattr(owner, name, original)
