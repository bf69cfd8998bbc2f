"""The slow half of loading an adapter, done off the decode thread: check the name, find the file or
folder inside an adapter directory, read it (converting a PEFT or mlx-lm folder to GGUF), and validate
it against the base model. The core then only hands the bytes to llama.cpp (from memory: no file I/O
between two steps)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import InvalidRequest
from engine.llama.adapters.base_model import AdapterBase
from engine.llama.adapters.files import NAME_PATTERN, AdapterDirectories, AdapterFileBytes, read_adapter_file, shown
from engine.llama.adapters.folders import FolderConverter
from engine.llama.adapters.validation import AdapterFileError, AdapterFileInfo, validate_adapter
from engine.llama.adapters.watching import Signature, signature


@dataclass(frozen=True)
class CheckedAdapterFile:
    name: str
    file: AdapterFileBytes  # what llama.cpp is given: the GGUF file, or a folder's conversion
    info: AdapterFileInfo
    sha256: str  # of the bytes llama.cpp is given: what receipts name the adapter by
    source_format: str = "gguf"  # or "peft", "mlx-lm"
    source_sha256: dict[str, str] = field(default_factory=dict)  # a folder's files → SHA-256
    warnings: tuple[str, ...] = ()
    from_cache: bool = False  # a folder's conversion was read from the conversion cache
    signature: Signature = ()  # the file's or folder's stat before it was read (--watch-adapters)


logger = logging.getLogger(__name__)


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise InvalidRequest(
            f"adapter name {shown(name)} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"
        )


class AdapterFileChecker:
    def __init__(self, directories: AdapterDirectories, base: AdapterBase, cache_dir: Path | None = None) -> None:
        self.directories = directories
        self.base = base
        self._converter = FolderConverter(base, cache_dir)

    def check(self, name: str, requested_path: str, *, trusted: bool = False) -> CheckedAdapterFile:
        """Blocking (file system, conversion): run in a worker thread.

        `trusted` (operator preloads) allows paths outside the adapter directories."""
        check_name(name)
        if trusted:
            real = Path(requested_path).expanduser().resolve()
        else:
            real = self.directories.resolve(requested_path)
        before = signature(real)
        if not real.is_dir():
            file = read_adapter_file(real, requested_path)
            info = self._validate(file.data, requested_path)
            return CheckedAdapterFile(name, file, info, hashlib.sha256(file.data).hexdigest(), signature=before)
        read = (lambda p: read_adapter_file(p.resolve(), p.name)) if trusted else self.directories.read_inside
        converted = self._converter.convert(real, requested_path, read)
        try:
            info = self._validate(converted.gguf, requested_path)
        except AdapterFileError:
            if not converted.from_cache:
                raise
            logger.warning("the cached conversion of %s is damaged: converting it again", requested_path)
            converted = self._converter.convert(real, requested_path, read, use_cache=False)
            info = self._validate(converted.gguf, requested_path)
        return CheckedAdapterFile(
            name,
            AdapterFileBytes(real, converted.gguf),
            info,
            hashlib.sha256(converted.gguf).hexdigest(),
            source_format=converted.source_format,
            source_sha256=converted.source_sha256,
            warnings=converted.warnings,
            from_cache=converted.from_cache,
            signature=before,
        )

    def _validate(self, data: bytes, display: str) -> AdapterFileInfo:
        return validate_adapter(
            data, display_name=display, base_architecture=self.base.architecture, base_shapes=self.base.tensor_shapes
        )
