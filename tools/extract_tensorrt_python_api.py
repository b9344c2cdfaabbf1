"""Write mfdeploy/runtime/data/tensorrt_python_api.json: every name the TensorRT Python bindings define, per
TensorRT version, read from the bindings' pybind11 sources in NVIDIA/TensorRT (a git clone or mirror).

    python tools/extract_tensorrt_python_api.py /path/to/TensorRT.git v10.0.0 v10.16 v11.1

For each tag it reads python/src/infer/*.cpp, python/src/parsers/pyOnnx.cpp and python/src/pyTensorRT.cpp
with ``git show TAG:PATH`` and records, per Python class or enum (``py::class_<...>(scope, "Name")`` and
``py::enum_``): its methods and properties (``.def``, ``.def_property*``, ``.def_readwrite``,
``.def_readonly``, ``.def_static``; ``py::init`` as ``__init__``), enum values (``.value``), and for each
method the keyword names its ``"name"_a`` arguments give (the union over overloads); members of base classes
(the other ``py::class_`` template arguments) are folded in, and an enum's values exported into its scope
(``.export_values()``) belong to that class too. Module names: top-level classes and enums, ``m.def``
functions, and the pure-Python package's functions and ``__version__``
(python/packaging/bindings_wheel/tensorrt/__init__.py). A regex-and-bracket scan, not a C++ parser: it is
checked by mfdeploy's tests only in that every name mfdeploy uses is found.
"""

from __future__ import annotations

import ast
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = "https://github.com/NVIDIA/TensorRT"
SOURCES = (
    "python/src/infer/pyCore.cpp",
    "python/src/infer/pyFoundationalTypes.cpp",
    "python/src/infer/pyGraph.cpp",
    "python/src/infer/pyPlugin.cpp",
    "python/src/parsers/pyOnnx.cpp",
    "python/src/pyTensorRT.cpp",
)
PACKAGE_INIT = "python/packaging/bindings_wheel/tensorrt/__init__.py"
OUT = Path(__file__).resolve().parents[1] / "mfdeploy" / "runtime" / "data" / "tensorrt_python_api.json"

BINDING = re.compile(r"py::(class_|enum_)<")
VAR_DEF = re.compile(
    r"\b([A-Za-z_]\w*)\s*\.\s*(?:def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static)\s*\("
)
MEMBER = re.compile(
    r"\.\s*(def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static|def_property_static|value)"
    r"\s*\(\s*(\"(\w+)\"|py::init)"
)
KEYWORD = re.compile(r"\"(\w+)\"_a\b")


