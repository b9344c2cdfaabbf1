"""The documented result format is the one the code validates, and the sample report in docs/ is a
valid, complete output of `mfdeploy bench` + `mfdeploy report`."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest

from mfdeploy.benchmark.schema import RESULT_SCHEMA, SCHEMA_VERSION, load_result, schema_text

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "docs" / "sample-report"


def test_documented_schema_is_the_code_schema():
    path = ROOT / "docs" / "bench-result.schema.json"
    assert path.read_text() == schema_text(), "regenerate docs/bench-result.schema.json from schema.schema_text()"
    jsonschema.Draft202012Validator.check_schema(RESULT_SCHEMA)
    assert RESULT_SCHEMA["properties"]["schema_version"] == {"const": SCHEMA_VERSION}


def test_readme_documents_bench_and_report():
    readme = (ROOT / "README.md").read_text()
    for heading in ("### `mfdeploy bench`", "### `mfdeploy report`"):
        assert heading in readme
    assert "docs/bench-result.schema.json" in readme and "benchmarks/sample_report.sh" in readme


@pytest.mark.parametrize("size", ["26m", "52m"])
def test_sample_runs_validate_and_cover_the_required_targets(size):
    document = load_result(SAMPLE / f"bench-{size}.json")
    assert document["model"]["size"] == size
    measured = {(entry["target"], entry["batch"]) for entry in document["results"]}
    assert {(target, batch) for target in ("torch", "onnx", "onnx-fp16", "onnx-int8") for batch in (1, 8)} <= measured
    skipped = {s["target"]: s["reason"] for s in document["skipped"]}
    assert "TensorRT" in skipped["trt-fp16"] and "TensorRT" in skipped["trt-int8"]  # named, with the reason


def test_sample_report_links_its_charts():
    markdown = (SAMPLE / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown)
    assert len(links) == 2 and all((SAMPLE / link).is_file() for link in links)
    html = (SAMPLE / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2
    for size in ("26m", "52m"):
        assert f"bench-{size}.json" in markdown
