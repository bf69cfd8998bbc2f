"""Loaded LoRA adapters by name. Lives on the worker thread: load, unload and apply happen between steps.

Hot-swap rules: a request keeps the adapter set it started with until it finishes (it holds a use
count on each adapter); unloading an adapter that queued or running requests use is refused with an
error naming how many; loading the same name and file again is a no-op.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from engine.adapter_files import AdapterDirectories, OpenedAdapterFile, open_adapter_file
from engine.adapter_validation import AdapterFileInfo, validate_adapter
from engine.errors import InvalidRequest
from engine.request import AdapterKey, AdapterRef

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AdapterInUse(InvalidRequest):
    pass


class UnknownAdapter(InvalidRequest):
    pass


class AdapterBackend(Protocol):
    def load_adapter(self, opened: OpenedAdapterFile) -> Any: ...
    def free_adapter(self, handle: Any) -> None: ...
    def set_adapters(self, adapters: list[tuple[Any, float]]) -> None: ...


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    file_size: int
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    architecture: str
    loaded_at: float  # unix time
    requests_served: int
    requests_in_flight: int


@dataclass
class _Loaded:
    info: AdapterInfo
    handle: Any
    device: tuple[int, int]  # (st_dev, st_ino) of the loaded file: "the same file" for idempotent loads
    served: int = 0
    in_flight: int = 0


class AdapterRegistry:
    def __init__(
        self,
        backend: AdapterBackend,
        directories: AdapterDirectories,
        *,
        base_architecture: str,
        base_shapes: Mapping[str, tuple[int, ...]],
    ) -> None:
        self._backend = backend
        self.directories = directories
        self._base_architecture = base_architecture
        self._base_shapes = base_shapes
        self._loaded: dict[str, _Loaded] = {}
        self._applied: AdapterKey = ()

    # -- management (between steps) --------------------------------------------------------------------

    def load(self, name: str, requested_path: str, *, trusted: bool = False) -> tuple[AdapterInfo, bool]:
        """Load `requested_path` as `name`; returns (info, newly loaded). `trusted` (operator preloads)
        allows paths outside the adapter directories."""
        if not NAME_PATTERN.match(name):
            raise InvalidRequest(
                f"adapter name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"
            )
        if trusted:
            opening = open_adapter_file(Path(requested_path).expanduser().resolve(), requested_path)
        else:
            opening = self.directories.open(requested_path)
        with opening as opened:
            st = os.fstat(opened.fd)
            identity = (st.st_dev, st.st_ino)
            existing = self._loaded.get(name)
            if existing is not None:
                if existing.device == identity and existing.info.file_size == opened.size:
                    return self._public(existing), False
                raise InvalidRequest(
                    f"an adapter named {name!r} is already loaded from {existing.info.path}; "
                    "unload it first or choose another name"
                )
            file_info: AdapterFileInfo = validate_adapter(
                opened.proc_path,
                size=opened.size,
                display_name=requested_path,
                base_architecture=self._base_architecture,
                base_shapes=self._base_shapes,
            )
            handle = self._backend.load_adapter(opened)
        info = AdapterInfo(
            name=name,
            path=str(opened.path),
            file_size=opened.size,
            rank=file_info.rank,
            alpha=file_info.alpha,
            target_modules=file_info.target_modules,
            architecture=file_info.architecture,
            loaded_at=time.time(),
            requests_served=0,
            requests_in_flight=0,
        )
        self._loaded[name] = _Loaded(info, handle, identity)
        return info, True

    def unload(self, name: str) -> AdapterInfo:
        entry = self._require(name)
        if entry.in_flight:
            raise AdapterInUse(
                f"adapter {name!r} is used by {entry.in_flight} queued or running request(s); "
                "unload it after they finish (list_adapters shows requests_in_flight)"
            )
        if any(n == name for n, _ in self._applied):
            # The context holds raw pointers to its adapters: detach before freeing.
            self._backend.set_adapters([])
            self._applied = ()
        self._backend.free_adapter(entry.handle)
        del self._loaded[name]
        return self._public(entry)

    def list(self) -> list[AdapterInfo]:
        return [self._public(e) for e in self._loaded.values()]

    def close(self) -> None:
        self._backend.set_adapters([])
        self._applied = ()
        for entry in self._loaded.values():
            self._backend.free_adapter(entry.handle)
        self._loaded.clear()

    # -- requests ----------------------------------------------------------------------------------------

    def acquire(self, refs: Iterable[AdapterRef], key: AdapterKey) -> None:
        """Check that every adapter a request names is loaded, and hold those of its set until `release`."""
        for ref in refs:
            self._require(ref.name)
        for name, _ in key:
            self._loaded[name].in_flight += 1

    def release(self, key: AdapterKey) -> None:
        for name, _ in key:
            entry = self._loaded[name]  # held adapters cannot be unloaded, so it is still here
            entry.in_flight -= 1
            entry.served += 1

    def apply(self, key: AdapterKey) -> bool:
        """Make `key` the context's adapter set; True if it changed (llama.cpp re-reserves its graph)."""
        if key == self._applied:
            return False
        self._backend.set_adapters([(self._loaded[name].handle, scale) for name, scale in key])
        self._applied = key
        return True

    def _require(self, name: str) -> _Loaded:
        entry = self._loaded.get(name)
        if entry is None:
            loaded = ", ".join(sorted(self._loaded)) or "none"
            raise UnknownAdapter(f"no adapter named {name!r} is loaded; loaded adapters: {loaded} (see list_adapters)")
        return entry

    @staticmethod
    def _public(entry: _Loaded) -> AdapterInfo:
        return replace(entry.info, requests_served=entry.served, requests_in_flight=entry.in_flight)
