"""The README's Python API example runs as written (in a subprocess, on the real model)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests import ROOT


def test_the_readme_python_api_example_runs_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("length ") and "mixed_adapter_sets=True" in lines[-1], lines
