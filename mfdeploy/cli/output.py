"""Where a command's JSON goes. ``--json`` has one meaning in every command: ``--json PATH`` writes the
JSON to PATH (atomically) and the human summary to stdout; ``--json -`` or a bare ``--json`` writes the JSON
to stdout and the summary to stderr, so stdout stays parseable. A command that fails writes an error object
there instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from mfdeploy import console
from mfdeploy.errors import UserError
from mfdeploy.fileio import atomic_path, check_file_target

STDOUT = "-"
_state: dict[str, Any] = {"target": None, "written": False}


def reset() -> None:
    _state.update(target=None, written=False)


def normalise_json_flag(args: list[str]) -> list[str]:
    """A bare ``--json`` (last, or followed by another option) means ``--json -``: typer's parser has no
    options with an optional value, so the value is filled in before it parses."""
    result: list[str] = []
    for i, arg in enumerate(args):
        result.append(arg)
        if arg == "--json":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None or (following.startswith("-") and following != STDOUT):
                result.append(STDOUT)
    return result


def json_target(value: str | None) -> str | None:
    """Option callback for ``--json``: refuse a folder before any work, remember where errors go."""
    if value is not None and value != STDOUT:
        check_file_target(value, "--json")
    _state["target"] = value
    return value


def file_target(ctx: object, param: object, value: Path | None) -> Path | None:
    """Option callback for an output file (``--md``, ``--html``, ``train --out``): refuse a folder, a
    special file or an unwritable place before any work, not after it."""
    if value is not None:
        option = max(getattr(param, "opts", None) or [""], key=len)
        check_file_target(value, option)
    return value


def human(target: str | None) -> Console:
    """The console for the human summary: stderr when the JSON takes stdout."""
    return console.err if target == STDOUT else console.out


def write_json(payload: Any, target: str | None) -> None:
    """Write ``payload`` where ``--json`` said (nothing when it was not given)."""
    if target is None:
        return
    if target == STDOUT:
        console.emit_json(payload)
    else:
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(payload, indent=2) + "\n")
        console.err.print(f"wrote {target}", soft_wrap=True, markup=False)
    _state["written"] = True


def write_error(message: str, exit_code: int) -> None:
    """The error object, where the command's JSON would have gone, unless the command already wrote its JSON."""
    target = _state["target"]
    if target is None or _state["written"]:
        return
    try:
        write_json({"error": {"message": message, "exit_code": exit_code}}, target)
    except UserError:
        pass  # the error line is already on stderr; an unwritable --json path must not hide it
