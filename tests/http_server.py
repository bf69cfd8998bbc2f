"""Start `loramux --http` as a subprocess on a free 127.0.0.1 port and wait until /health answers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
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


@contextlib.contextmanager
def http_server_process(*extra_args: str, source: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields (base URL, server process). `source`: a checkout whose engine and server to run instead."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(source)} if source is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_server", "--http", "--port", str(port), *extra_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=source,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    _, err = proc.communicate(timeout=5)
                    raise RuntimeError(f"loramux --http did not start:\n{err.decode(errors='replace')}") from None
                time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
