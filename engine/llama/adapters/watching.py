"""--watch-adapters: notice when a resident adapter's file or folder changes on disk.

Polled (stat only, every WATCH_INTERVAL_S): no inotify dependency, and it works on network mounts. A
changed signature triggers one versioned reload (the engine's); a file caught half-written fails
validation and is retried when the writer's last write changes the signature again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WATCH_INTERVAL_S = 1.0
# what a folder's signature covers: every file a PEFT or mlx-lm folder is converted from
_FOLDER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapters.safetensors")

Signature = tuple[tuple[str, int, int, int], ...]


@dataclass
class AdapterSource:
    """Where a resident adapter was loaded from, as asked (confined again on reload), and how it looked."""

    requested: str
    trusted: bool  # an operator's preload: any path
    real: Path  # the file or folder read
    signature: Signature  # taken before it was read: a change during the read is seen at the next poll


def signature(path: Path) -> Signature:
    """(name, inode, size, mtime_ns) of the file, or of each of the folder's adapter files; () if gone."""
    files = [path / name for name in _FOLDER_FILES] if path.is_dir() else [path]
    parts = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue
        parts.append((f.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(parts)
