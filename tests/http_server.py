"""Start `loramux --http` as a subprocess on a free 127.0.0.1 port and wait until /health answers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_server(*extra_args: str, source: Path | None = None) -> Iterator[str]:
    """Yields the base URL, e.g. http://127.0.0.1:PORT."""
    with http_server_process(*extra_args, source=source) as (base, _):
        yield base


_LOGS: dict[int, Path] = {}


def server_log(proc: subprocess.Popen) -> str:
    """What the server has written to stderr so far. It goes to a file, not a pipe: an undrained pipe
    fills up (64 KB) and then blocks the server's next log line, with its event loop."""
    return _LOGS[proc.pid].read_text(errors="replace")


@contextlib.contextmanager
def http_server_process(*extra_args: str, source: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields (base URL, server process). `source`: a checkout whose engine and server to run instead."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(source)} if source is not None else None
    with tempfile.TemporaryDirectory() as logs:
        log = Path(logs) / "server.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mcp_server", "--http", "--port", str(port), *extra_args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=source,
                env=env,
            )
        _LOGS[proc.pid] = log
        try:
            yield _wait_until_up(proc, f"http://127.0.0.1:{port}"), proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            del _LOGS[proc.pid]


def _wait_until_up(proc: subprocess.Popen, base: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                json.load(r)
            return base
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"loramux --http did not start:\n{server_log(proc)}") from None
            time.sleep(0.2)
