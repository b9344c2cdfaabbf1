"""Imports point one way: cli -> export/calibration/parity/benchmark/training -> runtime -> model, with the
small shared modules at the bottom; no import cycle between modules at import time."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mfdeploy"

# Lower numbers are lower layers; a module may import its own layer or any lower one.
LAYERS = {
    "__main__": 5,  # `python -m mfdeploy`
    "cli": 4,
    "export": 3,
    "calibration": 3,
    "parity": 3,
    "benchmark": 3,
    "training": 3,
    "runtime": 2,
    "model": 1,
}
BOTTOM = 0  # artifacts, images/, graph/, metrics, thresholds, fileio, console, errors, environment, option_values
# Same-layer imports across packages that the design allows: export's TensorRT stage calibrates first,
# and export's workflow finds or makes what calibrate/parity/bench work on.
ALLOWED_SIDEWAYS = {("export", "calibration")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mfdeploy"


def _layer(module: str) -> int:
    return LAYERS.get(_area(module), BOTTOM)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mfdeploy"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("mfdeploy"))
    return names


def test_no_import_runs_up_a_layer_or_sideways():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        for imported in _imports(path, top_level_only=False):
            if imported not in modules or imported == "mfdeploy":
                continue
            source, target = _area(module), _area(imported)
            if _layer(imported) > _layer(module):
                wrong.append(f"{module} imports {imported} (a higher layer)")
            elif (
                _layer(imported) == _layer(module) != BOTTOM
                and source != target
                and (source, target) not in ALLOWED_SIDEWAYS
            ):
                wrong.append(f"{module} imports {imported} (sideways)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_at_import_time():
    modules = _modules()
    graph = {m: {i for i in _imports(p, top_level_only=True) if i in modules and i != m} for m, p in modules.items()}
    # a package imports its own __init__ first: drop parent-package edges, they are not cycles of ours
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_layer_table_names_real_packages():
    areas = {_area(m) for m in _modules()}
    assert set(LAYERS) <= areas


def test_no_runner_imports_the_registry_that_loads_it():
    modules = _modules()
    runners = [m for m in modules if m.startswith("mfdeploy.runtime.") and m.endswith("_runner")]
    assert runners
    for runner in runners:
        assert not any(i.startswith("mfdeploy.runtime.registry") for i in _imports(modules[runner], False)), runner


def test_the_command_line_starts_without_torch_or_onnx():
    """Option defaults are read from light options modules, so `mfdeploy --help` does not load the stack."""
    import subprocess
    import sys

    code = "import sys, mfdeploy.cli; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
