"""The `loramux` command: desktop config, bad options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from engine.llama.cpp.devices import can_offload
from mcp_server.settings import Settings, build_parser, flag_of
from tests import ROOT

pytestmark = pytest.mark.anyio


async def test_claude_desktop_example_config_spawns_a_working_server() -> None:
    config = json.loads((ROOT / "claude_desktop_config.example.json").read_text())
    entry = config["mcpServers"]["loramux"]
    assert entry["command"].endswith("/.venv/bin/loramux")
    # the placeholder path is this checkout's venv
    command = str(ROOT / ".venv" / "bin" / "loramux")
    async with Client(StdioServerParameters(command=command, args=entry["args"]), mode="legacy") as client:
        result = await client.call_tool("llm_inference", {"prompt": "Hi!", "max_tokens": 8})
        assert not result.is_error and result.structured_content["text"]  # type: ignore[index]


def test_missing_model_file_is_a_clear_startup_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_server", "--model", str(tmp_path / "nope.gguf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "model file not found" in proc.stderr
    assert proc.stdout == ""


def test_context_must_be_whole_kv_pages() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_server", "--context", "1000"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "multiple of 256" in proc.stderr


def test_help_lists_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "mcp_server", "--help"], capture_output=True, text=True).stdout
    for opt in ["--model", "--http", "--host", "--port", "--context", "--max-sequences", "--queue-depth"]:
        assert opt in out


def test_help_lists_every_option_of_the_settings_model() -> None:
    options = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    for name in Settings.model_fields:
        assert flag_of(name) in options, name


@pytest.mark.parametrize("transport", [[], ["--http", "--port", "0"]])
def test_a_bad_preloaded_adapter_is_a_clear_startup_error(tmp_path: Path, transport: list[str]) -> None:
    """Over HTTP the engine starts in the background; its failure still ends the process with exit 2."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"junk")
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_server", *transport, "--adapter", f"x={bad}"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    assert "is not a GGUF file" in proc.stderr and proc.stdout == ""


@pytest.mark.skipif(can_offload(), reason="this llama.cpp build can offload to a GPU")
def test_gpu_layers_on_a_cpu_only_build_is_a_clear_startup_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_server", "--gpu-layers", "4"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "no GPU backend" in proc.stderr and "--gpu-layers 0" in proc.stderr
    assert "Traceback" not in proc.stderr
