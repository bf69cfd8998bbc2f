"""One settings model for flags, LORAMUX_* environment variables and a TOML file (mcp_server/settings.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from engine.config import default_adapter_dir
from mcp_server.settings import Settings, load, options_table
from tests import ROOT
from tests.http_server import http_server


def test_the_readme_options_table_is_generated_from_the_settings_model() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[
        readme.index("<!-- options:start -->\n") + len("<!-- options:start -->\n") : readme.index(
            "<!-- options:end -->"
        )
    ]
    assert table == options_table(), "the README's options table drifted: paste `python -m mcp_server.settings`"


def test_the_readme_toml_example_is_valid(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert example is not None
    (tmp_path / "loramux.toml").write_text(example.group(1))
    settings = Settings.from_sources({}, tmp_path / "loramux.toml")
    assert settings.max_sequences == 16 and settings.adapters == {"caps": Path("/srv/adapters/caps.gguf")}


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "loramux.toml"
    config.write_text(
        'max_sequences = 4\nport = 9100\nqueue_depth = 3\nbatch_tokens = 128\n[adapters]\ncaps = "a.gguf"\n'
    )
    monkeypatch.setenv("LORAMUX_PORT", "9200")
    monkeypatch.setenv("LORAMUX_QUEUE_DEPTH", "7")
    monkeypatch.setenv("LORAMUX_FUZZ_CALLS", "5")  # other tools' LORAMUX_ variables are not options: ignored
    settings = Settings.from_sources({"queue_depth": 9}, config)
    assert settings.queue_depth == 9  # flag over environment and file
    assert settings.port == 9200  # environment over file
    assert settings.max_sequences == 4 and settings.batch_tokens == 128  # file over defaults
    assert settings.group_steps == 8 and settings.threads is None  # defaults (the engine's)
    assert settings.adapters == {"caps": Path("a.gguf")}


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "loramux.toml"
    config.write_text("max_sequences = 5\n")
    monkeypatch.setenv("LORAMUX_CONFIG", str(config))
    assert load([]).max_sequences == 5
    assert load(["--max-sequences", "6"]).max_sequences == 6


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LORAMUX_ALLOWED_HOSTS", "a.example, b.example", ["a.example", "b.example"]),
        ("LORAMUX_ALLOWED_HOSTS", '["a.example"]', ["a.example"]),
        (
            "LORAMUX_ADAPTERS",
            "caps=/x/caps.gguf,short=/x/short.gguf",
            {"caps": "/x/caps.gguf", "short": "/x/short.gguf"},
        ),
        ("LORAMUX_HTTP", "true", True),
        ("LORAMUX_GPU_LAYERS", "0", 0),
    ],
)
def test_environment_values(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: object) -> None:
    monkeypatch.setenv(variable, value)
    got = getattr(Settings(), variable.removeprefix("LORAMUX_").lower())
    if isinstance(got, dict):
        got = {k: str(v) for k, v in got.items()}
    assert got == expected


def test_repeatable_flags_and_engine_config() -> None:
    caps = default_adapter_dir() / "caps.gguf"
    settings = load(["--allowed-host", "a", "--allowed-host", "b", "--adapter", f"caps={caps}", "--fixed-threads"])
    assert settings.allowed_hosts == ["a", "b"]
    config = settings.engine_config()
    assert config.preload_adapters == (("caps", caps),) and config.adaptive_threads is False


@pytest.mark.parametrize(
    ("argv", "env", "file", "words"),
    [
        (["--context", "1000"], {}, None, "--context: must be a multiple of 256"),
        (["--max-sequences", "0"], {}, None, "--max-sequences: must be greater than or equal to 1"),
        ([], {"LORAMUX_PORT": "eighty"}, None, "--port: must be a valid integer"),
        ([], {}, "bogus = 1\n", "bogus: not an option"),
        ([], {}, "port = [\n", "Invalid"),  # a broken TOML file
        (["--adapter", "nameonly"], {}, None, "--adapter: expected NAME=PATH"),
        (["--model", "/no/such.gguf"], {}, None, "--model: model file not found"),
        (["--config", "/no/such.toml"], {}, None, "--config: no such file"),
        (["--replicas", "2"], {}, None, "serve over HTTP: add --http"),
        (["--http", "--replicas", "0"], {}, None, "--replicas: must be greater than or equal to 1"),
        (["--http", "--replica-threads", "2"], {}, None, "apply to Ray Serve: add --replicas N"),
    ],
)
def test_bad_configuration_is_a_clear_error_naming_the_option(
    tmp_path: Path, argv: list[str], env: dict[str, str], file: str | None, words: str
) -> None:
    if file is not None:
        (tmp_path / "c.toml").write_text(file)
        argv = [*argv, "--config", str(tmp_path / "c.toml")]
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_server", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in __import__("os").environ.items() if not k.startswith("LORAMUX_")}, **env},
    )
    assert proc.returncode == 2, proc.stderr
    assert "invalid configuration" in proc.stderr and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_server_takes_its_options_from_a_file(tmp_path: Path) -> None:
    config = tmp_path / "loramux.toml"
    config.write_text(f'max_sequences = 3\ncontext = 512\n[adapters]\ncaps = "{default_adapter_dir() / "caps.gguf"}"\n')
    with http_server("--config", str(config)) as url, urllib.request.urlopen(url + "/v1/adapters", timeout=30) as r:
        listing = json.load(r)
    assert listing["base_model"]["max_running_requests"] == 3
    assert listing["base_model"]["context_per_request"] == 512
    assert [a["name"] for a in listing["adapters"]] == ["caps"]