def git_show(repo: str, tag: str, path: str) -> str | None:
    proc = subprocess.run(["git", "-C", repo, "show", f"{tag}:{path}"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def matching(text: str, start: int, open_: str, close: str) -> int:
    """Index just past the bracket closing the one at ``start``, skipping string and char literals."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i += 1
            while i < len(text) and text[i] != c:
                i += 2 if text[i] == "\\" else 1
        elif c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def split_args(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for c in text:
        if c in "<(":
            depth += 1
        elif c in ">)":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += c
    return [*parts, current.strip()]


def scan(text: str, api: dict) -> None:
    """Add the classes, enums and members bound in one source file to ``api``."""
    classes, cpp_names, bases, variables = api["classes"], api["cpp"], api["bases"], api["variables"]
    events = []
    for m in BINDING.finditer(text):
        events.append((m.start(), "binding", m))
    for m in MEMBER.finditer(text):
        events.append((m.start(), "member", m))
    for m in VAR_DEF.finditer(text):
        if m.group(1) in variables or m.group(1) == "m":
            events.append((m.start(), "var", m))
    for m in re.finditer(r"\.\s*export_values\s*\(", text):
        events.append((m.start(), "export", m))
    events.sort(key=lambda e: e[0])
    current = None
    for _pos, kind, m in events:
        if kind == "binding":
            end = matching(text, m.end() - 1, "<", ">")
            template = split_args(text[m.end() : end - 1])
            rest = re.match(r"\s*(\w+)?\s*[({]\s*(\w+)\s*,\s*\"(\w+)\"", text[end:])
            if rest is None:
                current = None
                continue
            var, scope, name = rest.groups()
            classes.setdefault(name, {})
            cpp_names[template[0]] = name
            bases.setdefault(name, []).extend(template[1:])
            if var:
                variables[var] = name
            if scope != "m":
                parent = variables.get(scope)
                if parent:
                    classes.setdefault(parent, {}).setdefault(name, [])
                    api.setdefault("nested", {})[name] = parent
            else:
                api["module"].add(name)
            current = name
        elif kind == "var":
            if m.group(1) == "m":
                current = None
                fn = re.match(r"\s*\"(\w+)\"", text[m.end() :])
                if fn:
                    api["module"].add(fn.group(1))
            else:
                current = variables[m.group(1)]
        elif kind == "export":
            if current and current in api.get("nested", {}):
                api.setdefault("exported", {})[current] = api["nested"][current]
        elif kind == "member" and current is not None:
            name = m.group(3) or "__init__"
            open_at = text.index("(", m.start())
            args = text[open_at : matching(text, open_at, "(", ")")]
            keywords = classes[current].setdefault(name, [])
            if m.group(1) != "value":
                for kw in KEYWORD.findall(args):
                    if kw not in keywords:
                        keywords.append(kw)


def package_names(text: str) -> set[str]:
    tree = ast.parse(re.sub(r"##(\w+)##", r"\1", text))  # CMake placeholders: any identifier will do
    names = {"__version__"}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def extract(repo: str, tag: str) -> dict:
    api = {"classes": {}, "cpp": {}, "bases": {}, "variables": {}, "module": set()}
    files = []
    for path in SOURCES:
        text = git_show(repo, tag, path)
        if text is not None:
            files.append(path)
            scan(text, api)
    init = git_show(repo, tag, PACKAGE_INIT)
    if init is not None:
        files.append(PACKAGE_INIT)
        api["module"] |= package_names(init)
    for enum, parent in api.get("exported", {}).items():
        for value in api["classes"][enum]:
            api["classes"][parent].setdefault(value, [])

    def members(name: str, seen: tuple = ()) -> dict:
        out = {}
        for base in api["bases"].get(name, []):
            python = api["cpp"].get(base)
            if python and python not in seen:
                out.update(members(python, (*seen, name)))
        for key, value in api["classes"].get(name, {}).items():
            out[key] = sorted(set(out.get(key, [])) | set(value))
        return out

    commit = subprocess.run(["git", "-C", repo, "rev-parse", f"{tag}^{{commit}}"], capture_output=True, text=True)
    return {
        "tag": tag,
        "commit": commit.stdout.strip(),
        "files": files,
        "module": sorted(api["module"]),
        "classes": {name: members(name) for name in sorted(api["classes"])},
    }


def main(argv: list[str]) -> None:
    repo, tags = argv[0], argv[1:]
    data = {
        "description": "Names the TensorRT Python bindings define, per version: module attributes, and per class or "
        "enum its methods, properties and enum values with each method's keyword argument names",
        "proves": "tests/test_tensorrt_api.py checks that every tensorrt attribute, method and keyword mfdeploy's "
        "TensorRT code uses (where the object's type can be told from the source) exists in every version here",
        "does_not_prove": "argument types or counts, positional arguments, return types, behaviour, or that any "
        "call succeeds at run time; names of objects whose type the checker cannot infer are not checked",
        "source": {
            "repo": REPO,
            "files": list(SOURCES) + [PACKAGE_INIT],
            "extracted": datetime.date.today().isoformat(),
            "how": "tools/extract_tensorrt_python_api.py: regex-and-bracket scan of the pybind11 bindings "
            '(py::class_/py::enum_ names, .def*/.value names, "name"_a keywords, base classes folded in)',
        },
        "versions": {tag.lstrip("v"): extract(repo, tag) for tag in tags},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = json.dumps(data, indent=1, sort_keys=False)
    OUT.write_text(lines + "\n")
    for version, entry in data["versions"].items():
        print(version, entry["commit"], len(entry["module"]), "module names,", len(entry["classes"]), "classes")


if __name__ == "__main__":
    main(sys.argv[1:])
