"""Markdown for reports that embed strings the user controls (paths, device names, data sources, labels,
error messages, the command line): escaped so that they render as the text they are, never as HTML, a
link, an image, a code span or a table column.

Every Markdown writer (parity.md, calibration.md, `mfdeploy report --md`) passes such strings through
:func:`text` (running text and table cells), :func:`code` (a code span) or :func:`link_target` (the
address of a link or image it makes itself). Normal strings stay readable: a path such as
``artifacts/mobileformer_26m`` comes out unchanged.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Backslash-escaped: escapes, code spans, emphasis, links and images ([ ]), table columns, strikethrough.
_PUNCTUATION = re.compile(r"[\\`*\[\]|~]")
# An underscore between two letters or digits never starts emphasis (CommonMark), so only the others
# are escaped: mobileformer_26m stays as it is.
_LONE_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _writable(value: Any) -> str:
    """``str(value)`` that can be written as UTF-8: a file name that is not UTF-8 (its bytes decoded by
    Python as lone surrogates) shows its bytes as ``\\udcXX`` instead of failing the write."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def text(value: Any) -> str:
    """``value`` as literal Markdown text on one line: safe in running text, list items and table cells."""
    escaped = _LINE_BREAK.sub(" ", _writable(value))
    escaped = _PUNCTUATION.sub(lambda m: "\\" + m.group(0), escaped)
    escaped = _LONE_UNDERSCORE.sub(r"\\_", escaped)
    return "".join(_HTML.get(ch, ch) for ch in escaped)


def code(value: Any, in_table: bool = False) -> str:
    """``value`` as one code span (no HTML, no links inside it), fenced with more backticks than it holds.

    In a table cell a ``|`` ends the cell even inside a code span (GitHub Markdown), so it is escaped there.
    """
    content = _LINE_BREAK.sub(" ", _writable(value))
    longest = max((len(run) for run in re.findall(r"`+", content)), default=0)
    fence = "`" * (longest + 1)
    if content.startswith("`") or content.endswith("`"):
        content = f" {content} "
    if in_table:
        content = content.replace("|", "\\|")
    return f"{fence}{content}{fence}"


def link_target(path: Any) -> str:
    """A relative file name as a link or image address: percent-encoded, so ``)``, spaces or a scheme
    such as ``javascript:`` in it cannot end the address or make it anything but a relative file."""
    return quote(_writable(path), safe="/-_.~")
