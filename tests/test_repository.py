"""The README's Quick start is what CI runs: exactly two commands, the second the one .ci/run executes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_quick_start_has_exactly_two_commands():
    blocks = quickstart_blocks()
    assert len(blocks) == 2 and all("\n" not in b for b in blocks)
    main_cmd, test_cmd = blocks
    assert main_cmd.index("pip install torch==2.13.0") < main_cmd.index("pip install -e .")
    assert "mfdeploy " in main_cmd
    assert test_cmd.index("pip install torch==2.13.0") < test_cmd.index("pip install -e")
    assert "pytest" in test_cmd and "|| true" not in test_cmd


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    extractor = re.search(r"cmd=\$\((awk .*README\.md)\)", script).group(1)
    extracted = subprocess.run(["bash", "-c", extractor], cwd=ROOT, capture_output=True, text=True, check=True)
    assert extracted.stdout.strip() == quickstart_blocks()[1]
