"""What every benchmark report starts with and how it is written."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def run_stamp() -> str:
    """When and on what the numbers were taken, e.g. "2026-11-23 17:38 UTC, x86_64, 2 cores"."""
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores"


def save_report(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text)
