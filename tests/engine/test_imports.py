"""The interface package and the front ends load no backend: a process that holds no model (a router in
front of remote replicas) must not need llama.cpp. Checked in a fresh interpreter, module by module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import ROOT

FRONT_END = (
    "engine",
    "mcp_server.cli",
    "mcp_server.settings",
    "mcp_server.http_app",
    "mcp_server.stdio",
    "mcp_server.shutdown",
    "mcp_server.metrics",
    "mcp_server.tools.server",
    "mcp_server.openai_api",
    "engine.llama",  # the backend's package: its modules load llama.cpp only when LlamaEngine is used
    "engine.llama.scheduling.scheduler",  # pure-Python scheduling
    "engine.llama.core",
    "engine.ray",  # the Ray backend's package: Ray loads when a RayEngine is opened
)


@pytest.mark.parametrize("module", FRONT_END)
def test_importing_leaves_llama_cpp_and_ray_unloaded(module: str) -> None:
    code = f"import sys, {module}; sys.exit('llama_cpp' in sys.modules or 'ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0, f"{module} loads llama.cpp or Ray"


def test_the_ray_backend_loads_ray_but_not_llama_cpp() -> None:
    """Its front-end side calls replicas: llama.cpp loads in them, never in the process that routes."""
    code = "import sys, engine.ray.engine; sys.exit('ray' not in sys.modules or 'llama_cpp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_opening_the_llama_backend_loads_it() -> None:
    """The check above can fail: the backend does load llama.cpp when opened."""
    code = "import sys, engine; engine.open_engine(engine.EngineConfig()); sys.exit('llama_cpp' not in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_no_front_end_module_imports_a_backend() -> None:
    """ruff's banned-api rule (TID251, pyproject.toml) refuses `engine.llama` in mcp_server/: run it."""
    ruff = [sys.executable, "-m", "ruff", "check", "--select", "TID251", "mcp_server"]
    assert subprocess.run(ruff, cwd=ROOT, capture_output=True).returncode == 0
