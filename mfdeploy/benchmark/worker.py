"""``python -m mfdeploy.benchmark.worker REQUEST.json RESULT.json``: one cell (or, for ``bench --data``,
one target's accuracy: a request whose "kind" is "accuracy") in a fresh process.

A fresh process per target and batch is what makes the memory figures attributable (the process's peak
RSS is this cell's alone), keeps one backend's thread pool from spinning on the cores while the next one
is timed, and makes first-load time a cold session/engine creation every time. The request and the
result travel as files, so a backend that prints on stdout cannot corrupt them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mfdeploy.benchmark.worker REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    if data.get("kind") == "accuracy":  # bench --data: one target scored on labelled images
        from mfdeploy.benchmark.accuracy import AccuracyRequest, measure_accuracy

        result = measure_accuracy(AccuracyRequest.from_dict(data))
    else:
        from mfdeploy.benchmark.cell import CellRequest, measure_cell

        request = CellRequest.from_dict(data)
        request.fresh_process = True
        result = measure_cell(request)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
