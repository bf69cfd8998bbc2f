"""The slow half of loading an adapter, done off the decode thread: check the name, find the file inside
an adapter directory, read it, and validate it against the base model. The core then only hands the
bytes to llama.cpp (from memory: no file I/O between two steps)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InvalidRequest
from engine.llama.adapters.files import AdapterDirectories, AdapterFileBytes, read_adapter_file, shown
from engine.llama.adapters.validation import AdapterFileInfo, validate_adapter

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class CheckedAdapterFile:
    name: str
    file: AdapterFileBytes
    info: AdapterFileInfo
    sha256: str  # of the bytes llama.cpp is given: what receipts name the adapter by


class AdapterFileChecker:
    def __init__(
        self, directories: AdapterDirectories, *, base_architecture: str, base_shapes: Mapping[str, tuple[int, ...]]
    ) -> None:
        self.directories = directories
        self._base_architecture = base_architecture
        self._base_shapes = base_shapes

    def check(self, name: str, requested_path: str, *, trusted: bool = False) -> CheckedAdapterFile:
        """Blocking (file system): run in a worker thread.

        `trusted` (operator preloads) allows paths outside the adapter directories."""
        if not NAME_PATTERN.match(name):
            raise InvalidRequest(
                f"adapter name {shown(name)} is invalid: "
                "use 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"
            )
        if trusted:
            file = read_adapter_file(Path(requested_path).expanduser().resolve(), requested_path)
        else:
            file = self.directories.read(requested_path)
        info = validate_adapter(
            file.data,
            display_name=requested_path,
            base_architecture=self._base_architecture,
            base_shapes=self._base_shapes,
        )
        return CheckedAdapterFile(name, file, info, hashlib.sha256(file.data).hexdigest())
