"""Where adapter files may come from: only inside the configured adapter directories.

An agent names a file or a folder (PEFT, mlx-lm); the server must never open anything outside those
directories: absolute paths elsewhere, `..`, and symlinks that resolve outside are refused, for a folder's
files too. A file is then opened once, without following a final symlink, and read whole; those bytes
are validated and handed to llama.cpp (from memory), so the file checked is the file loaded.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InvalidRequest, bounded, listed

MAX_ADAPTER_BYTES = 4 << 30
ADAPTER_CONFIG = "adapter_config.json"  # what makes a folder an adapter (PEFT or mlx-lm)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # an adapter's name: never a path


class AdapterPathError(InvalidRequest):
    pass


@dataclass(frozen=True)
class AdapterFileBytes:
    """An adapter file's whole content, read once: what is validated is exactly what llama.cpp loads."""

    path: Path  # the real path, inside an adapter directory
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def shown(requested: str) -> str:
    """A caller's name or path for an error message: quoted, cut to 80 characters."""
    return repr(bounded(requested, 80))


def read_adapter_file(real: Path, display: str) -> AdapterFileBytes:
    """Open a resolved adapter path once, without following a final symlink, and read it whole.

    O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files are read. Blocking file
    system work (a stalled network mount) happens here, in a worker thread, never on the decode thread."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise AdapterPathError(f"cannot open {shown(display)}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AdapterPathError(f"{shown(display)} is not a regular file")
        if info.st_size > MAX_ADAPTER_BYTES:
            raise AdapterPathError(f"{shown(display)} is {info.st_size} bytes: larger than any LoRA adapter should be")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_ADAPTER_BYTES + 1)
    finally:
        os.close(fd)
    return AdapterFileBytes(real, data)


class AdapterDirectories:
    def __init__(self, directories: Sequence[Path]) -> None:
        self.roots = tuple(dict.fromkeys(Path(d).expanduser().resolve() for d in directories))

    def resolve(self, requested: str) -> Path:
        """The real path of `requested` (a file name or a path inside an adapter directory)."""
        if not requested or "\x00" in requested:
            raise AdapterPathError("give the adapter file's name or its path inside an adapter directory")
        if not self.roots:
            raise AdapterPathError("the server has no adapter directories (start it with --adapter-dir DIR)")
        candidate_path = Path(requested)
        if ".." in candidate_path.parts:
            raise AdapterPathError(f"{shown(requested)}: '..' is not allowed in adapter paths; {self._hint()}")
        if candidate_path.is_absolute():
            # Checked before touching the file system: refusals must not reveal what exists elsewhere.
            if not any(candidate_path.is_relative_to(root) for root in self.roots):
                raise AdapterPathError(f"{shown(requested)} is not inside an adapter directory; {self._hint()}")
            candidates = [candidate_path]
        else:
            candidates = [root / candidate_path for root in self.roots]
        for candidate in candidates:
            if not os.path.lexists(candidate):
                continue
            try:
                real = candidate.resolve()
            except (RuntimeError, OSError):  # a symlink loop: RuntimeError up to Python 3.12, OSError after
                raise AdapterPathError(f"{shown(requested)} is a symlink loop; {self._hint()}") from None
            if not any(real.is_relative_to(root) for root in self.roots):
                raise AdapterPathError(
                    f"{shown(requested)} is outside the adapter directories (symlinks may not leave them); "
                    + self._hint()
                )
            return real
        raise AdapterPathError(f"no adapter file {shown(requested)} in the adapter directories; {self._hint()}")

    def read_inside(self, path: Path) -> AdapterFileBytes:
        """Read a file of a folder already resolved inside an adapter directory: the file itself (a
        symlink, as in a Hugging Face cache snapshot) must resolve inside one too."""
        try:
            real = path.resolve()
        except (RuntimeError, OSError):
            raise AdapterPathError(f"{shown(path.name)} is a symlink loop") from None
        if not any(real.is_relative_to(root) for root in self.roots):
            raise AdapterPathError(f"{shown(path.name)} links outside the adapter directories")
        return read_adapter_file(real, path.name)

    def find(self, name: str) -> str | None:
        """The adapter an agent means by a bare name: NAME.gguf, or a folder NAME/ holding an adapter
        (adapter_config.json), at the top of an adapter directory; None if there is none."""
        if not NAME_PATTERN.match(name):
            return None
        for root in self.roots:
            for candidate, relative in ((root / f"{name}.gguf", f"{name}.gguf"), (root / name, f"{name}/")):
                try:
                    real = candidate.resolve()
                    if not real.is_relative_to(root):
                        continue
                    if real.is_file() if relative.endswith(".gguf") else (real / ADAPTER_CONFIG).is_file():
                        return relative.rstrip("/")
                except (RuntimeError, OSError):  # a symlink loop
                    continue
        return None

    def available(self, limit: int = 200) -> list[str]:
        """What an agent may load: GGUF files, and adapter folders (shown with a trailing '/'), as paths
        relative to their adapter directory."""
        found: list[str] = []
        for root in self.roots:
            if root.is_dir():
                for p in sorted(root.rglob("*")):
                    if p.name == ADAPTER_CONFIG:
                        p, shown_as = p.parent, "{}/"
                    elif p.suffix == ".gguf":
                        shown_as = "{}"
                    else:
                        continue
                    try:
                        inside = p.resolve().is_relative_to(root) and (p.is_file() or p.is_dir())
                    except (RuntimeError, OSError):  # a symlink loop
                        continue
                    if inside and p != root:
                        found.append(shown_as.format(p.relative_to(root)))
                        if len(found) >= limit:
                            return found
        return found

    def _hint(self) -> str:
        return f"adapter files available: {listed(self.available())} (see list_adapters)"
