"""Loaded LoRA adapters by name. Lives in the core: loads, unloads and lookups happen between steps.

Hot-swap rules: a request keeps the adapter set it started with until it finishes (it holds a use
count on each adapter); unloading an adapter that queued or running requests use is refused with an
error naming how many; loading the same name and file again is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from engine.errors import AdapterInUse, InvalidRequest, UnknownAdapter, listed
from engine.info import AdapterInfo, LoadedAdapter
from engine.llama.adapters.files import AdapterFileBytes, shown
from engine.llama.adapters.loading import CheckedAdapterFile
from engine.request import AdapterKey, AdapterRef


class AdapterRunner(Protocol):
    def load_adapter(self, file: AdapterFileBytes) -> Any: ...
    def free_adapter(self, handle: Any) -> None: ...


@dataclass
class _Loaded:
    info: AdapterInfo
    handle: Any
    identity: tuple[int, int]  # (st_dev, st_ino) of the loaded file
    served: int = 0
    in_flight: int = 0

    def public(self) -> AdapterInfo:
        return self.info.model_copy(update={"requests_served": self.served, "requests_in_flight": self.in_flight})


class AdapterRegistry:
    def __init__(self, runner: AdapterRunner) -> None:
        self._runner = runner
        self._loaded: dict[str, _Loaded] = {}

    # -- management -----------------------------------------------------------------------------------

    def load(self, checked: CheckedAdapterFile) -> LoadedAdapter:
        name, file = checked.name, checked.file
        existing = self._loaded.get(name)
        if existing is not None:
            if existing.identity == file.identity and existing.info.file_size == file.size:
                return LoadedAdapter(adapter=existing.public(), newly_loaded=False)
            raise InvalidRequest(
                # the file's name only: errors carry no server path the caller did not send
                f"an adapter named {name!r} is already loaded from {Path(existing.info.path).name}; "
                "unload it first or choose another name"
            )
        meta = checked.info
        info = AdapterInfo(  # built first: a load that fails anywhere leaves nothing loaded
            name=name,
            path=str(file.path),
            file_size=file.size,
            sha256=checked.sha256,
            rank=meta.rank,
            alpha=meta.alpha,
            target_modules=meta.target_modules,
            architecture=meta.architecture,
            loaded_at=datetime.now(UTC),
            requests_served=0,
            requests_in_flight=0,
        )
        handle = self._runner.load_adapter(file)  # llama.cpp parses the bytes already in memory
        self._loaded[name] = _Loaded(info, handle, file.identity)
        return LoadedAdapter(adapter=info, newly_loaded=True)

    def unload(self, name: str) -> AdapterInfo:
        entry = self._require(name)
        if entry.in_flight:
            raise AdapterInUse(
                f"adapter {name!r} is used by {entry.in_flight} queued or running request(s); "
                "unload it after they finish (list_adapters shows requests_in_flight)"
            )
        self._runner.free_adapter(entry.handle)
        del self._loaded[name]
        return entry.public()

    def names(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    def list(self) -> list[AdapterInfo]:
        return [e.public() for e in self._loaded.values()]

    def close(self) -> None:
        for entry in self._loaded.values():
            self._runner.free_adapter(entry.handle)
        self._loaded.clear()

    # -- requests --------------------------------------------------------------------------------------

    def check(self, refs: Iterable[AdapterRef]) -> None:
        """Raise UnknownAdapter unless every adapter a request names is loaded."""
        for ref in refs:
            self._require(ref.name)

    def acquire(self, key: AdapterKey) -> None:
        """Hold the adapters of a checked request's set until `release`: they cannot be unloaded meanwhile."""
        for name, _ in key:
            self._loaded[name].in_flight += 1

    def release(self, key: AdapterKey) -> None:
        for name, _ in key:
            entry = self._loaded[name]  # held adapters cannot be unloaded, so it is still here
            entry.in_flight -= 1
            entry.served += 1

    def fingerprints(self, key: AdapterKey) -> tuple[tuple[str, str, float], ...]:
        """(name, sha256, scale) of each adapter of a loaded set: for receipts."""
        return tuple((name, self._loaded[name].info.sha256, scale) for name, scale in key)

    def handles(self, key: AdapterKey) -> list[tuple[Any, float]]:
        return [(self._loaded[name].handle, scale) for name, scale in key]

    def _require(self, name: str) -> _Loaded:
        entry = self._loaded.get(name)
        if entry is None:
            raise unknown_adapter(name, self._loaded)
        return entry


def unknown_adapter(name: str, loaded: Iterable[str]) -> UnknownAdapter:
    """The error for a request or command naming an adapter that is not loaded."""
    return UnknownAdapter(
        f"no adapter named {shown(name)} is loaded; loaded adapters: {listed(sorted(loaded))} (see list_adapters)"
    )
