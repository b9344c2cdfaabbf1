"""A static check that the TensorRT Python API names mfdeploy uses exist in TensorRT 10.x and 11.x.

TensorRT cannot be installed on the project's CPU machines, so the code that calls it never runs there. This
checker reads our modules with ``ast`` and looks up every name they use against
``runtime/data/tensorrt_python_api.json``, extracted from the bindings' pybind11 sources of each version
(``tools/extract_tensorrt_python_api.py``; the file records repo, tags, commits, files and date):

- ``trt.X`` (``trt`` being whatever ``import tensorrt as ...`` bound, and any name or ``self.`` attribute
  assigned from it) must be a module attribute; ``trt.X.Y`` a member of class or enum ``X``;
- a keyword argument of ``trt.X(...)`` must be one of ``X.__init__``'s;
- on an object whose TensorRT type can be told (``x = trt.Builder(...)``, ``x = <typed>.method(...)`` through
  :data:`RETURNS`, a parameter annotated ``trt.X``), every attribute read, written or called must be a member
  of that type, and each keyword argument of a call one of that method's keywords;
- a class deriving from ``trt.X`` may only define (non-dunder) methods that ``X`` has: an override with a
  misspelt name would never be called.

What it proves: those names and keywords exist in the bindings of every version in the data file. What it
does not: argument types or counts, return types (RETURNS is kept by hand; its names are checked, its
claims are not), behaviour, or that any call succeeds; attributes of objects whose type it cannot tell are
not checked at all.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "tensorrt_python_api.json"

#: (class, member) -> the TensorRT class it returns, for the calls mfdeploy chains on. Kept by hand from the
#: bindings' documentation; the test checks that every name here exists.
RETURNS: dict[tuple[str, str], str] = {
    ("Builder", "create_network"): "INetworkDefinition",
    ("Builder", "create_builder_config"): "IBuilderConfig",
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",
    ("Builder", "build_serialized_network"): "IHostMemory",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
    ("INetworkDefinition", "get_input"): "ITensor",
    ("INetworkDefinition", "get_output"): "ITensor",
    ("OnnxParser", "get_error"): "ParserError",
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",
    ("IExecutionContext", "engine"): "ICudaEngine",
}

#: modules checked by the test: every mfdeploy module that imports tensorrt
CHECKED_MODULES = (
    "mfdeploy/runtime/tensorrt_runner.py",
    "mfdeploy/runtime/tensorrt_env.py",
    "mfdeploy/export/tensorrt_build.py",
)


@cache
def load_api(path: Path = DATA) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class Use:
    """One use of a TensorRT name: ``owner`` is "module" or a class name; ``keyword`` set for a keyword."""

    line: int
    owner: str
    name: str
    keyword: str | None = None

    def describe(self) -> str:
        where = "tensorrt" if self.owner == "module" else f"tensorrt.{self.owner}"
        what = f"{where}.{self.name}" + (f"(..., {self.keyword}=...)" if self.keyword else "")
        return f"line {self.line}: {what}"


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class _Collector(ast.NodeVisitor):
    """Walks one module in source order, tracking TensorRT aliases and the types of names and attributes."""

    def __init__(self) -> None:
        self.aliases: set[str] = set()
        self.types: dict[str, str] = {}  # dotted name -> TensorRT class
        self.uses: list[Use] = []

    # -- bindings -------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "tensorrt":
                self.aliases.add(alias.asname or "tensorrt")

    def _class_of(self, node: ast.AST) -> str | None:
        """The TensorRT class an expression evaluates to, where it can be told."""
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                if _dotted(func.value) in self.aliases:
                    return func.attr if func.attr[:1].isupper() else None  # trt.Builder(...), not trt.nptype(...)
                owner = self._type(func.value)
                if owner:
                    return RETURNS.get((owner, func.attr))
        if isinstance(node, ast.Attribute):
            owner = self._type(node.value)
            if owner:
                return RETURNS.get((owner, node.attr))
        return None

    def _type(self, node: ast.AST) -> str | None:
        name = _dotted(node)
        return self.types.get(name) if name else None

    def _bind(self, target: ast.AST, value: ast.AST) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            for t, v in zip(target.elts, value.elts):
                self._bind(t, v)
            return
        name = _dotted(target)
        if name is None:
            return
        if _dotted(value) in self.aliases:
            self.aliases.add(name)
            return
        found = self._class_of(value)
        if found:
            self.types[name] = found
        elif not (isinstance(value, ast.Constant) and value.value is None):  # `x = None` (a close) keeps x's type
            self.types.pop(name, None)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)
            self._bind(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._bind(node.target, node.value)
        self.visit(node.target)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            annotation = arg.annotation
            if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                try:
                    annotation = ast.parse(annotation.value, mode="eval").body
                except SyntaxError:
                    annotation = None
            if isinstance(annotation, ast.Attribute) and _dotted(annotation.value) in self.aliases:
                self.uses.append(Use(annotation.lineno, "module", annotation.attr))
                self.types[arg.arg] = annotation.attr
        self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            if isinstance(base, ast.Attribute) and _dotted(base.value) in self.aliases:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        self.uses.append(Use(item.lineno, base.attr, item.name))
        self.generic_visit(node)

    # -- uses -----------------------------------------------------------------------------------
    def visit_Attribute(self, node: ast.Attribute) -> None:
        inner = node.value
        if _dotted(inner) in self.aliases:
            self.uses.append(Use(node.lineno, "module", node.attr))
        elif isinstance(inner, ast.Attribute) and _dotted(inner.value) in self.aliases:
            self.uses.append(Use(node.lineno, inner.attr, node.attr))  # trt.X.Y
        else:
            owner = self._type(inner) or self._class_of(inner)
            if owner:
                self.uses.append(Use(node.lineno, owner, node.attr))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        if keywords and isinstance(func, ast.Attribute):
            if _dotted(func.value) in self.aliases:
                owner, member = func.attr, "__init__"  # trt.X(..., kw=...)
            else:
                owner, member = self._type(func.value) or self._class_of(func.value), func.attr
            if owner:
                self.uses += [Use(node.lineno, owner, member, keyword) for keyword in keywords]
        self.generic_visit(node)


def tensorrt_uses(source: str) -> list[Use]:
    """Every TensorRT name ``source`` uses that the checker can attribute to the module or a class."""
    tree = ast.parse(source)
    collector = _Collector()
    for node in ast.walk(tree):  # an import inside a later function still makes its name an alias everywhere
        if isinstance(node, ast.Import):
            collector.visit_Import(node)
    collector.visit(tree)
    return collector.uses


def missing_names(uses: list[Use], api: dict[str, Any] | None = None) -> list[str]:
    """One line per use that some version in the data does not have (empty: every name exists)."""
    api = api or load_api()
    problems = []
    for version, entry in api["versions"].items():
        module, classes = set(entry["module"]), entry["classes"]
        for use in uses:
            if use.owner == "module":
                ok = use.name in module
            elif use.owner not in classes:
                ok = False
            elif use.keyword is None:
                ok = use.name in classes[use.owner]
            else:
                ok = use.keyword in classes[use.owner].get(use.name, [])
            if not ok:
                problems.append(f"TensorRT {version}: no {use.describe()}")
    return problems


def check_source(source: str, api: dict[str, Any] | None = None) -> list[str]:
    return missing_names(tensorrt_uses(source), api)
